//! The generated CRDs in `crds/` match the Rust types, and the CRD's CEL rules reject the broken
//! policies they are meant to reject (evaluated locally with kube's CEL support, as the apiserver
//! would at `kubectl apply` time).

use histor::crd::{TrackingPolicy, crd_yaml, crds};

#[test]
fn crds_directory_is_in_sync_with_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, crd) in crds() {
        let path = dir.join(file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == crd_yaml(&crd),
            "{} is stale: run `cargo run --bin crdgen -- --out-dir crds` and commit the result",
            path.display()
        );
    }
}

fn policy(yaml: &str) -> TrackingPolicy {
    serde_saphyr::from_str(yaml).expect("test policy parses")
}

const VALID: &str = r#"
apiVersion: histor.dev/v1alpha1
kind: TrackingPolicy
metadata: {name: prod}
spec:
  resources:
    - apiGroups: ["apps"]
      resources: ["deployments", "deployments/scale"]
  conditions:
    - {name: human-only, expression: "!request.userInfo.username.startsWith('system:')"}
  ignoreFields: ["/spec/replicas"]
  retention: {maxEventsPerObject: 100, maxAge: 720h}
  notify:
    - name: team-slack
      slack: {webhookSecretRef: {namespace: histor-system, name: slack, key: url}}
      digest: 60s
"#;

#[test]
fn a_valid_policy_passes_the_schema_rules() {
    policy(VALID)
        .validate_cel()
        .expect("valid policy passes every CEL rule");
}

#[test]
fn schema_rules_reject_broken_policies() {
    let cases = [
        (
            "ignoreFields: [\"/spec/replicas\"]",
            "ignoreFields: [\"spec.replicas\"]",
            "JSON pointers",
        ),
        (
            "maxAge: 720h",
            "maxAge: 30 days",
            "maxAge must be a duration",
        ),
        ("name: human-only", "name: Human_Only", "DNS label"),
        ("digest: 60s", "digest: soon", "digest must be a duration"),
        (
            "slack: {webhookSecretRef: {namespace: histor-system, name: slack, key: url}}",
            "slack: {webhookSecretRef: {namespace: histor-system, name: slack, key: url}}\n      webhook: {urlSecretRef: {namespace: a, name: b, key: c}}",
            "exactly one of slack, email or webhook",
        ),
    ];
    for (from, to, expected) in cases {
        let broken = VALID.replace(from, to);
        assert_ne!(broken, VALID, "case {expected:?} did not change the policy");
        let errors = policy(&broken).validate_cel().expect_err(expected);
        assert!(
            format!("{errors:?}").contains(expected),
            "{expected:?} not in {errors:?}"
        );
    }
}

#[test]
fn duplicate_sink_names_are_rejected() {
    let broken = VALID.replace(
        "      digest: 60s\n",
        "      digest: 60s\n    - name: team-slack\n      slack: {webhookSecretRef: {namespace: histor-system, name: slack, key: url}}\n",
    );
    let errors = policy(&broken).validate_cel().expect_err("duplicate names");
    assert!(
        format!("{errors:?}").contains("sink names must be unique"),
        "{errors:?}"
    );
}

#[test]
fn every_sample_policy_follows_the_crd_and_compiles() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // Unknown fields fail to parse (deny_unknown_fields), the CRD's CEL rules run as the
        // apiserver would run them, and the policy compiles as histor would compile it.
        let text = std::fs::read_to_string(&path).unwrap();
        let policy: TrackingPolicy =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        policy
            .validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        histor::cmd::read_policy_files(std::slice::from_ref(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} sample policies found");
}
