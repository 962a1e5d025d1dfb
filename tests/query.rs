//! Component test of the query API in standalone mode: `histor serve --token-file` over real
//! HTTPS, fed recorded AdmissionReviews, read back with a listed bearer token.

mod support;

use histor::cmd::{CaptureArgs, ServeArgs, start};
use serde_json::Value;
use std::path::Path;
use support::{client, fixture, write_policy};

fn args(dir: &Path) -> ServeArgs {
    let token_file = dir.join("tokens");
    std::fs::write(&token_file, "# who may read\nlocal-token,me\n").unwrap();
    ServeArgs {
        policy_files: vec![write_policy(dir, "all")],
        data_dir: dir.join("data"),
        store: Default::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: None,
        tls_key: None,
        capture: CaptureArgs {
            retention_interval_secs: 3600,
            ..CaptureArgs::default()
        },
        audit: Default::default(),
        secrets_dir: None,
        token_file: Some(token_file),
    }
}

#[tokio::test]
async fn recorded_changes_are_served_to_listed_tokens_only() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let running = start(args(dir.path())).await.unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let base = format!("https://localhost:{}", running.addr.port());
    for name in [
        "admissionreview-create-deployment.json",
        "admissionreview-update-deployment.json",
    ] {
        let response = client
            .post(format!("{base}/admit/all"))
            .header("content-type", "application/json")
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }

    let url = format!(
        "{base}/apis/query.histor.dev/v1alpha1/namespaces/demo/changes?kind=deployments.apps"
    );
    let response = client
        .get(&url)
        .bearer_auth("local-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let list: Value = response.json().await.unwrap();
    assert_eq!(list["kind"], "ChangeList");
    let ops: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["event"]["operation"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["UPDATE", "CREATE"]);

    let id = list["items"][0]["metadata"]["name"].as_str().unwrap();
    let one: Value = client
        .get(format!(
            "{base}/apis/query.histor.dev/v1alpha1/namespaces/demo/changes/{id}"
        ))
        .bearer_auth("local-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        one["diff"]
            .as_str()
            .unwrap()
            .contains("+++ b/deployments.apps/")
    );

    let response = client.get(&url).bearer_auth("other").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // The capture side is unchanged.
    let response = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    running.shutdown().await.unwrap();
}
