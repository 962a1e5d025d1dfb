//! Connection settings: a `postgres://` URL as libpq users write it, the password from the URL
//! or a file, TLS through rustls that always verifies the server (`sslmode=verify-full`, the
//! default, with the CA from `sslrootcert` or the public roots) or none (`sslmode=disable`), and
//! the pool built from them.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// Schema the tables live in when the URL does not say (`?schema=NAME`).
pub const DEFAULT_SCHEMA: &str = "histor";

/// Connections in the pool: the writer holds one for a batch, queries and retention the rest.
const POOL_SIZE: usize = 8;

/// Where a connection waits at most, to connect or for a free pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Server settings of every session: see `parse`.
const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=5s";

/// TCP keepalive after this long idle, so a dead server or link is noticed in seconds.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Longest wait for one statement by default: a query or a retention step.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time one append takes by default: a batch commits in milliseconds when the server
/// is well, and the writer has better things to do with a batch than wait longer.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// A PostgreSQL store's settings, parsed from its URL.
#[derive(Clone)]
pub struct PgConfig {
    pub(super) pg: tokio_postgres::Config,
    /// Verify the server with these roots; `None` is `sslmode=disable`.
    pub(super) tls: Option<Tls>,
    /// Schema of the tables.
    pub(super) schema: String,
    /// The URL without its password, for logs.
    shown: String,
    /// Longest wait for one statement or a connection.
    pub(super) op_timeout: Duration,
    /// Longest time one append (a batch's transaction) may take.
    pub(super) append_timeout: Duration,
}

#[derive(Clone)]
pub(super) enum Tls {
    /// The CA certificates of `sslrootcert`.
    RootCert(PathBuf),
    /// The public web PKI roots.
    PublicRoots,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Display for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgConfig {
    /// Parses `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?PARAMS]`. Besides what tokio-postgres
    /// understands, `sslmode` takes `verify-full` (the default) or `disable`, `sslrootcert` names
    /// a PEM file of CA certificates, and `schema` the schema of the tables. A password in
    /// `password_file` (trailing newline ignored) overrides one in the URL.
    pub fn parse(url: &str, password_file: Option<&Path>) -> Result<PgConfig> {
        let bad = |m: String| Error::Usage(format!("store URL: {m}"));
        let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!(
                "scheme {:?}: expected postgres://",
                parsed.scheme()
            )));
        }
        let mut sslmode = "verify-full".to_owned();
        let mut rootcert = None;
        let mut schema = DEFAULT_SCHEMA.to_owned();
        let mut rest = Vec::new();
        for (k, v) in parsed.query_pairs() {
            match &*k {
                "sslmode" => sslmode = v.into_owned(),
                "sslrootcert" => rootcert = Some(PathBuf::from(&*v)),
                "schema" => schema = v.into_owned(),
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        if schema.starts_with("pg_") {
            return Err(bad(format!(
                "schema {schema:?}: names starting with pg_ are PostgreSQL's own"
            )));
        }
        if schema.is_empty()
            || schema.len() > 63
            || !schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            || schema.as_bytes()[0].is_ascii_digit()
        {
            return Err(bad(format!(
                "schema {schema:?}: lower-case letters, digits and _ only"
            )));
        }
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(&rest);
        }
        let mut shown = parsed.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("xxxxx"));
        }
        let mut pg: tokio_postgres::Config = parsed
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        if let Some(path) = password_file {
            let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
            pg.password(text.trim_end_matches(['\n', '\r']));
        }
        if pg.get_user().is_none() {
            return Err(bad("no user: postgres://USER@HOST/DB".into()));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        // A session that went away mid-transaction (a partition, a killed replica) would hold
        // the write lock until TCP noticed; the server ends such a transaction itself. Ours
        // never wait between statements, so a few seconds idle means the client is gone.
        let options = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        };
        pg.options(&options);
        pg.keepalives_idle(KEEPALIVE_IDLE);
        if pg.get_application_name().is_none() {
            pg.application_name("histor");
        }
        let tls = match sslmode.as_str() {
            "verify-full" => Some(rootcert.map_or(Tls::PublicRoots, Tls::RootCert)),
            "disable" => None,
            other => {
                return Err(bad(format!(
                    "sslmode={other}: histor verifies the server it writes history to; use \
                     sslmode=verify-full (with sslrootcert=CA.pem for a private CA) or, on a \
                     trusted local link only, sslmode=disable"
                )));
            }
        };
        pg.ssl_mode(if tls.is_some() {
            SslMode::Require
        } else {
            SslMode::Disable
        });
        Ok(PgConfig {
            pg,
            tls,
            schema,
            shown: shown.to_string(),
            op_timeout: OP_TIMEOUT,
            append_timeout: APPEND_TIMEOUT,
        })
    }

    /// The same server and credentials with another schema (tests give each store its own).
    pub fn with_schema(mut self, schema: &str) -> PgConfig {
        self.schema = schema.to_owned();
        self
    }

    /// Other time limits: for one statement or connection, and for one append (a writer with
    /// a local spool puts the batch there instead once this passes).
    pub fn with_timeouts(mut self, op: Duration, append: Duration) -> PgConfig {
        self.op_timeout = op;
        self.append_timeout = append;
        self
    }

    /// A connection pool; connections are made on first use, on the current tokio runtime.
    pub(super) fn pool(&self) -> Result<deadpool_postgres::Pool> {
        let manager = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let builder = match &self.tls {
            None => deadpool_postgres::Manager::from_config(
                self.pg.clone(),
                tokio_postgres::NoTls,
                manager,
            ),
            Some(tls) => deadpool_postgres::Manager::from_config(
                self.pg.clone(),
                tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(tls)?),
                manager,
            ),
        };
        deadpool_postgres::Pool::builder(builder)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Usage(format!("store: {e}")))
    }
}

impl PgConfig {
    /// One connection outside the pool (the delivering notifier's, which holds a session lock),
    /// its driver task spawned on the current runtime.
    pub(super) async fn connect(&self) -> Result<tokio_postgres::Client> {
        let client = match &self.tls {
            None => {
                let (client, conn) = self
                    .pg
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(Error::store)?;
                tokio::spawn(conn);
                client
            }
            Some(tls) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_tls(tls)?);
                let (client, conn) = self.pg.connect(tls).await.map_err(Error::store)?;
                tokio::spawn(conn);
                client
            }
        };
        Ok(client)
    }
}

fn client_tls(tls: &Tls) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match tls {
        Tls::PublicRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Tls::RootCert(path) => {
            let pem = std::fs::read(path).map_err(|e| Error::file(path, e))?;
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Tls(format!(
                    "{}: no certificate in the file",
                    path.display()
                )));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_our_parameters_and_hide_the_password() {
        let c = PgConfig::parse(
            "postgres://histor:s3cret@db.example:5433/hist?sslmode=verify-full&sslrootcert=/ca.pem&schema=h2&connect_timeout=3",
            None,
        )
        .unwrap();
        assert_eq!(c.schema, "h2");
        assert!(matches!(&c.tls, Some(Tls::RootCert(p)) if p == Path::new("/ca.pem")));
        assert_eq!(c.pg.get_user(), Some("histor"));
        assert_eq!(c.pg.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.pg.get_dbname(), Some("hist"));
        assert_eq!(
            c.pg.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let shown = c.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("xxxxx@db.example:5433/hist"), "{shown}");
        assert!(matches!(
            PgConfig::parse("postgres://u@h/d", None).unwrap().tls,
            Some(Tls::PublicRoots)
        ));
    }

    #[test]
    fn a_password_file_overrides_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = PgConfig::parse("postgres://u:in-url@h/d?sslmode=disable", Some(&file)).unwrap();
        assert_eq!(c.pg.get_password(), Some(&b"from-file"[..]));
        assert!(c.tls.is_none());
        let err = PgConfig::parse("postgres://u@h/d", Some(&dir.path().join("nope")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn unverified_tls_and_bad_names_are_refused_with_a_reason() {
        for (url, says) in [
            ("postgres://u@h/d?sslmode=require", "verify-full"),
            ("postgres://u@h/d?sslmode=prefer", "verify-full"),
            ("mysql://u@h/d", "expected postgres://"),
            ("postgres://u@h/d?schema=Robert%27);DROP", "lower-case"),
            ("postgres://h/d", "no user"),
            ("postgres://u@h/d?schema=pg_x", "PostgreSQL's own"),
        ] {
            let err = PgConfig::parse(url, None).err().unwrap().to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
