//! End-to-end tests against a real cluster. They run when `HISTOR_E2E_KUBECONFIG` names a
//! kubeconfig with cluster-admin rights (`scripts/with-kapi.sh` starts a throw-away
//! kube-apiserver and sets it), and skip with a message otherwise; with `HISTOR_E2E_REQUIRED=1`
//! (set by `.ci/run`) a skip is a failure. They start `histor operator` themselves, outside the
//! cluster, in url mode, so they also pass against a bare kube-apiserver: they create their own
//! namespaces and never wait for pods.
//!
//! Tests run in parallel and isolated: each names its namespaces, policies and cluster-scoped
//! objects after itself, and each operator reconciles only the policies labelled for it
//! (`--policy-selector`), so two operators never rewrite each other's webhook configurations.

mod audit;
mod day_one;
mod events;
mod postgres;
mod query;
mod receivers;
mod witness;

use histor::crd::TrackingPolicy;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The label an operator of this suite selects its policies by.
pub const INSTANCE_LABEL: &str = "e2e.histor.dev/instance";

/// The cluster to test against, or `None` (with a message) when none is configured; panics when
/// `HISTOR_E2E_REQUIRED` says the suite must run.
pub async fn client() -> Option<(kube::Client, String)> {
    let Ok(path) = std::env::var("HISTOR_E2E_KUBECONFIG") else {
        let message = "set HISTOR_E2E_KUBECONFIG to a cluster-admin kubeconfig (or run the suite through scripts/with-kapi.sh)";
        assert!(
            !required(),
            "e2e: HISTOR_E2E_REQUIRED is set, so this test may not skip: {message}"
        );
        // Straight to stderr: libtest captures println!/eprintln! of passing tests, and a skip
        // must be seen.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "e2e: skipping: {message}");
        return None;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(&path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("usable kubeconfig");
    Some((kube::Client::try_from(config).expect("client"), path))
}

/// Whether a skip must fail the test (CI).
pub fn required() -> bool {
    std::env::var("HISTOR_E2E_REQUIRED").is_ok_and(|v| v == "1" || v == "true")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this test process and `tag`.
pub fn unique(tag: &str) -> String {
    format!("{tag}-{:x}", std::process::id())
}

/// Runs kubectl with `kubeconfig` and returns its output, failing the test on an error. The
/// directory of the `kubectl-blame` binary under test comes first on `PATH`, so `kubectl blame`
/// runs it as kubectl's plugin mechanism would.
pub fn kubectl(kubeconfig: &str, args: &[&str]) -> String {
    let out = kubectl_output(kubeconfig, args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
}

/// Like [`kubectl`], but hands back the whole output, failed or not.
pub fn kubectl_output(kubeconfig: &str, args: &[&str]) -> Output {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-blame"))
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(plugin_dir).chain(std::env::split_paths(&path).collect::<Vec<PathBuf>>()),
    )
    .expect("PATH");
    Command::new("kubectl")
        .env("PATH", path)
        .args(args)
        // Last: kubectl refuses flags before a plugin's name, and passes them on to it.
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .expect("kubectl runs")
}

/// Polls `f` every 100 ms until it returns a value, failing the test after `timeout`.
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the policy's Ready condition is True, and returns how long that took.
pub async fn wait_ready(client: &kube::Client, policy: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    eventually(&format!("policy {policy} to be Ready"), timeout, || {
        let policies = policies.clone();
        async move {
            let ready = policies
                .get(policy)
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
    started.elapsed()
}

/// `histor operator`, killed when dropped.
pub struct Operator {
    child: Child,
    /// Port of its HTTPS endpoint (webhook and query API).
    pub port: u16,
    /// Port of its plain-HTTP `/metrics`.
    pub metrics_port: u16,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    // A new CRD is served a moment after it is stored.
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    eventually("the TrackingPolicy API", Duration::from_secs(30), || {
        let policies = policies.clone();
        async move { policies.list(&Default::default()).await.ok() }
    })
    .await;
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

/// Deletes namespaces (on a bare apiserver they stay Terminating: nothing runs their
/// finalizers, which is fine for names this unique).
pub async fn delete_namespaces(client: &kube::Client, names: &[&str]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let _ = namespaces.delete(name, &DeleteParams::default()).await;
    }
}

/// Grants `user` what the built-in `edit` role would on ConfigMaps and Deployments in
/// `namespace`. (A bare apiserver has no controller-manager to aggregate rules into `edit`, so
/// that role is empty there.)
pub fn grant_edit(kubeconfig: &str, namespace: &str, user: &str, dir: &Path) {
    let role = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": format!("{user}-edit"), "namespace": namespace},
             "rules": [
                {"apiGroups": [""], "resources": ["configmaps"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"],
                 "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
             ]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": format!("{user}-edit"), "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{user}-edit")},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}
        ]
    });
    let path = dir.join(format!("{user}-{namespace}-edit.json"));
    std::fs::write(&path, role.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
}

/// The address the apiserver reaches this machine at: 127.0.0.1 for a kube-apiserver on the same
/// host (the default); for kind, the kind network's gateway (`HISTOR_E2E_HOST=172.18.0.1`).
pub fn e2e_host() -> String {
    std::env::var("HISTOR_E2E_HOST").unwrap_or_else(|_| "127.0.0.1".into())
}

/// Starts `histor operator` in url mode on a free port of [`e2e_host`], reconciling only the
/// policies labelled `INSTANCE_LABEL=instance`.
pub fn start_operator(
    kubeconfig: &str,
    namespace: &str,
    instance: &str,
    dir: &Path,
    extra: &[&str],
) -> Operator {
    let (port, metrics_port) = (free_port(), free_port());
    let host = e2e_host();
    let mut command = Command::new(env!("CARGO_BIN_EXE_histor"));
    command.args([
        "operator",
        "--namespace",
        namespace,
        "--leader-election=false",
    ]);
    // Where the apiserver presents a client certificate (scripts/with-kapi.sh sets one up), only
    // it may write history.
    if let Some(ca) = webhook_client_ca() {
        command
            .arg("--webhook-client-ca")
            .arg(ca)
            .args(["--webhook-client-names", "kube-apiserver"]);
    }
    let child = command
        .env("KUBECONFIG", kubeconfig)
        .args(["--policy-selector", &format!("{INSTANCE_LABEL}={instance}")])
        .args(["--webhook-url", &format!("https://{host}:{port}")])
        .args(["--listen", &format!("{host}:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--record-interval-secs", "1"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("operator starts");
    Operator {
        child,
        port,
        metrics_port,
    }
}

/// The CA of the client certificate the apiserver presents to webhooks, when it has one.
pub fn webhook_client_ca() -> Option<PathBuf> {
    let ca = std::env::var_os("HISTOR_E2E_WEBHOOK_CLIENT_CA").map(PathBuf::from);
    assert!(
        ca.is_some() || !required(),
        "e2e: HISTOR_E2E_REQUIRED is set, so the apiserver must present a webhook client certificate (HISTOR_E2E_WEBHOOK_CLIENT_CA; scripts/with-kapi.sh sets it)"
    );
    ca
}

/// A TrackingPolicy for the operator of `instance`, from the JSON of its spec.
pub fn policy(name: &str, instance: &str, spec: serde_json::Value) -> TrackingPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "histor.dev/v1alpha1",
        "kind": "TrackingPolicy",
        "metadata": {"name": name, "labels": {INSTANCE_LABEL: instance}},
        "spec": spec,
    }))
    .expect("policy")
}
