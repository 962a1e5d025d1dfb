//! The operator on a shared PostgreSQL store, on a real apiserver: a policy turns Ready, changes
//! become history in the database (read back with `histor history --store`), ChangeRecords and
//! a Slack alert follow, as with the default sled store.
//!
//! Needs a PostgreSQL server as well as the apiserver (`scripts/with-postgres.sh` around
//! `scripts/with-kapi.sh`, as `.ci/run` runs them); without one it skips on a developer's
//! machine and fails when `HISTOR_PG_REQUIRED` is set.

use crate::receivers::Slack;
use crate::{
    apply_crds, client, create_namespaces, delete_namespaces, eventually, kubectl, policy,
    start_operator, unique, wait_ready,
};
use histor::crd::{ChangeRecord, TrackingPolicy};
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

/// The test server's URL (with a schema of this test's own) and password file.
fn postgres(schema: &str) -> Option<(String, String)> {
    let Ok(url) = std::env::var("HISTOR_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("HISTOR_PG_REQUIRED").is_none(),
            "HISTOR_PG_REQUIRED is set but HISTOR_TEST_POSTGRES is not: run under \
             scripts/with-postgres.sh"
        );
        println!("skipped: no PostgreSQL (HISTOR_TEST_POSTGRES)");
        return None;
    };
    let password = std::env::var("HISTOR_TEST_POSTGRES_PASSWORD_FILE")
        .expect("HISTOR_TEST_POSTGRES_PASSWORD_FILE");
    let sep = if url.contains('?') { '&' } else { '?' };
    Some((format!("{url}{sep}schema={schema}"), password))
}

#[tokio::test]
async fn the_operator_keeps_history_in_postgresql() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let instance = unique("pg");
    let Some((url, password_file)) = postgres(&format!("e2e_{}", instance.replace('-', "_")))
    else {
        return;
    };
    let ns = format!("histor-e2e-{instance}");
    let operator_ns = format!("histor-e2e-op-{instance}");
    let dir = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    let slack = Slack::start().await;
    kubectl(
        &kubeconfig,
        &[
            "-n",
            &operator_ns,
            "create",
            "secret",
            "generic",
            "slack",
            &format!("--from-literal=url={}", slack.url),
        ],
    );
    let operator = start_operator(
        &kubeconfig,
        &operator_ns,
        &instance,
        dir.path(),
        &["--store", &url, "--store-password-file", &password_file],
    );

    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    let spec = serde_json::json!({
        "resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
        "namespaces": {"include": [ns]},
        "notify": [{"name": "team-slack",
                    "slack": {"webhookSecretRef":
                              {"namespace": operator_ns, "name": "slack", "key": "url"}}}]
    });
    policies
        .create(&PostParams::default(), &policy(&instance, &instance, spec))
        .await
        .expect("policy created");
    wait_ready(&client, &instance, Duration::from_secs(60)).await;

    let on = |args: &[&str]| {
        let mut all = vec!["-n", ns.as_str()];
        all.extend_from_slice(args);
        kubectl(&kubeconfig, &all)
    };
    on(&["create", "configmap", "flags", "--from-literal=beta=off"]);
    on(&[
        "patch",
        "configmap",
        "flags",
        "-p",
        r#"{"data":{"beta":"on"}}"#,
    ]);

    // In the database: `histor history` reads it straight from PostgreSQL.
    let history = eventually("the changes in PostgreSQL", Duration::from_secs(30), || {
        let (url, password_file) = (url.clone(), password_file.clone());
        async move {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_histor"))
                .args([
                    "history",
                    "--store",
                    &url,
                    "--store-password-file",
                    &password_file,
                ])
                .args(["--name", "flags"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("CREATE") && text.contains("UPDATE")).then_some(text)
        }
    })
    .await;
    println!("{history}");
    assert!(history.contains("data.beta"), "{history}");

    // The rest of histor works on it as on sled: the ChangeRecord, and the alert.
    let records: Api<ChangeRecord> = Api::namespaced(client.clone(), &ns);
    eventually("the ChangeRecord", Duration::from_secs(30), || {
        let records = records.clone();
        async move {
            let list = records.list(&Default::default()).await.ok()?.items;
            list.iter()
                .find(|r| r.spec.target_ref.name == "flags")?
                .status
                .as_ref()
                .filter(|s| s.change_count == 2)
                .map(|_| ())
        }
    })
    .await;
    slack
        .wait_for(&["flags", "data.beta"], Duration::from_secs(30))
        .await;

    policies
        .delete(&instance, &DeleteParams::default())
        .await
        .expect("policy deleted");
    drop(operator);
    delete_namespaces(&client, &[&ns, &operator_ns]).await;
}
