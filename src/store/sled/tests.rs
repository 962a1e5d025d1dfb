//! Component tests of [`SledStore`] on a real sled database in a temporary directory.

use super::*;
use crate::Error;
use crate::crd::Operation;
use crate::store::MAX_PAGE;
use crate::store::conformance::{self, *};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    (dir, store)
}

/// The contract's tests ([`conformance`]) on sled.
mod contract {
    crate::store::conformance::conformance_suite!(super::open);
}

/// Deltas, not copies: of the conformance history's 40 events only a few carry a snapshot.
#[test]
fn a_history_keeps_few_snapshots() {
    let (_d, store) = open();
    conformance::every_version_of_a_history_rebuilds_exactly(&store);
    let snaps = store.t().unwrap().snaps.len();
    assert!(snaps <= 8, "{snaps} snapshots");
}

/// Index rows of time slices without events go with retention's full pass.
#[test]
fn stale_index_rows_are_dropped() {
    let (_d, store) = open();
    conformance::namespace_and_user_queries_span_time_slices_and_forget_old_ones(&store);
    let rows = store.t().unwrap().ix.len();
    assert!(rows <= 11 + 4 + 11 + 4, "{rows} index rows left");
}

/// A batch whose append fails after `k` of its events were written, retried: the events the
/// failed attempt wrote are reported as it wrote them (Recorded, Linked), not as Duplicates of
/// themselves, while a true duplicate inside the batch stays one.
#[test]
fn a_retried_batch_reports_what_its_failed_attempt_wrote() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let earlier = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    store.append(std::slice::from_ref(&earlier)).unwrap();
    let mut linked = earlier.clone();
    linked.event.policies = vec!["p2".into()];
    let mut batch = vec![linked, earlier.clone()];
    for n in 2..8 {
        let name = format!("app-{n}");
        let mut o = Obj::new("prod", &name, n);
        let obj = deployment("prod", &name, &o.uid, 1, json!({}));
        batch.push(o.create("bob", T0 + 10 * n as i64, obj));
    }
    // An apiserver retry of the third event, inside the same batch.
    batch.push(batch[2].clone());
    let id = T0 as u64;
    let want = |ids: &[u64]| {
        let mut w = vec![AppendOutcome::Linked(id), AppendOutcome::Duplicate(id)];
        w.extend(ids.iter().map(|&i| AppendOutcome::Recorded(i)));
        w.push(AppendOutcome::Duplicate(ids[0]));
        w
    };
    for k in 0..7 {
        let (_d, store) = open();
        store.append(std::slice::from_ref(&earlier)).unwrap();
        // The link is the first write: k = 0 fails it, k = 1 fails the first new event.
        store.fail_once_after(k);
        let err = store.append_buffered(&batch).unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err}");
        let out = store.append_buffered(&batch).unwrap();
        store.sync().unwrap();
        let ids: Vec<u64> = out[2..8]
            .iter()
            .map(|o| match o {
                AppendOutcome::Recorded(i) => *i,
                other => panic!("k={k}: expected Recorded, got {other:?}"),
            })
            .collect();
        assert_eq!(out, want(&ids), "k={k}");
        assert_eq!(store.stats().unwrap().events, 7, "k={k}");
        assert_eq!(store.query(&q()).unwrap().events.len(), 7, "k={k}");
        // Once synced, the same batch again is all duplicates.
        let again = store.append(&batch).unwrap();
        assert!(
            again
                .iter()
                .all(|o| matches!(o, AppendOutcome::Duplicate(_))),
            "k={k}: {again:?}"
        );
    }
    // Without a failure, the same outcomes.
    let out = store.append(&batch).unwrap();
    assert!(matches!(out[2], AppendOutcome::Recorded(_)));
    assert_eq!(out[..2], want(&[0])[..2]);
}

/// Bound service-account tokens carry per-credential and per-pod extras: a thousand pods of one
/// service account are one dictionary entry, not a thousand, and a query by the user finds them
/// all through the name index. Object heads in memory stay within [`HEADS_CACHE`].
#[test]
fn the_dictionary_and_the_heads_cache_stay_bounded() {
    let (_d, store) = open();
    let sa = "system:serviceaccount:ci:runner";
    let n = 4 * HEADS_CACHE as u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let name = format!("cm-{i}");
        let mut o = Obj::new("ci", &name, i + 1);
        let obj = deployment("ci", &name, &o.uid, 1, json!({}));
        let mut c = o.create(sa, T0 + i as i64, obj);
        c.event.user.uid = Some("sa-uid".into());
        c.event.user.extra = [
            (
                "authentication.kubernetes.io/credential-id".to_string(),
                vec![format!("JTI={i}")],
            ),
            (
                "authentication.kubernetes.io/pod-uid".to_string(),
                vec![format!("pod-{i}")],
            ),
        ]
        .into_iter()
        .collect();
        batch.push(c);
        if batch.len() == 50 {
            store.append(&batch).unwrap();
            batch.clear();
        }
    }
    store.append(&batch).unwrap();
    let (users, heads) = store.sizes();
    assert_eq!(users, 1, "one identity, however many credentials");
    assert!(heads <= HEADS_CACHE + 50, "{heads} heads cached");
    let page = store
        .query(&Query {
            user: Some(sa.into()),
            limit: MAX_PAGE,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(page.events.len() as u64, n);
    let user = &page.events[0].event.user;
    assert_eq!(user.uid.as_deref(), Some("sa-uid"));
    assert!(user.extra.is_empty(), "extra is not stored");
    // Evicted heads come back from disk: the objects' chains go on.
    let mut first = Obj::new("ci", "cm-0", 1);
    first.state = Some(deployment("ci", "cm-0", &first.uid, 1, json!({})));
    first.seq = 10;
    let u = first.update(sa, T0 + n as i64 + 10, |o| o["spec"]["replicas"] = json!(2));
    let id = recorded(&store.append(&[u]).unwrap())[0];
    assert_eq!(
        store.state_before(id).unwrap().unwrap()["spec"]["replicas"],
        1
    );
}

#[test]
fn dedupe_window_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(std::slice::from_ref(&c)).unwrap();
    }
    let store = reopen(|| SledStore::open(dir.path()));
    assert_eq!(
        store.append(&[c]).unwrap(),
        vec![AppendOutcome::Duplicate(T0 as u64)]
    );
    // Ids keep increasing across restarts even when the clock does not.
    let u = a.update("bob", T0 - 50, |o| o["spec"]["replicas"] = json!(2));
    assert_eq!(
        store.append(&[u]).unwrap(),
        vec![AppendOutcome::Recorded(T0 as u64 + 1)]
    );
    assert_eq!(store.stats().unwrap().events, 2);
}

/// Opens a database this test process had open a moment ago: sled releases its file lock with
/// the last reference to the database, which its I/O threads may hold a moment after the last
/// handle is dropped.
fn reopen<T, E: std::fmt::Debug>(open: impl Fn() -> std::result::Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match open() {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

#[test]
fn a_held_store_is_reported_as_locked() {
    let (dir, _store) = open();
    match SledStore::open(dir.path()) {
        Err(Error::StoreLocked(p)) => assert_eq!(p, dir.path()),
        Err(other) => panic!("expected StoreLocked, got {other}"),
        Ok(_) => panic!("opened a held store twice"),
    }
}

const CRASH_ENV: &str = "HISTOR_STORE_CRASH_DIR";

/// Not a test on its own: the child process of `acknowledged_events_survive_kill_9`.
#[test]
fn crash_helper() {
    let Ok(dir) = std::env::var(CRASH_ENV) else {
        return;
    };
    use std::io::Write;
    let store = SledStore::open(&dir).unwrap();
    let mut objs: Vec<Obj> = (0..20)
        .map(|i| Obj::new("prod", &format!("o{i}"), i))
        .collect();
    let mut t = T0;
    let mut out = std::io::stdout().lock();
    for round in 0u64.. {
        let mut batch = Vec::new();
        for o in objs.iter_mut() {
            t += 1;
            batch.push(if o.state.is_none() {
                o.create(
                    "alice",
                    t,
                    deployment("prod", &o.name.clone(), &o.uid.clone(), 1, json!({})),
                )
            } else {
                o.update("bob", t, |v| {
                    v["metadata"]["labels"]["round"] = json!(round)
                })
            });
        }
        for id in recorded(&store.append(&batch).unwrap()) {
            writeln!(out, "ack {id}").unwrap();
        }
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::sled::tests::crash_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < 2000 {
        let line = lines.next().expect("helper ended early").unwrap();
        if let Some(id) = line.strip_prefix("ack ") {
            acked.push(id.parse::<u64>().unwrap());
        }
    }
    child.kill().unwrap();
    // Acknowledgements already in the pipe count too.
    for line in lines {
        if let Some(id) = line.unwrap().strip_prefix("ack ") {
            acked.push(id.parse().unwrap());
        }
    }
    child.wait().unwrap();

    let store = SledStore::open(dir.path()).unwrap();
    for id in &acked {
        let e = store
            .get(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {id} lost"));
        assert!(e.event.object.is_some(), "{id} does not rebuild");
    }
    assert!(store.stats().unwrap().events >= acked.len() as u64);
    // The store keeps working after the crash: ids continue past everything on disk.
    let mut o = Obj::new("prod", "after", 999);
    let c = o.create(
        "alice",
        T0,
        deployment("prod", "after", &o.uid, 1, json!({})),
    );
    let id = recorded(&store.append(&[c]).unwrap())[0];
    assert!(id > *acked.iter().max().unwrap());
}

/// Strips what the pipeline strips, enough for a realistic object size.
fn clean(mut v: Value) -> Value {
    if let Some(m) = v["metadata"].as_object_mut() {
        for k in ["managedFields", "resourceVersion", "generation"] {
            m.remove(k);
        }
        if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// Disk use and append throughput for the benchmark: `kubectl label` updates of the
/// recorded 8.7 KB Deployment review, 200 objects, batches of 64 with a flush each.
/// `cargo test --release --lib store::sled::tests::measure -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_bytes_and_throughput() {
    let review: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/admission/admissionreview-update-deployment.json"
    ))
    .unwrap();
    let req = &review["request"];
    let base_new = clean(req["object"].clone());
    let base_old = clean(req["oldObject"].clone());
    let user: Actor = serde_json::from_value(req["userInfo"].clone()).unwrap();
    let n_objects = 200u64;
    let total: u64 = std::env::var("MEASURE_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mut states: Vec<Value> = (0..n_objects)
        .map(|i| {
            let mut o = base_old.clone();
            o["metadata"]["name"] = json!(format!("nginx-{i}"));
            o["metadata"]["uid"] = json!(uid(i));
            o
        })
        .collect();
    let event = |i: u64, op: Operation, changes, object, t: i64| ChangeEvent {
        request_uid: format!("5f7c0deb-38fa-4591-b677-{:012x}", t),
        received_at: ts(t),
        policies: vec!["default".into()],
        operation: op,
        user: user.clone(),
        resource: crate::pipeline::testdata::deployments(),
        kind: crate::pipeline::testdata::deployment_kind(),
        namespace: Some("demo".into()),
        name: format!("nginx-{i}"),
        object_uid: Some(uid(i)),
        changes,
        object: Some(object),
        redacted: false,
        state: Default::default(),
        commit: None,
        inferred: None,
        audit: None,
    };
    let mut t = T0;
    let creates: Vec<Captured> = states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            t += 1;
            Captured::new(
                event(i as u64, Operation::Create, vec![], s.clone(), t),
                None,
            )
        })
        .collect();
    store.append(&creates).unwrap();
    let base = store.stats().unwrap().bytes_on_disk;
    let label_diff = diff(&base_old, &base_new);
    println!(
        "fixture diff: {}",
        serde_json::to_string(&label_diff).unwrap()
    );
    println!(
        "cleaned object: {} bytes",
        serde_json::to_vec(&base_new).unwrap().len()
    );

    // Build all batches first so only the store is timed.
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    for n in 0..total {
        let i = n % n_objects;
        let before = states[i as usize].clone();
        let mut after = before.clone();
        after["metadata"]["labels"]["histor-bench"] = json!(format!("v{n}"));
        let changes = diff(&before, &after);
        t += 80;
        batch.push(Captured::new(
            event(i, Operation::Update, changes, after.clone(), t),
            Some(before),
        ));
        states[i as usize] = after;
        if batch.len() == 64 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    batches.push(batch);
    let start = std::time::Instant::now();
    for b in batches {
        store.append(&b).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let size = store.stats().unwrap().bytes_on_disk;
    let du = Command::new("du")
        .arg("-sb")
        .arg(dir.path())
        .output()
        .unwrap();
    println!(
        "{total} updates: {:.0} events/s (batches of 64, one flush each); {} bytes on disk per update event (size_on_disk {size}, du {})",
        total as f64 / secs,
        (size - base) / total,
        String::from_utf8_lossy(&du.stdout).trim()
    );
}

/// Heads are written at the end of a batch; a crash can persist a batch's events without them.
/// Reopening links those events to their objects, and the chain goes on from them.
#[test]
fn heads_of_an_interrupted_batch_are_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let create = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    let saved: Vec<(::sled::IVec, ::sled::IVec)>;
    let through;
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(&[create]).unwrap();
        saved = store
            .db()
            .get()
            .unwrap()
            .open_tree("heads")
            .unwrap()
            .iter()
            .map(Result::unwrap)
            .collect();
        through = store
            .db()
            .get()
            .unwrap()
            .open_tree("meta")
            .unwrap()
            .get(b"heads_through")
            .unwrap()
            .unwrap();
        let batch: Vec<_> = (2..4)
            .map(|r| a.update("bob", T0 + r * 10, |o| o["spec"]["replicas"] = json!(r)))
            .collect();
        store.append(&batch).unwrap();
    }
    {
        // What the disk holds when the crash came after the events, before the heads.
        let db = reopen(|| ::sled::open(dir.path()));
        let heads = db.open_tree("heads").unwrap();
        heads.clear().unwrap();
        for (k, v) in saved {
            heads.insert(k, v).unwrap();
        }
        let meta = db.open_tree("meta").unwrap();
        meta.insert(b"heads_through", through).unwrap();
        meta.insert(b"clean", &0u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let store = reopen(|| SledStore::open(dir.path()));
    let uid = a.uid.clone();
    let history = |store: &SledStore| {
        let page = store
            .query(&Query {
                uid: Some(uid.clone()),
                ..Query::default()
            })
            .unwrap();
        ids(&page)
    };
    assert_eq!(history(&store).len(), 3);
    let more = a.update("bob", T0 + 100, |o| o["spec"]["replicas"] = json!(9));
    let id = recorded(&store.append(&[more]).unwrap())[0];
    assert_eq!(history(&store).len(), 4);
    assert_eq!(store.state_after(id).unwrap(), a.state);
    assert_eq!(
        store.state_before(id).unwrap().unwrap()["spec"]["replicas"],
        3
    );
}

/// A full disk inside sled's error is still recognised as one once it is an engine-neutral
/// [`Error::Store`], and the message still says what sled said.
#[test]
fn enospc_from_sled_is_no_space() {
    let full: Error = ::sled::Error::Io(std::io::Error::from_raw_os_error(28)).into();
    assert!(matches!(full, Error::Store(_)), "{full}");
    assert!(full.is_no_space(), "{full}");
    assert!(full.to_string().starts_with("store: IO error: "), "{full}");
    let storage_full: Error =
        ::sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)).into();
    assert!(storage_full.is_no_space());
    let other: Error = ::sled::Error::Io(std::io::Error::other("boom")).into();
    assert!(!other.is_no_space());
    let corrupt: Error = ::sled::Error::Unsupported("x".into()).into();
    assert!(!corrupt.is_no_space());
}

/// The outbox contract's tests on the outbox in a sled store's database.
mod outbox_contract {
    crate::store::outbox::conformance::outbox_conformance_suite!(|| {
        let (dir, store) = super::open();
        (dir, store.outbox())
    });
}

mod outbox {
    use super::*;
    use crate::store::outbox::{BufferedRecord, OutboxIntake};

    fn intake(keys: &[u64]) -> OutboxIntake {
        OutboxIntake {
            entries: keys.iter().map(|k| (*k, b"note".to_vec())).collect(),
            buffered: vec![BufferedRecord {
                sink: "prod/hook/".into(),
                event: 42,
                value: b"held".to_vec(),
            }],
            cursor: Some(42),
        }
    }

    /// What a call returned survives a restart; keys go on increasing after it.
    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first;
        {
            let store = SledStore::open(dir.path()).unwrap();
            let o = store.outbox();
            let k = o.next_keys(2).await.unwrap();
            o.commit(intake(&k)).await.unwrap();
            o.update(k[1], b"attempted".to_vec()).await.unwrap();
            first = k;
        }
        let store = reopen(|| SledStore::open(dir.path()));
        let o = store.outbox();
        assert_eq!(
            o.entries().await.unwrap(),
            [
                (first[0], b"note".to_vec()),
                (first[1], b"attempted".to_vec())
            ]
        );
        assert_eq!(o.cursor().await.unwrap(), Some(42));
        assert_eq!(o.buffered(None).await.unwrap().len(), 1);
        let next = o.next_keys(1).await.unwrap()[0];
        assert!(next > first[1], "{next} after {first:?}");
    }

    /// The store reopens after a write failure with an outbox handed out and used (the outbox
    /// keeps no database of its own, whose file lock would make the reopen fail), and the outbox
    /// works on the new database afterwards.
    #[tokio::test]
    async fn the_outbox_follows_the_store_when_it_reopens() {
        let (_d, store) = open();
        let o = store.outbox();
        let k = o.next_keys(1).await.unwrap();
        o.commit(intake(&k)).await.unwrap();
        store.reopen().unwrap();
        assert_eq!(o.entries().await.unwrap().len(), 1);
        let k2 = o.next_keys(1).await.unwrap();
        o.commit(intake(&k2)).await.unwrap();
        assert_eq!(o.counts().await.unwrap().pending, 2);
    }

    /// The layout an earlier histor wrote (the notifier kept these trees itself): a store
    /// upgraded in place finds its queued notifications, buffered events and cursor.
    #[tokio::test]
    async fn reads_the_trees_an_earlier_version_wrote() {
        let (_d, store) = open();
        let db = store.db().get().unwrap();
        db.open_tree("notify_outbox")
            .unwrap()
            .insert(7u64.to_be_bytes(), b"entry".as_slice())
            .unwrap();
        let mut k = b"prod/hook/".to_vec();
        k.extend_from_slice(&9u64.to_be_bytes());
        db.open_tree("notify_digest")
            .unwrap()
            .insert(k, b"event".as_slice())
            .unwrap();
        db.open_tree("notify_meta")
            .unwrap()
            .insert(b"cursor", &9u64.to_be_bytes())
            .unwrap();
        drop(db);
        let o = store.outbox();
        assert_eq!(o.entries().await.unwrap(), [(7, b"entry".to_vec())]);
        assert_eq!(
            o.buffered(Some("prod/hook/")).await.unwrap(),
            [BufferedRecord {
                sink: "prod/hook/".into(),
                event: 9,
                value: b"event".to_vec()
            }]
        );
        assert_eq!(o.cursor().await.unwrap(), Some(9));
    }
}

/// Verdicts, dedupe keys and cursors are on disk when the calls return: a reopened store has
/// them (the dedupe window rebuilt from the records' keys, not their request uids).
#[test]
fn verdicts_keys_and_cursors_survive_a_restart() {
    use crate::pipeline::ChangeState;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let mut c = a
        .create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))
        .with_fingerprint([5; 16]);
    c.event.state = ChangeState::Received;
    let verdict = crate::store::Resolution {
        id: T0 as u64,
        state: ChangeState::Confirmed,
        commit: Some(conformance::commit("12", T0 + 3)),
    };
    let (crashed, cursor_only) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(std::slice::from_ref(&c)).unwrap();
        store.set_cursor("watch/deployments.apps", "77").unwrap();
        // The files as a crash now would leave them: only what was flushed.
        copy_dir(dir.path(), cursor_only.path());
        assert_eq!(
            store.resolve(std::slice::from_ref(&verdict)).unwrap(),
            [true]
        );
        copy_dir(dir.path(), crashed.path());
    }
    let store = reopen(|| SledStore::open(cursor_only.path()));
    assert_eq!(
        store.cursor("watch/deployments.apps").unwrap().as_deref(),
        Some("77")
    );
    drop(store);
    let store = reopen(|| SledStore::open(crashed.path()));
    let e = store.get(T0 as u64).unwrap().unwrap().event;
    assert_eq!(
        (e.state, e.commit),
        (ChangeState::Confirmed, verdict.commit)
    );
    assert_eq!(
        store.cursor("watch/deployments.apps").unwrap().as_deref(),
        Some("77")
    );
    let mut call = c.clone();
    call.event.request_uid = "another-call".into();
    call.event.policies = vec!["p2".into()];
    assert_eq!(
        store.append(&[call]).unwrap(),
        [AppendOutcome::Linked(T0 as u64)]
    );
}

/// A record as histor wrote it before states and dedupe keys (no tail) reads as unconfirmed
/// and dedupes by its request uid, without any migration.
#[test]
fn records_written_before_states_read_as_unconfirmed() {
    use crate::pipeline::ChangeState;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Obj::new("prod", "api", 1);
    let mut c = a
        .create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))
        .with_fingerprint([5; 16]);
    c.event.state = ChangeState::Received;
    {
        let store = SledStore::open(dir.path()).unwrap();
        store.append(std::slice::from_ref(&c)).unwrap();
        let events = store.t().unwrap().events.clone();
        let key = keys::id_key(T0 as u64);
        let raw = events.get(key).unwrap().unwrap();
        // The tail here: its flag byte and the 16-byte key.
        let old = &raw[..raw.len() - 17];
        events.insert(key, old).unwrap();
        store.sync().unwrap();
    }
    let store = reopen(|| SledStore::open(dir.path()));
    let e = store.get(T0 as u64).unwrap().unwrap().event;
    assert_eq!(
        (e.state, &e.commit, &e.inferred),
        (ChangeState::Unconfirmed, &None, &None)
    );
    let mut expected = c.event.clone();
    expected.state = ChangeState::Unconfirmed;
    assert_eq!(e, expected);
    let retry = Captured::new(c.event.clone(), None);
    assert_eq!(
        store.append(&[retry]).unwrap(),
        [AppendOutcome::Duplicate(T0 as u64)]
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
