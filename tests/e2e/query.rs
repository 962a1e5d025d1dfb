//! The query API through the apiserver's aggregation layer: the APIService is registered, an
//! admin reads history with `kubectl blame`, and a user who may read one namespace sees its
//! changes and is refused the other's.
//!
//! The operator runs outside the cluster; a Service of type ExternalName (`localhost`, or
//! `HISTOR_E2E_EXTERNAL_NAME`) lets the aggregator reach it, which works on a bare kube-apiserver
//! on the same host. The serving
//! certificate carries the Service's DNS name, which is what the aggregator verifies.

use crate::{
    apply_crds, client, create_namespaces, delete_namespaces, eventually, kubectl, kubectl_output,
    policy, start_operator, unique, wait_ready,
};
use histor::crd::TrackingPolicy;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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
        let message = format!(
            "set HISTOR_E2E_EXTERNAL_NAME to a DNS name the apiserver resolves to {}",
            crate::e2e_host()
        );
        assert!(!crate::required(), "e2e: may not skip: {message}");
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "e2e: skipping the aggregated API test: {message}"
        );
        return;
    }
    let instance = unique("query");
    let (ns_a, ns_b) = (
        format!("histor-e2e-a-{instance}"),
        format!("histor-e2e-b-{instance}"),
    );
    let operator_ns = format!("histor-e2e-op-{instance}");
    let policy_name = instance.clone();
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns_a, &ns_b, &operator_ns]).await;

    let service_host = format!("histor-e2e.{operator_ns}.svc");
    let dir = tempfile::tempdir().unwrap();
    let operator = start_operator(
        &kubeconfig,
        &operator_ns,
        &instance,
        dir.path(),
        &["--tls-san", &service_host],
    );
    let port = operator.port;

    // Track ConfigMaps in both namespaces, then change them the moment the policy is Ready.
    let spec = serde_json::json!({
        "resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
        "namespaces": {"include": [ns_a, ns_b]}
    });
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    policies
        .create(
            &PostParams::default(),
            &policy(&policy_name, &instance, spec),
        )
        .await
        .expect("policy created");
    wait_ready(&client, &policy_name, Duration::from_secs(60)).await;
    let in_ns = |ns: &str, args: &[&str]| {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        kubectl(&kubeconfig, &all)
    };
    in_ns(
        &ns_a,
        &["create", "configmap", "visible", "--from-literal=k=v"],
    );
    in_ns(
        &ns_a,
        &[
            "patch",
            "configmap",
            "visible",
            "-p",
            r#"{"data":{"k":"w","extra":"x"}}"#,
        ],
    );
    in_ns(
        &ns_b,
        &["create", "configmap", "hidden", "--from-literal=k=v"],
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

    // The admin, through kubectl's plugin mechanism, in every output format.
    let blame = |args: &[&str]| {
        let mut all = vec!["blame", "configmap", "visible", "-n", ns_a.as_str()];
        all.extend_from_slice(args);
        kubectl(&kubeconfig, &all)
    };
    let table = eventually(
        "the changes through the aggregator",
        Duration::from_secs(30),
        || {
            let out = kubectl_output(&kubeconfig, &["blame", "configmap", "visible", "-n", &ns_a]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if !text.contains("UPDATE") {
                eprintln!(
                    "kubectl blame: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            async move { (out.status.success() && text.contains("UPDATE")).then_some(text) }
        },
    )
    .await;
    println!("{table}");
    assert!(
        table.contains("CREATE") && table.contains("admin"),
        "{table}"
    );
    let wide = blame(&["-o", "wide"]);
    assert!(wide.contains("UPDATE") && wide.contains("admin"), "{wide}");
    let json: serde_json::Value = serde_json::from_str(&blame(&["-o", "json"])).expect("json");
    let items = json["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{json}");
    let yaml = blame(&["-o", "yaml"]);
    assert!(yaml.contains("operation: UPDATE"), "{yaml}");
    let diff = blame(&["-o", "diff"]);
    assert!(
        diff.contains("-  k: v") && diff.contains("+  k: w"),
        "{diff}"
    );
    let patch = blame(&["-o", "patch"]);
    assert!(
        patch.contains("/data/extra") && patch.contains("\"x\""),
        "{patch}"
    );
    let lines = blame(&["-o", "blame"]);
    let extra = lines
        .lines()
        .find(|l| l.contains("extra: x"))
        .unwrap_or_else(|| panic!("{lines}"));
    assert!(extra.contains("admin"), "{lines}");
    // The object as it was just before the patch: the create's data, without `extra`.
    let patched_at = items
        .iter()
        .find(|c| c["event"]["operation"] == "UPDATE")
        .and_then(|c| c["event"]["receivedAt"].as_str())
        .unwrap_or_else(|| panic!("the patch's time: {json}"))
        .to_owned();
    let earlier = blame(&["--at", &patched_at]);
    assert!(
        earlier.contains("k: v") && !earlier.contains("extra"),
        "{earlier}"
    );
    let now = blame(&["--at", "0s", "-o", "json"]);
    let now: serde_json::Value = serde_json::from_str(now.split_once('\n').unwrap().1).unwrap();
    assert_eq!(
        now["data"],
        serde_json::json!({"k": "w", "extra": "x"}),
        "{now}"
    );

    // bob may read ConfigMaps and their history in namespace A only.
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("histor-e2e-reader-{instance}")},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
            {"apiGroups": ["query.histor.dev"], "resources": ["changes"], "verbs": ["get", "list"]}
        ]
    });
    let path = dir.path().join("role.json");
    std::fs::write(&path, role.to_string()).unwrap();
    kubectl(&kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    in_ns(
        &ns_a,
        &[
            "create",
            "rolebinding",
            "bob-reads",
            &format!("--clusterrole=histor-e2e-reader-{instance}"),
            "--user=bob",
        ],
    );
    let as_bob = |ns: &str, name: &str, format: &str| {
        kubectl_output(
            &kubeconfig,
            &[
                "blame",
                "configmap",
                name,
                "-n",
                ns,
                "--as",
                "bob",
                "-o",
                format,
            ],
        )
    };
    let mine = eventually("bob's view of namespace A", Duration::from_secs(30), || {
        let out = as_bob(&ns_a, "visible", "json");
        async move { out.status.success().then_some(out.stdout) }
    })
    .await;
    let mine: serde_json::Value = serde_json::from_slice(&mine).expect("json");
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(2), "{mine}");
    for format in ["table", "blame", "diff"] {
        let out = as_bob(&ns_a, "visible", format);
        assert!(out.status.success(), "bob -o {format}: {out:?}");
    }
    // Namespace B's history is refused, in every format, and nothing of it is shown.
    for format in ["table", "json", "blame"] {
        let out = as_bob(&ns_b, "hidden", format);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "bob must not read namespace B: {text}"
        );
        assert!(text.to_lowercase().contains("forbidden"), "{text}");
        assert!(!text.contains("k: v") && !text.contains("CREATE"), "{text}");
    }
    // Listing every namespace shows bob nothing from B either.
    let all = kubectl_output(
        &kubeconfig,
        &["blame", "configmaps", "-A", "--as", "bob", "-o", "json"],
    );
    let all_text = String::from_utf8_lossy(&all.stdout);
    assert!(!all_text.contains("hidden"), "{all_text}");

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
            &format!("histor-e2e-reader-{instance}"),
            "--ignore-not-found",
        ],
    );
    drop(operator);
    delete_namespaces(&client, &[&ns_a, &ns_b, &operator_ns]).await;
}
