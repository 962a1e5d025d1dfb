//! An offline witness: a recorded watch stream (one `{"type","object"}` per line, as the
//! apiserver sends it) reconciled with the `received` changes of a store, as the live witness
//! does, but in one pass. For `histor demo` and for looking back at a recording: the changes the
//! stream shows committed become `confirmed`, the others `notApplied` (the stream is taken as
//! complete for the time it covers), and commits no review announced are recorded `observed`.

use super::observed;
use super::reconcile::{Reconciler, Seen, Verdict, Windows};
use super::{received_of, watch};
use crate::crd::Operation;
use crate::pipeline::{ChangeState, CompiledPolicy, Redactor};
use crate::store::{EventStore, Query};
use crate::{Error, Result};
use jiff::SignedDuration;
use kube::discovery::ApiResource;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What an offline pass decided: verdicts by state.
pub type Report = BTreeMap<ChangeState, u64>;

/// Reconciles `stream`, a recorded watch of `api`, with every `received` change of `store` of
/// that resource, and writes the verdicts (and the observed changes) to the store.
pub fn replay_watch(
    store: &dyn EventStore,
    policies: &[Arc<CompiledPolicy>],
    redactor: &Redactor,
    api: &ApiResource,
    stream: &str,
) -> Result<Report> {
    let resource = watch::Target::new(api.clone()).resource;
    let mut received = Vec::new();
    let mut after = None;
    loop {
        let page = store.query(&Query {
            state: Some(ChangeState::Received),
            limit: crate::store::MAX_PAGE,
            after,
            ..Query::default()
        })?;
        received.extend(
            page.events
                .iter()
                .filter_map(received_of)
                .filter(|r| r.resource == resource),
        );
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    received.reverse(); // oldest first
    let Some(first) = received.first().map(|r| r.received_at) else {
        return Ok(Report::new());
    };
    let last = received
        .iter()
        .map(|r| r.received_at)
        .max()
        .unwrap_or(first);
    let mut reconciler = Reconciler::new(Windows::default());
    // The recording is the whole truth for the time it covers.
    reconciler.set_health(&resource, Some(first - SignedDuration::from_secs(1)));
    let mut verdicts = Vec::new();
    for r in received {
        verdicts.extend(reconciler.received(r));
    }
    // A recorded stream has no arrival times: its commits are taken as seen after every review.
    let seen_at = last + SignedDuration::from_millis(1);
    for (kind, object) in watch::parse_stream(stream) {
        let deleted = match kind.as_str() {
            "ADDED" | "MODIFIED" => false,
            "DELETED" => true,
            _ => continue,
        };
        let op = if deleted {
            Operation::Delete
        } else {
            Operation::Update
        };
        let req = observed::synthetic_request(api, &object, op, "");
        let digests = observed::digests(policies, redactor, &req);
        let (Some(uid), false) = (watch::uid_of(&object), digests.is_empty()) else {
            continue;
        };
        verdicts.extend(reconciler.committed(Seen {
            uid,
            resource: resource.clone(),
            resource_version: watch::rv_of(&object).unwrap_or_default(),
            deleted,
            digests,
            seen_at,
            object,
            baseline: false,
        }));
    }
    verdicts.extend(reconciler.tick(seen_at + Windows::default().confirm * 2));

    let mut report = Report::new();
    let mut resolutions = Vec::new();
    for v in verdicts {
        match v {
            Verdict::Resolve(r) => {
                *report.entry(r.state).or_default() += 1;
                resolutions.push(r);
            }
            Verdict::Unannounced(seen) => {
                if record_unannounced(store, policies, redactor, api, &seen)? {
                    *report.entry(ChangeState::Observed).or_default() += 1;
                }
            }
        }
    }
    store.resolve(&resolutions)?;
    Ok(report)
}

/// Records a commit no review announced, unless the store has its state already.
fn record_unannounced(
    store: &dyn EventStore,
    policies: &[Arc<CompiledPolicy>],
    redactor: &Redactor,
    api: &ApiResource,
    seen: &Seen,
) -> Result<bool> {
    let Some(captured) = super::observe(store, policies, redactor, api, seen)? else {
        return Ok(false);
    };
    store.append(&[captured])?;
    Ok(true)
}

/// `v1 configmaps` and the like, for a recorded stream: the API of its objects.
pub fn api_of_stream(stream: &str, plural: &str) -> Result<ApiResource> {
    let (_, object) = watch::parse_stream(stream)
        .into_iter()
        .find(|(k, _)| k != "BOOKMARK" && k != "ERROR")
        .ok_or_else(|| Error::Usage("the watch stream holds no object".into()))?;
    let api_version = object["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), api_version.clone()),
    };
    Ok(ApiResource {
        group,
        version,
        api_version,
        kind,
        plural: plural.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Outcome, process, testdata};
    use crate::store::MemStore;
    use jiff::Timestamp;

    #[test]
    fn a_recorded_stream_confirms_what_it_shows_and_the_rest_was_not_applied() {
        let spec: crate::crd::TrackingPolicySpec = serde_json::from_value(serde_json::json!(
            {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}]}
        ))
        .unwrap();
        let policy = Arc::new(CompiledPolicy::compile("p", &spec).unwrap());
        let redactor = Redactor::new(b"0123456789abcdef0123456789abcdef");
        let store = MemStore::default();
        let t0: Timestamp = "2026-12-01T21:22:00Z".parse().unwrap();
        let mut n = 0;
        for (name, body) in testdata::v133_reviews() {
            // The allowing webhook's calls only (022 went to the denying one).
            if !name.contains("configmaps") || name.contains("deny-webhook") {
                continue;
            }
            let req = crate::pipeline::parse(body.as_bytes())
                .unwrap()
                .request
                .unwrap();
            n += 1;
            let at = t0 + SignedDuration::from_millis(n);
            if let Outcome::Record(mut c) = process(&req, &policy, &redactor, at) {
                c.event.state = ChangeState::Received;
                store.append(&[c]).unwrap();
            }
        }
        let stream = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/v1.33/watch/configmaps.jsonl"
        ))
        .unwrap();
        let api = api_of_stream(&stream, "configmaps").unwrap();
        let report = replay_watch(&store, &[policy], &redactor, &api, &stream).unwrap();
        // The denied create, the one over quota and 12 superseded race attempts.
        assert_eq!(
            report.get(&ChangeState::NotApplied),
            Some(&14),
            "{report:?}"
        );
        assert_eq!(report.get(&ChangeState::Observed), None, "{report:?}");
        let denied = store
            .query(&Query {
                name: Some("forbidden-by-policy".into()),
                ..Query::default()
            })
            .unwrap();
        assert_eq!(denied.events.len(), 1);
        assert_eq!(denied.events[0].event.state, ChangeState::NotApplied);
        // Nothing left received; a second pass finds nothing to do.
        let again = replay_watch(&store, &[], &redactor, &api, &stream).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }
}
