//! Component tests of the capture path: a real HTTPS server (rustls), the real pipeline, a real
//! sled store on disk, fed AdmissionReviews recorded from a real kube-apiserver.

mod support;

use histor::cmd::{CaptureArgs, ServeArgs, start};
use histor::store::{EventStore, Query};
use serde_json::Value;
use std::path::Path;
use support::{client, fixture, fixture_order, fresh_uid, write_policy};

fn args(dir: &Path, policy: std::path::PathBuf) -> ServeArgs {
    ServeArgs {
        policy_files: vec![policy],
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: None,
        tls_key: None,
        capture: CaptureArgs {
            retention_interval_secs: 3600,
            ..CaptureArgs::default()
        },
        secrets_dir: None,
        token_file: None,
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn every_recorded_review_becomes_the_expected_event() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let running = start(args(dir.path(), write_policy(dir.path(), "all")))
        .await
        .unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let url = format!("https://localhost:{}/admit/all", running.addr.port());
    for name in fixture_order() {
        let body = fixture(name);
        let uid = serde_json::from_str::<Value>(&body).unwrap()["request"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, answer) = post(&client, &url, body).await;
        assert_eq!(status, 200, "{name}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{name}");
        assert_eq!(answer["response"]["uid"], uid.as_str(), "{name}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    }
    let store = running.store.clone();
    let events = store
        .query(&Query {
            limit: 100,
            ..Query::default()
        })
        .unwrap()
        .events;
    let summary: Vec<String> = events
        .iter()
        .rev()
        .map(|e| {
            let sub = e
                .event
                .resource
                .subresource
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            format!(
                "{} {}{} {} by {}",
                e.event.operation,
                e.event.resource.resource,
                sub,
                e.event.name,
                e.event.user.username
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "CREATE deployments nginx by admin",
            "UPDATE deployments/scale nginx by admin",
            "UPDATE deployments nginx by admin",
            // dry-run update: not recorded
            "DELETE deployments nginx by admin",
            "CREATE configmaps app-config by admin",
            "UPDATE configmaps app-config by admin",
            // dry-run create: not recorded
            "DELETE configmaps app-config by admin",
            // another webhook denied this one later; admission cannot know that
            "CREATE configmaps denied-cm by admin",
            "CREATE secrets db-pass by admin",
            "UPDATE secrets db-pass by admin",
            "DELETE secrets db-pass by admin",
            "CREATE widgets w1 by admin",
            "UPDATE widgets w1 by admin",
            // widgets/status: only status changed, which this policy does not track: empty diff
            "UPDATE widgets/scale w1 by admin",
            "DELETE widgets w1 by admin",
            "CREATE configmaps alice-cm by alice",
            "DELETE configmaps alice-cm by alice",
        ]
    );

    let find = |resource: &str, sub: Option<&str>, op: &str| {
        events
            .iter()
            .find(|e| {
                e.event.resource.resource == resource
                    && e.event.resource.subresource.as_deref() == sub
                    && e.event.operation.as_str() == op
            })
            .unwrap_or_else(|| panic!("no {op} {resource} {sub:?}"))
    };
    let scale = find("deployments", Some("scale"), "UPDATE");
    assert_eq!(scale.event.changes.len(), 1, "{:?}", scale.event.changes);
    assert_eq!(scale.event.changes[0].path, "/spec/replicas");
    assert_eq!(scale.event.changes[0].old, Some(Value::from(1)));
    assert_eq!(scale.event.changes[0].new, Some(Value::from(3)));
    // The scale change is part of the Deployment's history: its state after the change is a
    // Deployment with 3 replicas.
    let after = store
        .state_after(scale.id)
        .unwrap()
        .expect("state after scale");
    assert_eq!(after["kind"], "Deployment");
    assert_eq!(after["spec"]["replicas"], 3);

    let label = find("deployments", None, "UPDATE");
    let paths: Vec<&str> = label
        .event
        .changes
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(paths, ["/metadata/labels/tier"]);

    let alice = events
        .iter()
        .find(|e| e.event.user.username == "alice")
        .unwrap();
    assert_eq!(alice.event.user.groups, ["dev", "system:authenticated"]);

    let secret_update = find("secrets", None, "UPDATE");
    assert!(secret_update.event.redacted);
    running.shutdown().await.unwrap();
    support::assert_no_secret_value_under(&dir.path().join("data"));
}

#[tokio::test]
async fn bad_bodies_get_clear_answers_and_nothing_breaks() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    // The 4 MiB review takes its time in a debug build; this test is about answers, not speed.
    serve.capture.deadline_ms = 30_000;
    let running = start(serve).await.unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let url = format!("https://localhost:{}/admit/all", running.addr.port());
    let good = fixture("admissionreview-update-configmap.json");

    // Not an AdmissionReview at all: 400 with a message.
    for (what, body) in [
        ("truncated", good[..good.len() / 2].to_string()),
        ("not json", "hello".to_string()),
        ("empty object", "{}".to_string()),
        ("deeply nested", "[".repeat(100_000)),
        (
            "no request",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_string(),
        ),
    ] {
        let (status, text) = post(&client, &url, body).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert!(
            text.contains("AdmissionReview"),
            "{what}: message should say what was expected: {text}"
        );
    }
    // Over the body limit: refused before parsing.
    let (status, _) = post(
        &client,
        &url,
        vec![b' '; histor::capture::MAX_BODY_BYTES + 1],
    )
    .await;
    assert_eq!(status, 413);

    // Reviews it cannot interpret are still allowed, echoing the uid.
    let wrong_version = good.replace("admission.k8s.io/v1", "admission.k8s.io/v9");
    let (status, text) = post(&client, &url, wrong_version).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""allowed":true"#), "{text}");
    let mut missing_uid: Value = serde_json::from_str(&good).unwrap();
    missing_uid["request"]
        .as_object_mut()
        .unwrap()
        .remove("uid");
    let (status, text) = post(&client, &url, missing_uid.to_string()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""allowed":true"#), "{text}");

    // A huge but valid review (a 4 MiB annotation) and an unknown kind are recorded.
    let mut huge: Value = serde_json::from_str(&fresh_uid(&good, 1)).unwrap();
    huge["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"big": "x".repeat(4 << 20)});
    let (status, text) = post(&client, &url, huge.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let unknown = fresh_uid(&fixture("admissionreview-create-widget.json"), 2)
        .replace("\"example.com\"", "\"unknown.example.org\"")
        .replace("\"widgets\"", "\"gizmos\"");
    let (status, _) = post(&client, &url, unknown).await;
    assert_eq!(status, 200);

    // Still healthy, and still recording.
    let health = client
        .get(format!("https://localhost:{}/healthz", running.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, _) = post(&client, &url, fresh_uid(&good, 3)).await;
    assert_eq!(status, 200);
    let metrics = client
        .get(format!("https://localhost:{}/metrics", running.addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"histor_admission_reviews_total{outcome="uninterpretable"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"histor_admission_reviews_total{outcome="bad_request"} 6"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"histor_admission_reviews_total{outcome="recorded"} 3"#),
        "{metrics}"
    );
    let events = running
        .store
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 3);
    assert!(events.iter().any(|e| e.event.resource.resource == "gizmos"));
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn certificate_files_are_reloaded_without_a_restart() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let names = vec!["localhost".to_string()];
    let first = histor::capture::tls::write_self_signed(&tls, &names).unwrap();
    let first_ca = dir.path().join("first-ca.crt");
    std::fs::copy(first.ca.as_ref().unwrap(), &first_ca).unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.tls_cert = Some(first.cert.clone());
    serve.tls_key = Some(first.key.clone());
    let running = start(serve).await.unwrap();
    let url = format!("https://localhost:{}/healthz", running.addr.port());
    assert_eq!(
        client(&first_ca).get(&url).send().await.unwrap().status(),
        200
    );

    // Rotate: a new CA and certificate in the same files.
    let second = histor::capture::tls::write_self_signed(&tls, &names).unwrap();
    let second_ca = second.ca.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if client(&second_ca).get(&url).send().await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        client(&first_ca).get(&url).send().await.is_err(),
        "old CA must no longer be accepted"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn numbers_beyond_f64_are_allowed_and_recorded_digit_for_digit() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let running = start(args(dir.path(), write_policy(dir.path(), "all")))
        .await
        .unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let url = format!("https://localhost:{}/admit/all", running.addr.port());
    // The recorded Widget update, with a 5,000-digit integer and 1e999 written into its text.
    let mut review: Value =
        serde_json::from_str(&fixture("admissionreview-update-widget.json")).unwrap();
    review["request"]["object"]["spec"]["huge"] = "HUGE".into();
    review["request"]["object"]["spec"]["big"] = "BIG".into();
    let huge = "9".repeat(5000);
    let body = review
        .to_string()
        .replace("\"HUGE\"", &huge)
        .replace("\"BIG\"", "1e999");
    let (status, answer) = post(&client, &url, body).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
    let events = running
        .store
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .unwrap()
        .events;
    assert_eq!(events.len(), 1);
    let changes = &events[0].event.changes;
    let new = |path: &str| {
        changes
            .iter()
            .find(|c| c.path == path)
            .and_then(|c| c.new.clone())
            .unwrap_or_else(|| panic!("no {path} in {changes:?}"))
    };
    assert_eq!(new("/spec/huge"), Value::String(huge));
    assert_eq!(new("/spec/big"), "1e999");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_uids_and_names_are_allowed_not_stored_not_echoed_and_counted() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let running = start(args(dir.path(), write_policy(dir.path(), "all")))
        .await
        .unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let port = running.addr.port();
    let url = format!("https://localhost:{port}/admit/all");
    let good: Value =
        serde_json::from_str(&fixture("admissionreview-create-configmap.json")).unwrap();
    let megabyte = "x".repeat(1 << 20);

    let mut big_uid = good.clone();
    big_uid["request"]["uid"] = megabyte.clone().into();
    let mut big_name = good.clone();
    big_name["request"]["uid"] = "00000000-0000-4000-8000-000000000001".into();
    big_name["request"]["name"] = megabyte.clone().into();
    big_name["request"]["object"]["metadata"]["name"] = megabyte.clone().into();
    for (what, review, uid) in [
        ("1 MB uid", &big_uid, ""),
        (
            "1 MB name",
            &big_name,
            "00000000-0000-4000-8000-000000000001",
        ),
    ] {
        let (status, text) = post(&client, &url, review.to_string()).await;
        assert_eq!(status, 200, "{what}");
        assert!(text.len() < 200, "{what}: a {} byte answer", text.len());
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{what}");
        assert_eq!(answer["response"]["uid"], uid, "{what}");
    }
    let metrics = client
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"histor_admission_reviews_total{outcome="oversized"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("xxxxxxxx"));
    let stored = running
        .store
        .query(&Query {
            limit: 10,
            ..Query::default()
        })
        .unwrap()
        .events;
    assert!(stored.is_empty(), "{stored:?}");
    // A review within bounds still goes through.
    let (status, _) = post(&client, &url, good.to_string()).await;
    assert_eq!(status, 200);
    let stored = running.store.query(&Query::default()).unwrap().events;
    assert_eq!(stored.len(), 1);
    running.shutdown().await.unwrap();
}
