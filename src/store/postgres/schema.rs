//! The tables, as numbered migrations embedded in the binary and applied at start. Each runs in
//! its own transaction under an advisory lock, so replicas that start at once apply each
//! migration exactly once and the later ones wait, then find nothing to do. A database whose
//! schema is newer than this binary knows is refused rather than written wrongly.
//!
//! `{s}` stands for the schema name (checked to be a plain identifier when the URL is parsed).
//!
//! - `events`: one row per event. The columns queries filter on, the object's chain (`prev`,
//!   `flags`, `gap`: see [`history`](crate::store::history)), the event itself (`body`, JSON
//!   without its object) and, for the few events that carry one, the full `snapshot`.
//!   Indexes: the id (time), and `(subject, id)` for the object, namespace, user and name, so
//!   every query is an index range scan newest first.
//! - `requests`: request uid (128-bit digest) → event, for dedupe across replicas; rows older
//!   than the dedupe window are ignored and deleted by retention.
//! - `heads`: per object, its newest event, event count and snapshot position.
//! - `kinds`, `policies`: kind aliases learnt from events, and every policy events were stored
//!   under (retention resolves their rules).
//! - `batches`: per writer, the token and outcomes of its last committed batch, so a writer
//!   that lost the answer to a COMMIT learns whether it happened.
//! - `meta`: last id, event count, the outbox's cursor (-1: none yet).
//! - `events.state`, `events.committed` (migration 3): what the witnesses know of a change (its
//!   state as a small code, the commit they saw as JSON); the truth, not `body`, since a
//!   witness changes them after the row is written. `cursors`: key → value, the small durable
//!   values of [`EventStore::cursor`](crate::store::EventStore::cursor).
//! - `requests` is keyed by each event's dedupe key (`Captured::dedupe`; for events of
//!   earlier versions, the digest of their request uid, which is what that key defaults to).
//! - `outbox`, `outbox_buffered`, sequence `outbox_keys`: the notification outbox (see
//!   [`outbox`](super::outbox)), shared by every replica's notifier.
//! - `events.audit` (migration 4): the audit log's account of the change (JSON), the truth, not
//!   `body`, since it comes after the row is written. `audit_queue`, `audit_keys`: the audit
//!   journal (see [`audit`](super::audit)), shared by every replica's audit intake;
//!   `audit_usage`: the API usage counted from it. `kube_events`: Kubernetes Events (see
//!   [`kube_events`](super::kube_events)).

use crate::{Error, Result};

/// Key of the advisory lock migrations take (any constant; "histor" in ASCII).
const MIGRATION_LOCK: i64 = 0x6869_7374_6f72;

/// The migrations, in order; never edit one that has shipped, add the next.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE {s}.meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO {s}.meta VALUES ('last_id', 0), ('count', 0);
CREATE TABLE {s}.events (
    id bigint PRIMARY KEY,
    object bigint NOT NULL,
    namespace text,
    name text NOT NULL,
    uid text,
    username text NOT NULL,
    operation smallint NOT NULL,
    resource text NOT NULL,
    policies text[] NOT NULL,
    prev bigint,
    flags smallint NOT NULL,
    body bytea NOT NULL,
    gap bytea,
    snapshot bytea
);
CREATE INDEX events_object ON {s}.events (object, id);
CREATE INDEX events_namespace ON {s}.events (namespace, id);
CREATE INDEX events_user ON {s}.events (username, id);
CREATE INDEX events_name ON {s}.events (name, id);
CREATE TABLE {s}.requests (request bytea PRIMARY KEY, id bigint NOT NULL);
CREATE INDEX requests_id ON {s}.requests (id);
CREATE TABLE {s}.heads (
    object bigint PRIMARY KEY,
    last bigint NOT NULL,
    count bigint NOT NULL,
    since_snapshot bigint NOT NULL,
    broken boolean NOT NULL
);
CREATE INDEX heads_count ON {s}.heads (count);
CREATE TABLE {s}.kinds (alias text NOT NULL, group_resource text NOT NULL,
    PRIMARY KEY (alias, group_resource));
CREATE TABLE {s}.policies (name text PRIMARY KEY);
CREATE TABLE {s}.batches (writer bigint PRIMARY KEY, token bigint NOT NULL, outcomes bytea NOT NULL);
"#,
    r#"
CREATE SEQUENCE {s}.outbox_keys;
CREATE TABLE {s}.outbox (key bigint PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE {s}.outbox_buffered (sink text NOT NULL, event bigint NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (sink, event));
INSERT INTO {s}.meta VALUES ('outbox_cursor', -1);
"#,
    // What the witnesses know of each change; rows written before are unconfirmed (4), and
    // adding a column with a constant default rewrites no row.
    r#"
ALTER TABLE {s}.events ADD COLUMN state smallint NOT NULL DEFAULT 4, ADD COLUMN committed bytea;
CREATE INDEX events_state ON {s}.events (state, id);
CREATE TABLE {s}.cursors (key text PRIMARY KEY, value text NOT NULL);
"#,
    // The audit log's account of each change, and the audit journal. A nullable column without
    // a default rewrites no row. Times are µs since the epoch; `forget` reads the oldest keys
    // not queued, which the partial index holds (queued keys are few and move out of it).
    r#"
ALTER TABLE {s}.events ADD COLUMN audit bytea;
CREATE TABLE {s}.audit_queue (seq bigserial PRIMARY KEY, key bytea NOT NULL, at bigint NOT NULL,
    value bytea NOT NULL);
CREATE TABLE {s}.audit_keys (key bytea PRIMARY KEY, at bigint NOT NULL, queued boolean NOT NULL);
CREATE INDEX audit_keys_forget ON {s}.audit_keys (at) WHERE NOT queued;
"#,
    // API usage counted from the audit journal: one row per hour (Unix seconds) and series
    // (bytes the caller encodes); times are µs since the epoch, NULL when no event had one.
    r#"
CREATE TABLE {s}.audit_usage (hour bigint NOT NULL, series bytea NOT NULL,
    calls bigint NOT NULL, other bigint NOT NULL, success bigint NOT NULL,
    client_error bigint NOT NULL, server_error bigint NOT NULL, no_code bigint NOT NULL,
    first_seen bigint, last_seen bigint, PRIMARY KEY (hour, series));
"#,
    // Kubernetes Events: one row per Event uid, found by the object it regards and by time.
    r#"
CREATE TABLE {s}.kube_events (uid text PRIMARY KEY, namespace text NOT NULL, kind text NOT NULL,
    name text NOT NULL, last_seen bigint NOT NULL, body bytea NOT NULL);
CREATE INDEX kube_events_regarding ON {s}.kube_events (namespace, kind, name, last_seen);
CREATE INDEX kube_events_last_seen ON {s}.kube_events (last_seen);
"#,
];

/// Brings the schema up to date; returns how many migrations it applied.
pub(super) async fn migrate(client: &mut tokio_postgres::Client, schema: &str) -> Result<usize> {
    migrate_through(client, schema, MIGRATIONS.len()).await
}

/// Applies the migrations up to number `last` (tests: a schema as an earlier histor left it).
pub(super) async fn migrate_through(
    client: &mut tokio_postgres::Client,
    schema: &str,
    last: usize,
) -> Result<usize> {
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().take(last) {
        let version = i as i64 + 1;
        let tx = client.transaction().await.map_err(super::pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(super::pg_err)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.migrations
                 (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await
        .map_err(super::pg_err)?;
        let newest: Option<i64> = tx
            .query_one(
                &format!("SELECT max(version) FROM {schema}.migrations"),
                &[],
            )
            .await
            .map_err(super::pg_err)?
            .get(0);
        let newest = newest.unwrap_or(0);
        if newest > MIGRATIONS.len() as i64 {
            return Err(Error::Usage(format!(
                "store: schema {schema} is at version {newest}, newer than this histor knows \
                 ({}); run a histor at least as new as the one that wrote it",
                MIGRATIONS.len()
            )));
        }
        if newest >= version {
            continue;
        }
        tx.batch_execute(&sql.replace("{s}", schema))
            .await
            .map_err(super::pg_err)?;
        tx.execute(
            &format!("INSERT INTO {schema}.migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(super::pg_err)?;
        tx.commit().await.map_err(super::pg_err)?;
        applied += 1;
    }
    Ok(applied)
}
