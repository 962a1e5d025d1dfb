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
use std::process::{Command, Stdio};
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
    create_as_bob(&kubeconfig, &ns);
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
    live_usage_needs_its_grant(
        &kubeconfig,
        &operator_ns,
        &instance,
        operator.port,
        dir.path(),
    )
    .await;
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

/// The operator's live API usage, read with `kubectl blame usage` by a service account: refused
/// until it is granted `list apiusages.query.histor.dev` (a real SubjectAccessReview), then it
/// lists bob's impersonated create by the operationId from the cluster's own `/openapi/v2`.
async fn live_usage_needs_its_grant(
    kubeconfig: &str,
    operator_ns: &str,
    instance: &str,
    port: u16,
    dir: &std::path::Path,
) {
    let sa = format!("usage-reader-{instance}");
    kubectl(
        kubeconfig,
        &["-n", operator_ns, "create", "serviceaccount", &sa],
    );
    let token = kubectl(kubeconfig, &["-n", operator_ns, "create", "token", &sa]);
    let token_file = dir.join("usage-token");
    std::fs::write(&token_file, token.trim()).unwrap();
    let ca = kubectl(
        kubeconfig,
        &[
            "-n",
            operator_ns,
            "get",
            "secret",
            histor::certs::SECRET_NAME,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
    );
    let ca_file = dir.join("operator-ca.crt");
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(ca.trim())
        .expect("the operator's CA");
    std::fs::write(&ca_file, ca).unwrap();
    let blame_usage = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kubectl-blame"))
            .arg("usage")
            .args(["--server", &format!("https://{}:{port}", crate::e2e_host())])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--certificate-authority")
            .arg(&ca_file)
            .args(args)
            .output()
            .expect("kubectl-blame runs")
    };
    let refused = blame_usage(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot list apiusages.query.histor.dev at the cluster scope")
            && stderr.contains("kubectl auth can-i list apiusages.query.histor.dev"),
        "{stderr}"
    );
    let grant = dir.join("usage-grant.yaml");
    std::fs::write(
        &grant,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: {sa}}}\n\
             rules: [{{apiGroups: [query.histor.dev], resources: [apiusages], verbs: [list]}}]\n\
             ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
             metadata: {{name: {sa}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {sa}}}\n\
             subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {operator_ns}}}]\n"
        ),
    )
    .unwrap();
    kubectl(kubeconfig, &["apply", "-f", grant.to_str().unwrap()]);
    // SubjectAccessReview decisions are cached for 10 s.
    let create = eventually(
        "bob's create in live usage",
        Duration::from_secs(60),
        || {
            let out = blame_usage(&["--user", "bob", "-o", "json"]);
            async move {
                let report: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                report["rows"]
                    .as_array()?
                    .iter()
                    .find(|r| r["endpoint"]["operationId"] == "createCoreV1NamespacedConfigMap")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(create["endpoint"]["level"], "stable", "{create:#}");
    assert_eq!(create["client"]["impersonator"], "admin", "{create:#}");
    kubectl(kubeconfig, &["delete", "-f", grant.to_str().unwrap()]);
}

/// `histor serve` on the port the kit's audit webhook backend posts to (batch mode, the
/// apiserver's client certificate checked), serving the admission webhook too: each change is
/// joined to the audit event the apiserver posted, with the impersonator of a `--as` change; and
/// the usage report of the kit's audit log lists the kubectl calls of this run, stable.
#[tokio::test]
async fn the_audit_webhook_backend_joins_changes_and_the_usage_report_lists_the_run() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let Some(kapi) = kapi_run_dir() else {
        return;
    };
    let port = std::env::var("HISTOR_E2E_AUDIT_WEBHOOK_PORT").ok();
    assert!(
        port.is_some() || !crate::required(),
        "e2e: HISTOR_E2E_REQUIRED is set, so the apiserver must post audit events somewhere (HISTOR_E2E_AUDIT_WEBHOOK_PORT; scripts/with-kapi.sh sets it)"
    );
    let Some(port) = port else { return };
    let client_ca = crate::webhook_client_ca().expect("the apiserver's client CA");
    let instance = unique("auditwh");
    let ns = format!("histor-e2e-{instance}");
    create_namespaces(&client, &[&ns]).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: histor.dev/v1alpha1\nkind: TrackingPolicy\nmetadata: {{name: {instance}}}\n\
             spec:\n  resources: [{{apiGroups: [\"\"], resources: [configmaps]}}]\n  \
             namespaces: {{include: [{ns}]}}\n"
        ),
    )
    .unwrap();
    let pki = kapi.join("pki");
    // The cluster's endpoints, so that live usage is named by operationId; a query token.
    let openapi = dir.path().join("openapi.json");
    let doc = kubectl_output(&kubeconfig, &["get", "--raw", "/openapi/v2"]);
    assert!(doc.status.success());
    std::fs::write(&openapi, &doc.stdout).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "usage-reader-token,reader\n").unwrap();
    let mut serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_histor"))
            .arg("serve")
            .arg("--policy-file")
            .arg(&policy)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(pki.join("webhook.crt"))
            .arg("--tls-key")
            .arg(pki.join("webhook.key"))
            .arg("--webhook-client-ca")
            .arg(&client_ca)
            .args([
                "--webhook-client-names",
                "kube-apiserver",
                "--audit-webhook",
            ])
            .arg("--audit-openapi")
            .arg(&openapi)
            .arg("--token-file")
            .arg(&tokens)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("histor serve starts"),
    );
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let metrics = |https: reqwest::Client, name: &'static str, labels: &'static str| {
        let url = format!("https://127.0.0.1:{port}/metrics");
        async move {
            let text = https.get(url).send().await.ok()?.text().await.ok()?;
            let mut sum = None;
            for line in text
                .lines()
                .filter(|l| l.starts_with(name) && l.contains(labels))
            {
                *sum.get_or_insert(0.0) += line.rsplit(' ').next()?.parse::<f64>().ok()?;
            }
            sum
        }
    };
    eventually("histor serve to be ready", Duration::from_secs(30), || {
        let get = https.get(format!("https://127.0.0.1:{port}/readyz")).send();
        async move {
            get.await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    let webhook = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": format!("histor-{instance}")},
        "webhooks": [{
            "name": format!("{instance}.histor.dev"),
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/admit/{instance}"),
                             "caBundle": crate::witness::base64_encode(&ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail", "timeoutSeconds": 5
        }]
    });
    let path = dir.path().join("webhook.json");
    std::fs::write(&path, webhook.to_string()).unwrap();
    kubectl(&kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    eventually("the webhook to be called", Duration::from_secs(30), || {
        let out = kubectl_output(
            &kubeconfig,
            &[
                "-n",
                &ns,
                "create",
                "configmap",
                "first",
                "--from-literal=k=v",
            ],
        );
        let https = https.clone();
        async move {
            if !out.status.success() {
                return None;
            }
            metrics(
                https,
                "histor_admission_reviews_total",
                r#"outcome="recorded""#,
            )
            .await
            .filter(|n| *n >= 1.0)
        }
    })
    .await;
    create_as_bob(&kubeconfig, &ns);
    kubectl(
        &kubeconfig,
        &["-n", &ns, "label", "configmap", "first", "step=two"],
    );
    eventually("the audit verdicts", Duration::from_secs(60), || {
        let https = https.clone();
        async move {
            metrics(
                https,
                "histor_witness_verdicts_total",
                r#"state="confirmed""#,
            )
            .await
            .filter(|n| *n >= 3.0)
        }
    })
    .await;
    let stored = metrics(
        https.clone(),
        "histor_audit_batches_total",
        r#"outcome="stored""#,
    )
    .await;
    assert!(
        stored.is_some_and(|n| n >= 1.0),
        "batches the apiserver posted: {stored:?}"
    );

    // Live usage through the plugin: bob's create, and a call to a deprecated API.
    kubectl_output(&kubeconfig, &["get", "componentstatuses"]);
    let token = dir.path().join("token");
    std::fs::write(&token, "usage-reader-token").unwrap();
    let blame_usage = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-blame"))
            .arg("usage")
            .args(["--server", &format!("https://127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&token)
            .arg("--certificate-authority")
            .arg(pki.join("ca.crt"))
            .args(args)
            .output()
            .expect("kubectl-blame runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let deprecated = eventually(
        "the deprecated call counted",
        Duration::from_secs(30),
        || {
            let out = blame_usage(&["--deprecated", "-o", "json"]);
            async move {
                let report: serde_json::Value = serde_json::from_str(&out).ok()?;
                report["rows"]
                    .as_array()?
                    .iter()
                    .find(|r| r["endpoint"]["resource"] == "componentstatuses")
                    .cloned()
            }
        },
    )
    .await;
    assert_eq!(deprecated["endpoint"]["deprecated"], true, "{deprecated:#}");
    assert_eq!(deprecated["client"]["agent"], "kubectl");
    let live: serde_json::Value =
        serde_json::from_str(&blame_usage(&["--user", "bob", "-o", "json"])).unwrap();
    let create = live["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["endpoint"]["operationId"] == "createCoreV1NamespacedConfigMap")
        .unwrap_or_else(|| panic!("bob's create, live: {live:#}"));
    assert_eq!(create["endpoint"]["level"], "stable");
    assert_eq!(create["client"]["impersonator"], "admin");
    let table = blame_usage(&[]);
    assert!(table.contains("listCoreV1ComponentStatus"), "{table}");
    serve.stop();

    let events = history(dir.path(), &ns);
    let of = |name: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["name"] == name).collect()
    };
    let first = of("first");
    assert_eq!(first.len(), 2, "{events:#?}");
    for e in &first {
        assert_eq!(e["state"], "confirmed", "{e:#}");
        assert_eq!(e["commit"]["witness"], "audit");
        assert!(
            e["audit"]["auditID"]
                .as_str()
                .is_some_and(|a| !a.is_empty())
        );
    }
    let bobs = of("bobs");
    assert_eq!(bobs[0]["user"]["username"], "bob");
    assert_eq!(bobs[0]["audit"]["impersonatedBy"], "admin", "{:#}", bobs[0]);

    // The usage report of the kit's audit log: this run's kubectl calls, at their level.
    let out = Command::new(env!("CARGO_BIN_EXE_histor"))
        .arg("usage")
        .arg("--audit-log")
        .arg(kapi.join("audit.log"))
        .arg("--openapi")
        .arg(&openapi)
        .args(["--user", "bob", "-o", "json"])
        .output()
        .expect("histor usage runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let create = rows
        .iter()
        .find(|r| r["endpoint"]["operationId"] == "createCoreV1NamespacedConfigMap")
        .unwrap_or_else(|| panic!("bob's create in {report:#}"));
    assert_eq!(create["endpoint"]["level"], "stable");
    assert_eq!(create["client"]["agent"], "kubectl");
    assert_eq!(create["client"]["impersonator"], "admin");

    kubectl(
        &kubeconfig,
        &[
            "delete",
            "validatingwebhookconfiguration",
            &format!("histor-{instance}"),
        ],
    );
    delete_namespaces(&client, &[&ns]).await;
}

/// `histor serve`, killed when dropped.
struct Serve(std::process::Child);

impl Serve {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kubectl --as=bob` (impersonated by the admin) creates ConfigMap `bobs` in `ns`.
fn create_as_bob(kubeconfig: &str, ns: &str) {
    kubectl(
        kubeconfig,
        &[
            "--as=bob",
            "--as-group=system:masters",
            "-n",
            ns,
            "create",
            "configmap",
            "bobs",
            "--from-literal=owner=bob",
        ],
    );
}
