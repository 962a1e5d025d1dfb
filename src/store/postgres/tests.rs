//! The PostgreSQL engine against a real server: the contract's conformance suite, and what only
//! this engine has (migrations at once, several writers, a lost COMMIT answer).
//!
//! The server comes from `HISTOR_TEST_POSTGRES` (a URL; `HISTOR_TEST_POSTGRES_PASSWORD_FILE`
//! for its password), as `scripts/with-postgres.sh` sets them. Without it these tests skip on a
//! developer's machine and fail when `HISTOR_PG_REQUIRED` is set (CI sets it). Each test gets a
//! schema of its own, dropped when it ends.

use super::append::fingerprint;
use super::*;
use crate::store::conformance::{Obj, T0, deployment, q, recorded};
use serde_json::json;
use std::sync::Arc;

/// The test server's settings, `None` when there is none and skipping is allowed.
pub(crate) fn test_config() -> Option<PgConfig> {
    match std::env::var("HISTOR_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            let password = std::env::var_os("HISTOR_TEST_POSTGRES_PASSWORD_FILE")
                .map(std::path::PathBuf::from);
            Some(PgConfig::parse(&url, password.as_deref()).expect("HISTOR_TEST_POSTGRES"))
        }
        _ => {
            assert!(
                std::env::var_os("HISTOR_PG_REQUIRED").is_none(),
                "HISTOR_PG_REQUIRED is set but HISTOR_TEST_POSTGRES is not: the PostgreSQL \
                 tests may not skip (run them under scripts/with-postgres.sh)"
            );
            eprintln!("skipped: no PostgreSQL (HISTOR_TEST_POSTGRES)");
            None
        }
    }
}

/// Drops its schema when the test ends.
pub(crate) struct Schema {
    config: PgConfig,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.config.schema.clone();
        // A store of its own, so that the drop does not depend on the test's (maybe panicked)
        // store; migrations on an existing schema are a no-op.
        if let Ok(store) = PgStore::open(&self.config)
            && let Ok(client) = store.client()
        {
            let _ = store
                .block_on(client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")));
        }
    }
}

/// A fresh schema on the test server and a store on it.
pub(crate) fn fresh() -> Option<(Schema, PgStore)> {
    let config = test_config()?;
    let name = format!("t_{:016x}", random_i64() as u64);
    let config = config.with_schema(&name);
    let store = PgStore::open(&config).expect("open the test store");
    Some((Schema { config }, store))
}

mod contract {
    crate::store::conformance::conformance_suite!(optional super::fresh);
}

mod outbox_contract {
    crate::store::outbox::conformance::outbox_conformance_suite!(
        optional
            || super::fresh()
                .map(|(schema, store)| ((schema, std::sync::Arc::new(store)), ()))
                .map(|((schema, store), ())| {
                    let outbox = store.outbox();
                    ((schema, store), outbox)
                })
    );
}

#[test]
fn replicas_starting_at_once_migrate_once_and_share_one_history() {
    let Some(config) = test_config() else { return };
    let name = format!("t_{:016x}", random_i64() as u64);
    let config = config.with_schema(&name);
    let _guard = Schema {
        config: config.clone(),
    };
    let stores: Vec<Arc<PgStore>> = std::thread::scope(|s| {
        let opens: Vec<_> = (0..4)
            .map(|_| s.spawn(|| PgStore::open(&config).map(Arc::new)))
            .collect();
        opens
            .into_iter()
            .map(|h| h.join().unwrap().expect("every replica opens"))
            .collect()
    });
    // Two writers, interleaved, on the same objects: ids stay in commit order and unique,
    // chains continue across writers, and each sees the other's events.
    let mut a = Obj::new("prod", "api", 1);
    let mut batches = vec![vec![a.create(
        "alice",
        T0,
        deployment("prod", "api", &a.uid, 1, json!({})),
    )]];
    for i in 1..20u64 {
        batches.push(vec![a.update("bob", T0 + i as i64, |o| {
            o["spec"]["replicas"] = json!(i + 1)
        })]);
    }
    let mut ids = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        ids.extend(recorded(&stores[i % 2].append(b).unwrap()));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for (i, &id) in ids.iter().enumerate() {
        let reader = &stores[(i + 1) % 4];
        assert_eq!(
            reader.state_after(id).unwrap().unwrap()["spec"]["replicas"],
            json!(i as u64 + 1),
            "event {i} read from another replica"
        );
    }
    // The other replica's retry of a request is a duplicate there too.
    assert_eq!(
        stores[3].append(&batches[5]).unwrap(),
        vec![AppendOutcome::Duplicate(ids[5])]
    );
    assert_eq!(stores[2].query(&q()).unwrap().events.len(), 20);
    let page = stores[1]
        .query(&Query {
            kind: Some("Deployment".into()),
            name: Some("api".into()),
            ..q()
        })
        .unwrap();
    assert_eq!(
        page.events.len(),
        20,
        "aliases learnt by one replica serve all"
    );
}

#[test]
fn a_retry_after_a_lost_commit_answer_reports_what_the_commit_did() {
    let Some((_schema, store)) = fresh() else {
        return;
    };
    let mut a = Obj::new("prod", "api", 1);
    let batch = vec![
        a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({}))),
        a.update("bob", T0 + 1, |o| o["spec"]["replicas"] = json!(2)),
    ];
    let first = store.append(&batch).unwrap();
    // As if that COMMIT's answer had been lost: the writer still holds the batch as pending.
    {
        let mut w = store.writer.lock();
        let client = store.client().unwrap();
        let token: i64 = store
            .block_on(client.query_one(
                &format!(
                    "SELECT token FROM {}.batches WHERE writer = $1",
                    store.sql.schema
                ),
                &[&store.writer_id],
            ))
            .unwrap()
            .get(0);
        w.pending = Some((fingerprint(&batch), token));
    }
    assert_eq!(
        store.append(&batch).unwrap(),
        first,
        "reported as the commit wrote them"
    );
    // Once through, the same batch again is what it is: duplicates.
    assert_eq!(
        store.append(&batch).unwrap(),
        recorded(&first)
            .into_iter()
            .map(AppendOutcome::Duplicate)
            .collect::<Vec<_>>()
    );
    assert_eq!(store.stats().unwrap().events, 2);
    assert!(store.stats().unwrap().bytes_on_disk > 0);
}

#[test]
fn a_server_that_is_not_there_is_a_clear_error() {
    let config = PgConfig::parse(
        "postgres://histor@127.0.0.1:1/histor?sslmode=disable&connect_timeout=2",
        None,
    )
    .unwrap();
    let err = PgStore::open(&config)
        .err()
        .expect("nothing listens on port 1");
    let text = err.to_string();
    assert!(
        text.contains("cannot connect") && text.contains("127.0.0.1:1"),
        "{text}"
    );
}

/// A TCP relay to the test server that can go silent: connections stay open and nothing comes
/// back, as with a server that hangs or a network that drops packets.
struct Relay {
    addr: std::net::SocketAddr,
    silent: Arc<std::sync::atomic::AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl Relay {
    fn to(upstream: (String, u16)) -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let flag = silent.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let pipe = |flag: Arc<AtomicBool>| {
                        move |mut r: tokio::net::tcp::OwnedReadHalf,
                              mut w: tokio::net::tcp::OwnedWriteHalf| async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match r.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                while flag.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    tokio::spawn(pipe(flag.clone())(cr, sw));
                    pipe(flag)(sr, cw).await;
                });
            }
        });
        Relay {
            addr,
            silent,
            _rt: rt,
        }
    }
}

#[test]
fn a_server_that_stops_answering_fails_appends_in_bounded_time_and_recovers() {
    use std::sync::atomic::Ordering;
    let Some(config) = test_config() else { return };
    let host = match config.pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => panic!("the test server is reached over TCP"),
    };
    let port = config.pg.get_ports().first().copied().unwrap_or(5432);
    let relay = Relay::to((host, port));
    let name = format!("t_{:016x}", random_i64() as u64);
    let mut url = url::Url::parse(&std::env::var("HISTOR_TEST_POSTGRES").unwrap()).unwrap();
    url.set_port(Some(relay.addr.port())).unwrap();
    let password =
        std::env::var_os("HISTOR_TEST_POSTGRES_PASSWORD_FILE").map(std::path::PathBuf::from);
    let relayed = PgConfig::parse(url.as_str(), password.as_deref())
        .unwrap()
        .with_schema(&name)
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(1));
    let _guard = Schema {
        config: config.clone().with_schema(&name),
    };
    let store = PgStore::open(&relayed).unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let create = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    store.append(std::slice::from_ref(&create)).unwrap();

    relay.silent.store(true, Ordering::SeqCst);
    let update = a.update("bob", T0 + 1, |o| o["spec"]["replicas"] = json!(2));
    let started = Instant::now();
    let err = store.append(std::slice::from_ref(&update)).err().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    assert!(err.to_string().contains("no answer in time"), "{err}");

    relay.silent.store(false, Ordering::SeqCst);
    // The connection that timed out was closed, not pooled; the server ends its session (and
    // the write lock its transaction held) once the close gets through. As the writer does,
    // try again until the store takes the batch.
    let started = Instant::now();
    let out = loop {
        match store.append(std::slice::from_ref(&update)) {
            Ok(out) => break out,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    assert!(matches!(out[..], [AppendOutcome::Recorded(_)]), "{out:?}");
    assert_eq!(store.stats().unwrap().events, 2);
    let id = recorded(&out)[0];
    assert_eq!(store.state_after(id).unwrap(), a.state);
}

/// A verdict, a cursor and a dedupe key written through one replica are what another replica
/// of the same schema reads (nothing stale in either's caches); two replicas resolving one
/// event at once apply exactly one verdict.
#[test]
fn verdicts_cursors_and_dedupe_keys_are_shared_by_replicas() {
    use crate::pipeline::ChangeState;
    use crate::store::Resolution;
    let Some((schema, one)) = fresh() else { return };
    let other = PgStore::open(&schema.config).unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let mut c = a
        .create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))
        .with_fingerprint([3; 16]);
    c.event.state = ChangeState::Received;
    let mut u = a.update("bob", T0 + 1, |o| o["spec"]["replicas"] = json!(2));
    u.event.state = ChangeState::Received;
    let ids = recorded(&one.append(&[c.clone(), u]).unwrap());
    // Read once on `one`, so that anything it cached would be the old state.
    assert_eq!(
        one.get(ids[0]).unwrap().unwrap().event.state,
        ChangeState::Received
    );
    let commit = Some(crate::store::conformance::commit("5", T0 + 2));
    let verdict = Resolution {
        id: ids[0],
        state: ChangeState::Confirmed,
        commit: commit.clone(),
    };
    assert_eq!(other.resolve(&[verdict]).unwrap(), [true]);
    let e = one.get(ids[0]).unwrap().unwrap().event;
    assert_eq!((e.state, e.commit), (ChangeState::Confirmed, commit));
    let confirmed = Query {
        state: Some(ChangeState::Confirmed),
        ..q()
    };
    assert_eq!(
        crate::store::conformance::ids(&one.query(&confirmed).unwrap()),
        [ids[0]]
    );

    other.set_cursor("watch/deployments.apps", "88").unwrap();
    assert_eq!(
        one.cursor("watch/deployments.apps").unwrap().as_deref(),
        Some("88")
    );
    let mut call = c.clone();
    call.event.request_uid = "another-call".into();
    call.event.policies = vec!["p2".into()];
    assert_eq!(
        other.append(&[call]).unwrap(),
        [AppendOutcome::Linked(ids[0])]
    );
    assert_eq!(
        one.live_objects("deployments.apps").unwrap(),
        [crate::store::ObjectHead {
            uid: a.uid.clone(),
            namespace: Some("prod".into()),
            name: "api".into(),
            last: ids[1],
        }]
    );

    // At once from both: one verdict applies.
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| {
            one.resolve(&[Resolution {
                id: ids[1],
                state: ChangeState::Confirmed,
                commit: None,
            }])
        });
        let y = s.spawn(|| {
            other.resolve(&[Resolution {
                id: ids[1],
                state: ChangeState::NotApplied,
                commit: None,
            }])
        });
        (x.join().unwrap().unwrap(), y.join().unwrap().unwrap())
    });
    assert_eq!(x[0] as u8 + y[0] as u8, 1, "{x:?} {y:?}");
    let state = one.get(ids[1]).unwrap().unwrap().event.state;
    assert_eq!(state == ChangeState::Confirmed, x[0]);
}

/// Events a histor before migration 3 wrote read as unconfirmed once it applies, and still
/// dedupe by their request uid.
#[test]
fn migration_3_reads_earlier_events_as_unconfirmed() {
    use crate::pipeline::ChangeState;
    let Some(config) = test_config() else { return };
    let name = format!("t_{:016x}", random_i64() as u64);
    let config = config.with_schema(&name);
    let _guard = Schema {
        config: config.clone(),
    };
    let mut a = Obj::new("prod", "api", 1);
    let c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    {
        // A store of the current version, its schema then taken back to version 2 (migration
        // 4 undone too) with the event written as version 2 wrote it (no state, no commit, a body without them).
        let store = PgStore::open(&config).unwrap();
        recorded(&store.append(std::slice::from_ref(&c)).unwrap());
        let client = store.client().unwrap();
        let mut body: serde_json::Value =
            serde_json::from_slice(&super::append::body_of(&c.event).unwrap()).unwrap();
        body.as_object_mut().unwrap().remove("state");
        let body = serde_json::to_vec(&body).unwrap();
        store
            .block_on(client.execute(&format!("UPDATE {name}.events SET body = $1"), &[&body]))
            .unwrap();
        store
            .block_on(client.batch_execute(&format!(
                "DROP TABLE {name}.kube_events, {name}.audit_usage, {name}.audit_queue, {name}.audit_keys; \
                 ALTER TABLE {name}.events DROP COLUMN audit; \
                 DROP TABLE {name}.cursors; DROP INDEX {name}.events_state; \
                 ALTER TABLE {name}.events DROP COLUMN state, DROP COLUMN committed; \
                 DELETE FROM {name}.migrations WHERE version >= 3;"
            )))
            .unwrap();
        let mut direct = store.client().unwrap();
        // Version 2 is all this schema has now: migrating through 2 finds nothing to do.
        assert_eq!(
            store
                .handle
                .block_on(schema::migrate_through(&mut direct, &name, 2))
                .unwrap(),
            0
        );
    }
    let store = PgStore::open(&config).unwrap();
    let e = store.get(T0 as u64).unwrap().unwrap().event;
    assert_eq!((e.state, &e.commit), (ChangeState::Unconfirmed, &None));
    assert_eq!(e, c.event);
    assert_eq!(
        store.append(&[c]).unwrap(),
        [AppendOutcome::Duplicate(T0 as u64)]
    );
    store.set_cursor("k", "v").unwrap();
}

/// A schema as the previous histor left it (migration 3) upgrades: its events read back as
/// they were, without an audit account, and take one; the audit journal starts empty.
#[test]
fn migration_4_adds_audit_notes_and_the_journal_to_earlier_schemas() {
    use crate::store::audit::AuditCounts;
    let Some(config) = test_config() else { return };
    let name = format!("t_{:016x}", random_i64() as u64);
    let config = config.with_schema(&name);
    let _guard = Schema {
        config: config.clone(),
    };
    let mut a = Obj::new("prod", "api", 1);
    let c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    {
        // A store of the current version, its schema then taken back to version 3 (the event
        // row is what version 3 wrote, less the column it did not have).
        let store = PgStore::open(&config).unwrap();
        recorded(&store.append(std::slice::from_ref(&c)).unwrap());
        let client = store.client().unwrap();
        store
            .block_on(client.batch_execute(&format!(
                "DROP TABLE {name}.kube_events, {name}.audit_usage, {name}.audit_queue, {name}.audit_keys; \
                 ALTER TABLE {name}.events DROP COLUMN audit; \
                 DELETE FROM {name}.migrations WHERE version >= 4;"
            )))
            .unwrap();
        let mut direct = store.client().unwrap();
        assert_eq!(
            store
                .handle
                .block_on(schema::migrate_through(&mut direct, &name, 3))
                .unwrap(),
            0,
            "version 3 is all this schema has now"
        );
    }
    let store = PgStore::open(&config).unwrap();
    let client = store.client().unwrap();
    let version: i64 = store
        .block_on(client.query_one(&format!("SELECT max(version) FROM {name}.migrations"), &[]))
        .unwrap()
        .get(0);
    assert_eq!(version, 6, "migrations 4 to 6 applied");
    let id = T0 as u64;
    assert_eq!(store.get(id).unwrap().unwrap().event, c.event);
    let note = crate::pipeline::AuditInfo {
        audit_id: "after-upgrade".into(),
        ..Default::default()
    };
    assert_eq!(store.annotate(&[(id, note.clone())]).unwrap(), [true]);
    assert_eq!(store.get(id).unwrap().unwrap().event.audit, Some(note));
    let journal = store.audit_journal();
    assert_eq!(journal.counts().unwrap(), AuditCounts::default());
    let entry = crate::store::AuditEntry {
        key: [7; 16],
        at: Timestamp::from_microsecond(T0).unwrap(),
        value: b"{}".to_vec(),
    };
    assert_eq!(journal.append(&[entry]).unwrap(), [true]);
}

/// Replicas of one schema note an event once between them, and share one audit journal:
/// appends of the same keys from both at once (in opposite orders, which would deadlock two
/// inserts taking their keys in call order) queue each key once, and what one replica takes
/// out the other does not see again.
#[test]
fn audit_notes_and_the_journal_are_shared_by_replicas() {
    use crate::pipeline::{AuditInfo, ChangeState};
    use crate::store::AuditEntry;
    use crate::store::audit::AuditCounts;
    let Some((schema, one)) = fresh() else { return };
    let other = PgStore::open(&schema.config).unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let mut c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    c.event.state = ChangeState::Received;
    let id = recorded(&one.append(&[c]).unwrap())[0];
    let note = |n: &str| AuditInfo {
        audit_id: n.into(),
        ..Default::default()
    };
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| one.annotate(&[(id, note("one"))]));
        let y = s.spawn(|| other.annotate(&[(id, note("other"))]));
        (x.join().unwrap().unwrap(), y.join().unwrap().unwrap())
    });
    assert_eq!(x[0] as u8 + y[0] as u8, 1, "{x:?} {y:?}");
    let kept = other.get(id).unwrap().unwrap().event.audit.unwrap();
    assert_eq!(kept.audit_id == "one", x[0]);

    let journals = [one.audit_journal(), other.audit_journal()];
    let entry = |n: u8| AuditEntry {
        key: [n; 16],
        at: Timestamp::from_microsecond(T0 + i64::from(n)).unwrap(),
        value: vec![n],
    };
    // Rounds of 20 fresh keys, every thread appending a round's keys at once, half of them
    // in the opposite order. A failed append is kept, not unwrapped: a thread that panicked
    // would leave the others at the barrier.
    let (rounds, per_round) = (10u8, 20u8);
    let start = std::sync::Barrier::new(4);
    let (queued, failed): (usize, Vec<String>) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (journal, start) = (&journals[t % 2], &start);
                s.spawn(move || {
                    let (mut queued, mut failed) = (0, Vec::new());
                    for r in 0..rounds {
                        let mut round: Vec<AuditEntry> =
                            (r * per_round..(r + 1) * per_round).map(entry).collect();
                        if t % 2 == 1 {
                            round.reverse();
                        }
                        start.wait();
                        match journal.append(&round) {
                            Ok(q) => queued += q.iter().filter(|&&q| q).count(),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    (queued, failed)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).fold(
            (0, Vec::new()),
            |(n, mut all), (q, f)| {
                all.extend(f);
                (n + q, all)
            },
        )
    });
    assert!(failed.is_empty(), "appends failed: {failed:?}");
    assert_eq!(queued, 200, "each key queued by exactly one call");
    let seen = journals[1].queued(None, 1000).unwrap();
    assert_eq!(seen.len(), 200);
    journals[0]
        .done(&seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(), &[])
        .unwrap();
    assert!(journals[1].queued(None, 1000).unwrap().is_empty());
    assert_eq!(
        journals[1].counts().unwrap(),
        AuditCounts {
            queued: 0,
            keys: 200
        }
    );
    assert_eq!(journals[1].append(&[entry(3)]).unwrap(), [false]);
    let before = Timestamp::from_microsecond(T0 + 30).unwrap();
    assert_eq!(journals[1].forget(before, 100).unwrap(), 30);
    assert_eq!(
        journals[0].append(&[entry(3), entry(30)]).unwrap(),
        [true, false]
    );
}
