//! The operator against a real apiserver: policy → webhook configuration → kubectl changes →
//! recorded events and ChangeRecords → policy deletion removes the webhook configuration.
//!
//! The test starts `histor operator` itself, outside the cluster, in url mode on 127.0.0.1, so it
//! also passes against a bare kube-apiserver (no nodes, no controller-manager): it creates its own
//! namespaces and never waits for pods.

use crate::{Operator, apply_crds, client, create_namespaces, eventually, kubectl, start_operator};
use histor::crd::{ChangeRecord, TrackingPolicy};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

#[tokio::test]
async fn policy_to_webhook_to_records_and_back() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let version = client.apiserver_version().await.expect("apiserver version");
    println!(
        "apiserver {} (matchConditions supported: {})",
        version.git_version,
        histor::controller::webhook::supports_match_conditions(&version)
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let suffix = format!("{:x}", std::process::id());
    let ns = format!("histor-e2e-{suffix}");
    let operator_ns = format!("histor-e2e-system-{suffix}");
    let policy_name = format!("e2e-{suffix}");

    apply_crds(&client).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    // alice may edit in the test namespace (the built-in `edit` role exists on any apiserver).
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "alice-edit",
            "--clusterrole=edit",
            "--user=alice",
        ],
    );

    // The operator, outside the cluster, in url mode.
    let dir = tempfile::tempdir().unwrap();
    let (operator, port): (Operator, u16) =
        start_operator(&kubeconfig, &operator_ns, dir.path(), &[]);
    let policy: TrackingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "histor.dev/v1alpha1",
        "kind": "TrackingPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "resources": [
                {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]},
                {"apiGroups": [""], "resources": ["configmaps"]}
            ],
            "namespaces": {"include": [ns]}
        }
    }))
    .unwrap();
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy created");

    // The webhook configuration appears with the right rules and a caBundle; the policy turns Ready.
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let vwc_name = format!("histor-{policy_name}");
    let vwc = eventually("the webhook configuration", Duration::from_secs(90), || {
        let webhooks = webhooks.clone();
        let vwc_name = vwc_name.clone();
        async move {
            let vwc = webhooks.get_opt(&vwc_name).await.ok().flatten()?;
            let hook = vwc.webhooks.as_ref()?.first()?.clone();
            hook.client_config
                .ca_bundle
                .as_ref()
                .filter(|b| !b.0.is_empty())?;
            Some(hook)
        }
    })
    .await;
    let rules = vwc.rules.clone().unwrap_or_default();
    let resources: Vec<String> = rules
        .iter()
        .flat_map(|r| r.resources.clone().unwrap_or_default())
        .collect();
    assert!(
        resources.contains(&"deployments/scale".to_string()),
        "{resources:?}"
    );
    assert_eq!(vwc.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(vwc.side_effects, "NoneOnDryRun");
    assert_eq!(
        vwc.client_config.url.as_deref(),
        Some(format!("https://{}:{port}/admit/{policy_name}", crate::e2e_host()).as_str())
    );
    eventually("the policy to be Ready", Duration::from_secs(60), || {
        let policies = policies.clone();
        let name = policy_name.clone();
        async move {
            let p = policies.get(&name).await.ok()?;
            let ready = p
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "True").then_some(())
        }
    })
    .await;
    // The apiserver picks up new webhook configurations within a second or so.
    tokio::time::sleep(Duration::from_secs(3)).await;

    kubectl(
        &kubeconfig,
        &["-n", &ns, "create", "deployment", "web", "--image=nginx"],
    );
    kubectl(
        &kubeconfig,
        &["-n", &ns, "scale", "deployment", "web", "--replicas=3"],
    );
    kubectl(
        &kubeconfig,
        &["-n", &ns, "label", "deployment", "web", "tier=frontend"],
    );
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=a",
        ],
    );
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns,
            "--as=alice",
            "patch",
            "configmap",
            "settings",
            "-p",
            r#"{"data":{"mode":"b"}}"#,
        ],
    );
    kubectl(&kubeconfig, &["-n", &ns, "delete", "deployment", "web"]);

    // Each change recorded, with the right user, summarised in ChangeRecords.
    let records: Api<ChangeRecord> = Api::namespaced(client.clone(), &ns);
    let (deployment, configmap) = eventually("ChangeRecords", Duration::from_secs(60), || {
        let records = records.clone();
        async move {
            let list = records.list(&Default::default()).await.ok()?;
            let find = |kind: &str| {
                list.items
                    .iter()
                    .find(|r| r.spec.target_ref.kind == kind && r.status.is_some())
                    .cloned()
            };
            let d = find("Deployment")?;
            let c = find("ConfigMap")?;
            let ds = d.status.clone()?;
            let cs = c.status.clone()?;
            (ds.change_count >= 4 && cs.change_count >= 2).then_some((ds, cs))
        }
    })
    .await;
    let last = deployment.last_change.expect("deployment last change");
    assert_eq!(last.operation.as_str(), "DELETE");
    let ops: Vec<&str> = deployment
        .recent
        .iter()
        .map(|c| c.operation.as_str())
        .collect();
    assert!(
        ops.contains(&"CREATE") && ops.iter().filter(|o| **o == "UPDATE").count() >= 2,
        "{ops:?}"
    );
    assert!(
        deployment
            .recent
            .iter()
            .any(|c| c.paths.iter().any(|p| p == "spec.replicas")),
        "the scale shows as spec.replicas: {:?}",
        deployment.recent
    );
    let cm_last = configmap.last_change.expect("configmap last change");
    assert_eq!(cm_last.user, "alice");
    assert!(cm_last.summary.contains("data.mode"), "{}", cm_last.summary);

    // Deleting the policy removes its webhook configuration.
    policies
        .delete(&policy_name, &DeleteParams::default())
        .await
        .expect("policy deleted");
    eventually(
        "the webhook configuration to go",
        Duration::from_secs(60),
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

    drop(operator);
    for name in [&ns, &operator_ns] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}
