//! Component tests of the capture path: a real HTTPS server (rustls), the real pipeline, a real
//! sled store on disk, fed AdmissionReviews recorded from a real kube-apiserver.

mod support;

use histor::cmd::{CaptureArgs, ServeArgs, start};
use histor::store::Query;
use serde_json::Value;
use std::path::Path;
use support::{client, fixture, fixture_order, fresh_change, write_policy};

fn args(dir: &Path, policy: std::path::PathBuf) -> ServeArgs {
    ServeArgs {
        policy_files: vec![policy],
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
    let mut huge: Value = serde_json::from_str(&fresh_change(&good, 1)).unwrap();
    huge["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"big": "x".repeat(4 << 20)});
    let (status, text) = post(&client, &url, huge.to_string()).await;
    assert_eq!(status, 200, "{text}");
    let unknown = fresh_change(&fixture("admissionreview-create-widget.json"), 2)
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
    let (status, _) = post(&client, &url, fresh_change(&good, 3)).await;
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

/// A raw TLS connection to the server from `local` (any 127.0.0.0/8 address on Linux), offering
/// `alpn`; `Err` when the server closes it before the handshake completes.
async fn tls_connect(
    ca: &Path,
    port: u16,
    local: [u8; 4],
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((std::net::Ipv4Addr::from(local), 0).into())?;
    let tcp = socket.connect(([127, 0, 0, 1], port).into()).await?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Reads until the server closes the connection; returns what it sent and how long that took.
async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> (Vec<u8>, std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("the server kept the connection open");
    (seen, started.elapsed())
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

async fn metrics_text(running: &histor::cmd::Running) -> String {
    client(running.ca_file.as_ref().unwrap())
        .get(format!("https://localhost:{}/metrics", running.addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    // The header timeout is far longer, so a close at ~300 ms is the idle timeout's doing.
    serve.capture.header_timeout_ms = 10_000;
    serve.capture.idle_timeout_ms = 300;
    let running = start(serve).await.unwrap();
    let ca = running.ca_file.clone().unwrap();

    let mut h1 = tls_connect(&ca, running.addr.port(), [127, 0, 0, 1], b"http/1.1")
        .await
        .unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, after) = read_until_closed(&mut h1).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        after >= ms(250) && after < ms(5_000),
        "kept-alive connection closed after {after:?}"
    );
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains(r#"histor_connections_closed_total{reason="idle_timeout"} 1"#),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_header_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.capture.header_timeout_ms = 300;
    serve.capture.idle_timeout_ms = 10_000;
    let running = start(serve).await.unwrap();
    let ca = running.ca_file.clone().unwrap();
    let port = running.addr.port();

    // HTTP/1.1, the header dribbled a byte every 50 ms: hyper's header timeout.
    let h1 = tls_connect(&ca, port, [127, 0, 0, 1], b"http/1.1")
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(h1);
    let dribble = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(ms(50)).await;
        }
    });
    let (answer, after) = read_until_closed(&mut reader).await;
    assert!(
        after >= ms(250) && after < ms(5_000),
        "dribbled header closed after {after:?}"
    );
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    dribble.await.unwrap();

    // HTTP/2 preface and settings, then nothing: no request ever comes (hyper alone waits).
    let mut h2 = tls_connect(&ca, port, [127, 0, 0, 1], b"h2").await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (_, after) = read_until_closed(&mut h2).await;
    assert!(
        after >= ms(250) && after < ms(5_000),
        "HTTP/2 connection without a request closed after {after:?}"
    );
    // Not even the first bytes: closed as well.
    let mut silent = tls_connect(&ca, port, [127, 0, 0, 1], b"h2").await.unwrap();
    let (_, after) = read_until_closed(&mut silent).await;
    assert!(
        after < ms(5_000),
        "silent connection closed after {after:?}"
    );
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains(r#"histor_connections_closed_total{reason="first_request_timeout"}"#),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_slow_body_gets_408_and_the_connection_closes() {
    use tokio::io::AsyncWriteExt;
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.capture.body_timeout_ms = 300;
    serve.capture.idle_timeout_ms = 10_000;
    let running = start(serve).await.unwrap();
    let ca = running.ca_file.clone().unwrap();
    let body = fixture("admissionreview-update-configmap.json");

    let stream = tls_connect(&ca, running.addr.port(), [127, 0, 0, 1], b"http/1.1")
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /admit/all HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // The whole body would arrive after ~60 s at this pace; every chunk within the timeout.
    let dribble = tokio::spawn(async move {
        for chunk in body.as_bytes().chunks(16) {
            if writer.write_all(chunk).await.is_err() {
                break;
            }
            tokio::time::sleep(ms(100)).await;
        }
    });
    let (answer, after) = read_until_closed(&mut reader).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        after >= ms(250) && after < ms(5_000),
        "slow body answered and closed after {after:?}"
    );
    dribble.abort();
    let metrics = metrics_text(&running).await;
    assert!(
        metrics.contains(r#"histor_admission_reviews_total{outcome="body_timeout"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        running.store.query(&Query::default()).unwrap().events.len(),
        0
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn hostile_idle_connections_from_one_source_leave_room_for_the_apiserver() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.capture.max_connections = 16;
    serve.capture.max_connections_per_source = 4;
    let running = start(serve).await.unwrap();
    let ca = running.ca_file.clone().unwrap();
    let port = running.addr.port();

    // A hostile local process opens idle connections until it is refused.
    let mut hostile = Vec::new();
    let refused = loop {
        match tls_connect(&ca, port, [127, 0, 0, 1], b"http/1.1").await {
            Ok(stream) => hostile.push(stream),
            Err(error) => break error,
        }
        assert!(hostile.len() <= 16, "never refused");
    };
    assert_eq!(hostile.len(), 4, "refused with: {refused}");

    // The apiserver, from its own address, still gets its review answered and recorded.
    let apiserver = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap()])
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/admit/all");
    let (status, answer) = post(
        &apiserver,
        &url,
        fixture("admissionreview-update-configmap.json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        running.store.query(&Query::default()).unwrap().events.len(),
        1
    );
    let metrics = apiserver
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"histor_connections_refused_total{reason="per_source"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("histor_connections_open 5"), "{metrics}");
    drop(hostile);
    running.shutdown().await.unwrap();
}

/// A CA and a client certificate it signed for `cn`: PEM of the CA, of the client chain with its
/// key (for `reqwest::Identity`).
struct ClientPki {
    ca_pem: String,
    identity_pem: String,
}

fn client_pki(cn: &str) -> (ClientPki, rcgen::CertifiedIssuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "webhook-client-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let pki = client_signed_by(&ca, cn);
    (pki, ca)
}

fn client_signed_by(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, cn: &str) -> ClientPki {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    ClientPki {
        ca_pem: ca.pem(),
        identity_pem: format!("{}{}", cert.pem(), key.serialize_pem()),
    }
}

fn client_with(ca: &Path, identity: Option<&ClientPki>) -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut builder = reqwest::Client::builder().tls_certs_only([cert]);
    if let Some(pki) = identity {
        builder =
            builder.identity(reqwest::Identity::from_pem(pki.identity_pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn only_the_apiserver_may_write_history() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let (apiserver, ca) = client_pki("kube-apiserver");
    let mallory = client_signed_by(&ca, "mallory");
    let (impostor, _) = client_pki("kube-apiserver");
    let ca_file = dir.path().join("webhook-client-ca.crt");
    std::fs::write(&ca_file, &apiserver.ca_pem).unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.capture.webhook_client_ca = Some(ca_file);
    serve.capture.webhook_client_names = vec!["kube-apiserver".into()];
    let running = start(serve).await.unwrap();
    let server_ca = running.ca_file.clone().unwrap();
    let url = format!("https://localhost:{}/admit/all", running.addr.port());
    let review = fixture("admissionreview-update-configmap.json");
    let stored = || running.store.query(&Query::default()).unwrap().events.len();

    // Anyone who can reach the port, without a certificate: refused, nothing stored.
    let (status, text) = post(&client_with(&server_ca, None), &url, review.clone()).await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(stored(), 0);
    // A certificate from another CA does not get through the handshake.
    let result = client_with(&server_ca, Some(&impostor))
        .post(&url)
        .body(review.clone())
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    // The right CA, but not a name allowed to post reviews.
    let (status, text) = post(
        &client_with(&server_ca, Some(&mallory)),
        &url,
        review.clone(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(stored(), 0);

    // The apiserver: recorded.
    let trusted = client_with(&server_ca, Some(&apiserver));
    let (status, text) = post(&trusted, &url, review.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""allowed":true"#), "{text}");
    assert_eq!(stored(), 1);
    // A review for a policy histor does not have: allowed, counted, not stored.
    let unknown = format!(
        "https://localhost:{}/admit/no-such-policy",
        running.addr.port()
    );
    let (status, _) = post(&trusted, &unknown, fresh_change(&review, 7)).await;
    assert_eq!(status, 200);
    assert_eq!(stored(), 1);

    let metrics = metrics_text(&running).await;
    for line in [
        r#"histor_admission_reviews_total{outcome="unauthenticated"} 1"#,
        r#"histor_admission_reviews_total{outcome="forbidden"} 1"#,
        r#"histor_admission_reviews_total{outcome="recorded"} 1"#,
        r#"histor_admission_reviews_total{outcome="unknown_policy"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn reserved_slots_let_the_apiserver_in_when_its_own_address_is_full() {
    use tokio::io::AsyncReadExt;
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let (apiserver, _ca) = client_pki("kube-apiserver");
    let ca_file = dir.path().join("webhook-client-ca.crt");
    std::fs::write(&ca_file, &apiserver.ca_pem).unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.capture.webhook_client_ca = Some(ca_file);
    serve.capture.max_connections = 4;
    serve.capture.max_connections_per_source = 8;
    serve.capture.reserved_connections = 2;
    let running = start(serve).await.unwrap();
    let server_ca = running.ca_file.clone().unwrap();
    let port = running.addr.port();

    // A hostile process on the apiserver's own address takes every slot it can keep.
    let mut hostile = Vec::new();
    for _ in 0..6 {
        let Ok(mut stream) = tls_connect(&server_ca, port, [127, 0, 0, 1], b"http/1.1").await
        else {
            continue;
        };
        let mut byte = [0u8; 1];
        // Closed at once (a reserved slot without the certificate), or held.
        match tokio::time::timeout(ms(300), stream.read(&mut byte)).await {
            Ok(_) => {}
            Err(_) => hostile.push(stream),
        }
    }
    assert_eq!(hostile.len(), 2, "only the shared slots are kept");

    let (status, text) = post(
        &client_with(&server_ca, Some(&apiserver)),
        &format!("https://localhost:{port}/admit/all"),
        fixture("admissionreview-update-configmap.json"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        running.store.query(&Query::default()).unwrap().events.len(),
        1
    );
    drop(hostile);
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

/// The audit webhook backend over real HTTPS: a recorded EventList item, replayed at the time
/// its review is posted, is taken once (a resent batch adds nothing), confirms the change it
/// names and adds who really sent it; what is not an EventList is refused.
#[tokio::test]
async fn the_audit_webhook_takes_batches_once_and_confirms_the_change_they_name() {
    support::init();
    let dir = tempfile::tempdir().unwrap();
    let mut serve = args(dir.path(), write_policy(dir.path(), "all"));
    serve.audit.audit_webhook = true;
    let running = start(serve).await.unwrap();
    let client = client(running.ca_file.as_ref().unwrap());
    let base = format!("https://localhost:{}", running.addr.port());
    let review = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v1.33/admission/019-create-configmaps-bob-config-impersonated-bob-create.json"
    ))
    .unwrap();
    let before = jiff::Timestamp::now();
    let (status, answer) = post(&client, &format!("{base}/admit/all"), review).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["response"]["auditAnnotations"]["request-uid"],
        "93b26d80-4a0f-40b9-aa4a-9265c4d8a118",
        "the answer names the review for the audit event"
    );
    let after = jiff::Timestamp::now();
    // A review histor does not record (a dry run) names nothing for the audit log.
    let dry = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v1.33/admission/028-create-configmaps-dry-run-cm-server-dry-run.json"
    ))
    .unwrap();
    let (status, dry) = post(&client, &format!("{base}/admit/all"), dry).await;
    assert_eq!(status, 200);
    let dry: Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["response"]["allowed"], true);
    assert!(dry["response"].get("auditAnnotations").is_none(), "{dry}");
    // The apiserver's audit event of that request, as its webhook backend sends it: in an
    // EventList, without kind and apiVersion, at the time the request was made.
    let log = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/audit/v1.33/audit.log"
    ))
    .unwrap();
    let mut event: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| {
            e["auditID"] == "9df6c8dc-228b-46b9-8559-60a2bf7d59a0"
                && e["stage"] == "ResponseComplete"
        })
        .unwrap();
    let obj = event.as_object_mut().unwrap();
    obj.remove("kind");
    obj.remove("apiVersion");
    obj.insert("requestReceivedTimestamp".into(), before.to_string().into());
    obj.insert("stageTimestamp".into(), after.to_string().into());
    let list = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
        "metadata": {}, "items": [event, {"auditID": "cut"}]});
    let audit = format!("{base}/audit?timeout=30s");
    for _ in 0..2 {
        let (status, text) = post(&client, &audit, list.to_string()).await;
        assert_eq!(status, 200, "{text}");
    }
    let (status, _) = post(&client, &audit, r#"{"kind":"Status"}"#).await;
    assert_eq!(status, 400);
    let store = running.store.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let event = loop {
        let page = store.query(&Query::default()).unwrap();
        let e = page
            .events
            .into_iter()
            .next()
            .expect("the change is stored");
        if e.event.state != histor::pipeline::ChangeState::Received
            || std::time::Instant::now() > deadline
        {
            break e.event;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(event.state, histor::pipeline::ChangeState::Confirmed);
    assert_eq!(event.user.username, "bob");
    let account = event.audit.expect("the audit account");
    assert_eq!(account.impersonated_by.as_deref(), Some("admin"));
    assert_eq!(account.audit_id, "9df6c8dc-228b-46b9-8559-60a2bf7d59a0");
    let metrics = metrics_text(&running).await;
    for line in [
        r#"histor_audit_events_total{outcome="new"} 1"#,
        r#"histor_audit_events_total{outcome="duplicate"} 1"#,
        r#"histor_audit_events_total{outcome="invalid"} 2"#,
        r#"histor_audit_batches_total{outcome="stored"} 2"#,
        r#"histor_audit_batches_total{outcome="bad_request"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
