//! The audit witness on a real apiserver, reading the kit's audit log (`$KAPI_RUN_DIR/audit.log`,
//! RequestResponse for writes) with the watch off, so that every verdict comes from the audit
//! log alone: a change made with `--as` carries both users, a change a second webhook denied is
//! not applied, a plain change is confirmed at the resourceVersion the apiserver gave it.

use crate::witness::{history, install_deny_webhook, kapi_run_dir, labelled_deny, metric};
use crate::{
    apply_crds, client, create_namespaces, delete_namespaces, eventually, kubectl, kubectl_output,
    policy, start_operator, unique, wait_ready,
};
use histor::crd::TrackingPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

#[tokio::test]
async fn the_audit_log_alone_confirms_refuses_and_names_the_impersonator() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let Some(kapi) = kapi_run_dir() else {
        return;
    };
    let instance = unique("audit");
    let ns = format!("histor-e2e-{instance}");
    let operator_ns = format!("histor-e2e-op-{instance}");
    let dir = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    let log = kapi.join("audit.log");
    let log = log.to_str().unwrap();
    let extra = ["--no-watch", "--audit-log", log, "--audit-log-start", "end"];
    let operator = start_operator(&kubeconfig, &operator_ns, &instance, dir.path(), &extra);

    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    let spec = serde_json::json!({
        "resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
        "namespaces": {"include": [ns]}
    });
    policies
        .create(&PostParams::default(), &policy(&instance, &instance, spec))
        .await
        .expect("policy created");
    wait_ready(&client, &instance, Duration::from_secs(60)).await;

    // A second webhook that denies what histor allowed.
    let _deny = install_deny_webhook(&kubeconfig, &kapi, dir.path(), &instance, &ns).await;

    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "plain",
            "--from-literal=k=v",
        ],
    );
    kubectl(
        &kubeconfig,
        &[
            "--as=bob",
            "--as-group=system:masters",
            "-n",
            &ns,
            "create",
            "configmap",
            "bobs",
            "--from-literal=owner=bob",
        ],
    );
    let out = kubectl_output(
        &kubeconfig,
        &[
            "-n",
            &ns,
            "create",
            "-f",
            &labelled_deny(dir.path(), "denied"),
        ],
    );
    assert!(!out.status.success(), "the second webhook denies it");

    // Verdicts come from the audit log only: the watch is off.
    eventually("three audit verdicts", Duration::from_secs(60), || {
        let op = &operator;
        async move {
            let confirmed =
                metric(op, "histor_witness_verdicts_total", r#"state="confirmed""#).await?;
            let refused =
                metric(op, "histor_witness_verdicts_total", r#"state="notApplied""#).await?;
            (confirmed >= 2.0 && refused >= 1.0).then_some(())
        }
    })
    .await;
    assert_eq!(
        metric(&operator, "histor_witness_watches", "").await,
        Some(0.0),
        "no watch ran"
    );
    drop(operator);

    let events = history(dir.path(), &ns);
    let by_name = |name: &str| {
        events
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} recorded: {events:#?}"))
            .clone()
    };
    let plain = by_name("plain");
    assert_eq!(plain["state"], "confirmed", "{plain:#}");
    assert_eq!(plain["commit"]["witness"], "audit", "{plain:#}");
    assert!(
        !plain["commit"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "the committed resourceVersion, from the response object: {plain:#}"
    );
    assert_eq!(plain["audit"]["code"], 201);
    assert!(
        plain["audit"]["userAgent"]
            .as_str()
            .unwrap_or("")
            .starts_with("kubectl/"),
        "{plain:#}"
    );
    assert!(plain["audit"].get("impersonatedBy").is_none(), "{plain:#}");
    let bobs = by_name("bobs");
    assert_eq!(bobs["state"], "confirmed", "{bobs:#}");
    assert_eq!(bobs["user"]["username"], "bob", "the webhook saw bob");
    assert_eq!(
        bobs["audit"]["impersonatedBy"], "admin",
        "the audit log says admin sent it: {bobs:#}"
    );
    let denied = by_name("denied");
    assert_eq!(denied["state"], "notApplied", "{denied:#}");
    assert_eq!(denied["audit"]["code"], 403, "{denied:#}");

    kubectl(
        &kubeconfig,
        &[
            "delete",
            "validatingwebhookconfiguration",
            &format!("deny-{instance}"),
        ],
    );
    let _ = policies.delete(&instance, &DeleteParams::default()).await;
    delete_namespaces(&client, &[&ns, &operator_ns]).await;
}
