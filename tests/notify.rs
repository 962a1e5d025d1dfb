//! Component tests of notifications against real peers on loopback: an axum HTTP receiver for
//! Slack and webhooks, and aiosmtpd for email (plain, STARTTLS and implicit TLS, with a private CA).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use histor::crd::{EmailSink, NotifySink, SecretKeyRef, SecretRef, SlackSink, WebhookSink};
use histor::notify::webhook::verify_signature;
use histor::notify::{Notifier, NotifyConfig, NotifyMetrics, StaticSecrets};
use histor::pipeline::ChangeEvent;
use histor::store::{OutboxStore, SledStore, StoredEvent};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod fixtures {
    #![allow(dead_code)]
    use histor::crd::Operation;
    use histor::pipeline::{Actor, ChangeEvent, ChangeOp, FieldChange, KindId, ResourceId};
    include!("notify_support/fixtures.rs");
}

const SIGNING_KEY: &str = "webhook-signing-key";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn fast_config() -> NotifyConfig {
    NotifyConfig {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_retry_duration: Duration::from_secs(60),
        request_timeout: Duration::from_secs(5),
        poll_interval: Duration::from_millis(10),
        ..Default::default()
    }
}

// ---------------------------------------------------------------- HTTP receiver

#[derive(Clone, Debug)]
struct Received {
    path: String,
    delivery: String,
    signature: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests still to answer with 503.
    fail_next: usize,
    /// Every request, failed or not.
    attempts: usize,
    /// Requests answered 200, in order.
    accepted: Vec<Received>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        async fn handle(
            State(state): State<Arc<Mutex<ReceiverState>>>,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, HeaderMap, &'static str) {
            let mut s = state.lock().unwrap();
            s.attempts += 1;
            if uri.path() == "/reject" {
                return (StatusCode::BAD_REQUEST, HeaderMap::new(), "no");
            }
            if s.fail_next > 0 {
                s.fail_next -= 1;
                let mut h = HeaderMap::new();
                h.insert("retry-after", "0".parse().unwrap());
                return (StatusCode::SERVICE_UNAVAILABLE, h, "down");
            }
            let header = |n: &str| {
                headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            s.accepted.push(Received {
                path: uri.path().to_string(),
                delivery: header("x-histor-delivery").unwrap_or_default(),
                signature: header("x-histor-signature"),
                body: body.to_vec(),
            });
            (StatusCode::OK, HeaderMap::new(), "ok")
        }
        let app = axum::Router::new()
            .route("/{*path}", post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, state }
    }

    fn accepted(&self, path: &str) -> Vec<Received> {
        let s = self.state.lock().unwrap();
        s.accepted
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        for _ in 0..1000 {
            let got = self.accepted(path);
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "receiver got {} of {n} messages on {path}",
            self.accepted(path).len()
        );
    }
}

fn key_ref(name: &str, key: &str) -> SecretKeyRef {
    SecretKeyRef {
        namespace: "histor-system".into(),
        name: name.into(),
        key: key.into(),
    }
}

fn http_secrets(rx: &Receiver) -> Arc<StaticSecrets> {
    let s = StaticSecrets::default();
    s.set(
        "histor-system",
        "slack",
        &[("url", format!("{}/slack", rx.url).as_bytes())],
    );
    s.set(
        "histor-system",
        "hook",
        &[
            ("url", format!("{}/hook", rx.url).as_bytes()),
            ("key", SIGNING_KEY.as_bytes()),
        ],
    );
    Arc::new(s)
}

fn slack_sink(digest: Option<&str>) -> NotifySink {
    NotifySink {
        name: "team-slack".into(),
        slack: Some(SlackSink {
            webhook_secret_ref: key_ref("slack", "url"),
        }),
        digest: digest.map(str::to_string),
        ..Default::default()
    }
}

fn webhook_sink(digest: Option<&str>) -> NotifySink {
    NotifySink {
        name: "siem".into(),
        webhook: Some(WebhookSink {
            url_secret_ref: key_ref("hook", "url"),
            signing_secret_ref: Some(key_ref("hook", "key")),
        }),
        digest: digest.map(str::to_string),
        ..Default::default()
    }
}

fn deployment_event(user: &str, name: &str, replicas: (i64, i64)) -> ChangeEvent {
    let mut e = fixtures::event_from_review(&fixtures::review("update-deployment"), "prod");
    e.user.username = user.into();
    e.name = name.into();
    e.changes = vec![histor::pipeline::FieldChange {
        op: histor::pipeline::ChangeOp::Replace,
        path: "/spec/replicas".into(),
        old: Some(replicas.0.into()),
        new: Some(replicas.1.into()),
    }];
    e
}

/// Runs the notifier in the background; the returned closure stops it and waits.
fn spawn_run(
    n: &Notifier,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let n = n.clone();
    let h = tokio::spawn(async move {
        n.run(async {
            let _ = rx.await;
        })
        .await
    });
    (tx, h)
}

/// Opens the store of a notifier's previous life. sled releases its file lock when the last
/// handle drops, and the handle a flush lent to sled's I/O pool drops a moment after the flush
/// returns: a restart in the same process waits for it, as a new process would not need to.
async fn open_store(path: &Path) -> SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(path) {
            Ok(store) => return store,
            Err(histor::Error::StoreLocked(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
}

/// The outbox of a fresh store in a temporary directory (kept alive by the returned guard).
fn temp_outbox() -> (tempfile::TempDir, Arc<dyn OutboxStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    (dir, store.outbox())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

// ---------------------------------------------------------------- HTTP tests

#[tokio::test]
async fn slack_and_webhook_posts_arrive_signed() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        http_secrets(&rx),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy("prod", &[slack_sink(None), webhook_sink(None)])
        .unwrap();
    let (stop, handle) = spawn_run(&n);
    n.on_recorded(&[StoredEvent {
        id: 1,
        event: deployment_event("alice", "nginx", (1, 3)),
    }])
    .await
    .unwrap();

    let slack = rx.wait_for("/slack", 1).await;
    let v = json(&slack[0].body);
    assert_eq!(v["blocks"][0]["type"], "header");
    assert_eq!(
        v["blocks"][0]["text"]["text"],
        "alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3"
    );

    let hook = rx.wait_for("/hook", 1).await;
    let sig = hook[0].signature.as_deref().expect("signature header");
    assert!(verify_signature(SIGNING_KEY.as_bytes(), &hook[0].body, sig));
    assert!(!verify_signature(b"wrong", &hook[0].body, sig));
    let v = json(&hook[0].body);
    assert_eq!(v["deliveryId"], hook[0].delivery.as_str());
    assert_eq!(v["count"], 1);
    assert_eq!(v["events"][0]["id"], 1);
    assert_eq!(v["events"][0]["changes"][0]["new"], 3);

    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(n.pending().await, 0);
    let health = n.health();
    assert!(
        health.iter().all(|h| h.ready && h.reason == "Delivered"),
        "{health:?}"
    );
}

/// The webhook sink notifies on receipt, the Slack one on confirmation (the default): the
/// received change reaches the webhook at once, marked as not yet confirmed, and Slack once the
/// witness confirmed it; each gets it once. A change not applied reaches neither.
#[tokio::test]
async fn each_sink_hears_of_a_change_when_its_notify_on_says() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        http_secrets(&rx),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    let on_receipt = NotifySink {
        notify_on: Some(histor::crd::NotifyOn::Received),
        ..webhook_sink(None)
    };
    n.set_policy("prod", &[slack_sink(None), on_receipt])
        .unwrap();
    let (stop, handle) = spawn_run(&n);
    let in_state = |id, state| {
        let mut event = deployment_event("alice", "nginx", (1, 3));
        event.state = state;
        StoredEvent { id, event }
    };
    use histor::pipeline::ChangeState::{Confirmed, NotApplied, Received};
    n.on_recorded(&[in_state(1, Received), in_state(2, NotApplied)])
        .await
        .unwrap();
    let hook = rx.wait_for("/hook", 1).await;
    let v = json(&hook[0].body);
    assert_eq!(v["events"][0]["state"], "received");
    assert_eq!(
        v["summary"],
        "alice updated deployments.apps demo/nginx (not yet confirmed): spec.replicas: 1 → 3"
    );
    // Nothing else was queued: Slack waits for the witness.
    assert_eq!(n.pending().await, 0);
    assert!(rx.accepted("/slack").is_empty());

    n.on_resolved(&[in_state(1, Confirmed), in_state(2, NotApplied)])
        .await
        .unwrap();
    let slack = rx.wait_for("/slack", 1).await;
    assert_eq!(
        json(&slack[0].body)["text"],
        "alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3"
    );
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(n.pending().await, 0);
    assert_eq!(
        (rx.accepted("/hook").len(), rx.accepted("/slack").len()),
        (1, 1)
    );
}

#[tokio::test]
async fn receiver_down_then_up_gets_everything_once_across_a_restart() {
    init();
    let rx = Receiver::start().await;
    rx.state.lock().unwrap().fail_next = 15;
    let dir = tempfile::tempdir().unwrap();
    let secrets = http_secrets(&rx);
    let events: Vec<StoredEvent> = (1..=10)
        .map(|i| StoredEvent {
            id: i,
            event: deployment_event("alice", &format!("app-{i}"), (1, i as i64)),
        })
        .collect();

    // First life: queue everything, let a few attempts fail, stop in the middle.
    {
        let store = open_store(dir.path()).await;
        let n = Notifier::new(
            store.outbox(),
            secrets.clone(),
            fast_config(),
            NotifyMetrics::default(),
        )
        .unwrap();
        n.set_policy("prod", &[webhook_sink(None)]).unwrap();
        n.on_recorded(&events).await.unwrap();
        let (stop, handle) = spawn_run(&n);
        for _ in 0..500 {
            if rx.state.lock().unwrap().attempts >= 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(()).unwrap();
        handle.await.unwrap();
        assert!(
            n.pending().await > 0,
            "the restart must happen with work left"
        );
    }

    // Second life: same database, new notifier.
    let store = open_store(dir.path()).await;
    let metrics = NotifyMetrics::default();
    let n = Notifier::new(store.outbox(), secrets, fast_config(), metrics.clone()).unwrap();
    n.set_policy("prod", &[webhook_sink(None)]).unwrap();
    let (stop, handle) = spawn_run(&n);
    rx.wait_for("/hook", 10).await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();

    let got = rx.accepted("/hook");
    let mut per_delivery: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_delivery.entry(r.delivery.clone()).or_default() += 1;
        assert!(verify_signature(
            SIGNING_KEY.as_bytes(),
            &r.body,
            r.signature.as_deref().unwrap()
        ));
    }
    assert_eq!(per_delivery.len(), 10, "{per_delivery:?}");
    assert!(per_delivery.values().all(|&c| c == 1), "{per_delivery:?}");
    let mut ids: Vec<u64> = got
        .iter()
        .map(|r| json(&r.body)["events"][0]["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    assert!(rx.state.lock().unwrap().attempts >= 25);
    assert_eq!(n.pending().await, 0);

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("histor_notify_deliveries_total{sink=\"webhook\",outcome=\"delivered\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn in_flight_at_a_crash_is_sent_again_with_the_same_delivery_id() {
    init();
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = http_secrets(&rx);
    let delivery_id;
    {
        let store = open_store(dir.path()).await;
        let n = Notifier::new(
            store.outbox(),
            secrets.clone(),
            fast_config(),
            NotifyMetrics::default(),
        )
        .unwrap();
        n.set_policy("prod", &[webhook_sink(None)]).unwrap();
        n.on_recorded(&[StoredEvent {
            id: 7,
            event: deployment_event("bob", "api", (3, 0)),
        }])
        .await
        .unwrap();
        // What a crash right after "mark in flight" leaves behind.
        let outbox = histor::notify::outbox::Outbox::new(store.outbox());
        let (key, mut entry) = outbox.entries().await.unwrap().remove(0);
        entry.state = histor::notify::outbox::EntryState::InFlight;
        entry.attempts = 1;
        outbox.update(key, &entry).await.unwrap();
        delivery_id = entry.delivery_id;
    }
    let store = open_store(dir.path()).await;
    let n = Notifier::new(
        store.outbox(),
        secrets,
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy("prod", &[webhook_sink(None)]).unwrap();
    let (stop, handle) = spawn_run(&n);
    let got = rx.wait_for("/hook", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(rx.accepted("/hook").len(), 1);
    assert_eq!(got[0].delivery, delivery_id);
}

#[tokio::test]
async fn burst_of_200_in_one_digest_window_is_one_message_per_sink() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        http_secrets(&rx),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy(
        "prod",
        &[slack_sink(Some("500ms")), webhook_sink(Some("500ms"))],
    )
    .unwrap();
    let (stop, handle) = spawn_run(&n);
    let events: Vec<StoredEvent> = (1..=200)
        .map(|i| StoredEvent {
            id: i,
            event: deployment_event(
                if i % 2 == 0 { "alice" } else { "bob" },
                &format!("app-{i}"),
                (1, 2),
            ),
        })
        .collect();
    for chunk in events.chunks(20) {
        n.on_recorded(chunk).await.unwrap();
    }
    let slack = rx.wait_for("/slack", 1).await;
    let hook = rx.wait_for("/hook", 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(rx.accepted("/slack").len(), 1);
    assert_eq!(rx.accepted("/hook").len(), 1);
    let s = json(&slack[0].body);
    assert_eq!(
        s["blocks"][0]["text"]["text"],
        "200 changes by alice, bob in demo"
    );
    assert!(s.to_string().contains("…and 195 more"));
    let h = json(&hook[0].body);
    assert_eq!(h["count"], 200);
    assert_eq!(h["events"].as_array().unwrap().len(), 200);
    assert_eq!(n.buffered().await, 0);
}

fn metrics_text(metrics: &NotifyMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

#[tokio::test]
async fn a_rate_limited_backlog_keeps_only_the_newest_per_sink() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let metrics = NotifyMetrics::default();
    let config = NotifyConfig {
        max_pending_per_sink: 3,
        ..fast_config()
    };
    let n = Notifier::new(outbox, http_secrets(&rx), config, metrics.clone()).unwrap();
    let sink = NotifySink {
        rate_limit_per_minute: Some(1),
        ..webhook_sink(None)
    };
    n.set_policy("prod", &[sink]).unwrap();
    let events: Vec<StoredEvent> = (1..=10)
        .map(|i| StoredEvent {
            id: i,
            event: deployment_event("alice", &format!("app-{i}"), (1, 2)),
        })
        .collect();
    // Ten queued before the loop starts: the first sweep keeps the newest three, the one token
    // of the minute sends the oldest of those, and the other two wait for the rate limit.
    n.on_recorded(&events).await.unwrap();
    assert_eq!(n.pending().await, 10);
    let (stop, handle) = spawn_run(&n);
    let got = rx.wait_for("/hook", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(rx.accepted("/hook").len(), 1);
    assert_eq!(json(&got[0].body)["events"][0]["id"], 8);
    assert_eq!(n.pending().await, 2);
    let text = metrics_text(&metrics);
    assert!(
        text.contains("histor_notify_dropped_total{sink=\"webhook\",reason=\"overflow\"} 7"),
        "{text}"
    );
}

#[tokio::test]
async fn a_full_digest_window_is_sent_before_its_time() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let config = NotifyConfig {
        max_digest_events: 3,
        ..fast_config()
    };
    let n = Notifier::new(outbox, http_secrets(&rx), config, NotifyMetrics::default()).unwrap();
    n.set_policy("prod", &[webhook_sink(Some("1h"))]).unwrap();
    let (stop, handle) = spawn_run(&n);
    let event = |i: u64| StoredEvent {
        id: i,
        event: deployment_event("alice", &format!("app-{i}"), (1, 2)),
    };
    n.on_recorded(&[event(1), event(2)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rx.accepted("/hook").is_empty(),
        "two of three: the window stays open"
    );
    assert_eq!(n.buffered().await, 2);
    n.on_recorded(&[event(3)]).await.unwrap();
    let got = rx.wait_for("/hook", 1).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(json(&got[0].body)["count"], 3);
    assert_eq!(n.buffered().await, 0);
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_shows_in_health() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let secrets = StaticSecrets::default();
    secrets.set(
        "histor-system",
        "hook",
        &[("url", format!("{}/reject", rx.url).as_bytes())],
    );
    let n = Notifier::new(
        outbox,
        Arc::new(secrets),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    let mut sink = webhook_sink(None);
    sink.webhook.as_mut().unwrap().signing_secret_ref = None;
    n.set_policy("prod", &[sink]).unwrap();
    let (stop, handle) = spawn_run(&n);
    n.on_recorded(&[StoredEvent {
        id: 1,
        event: deployment_event("alice", "nginx", (1, 3)),
    }])
    .await
    .unwrap();
    for _ in 0..500 {
        if n.health()[0].reason == "DeliveryFailed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap();
    let h = &n.health()[0];
    assert!(!h.ready && h.reason == "DeliveryFailed", "{h:?}");
    assert!(h.message.contains("HTTP 400"), "{h:?}");
    assert_eq!(rx.state.lock().unwrap().attempts, 1);
    assert_eq!(n.pending().await, 0);
}

#[tokio::test]
async fn no_secret_value_reaches_any_receiver() {
    init();
    let rx = Receiver::start().await;
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        http_secrets(&rx),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy("prod", &[slack_sink(None), webhook_sink(None)])
        .unwrap();
    let (stop, handle) = spawn_run(&n);
    let events: Vec<StoredEvent> = fixtures::secret_events("prod")
        .into_iter()
        .enumerate()
        .map(|(i, event)| StoredEvent {
            id: i as u64 + 1,
            event,
        })
        .collect();
    n.on_recorded(&events).await.unwrap();
    let slack = rx.wait_for("/slack", events.len()).await;
    let hook = rx.wait_for("/hook", events.len()).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    for r in slack.iter().chain(&hook) {
        fixtures::assert_no_secret_values(std::str::from_utf8(&r.body).unwrap());
    }
    assert!(
        slack
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("data.password changed"))
    );
}

// ---------------------------------------------------------------- SMTP

#[path = "support/smtp.rs"]
mod smtp;
use smtp::Smtp;

/// A private CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key) PEMs.
fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "histor test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The mails in a Maildir, parsed by Python's email package: subject, Message-ID, text, html.
fn read_maildir(dir: &Path) -> Vec<Value> {
    let new = dir.join("Maildir").join("new");
    let Ok(entries) = std::fs::read_dir(&new) else {
        return Vec::new();
    };
    let script = "import email, email.policy, json, sys\n\
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)\n\
print(json.dumps({'subject': str(m['subject']), 'messageId': str(m['message-id']), 'to': str(m['to']),\n\
 'text': m.get_body(('plain',)).get_content(), 'html': m.get_body(('html',)).get_content()}))";
    entries
        .map(|e| {
            let out = Command::new("python3")
                .args(["-c", script])
                .arg(e.unwrap().path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect()
}

async fn wait_for_mail(dir: &Path, n: usize) -> Vec<Value> {
    for _ in 0..1000 {
        let mails = read_maildir(dir);
        if mails.len() >= n {
            return mails;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} mails in {}", dir.display());
}

fn email_sink() -> NotifySink {
    NotifySink {
        name: "oncall".into(),
        email: Some(EmailSink {
            smtp_secret_ref: SecretRef {
                namespace: "histor-system".into(),
                name: "smtp".into(),
            },
            from: "histor@example.com".into(),
            to: vec!["oncall@example.com".into()],
        }),
        ..Default::default()
    }
}

async fn send_mail_and_check(smtp: &Smtp, secret: &[(&str, &[u8])]) {
    let secrets = StaticSecrets::default();
    secrets.set("histor-system", "smtp", secret);
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        Arc::new(secrets),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy("prod", &[email_sink()]).unwrap();
    let (stop, handle) = spawn_run(&n);
    let mut e = deployment_event("alice", "nginx", (1, 3));
    e.changes.push(histor::pipeline::FieldChange {
        op: histor::pipeline::ChangeOp::Add,
        path: "/metadata/labels/team".into(),
        old: None,
        new: Some("<web & api>".into()),
    });
    n.on_recorded(&[StoredEvent { id: 1, event: e }])
        .await
        .unwrap();
    let mails = wait_for_mail(smtp.maildir.path(), 1).await;
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(
        m["subject"],
        "[histor] alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3 (+1 more field)"
    );
    assert_eq!(m["to"], "oncall@example.com");
    assert!(m["messageId"].as_str().unwrap().ends_with("@histor.dev>"));
    let text = m["text"].as_str().unwrap();
    assert!(text.contains("spec.replicas: 1 → 3"), "{text}");
    assert!(
        text.contains("metadata.labels.team: + <web & api>"),
        "{text}"
    );
    let html = m["html"].as_str().unwrap();
    assert!(
        html.contains("metadata.labels.team: + &lt;web &amp; api&gt;"),
        "{html}"
    );
    assert!(n.health()[0].ready);
}

#[tokio::test]
async fn email_over_plain_smtp() {
    init();
    let smtp = Smtp::start(&[]);
    let port = smtp.port.to_string();
    send_mail_and_check(
        &smtp,
        &[
            ("host", b"127.0.0.1"),
            ("port", port.as_bytes()),
            ("tls", b"none"),
        ],
    )
    .await;
}

#[tokio::test]
async fn email_over_starttls_with_a_private_ca() {
    init();
    let (ca, cert, key) = test_pki();
    let pki = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (pki.path().join("tls.crt"), pki.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let smtp = Smtp::start(&[
        "--tlscert",
        cert_path.to_str().unwrap(),
        "--tlskey",
        key_path.to_str().unwrap(),
    ]);
    let port = smtp.port.to_string();
    send_mail_and_check(
        &smtp,
        &[
            ("host", b"127.0.0.1"),
            ("port", port.as_bytes()),
            ("tls", b"starttls"),
            ("ca.crt", ca.as_bytes()),
        ],
    )
    .await;
}

#[tokio::test]
async fn email_over_implicit_tls_with_a_private_ca() {
    init();
    let (ca, cert, key) = test_pki();
    let pki = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (pki.path().join("tls.crt"), pki.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let smtp = Smtp::start(&[
        "--smtpscert",
        cert_path.to_str().unwrap(),
        "--smtpskey",
        key_path.to_str().unwrap(),
    ]);
    let port = smtp.port.to_string();
    send_mail_and_check(
        &smtp,
        &[
            ("host", b"127.0.0.1"),
            ("port", port.as_bytes()),
            ("tls", b"tls"),
            ("ca.crt", ca.as_bytes()),
        ],
    )
    .await;
}

#[tokio::test]
async fn starttls_refuses_an_unknown_ca() {
    init();
    let (_, cert, key) = test_pki();
    let pki = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (pki.path().join("tls.crt"), pki.path().join("tls.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let smtp = Smtp::start(&[
        "--tlscert",
        cert_path.to_str().unwrap(),
        "--tlskey",
        key_path.to_str().unwrap(),
    ]);
    let secrets = StaticSecrets::default();
    let port = smtp.port.to_string();
    secrets.set(
        "histor-system",
        "smtp",
        &[("host", b"127.0.0.1"), ("port", port.as_bytes())],
    );
    let (_dir, outbox) = temp_outbox();
    let n = Notifier::new(
        outbox,
        Arc::new(secrets),
        fast_config(),
        NotifyMetrics::default(),
    )
    .unwrap();
    n.set_policy("prod", &[email_sink()]).unwrap();
    let (stop, handle) = spawn_run(&n);
    n.on_recorded(&[StoredEvent {
        id: 1,
        event: deployment_event("alice", "nginx", (1, 3)),
    }])
    .await
    .unwrap();
    for _ in 0..500 {
        if n.health()[0].reason == "Retrying" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    handle.await.unwrap();
    assert_eq!(n.health()[0].reason, "Retrying", "{:?}", n.health());
    assert!(read_maildir(smtp.maildir.path()).is_empty());
    assert_eq!(n.pending().await, 1);
}
