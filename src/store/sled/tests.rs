//! Component tests of [`SledStore`] on a real sled database in a temporary directory.

use super::*;
use crate::Error;
use crate::crd::Operation;
use crate::store::MAX_PAGE;
use crate::pipeline::{Actor, ChangeOp, FieldChange, KindId, ResourceId};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const T0: i64 = 1_700_000_000_000_000;

fn ts(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap()
}

/// The diff the pipeline would produce: RFC 6902 with old values.
fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
    use json_patch::PatchOperation as P;
    json_patch::diff(before, after)
        .0
        .into_iter()
        .map(|op| match op {
            P::Add(a) => FieldChange {
                op: ChangeOp::Add,
                path: a.path.to_string(),
                old: None,
                new: Some(a.value),
            },
            P::Remove(r) => FieldChange {
                op: ChangeOp::Remove,
                path: r.path.to_string(),
                old: before.pointer(r.path.as_str()).cloned(),
                new: None,
            },
            P::Replace(r) => FieldChange {
                op: ChangeOp::Replace,
                path: r.path.to_string(),
                old: before.pointer(r.path.as_str()).cloned(),
                new: Some(r.value),
            },
            other => panic!("unexpected diff op {other:?}"),
        })
        .collect()
}

fn deployment(ns: &str, name: &str, uid: &str, replicas: u64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}
    })
}

fn uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Builds events for one object the way the pipeline would.
struct Obj {
    ns: String,
    name: String,
    uid: String,
    state: Option<Value>,
    seq: u64,
}

impl Obj {
    fn new(ns: &str, name: &str, n: u64) -> Obj {
        Obj {
            ns: ns.into(),
            name: name.into(),
            uid: uid(n),
            state: None,
            seq: 0,
        }
    }

    fn base(&mut self, op: Operation, user: &str, at: i64) -> ChangeEvent {
        self.seq += 1;
        ChangeEvent {
            request_uid: format!("{}-req-{}", self.uid, self.seq),
            received_at: ts(at),
            policies: vec!["p1".into()],
            operation: op,
            user: Actor {
                username: user.into(),
                groups: vec!["dev".into()],
                ..Actor::default()
            },
            resource: ResourceId {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                subresource: None,
            },
            kind: KindId {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
            },
            namespace: Some(self.ns.clone()),
            name: self.name.clone(),
            object_uid: Some(self.uid.clone()),
            changes: vec![],
            object: None,
            redacted: false,
        }
    }

    fn create(&mut self, user: &str, at: i64, obj: Value) -> Captured {
        let mut e = self.base(Operation::Create, user, at);
        e.object = Some(obj.clone());
        self.state = Some(obj);
        Captured {
            event: e,
            before: None,
        }
    }

    fn update(&mut self, user: &str, at: i64, f: impl FnOnce(&mut Value)) -> Captured {
        let before = self.state.clone().unwrap();
        let mut after = before.clone();
        f(&mut after);
        self.update_from(user, at, before, after)
    }

    /// An update whose `before` is what the apiserver had (not necessarily what we stored).
    fn update_from(&mut self, user: &str, at: i64, before: Value, after: Value) -> Captured {
        let mut e = self.base(Operation::Update, user, at);
        e.changes = diff(&before, &after);
        e.object = Some(after.clone());
        self.state = Some(after);
        Captured {
            event: e,
            before: Some(before),
        }
    }

    fn scale(&mut self, user: &str, at: i64, replicas: u64) -> Captured {
        let before = self.state.clone().unwrap();
        let old = before["spec"]["replicas"].clone();
        let mut e = self.base(Operation::Update, user, at);
        e.resource.subresource = Some("scale".into());
        e.kind = KindId {
            group: "autoscaling".into(),
            version: "v1".into(),
            kind: "Scale".into(),
        };
        e.changes = vec![FieldChange {
            op: ChangeOp::Replace,
            path: "/spec/replicas".into(),
            old: Some(old),
            new: Some(json!(replicas)),
        }];
        e.object = Some(json!({"kind": "Scale", "spec": {"replicas": replicas}}));
        let scale_before =
            json!({"kind": "Scale", "spec": {"replicas": before["spec"]["replicas"]}});
        let mut after = before;
        after["spec"]["replicas"] = json!(replicas);
        self.state = Some(after);
        Captured {
            event: e,
            before: Some(scale_before),
        }
    }

    fn delete(&mut self, user: &str, at: i64) -> Captured {
        let last = self.state.clone().unwrap();
        let mut e = self.base(Operation::Delete, user, at);
        e.object = Some(last.clone());
        Captured {
            event: e,
            before: Some(last),
        }
    }
}

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    (dir, store)
}

fn recorded(o: &[AppendOutcome]) -> Vec<EventId> {
    o.iter()
        .map(|o| match o {
            AppendOutcome::Recorded(id) => *id,
            other => panic!("expected Recorded, got {other:?}"),
        })
        .collect()
}

fn q() -> Query {
    Query {
        limit: 100,
        ..Query::default()
    }
}

fn ids(page: &Page) -> Vec<EventId> {
    page.events.iter().map(|e| e.id).collect()
}

#[test]
fn events_round_trip_and_ids_follow_receipt_time() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let create = a.create(
        "alice",
        T0,
        deployment("prod", "api", &a.uid, 3, json!({"app": "api"})),
    );
    let mut expected = create.event.clone();
    // Two events in the same microsecond still get distinct, increasing ids.
    let upd = a.update("bob", T0, |o| {
        o["metadata"]["labels"]["tier"] = json!("web")
    });
    let expected_upd = upd.event.clone();
    let got = recorded(&store.append(&[create, upd]).unwrap());
    assert_eq!(got, vec![T0 as u64, T0 as u64 + 1]);

    let stored = store.get(got[0]).unwrap().unwrap();
    assert_eq!(stored.event, expected);
    let stored = store.get(got[1]).unwrap().unwrap();
    assert_eq!(stored.event, expected_upd);
    expected.object = None;
    assert_eq!(store.query(&q()).unwrap().events[1].event, expected);
    assert_eq!(store.stats().unwrap().events, 2);
}

#[test]
fn duplicate_requests_are_linked_once_per_policy() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    let mut other = c.clone();
    other.event.policies = vec!["p2".into()];
    // The same request from two policies in one batch, and a retry of each.
    let out = store.append(&[c.clone(), other.clone()]).unwrap();
    let id = T0 as u64;
    assert_eq!(
        out,
        vec![AppendOutcome::Recorded(id), AppendOutcome::Linked(id)]
    );
    let out = store.append(&[c, other]).unwrap();
    assert_eq!(
        out,
        vec![AppendOutcome::Duplicate(id), AppendOutcome::Duplicate(id)]
    );
    let e = store.get(id).unwrap().unwrap();
    assert_eq!(e.event.policies, vec!["p1".to_string(), "p2".to_string()]);
    assert_eq!(store.stats().unwrap().events, 1);
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
fn a_request_uid_is_remembered_for_the_dedupe_window_and_no_longer() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    store.append(std::slice::from_ref(&c)).unwrap();
    let window = DEDUPE_WINDOW as i64;
    let retry_at = |at: i64| {
        let mut r = c.clone();
        r.event.received_at = ts(at);
        r
    };
    // Later traffic moves the window on; a retry just inside it is still the same request.
    let u = a.update("bob", T0 + window - 1_000, |o| {
        o["spec"]["replicas"] = json!(2)
    });
    store.append(&[u]).unwrap();
    assert_eq!(
        store.append(&[retry_at(T0 + window - 500)]).unwrap(),
        vec![AppendOutcome::Duplicate(T0 as u64)]
    );
    // Well past it (a slice of ~8 s may linger), the uid is forgotten: a new event.
    let far = T0 + 2 * window;
    let u = a.update("bob", far, |o| o["spec"]["replicas"] = json!(3));
    store.append(&[u]).unwrap();
    assert_eq!(
        store.append(&[retry_at(far + 10)]).unwrap(),
        vec![AppendOutcome::Recorded(far as u64 + 10)]
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

/// 40 events: updates, interleaved scale events, a chain break (a change histor never saw),
/// more than one snapshot interval, and a delete. Every version must rebuild exactly.
#[test]
fn every_version_of_a_history_rebuilds_exactly() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let mut b = Obj::new("prod", "web", 2);
    let mut expected: Vec<(Value, Option<Value>)> = Vec::new(); // (after, before)
    let mut batch = Vec::new();
    let mut t = T0;
    let c = a.create(
        "alice",
        t,
        deployment("prod", "api", &a.uid, 1, json!({"app": "api"})),
    );
    expected.push((a.state.clone().unwrap(), None));
    batch.push(c);
    for i in 1..39u64 {
        t += 1000;
        let mut before = a.state.clone();
        let c = match i {
            _ if i % 5 == 0 => a.scale("hpa", t, i),
            22 => {
                // Someone changed the object while histor was not looking: the state before
                // is the one the apiserver saw, kept as a delta from the stored chain.
                let mut seen = a.state.clone().unwrap();
                seen["metadata"]["annotations"] = json!({"missed": "yes"});
                before = Some(seen.clone());
                let mut after = seen.clone();
                after["metadata"]["labels"]["v"] = json!("22");
                a.update_from("carol", t, seen, after)
            }
            _ if i % 7 == 0 => a.update("bob", t, |o| {
                o["spec"]["template"]["spec"]["containers"][0]["image"] =
                    json!(format!("nginx:{i}"));
                o["metadata"]["labels"].as_object_mut().unwrap().remove("v");
            }),
            _ => a.update("bob", t, |o| {
                o["metadata"]["labels"]["v"] = json!(i.to_string())
            }),
        };
        expected.push((a.state.clone().unwrap(), before));
        batch.push(c);
        // Another object's events interleave in the same batches.
        if i % 3 == 0 {
            let c = if b.state.is_none() {
                b.create(
                    "alice",
                    t + 1,
                    deployment("prod", "web", &b.uid, 2, json!({})),
                )
            } else {
                b.update("alice", t + 1, |o| o["spec"]["replicas"] = json!(i))
            };
            batch.push(c);
        }
        if batch.len() >= 7 {
            store.append(&std::mem::take(&mut batch)).unwrap();
        }
    }
    t += 1000;
    let last = a.state.clone().unwrap();
    let c = a.delete("alice", t);
    expected.push((last.clone(), Some(last)));
    batch.push(c);
    store.append(&std::mem::take(&mut batch)).unwrap();

    let page = store
        .query(&Query {
            uid: Some(a.uid.clone()),
            limit: 1000,
            ..Query::default()
        })
        .unwrap();
    let mut ids = ids(&page);
    ids.reverse();
    assert_eq!(ids.len(), 40);
    for (n, (id, (after, before))) in ids.iter().zip(&expected).enumerate() {
        assert_eq!(
            store.state_after(*id).unwrap().as_ref(),
            Some(after),
            "after event {n}"
        );
        assert_eq!(
            store.state_before(*id).unwrap(),
            *before,
            "before event {n}"
        );
        assert_eq!(
            store.get(*id).unwrap().unwrap().event.object.as_ref(),
            Some(after)
        );
    }
    // Deltas, not copies: only a few events carry a snapshot.
    let snaps = store.t().unwrap().snaps.len();
    assert!(snaps <= 8, "{snaps} snapshots");
}

#[test]
fn queries_use_each_index_and_paginate() {
    let (_d, store) = open();
    let mut api = Obj::new("prod", "api", 1);
    let mut dev_api = Obj::new("dev", "api", 2);
    let mut cm = Obj::new("prod", "settings", 3);
    let mut batch = vec![
        api.create(
            "alice",
            T0,
            deployment("prod", "api", &api.uid, 1, json!({})),
        ),
        dev_api.create(
            "bob",
            T0 + 10,
            deployment("dev", "api", &dev_api.uid, 1, json!({})),
        ),
    ];
    let mut c = cm.create(
        "bob",
        T0 + 20,
        json!({"kind": "ConfigMap", "data": {"a": "1"}}),
    );
    c.event.resource = ResourceId {
        group: "".into(),
        version: "v1".into(),
        resource: "configmaps".into(),
        subresource: None,
    };
    c.event.kind = KindId {
        group: "".into(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
    };
    batch.push(c);
    for i in 0..10 {
        batch.push(api.update("alice", T0 + 100 + i, |o| {
            o["spec"]["replicas"] = json!(i + 2)
        }));
    }
    batch.push(api.scale("hpa", T0 + 200, 7));
    let all = recorded(&store.append(&batch).unwrap());

    let count = |query: Query| store.query(&query).unwrap().events.len();
    assert_eq!(count(q()), 14);
    assert_eq!(
        count(Query {
            uid: Some(api.uid.clone()),
            ..q()
        }),
        12
    );
    assert_eq!(
        count(Query {
            namespace: Some("prod".into()),
            ..q()
        }),
        13
    );
    assert_eq!(
        count(Query {
            user: Some("bob".into()),
            ..q()
        }),
        2
    );
    assert_eq!(
        count(Query {
            user: Some("bob".into()),
            namespace: Some("dev".into()),
            ..q()
        }),
        1
    );
    assert_eq!(
        count(Query {
            operation: Some(Operation::Create),
            ..q()
        }),
        3
    );
    // Kind aliases, and the scale event belongs to its Deployment.
    for kind in [
        "Deployment",
        "deployment",
        "deployments",
        "deployments.apps",
        "apps/deployment",
    ] {
        let by_name = Query {
            kind: Some(kind.into()),
            name: Some("api".into()),
            ..q()
        };
        assert_eq!(count(by_name.clone()), 13, "{kind}");
        assert_eq!(
            count(Query {
                namespace: Some("prod".into()),
                ..by_name
            }),
            12,
            "{kind}"
        );
        assert_eq!(
            count(Query {
                kind: Some(kind.into()),
                ..q()
            }),
            13,
            "{kind}"
        );
    }
    assert_eq!(
        count(Query {
            kind: Some("ConfigMap".into()),
            ..q()
        }),
        1
    );
    assert_eq!(
        count(Query {
            kind: Some("Scale".into()),
            ..q()
        }),
        0
    );

    // Pagination: newest first, exclusive continue token, no token on the last page.
    let mut seen = Vec::new();
    let mut query = Query {
        namespace: Some("prod".into()),
        limit: 5,
        ..Query::default()
    };
    loop {
        let page = store.query(&query).unwrap();
        seen.extend(ids(&page));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let mut expected: Vec<EventId> = all.iter().copied().filter(|id| *id != all[1]).collect();
    expected.reverse();
    assert_eq!(seen, expected);

    // since (inclusive) / until (exclusive).
    let window = Query {
        since: Some(ts(T0 + 100)),
        until: Some(ts(T0 + 105)),
        ..q()
    };
    let got = ids(&store.query(&window).unwrap());
    assert_eq!(
        got,
        (0..5)
            .rev()
            .map(|i| (T0 + 100 + i) as u64)
            .collect::<Vec<_>>()
    );
}

#[test]
fn recreated_objects_share_their_target_history() {
    let (_d, store) = open();
    let mut first = Obj::new("prod", "api", 1);
    let mut second = Obj::new("prod", "api", 2);
    let batch = vec![
        first.create(
            "alice",
            T0,
            deployment("prod", "api", &first.uid, 1, json!({})),
        ),
        first.delete("alice", T0 + 1),
        second.create(
            "alice",
            T0 + 2,
            deployment("prod", "api", &second.uid, 1, json!({})),
        ),
        second.update("alice", T0 + 3, |o| o["spec"]["replicas"] = json!(3)),
    ];
    store.append(&batch).unwrap();
    let page = store
        .query(&Query {
            kind: Some("deploy".into()),
            name: Some("api".into()),
            ..q()
        })
        .unwrap();
    assert!(page.events.is_empty(), "unknown alias matches nothing");
    let page = store
        .query(&Query {
            kind: Some("Deployment".into()),
            name: Some("api".into()),
            ..q()
        })
        .unwrap();
    assert_eq!(
        ids(&page),
        vec![T0 as u64 + 3, T0 as u64 + 2, T0 as u64 + 1, T0 as u64]
    );
}

fn rule(max_events: u32, hours: i64) -> RetentionRule {
    RetentionRule {
        max_events_per_object: max_events,
        max_age: jiff::SignedDuration::from_hours(hours),
    }
}

#[test]
fn retention_by_count_keeps_newest_and_a_rebuildable_chain() {
    let (_d, store) = open();
    let mut a = Obj::new("prod", "api", 1);
    let mut states = vec![];
    let mut batch = vec![a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))];
    states.push(a.state.clone().unwrap());
    for i in 1..30u64 {
        let c = if i % 4 == 0 {
            a.scale("hpa", T0 + i as i64, i)
        } else {
            a.update("bob", T0 + i as i64, |o| {
                o["metadata"]["labels"]["v"] = json!(i)
            })
        };
        states.push(a.state.clone().unwrap());
        batch.push(c);
    }
    store.append(&batch).unwrap();
    let now = ts(T0 + 1000);
    let report = store
        .enforce_retention(now, &|_| None, rule(10, 24))
        .unwrap();
    assert_eq!(report.removed, 20);
    assert!(report.objects_emptied.is_empty());
    let page = store
        .query(&Query {
            uid: Some(a.uid.clone()),
            ..q()
        })
        .unwrap();
    let mut kept = ids(&page);
    kept.reverse();
    assert_eq!(kept, (20..30).map(|i| (T0 + i) as u64).collect::<Vec<_>>());
    for (id, state) in kept.iter().zip(&states[20..]) {
        assert_eq!(store.state_after(*id).unwrap().as_ref(), Some(state));
    }
    assert_eq!(store.stats().unwrap().events, 10);
    // Nothing more to do on the next pass; appending continues the chain.
    assert_eq!(
        store
            .enforce_retention(now, &|_| None, rule(10, 24))
            .unwrap()
            .removed,
        0
    );
    let u = a.update("bob", T0 + 40, |o| {
        o["metadata"]["labels"]["v"] = json!("x")
    });
    let id = recorded(&store.append(&[u]).unwrap())[0];
    assert_eq!(store.state_after(id).unwrap(), a.state);
    // Index entries went with the events.
    assert_eq!(
        store
            .query(&Query {
                user: Some("bob".into()),
                ..q()
            })
            .unwrap()
            .events
            .len(),
        8
    );
}

#[test]
fn retention_by_age_respects_every_policy_and_reports_emptied_objects() {
    let (_d, store) = open();
    let hour = 3_600_000_000i64;
    let mut a = Obj::new("prod", "api", 1);
    let mut b = Obj::new("prod", "web", 2);
    let mut c_long = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    c_long.event.policies = vec!["short".into(), "long".into()];
    let mut old_b = b.create("alice", T0, deployment("prod", "web", &b.uid, 1, json!({})));
    old_b.event.policies = vec!["short".into()];
    let mut mid = a.update("bob", T0 + 2 * hour, |o| o["spec"]["replicas"] = json!(2));
    mid.event.policies = vec!["short".into()];
    let mut fresh = a.update("bob", T0 + 10 * hour, |o| o["spec"]["replicas"] = json!(3));
    fresh.event.policies = vec!["unknown-policy".into()];
    store.append(&[c_long, old_b, mid, fresh]).unwrap();

    let rules = |p: &str| match p {
        "short" => Some(rule(100, 1)),
        "long" => Some(rule(100, 100)),
        _ => None,
    };
    let report = store
        .enforce_retention(ts(T0 + 11 * hour), &rules, rule(100, 5))
        .unwrap();
    assert_eq!(report.removed, 2);
    assert_eq!(
        report.objects_emptied,
        vec![EmptiedObject {
            resource: "deployments.apps".into(),
            namespace: Some("prod".into()),
            name: "web".into(),
            uid: Some(b.uid.clone()),
        }]
    );
    // The long policy keeps the create; the newest survives under the default rule and still
    // rebuilds although the event between them is gone.
    let left = ids(&store.query(&q()).unwrap());
    assert_eq!(left, vec![(T0 + 10 * hour) as u64, T0 as u64]);
    assert_eq!(store.state_after(left[0]).unwrap(), a.state);
    assert_eq!(
        store
            .query(&Query {
                name: Some("web".into()),
                kind: Some("deployment".into()),
                ..q()
            })
            .unwrap()
            .events
            .len(),
        0
    );
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
        resource: ResourceId {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            subresource: None,
        },
        kind: KindId {
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
        },
        namespace: Some("demo".into()),
        name: format!("nginx-{i}"),
        object_uid: Some(uid(i)),
        changes,
        object: Some(object),
        redacted: false,
    };
    let mut t = T0;
    let creates: Vec<Captured> = states
        .iter()
        .enumerate()
        .map(|(i, s)| {
            t += 1;
            Captured {
                event: event(i as u64, Operation::Create, vec![], s.clone(), t),
                before: None,
            }
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
        batch.push(Captured {
            event: event(i, Operation::Update, changes, after.clone(), t),
            before: Some(before),
        });
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

#[test]
fn namespace_and_user_queries_span_time_slices_and_forget_old_ones() {
    let (_d, store) = open();
    let slice = 1i64 << BUCKET_SHIFT;
    let mut a = Obj::new("prod", "api", 1);
    let mut b = Obj::new("dev", "web", 2);
    let mut batch = vec![
        a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({}))),
        b.create("bob", T0, deployment("dev", "web", &b.uid, 1, json!({}))),
    ];
    for i in 1..=20i64 {
        // alice in prod every third slice, bob in dev every slice.
        if i % 3 == 0 {
            batch.push(a.update("alice", T0 + i * slice, |o| {
                o["spec"]["replicas"] = json!(i)
            }));
        }
        batch.push(b.update("bob", T0 + i * slice + 5, |o| {
            o["spec"]["replicas"] = json!(i)
        }));
    }
    store.append(&batch).unwrap();
    let alice = store
        .query(&Query {
            user: Some("alice".into()),
            ..q()
        })
        .unwrap();
    assert_eq!(alice.events.len(), 7);
    assert!(
        alice
            .events
            .iter()
            .all(|e| e.event.user.username == "alice")
    );
    assert!(alice.events.windows(2).all(|w| w[0].id > w[1].id));
    let dev = Query {
        namespace: Some("dev".into()),
        limit: 4,
        ..Query::default()
    };
    let mut all = Vec::new();
    let mut page = store.query(&dev).unwrap();
    loop {
        all.extend(ids(&page));
        let Some(next) = page.next else { break };
        page = store
            .query(&Query {
                after: Some(next),
                ..dev.clone()
            })
            .unwrap();
    }
    assert_eq!(all.len(), 21);
    let since = Query {
        user: Some("bob".into()),
        since: Some(ts(T0 + 10 * slice)),
        ..q()
    };
    assert_eq!(store.query(&since).unwrap().events.len(), 11);

    // Age retention removes the first half; stale slices go with the next full pass.
    let day = 24;
    let now = ts(T0 + 10 * slice + 1 + day * 3_600_000_000);
    let report = store
        .enforce_retention(now, &|_| None, rule(1000, day))
        .unwrap();
    assert_eq!(report.removed, 2 + 3 + 9);
    assert_eq!(
        store
            .query(&Query {
                user: Some("bob".into()),
                ..q()
            })
            .unwrap()
            .events
            .len(),
        11
    );
    assert_eq!(
        store
            .query(&Query {
                user: Some("alice".into()),
                ..q()
            })
            .unwrap()
            .events
            .len(),
        3
    );
    let rows = store.t().unwrap().ix.len();
    assert!(rows <= 11 + 4 + 11 + 4, "{rows} index rows left");
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
