//! The watch witness on a real apiserver: what admission announced is confirmed only when the
//! apiserver committed it; a change refused after histor allowed it (a second webhook, a
//! ResourceQuota), a forged review and the superseded attempts of conflict retries end
//! `notApplied`; and what was changed while the operator was down is recovered as `observed`,
//! with the field manager that made it.

use crate::{
    Operator, apply_crds, client, create_namespaces, delete_namespaces, eventually, kubectl,
    kubectl_output, policy, required, start_operator, unique, wait_ready,
};
use histor::crd::TrackingPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The second webhook (a copy of the kit's `webhook.py`): denies objects labelled
/// `kapi.test/deny=true`.
pub(crate) struct DenyWebhook(Child);

impl Drop for DenyWebhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The apiserver kit's run directory (its CA and a serving certificate for 127.0.0.1).
pub(crate) fn kapi_run_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KAPI_RUN_DIR").map(PathBuf::from);
    assert!(
        dir.is_some() || !required(),
        "e2e: HISTOR_E2E_REQUIRED is set, so KAPI_RUN_DIR must name the apiserver kit's run directory (scripts/with-kapi.sh sets it)"
    );
    dir
}

pub(crate) fn start_deny_webhook(pki: &Path, out: &Path) -> (DenyWebhook, u16) {
    let port = crate::free_port();
    let child = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/deny_webhook.py"
        ))
        .args(["--port", &port.to_string()])
        .arg("--cert")
        .arg(pki.join("webhook.crt"))
        .arg("--key")
        .arg(pki.join("webhook.key"))
        .arg("--out-dir")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs the deny webhook");
    (DenyWebhook(child), port)
}

/// A ConfigMap manifest labelled for the deny webhook, written under `dir`; its path.
pub(crate) fn labelled_deny(dir: &Path, name: &str) -> String {
    let path = dir.join(format!("{name}.json"));
    let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"kapi.test/deny": "true"}}, "data": {"k": "v"}});
    std::fs::write(&path, cm.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Starts the deny webhook, registers it for ConfigMaps of `ns` labelled `kapi.test/deny=true`
/// (ValidatingWebhookConfiguration `deny-<instance>`), and waits until the apiserver calls it.
pub(crate) async fn install_deny_webhook(
    kubeconfig: &str,
    kapi: &Path,
    dir: &Path,
    instance: &str,
    ns: &str,
) -> DenyWebhook {
    let (deny, deny_port) = start_deny_webhook(&kapi.join("pki"), dir);
    let ca = std::fs::read(kapi.join("pki").join("ca.crt")).expect("kit CA");
    let webhook = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": format!("deny-{instance}")},
        "webhooks": [{
            "name": "deny.kapi.test",
            "clientConfig": {"url": format!("https://127.0.0.1:{deny_port}/validate"),
                             "caBundle": base64_encode(&ca)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                       "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "objectSelector": {"matchLabels": {"kapi.test/deny": "true"}},
            "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "failurePolicy": "Fail", "timeoutSeconds": 5
        }]
    });
    let path = dir.join("deny-webhook.json");
    std::fs::write(&path, webhook.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    // It may take a moment to be served.
    let probe = labelled_deny(dir, "probe");
    eventually("the deny webhook to deny", Duration::from_secs(20), || {
        let out = kubectl_output(
            kubeconfig,
            &["-n", ns, "create", "--dry-run=server", "-f", &probe],
        );
        let denied = String::from_utf8_lossy(&out.stderr).contains("denied");
        async move { denied.then_some(()) }
    })
    .await;
    deny
}

/// A metric's value from the operator's `/metrics` (summed over label sets matching `labels`).
pub(crate) async fn metric(operator: &Operator, name: &str, labels: &str) -> Option<f64> {
    let text = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        operator.metrics_port
    ))
    .await
    .ok()?
    .text()
    .await
    .ok()?;
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(labels) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *sum.get_or_insert(0.0) += value;
    }
    sum
}

/// The history of namespace `ns`, oldest first, read from the stopped operator's store.
pub(crate) fn history(dir: &Path, ns: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_histor"))
        .args(["history", "--data-dir"])
        .arg(dir.join("data"))
        .args(["-n", ns, "--limit", "500", "-o", "json"])
        .output()
        .expect("histor history runs");
    assert!(
        out.status.success(),
        "histor history: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut events: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    events.reverse();
    events
}

fn of<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["name"] == name).collect()
}

fn states(events: &[&Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["operation"].as_str().unwrap_or("?").to_owned(),
                e["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_watch_confirms_what_was_committed_and_recovers_what_the_webhook_missed() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let Some(kapi) = kapi_run_dir() else {
        return;
    };
    let instance = unique("witness");
    let ns = format!("histor-e2e-{instance}");
    let operator_ns = format!("histor-e2e-op-{instance}");
    let dir = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    let extra = ["--confirm-window", "3s"];
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
    // The watch starts within one discovery pass of the policy.
    eventually("the configmaps watch", Duration::from_secs(30), || {
        let op = &operator;
        async move {
            metric(op, "histor_witness_watches", "")
                .await
                .filter(|v| *v >= 1.0)
        }
    })
    .await;

    // A second webhook that denies what histor allowed.
    let _deny = install_deny_webhook(&kubeconfig, &kapi, dir.path(), &instance, &ns).await;

    let on = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        kubectl(&kubeconfig, &all)
    };
    let fails = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        let out = kubectl_output(&kubeconfig, &all);
        assert!(!out.status.success(), "kubectl {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A normal change.
    on(&["create", "configmap", "normal", "--from-literal=k=v"]);
    // Denied by the second webhook (it may take a moment to be served).
    let labelled = |name: &str| labelled_deny(dir.path(), name);
    let denied = fails(&["create", "-f", &labelled("denied")]);
    assert!(denied.contains("denied"), "{denied}");
    // Refused by ResourceQuota, which runs after the validating webhooks. No controller fills
    // in the quota's status here, so it is set by hand as the quota controller would.
    on(&["create", "quota", "cm-quota", "--hard=configmaps=2"]);
    on(&[
        "patch",
        "resourcequota",
        "cm-quota",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"hard":{"configmaps":"2"},"used":{"configmaps":"2"}}}"#,
    ]);
    let quota =
        eventually("the quota to refuse", Duration::from_secs(20), || {
            let out = kubectl_output(
                &kubeconfig,
                &[
                    "-n",
                    &ns,
                    "create",
                    "configmap",
                    "over-quota",
                    "--from-literal=k=v",
                ],
            );
            async move {
                (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .await;
    assert!(quota.contains("exceeded quota"), "{quota}");
    kubectl(
        &kubeconfig,
        &["-n", &ns, "delete", "resourcequota", "cm-quota"],
    );

    // Six concurrent patches: the apiserver retries conflicts, calling the webhook again each time.
    on(&["create", "configmap", "race", "--from-literal=k0=v0"]);
    let patches: Vec<Child> = (1..=6)
        .map(|i| {
            Command::new("kubectl")
                .args([
                    "--kubeconfig",
                    &kubeconfig,
                    "-n",
                    &ns,
                    "patch",
                    "configmap",
                    "race",
                ])
                .args([
                    "--type=merge",
                    "-p",
                    &format!(r#"{{"data":{{"k{i}":"v{i}"}}}}"#),
                ])
                .stdout(Stdio::null())
                .spawn()
                .expect("kubectl runs")
        })
        .collect();
    for mut p in patches {
        assert!(p.wait().unwrap().success(), "a concurrent patch failed");
    }

    // A review POSTed by a local process holding the apiserver's client certificate.
    forge_review(&operator, &ns, &instance, &operator_ns, &client).await;

    // Every received change gets its verdict within the window.
    eventually("every verdict", Duration::from_secs(40), || {
        let op = &operator;
        async move {
            let pending = metric(op, "histor_witness_pending", "").await?;
            let not_applied =
                metric(op, "histor_witness_verdicts_total", r#"state="notApplied""#).await?;
            (pending == 0.0 && not_applied >= 3.0).then_some(())
        }
    })
    .await;
    drop(operator);

    // While the operator is down, three changes the webhook cannot see (failurePolicy Ignore).
    on(&["create", "configmap", "while-away", "--from-literal=k=v"]);
    on(&[
        "patch",
        "configmap",
        "normal",
        "-p",
        r#"{"data":{"k":"changed-while-away"}}"#,
    ]);
    on(&["delete", "configmap", "race"]);

    let operator = start_operator(&kubeconfig, &operator_ns, &instance, dir.path(), &extra);
    eventually(
        "the changes made while away",
        Duration::from_secs(60),
        || {
            let op = &operator;
            async move {
                metric(op, "histor_witness_verdicts_total", r#"state="observed""#)
                    .await
                    .filter(|v| *v >= 3.0)
            }
        },
    )
    .await;
    drop(operator);

    let events = history(dir.path(), &ns);
    for e in &events {
        println!(
            "{} {} {} {} {}",
            e["operation"], e["name"], e["state"], e["user"]["username"], e["commit"]
        );
    }
    // The normal create is confirmed, within a second, with the committed resourceVersion.
    let normal = of(&events, "normal");
    assert_eq!(
        states(&normal),
        [
            ("CREATE".into(), "confirmed".into()),
            ("UPDATE".into(), "observed".into())
        ],
        "{normal:?}"
    );
    let commit = &normal[0]["commit"];
    assert!(
        commit["resourceVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{commit}"
    );
    let lag = seconds(&commit["seenAt"]) - seconds(&normal[0]["receivedAt"]);
    assert!(lag < 1.0, "confirmed {lag:.3} s after the review");
    // The change made while away: the field manager inferred, no authenticated user.
    let away = normal[1];
    assert_eq!(away["user"]["username"], "", "{away}");
    assert_eq!(away["inferred"]["manager"], "kubectl-patch", "{away}");

    // Refused after histor allowed them: not applied.
    assert_eq!(
        states(&of(&events, "denied")),
        [("CREATE".into(), "notApplied".into())]
    );
    assert_eq!(
        states(&of(&events, "over-quota")),
        [("CREATE".into(), "notApplied".into())]
    );
    assert_eq!(
        states(&of(&events, "forged")),
        [("CREATE".into(), "notApplied".into())]
    );

    // The race: one create and exactly the six commits the apiserver made are confirmed;
    // the attempts superseded by conflict retries are not applied; the delete was observed.
    let race = of(&events, "race");
    let confirmed: Vec<_> = race
        .iter()
        .filter(|e| e["state"] == "confirmed")
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        confirmed,
        [
            "CREATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE", "UPDATE"
        ],
        "{:?}",
        states(&race)
    );
    assert!(
        race.iter().all(
            |e| ["confirmed", "notApplied", "observed"].contains(&e["state"].as_str().unwrap())
        ),
        "{:?}",
        states(&race)
    );
    let last = race.last().unwrap();
    assert_eq!(
        (last["operation"].as_str(), last["state"].as_str()),
        (Some("DELETE"), Some("observed"))
    );
    assert_eq!(
        last["inferred"]["manager"],
        Value::Null,
        "a delete leaves no managedFields entry"
    );

    // Created while away: observed, with kubectl's field manager.
    let created = of(&events, "while-away");
    assert_eq!(states(&created), [("CREATE".into(), "observed".into())]);
    assert_eq!(created[0]["inferred"]["manager"], "kubectl-create");

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

fn seconds(v: &Value) -> f64 {
    let t: jiff::Timestamp = v.as_str().expect("a time").parse().expect("RFC 3339");
    t.as_nanosecond() as f64 / 1e9
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// POSTs a CREATE review that no apiserver sent, with the apiserver's own client certificate
/// (what a compromised local process could do): histor records it as received, and the
/// watch never sees it committed.
async fn forge_review(
    operator: &Operator,
    ns: &str,
    policy: &str,
    operator_ns: &str,
    client: &kube::Client,
) {
    let Some(client_ca) = crate::webhook_client_ca() else {
        return;
    };
    let wc = client_ca
        .parent()
        .expect("webhook client dir")
        .to_path_buf();
    let mut review: Value = serde_json::from_str(include_str!(
        "../fixtures/admission/admissionreview-create-configmap.json"
    ))
    .expect("fixture");
    review["request"]["uid"] = "0b0e4f4e-f0r9-4ed0-0000-000000000001".into();
    review["request"]["namespace"] = ns.into();
    review["request"]["name"] = "forged".into();
    let obj = &mut review["request"]["object"]["metadata"];
    obj["name"] = "forged".into();
    obj["namespace"] = ns.into();
    obj["uid"] = "0b0e4f4e-f0r9-4ed0-0000-0000000000ff".into();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), operator_ns);
    let tls = secrets.get("histor-webhook-tls").await.expect("TLS Secret");
    let ca = tls.data.expect("data")["ca.crt"].0.clone();
    let identity = [
        std::fs::read(wc.join("client.crt")).expect("client certificate"),
        std::fs::read(wc.join("client.key")).expect("client key"),
    ]
    .concat();
    let forger = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA")])
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let answer = forger
        .post(format!(
            "https://127.0.0.1:{}/admit/{policy}",
            operator.port
        ))
        .json(&review)
        .send()
        .await
        .expect("the webhook answers");
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
}
