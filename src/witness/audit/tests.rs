//! The audit witness end to end on what a real kube-apiserver v1.33 sent
//! (`tests/fixtures/v1.33/`, `tests/fixtures/audit/v1.33/`): its AdmissionReviews through the
//! pipeline into a store, its audit log through the journal and the join, and every verdict
//! checked against what the apiserver committed (`index.json`).

use super::*;
use crate::crd::{Operation, ResourceRule, TrackingPolicySpec};
use crate::metrics::Metrics;
use crate::pipeline::{self, CompiledPolicy, Outcome, Redactor, testdata};
use crate::store::{EventStore, MemAudit, MemStore};
use serde_json::Value;

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn audit_log() -> Vec<AuditEvent> {
    fixture("audit/v1.33/audit.log")
        .lines()
        .map(|l| crate::usage::parse_line(l.as_bytes()).unwrap().unwrap())
        .collect()
}

fn policy() -> CompiledPolicy {
    let spec = TrackingPolicySpec {
        resources: vec![ResourceRule {
            api_groups: vec!["*".into()],
            api_versions: vec![],
            resources: ["configmaps", "secrets", "deployments", "deployments/scale"]
                .map(String::from)
                .to_vec(),
            operations: vec![Operation::Create, Operation::Update, Operation::Delete],
        }],
        ..Default::default()
    };
    CompiledPolicy::compile("p", &spec).unwrap()
}

/// The reviews histor's kind of webhook got, recorded in order of arrival, each received at
/// the earliest time its request allows (the apiserver's request time; ids increase). Returns
/// each recorded review's index entry by request uid.
fn record_reviews(store: &MemStore, log: &[AuditEvent]) -> HashMap<String, Value> {
    let index: Value = serde_json::from_str(&fixture("v1.33/index.json")).unwrap();
    let entries = index["admission_reviews"].as_array().unwrap();
    let received: HashMap<&str, Timestamp> = log
        .iter()
        .filter(|e| e.is_final())
        .filter_map(|e| Some((e.audit_id.as_str(), e.request_received_timestamp?)))
        .collect();
    let (policy, redactor) = (policy(), Redactor::new(b"0123456789abcdef0123456789abcdef"));
    let mut at = Timestamp::UNIX_EPOCH;
    let mut recorded = HashMap::new();
    for (name, body) in testdata::v133_reviews() {
        let entry = entries
            .iter()
            .find(|e| e["file"] == format!("admission/{name}"))
            .unwrap();
        if entry["webhook"] != "validate.kapi.test" {
            continue;
        }
        let request_time = received[entry["audit_id"].as_str().unwrap()];
        at = request_time.max(at + SignedDuration::from_micros(1));
        let req = pipeline::parse(body.as_bytes()).unwrap().request.unwrap();
        let Outcome::Record(mut captured) = pipeline::process(&req, &policy, &redactor, at) else {
            continue; // dry runs, other resources
        };
        captured.event.state = ChangeState::Received;
        store.append(&[captured]).unwrap();
        recorded.insert(req.uid.clone(), entry.clone());
    }
    recorded
}

fn witness(store: Arc<MemStore>, journal: Arc<MemAudit>) -> AuditWitness {
    AuditWitness::new(
        journal,
        Verdicts {
            store,
            notifier: None,
            on_not_applied: None,
            metrics: Arc::new(Metrics::default()),
        },
        Settings::default(),
    )
}

fn all_events(store: &MemStore) -> Vec<StoredEvent> {
    let page = store
        .query(&Query {
            limit: MAX_PAGE,
            ..Query::default()
        })
        .unwrap();
    page.events
        .iter()
        .map(|e| store.get(e.id).unwrap().unwrap())
        .collect()
}

#[tokio::test]
async fn every_recorded_review_gets_the_verdict_the_apiserver_gave() {
    let log = audit_log();
    let store = Arc::new(MemStore::new());
    let recorded = record_reviews(&store, &log);
    assert!(recorded.len() > 40, "{}", recorded.len());
    let journal = Arc::new(MemAudit::new());
    let taken = take_in(journal.as_ref(), &log).unwrap();
    assert_eq!(taken.duplicate, 0);
    assert!(taken.new > 300, "{taken:?}");

    let w = witness(store.clone(), journal.clone());
    let report = w.pass(Timestamp::now()).await.unwrap();
    assert_eq!(report.waiting, 0, "nothing waits: every change is stored");
    assert_eq!(journal.counts().unwrap().queued, 0);

    let mut checked = 0;
    for stored in all_events(&store) {
        let e = &stored.event;
        let entry = &recorded[&e.request_uid];
        let file = entry["file"].as_str().unwrap();
        let audit = e
            .audit
            .as_ref()
            .unwrap_or_else(|| panic!("{file}: no audit account"));
        assert_eq!(audit.audit_id, entry["audit_id"], "{file}");
        assert_eq!(
            audit.code,
            entry["response_code"].as_u64().map(|c| c as u16),
            "{file}"
        );
        if entry["committed"] == true {
            assert_eq!(e.state, ChangeState::Confirmed, "{file}");
            let commit = e.commit.as_ref().unwrap();
            assert_eq!(commit.witness, pipeline::Witness::Audit);
            if e.operation != Operation::Delete {
                // A delete answers with a Status, which has no resourceVersion.
                assert_eq!(commit.resource_version, entry["resource_version"], "{file}");
            }
        } else {
            assert_eq!(
                e.state,
                ChangeState::NotApplied,
                "{file}: {}",
                entry["not_committed_reason"]
            );
        }
        let impersonated = file.contains("impersonated-bob");
        assert_eq!(
            audit.impersonated_by.as_deref(),
            impersonated.then_some("admin"),
            "{file}"
        );
        if impersonated {
            assert_eq!(e.user.username, "bob");
        }
        checked += 1;
    }
    assert_eq!(checked, recorded.len());
}

#[tokio::test]
async fn a_source_repeating_itself_changes_nothing() {
    let log = audit_log();
    let store = Arc::new(MemStore::new());
    record_reviews(&store, &log);
    let journal = Arc::new(MemAudit::new());
    take_in(journal.as_ref(), &log).unwrap();
    let w = witness(store.clone(), journal.clone());
    w.pass(Timestamp::now()).await.unwrap();
    let before = all_events(&store);
    // The same events again, from the webhook's batches this time.
    let mut again = 0;
    for n in 1..=13 {
        let body = fixture(&format!("audit/v1.33/webhook-batches/{n:04}.json"));
        let batch = record::parse_list(body.as_bytes()).unwrap();
        let taken = take_in(journal.as_ref(), &batch.events).unwrap();
        assert_eq!(taken.new, 0, "batch {n}: {taken:?}");
        again += taken.duplicate;
    }
    assert!(again > 300, "{again}");
    assert_eq!(
        w.pass(Timestamp::now()).await.unwrap(),
        PassReport::default()
    );
    assert_eq!(all_events(&store), before);
}

#[tokio::test]
async fn an_audit_event_before_its_change_waits_then_is_given_up_on() {
    let log = audit_log();
    let journal = Arc::new(MemAudit::new());
    take_in(journal.as_ref(), &log).unwrap();
    let store = Arc::new(MemStore::new());
    let mut w = witness(store.clone(), journal.clone());
    // The recorded run lasted minutes: a patience that outlasts it.
    w.settings.patience = SignedDuration::from_hours(1);
    let recorded_at = log.iter().filter_map(|e| e.stage_timestamp).max().unwrap();
    // Nothing stored yet: the events naming a change wait.
    let early = w.pass(recorded_at).await.unwrap();
    assert!(early.waiting > 40, "{early:?}");
    // The changes arrive (a spool drained). A waiting event is not looked for again at once
    // (each look is a store query): a pass right away joins nothing, one a second later all.
    record_reviews(&store, &log);
    let soon = w.pass(recorded_at).await.unwrap();
    assert_eq!(
        (soon.resolved, soon.waiting),
        (0, early.waiting),
        "{soon:?}"
    );
    let joined = w
        .pass(recorded_at + SignedDuration::from_secs(1))
        .await
        .unwrap();
    // Still waiting: the audit events of reviews the policy does not record (8 writes of
    // Events, 2 dry runs); they name a uid no stored change has.
    assert_eq!(joined.waiting, 10);
    assert!(joined.resolved > 40, "{joined:?}");
    // What is left past its patience is let go.
    take_in(journal.as_ref(), &log).unwrap();
    let store2 = Arc::new(MemStore::new());
    let journal2 = Arc::new(MemAudit::new());
    take_in(journal2.as_ref(), &log).unwrap();
    let w2 = witness(store2, journal2.clone());
    let late = w2
        .pass(recorded_at + SignedDuration::from_mins(3))
        .await
        .unwrap();
    assert!(late.done > 300, "{late:?}");
    assert_eq!(late.waiting, 0);
    assert_eq!(journal2.counts().unwrap().queued, 0);
}

#[tokio::test]
async fn the_first_witness_decides_and_a_disagreement_is_counted() {
    let log = audit_log();
    let store = Arc::new(MemStore::new());
    let recorded = record_reviews(&store, &log);
    // The watch decided first, once wrongly: the denied create "confirmed".
    let denied = all_events(&store)
        .into_iter()
        .find(|e| {
            recorded[&e.event.request_uid]["file"]
                .as_str()
                .unwrap()
                .contains("denied")
        })
        .unwrap();
    store
        .resolve(&[Resolution {
            id: denied.id,
            state: ChangeState::Confirmed,
            commit: None,
        }])
        .unwrap();
    let journal = Arc::new(MemAudit::new());
    take_in(journal.as_ref(), &log).unwrap();
    let w = witness(store.clone(), journal);
    w.pass(Timestamp::now()).await.unwrap();
    let after = store.get(denied.id).unwrap().unwrap().event;
    assert_eq!(
        after.state,
        ChangeState::Confirmed,
        "the first verdict stands"
    );
    assert!(after.audit.is_some(), "the account is added all the same");
    assert_eq!(w.verdicts.metrics.witness_disagreements.get(), 1);
}

#[tokio::test]
async fn with_audit_as_the_only_witness_silent_changes_become_unconfirmed() {
    let store = Arc::new(MemStore::new());
    record_reviews(&store, &audit_log());
    let journal = Arc::new(MemAudit::new());
    let mut w = witness(store.clone(), journal);
    w.settings.unconfirmed_after = Some(SignedDuration::from_mins(2));
    // No audit event came for any of them.
    w.housekeeping(Timestamp::now()).await;
    let states: Vec<ChangeState> = all_events(&store).iter().map(|e| e.event.state).collect();
    assert!(!states.is_empty());
    assert!(
        states.iter().all(|s| *s == ChangeState::Unconfirmed),
        "{states:?}"
    );
}

fn openapi_index() -> crate::usage::EndpointIndex {
    use std::io::Read;
    let gz = std::fs::read(format!(
        "{}/tests/fixtures/openapi/v1.33/v2.json.gz",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut json)
        .unwrap();
    crate::usage::EndpointIndex::from_v2(&json).unwrap()
}

/// The usage report of what the journal counted.
fn live_report(journal: &MemAudit) -> crate::usage::Report {
    let mut usage = crate::usage::Usage::new(None);
    for row in journal.usage(0, usize::MAX).unwrap() {
        let series = crate::usage::Series::decode(&row.series).unwrap();
        usage.add_stored(row.hour, series, &row.counts);
    }
    crate::usage::Report::new(&usage, &crate::usage::Filter::default())
}

#[tokio::test]
async fn every_request_is_counted_once_as_usage_as_the_offline_report_counts_it() {
    let log = audit_log();
    let store = Arc::new(MemStore::new());
    record_reviews(&store, &log);
    let journal = Arc::new(MemAudit::new());
    take_in(journal.as_ref(), &log).unwrap();
    let index = openapi_index();
    let w = witness(store, journal.clone())
        .with_endpoints(Arc::new(endpoints::Endpoints::fixed(openapi_index())));
    let report = w.pass(Timestamp::now()).await.unwrap();
    let finals = log.iter().filter(|e| e.is_final()).count() as u64;
    assert_eq!(report.counted, finals, "reads and writes, each once");

    let mut offline = crate::usage::Usage::new(Some(&index));
    for e in &log {
        offline.add_event(e);
    }
    let offline = crate::usage::Report::new(&offline, &crate::usage::Filter::default());
    let live = live_report(&journal);
    assert!(live.operation_ids);
    assert_eq!(
        serde_json::to_value(&live.rows).unwrap(),
        serde_json::to_value(&offline.rows).unwrap(),
        "the same rows, hours and counts as `histor usage` on the same log"
    );
    assert!(
        live.rows.iter().any(|r| r.client.user == "bob"
            && r.client.impersonator.as_deref() == Some("admin")
            && r.endpoint.operation_id.as_deref() == Some("createCoreV1NamespacedConfigMap")),
        "bob's impersonated create"
    );

    // The webhook's batches repeat every event: nothing more is counted.
    for n in 1..=13 {
        let body = fixture(&format!("audit/v1.33/webhook-batches/{n:04}.json"));
        let batch = record::parse_list(body.as_bytes()).unwrap();
        take_in(journal.as_ref(), &batch.events).unwrap();
    }
    assert_eq!(w.pass(Timestamp::now()).await.unwrap().counted, 0);
    assert_eq!(
        serde_json::to_value(&live_report(&journal).rows).unwrap(),
        serde_json::to_value(&offline.rows).unwrap()
    );
}

#[test]
fn a_client_reusing_an_audit_id_has_each_request_taken() {
    let log = audit_log();
    let first = log.iter().find(|e| e.is_final()).unwrap().clone();
    let mut again = first.clone();
    again.request_received_timestamp = first
        .request_received_timestamp
        .map(|t| t + SignedDuration::from_secs(5));
    again.stage_timestamp = again.request_received_timestamp;
    let journal = MemAudit::new();
    let taken = take_in(&journal, &[first.clone(), again, first]).unwrap();
    assert_eq!((taken.new, taken.duplicate), (2, 1));
}
