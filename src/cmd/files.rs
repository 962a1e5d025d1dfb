//! Files standalone mode reads: TrackingPolicy YAML and the HMAC key for Secret values.

use crate::crd::TrackingPolicy;
use crate::pipeline::CompiledPolicy;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Reads and compiles every TrackingPolicy in the files (multi-document YAML allowed; other kinds
/// are an error, so a typo in `kind` is not silently ignored).
pub fn read_policy_files(paths: &[PathBuf]) -> Result<Vec<CompiledPolicy>> {
    let mut compiled = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
        for (n, doc) in split_documents(&text).into_iter().enumerate() {
            let policy: TrackingPolicy =
                serde_saphyr::from_str(doc).map_err(|e| Error::Policy {
                    policy: format!("{} (document {})", path.display(), n + 1),
                    message: e.to_string(),
                })?;
            let name = policy.metadata.name.clone().ok_or_else(|| Error::Policy {
                policy: format!("{} (document {})", path.display(), n + 1),
                message: "metadata.name is required".into(),
            })?;
            compiled.push(CompiledPolicy::compile(&name, &policy.spec)?);
        }
    }
    Ok(compiled)
}

/// Splits a YAML stream on `---` lines, dropping empty documents.
fn split_documents(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            docs.push(&text[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push(&text[start..]);
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Reads the HMAC key, or makes a random 32-byte one and keeps it (owner-only) so hashes of the
/// same Secret value stay comparable across restarts.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(key) if key.len() >= 16 => return Ok(key),
        Ok(_) => {
            return Err(Error::Usage(format!(
                "{}: HMAC key must be at least 16 bytes",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::file(path, e)),
    }
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| Error::Usage("no system randomness for the HMAC key".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    // Written whole under a name of its own, then linked into place: a process that starts at
    // the same time (another replica on the same directory) either wins the link or reads the
    // winner's complete key, never half of one.
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    // Unique to this process and call: the pid, and random bits of the new key itself.
    let nonce: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("tmp-{}-{nonce}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp).map_err(|e| Error::file(&tmp, e))?;
    file.write_all(&key)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::file(&tmp, e))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(path).map_err(|e| Error::file(path, e))
        }
        Err(e) => Err(Error::file(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_yaml_streams() {
        let docs = split_documents("# c\n---\na: 1\n---\n\n---\nb: 2\n");
        assert_eq!(docs, vec!["a: 1\n", "b: 2\n"]);
    }

    #[test]
    fn key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/hmac.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
    }

    #[test]
    fn processes_starting_at_once_end_up_with_one_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("hmac.key");
            let keys: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| load_or_create_key(&path).unwrap()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(
                keys.windows(2).all(|w| w[0] == w[1]),
                "every starter got the one key"
            );
            assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                1,
                "no temporary left"
            );
        }
    }
}
