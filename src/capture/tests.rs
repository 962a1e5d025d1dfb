//! Unit tests of the review handler's decisions and what it logs and counts, over a real sled
//! store in a temporary directory (no TLS: `tests/capture.rs` covers the server).

use super::*;
use crate::crd::TrackingPolicySpec;
use crate::pipeline::{CompiledPolicy, testdata};
use crate::store::SledStore;
use serde_json::{Value, json};
use std::sync::Mutex;

/// A log sink the tests read back.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Captures every log line on this thread until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

struct Harness {
    state: Arc<Capture>,
    _dir: tempfile::TempDir,
    _writer: std::thread::JoinHandle<()>,
}

impl Harness {
    fn new(policies: &[(&str, Value)]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path().join("data")).unwrap());
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (writer, handle) = Writer::spawn(store, 16, metrics.clone(), Vec::new()).unwrap();
        let index = Arc::new(PolicyIndex::new());
        for (name, spec) in policies {
            let spec: TrackingPolicySpec = serde_json::from_value(spec.clone()).unwrap();
            index.apply(CompiledPolicy::compile(name, &spec).unwrap());
        }
        let state = Arc::new(Capture {
            policies: index,
            redactor: Arc::new(Redactor::new(b"0123456789abcdef0123456789abcdef")),
            writer,
            metrics,
            registry: Arc::new(registry),
            deadline: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            client_ca: None,
            ignored_users: Vec::new(),
            witnessed: false,
            audit: None,
            ready: AtomicBool::new(true),
            warnings: LogLimiter::default(),
        });
        Harness {
            state,
            _dir: dir,
            _writer: handle,
        }
    }

    async fn review(&self, policy: &str, body: &[u8]) -> (Vec<u8>, &'static str) {
        let (response, outcome) = review(&self.state, policy, body, jiff::Timestamp::now()).await;
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (body.to_vec(), outcome)
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.state.registry).unwrap();
        text
    }
}

fn all_with_condition(expression: &str) -> Value {
    json!({
        "resources": [{"apiGroups": ["*"], "resources": ["*", "*/*"]}],
        "conditions": [{"name": "check", "expression": expression}],
    })
}

/// The recorded Secret update, with `stringData` and a last-applied annotation added as a hostile
/// client may send them.
fn hostile_secret_review() -> Vec<u8> {
    let mut review: Value = serde_json::from_str(testdata::fixture("update-secret")).unwrap();
    for key in ["object", "oldObject"] {
        let obj = &mut review["request"][key];
        obj["stringData"] = json!({"password": "s3cr3t"});
        obj["metadata"]["annotations"] = json!({
            crate::pipeline::noise::LAST_APPLIED:
                r#"{"apiVersion":"v1","kind":"Secret","stringData":{"password":"s3cr3t"}}"#
        });
    }
    serde_json::to_vec(&review).unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains("s3cr3t"), "{what}: {text}");
    assert!(!text.contains("czNjcjN0"), "{what}: {text}");
}

#[tokio::test]
async fn condition_errors_on_a_secret_log_name_and_kind_only_once_a_minute() {
    let exprs = [
        ("plus", "object.data.password + 1 == 2"),
        ("index", "object.stringData[object.stringData.password]"),
        ("int", "int(object.data)"),
    ];
    let specs: Vec<(&str, Value)> = exprs
        .iter()
        .map(|(name, e)| (*name, all_with_condition(e)))
        .collect();
    let h = Harness::new(&specs);
    let logs = Logs::default();
    let _guard = logs.install();
    let body = hostile_secret_review();
    for _ in 0..5 {
        for (policy, _) in exprs {
            let (answer, outcome) = h.review(policy, &body).await;
            assert_eq!(outcome, "condition_error", "{policy}");
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(answer["response"]["allowed"], true);
        }
    }
    let text = logs.text();
    assert_no_secret("log", &text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "one line per policy and condition: {text}");
    for (line, (policy, kind)) in lines.iter().zip([
        ("plus", "type_mismatch"),
        ("index", "no_such_key"),
        ("int", "function_error"),
    ]) {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("policy={policy}")), "{line}");
        assert!(line.contains("condition=check"), "{line}");
        assert!(line.contains(&format!("kind=\"{kind}\"")), "{line}");
        assert!(line.contains("suppressed=0"), "{line}");
    }
    let metrics = h.metrics();
    assert_no_secret("metrics", &metrics);
    for kind in ["type_mismatch", "no_such_key", "function_error"] {
        let line = format!(r#"histor_condition_errors_total{{kind="{kind}"}} 5"#);
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn oversized_reviews_log_the_field_not_the_value_once_a_minute() {
    let h = Harness::new(&[(
        "all",
        json!({"resources": [{"apiGroups": ["*"], "resources": ["*", "*/*"]}]}),
    )]);
    let logs = Logs::default();
    let _guard = logs.install();
    let mut review: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
    review["request"]["object"]["metadata"]["labels"] = json!({"app": "v".repeat(100_000)});
    for _ in 0..3 {
        let (answer, outcome) = h.review("all", &serde_json::to_vec(&review).unwrap()).await;
        assert_eq!(outcome, "oversized");
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(
            answer["response"]["uid"],
            testdata::index_uid("create-configmap")
        );
    }
    let text = logs.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("field=\"label_value\""), "{text}");
    assert!(text.contains("bytes=100000"), "{text}");
    assert!(!text.contains("vvvv"), "{text}");
}

/// A shared store that cannot be reached: every append fails.
struct Unreachable(crate::store::MemStore);

impl crate::store::EventStore for Unreachable {
    fn append_buffered(
        &self,
        _: &[crate::pipeline::Captured],
    ) -> crate::Result<Vec<crate::store::AppendOutcome>> {
        Err(crate::Error::Io(std::io::Error::other(
            "postgres: connection refused",
        )))
    }
    fn query(&self, q: &crate::store::Query) -> crate::Result<crate::store::Page> {
        self.0.query(q)
    }
    fn get(&self, id: crate::store::EventId) -> crate::Result<Option<crate::store::StoredEvent>> {
        self.0.get(id)
    }
    fn state_after(&self, id: crate::store::EventId) -> crate::Result<Option<Value>> {
        self.0.state_after(id)
    }
    fn state_before(&self, id: crate::store::EventId) -> crate::Result<Option<Value>> {
        self.0.state_before(id)
    }
    fn enforce_retention(
        &self,
        now: jiff::Timestamp,
        rule: &dyn Fn(&str) -> Option<crate::store::RetentionRule>,
        default: crate::store::RetentionRule,
    ) -> crate::Result<crate::store::RetentionReport> {
        self.0.enforce_retention(now, rule, default)
    }
    fn stats(&self) -> crate::Result<crate::store::StoreStats> {
        self.0.stats()
    }
    fn resolve(&self, r: &[crate::store::Resolution]) -> crate::Result<Vec<bool>> {
        self.0.resolve(r)
    }
    fn annotate(
        &self,
        n: &[(crate::store::EventId, crate::pipeline::AuditInfo)],
    ) -> crate::Result<Vec<bool>> {
        self.0.annotate(n)
    }

    fn live_objects(&self, resource: &str) -> crate::Result<Vec<crate::store::ObjectHead>> {
        self.0.live_objects(resource)
    }
    fn cursor(&self, key: &str) -> crate::Result<Option<String>> {
        self.0.cursor(key)
    }
    fn set_cursor(&self, key: &str, value: &str) -> crate::Result<()> {
        self.0.set_cursor(key, value)
    }
}

#[tokio::test]
async fn with_the_shared_store_down_a_review_is_spooled_and_readyz_stays_ready_saying_so() {
    let h = Harness::new(&[(
        "all",
        json!({"resources": [{"apiGroups": ["*"], "resources": ["*"]}]}),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let spool =
        Arc::new(crate::store::Spool::open(dir.path(), crate::store::DEFAULT_SPOOL_BYTES).unwrap());
    let (writer, _thread) = Writer::spawn_with(
        Arc::new(Unreachable(Default::default())),
        16,
        h.state.metrics.clone(),
        Vec::new(),
        Timing::default(),
        Some(spool.clone()),
    )
    .unwrap();
    let state = Arc::new(Capture {
        policies: h.state.policies.clone(),
        redactor: h.state.redactor.clone(),
        writer,
        metrics: h.state.metrics.clone(),
        registry: h.state.registry.clone(),
        deadline: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        client_ca: None,
        ignored_users: Vec::new(),
        witnessed: false,
        audit: None,
        ready: AtomicBool::new(true),
        warnings: LogLimiter::default(),
    });
    let body = testdata::fixture("update-deployment").as_bytes();
    let (_, outcome) = review(&state, "all", body, jiff::Timestamp::now()).await;
    assert_eq!(outcome, "spooled");
    assert_eq!(spool.len(), 1);
    let response = readyz(State(state.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("spooling"), "{text}");
    let metrics = h.metrics();
    assert!(metrics.contains("histor_spool_batches 1"), "{metrics}");
    assert!(
        metrics.contains("histor_spooled_batches_total 1"),
        "{metrics}"
    );
}
