//! `histor demo`: the whole capture path with nothing but cargo. Starts the real HTTPS server on
//! a temporary store, POSTs AdmissionReviews recorded from a real kube-apiserver (bundled in the
//! binary), and prints who changed what.

use super::serve::{ServeArgs, start};
use super::server::CaptureArgs;
use crate::pipeline;
use crate::render;
use crate::store::Query;
use crate::{Error, Result};
use std::path::PathBuf;

/// Options of `histor demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the store here instead of a temporary directory (to explore it with `histor history`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The policy the demo runs with: everything, every subresource, every user.
const DEMO_POLICY: &str = r#"apiVersion: histor.dev/v1alpha1
kind: TrackingPolicy
metadata:
  name: demo
spec:
  resources:
    - apiGroups: ["*"]
      resources: ["*/*"]
"#;

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../tests/fixtures/admission/", $name)))),*]
    };
}

/// AdmissionReviews recorded from a real kube-apiserver (`tests/fixtures/admission/`), by file
/// name, in the order the apiserver sent them.
pub const REVIEWS: &[(&str, &str)] = fixtures![
    "admissionreview-create-deployment.json",
    "admissionreview-update-deployment-scale.json",
    "admissionreview-update-deployment.json",
    "admissionreview-update-deployment-dryrun.json",
    "admissionreview-delete-deployment.json",
    "admissionreview-create-configmap.json",
    "admissionreview-update-configmap.json",
    "admissionreview-create-configmap-dryrun.json",
    "admissionreview-delete-configmap.json",
    "admissionreview-create-configmap-denied.json",
    "admissionreview-create-secret.json",
    "admissionreview-update-secret.json",
    "admissionreview-delete-secret.json",
    "admissionreview-create-widget.json",
    "admissionreview-update-widget.json",
    "admissionreview-update-widget-status.json",
    "admissionreview-update-widget-scale.json",
    "admissionreview-delete-widget.json",
    "admissionreview-create-configmap-alice.json",
    "admissionreview-delete-configmap-alice.json",
];

macro_rules! v133 {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../tests/fixtures/v1.33/admission/", $name)))),*]
    };
}

/// ConfigMap reviews of the v1.33 recording (`tests/fixtures/v1.33/`), for the offline witness:
/// app-config's life, a create another webhook denied, and three creates of which ResourceQuota
/// refused the last.
const WITNESSED_REVIEWS: &[(&str, &str)] = v133![
    "005-create-configmaps-app-config-kubectl-apply-create.json",
    "006-update-configmaps-app-config-kubectl-apply-change.json",
    "009-update-configmaps-app-config-kubectl-patch-merge.json",
    "010-update-configmaps-app-config-kubectl-edit.json",
    "011-update-configmaps-app-config-kubectl-replace.json",
    "012-delete-configmaps-app-config-kubectl-delete.json",
    "021-create-configmaps-forbidden-by-policy-denied-by-other-webhook.json",
    "023-create-configmaps-q1-quota-1-of-2.json",
    "024-create-configmaps-q2-quota-2-of-2.json",
    "025-create-configmaps-q3-quota-exceeded.json",
];

/// The recording's ConfigMap watch stream, as the apiserver sent it.
const WITNESSED_STREAM: &str = include_str!("../../tests/fixtures/v1.33/watch/configmaps.jsonl");

/// Runs the demo and prints its report.
pub async fn run(args: DemoArgs) -> Result<()> {
    let temp = tempdir()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| temp.join("data"));
    let policy_file = temp.join("demo-policy.yaml");
    std::fs::write(&policy_file, DEMO_POLICY).map_err(|e| Error::file(&policy_file, e))?;
    let running = start(ServeArgs {
        policy_files: vec![policy_file],
        data_dir: data_dir.clone(),
        store: Default::default(),
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| Error::Usage("bad listen address".into()))?,
        tls_cert: None,
        tls_key: None,
        capture: CaptureArgs::default(),
        audit: Default::default(),
        secrets_dir: None,
        token_file: None,
    })
    .await?;
    let ca = running
        .ca_file
        .clone()
        .ok_or_else(|| Error::Tls("demo server has no CA file".into()))?;
    println!(
        "histor demo: HTTPS capture server on https://{} (CA {})",
        running.addr,
        ca.display()
    );
    println!(
        "sending {} AdmissionReviews recorded from a real kube-apiserver...\n",
        REVIEWS.len()
    );

    let client = https_client(&ca)?;
    let url = format!("https://localhost:{}/admit/demo", running.addr.port());
    for (name, body) in REVIEWS {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(*body)
            .send()
            .await
            .map_err(|e| Error::Usage(format!("posting {name}: {e}")))?;
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| Error::Usage(format!("reading the answer to {name}: {e}")))?;
        if answer.pointer("/response/allowed") != Some(&serde_json::Value::Bool(true)) {
            return Err(Error::Usage(format!("{name} was not allowed: {answer}")));
        }
    }
    let metrics = client
        .get(format!("https://localhost:{}/metrics", running.addr.port()))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| Error::Usage(format!("reading /metrics: {e}")))?
        .text()
        .await
        .map_err(|e| Error::Usage(format!("reading /metrics: {e}")))?;
    println!("every review answered allowed; outcomes from /metrics:");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("histor_admission_reviews_total{"))
    {
        println!("  {line}");
    }

    let store = running.store.clone();
    let page = store.query(&Query {
        limit: 100,
        ..Query::default()
    })?;
    println!("\nwho changed what (newest first):\n");
    print!("{}", render::events_table(&page.events));

    let scale = page.events.iter().find(|e| {
        e.event.resource.resource == "deployments"
            && e.event.resource.subresource.as_deref() == Some("scale")
    });
    if let Some(scale) = scale {
        let before = store.state_before(scale.id)?;
        let after = store.state_after(scale.id)?;
        println!(
            "\n`kubectl scale` by {} went to the scale subresource; as a diff of {}:\n",
            scale.event.user.username,
            scale.event.target()
        );
        print!(
            "{}",
            pipeline::unified_yaml_diff(before.as_ref(), after.as_ref(), "before", "after")
        );
    }
    running.shutdown().await?;
    offline_witness()?;
    match args.data_dir {
        Some(dir) => println!(
            "\nstore kept in {}: try `histor history --data-dir {}`",
            dir.display(),
            dir.display()
        ),
        None => {
            let _ = std::fs::remove_dir_all(&temp);
        }
    }
    Ok(())
}

/// The second half of the demo: admission alone cannot know whether a change was committed.
/// Reviews of another recording, with the watch stream recorded beside them as the witness.
fn offline_witness() -> Result<()> {
    use crate::pipeline::{ChangeState, CompiledPolicy, Outcome, Redactor};
    use crate::store::{EventStore, MemStore};
    use crate::witness::offline;
    let spec: crate::crd::TrackingPolicySpec = serde_json::from_value(serde_json::json!(
        {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}]}
    ))
    .map_err(Error::Json)?;
    let policy = std::sync::Arc::new(CompiledPolicy::compile("demo", &spec)?);
    let redactor = Redactor::new(b"histor demo: not a secret key...");
    let store = MemStore::default();
    let mut uids = std::collections::HashSet::new();
    let t0: jiff::Timestamp = "2026-12-01T21:22:00Z"
        .parse()
        .map_err(|e| Error::Usage(format!("{e}")))?;
    for (i, (name, body)) in WITNESSED_REVIEWS.iter().enumerate() {
        let parsed = pipeline::parse(body.as_bytes())?;
        let request = parsed
            .request
            .map_err(|e| Error::Usage(format!("{name}: {e}")))?;
        let at = t0 + jiff::SignedDuration::from_millis(i as i64);
        if let Outcome::Record(mut c) = pipeline::process(&request, &policy, &redactor, at) {
            c.event.state = ChangeState::Received;
            uids.extend(c.event.object_uid.clone());
            store.append(&[c])?;
        }
    }
    // The stream's lines for these objects (the recording holds others too).
    let stream: String = WITNESSED_STREAM
        .lines()
        .filter(|line| uids.iter().any(|u| line.contains(u.as_str())))
        .map(|line| format!("{line}\n"))
        .collect();
    let api = offline::api_of_stream(&stream, "configmaps")?;
    let report = offline::replay_watch(&store, &[policy], &redactor, &api, &stream)?;
    println!(
        "\nadmission alone cannot know whether a change was committed: {} ConfigMap reviews \
         of a v1.33 recording, with its watch stream as the witness ({}):\n",
        WITNESSED_REVIEWS.len(),
        report
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let page = store.query(&Query {
        limit: 100,
        ..Query::default()
    })?;
    print!("{}", render::events_table(&page.events));
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("histor-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    Ok(dir)
}

/// A client that trusts only the demo's CA: the handshake is real TLS.
fn https_client(ca: &std::path::Path) -> Result<reqwest::Client> {
    let pem = std::fs::read(ca).map_err(|e| Error::file(ca, e))?;
    let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| Error::Tls(e.to_string()))?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .build()
        .map_err(|e| Error::Tls(e.to_string()))
}
