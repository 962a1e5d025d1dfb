//! The contract's tests, written once and run against every engine: each is a function over a
//! fresh, empty `&dyn EventStore`, and [`conformance_suite!`] turns the list into `#[test]`s for
//! an engine (`conformance_suite!(|| (guard, store))`, the guard kept alive for the test, such as
//! the engine's temporary directory). A new engine is done when the same tests pass. Tests of
//! what only one engine has (crash recovery, reopening, disk layout) stay with that engine, and
//! may reuse the builders here.

use super::*;
use crate::crd::Operation;
use crate::pipeline::{
    Actor, AuditInfo, Captured, ChangeEvent, ChangeOp, ChangeState, Commit, FieldChange,
    InferredActor, KindId, ResourceId, Witness,
};
use jiff::Timestamp;
use serde_json::{Value, json};

/// `#[test]`s running every contract test against the store `$open()` makes (a pair: a guard
/// kept alive for the test, and the store).
macro_rules! conformance_suite {
    // `$open()` gives `Option<(guard, store)>`: `None` skips (an engine whose server is absent
    // on a developer's machine; the opener decides whether that may skip).
    (optional $open:expr) => {
        $crate::store::conformance::conformance_suite!(@list @optional $open);
    };
    ($open:expr) => {
        $crate::store::conformance::conformance_suite!(@list @always $open);
    };
    (@list @$how:ident $open:expr) => {
        $crate::store::conformance::conformance_suite!(@tests $how $open;
            events_round_trip_and_ids_follow_receipt_time,
            duplicate_requests_are_linked_once_per_policy,
            a_request_uid_is_remembered_for_the_dedupe_window_and_no_longer,
            every_version_of_a_history_rebuilds_exactly,
            queries_use_each_index_and_paginate,
            recreated_objects_share_their_target_history,
            retention_by_count_keeps_newest_and_a_rebuildable_chain,
            retention_by_age_respects_every_policy_and_reports_emptied_objects,
            namespace_and_user_queries_span_time_slices_and_forget_old_ones,
            pages_have_a_next_only_when_more_match,
            users_keep_their_identity_without_extra,
            retention_leaves_states_honest_and_retries_duplicate,
            unknown_states_are_none_until_a_full_object_comes,
            linked_policies_keep_their_events,
            pages_do_not_shift_while_events_arrive,
            copies_read_back_as_in_the_source,
            calls_with_one_dedupe_key_are_one_change,
            states_commits_and_inferred_actors_round_trip,
            queries_filter_by_state,
            resolutions_apply_once_and_only_to_received_events,
            live_objects_follow_the_heads,
            cursors_are_kept_by_key,
            audit_notes_apply_once_and_leave_the_state,
        );
    };
    (@tests always $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = ($open)();
                $crate::store::conformance::$name(&store);
            }
        )*
    };
    (@tests optional $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some((_guard, store)) = ($open)() {
                    $crate::store::conformance::$name(&store);
                }
            }
        )*
    };
}
pub(crate) use conformance_suite;

pub(crate) const T0: i64 = 1_700_000_000_000_000;

pub(crate) fn ts(us: i64) -> Timestamp {
    Timestamp::from_microsecond(us).unwrap()
}

/// The diff the pipeline would produce: RFC 6902 with old values.
pub(crate) fn diff(before: &Value, after: &Value) -> Vec<FieldChange> {
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

pub(crate) fn deployment(ns: &str, name: &str, uid: &str, replicas: u64, labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}
    })
}

pub(crate) fn uid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Builds events for one object the way the pipeline would.
pub(crate) struct Obj {
    pub(crate) ns: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) state: Option<Value>,
    pub(crate) seq: u64,
}

impl Obj {
    pub(crate) fn new(ns: &str, name: &str, n: u64) -> Obj {
        Obj {
            ns: ns.into(),
            name: name.into(),
            uid: uid(n),
            state: None,
            seq: 0,
        }
    }

    pub(crate) fn base(&mut self, op: Operation, user: &str, at: i64) -> ChangeEvent {
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
            resource: crate::pipeline::testdata::deployments(),
            kind: crate::pipeline::testdata::deployment_kind(),
            namespace: Some(self.ns.clone()),
            name: self.name.clone(),
            object_uid: Some(self.uid.clone()),
            changes: vec![],
            object: None,
            redacted: false,
            state: Default::default(),
            commit: None,
            inferred: None,
            audit: None,
        }
    }

    pub(crate) fn create(&mut self, user: &str, at: i64, obj: Value) -> Captured {
        let mut e = self.base(Operation::Create, user, at);
        e.object = Some(obj.clone());
        self.state = Some(obj);
        Captured::new(e, None)
    }

    pub(crate) fn update(&mut self, user: &str, at: i64, f: impl FnOnce(&mut Value)) -> Captured {
        let before = self.state.clone().unwrap();
        let mut after = before.clone();
        f(&mut after);
        self.update_from(user, at, before, after)
    }

    /// An update whose `before` is what the apiserver had (not necessarily what we stored).
    pub(crate) fn update_from(
        &mut self,
        user: &str,
        at: i64,
        before: Value,
        after: Value,
    ) -> Captured {
        let mut e = self.base(Operation::Update, user, at);
        e.changes = diff(&before, &after);
        e.object = Some(after.clone());
        self.state = Some(after);
        Captured::new(e, Some(before))
    }

    pub(crate) fn scale(&mut self, user: &str, at: i64, replicas: u64) -> Captured {
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
        Captured::new(e, Some(scale_before))
    }

    pub(crate) fn delete(&mut self, user: &str, at: i64) -> Captured {
        let last = self.state.clone().unwrap();
        let mut e = self.base(Operation::Delete, user, at);
        e.object = Some(last.clone());
        Captured::new(e, Some(last))
    }
}

pub(crate) fn recorded(o: &[AppendOutcome]) -> Vec<EventId> {
    o.iter()
        .map(|o| match o {
            AppendOutcome::Recorded(id) => *id,
            other => panic!("expected Recorded, got {other:?}"),
        })
        .collect()
}

pub(crate) fn q() -> Query {
    Query {
        limit: 100,
        ..Query::default()
    }
}

pub(crate) fn ids(page: &Page) -> Vec<EventId> {
    page.events.iter().map(|e| e.id).collect()
}

pub(crate) fn rule(max_events: u32, hours: i64) -> RetentionRule {
    RetentionRule {
        max_events_per_object: max_events,
        max_age: jiff::SignedDuration::from_hours(hours),
    }
}

pub(crate) fn events_round_trip_and_ids_follow_receipt_time(store: &dyn EventStore) {
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

pub(crate) fn duplicate_requests_are_linked_once_per_policy(store: &dyn EventStore) {
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

pub(crate) fn a_request_uid_is_remembered_for_the_dedupe_window_and_no_longer(
    store: &dyn EventStore,
) {
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

/// 40 events: updates, interleaved scale events, a chain break (a change histor never saw),
/// more than one snapshot interval, and a delete. Every version must rebuild exactly.
pub(crate) fn every_version_of_a_history_rebuilds_exactly(store: &dyn EventStore) {
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
}

pub(crate) fn queries_use_each_index_and_paginate(store: &dyn EventStore) {
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

pub(crate) fn recreated_objects_share_their_target_history(store: &dyn EventStore) {
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

pub(crate) fn retention_by_count_keeps_newest_and_a_rebuildable_chain(store: &dyn EventStore) {
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

pub(crate) fn retention_by_age_respects_every_policy_and_reports_emptied_objects(
    store: &dyn EventStore,
) {
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

pub(crate) fn namespace_and_user_queries_span_time_slices_and_forget_old_ones(
    store: &dyn EventStore,
) {
    // About 4 s: an index slice of the sled engine, so the events span many.
    let slice = 1i64 << 22;
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
}

/// A page is full at its limit (0 means 100, more than `MAX_PAGE` means `MAX_PAGE`), and has a
/// `next` only when another event matches.
pub(crate) fn pages_have_a_next_only_when_more_match(store: &dyn EventStore) {
    let mut batch = Vec::new();
    for i in 0..(MAX_PAGE as u64 + 5) {
        let name = format!("cm-{i}");
        let mut o = Obj::new("prod", &name, i + 1);
        batch.push(o.create(
            "alice",
            T0 + i as i64,
            deployment("prod", &name, &o.uid, 1, json!({})),
        ));
    }
    store.append(&batch).unwrap();
    let page = |limit, user: &str| {
        store
            .query(&Query {
                limit,
                user: Some(user.into()),
                ..Query::default()
            })
            .unwrap()
    };
    assert_eq!(page(0, "alice").events.len(), 100);
    let capped = page(5000, "alice");
    assert_eq!(capped.events.len(), MAX_PAGE);
    assert_eq!(capped.next, Some(capped.events[MAX_PAGE - 1].id));
    let rest = store
        .query(&Query {
            limit: 5000,
            after: capped.next,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(rest.events.len(), 5);
    assert_eq!(rest.next, None, "the last page");
    // Exactly a page's worth: no next.
    let exact = store
        .query(&Query {
            limit: 5,
            after: capped.next,
            ..Query::default()
        })
        .unwrap();
    assert_eq!((exact.events.len(), exact.next), (5, None));
    assert!(page(10, "nobody").events.is_empty());
}

/// Only the user's identity is kept (not `extra`); a query by user name finds every identity
/// of that name.
pub(crate) fn users_keep_their_identity_without_extra(store: &dyn EventStore) {
    let sa = "system:serviceaccount:ci:runner";
    let mut batch = Vec::new();
    for i in 0..4u64 {
        let name = format!("cm-{i}");
        let mut o = Obj::new("ci", &name, i + 1);
        let mut c = o.create(
            sa,
            T0 + i as i64,
            deployment("ci", &name, &o.uid, 1, json!({})),
        );
        c.event.user.uid = Some(format!("sa-uid-{}", i % 2));
        c.event.user.extra = [(
            "authentication.kubernetes.io/pod-uid".to_string(),
            vec![format!("pod-{i}")],
        )]
        .into_iter()
        .collect();
        batch.push(c);
    }
    let ids = recorded(&store.append(&batch).unwrap());
    let page = store
        .query(&Query {
            user: Some(sa.into()),
            ..q()
        })
        .unwrap();
    assert_eq!(page.events.len(), 4, "both identities of the name");
    for e in &page.events {
        assert!(e.event.user.extra.is_empty(), "extra is not stored");
        assert_eq!(e.event.user.groups, vec!["dev".to_string()]);
    }
    let got = store.get(ids[1]).unwrap().unwrap().event.user;
    assert_eq!(got.uid.as_deref(), Some("sa-uid-1"));
    assert!(got.extra.is_empty());
}

/// After retention removed an event, the next kept one still rebuilds its state after, but the
/// state before it is unknown; a retry of a removed request is a duplicate, not a new event.
pub(crate) fn retention_leaves_states_honest_and_retries_duplicate(store: &dyn EventStore) {
    let mut a = Obj::new("prod", "api", 1);
    let mut batch = vec![a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))];
    let first = batch[0].clone();
    for i in 1..6u64 {
        batch.push(a.update("bob", T0 + i as i64, |o| {
            o["spec"]["replicas"] = json!(i + 1)
        }));
    }
    let ids = recorded(&store.append(&batch).unwrap());
    let report = store
        .enforce_retention(ts(T0 + 100), &|_| None, rule(3, 24))
        .unwrap();
    assert_eq!(report.removed, 3);
    assert_eq!(store.stats().unwrap().events, 3);
    let oldest_kept = ids[3];
    assert_eq!(
        store.state_before(oldest_kept).unwrap(),
        None,
        "its predecessor is gone"
    );
    assert_eq!(
        store.state_after(oldest_kept).unwrap().unwrap()["spec"]["replicas"],
        4
    );
    assert_eq!(
        store.state_before(ids[4]).unwrap().unwrap()["spec"]["replicas"],
        4
    );
    assert_eq!(store.get(ids[0]).unwrap(), None);
    assert_eq!(store.state_after(ids[0]).unwrap(), None);
    assert_eq!(
        store.append(&[first]).unwrap(),
        vec![AppendOutcome::Duplicate(ids[0])]
    );

    // A gap in the middle: a long-lived policy keeps the create, a short one only its newest.
    let mut b = Obj::new("prod", "web", 2);
    let mut create = b.create(
        "alice",
        T0 + 10,
        deployment("prod", "web", &b.uid, 1, json!({})),
    );
    create.event.policies = vec!["long".into()];
    let mut batch = vec![create];
    for i in 1..4u64 {
        let mut u = b.update("bob", T0 + 10 + i as i64, |o| {
            o["spec"]["replicas"] = json!(i + 1)
        });
        u.event.policies = vec!["short".into()];
        batch.push(u);
    }
    let ids = recorded(&store.append(&batch).unwrap());
    let rules = |p: &str| match p {
        "long" => Some(rule(100, 24)),
        "short" => Some(rule(1, 24)),
        _ => None,
    };
    let report = store
        .enforce_retention(ts(T0 + 100), &rules, rule(3, 24))
        .unwrap();
    assert_eq!(report.removed, 2);
    let kept = ids_of(store, &b.uid);
    assert_eq!(kept, vec![ids[0], ids[3]]);
    assert_eq!(
        store.state_before(ids[3]).unwrap(),
        None,
        "the event before it is gone"
    );
    assert_eq!(store.state_after(ids[3]).unwrap(), b.state);
    assert_eq!(
        store.state_after(ids[0]).unwrap().unwrap()["spec"]["replicas"],
        1
    );
}

/// The ids of an object's events, oldest first.
pub(crate) fn ids_of(store: &dyn EventStore, uid: &str) -> Vec<EventId> {
    let page = store
        .query(&Query {
            uid: Some(uid.into()),
            limit: MAX_PAGE,
            ..Query::default()
        })
        .unwrap();
    let mut ids = ids(&page);
    ids.reverse();
    ids
}

/// A subresource change to an object the store never saw a state of: the event is kept, its
/// state is unknown, and the next full object anchors the chain again.
pub(crate) fn unknown_states_are_none_until_a_full_object_comes(store: &dyn EventStore) {
    let mut a = Obj::new("prod", "api", 1);
    // The store never saw the object: only what `Obj` tracks.
    a.state = Some(deployment("prod", "api", &a.uid, 1, json!({})));
    let scale = a.scale("hpa", T0, 3);
    let update = a.update("bob", T0 + 1, |o| o["metadata"]["labels"]["v"] = json!("1"));
    let ids = recorded(&store.append(&[scale, update]).unwrap());
    assert_eq!(store.state_after(ids[0]).unwrap(), None);
    assert_eq!(store.get(ids[0]).unwrap().unwrap().event.object, None);
    assert_eq!(store.state_before(ids[0]).unwrap(), None, "a first event");
    assert_eq!(store.state_after(ids[1]).unwrap(), a.state);
    // What the store had after the scale is unknown, so is the state before the update.
    assert_eq!(store.state_before(ids[1]).unwrap(), None);
    let more = a.update("bob", T0 + 2, |o| o["spec"]["replicas"] = json!(5));
    let id = recorded(&store.append(&[more]).unwrap())[0];
    assert_eq!(
        store.state_before(id).unwrap().unwrap()["metadata"]["labels"]["v"],
        "1"
    );
}

/// A policy linked to a stored event keeps it like the policy it was recorded under.
pub(crate) fn linked_policies_keep_their_events(store: &dyn EventStore) {
    let hour = 3_600_000_000i64;
    let mut a = Obj::new("prod", "api", 1);
    let mut c = a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})));
    c.event.policies = vec!["short".into()];
    let mut linked = c.clone();
    linked.event.policies = vec!["long".into()];
    let mut b = Obj::new("prod", "web", 2);
    let mut other = b.create(
        "alice",
        T0 + 1,
        deployment("prod", "web", &b.uid, 1, json!({})),
    );
    other.event.policies = vec!["short".into()];
    store.append(&[c]).unwrap();
    let out = store.append(&[linked, other]).unwrap();
    assert_eq!(out[0], AppendOutcome::Linked(T0 as u64));
    let rules = |p: &str| match p {
        "short" => Some(rule(100, 1)),
        "long" => Some(rule(100, 100)),
        _ => None,
    };
    let report = store
        .enforce_retention(ts(T0 + 2 * hour), &rules, rule(100, 1))
        .unwrap();
    assert_eq!(report.removed, 1, "only the event no policy keeps");
    assert_eq!(ids(&store.query(&q()).unwrap()), vec![T0 as u64]);
    assert_eq!(
        store.get(T0 as u64).unwrap().unwrap().event.policies,
        vec!["short".to_string(), "long".to_string()]
    );
}

/// Ids grow in commit order whatever the receipt time says, so a continue token stays valid
/// while events arrive: later events never land on an older page.
pub(crate) fn pages_do_not_shift_while_events_arrive(store: &dyn EventStore) {
    let mut a = Obj::new("prod", "api", 1);
    let mut batch = vec![a.create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))];
    for i in 1..6i64 {
        batch.push(a.update("bob", T0 + i * 10, |o| o["spec"]["replicas"] = json!(i)));
    }
    let all = recorded(&store.append(&batch).unwrap());
    let first = store
        .query(&Query {
            limit: 3,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&first), vec![all[5], all[4], all[3]]);
    // A late arrival stamped before everything (a clock behind) still gets the newest id.
    let late = a.update("carol", T0 - 1_000, |o| o["spec"]["replicas"] = json!(9));
    let late = recorded(&store.append(&[late]).unwrap())[0];
    assert!(late > all[5], "{late} after {}", all[5]);
    let second = store
        .query(&Query {
            limit: 3,
            after: first.next,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&second), vec![all[2], all[1], all[0]]);
    assert_eq!(second.next, None);
    assert_eq!(store.query(&q()).unwrap().events[0].id, late);
}

/// A history with every shape a store keeps, appended to `store` and then pruned by one
/// retention pass: deltas past a snapshot, subresource changes, an unseen change (a gap), a
/// delete, a request linked to a second policy, a request uid stored again past its dedupe
/// window, a subresource change to a state the store never saw, two events in one microsecond
/// of which retention removes the first (so the second's id was bumped past a gone event), and
/// a chain whose middle retention removed with a subresource change as the first kept event.
/// Returns the time of the retention pass; later events go after it.
pub(crate) fn varied_history(store: &dyn EventStore) -> i64 {
    let hour = 3_600_000_000i64;
    let mut a = Obj::new("prod", "api", 1);
    let first = a.create(
        "alice",
        T0,
        deployment("prod", "api", &a.uid, 1, json!({"app": "api"})),
    );
    let mut batch = vec![first.clone()];
    for i in 1..20u64 {
        batch.push(a.update("bob", T0 + i as i64, |o| {
            o["spec"]["replicas"] = json!(i + 1)
        }));
    }
    batch.push(a.scale("hpa", T0 + 30, 7));
    batch.push(a.scale("hpa", T0 + 31, 8));
    let mut seen = a.state.clone().unwrap();
    seen["metadata"]["labels"]["tier"] = json!("web");
    let mut after = seen.clone();
    after["spec"]["replicas"] = json!(9);
    batch.push(a.update_from("carol", T0 + 40, seen, after));
    batch.push(a.delete("alice", T0 + 50));

    let mut b = Obj::new("prod", "web", 2);
    let create = b.create(
        "alice",
        T0 + 60,
        deployment("prod", "web", &b.uid, 1, json!({})),
    );
    let mut linked = create.clone();
    linked.event.policies = vec!["p2".into()];
    batch.push(create);
    batch.push(linked);
    batch.push(b.update("bob", T0 + 61, |o| {
        o["metadata"]["labels"]["v"] = json!("1")
    }));

    let mut d = Obj::new("dev", "tmp", 3);
    let mut brief = d.create(
        "dave",
        T0 + 70,
        deployment("dev", "tmp", &d.uid, 1, json!({})),
    );
    brief.event.policies = vec!["brief".into()];
    let mut e = Obj::new("dev", "keep", 4);
    let mut bumped = e.create(
        "erin",
        T0 + 70,
        deployment("dev", "keep", &e.uid, 1, json!({})),
    );
    bumped.event.policies = vec!["long".into()];
    batch.push(brief);
    batch.push(bumped);

    let mut f = Obj::new("prod", "batch", 5);
    let mut create = f.create(
        "alice",
        T0 + 80,
        deployment("prod", "batch", &f.uid, 1, json!({})),
    );
    create.event.policies = vec!["long".into()];
    batch.push(create);
    for i in 1..3u64 {
        let mut u = f.update("bob", T0 + 80 + i as i64, |o| {
            o["metadata"]["labels"]["step"] = json!(i)
        });
        u.event.policies = vec!["short".into()];
        batch.push(u);
    }
    let mut scale = f.scale("hpa", T0 + 83, 4);
    scale.event.policies = vec!["short".into()];
    batch.push(scale);

    let mut g = Obj::new("prod", "unseen", 6);
    g.state = Some(deployment("prod", "unseen", &g.uid, 1, json!({})));
    batch.push(g.scale("hpa", T0 + 90, 3));
    batch.push(g.update("bob", T0 + 91, |o| {
        o["metadata"]["labels"]["v"] = json!("2")
    }));
    let outcomes = store.append(&batch).unwrap();
    assert_eq!(outcomes[25], AppendOutcome::Linked(T0 as u64 + 60));
    assert_eq!(
        ids_of(store, &e.uid),
        vec![T0 as u64 + 71],
        "bumped past the brief event"
    );

    // Once later traffic moved the dedupe window past it, the same request uid is a new event.
    let far = T0 + 3 * DEDUPE_WINDOW as i64;
    let moved = b.update("bob", far, |o| o["spec"]["replicas"] = json!(2));
    let mut again = first;
    again.event.received_at = ts(far + 1);
    recorded(&store.append(&[moved]).unwrap());
    recorded(&store.append(&[again]).unwrap());

    let rules = |p: &str| match p {
        "long" => Some(rule(100, 1000)),
        "short" => Some(rule(1, 1000)),
        "brief" => Some(rule(100, 1)),
        _ => None,
    };
    let now = T0 + 2 * hour;
    let report = store
        .enforce_retention(ts(now), &rules, rule(100, 1000))
        .unwrap();
    assert_eq!(
        report.removed, 3,
        "the brief event and the middle of the batch chain"
    );
    let kept = ids_of(store, &f.uid);
    assert_eq!(store.state_before(kept[1]).unwrap(), None);
    assert_eq!(store.state_after(kept[1]).unwrap(), f.state);
    now
}

/// Every page of `query` (small pages, to compare continue tokens too).
pub(crate) fn all_pages(store: &dyn EventStore, query: &Query) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut query = Query {
        limit: 7,
        ..query.clone()
    };
    loop {
        let page = store.query(&query).unwrap();
        let next = page.next;
        pages.push(page);
        match next {
            Some(after) => query.after = Some(after),
            None => return pages,
        }
    }
}

/// `dst` answers everything as `src` does: pages of several queries, and every event's `get`,
/// `state_after` and `state_before`.
pub(crate) fn assert_same_history(src: &dyn EventStore, dst: &dyn EventStore) {
    let queries = [
        Query::default(),
        Query {
            kind: Some("deployment".into()),
            ..Query::default()
        },
        Query {
            user: Some("hpa".into()),
            ..Query::default()
        },
        Query {
            namespace: Some("dev".into()),
            ..Query::default()
        },
        Query {
            uid: Some(uid(1)),
            ..Query::default()
        },
    ];
    for query in &queries {
        assert_eq!(all_pages(src, query), all_pages(dst, query), "{query:?}");
    }
    let mut n = 0;
    for page in all_pages(src, &Query::default()) {
        for e in page.events {
            n += 1;
            assert_eq!(
                src.get(e.id).unwrap(),
                dst.get(e.id).unwrap(),
                "get {}",
                e.id
            );
            assert_eq!(
                src.state_after(e.id).unwrap(),
                dst.state_after(e.id).unwrap(),
                "state after {}",
                e.id
            );
            assert_eq!(
                src.state_before(e.id).unwrap(),
                dst.state_before(e.id).unwrap(),
                "state before {}",
                e.id
            );
        }
    }
    assert_eq!(dst.stats().unwrap().events, n);
}

/// A history copied in ([`copy::copy_events`] through `append_copied`) reads back as it did in
/// the source, ids included; a second copy is refused unless it resumes, and then copies only
/// what is newer; the dedupe window came across; an id not newer than the store's is refused.
pub(crate) fn copies_read_back_as_in_the_source(store: &dyn EventStore) {
    use super::copy::{CopyOptions, copy_events};
    let src = MemStore::new();
    let now = varied_history(&src);
    // One batch holds the two events of one request uid.
    let options = CopyOptions {
        batch: 100,
        verify: true,
        ..CopyOptions::default()
    };
    let mut seen = Vec::new();
    let report = copy_events(&src, store, options, &mut |n| seen.push(n)).unwrap();
    assert_eq!(report.copied, src.stats().unwrap().events);
    assert_eq!(seen, vec![report.copied]);
    assert_same_history(&src, store);

    let err = copy_events(&src, store, options, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("--into-nonempty"), "{err}");
    let mut h = Obj::new("prod", "late", 7);
    let late = h.create(
        "alice",
        now + 1,
        deployment("prod", "late", &h.uid, 1, json!({})),
    );
    recorded(&src.append(std::slice::from_ref(&late)).unwrap());
    let resume = CopyOptions {
        into_nonempty: true,
        ..options
    };
    let report = copy_events(&src, store, resume, &mut |_| {}).unwrap();
    assert_eq!(report.copied, 1);
    assert!(report.resumed_after.is_some());
    assert_same_history(&src, store);

    assert_eq!(
        store.append(std::slice::from_ref(&late)).unwrap(),
        src.append(std::slice::from_ref(&late)).unwrap(),
        "a retry of a copied request is a duplicate"
    );
    let err = store.append_copied(&[(T0 as u64, late)]).unwrap_err();
    assert!(err.to_string().contains("not newer"), "{err}");
}

/// Two webhook calls of one change (different request uids, one dedupe key, as the pipeline's
/// fingerprint gives them) are one event: linked when they add a policy, a duplicate when
/// not; and one request uid with two keys is two events, so the uid is not what dedupes.
pub(crate) fn calls_with_one_dedupe_key_are_one_change(store: &dyn EventStore) {
    let mut a = Obj::new("prod", "api", 1);
    let first = a
        .create("alice", T0, deployment("prod", "api", &a.uid, 1, json!({})))
        .with_fingerprint([7; 16]);
    let mut second = first.clone();
    second.event.request_uid = "other-call".into();
    second.event.policies = vec!["p2".into()];
    let id = T0 as u64;
    assert_eq!(
        store.append(&[first.clone(), second]).unwrap(),
        vec![AppendOutcome::Recorded(id), AppendOutcome::Linked(id)]
    );
    let mut third = first.clone();
    third.event.request_uid = "a-conflict-retry".into();
    third.event.received_at = ts(T0 + 5);
    assert_eq!(
        store.append(&[third]).unwrap(),
        vec![AppendOutcome::Duplicate(id)]
    );
    // The same request uid under another key: another change.
    let mut other = first.with_fingerprint([8; 16]);
    other.event.received_at = ts(T0 + 10);
    assert_eq!(
        store.append(&[other]).unwrap(),
        vec![AppendOutcome::Recorded(T0 as u64 + 10)]
    );
    let e = store.get(id).unwrap().unwrap();
    assert_eq!(e.event.policies, vec!["p1".to_string(), "p2".to_string()]);
    assert_eq!(e.event.request_uid, a.uid.clone() + "-req-1");
    assert_eq!(store.stats().unwrap().events, 2);
}

/// A commit as a witness reports it: nanoseconds in the time, as a clock gives them.
pub(crate) fn commit(rv: &str, at: i64) -> Commit {
    Commit {
        resource_version: rv.into(),
        seen_at: Timestamp::from_nanosecond(i128::from(at) * 1000 + 123).unwrap(),
        witness: Witness::Watch,
    }
}

/// Creates of objects `n..`, one per state, with and without a commit and an inferred actor:
/// 20 captured events from `at` on, a microsecond apart.
pub(crate) fn stateful_events(at: i64, n: u64) -> Vec<Captured> {
    let mut out = Vec::new();
    for (i, state) in ChangeState::ALL.into_iter().enumerate() {
        for (j, (with_commit, with_inferred)) in
            [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .enumerate()
        {
            let k = n + (i * 4 + j) as u64;
            let name = format!("s{k}");
            let mut o = Obj::new("prod", &name, k);
            let t = at + (i * 4 + j) as i64;
            let mut c = o.create("alice", t, deployment("prod", &name, &o.uid, 1, json!({})));
            c.event.state = state;
            if with_commit {
                c.event.commit = Some(commit(&format!("{}", 1000 + k), t + 7));
            }
            if with_inferred {
                c.event.inferred = Some(InferredActor {
                    manager: "kubectl-edit".into(),
                    operation: "Update".into(),
                    time: Some(ts(t - 1_000_000)),
                    subresource: (j == 3).then(|| "status".into()),
                });
                c.event.user = Actor::default();
            }
            out.push(c);
        }
    }
    out
}

/// Every state, with and without a commit and an inferred actor, reads back as appended
/// (`get` and `query`), and as copied in through `append_copied`.
pub(crate) fn states_commits_and_inferred_actors_round_trip(store: &dyn EventStore) {
    use super::copy::{CopyOptions, copy_events};
    // Copied in first (a copy goes into a store that holds nothing newer).
    let src = MemStore::new();
    let copied = stateful_events(T0, 1);
    recorded(&src.append(&copied).unwrap());
    let options = CopyOptions {
        batch: 7,
        verify: true,
        ..CopyOptions::default()
    };
    copy_events(&src, store, options, &mut |_| {}).unwrap();
    assert_same_history(&src, store);
    for (i, c) in copied.iter().enumerate() {
        let got = store.get(T0 as u64 + i as u64).unwrap().unwrap().event;
        assert_eq!(
            (got.state, &got.commit, &got.inferred),
            (c.event.state, &c.event.commit, &c.event.inferred),
            "copied event {i}"
        );
    }

    let at = T0 + 1_000;
    let batch = stateful_events(at, 100);
    let ids = recorded(&store.append(&batch).unwrap());
    let page = store
        .query(&Query {
            since: Some(ts(at)),
            ..q()
        })
        .unwrap();
    assert_eq!(page.events.len(), batch.len());
    for (c, id) in batch.iter().zip(&ids) {
        let got = store.get(*id).unwrap().unwrap();
        assert_eq!(got.event, c.event, "event {id}");
        let mut listed = c.event.clone();
        listed.object = None;
        let in_page = page.events.iter().find(|e| e.id == *id).unwrap();
        assert_eq!(in_page.event, listed, "event {id} in a page");
    }
}

/// `Query::state` keeps only events in that state, with every other filter (each engine's
/// indexes pick the candidates), and follows resolutions.
pub(crate) fn queries_filter_by_state(store: &dyn EventStore) {
    let batch = stateful_events(T0, 1);
    let ids = recorded(&store.append(&batch).unwrap());
    let by_state = |state: ChangeState, base: Query| {
        let mut got = ids_of_all(
            store,
            &Query {
                state: Some(state),
                limit: 3,
                ..base
            },
        );
        got.sort_unstable();
        got
    };
    let expect = |state: ChangeState| -> Vec<EventId> {
        batch
            .iter()
            .zip(&ids)
            .filter(|(c, _)| c.event.state == state)
            .map(|(_, id)| *id)
            .collect()
    };
    for state in ChangeState::ALL {
        assert_eq!(by_state(state, q()), expect(state), "{state}");
        let ns = Query {
            namespace: Some("prod".into()),
            ..q()
        };
        assert_eq!(by_state(state, ns), expect(state), "{state} in prod");
        let kind = Query {
            kind: Some("deployment".into()),
            ..q()
        };
        assert_eq!(by_state(state, kind), expect(state), "{state} deployments");
        let user = Query {
            user: Some("alice".into()),
            ..q()
        };
        let alice: Vec<EventId> = expect(state)
            .into_iter()
            .filter(|id| {
                batch[ids.iter().position(|i| i == id).unwrap()]
                    .event
                    .user
                    .username
                    == "alice"
            })
            .collect();
        assert_eq!(by_state(state, user), alice, "{state} by alice");
    }
    let one = &batch[1];
    let uid = Query {
        uid: one.event.object_uid.clone(),
        ..q()
    };
    assert_eq!(by_state(ChangeState::Received, uid.clone()), vec![ids[1]]);
    assert_eq!(
        by_state(ChangeState::Confirmed, uid.clone()),
        Vec::<EventId>::new()
    );
    let done = store
        .resolve(&[Resolution {
            id: ids[1],
            state: ChangeState::Confirmed,
            commit: Some(commit("9", T0 + 9)),
        }])
        .unwrap();
    assert_eq!(done, vec![true]);
    assert_eq!(
        by_state(ChangeState::Received, uid.clone()),
        Vec::<EventId>::new()
    );
    assert_eq!(by_state(ChangeState::Confirmed, uid), vec![ids[1]]);
    let mut confirmed = expect(ChangeState::Confirmed);
    confirmed.push(ids[1]);
    confirmed.sort_unstable();
    assert_eq!(by_state(ChangeState::Confirmed, q()), confirmed);
}

/// The ids of every page of `query`, newest first.
pub(crate) fn ids_of_all(store: &dyn EventStore, query: &Query) -> Vec<EventId> {
    let mut query = query.clone();
    let mut out = Vec::new();
    loop {
        let page = store.query(&query).unwrap();
        out.extend(ids(&page));
        match page.next {
            Some(after) => query.after = Some(after),
            None => return out,
        }
    }
}

/// `resolve` changes only events still `received`, each once (the first verdict stands, also
/// within one call), says which it applied, and keeps the rest of the event; a link of the
/// same change afterwards keeps the verdict.
pub(crate) fn resolutions_apply_once_and_only_to_received_events(store: &dyn EventStore) {
    let mut objs: Vec<Obj> = (1..=4)
        .map(|n| Obj::new("prod", &format!("o{n}"), n))
        .collect();
    let mut batch: Vec<Captured> = objs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| {
            let state = deployment("prod", &o.name, &o.uid, 1, json!({}));
            let mut c = o
                .create("alice", T0 + i as i64, state)
                .with_fingerprint([i as u8 + 1; 16]);
            c.event.state = ChangeState::Received;
            c
        })
        .collect();
    batch[3].event.state = ChangeState::Unconfirmed;
    let ids = recorded(&store.append(&batch).unwrap());
    let confirmed = Resolution {
        id: ids[0],
        state: ChangeState::Confirmed,
        commit: Some(commit("41", T0 + 100)),
    };
    let refused = Resolution {
        id: ids[1],
        state: ChangeState::NotApplied,
        commit: None,
    };
    let late = Resolution {
        id: ids[0],
        state: ChangeState::NotApplied,
        commit: None,
    };
    let unknown = Resolution {
        id: T0 as u64 + 999_999,
        state: ChangeState::Confirmed,
        commit: None,
    };
    let not_received = Resolution {
        id: ids[3],
        state: ChangeState::Confirmed,
        commit: Some(commit("43", T0 + 100)),
    };
    assert_eq!(
        store
            .resolve(&[
                confirmed.clone(),
                refused,
                late.clone(),
                unknown,
                not_received
            ])
            .unwrap(),
        vec![true, true, false, false, false]
    );
    assert_eq!(store.resolve(&[late]).unwrap(), vec![false]);
    assert_eq!(store.resolve(&[]).unwrap(), Vec::<bool>::new());

    let got = |i: usize| store.get(ids[i]).unwrap().unwrap().event;
    let mut want = batch[0].event.clone();
    want.state = ChangeState::Confirmed;
    want.commit = confirmed.commit.clone();
    assert_eq!(got(0), want, "only state and commit change");
    assert_eq!(
        (got(1).state, got(1).commit),
        (ChangeState::NotApplied, None)
    );
    assert_eq!(got(2).state, ChangeState::Received);
    assert_eq!(
        (got(3).state, got(3).commit),
        (ChangeState::Unconfirmed, None)
    );
    let listed = store.query(&q()).unwrap();
    assert_eq!(listed.events[3].event.state, ChangeState::Confirmed);
    assert_eq!(listed.events[3].event.commit, confirmed.commit);

    // Another policy's call of the first change links to it, verdict kept.
    let mut call = batch[0].clone();
    call.event.request_uid = "second-webhook".into();
    call.event.policies = vec!["p2".into()];
    call.event.state = ChangeState::Received;
    assert_eq!(
        store.append(&[call]).unwrap(),
        vec![AppendOutcome::Linked(ids[0])]
    );
    want.policies.push("p2".into());
    assert_eq!(got(0), want);
    // The third is still open.
    let third = Resolution {
        id: ids[2],
        state: ChangeState::Unconfirmed,
        commit: None,
    };
    assert_eq!(store.resolve(&[third]).unwrap(), vec![true]);
    assert_eq!(got(2).state, ChangeState::Unconfirmed);
}

/// `live_objects`: per resource, the objects whose newest event is not a DELETE, with that
/// event; a subresource change counts for its parent; events without an object uid are left
/// out; an object retention emptied is gone.
pub(crate) fn live_objects_follow_the_heads(store: &dyn EventStore) {
    let hour = 3_600_000_000i64;
    let mut a = Obj::new("prod", "api", 1);
    let mut b = Obj::new("prod", "gone", 2);
    let mut c = Obj::new("dev", "scaled", 3);
    let mut old = Obj::new("dev", "old", 4);
    let mut cm = Obj::new("prod", "settings", 5);
    let mut anon = Obj::new("prod", "anon", 6);
    let mut aged = old.create(
        "alice",
        T0,
        deployment("dev", "old", &old.uid, 1, json!({})),
    );
    aged.event.policies = vec!["brief".into()];
    let later = T0 + 10 * hour;
    let mut config = cm.create(
        "alice",
        later + 5,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": "prod", "uid": cm.uid}}),
    );
    config.event.resource = ResourceId {
        group: String::new(),
        version: "v1".into(),
        resource: "configmaps".into(),
        subresource: None,
    };
    config.event.kind = KindId {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
    };
    let mut no_uid = anon.create(
        "alice",
        later + 6,
        deployment("prod", "anon", "", 1, json!({})),
    );
    no_uid.event.object_uid = None;
    let batch = vec![
        aged,
        a.create(
            "alice",
            later,
            deployment("prod", "api", &a.uid, 1, json!({})),
        ),
        b.create(
            "alice",
            later + 1,
            deployment("prod", "gone", &b.uid, 1, json!({})),
        ),
        c.create(
            "alice",
            later + 2,
            deployment("dev", "scaled", &c.uid, 1, json!({})),
        ),
        a.update("bob", later + 3, |o| o["spec"]["replicas"] = json!(2)),
        b.delete("bob", later + 4),
        config,
        no_uid,
        c.scale("hpa", later + 7, 5),
    ];
    let ids = recorded(&store.append(&batch).unwrap());
    let live = |resource: &str| {
        let mut l = store.live_objects(resource).unwrap();
        l.sort_by(|x, y| x.uid.cmp(&y.uid));
        l
    };
    let head = |o: &Obj, last: EventId| ObjectHead {
        uid: o.uid.clone(),
        namespace: Some(o.ns.clone()),
        name: o.name.clone(),
        last,
    };
    assert_eq!(
        live("deployments.apps"),
        vec![head(&a, ids[4]), head(&c, ids[8]), head(&old, ids[0])]
    );
    assert_eq!(live("configmaps"), vec![head(&cm, ids[6])]);
    assert_eq!(live("deployments"), vec![]);
    assert_eq!(live("secrets"), vec![]);

    let report = store
        .enforce_retention(
            ts(later + 8),
            &|p| (p == "brief").then(|| rule(100, 1)),
            rule(100, 100_000),
        )
        .unwrap();
    assert_eq!(report.objects_emptied.len(), 1, "{report:?}");
    assert_eq!(
        live("deployments.apps"),
        vec![head(&a, ids[4]), head(&c, ids[8])]
    );
    // A new change to a deleted object's uid brings it back (recreated under its uid).
    let back = b.create(
        "carol",
        later + 9,
        deployment("prod", "gone", &b.uid, 1, json!({})),
    );
    let back = recorded(&store.append(&[back]).unwrap());
    assert_eq!(
        live("deployments.apps"),
        vec![head(&a, ids[4]), head(&b, back[0]), head(&c, ids[8])]
    );
}

/// Cursors: `None` until set, the last value set after, one per key.
pub(crate) fn cursors_are_kept_by_key(store: &dyn EventStore) {
    assert_eq!(store.cursor("watch/deployments.apps").unwrap(), None);
    store.set_cursor("watch/deployments.apps", "1200").unwrap();
    store.set_cursor("watch/configmaps", "77").unwrap();
    store.set_cursor("watch/deployments.apps", "1305").unwrap();
    assert_eq!(
        store.cursor("watch/deployments.apps").unwrap().as_deref(),
        Some("1305")
    );
    assert_eq!(
        store.cursor("watch/configmaps").unwrap().as_deref(),
        Some("77")
    );
    assert_eq!(store.cursor("watch/secrets").unwrap(), None);
    // Any text, as a resourceVersion is opaque.
    let odd = "ünïcode\n\"quoted\" and long ".repeat(20);
    store.set_cursor("odd", &odd).unwrap();
    assert_eq!(store.cursor("odd").unwrap(), Some(odd));
}

/// The audit log's account is added once, to any event whatever its state, and reads back in
/// `get`, in pages, and after a later link or verdict.
pub(crate) fn audit_notes_apply_once_and_leave_the_state(store: &dyn EventStore) {
    let mut objs: Vec<Obj> = (1..=3)
        .map(|n| Obj::new("prod", &format!("a{n}"), n))
        .collect();
    let batch: Vec<Captured> = objs
        .iter_mut()
        .enumerate()
        .map(|(i, o)| {
            let state = deployment("prod", &o.name, &o.uid, 1, json!({}));
            let mut c = o
                .create("bob", T0 + i as i64, state)
                .with_fingerprint([i as u8 + 40; 16]);
            c.event.state = ChangeState::Received;
            c
        })
        .collect();
    let ids = recorded(&store.append(&batch).unwrap());
    let note = |n: u8| AuditInfo {
        audit_id: format!("audit-{n}"),
        code: Some(201),
        source_ips: vec!["10.0.0.7".into(), "127.0.0.1".into()],
        user_agent: Some("kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0".into()),
        impersonated_by: (n == 1).then(|| "admin".into()),
    };
    // The second event was decided first: a note does not care.
    store
        .resolve(&[Resolution {
            id: ids[1],
            state: ChangeState::Confirmed,
            commit: Some(commit("77", T0 + 50)),
        }])
        .unwrap();
    assert_eq!(
        store
            .annotate(&[
                (ids[0], note(1)),
                (ids[1], note(2)),
                (ids[0], note(9)),
                (T0 as u64 + 999_999, note(3)),
            ])
            .unwrap(),
        vec![true, true, false, false],
        "the first note of an event wins, also within a call; unknown ids are false"
    );
    assert_eq!(store.annotate(&[(ids[1], note(8))]).unwrap(), vec![false]);
    assert!(store.annotate(&[]).unwrap().is_empty());
    let got = |i: usize| store.get(ids[i]).unwrap().unwrap().event;
    let mut want = batch[0].event.clone();
    want.audit = Some(note(1));
    assert_eq!(got(0), want, "only the note changes");
    assert_eq!(got(1).state, ChangeState::Confirmed);
    assert_eq!(got(1).audit, Some(note(2)));
    assert_eq!(got(2).audit, None);
    let listed = store.query(&q()).unwrap();
    let by_id = |id| {
        listed
            .events
            .iter()
            .find(|e| e.id == id)
            .unwrap()
            .event
            .clone()
    };
    assert_eq!(by_id(ids[0]).audit, Some(note(1)), "pages carry the note");
    assert_eq!(by_id(ids[2]).audit, None);
    // A verdict after the note keeps it; so does another policy's link.
    store
        .resolve(&[Resolution {
            id: ids[0],
            state: ChangeState::NotApplied,
            commit: None,
        }])
        .unwrap();
    let mut call = batch[0].clone();
    call.event.request_uid = "second-webhook".into();
    call.event.policies = vec!["p2".into()];
    assert_eq!(
        store.append(&[call]).unwrap(),
        vec![AppendOutcome::Linked(ids[0])]
    );
    let after = got(0);
    assert_eq!(after.state, ChangeState::NotApplied);
    assert_eq!(after.audit, Some(note(1)));
    assert_eq!(after.policies.len(), 2);
}
