//! Process-level tests of `histor serve`: a kill -9 loses no event whose review was answered, and
//! a store held by a running server gives `histor history` a clear message.

mod support;

use histor::store::{EventStore, Query};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{client, fixture, fresh_change, write_policy};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_histor"))
        .args(["serve", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--policy-file")
        .arg(write_policy(dir, "all"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(dir: &std::path::Path, port: u16) -> reqwest::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ca = dir.join("data/tls/ca.crt");
    loop {
        if ca.exists() {
            let c = client(&ca);
            if let Ok(r) = c
                .get(format!("https://localhost:{port}/readyz"))
                .send()
                .await
                && r.status() == 200
            {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "histor serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kill_9_loses_no_answered_event() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve(dir.path(), port);
    let client = wait_ready(dir.path(), port).await;
    let url = format!("https://localhost:{port}/admit/all");
    let body = fixture("admissionreview-update-deployment.json");

    // Keep 8 writers busy, then kill the server in the middle of the stream.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (client, url, body, answered) =
            (client.clone(), url.clone(), body.clone(), answered.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let n = worker << 32 | i;
                let review = fresh_change(&body, n);
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(review)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => answered.lock().unwrap().push(n),
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() > 50,
        "too few reviews answered before the kill: {}",
        answered.len()
    );

    // Reopen the store as the next start would, and read every event page by page.
    let store = histor::store::SledStore::open(dir.path().join("data/store")).unwrap();
    let mut stored = std::collections::HashSet::new();
    let mut query = Query {
        limit: 1000,
        ..Query::default()
    };
    loop {
        let page = store.query(&query).unwrap();
        stored.extend(page.events.into_iter().map(|e| e.event.request_uid));
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    let lost: Vec<&u64> = answered
        .iter()
        .filter(|n| !stored.contains(&format!("00000000-0000-4000-8000-{n:012x}")))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered reviews lost after kill -9",
        lost.len(),
        answered.len()
    );
}

#[tokio::test]
async fn history_says_clearly_when_a_server_holds_the_store() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve(dir.path(), port);
    wait_ready(dir.path(), port).await;
    let output = Command::new(env!("CARGO_BIN_EXE_histor"))
        .args(["history", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another histor process"),
        "{stderr}"
    );
}
