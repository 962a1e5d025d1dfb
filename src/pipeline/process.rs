//! The whole pure pipeline for one request and one policy: dry-run check, policy match, noise
//! stripping, Secret redaction, diff; the result is an event to record or the reason to skip.
//!
//! What is recorded, by operation:
//! - CREATE: no field changes; `object` is the cleaned new object.
//! - UPDATE: the diff between the cleaned old and new objects (skipped when empty, say a
//!   `status`-only change under a policy without `trackStatus`); `object` is the cleaned new
//!   object, `before` the cleaned old one. For the `scale` subresource the objects are Scales, so
//!   the change is `/spec/replicas`.
//! - DELETE: no field changes; `object` and `before` are the cleaned last state.
//!
//! A review whose names, uids or labels exceed Kubernetes' bounds ([`limits`]) is not recorded.
//!
//! Deduplication of retried request uids is not done here (it needs memory of past requests): the
//! caller or the store does it. Pure: no I/O, no clock (the receipt time comes in).

use super::diff::diff;
use super::event::{Captured, ChangeEvent};
use super::limits::{self, Oversized};
use super::noise::cleaned;
use super::policy::{CompiledPolicy, ConditionErrorKind, NotMatched};
use super::redact::Redactor;
use super::review::Request;
use crate::crd::Operation;
use jiff::Timestamp;
use serde_json::Value;

/// What to do with one request under one policy.
#[derive(Clone, Debug, PartialEq)]
// Built once per request and moved straight to the queue: boxing would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Record this.
    Record(Captured),
    /// Nothing to record, and why.
    Skip(SkipReason),
}

/// Why a request is not recorded under a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// A name, uid or label beyond Kubernetes' bounds ([`limits`]): no apiserver sent this.
    Oversized(Oversized),
    /// A dry-run request changes nothing.
    DryRun,
    /// The policy does not cover the request.
    NotMatched(NotMatched),
    /// An UPDATE whose cleaned diff is empty (only noise changed).
    EmptyDiff,
    /// A policy condition could not be evaluated (a broken policy, usually): worth a warning.
    ConditionError {
        /// Name of the condition.
        name: String,
        /// What went wrong, as a fixed category (never a message: those quote values).
        kind: ConditionErrorKind,
    },
}

impl SkipReason {
    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SkipReason::Oversized(_) => "oversized",
            SkipReason::DryRun => "dry_run",
            SkipReason::NotMatched(_) => "not_matched",
            SkipReason::EmptyDiff => "empty_diff",
            SkipReason::ConditionError { .. } => "condition_error",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Oversized(o) => write!(f, "oversized: {o}"),
            SkipReason::DryRun => f.write_str("dry run"),
            SkipReason::NotMatched(n) => write!(f, "not matched: {n}"),
            SkipReason::EmptyDiff => f.write_str("empty diff"),
            SkipReason::ConditionError { name, kind } => {
                write!(f, "condition {name} failed: {kind}")
            }
        }
    }
}

/// Runs the pipeline for `req` under `policy`.
pub fn process(
    req: &Request,
    policy: &CompiledPolicy,
    redactor: &Redactor,
    received_at: Timestamp,
) -> Outcome {
    if let Err(o) = limits::check(req) {
        return Outcome::Skip(SkipReason::Oversized(o));
    }
    if req.dry_run {
        return Outcome::Skip(SkipReason::DryRun);
    }
    match policy.matches(req, redactor) {
        Ok(()) => {}
        Err(NotMatched::ConditionError { name, kind }) => {
            return Outcome::Skip(SkipReason::ConditionError { name, kind });
        }
        Err(other) => return Outcome::Skip(SkipReason::NotMatched(other)),
    }

    let mut redacted = false;
    let mut prepare = |v: &Value| {
        let mut v = cleaned(v, policy.track_status(), policy.ignore_fields());
        redacted |= redactor.redact(&mut v, &req.kind);
        v
    };
    let old = req.old_object.as_ref().map(&mut prepare);
    let new = req.object.as_ref().map(&mut prepare);

    let (changes, object, before) = match req.operation {
        Operation::Update => {
            let changes = diff(
                old.as_ref().unwrap_or(&Value::Null),
                new.as_ref().unwrap_or(&Value::Null),
            );
            if changes.is_empty() {
                return Outcome::Skip(SkipReason::EmptyDiff);
            }
            (changes, new, old)
        }
        Operation::Create | Operation::Connect => (Vec::new(), new, None),
        Operation::Delete => (Vec::new(), old.clone(), old),
    };

    let event = ChangeEvent {
        request_uid: req.uid.clone(),
        received_at,
        policies: vec![policy.name().to_owned()],
        operation: req.operation,
        user: req.user.clone(),
        resource: req.resource.clone(),
        kind: req.kind.clone(),
        namespace: req.namespace.clone(),
        name: object_name(req),
        object_uid: object_uid(req),
        changes,
        object,
        redacted,
        state: Default::default(),
        commit: None,
        inferred: None,
        audit: None,
    };
    Outcome::Record(Captured::new(event, before).with_fingerprint(req.fingerprint()))
}

fn metadata_str<'a>(obj: Option<&'a Value>, field: &str) -> Option<&'a str> {
    obj?.get("metadata")?
        .get(field)?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// `request.name`; for `generateName` creates (where the apiserver sends no name) the object's
/// name when it already has one, else its `generateName` prefix.
fn object_name(req: &Request) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    let obj = req.object.as_ref().or(req.old_object.as_ref());
    metadata_str(obj, "name")
        .or_else(|| metadata_str(obj, "generateName"))
        .unwrap_or_default()
        .to_owned()
}

fn object_uid(req: &Request) -> Option<String> {
    metadata_str(req.object.as_ref(), "uid")
        .or_else(|| metadata_str(req.old_object.as_ref(), "uid"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{MatchCondition, ResourceRule, TrackingPolicySpec, UserFilter};
    use crate::pipeline::event::ChangeOp;
    use crate::pipeline::redact::is_redacted_value;
    use crate::pipeline::{summarize, testdata};
    use serde_json::json;

    fn spec() -> TrackingPolicySpec {
        TrackingPolicySpec {
            resources: vec![ResourceRule {
                api_groups: vec!["*".into()],
                api_versions: vec![],
                resources: vec!["*".into(), "*/*".into()],
                operations: vec![Operation::Create, Operation::Update, Operation::Delete],
            }],
            ..Default::default()
        }
    }

    fn policy(spec: &TrackingPolicySpec) -> CompiledPolicy {
        CompiledPolicy::compile("all", spec).unwrap()
    }

    fn redactor() -> Redactor {
        Redactor::new(b"0123456789abcdef0123456789abcdef")
    }

    fn now() -> Timestamp {
        "2026-11-22T02:08:00Z".parse().unwrap()
    }

    fn run_with(name: &str, spec: &TrackingPolicySpec) -> Outcome {
        process(&testdata::request(name), &policy(spec), &redactor(), now())
    }

    fn record(name: &str) -> Captured {
        match run_with(name, &spec()) {
            Outcome::Record(c) => c,
            Outcome::Skip(why) => panic!("{name} skipped: {why}"),
        }
    }

    fn skip(name: &str, spec: &TrackingPolicySpec) -> SkipReason {
        match run_with(name, spec) {
            Outcome::Skip(why) => why,
            Outcome::Record(c) => panic!("{name} recorded: {c:?}"),
        }
    }

    #[test]
    fn every_fixture_is_recorded_or_skipped_for_a_reason() {
        for (name, _) in testdata::FIXTURES {
            let out = run_with(name, &spec());
            let dry = name.contains("dryrun");
            match out {
                Outcome::Skip(SkipReason::DryRun) => assert!(dry, "{name}"),
                Outcome::Skip(SkipReason::EmptyDiff) => {
                    assert_eq!(*name, "update-widget-status", "{name}")
                }
                Outcome::Skip(other) => panic!("{name}: {other}"),
                Outcome::Record(c) => {
                    assert!(!dry, "{name}");
                    let ev = &c.event;
                    assert_eq!(ev.request_uid, testdata::index_uid(name));
                    assert_eq!(ev.received_at, now());
                    assert_eq!(ev.policies, ["all"]);
                    assert!(!ev.name.is_empty(), "{name}");
                    assert!(ev.object_uid.is_some(), "{name}");
                    assert!(ev.object.is_some(), "{name}");
                    assert_eq!(ev.redacted, name.contains("secret"), "{name}");
                    match ev.operation {
                        Operation::Update => {
                            assert!(!ev.changes.is_empty());
                            assert!(c.before.is_some());
                        }
                        Operation::Create => {
                            assert!(ev.changes.is_empty());
                            assert!(c.before.is_none());
                        }
                        Operation::Delete => {
                            assert!(ev.changes.is_empty());
                            assert_eq!(c.before, ev.object);
                        }
                        Operation::Connect => unreachable!(),
                    }
                    // The event survives the JSON round trip the store relies on.
                    let text = serde_json::to_string(ev).unwrap();
                    assert_eq!(&serde_json::from_str::<ChangeEvent>(&text).unwrap(), ev);
                    let _ = summarize(ev);
                }
            }
        }
    }

    #[test]
    fn the_two_webhook_calls_of_one_request_dedupe_as_one() {
        let p = policy(&spec());
        let captured =
            |prefix: &str| match process(&testdata::v133_request(prefix), &p, &redactor(), now()) {
                Outcome::Record(c) => c,
                Outcome::Skip(why) => panic!("{prefix} skipped: {why}"),
            };
        let (a, b) = (captured("021-"), captured("022-"));
        assert_ne!(a.event.request_uid, b.event.request_uid);
        assert_eq!(a.dedupe, b.dedupe);
        assert_eq!(a.dedupe, testdata::v133_request("021-").fingerprint());
        // Two attempts of one conflicted PATCH are two changes to dedupe apart.
        assert_ne!(captured("033-").dedupe, captured("038-").dedupe);
    }

    #[test]
    fn dry_runs_are_skipped() {
        assert_eq!(skip("create-configmap-dryrun", &spec()), SkipReason::DryRun);
        assert_eq!(
            skip("update-deployment-dryrun", &spec()),
            SkipReason::DryRun
        );
    }

    #[test]
    fn kubectl_label_is_one_clean_change() {
        let c = record("update-deployment");
        let ev = &c.event;
        assert_eq!(ev.changes.len(), 1, "{:#?}", ev.changes);
        let ch = &ev.changes[0];
        assert_eq!(ch.path, "/metadata/labels/tier");
        assert_eq!(ch.op, ChangeOp::Add);
        assert_eq!(ch.new, Some(json!("web")));
        assert_eq!(summarize(ev), "metadata.labels.tier: + web");
        for obj in [ev.object.as_ref().unwrap(), c.before.as_ref().unwrap()] {
            let meta = &obj["metadata"];
            for noisy in ["managedFields", "resourceVersion", "generation"] {
                assert!(meta.get(noisy).is_none(), "{noisy}");
            }
            assert!(obj.get("status").is_none());
            let text = obj.to_string();
            assert!(!text.contains("last-applied-configuration"));
        }
        assert_eq!(ev.name, "nginx");
        assert_eq!(ev.namespace.as_deref(), Some("demo"));
        assert_eq!(ev.resource.resource, "deployments");
        assert_eq!(ev.kind.kind, "Deployment");
        assert_eq!(ev.user.username, "admin");
    }

    #[test]
    fn scale_records_replicas() {
        let ev = record("update-deployment-scale").event;
        assert_eq!(ev.changes.len(), 1, "{:#?}", ev.changes);
        assert_eq!(ev.changes[0].path, "/spec/replicas");
        assert_eq!(ev.changes[0].old, Some(json!(1)));
        assert_eq!(ev.changes[0].new, Some(json!(3)));
        assert_eq!(ev.resource.subresource.as_deref(), Some("scale"));
        assert_eq!(ev.kind.kind, "Scale");
        assert_eq!(
            ev.object_uid.as_deref(),
            Some("0586b4f3-e1f7-4e9e-b154-4db6d9bb92af")
        );
        assert_eq!(summarize(&ev), "spec.replicas: 1 → 3");

        let ev = record("update-widget-scale").event;
        assert_eq!(ev.changes.len(), 1);
        assert_eq!(ev.changes[0].path, "/spec/replicas");
    }

    #[test]
    fn alice_is_alice() {
        for name in ["create-configmap-alice", "delete-configmap-alice"] {
            let ev = record(name).event;
            assert_eq!(ev.user.username, "alice");
            assert_eq!(ev.user.groups, ["dev", "system:authenticated"]);
        }
    }

    #[test]
    fn delete_keeps_last_state() {
        let c = record("delete-deployment");
        assert_eq!(c.event.operation, Operation::Delete);
        let last = c.event.object.as_ref().unwrap();
        assert_eq!(last["kind"], "Deployment");
        assert!(last["metadata"].get("managedFields").is_none());
        assert_eq!(summarize(&c.event), "deleted");
    }

    #[test]
    fn secrets_never_leak() {
        for name in ["create-secret", "update-secret", "delete-secret"] {
            let c = record(name);
            let text = format!(
                "{}{}",
                serde_json::to_string(&c.event).unwrap(),
                serde_json::to_string(&c.before).unwrap()
            );
            assert!(!text.contains("s3cr3t"), "{name}: {text}");
            assert!(!text.contains("czNjcjN0"), "{name}: {text}");
            assert!(c.event.redacted);
            let obj = c.event.object.as_ref().unwrap();
            assert!(is_redacted_value(&obj["data"]["password"]), "{name}");
        }
        // kubectl label rotated=yes: the label changes, the (equal) value hashes equal.
        let c = record("update-secret");
        assert_eq!(c.event.changes.len(), 1, "{:#?}", c.event.changes);
        assert_eq!(c.event.changes[0].path, "/metadata/labels");
        let new = &c.event.object.as_ref().unwrap()["data"]["password"];
        let old = &c.before.as_ref().unwrap()["data"]["password"];
        assert_eq!(new, old);
        // Same value, same hash, across events.
        let created = record("create-secret");
        assert_eq!(&created.event.object.unwrap()["data"]["password"], new);
    }

    #[test]
    fn secret_value_change_shows_as_changed() {
        let mut req = testdata::request("update-secret");
        req.object.as_mut().unwrap()["data"]["password"] = json!("bmV3LXBhc3M="); // new-pass
        let Outcome::Record(c) = process(&req, &policy(&spec()), &redactor(), now()) else {
            panic!("skipped");
        };
        let ch = c
            .event
            .changes
            .iter()
            .find(|c| c.path == "/data/password")
            .unwrap();
        assert!(is_redacted_value(ch.old.as_ref().unwrap()));
        assert!(is_redacted_value(ch.new.as_ref().unwrap()));
        assert_ne!(ch.old, ch.new);
        let s = summarize(&c.event);
        assert!(s.contains("data.password changed"), "{s}");
        assert!(!s.contains("hmac"), "{s}");
        let text = serde_json::to_string(&c.event).unwrap();
        assert!(!text.contains("bmV3LXBhc3M=") && !text.contains("new-pass"));
    }

    #[test]
    fn numbers_beyond_f64_are_recorded_digit_for_digit() {
        let (body, huge) = testdata::wide_numbers_review();
        let req = crate::pipeline::review::parse(body.as_bytes())
            .unwrap()
            .request
            .unwrap();
        let Outcome::Record(c) = process(&req, &policy(&spec()), &redactor(), now()) else {
            panic!("skipped");
        };
        let change = |path: &str| {
            c.event
                .changes
                .iter()
                .find(|c| c.path == path)
                .unwrap_or_else(|| panic!("no {path} in {:#?}", c.event.changes))
                .new
                .clone()
        };
        assert_eq!(change("/spec/huge"), Some(Value::String(huge.clone())));
        assert_eq!(change("/spec/big"), Some(json!("1e999")));
        let yaml = crate::pipeline::unified_yaml_diff(
            c.before.as_ref(),
            c.event.object.as_ref(),
            "before",
            "after",
        );
        assert!(yaml.contains(&huge), "{yaml}");
        assert!(yaml.contains("1e999"), "{yaml}");
        // And through the JSON the store keeps.
        let text = serde_json::to_string(&c.event).unwrap();
        assert_eq!(
            &serde_json::from_str::<ChangeEvent>(&text).unwrap(),
            &c.event
        );
    }

    #[test]
    fn oversized_reviews_are_not_recorded() {
        let mut req = testdata::request("update-deployment");
        req.name = "n".repeat(1 << 20);
        let why = process(&req, &policy(&spec()), &redactor(), now());
        let Outcome::Skip(why) = why else {
            panic!("recorded: {why:?}")
        };
        assert_eq!(
            why,
            SkipReason::Oversized(Oversized {
                field: "name",
                len: 1 << 20,
                limit: limits::MAX_NAME
            })
        );
        assert_eq!(why.metric_label(), "oversized");
        assert!(why.to_string().len() < 100, "{why}");
    }

    #[test]
    fn status_only_with_and_without_track_status() {
        assert_eq!(skip("update-widget-status", &spec()), SkipReason::EmptyDiff);
        let mut s = spec();
        s.track_status = true;
        let Outcome::Record(c) = run_with("update-widget-status", &s) else {
            panic!("skipped");
        };
        assert!(
            c.event
                .changes
                .iter()
                .all(|c| c.path.starts_with("/status")),
            "{:#?}",
            c.event.changes
        );
        assert!(!c.event.changes.is_empty());
        assert_eq!(c.event.resource.subresource.as_deref(), Some("status"));
    }

    #[test]
    fn ignore_fields_can_empty_a_diff() {
        let mut s = spec();
        s.ignore_fields = vec!["/metadata/labels/*".into()];
        assert_eq!(skip("update-deployment", &s), SkipReason::EmptyDiff);
        s.ignore_fields = vec!["/spec/replicas".into()];
        assert_eq!(skip("update-deployment-scale", &s), SkipReason::EmptyDiff);
    }

    #[test]
    fn generate_name() {
        let mut req = testdata::request("create-configmap");
        req.name = String::new();
        let meta = req.object.as_mut().unwrap()["metadata"]
            .as_object_mut()
            .unwrap();
        meta.insert("generateName".into(), json!("app-config-"));
        let p = policy(&spec());
        let name = |req: &Request| match process(req, &p, &redactor(), now()) {
            Outcome::Record(c) => c.event.name,
            Outcome::Skip(w) => panic!("{w}"),
        };
        assert_eq!(
            name(&req),
            "app-config",
            "the object's name wins when present"
        );
        req.object.as_mut().unwrap()["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("name");
        assert_eq!(name(&req), "app-config-");
    }

    #[test]
    fn not_matched_and_condition_errors() {
        let mut s = spec();
        s.users = Some(UserFilter {
            exclude: vec!["alice".into()],
            ..Default::default()
        });
        let why = skip("create-configmap-alice", &s);
        assert_eq!(why, SkipReason::NotMatched(NotMatched::User));
        assert_eq!(why.metric_label(), "not_matched");

        let mut s = spec();
        s.conditions = vec![MatchCondition {
            name: "replicas".into(),
            expression: "object.spec.replicas > 0".into(),
        }];
        let why = skip("create-configmap", &s);
        assert!(matches!(why, SkipReason::ConditionError { ref name, .. } if name == "replicas"));
        assert_eq!(why.metric_label(), "condition_error");
        assert!(matches!(
            run_with("create-deployment", &s),
            Outcome::Record(_)
        ));
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::pipeline::{review, testdata};

    /// Rough figures for the hot path; run with
    /// `cargo test --release --lib pipeline::process::timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check"]
    fn parse_and_process_update_deployment() {
        let body = testdata::fixture("update-deployment").as_bytes();
        let spec: crate::crd::TrackingPolicySpec = serde_json::from_value(serde_json::json!({
            "resources": [{"apiGroups": ["apps"], "resources": ["deployments"]}],
            "users": {"exclude": ["system:serviceaccount:kube-system:*"]},
        }))
        .unwrap();
        let policy = CompiledPolicy::compile("p", &spec).unwrap();
        let redactor = Redactor::new(b"k");
        let now = Timestamp::UNIX_EPOCH;
        let n = 20_000u32;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let p = review::parse(std::hint::black_box(body)).unwrap();
            std::hint::black_box(p);
        }
        let parse = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let v: serde_json::Value = serde_json::from_slice(std::hint::black_box(body)).unwrap();
            std::hint::black_box(v);
        }
        let plain = t.elapsed() / n;
        let req = review::parse(body).unwrap().request.unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(process(&req, &policy, &redactor, now));
        }
        let proc = t.elapsed() / n;
        eprintln!(
            "parse {parse:?}/review (plain serde_json::Value: {plain:?}), process {proc:?}/review ({} bytes)",
            body.len()
        );
    }
}
