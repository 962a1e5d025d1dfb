//! Helpers shared by the component tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The recorded reviews' file names, in the order the apiserver sent them.
pub fn fixture_order() -> impl Iterator<Item = &'static str> {
    histor::cmd::RECORDED_REVIEWS.iter().map(|(name, _)| *name)
}

/// Installs the TLS crypto provider once.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A recorded review body.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/admission")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `body` (an AdmissionReview) as a new change numbered `n`: a fresh request uid; for an UPDATE
/// or DELETE a fresh base resourceVersion, as the object's next real change would have; for a
/// CREATE a fresh object uid (the object made again).
/// (A fresh uid alone is the same change again: histor dedupes the calls of one change by a
/// fingerprint of the request, whatever their uids.) The same `n` gives the same review.
pub fn fresh_change(body: &str, n: u64) -> String {
    let mut review: serde_json::Value = serde_json::from_str(body).unwrap();
    review["request"]["uid"] = format!("00000000-0000-4000-8000-{n:012x}").into();
    for side in ["object", "oldObject"] {
        if let Some(meta) = review["request"][side]["metadata"].as_object_mut()
            && meta.contains_key("resourceVersion")
        {
            meta.insert(
                "resourceVersion".into(),
                format!("{}", 1_000_000 + n).into(),
            );
        }
    }
    if review["request"]["operation"] == "CREATE"
        && let Some(meta) = review["request"]["object"]["metadata"].as_object_mut()
    {
        meta.insert(
            "uid".into(),
            format!("00000000-0000-4000-9000-{n:012x}").into(),
        );
    }
    review.to_string()
}

/// Writes a policy tracking every resource and subresource, named `name`.
pub fn write_policy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: histor.dev/v1alpha1\nkind: TrackingPolicy\nmetadata:\n  name: {name}\nspec:\n  resources:\n    - apiGroups: [\"*\"]\n      resources: [\"*/*\"]\n"
        ),
    )
    .unwrap();
    path
}

/// An HTTPS client that trusts only `ca`.
pub fn client(ca: &Path) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .unwrap()
}

/// The recorded Secret fixtures carry the value `s3cr3t`; neither it nor its base64 form may be
/// anywhere in the data directory.
pub fn assert_no_secret_value_under(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        for needle in [&b"s3cr3t"[..], b"czNjcjN0"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?}",
                path.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    assert!(files > 0, "nothing under {}", dir.display());
}
