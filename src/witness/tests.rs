//! The witness's logic end to end on what a real kube-apiserver v1.33 sent
//! (`tests/fixtures/v1.33/`): its AdmissionReviews through the pipeline, its watch streams
//! through the reconciler, and each verdict checked against what the apiserver committed
//! (`index.json`: `committed`, `resource_version`).

use super::observed::{self, Head};
use super::reconcile::{Reconciler, Seen, Verdict, Windows};
use super::{received_of, watch};
use crate::crd::{Operation, ResourceRule, TrackingPolicySpec};
use crate::pipeline::{self, ChangeState, CompiledPolicy, Outcome, Redactor, testdata};
use crate::store::StoredEvent;
use jiff::{SignedDuration, Timestamp};
use kube::discovery::ApiResource;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/v1.33/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn policy(resources: &[&str]) -> Arc<CompiledPolicy> {
    let spec = TrackingPolicySpec {
        resources: vec![ResourceRule {
            api_groups: vec!["*".into()],
            api_versions: vec![],
            resources: resources.iter().map(|r| r.to_string()).collect(),
            operations: vec![Operation::Create, Operation::Update, Operation::Delete],
        }],
        ..Default::default()
    };
    Arc::new(CompiledPolicy::compile("p", &spec).unwrap())
}

fn redactor() -> Redactor {
    Redactor::new(b"0123456789abcdef0123456789abcdef")
}

pub(super) fn configmaps() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        plural: "configmaps".into(),
    }
}

fn t0() -> Timestamp {
    "2026-12-01T21:22:00Z".parse().unwrap()
}

/// The recorded reviews of `resource` sent to histor's kind of webhook (the allowing one), as
/// stored events (id = order of arrival), with each one's index entry.
fn received_reviews(resource: &str) -> Vec<(StoredEvent, Value)> {
    let index: Value = serde_json::from_str(&fixture("index.json")).unwrap();
    let entries = index["admission_reviews"].as_array().unwrap();
    let (policy, redactor) = (policy(&[resource]), redactor());
    let mut out = Vec::new();
    for (i, (name, body)) in testdata::v133_reviews().into_iter().enumerate() {
        let entry = entries
            .iter()
            .find(|e| e["file"] == format!("admission/{name}"))
            .unwrap_or_else(|| panic!("{name} in index.json"));
        if entry["webhook"] != "validate.kapi.test" || entry["resource"] != resource {
            continue;
        }
        let req = pipeline::parse(body.as_bytes()).unwrap().request.unwrap();
        let at = t0() + SignedDuration::from_millis(i as i64);
        let Outcome::Record(mut captured) = pipeline::process(&req, &policy, &redactor, at) else {
            continue; // dry runs
        };
        captured.event.state = ChangeState::Received;
        out.push((
            StoredEvent {
                id: i as u64 + 1,
                event: captured.event,
            },
            entry.clone(),
        ));
    }
    out
}

/// Runs the recorded watch stream of `resource` through the reconciler after its reviews,
/// and returns the verdict of every review by id, with the unannounced commits.
/// The verdict on each event id: its state and the committed resourceVersion.
type Verdicts = HashMap<u64, (ChangeState, Option<String>)>;

fn reconcile(
    resource: &str,
    api: &ApiResource,
    reviews: &[(StoredEvent, Value)],
) -> (Verdicts, Vec<Seen>) {
    let (policies, redactor) = (vec![policy(&[resource])], redactor());
    let mut r = Reconciler::new(Windows {
        confirm: SignedDuration::from_secs(30),
        grace: SignedDuration::from_secs(2),
    });
    r.set_health(resource, Some(t0() - SignedDuration::from_secs(1)));
    let mut verdicts = Vec::new();
    for (e, _) in reviews {
        verdicts.extend(r.received(received_of(e).expect("a received change")));
    }
    let seen_at = t0() + SignedDuration::from_secs(1);
    for (kind, object) in watch::parse_stream(&fixture(&format!("watch/{resource}.jsonl"))) {
        if kind == "BOOKMARK" {
            continue;
        }
        let deleted = kind == "DELETED";
        let op = if deleted {
            Operation::Delete
        } else {
            Operation::Update
        };
        let req = observed::synthetic_request(api, &object, op, "");
        verdicts.extend(r.committed(Seen {
            uid: watch::uid_of(&object).unwrap(),
            resource: resource.into(),
            resource_version: watch::rv_of(&object).unwrap(),
            deleted,
            digests: observed::digests(&policies, &redactor, &req),
            seen_at,
            object,
            baseline: false,
        }));
    }
    verdicts.extend(r.tick(t0() + SignedDuration::from_secs(60)));
    let mut states = HashMap::new();
    let mut unannounced = Vec::new();
    for v in verdicts {
        match v {
            Verdict::Resolve(res) => {
                let rv = res.commit.map(|c| c.resource_version);
                assert!(
                    states.insert(res.id, (res.state, rv)).is_none(),
                    "one verdict each"
                );
            }
            Verdict::Unannounced(seen) => unannounced.push(seen),
        }
    }
    (states, unannounced)
}

#[test]
fn every_recorded_configmap_review_gets_the_verdict_the_apiserver_commit_gives() {
    let reviews = received_reviews("configmaps");
    assert!(reviews.len() > 30, "{}", reviews.len());
    let (states, unannounced) = reconcile("configmaps", &configmaps(), &reviews);
    let mut not_applied = Vec::new();
    for (e, entry) in &reviews {
        let name = entry["file"].as_str().unwrap();
        let got = states
            .get(&e.id)
            .unwrap_or_else(|| panic!("no verdict on {name}"));
        if entry["committed"] == true {
            let rv = entry["resource_version"].as_str().map(str::to_owned);
            assert_eq!(got, &(ChangeState::Confirmed, rv), "{name}");
        } else {
            assert_eq!(got.0, ChangeState::NotApplied, "{name}");
            not_applied.push(name.rsplit('/').next().unwrap().to_owned());
        }
    }
    // The denied create, the create over quota, and the 12 superseded race attempts.
    assert!(
        not_applied.iter().any(|n| n.starts_with("021-")),
        "{not_applied:?}"
    );
    assert!(
        not_applied.iter().any(|n| n.starts_with("025-")),
        "{not_applied:?}"
    );
    assert_eq!(
        not_applied.iter().filter(|n| n.contains("-race-")).count(),
        12,
        "{not_applied:?}"
    );
    // Every commit of the stream was announced by a review (the webhook saw them all) except
    // the quota status writes' objects, which are not ConfigMaps: so none is left over.
    assert!(
        unannounced.is_empty(),
        "{:?}",
        unannounced
            .iter()
            .map(|s| (
                s.object["metadata"]["name"].clone(),
                s.resource_version.clone()
            ))
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_recorded_deployment_review_including_the_scale_is_confirmed() {
    let api = ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        plural: "deployments".into(),
    };
    let reviews = received_reviews("deployments");
    let (states, _) = reconcile("deployments", &api, &reviews);
    for (e, entry) in &reviews {
        let name = entry["file"].as_str().unwrap();
        let got = &states[&e.id];
        assert_eq!(entry["committed"], true, "{name}");
        assert_eq!(got.0, ChangeState::Confirmed, "{name}");
        assert_eq!(
            got.1.as_deref(),
            entry["resource_version"].as_str(),
            "{name}"
        );
    }
}

#[test]
fn a_commit_no_review_announced_becomes_an_observed_change_with_its_field_manager() {
    // The kubectl edit of app-config as if the webhook had missed it: the store holds the
    // state before it (the patch's commit, the line before).
    let stream = watch::parse_stream(&fixture("watch/configmaps.jsonl"));
    let i = stream
        .iter()
        .position(|(_, o)| o["data"]["mode"] == "edited-by-kubectl-edit")
        .unwrap();
    let (before, after) = (&stream[i - 1].1, &stream[i].1);
    assert_eq!(after["data"]["mode"], "edited-by-kubectl-edit");
    let (policies, redactor) = (vec![policy(&["configmaps"])], redactor());
    let req = observed::synthetic_request(&configmaps(), before, Operation::Update, "");
    let (head_state, _) =
        observed::clean_under(&policies[0], &redactor, &req, observed::Purpose::Record).unwrap();
    let head_event = observed::observed_event(
        &policies,
        &redactor,
        &configmaps(),
        before,
        false,
        false,
        None,
        commit("230"),
        None,
    )
    .unwrap();
    let head = Head {
        event: StoredEvent {
            id: 1,
            event: head_event.event,
        },
        state: Some(head_state),
    };
    let inferred = super::managed::infer_actor(after);
    let c = observed::observed_event(
        &policies,
        &redactor,
        &configmaps(),
        after,
        false,
        false,
        Some(&head),
        commit("231"),
        inferred,
    )
    .expect("an observed change");
    let e = &c.event;
    assert_eq!(
        (e.operation, e.state),
        (Operation::Update, ChangeState::Observed)
    );
    assert_eq!(e.user.username, "", "no authenticated user");
    assert_eq!(e.inferred.as_ref().unwrap().manager, "kubectl-edit");
    assert_eq!(e.changes.len(), 1, "{:?}", e.changes);
    assert_eq!(e.changes[0].path, "/data/mode");
    assert_eq!(
        e.request_uid,
        format!("watch:{}:231", e.object_uid.as_deref().unwrap())
    );
    assert!(c.before.is_some());

    // The same state again (a status or noise-only commit): nothing to record.
    let head = Head {
        state: c.event.object.clone(),
        event: StoredEvent {
            id: 2,
            event: c.event.clone(),
        },
    };
    assert!(
        observed::observed_event(
            &policies,
            &redactor,
            &configmaps(),
            after,
            false,
            false,
            Some(&head),
            commit("232"),
            None
        )
        .is_none()
    );
    // A deletion of an object the store never knew, and a baseline object: nothing either.
    for (deleted, baseline) in [(true, false), (false, true)] {
        assert!(
            observed::observed_event(
                &policies,
                &redactor,
                &configmaps(),
                after,
                deleted,
                baseline,
                None,
                commit("233"),
                None
            )
            .is_none()
        );
    }
}

#[test]
fn secret_values_are_compared_and_recorded_only_as_keyed_hashes() {
    let stream = watch::parse_stream(&fixture("watch/secrets.jsonl"));
    let (_, object) = stream
        .iter()
        .find(|(k, o)| k == "ADDED" && o["metadata"]["name"] == "alice-db")
        .unwrap();
    let api = ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Secret".into(),
        plural: "secrets".into(),
    };
    let policies = vec![policy(&["secrets"])];
    let c = observed::observed_event(
        &policies,
        &redactor(),
        &api,
        object,
        false,
        false,
        None,
        commit("300"),
        None,
    )
    .unwrap();
    let text = serde_json::to_string(&c.event).unwrap();
    assert!(c.event.redacted);
    assert!(
        !text.contains("czNjcjN0LXYxMzM="),
        "the value reached the event: {text}"
    );
    assert!(!text.contains("s3cr3t-v133"), "{text}");
}

fn commit(rv: &str) -> crate::pipeline::Commit {
    crate::pipeline::Commit {
        resource_version: rv.into(),
        seen_at: t0(),
        witness: crate::pipeline::Witness::Watch,
    }
}

#[test]
fn the_policy_status_says_which_watch_fails_and_why() {
    let w = super::Witness::new(super::Settings::default());
    let p = policy(&["configmaps"]);
    assert_eq!(w.policy_health(&p).0, None, "not leading: Unknown");
    let _running = super::Running::start(w.watches.clone());
    assert_eq!(w.policy_health(&p).1, "NothingWatched");
    w.watches
        .lock()
        .unwrap()
        .by_resource
        .insert("configmaps".into(), (configmaps(), None));
    assert_eq!(
        w.policy_health(&p),
        (Some(true), "Watching".into(), "watching configmaps".into())
    );
    let mut changes = w.health_changes();
    changes.mark_unchanged();
    w.watches.lock().unwrap().update(|w| {
        w.by_resource.get_mut("configmaps").unwrap().1 =
            Some("configmaps is forbidden: User cannot list resource".into())
    });
    assert!(changes.has_changed().unwrap(), "the controller is told");
    changes.mark_unchanged();
    // The same failure again says nothing new to the controller.
    w.watches.lock().unwrap().update(|w| {
        w.by_resource.get_mut("configmaps").unwrap().1 =
            Some("configmaps is forbidden: again".into())
    });
    assert!(!changes.has_changed().unwrap());
    let (ok, reason, message) = w.policy_health(&p);
    assert_eq!((ok, reason.as_str()), (Some(false), "WatchFailing"));
    assert!(
        message.contains("configmaps: configmaps is forbidden"),
        "{message}"
    );
    // A policy on other resources is not concerned.
    assert_eq!(w.policy_health(&policy(&["secrets"])).1, "NothingWatched");
    drop(_running);
    assert_eq!(
        w.policy_health(&p).0,
        None,
        "leadership lost: Unknown again"
    );
}

#[test]
fn a_policy_that_filters_by_user_compares_commits_but_records_none_it_cannot_attribute() {
    let stream = watch::parse_stream(&fixture("watch/configmaps.jsonl"));
    let (_, object) = &stream[0];
    let mut spec = policy(&["configmaps"]).spec().clone();
    spec.users = Some(crate::crd::UserFilter {
        exclude: vec!["system:*".into()],
        ..Default::default()
    });
    let filtered = Arc::new(CompiledPolicy::compile("p", &spec).unwrap());
    let req = observed::synthetic_request(&configmaps(), object, Operation::Update, "");
    // A review by alice passed the filter: its commit still confirms it.
    assert_eq!(
        observed::digests(std::slice::from_ref(&filtered), &redactor(), &req).len(),
        1
    );
    // Unannounced, its user unknown (an excluded controller, maybe): not recorded.
    let c = observed::observed_event(
        &[filtered],
        &redactor(),
        &configmaps(),
        object,
        false,
        false,
        None,
        commit("229"),
        None,
    );
    assert!(c.is_none(), "{c:?}");
    // A policy without user filters records it.
    let open = observed::observed_event(
        &[policy(&["configmaps"])],
        &redactor(),
        &configmaps(),
        object,
        false,
        false,
        None,
        commit("229"),
        None,
    );
    assert!(open.is_some());
}

#[test]
fn after_a_relist_an_object_the_list_lacks_is_an_observed_delete_with_its_last_state() {
    use crate::store::{EventStore, MemStore};
    let store = MemStore::default();
    let reviews = received_reviews("configmaps");
    // The store knows every recorded ConfigMap; app-config was deleted, the others live.
    for (e, entry) in &reviews {
        let mut c = crate::pipeline::Captured::new(e.event.clone(), None);
        c.event.state = if entry["committed"] == true {
            ChangeState::Confirmed
        } else {
            ChangeState::NotApplied
        };
        store.append(&[c]).unwrap();
    }
    let live = store.live_objects("configmaps").unwrap();
    let names: Vec<&str> = live.iter().map(|h| h.name.as_str()).collect();
    assert!(!names.contains(&"app-config"), "{names:?}");
    assert!(names.contains(&"race"), "{names:?}");
    // A relist shows all of them but `race`.
    let listed: std::collections::HashSet<String> = live
        .iter()
        .filter(|h| h.name != "race")
        .map(|h| h.uid.clone())
        .collect();
    let later = Timestamp::now();
    let gone = super::vanished(&store, "configmaps", &listed, later).unwrap();
    // A list that began before the store took the objects' changes says nothing of them.
    assert!(
        super::vanished(&store, "configmaps", &listed, t0())
            .unwrap()
            .is_empty()
    );
    // The denied create and the one over quota are newest events of objects no list shows, but
    // they never existed.
    assert!(names.contains(&"forbidden-by-policy"), "{names:?}");
    assert_eq!(
        gone.len(),
        1,
        "{:?}",
        gone.iter().map(|h| &h.event.event.name).collect::<Vec<_>>()
    );
    let c = observed::vanished_event(&gone[0], t0()).expect("a delete");
    let e = &c.event;
    assert_eq!(
        (e.operation, e.state, e.name.as_str()),
        (Operation::Delete, ChangeState::Observed, "race")
    );
    assert_eq!(e.user.username, "");
    assert!(e.inferred.is_none(), "nobody is known to have deleted it");
    assert_eq!(
        e.object.as_ref().unwrap()["data"]["k6"],
        "v6",
        "its last state"
    );
}

#[test]
fn changes_left_received_by_an_earlier_term_become_unconfirmed_and_newer_ones_wait() {
    use crate::store::{EventStore, MemStore, Query};
    let store = MemStore::default();
    let reviews = received_reviews("configmaps");
    for (e, _) in &reviews {
        store
            .append(&[crate::pipeline::Captured::new(e.event.clone(), None)])
            .unwrap();
    }
    let n = reviews.len() as u64;
    // The first 10 were received before this term's window.
    let until = reviews[10].0.event.received_at;
    assert_eq!(super::stale_to_unconfirmed(&store, until).unwrap(), 10);
    let left = store
        .query(&Query {
            state: Some(ChangeState::Received),
            limit: 1000,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(left.events.len() as u64, n - 10);
    assert_eq!(
        super::stale_to_unconfirmed(&store, until).unwrap(),
        0,
        "once"
    );
}
