//! The query API through the apiserver's aggregation layer: the APIService is registered, an
//! admin reads history with `kubectl blame`, and a user who may read one namespace sees its
//! changes and is refused the other's.
//!
//! The operator runs outside the cluster; a Service of type ExternalName (`localhost`, or
//! `HISTOR_E2E_EXTERNAL_NAME`) lets the aggregator reach it, which works on a bare kube-apiserver
//! on the same host. The serving
//! certificate carries the Service's DNS name, which is what the aggregator verifies.

use crate::{apply_crds, client, create_namespaces, eventually, kubectl, start_operator};
use histor::crd::TrackingPolicy;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::time::Duration;

const API_SERVICE: &str = "v1alpha1.query.histor.dev";

#[tokio::test]
async fn aggregated_query_api_follows_cluster_rbac() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    // The aggregator reaches the operator through an ExternalName Service, which needs a DNS
    // name for this machine as the apiserver sees it.
    let external_name =
        std::env::var("HISTOR_E2E_EXTERNAL_NAME").unwrap_or_else(|_| "localhost".into());
    if crate::e2e_host() != "127.0.0.1" && std::env::var("HISTOR_E2E_EXTERNAL_NAME").is_err() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "e2e: skipping the aggregated API test: set HISTOR_E2E_EXTERNAL_NAME to a DNS name the apiserver resolves to {}",
            crate::e2e_host()
        );
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let suffix = format!("{:x}", std::process::id());
    let (ns_a, ns_b) = (
        format!("histor-e2e-a-{suffix}"),
        format!("histor-e2e-b-{suffix}"),
    );
    let operator_ns = format!("histor-e2e-q-{suffix}");
    let policy_name = format!("e2e-q-{suffix}");
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns_a, &ns_b, &operator_ns]).await;

    let service_host = format!("histor-e2e.{operator_ns}.svc");
    let dir = tempfile::tempdir().unwrap();
    let (operator, port) = start_operator(
        &kubeconfig,
        &operator_ns,
        dir.path(),
        &["--tls-san", &service_host],
    );

    // Track ConfigMaps in both namespaces, then change one in each.
    let policy: TrackingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "histor.dev/v1alpha1", "kind": "TrackingPolicy",
        "metadata": {"name": policy_name},
        "spec": {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
                 "namespaces": {"include": [ns_a, ns_b]}}
    }))
    .unwrap();
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy created");
    eventually("the policy to be Ready", Duration::from_secs(90), || {
        let policies = policies.clone();
        let name = policy_name.clone();
        async move {
            let ready = policies
                .get(&name)
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "True").then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns_a,
            "create",
            "configmap",
            "visible",
            "--from-literal=k=v",
        ],
    );
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns_b,
            "create",
            "configmap",
            "hidden",
            "--from-literal=k=v",
        ],
    );

    // Register the API: an ExternalName Service to the operator, and the APIService trusting
    // the operator's CA (from its TLS Secret).
    let services: Api<Service> = Api::namespaced(client.clone(), &operator_ns);
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "histor-e2e"},
        "spec": {"type": "ExternalName", "externalName": external_name,
                 "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("service created");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &operator_ns);
    let ca = eventually("the operator's TLS Secret", Duration::from_secs(60), || {
        let secrets = secrets.clone();
        async move {
            secrets
                .get_opt("histor-webhook-tls")
                .await
                .ok()??
                .data?
                .get("ca.crt")
                .cloned()
        }
    })
    .await;
    let api_services: Api<APIService> = Api::all(client.clone());
    let registration = serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": API_SERVICE},
        "spec": {"group": "query.histor.dev", "version": "v1alpha1",
                 "service": {"namespace": operator_ns, "name": "histor-e2e", "port": port},
                 "caBundle": ca, "groupPriorityMinimum": 1000, "versionPriority": 15}
    });
    api_services
        .patch(
            API_SERVICE,
            &PatchParams::apply("histor-e2e").force(),
            &Patch::Apply(&registration),
        )
        .await
        .expect("APIService applied");
    eventually(
        "the APIService to be Available",
        Duration::from_secs(90),
        || {
            let api_services = api_services.clone();
            async move {
                let available = api_services
                    .get(API_SERVICE)
                    .await
                    .ok()?
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "Available")?;
                (available.status == "True").then_some(())
            }
        },
    )
    .await;

    // The admin, through kubectl's plugin mechanism's binary, with their kubeconfig.
    let blame = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-blame"))
        .args([
            "--kubeconfig",
            &kubeconfig,
            "configmap",
            "visible",
            "-n",
            &ns_a,
        ])
        .output()
        .expect("kubectl-blame runs");
    let out = String::from_utf8_lossy(&blame.stdout);
    assert!(
        blame.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&blame.stderr)
    );
    assert!(
        out.contains("CREATE") && out.contains("configmaps/visible"),
        "{out}"
    );

    // bob may read ConfigMaps and their history in namespace A only.
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("histor-e2e-reader-{suffix}")},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
            {"apiGroups": ["query.histor.dev"], "resources": ["changes"], "verbs": ["get", "list"]}
        ]
    });
    let path = dir.path().join("role.json");
    std::fs::write(&path, role.to_string()).unwrap();
    kubectl(&kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &ns_a,
            "create",
            "rolebinding",
            "bob-reads",
            &format!("--clusterrole=histor-e2e-reader-{suffix}"),
            "--user=bob",
        ],
    );
    let mut config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    config.auth_info.impersonate = Some("bob".into());
    let bob = kube::Client::try_from(config).unwrap();
    let list = |ns: String| {
        let bob = bob.clone();
        async move {
            let request = http::Request::get(format!(
                "/apis/query.histor.dev/v1alpha1/namespaces/{ns}/changes"
            ))
            .body(Vec::new())
            .unwrap();
            bob.request::<serde_json::Value>(request).await
        }
    };
    let visible = eventually("bob's view of namespace A", Duration::from_secs(30), || {
        let ns = ns_a.clone();
        async move { list(ns).await.ok() }
    })
    .await;
    let items = visible["items"].as_array().cloned().unwrap_or_default();
    assert!(!items.is_empty(), "{visible}");
    assert!(
        items
            .iter()
            .all(|i| i["metadata"]["namespace"] == ns_a.as_str()),
        "{visible}"
    );
    match list(ns_b.clone()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("bob must not read namespace B: {other:?}"),
    }

    let _ = api_services
        .delete(API_SERVICE, &DeleteParams::default())
        .await;
    let _ = policies
        .delete(&policy_name, &DeleteParams::default())
        .await;
    kubectl(
        &kubeconfig,
        &[
            "delete",
            "clusterrole",
            &format!("histor-e2e-reader-{suffix}"),
            "--ignore-not-found",
        ],
    );
    drop(operator);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [&ns_a, &ns_b, &operator_ns] {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}
