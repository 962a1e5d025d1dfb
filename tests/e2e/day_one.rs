//! What a user does on day one, on a real apiserver: apply a policy, change things as two users
//! the moment it says Ready, see the changes in `kubectl get changerecords`, get the Slack and
//! email alerts, delete the policy.
//!
//! The operator's certificate directory starts with a certificate of an earlier run in it (as
//! in a pod whose container restarted after its Secret changed): Ready must still mean that the
//! apiserver can call the webhook, or the first changes are lost behind `failurePolicy: Ignore`.

use crate::receivers::{Slack, Smtp, wait_for_mail};
use crate::{
    apply_crds, client, create_namespaces, delete_namespaces, eventually, grant_edit, kubectl,
    policy, start_operator, unique, wait_ready,
};
use histor::crd::{ChangeRecord, ChangeRecordStatus, TrackingPolicy};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

#[tokio::test]
async fn day_one_policy_changes_records_alerts_and_removal() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let version = client.apiserver_version().await.expect("apiserver version");
    println!(
        "apiserver {} (matchConditions supported: {})",
        version.git_version,
        histor::controller::webhook::supports_match_conditions(&version)
    );
    let instance = unique("day1");
    let ns = format!("histor-e2e-{instance}");
    let operator_ns = format!("histor-e2e-op-{instance}");
    let policy_name = instance.clone();
    let dir = tempfile::tempdir().unwrap();

    apply_crds(&client).await;
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    grant_edit(&kubeconfig, &ns, "alice", dir.path());

    // Real receivers for the alerts, their addresses in Secrets as a user would keep them.
    let slack = Slack::start().await;
    let smtp = Smtp::start(&[]);
    let on = |args: &[&str]| {
        let mut all = vec!["-n", operator_ns.as_str()];
        all.extend_from_slice(args);
        kubectl(&kubeconfig, &all)
    };
    on(&[
        "create",
        "secret",
        "generic",
        "slack",
        &format!("--from-literal=url={}", slack.url),
    ]);
    on(&[
        "create",
        "secret",
        "generic",
        "smtp",
        "--from-literal=host=127.0.0.1",
        &format!("--from-literal=port={}", smtp.port),
        "--from-literal=tls=none",
    ]);

    // A certificate from an earlier run is already where the operator keeps its own.
    let cert_dir = dir.path().join("data").join("tls");
    histor::capture::tls::write_self_signed(&cert_dir, &["127.0.0.1".to_string()])
        .expect("old certificate");
    let operator = start_operator(&kubeconfig, &operator_ns, &instance, dir.path(), &[]);

    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    let spec = serde_json::json!({
        "resources": [
            {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]},
            {"apiGroups": [""], "resources": ["configmaps"]}
        ],
        "namespaces": {"include": [ns]},
        "notify": [
            {"name": "team-slack",
             "slack": {"webhookSecretRef": {"namespace": operator_ns, "name": "slack", "key": "url"}},
             "when": {"users": ["alice"]}},
            {"name": "oncall",
             "email": {"smtpSecretRef": {"namespace": operator_ns, "name": "smtp"},
                       "from": "histor@example.com", "to": ["oncall@example.com"]},
             "when": {"operations": ["DELETE"]}}
        ]
    });
    policies
        .create(
            &PostParams::default(),
            &policy(&policy_name, &instance, spec),
        )
        .await
        .expect("policy created");
    let took = wait_ready(&client, &policy_name, Duration::from_secs(60)).await;
    println!("policy Ready {took:?} after it was created");

    // The moment it says Ready: no grace period.
    let (admin, alice) = (&kubeconfig, ["--as", "alice"]);
    let as_alice = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str(), alice[0], alice[1]];
        all.extend_from_slice(args);
        kubectl(admin, &all)
    };
    let as_admin = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        kubectl(admin, &all)
    };
    as_admin(&["create", "configmap", "settings", "--from-literal=mode=a"]);
    as_alice(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"mode":"b"}}"#,
    ]);
    as_alice(&["create", "deployment", "web", "--image=nginx"]);
    as_admin(&["scale", "deployment", "web", "--replicas=3"]);
    as_admin(&["label", "deployment", "web", "tier=frontend"]);
    as_alice(&["delete", "deployment", "web"]);

    // A review POSTed by anyone but the apiserver is refused and never becomes history.
    if crate::webhook_client_ca().is_some() {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &operator_ns);
        let tls = secrets.get("histor-webhook-tls").await.expect("TLS Secret");
        let ca = tls.data.expect("data")["ca.crt"].0.clone();
        forged_reviews_are_refused(operator.port, &ns, &ca).await;
    }

    // Every change is in the ChangeRecords, by the right user, and nothing else is.
    let records: Api<ChangeRecord> = Api::namespaced(client.clone(), &ns);
    let status = |list: &[ChangeRecord], kind: &str| -> Option<ChangeRecordStatus> {
        list.iter()
            .find(|r| r.spec.target_ref.kind == kind)?
            .status
            .clone()
    };
    let (deployment, configmap) = eventually("ChangeRecords", Duration::from_secs(30), || {
        let records = records.clone();
        async move {
            let list = records.list(&Default::default()).await.ok()?.items;
            let d = status(&list, "Deployment")?;
            let c = status(&list, "ConfigMap")?;
            (d.change_count >= 4 && c.change_count >= 2).then_some((d, c))
        }
    })
    .await;
    assert_eq!(
        (deployment.change_count, configmap.change_count),
        (4, 2),
        "one record per change: {deployment:?} {configmap:?}"
    );
    let last = deployment.last_change.as_ref().expect("last change");
    assert_eq!(
        (last.operation.as_str(), last.user.as_str()),
        ("DELETE", "alice")
    );
    assert!(
        deployment
            .recent
            .iter()
            .any(|c| c.operation.as_str() == "CREATE" && c.user == "alice"),
        "alice created it: {:?}",
        deployment.recent
    );
    assert!(
        deployment
            .recent
            .iter()
            .any(|c| c.paths.iter().any(|p| p == "spec.replicas") && c.user == "admin"),
        "the scale shows as spec.replicas by admin: {:?}",
        deployment.recent
    );
    let cm_last = configmap
        .last_change
        .as_ref()
        .expect("configmap last change");
    assert_eq!(cm_last.user, "alice");
    assert!(cm_last.summary.contains("data.mode"), "{}", cm_last.summary);

    // What `kubectl get changerecords` shows a user.
    assert!(
        !kubectl(admin, &["get", "changerecords", "-n", &ns, "-o", "name"]).contains("forged"),
        "a forged review made a ChangeRecord"
    );
    let table = kubectl(admin, &["get", "changerecords", "-n", &ns]);
    println!("{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].contains("TARGET") && rows[0].contains("LAST-USER"),
        "{table}"
    );
    let row = |what: &str| {
        *rows
            .iter()
            .find(|r| r.contains(what))
            .unwrap_or_else(|| panic!("no row for {what}: {table}"))
    };
    assert!(row("settings").contains("alice"), "{table}");
    assert!(
        row("web").contains("alice") && row("web").contains("DELETE"),
        "{table}"
    );

    // Alerts: alice's changes on Slack, the delete by email.
    let message = slack
        .wait_for(&["alice", "settings"], Duration::from_secs(30))
        .await;
    assert!(!message.to_string().contains("admin"), "{message}");
    let mail = wait_for_mail(&smtp, &["alice", "web"], Duration::from_secs(30)).await;
    assert!(mail.contains("oncall@example.com"), "{mail}");

    // Deleting the policy removes its webhook configuration.
    policies
        .delete(&policy_name, &DeleteParams::default())
        .await
        .expect("policy deleted");
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc_name = format!("histor-{policy_name}");
    eventually(
        "the webhook configuration to go",
        Duration::from_secs(30),
        || {
            let webhooks = webhooks.clone();
            let vwc_name = vwc_name.clone();
            async move {
                webhooks
                    .get_opt(&vwc_name)
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    eventually("the policy to go", Duration::from_secs(30), || {
        let policies = policies.clone();
        let name = policy_name.clone();
        async move { policies.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;

    drop(operator);
    delete_namespaces(&client, &[&ns, &operator_ns]).await;
}

/// Posts a recorded review that says mallory created ConfigMap `forged`, as a local process
/// could: without a client certificate it gets 401, with one from another CA the handshake fails.
async fn forged_reviews_are_refused(port: u16, namespace: &str, ca: &[u8]) {
    let mut review: serde_json::Value = serde_json::from_str(include_str!(
        "../fixtures/admission/admissionreview-create-configmap.json"
    ))
    .expect("fixture");
    review["request"]["uid"] = "0b0e4f4e-forged-0000-0000-000000000000".into();
    review["request"]["namespace"] = namespace.into();
    review["request"]["name"] = "forged".into();
    review["request"]["object"]["metadata"]["name"] = "forged".into();
    review["request"]["object"]["metadata"]["namespace"] = namespace.into();
    review["request"]["userInfo"] =
        serde_json::json!({"username": "mallory", "groups": ["system:authenticated"]});
    let root = reqwest::Certificate::from_pem(ca).expect("CA");
    let url = format!("https://127.0.0.1:{port}/admit/anything");
    let plain = reqwest::Client::builder()
        .tls_certs_only([root.clone()])
        .build()
        .expect("client");
    let answer = plain
        .post(&url)
        .json(&review)
        .send()
        .await
        .expect("the webhook answers");
    assert_eq!(answer.status(), 401, "{:?}", answer.text().await);

    // A client certificate, but not from the apiserver's CA.
    let other = tempfile::tempdir().unwrap();
    let files = histor::capture::tls::write_self_signed(other.path(), &["kube-apiserver".into()])
        .expect("another CA");
    let identity = [
        std::fs::read(&files.cert).unwrap(),
        std::fs::read(&files.key).unwrap(),
    ]
    .concat();
    let impostor = reqwest::Client::builder()
        .tls_certs_only([root])
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let refused = impostor.post(&url).json(&review).send().await;
    assert!(
        refused.is_err()
            || refused
                .as_ref()
                .is_ok_and(|r| r.status() == 401 || r.status() == 403),
        "{refused:?}"
    );
}
