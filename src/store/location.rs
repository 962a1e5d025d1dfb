//! Where the history lives, as `--store` names it: a sled directory (`sled:DIR`, a plain path,
//! or by default `DATA_DIR/store`) or a PostgreSQL database (`postgres://...`), and opening the
//! engine it names. The one place that picks an engine.

use super::{AuditJournal, EventStore, OutboxStore, PgConfig, PgStore, SledStore};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An engine and where its data is.
#[derive(Clone, Debug)]
pub enum Location {
    /// An embedded sled database in this directory: one process at a time.
    Sled(PathBuf),
    /// A PostgreSQL database, shared by every replica.
    Postgres(Box<PgConfig>),
}

impl Location {
    /// Reads `--store` (`None`: sled in `data_dir/store`). `password_file` is PostgreSQL's
    /// password; naming one for sled is a mistake worth saying.
    pub fn parse(
        store: Option<&str>,
        data_dir: &Path,
        password_file: Option<&Path>,
    ) -> Result<Location> {
        let location = match store.map(str::trim) {
            None | Some("") => Location::Sled(data_dir.join("store")),
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                return Ok(Location::Postgres(Box::new(PgConfig::parse(
                    s,
                    password_file,
                )?)));
            }
            Some(s) => match s.strip_prefix("sled:") {
                Some(dir) if !dir.is_empty() => Location::Sled(PathBuf::from(dir)),
                Some(_) => return Err(Error::Usage("--store sled: needs a directory".into())),
                None if s.contains("://") => {
                    return Err(Error::Usage(format!(
                        "--store {s:?}: expected a directory, sled:DIR or postgres://USER@HOST/DB"
                    )));
                }
                None => Location::Sled(PathBuf::from(s)),
            },
        };
        if password_file.is_some() {
            return Err(Error::Usage(
                "--store-password-file is for a postgres:// store".into(),
            ));
        }
        Ok(location)
    }

    /// True when several processes may share it (several replicas, one history).
    pub fn is_shared(&self) -> bool {
        matches!(self, Location::Postgres(_))
    }

    /// Opens the engine: its event store, notification outbox, audit journal and Events.
    pub fn open(&self) -> Result<Engine> {
        Ok(match self {
            Location::Sled(dir) => {
                let store = SledStore::open(dir)?;
                Engine {
                    outbox: store.outbox(),
                    audit: store.audit_journal(),
                    kube_events: store.kube_events(),
                    events: Arc::new(store),
                    shared: false,
                }
            }
            Location::Postgres(config) => {
                let store = PgStore::open(config)?;
                Engine {
                    outbox: store.outbox(),
                    audit: store.audit_journal(),
                    kube_events: store.kube_events(),
                    events: Arc::new(store),
                    shared: true,
                }
            }
        })
    }
}

/// An open engine.
pub struct Engine {
    /// The events.
    pub events: Arc<dyn EventStore>,
    /// The notification outbox, in the same database.
    pub outbox: Arc<dyn OutboxStore>,
    /// The audit journal, in the same database.
    pub audit: Arc<dyn AuditJournal>,
    /// Kubernetes Events, in the same database.
    pub kube_events: Arc<dyn super::KubeEventStore>,
    /// Other processes may write it too (replicas sharing a database).
    pub shared: bool,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sled(dir) => write!(f, "sled:{}", dir.display()),
            Location::Postgres(config) => config.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_their_engine() {
        let data = Path::new("/var/lib/histor");
        let sled = |s: Option<&str>| match Location::parse(s, data, None).unwrap() {
            Location::Sled(dir) => dir,
            other => panic!("{other}"),
        };
        assert_eq!(sled(None), data.join("store"));
        assert_eq!(sled(Some("")), data.join("store"));
        assert_eq!(sled(Some("sled:/srv/h")), PathBuf::from("/srv/h"));
        assert_eq!(sled(Some("/srv/h")), PathBuf::from("/srv/h"));
        let pg = Location::parse(
            Some("postgres://histor:pw@db:5432/histor?sslmode=disable"),
            data,
            None,
        )
        .unwrap();
        assert!(pg.is_shared());
        assert!(!pg.to_string().contains("pw"), "{pg}");
        for (bad, says) in [
            (Some("mysql://x"), "expected a directory"),
            (Some("sled:"), "needs a directory"),
        ] {
            let err = Location::parse(bad, data, None).err().unwrap().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        let err = Location::parse(None, data, Some(Path::new("/pw")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("postgres://"), "{err}");
    }
}
