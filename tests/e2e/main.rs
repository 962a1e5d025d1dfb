//! End-to-end tests against a real cluster. They run only when `HISTOR_E2E_KUBECONFIG` names a
//! kubeconfig with cluster-admin rights, and skip with a message otherwise. They start
//! `histor operator` themselves, outside the cluster, in url mode on 127.0.0.1, so they also pass
//! against a bare kube-apiserver: they create their own namespaces and never wait for pods.

mod operator;
mod query;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SKIP: &str =
    "skipping: set HISTOR_E2E_KUBECONFIG to a cluster-admin kubeconfig to run the e2e suite";

pub async fn client() -> Option<(kube::Client, String)> {
    let Ok(path) = std::env::var("HISTOR_E2E_KUBECONFIG") else {
        // Straight to stderr: libtest captures println!/eprintln! of passing tests, and a skip
        // must be seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "e2e: {SKIP}");
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Some((kube::Client::try_from(config).expect("client"), path))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs kubectl as the test's admin, or impersonating `as_user`.
pub fn kubectl(kubeconfig: &str, args: &[&str]) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The CRDs, exactly as generated.
pub async fn apply_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in histor::crd::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("histor-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD applied");
    }
}

/// Creates the namespaces (already existing ones are fine).
pub async fn create_namespaces(client: &kube::Client, names: &[&str]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        let _ = namespaces.create(&PostParams::default(), &namespace).await;
    }
}

/// The address the apiserver reaches this machine at: 127.0.0.1 for a kube-apiserver on the same
/// host (the default); for kind, the kind network's gateway (`HISTOR_E2E_HOST=172.18.0.1`).
pub fn e2e_host() -> String {
    std::env::var("HISTOR_E2E_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}

/// Starts `histor operator` in url mode on a free port of [`e2e_host`]; returns it and the port.
pub fn start_operator(
    kubeconfig: &str,
    namespace: &str,
    dir: &Path,
    extra: &[&str],
) -> (Operator, u16) {
    let (port, metrics_port) = (free_port(), free_port());
    let host = e2e_host();
    let child = Command::new(env!("CARGO_BIN_EXE_histor"))
        .env("KUBECONFIG", kubeconfig)
        .args([
            "operator",
            "--namespace",
            namespace,
            "--leader-election=false",
        ])
        .args(["--webhook-url", &format!("https://{host}:{port}")])
        .args(["--listen", &format!("{host}:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--record-interval-secs", "1"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--cert-dir")
        .arg(dir.join("tls"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("operator starts");
    (Operator(child), port)
}
