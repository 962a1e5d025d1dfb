//! Test helpers: a scripted API server behind `tower_test::mock::pair`, a recording
//! [`PolicyRegistry`](super::PolicyRegistry) and the reference in-memory
//! [`EventStore`](crate::store::EventStore).
//!
//! The fake server keeps objects by path so a test reads like a conversation with the apiserver:
//! it answers GET from what it holds (404 otherwise), applies server-side-apply and JSON patches,
//! echoes POSTs, and records every call (method, path, query, JSON body) for the test to assert.

use super::webhook::WebhookClient;
use super::{Context, PolicyRegistry, Settings};
use crate::crd::{TrackingPolicy, TrackingPolicySpec};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tower_test::mock::Handle;

/// One request the fake server received.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// URL query.
    pub query: String,
    /// JSON body (`Null` when empty).
    pub body: Value,
}

/// `METHOD path` of every call, for asserting the sequence.
pub fn summary(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

/// A 404 Status response.
pub fn not_found() -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"
    });
    Response::builder()
        .status(StatusCode::NOT_FOUND)
        .body(Body::from(serde_json::to_vec(&status).expect("json")))
        .expect("response")
}

/// A 200 response with a JSON body.
pub fn json_response(body: &Value) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// The request's body as JSON.
pub async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.expect("body");
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("JSON body")
    }
}

/// Serves requests until the client is dropped, then returns the calls it saw. `objects` are
/// `(path, object)` pairs it starts with.
pub fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    objects: Vec<(String, Value)>,
) -> JoinHandle<Vec<Call>> {
    tokio::spawn(async move {
        let mut store: HashMap<String, Value> = objects.into_iter().collect();
        let mut calls = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let body = body_json(req).await;
            calls.push(Call {
                method: method.clone(),
                path: path.clone(),
                query,
                body: body.clone(),
            });
            let object_path = path.strip_suffix("/status").unwrap_or(&path).to_string();
            let response = match method.as_str() {
                "GET" => store
                    .get(&object_path)
                    .map_or_else(not_found, json_response),
                "DELETE" => store
                    .remove(&object_path)
                    .map_or_else(not_found, |o| json_response(&o)),
                "POST" => json_response(&body),
                "PATCH" => {
                    let object = store.entry(object_path).or_insert_with(|| json!({}));
                    if let Some(ops) = body.as_array() {
                        // Real apiservers treat a `test` of a missing path against null as a
                        // match; json-patch does not, so tests are skipped here.
                        let ops: Vec<Value> = ops
                            .iter()
                            .filter(|op| op["op"] != "test")
                            .cloned()
                            .collect();
                        let patch: json_patch::Patch =
                            serde_json::from_value(Value::Array(ops)).expect("json patch");
                        json_patch::patch(object, &patch).expect("patch applies");
                    } else {
                        json_patch::merge(object, &body);
                    }
                    json_response(object)
                }
                other => panic!("unexpected method {other}"),
            };
            send.send_response(response);
        }
        calls
    })
}

/// A registry that records calls and fails on demand.
#[derive(Default)]
pub struct FakeRegistry {
    applied: Mutex<Vec<String>>,
    removed: Mutex<Vec<String>>,
    fail: Mutex<Option<String>>,
}

impl FakeRegistry {
    /// Makes every later `apply` fail with `message`.
    pub fn fail_with(&self, message: &str) {
        *self.fail.lock().expect("lock") = Some(message.into());
    }
    /// Names successfully applied.
    pub fn applied(&self) -> Vec<String> {
        self.applied.lock().expect("lock").clone()
    }
    /// Names removed.
    pub fn removed(&self) -> Vec<String> {
        self.removed.lock().expect("lock").clone()
    }
}

impl PolicyRegistry for FakeRegistry {
    fn apply(&self, name: &str, _spec: &TrackingPolicySpec) -> Result<(), String> {
        if let Some(message) = self.fail.lock().expect("lock").clone() {
            return Err(message);
        }
        self.applied.lock().expect("lock").push(name.into());
        Ok(())
    }
    fn remove(&self, name: &str) {
        self.removed.lock().expect("lock").push(name.into());
    }
}

/// The reference in-memory store, seeded with `add` (events under their own ids).
pub use crate::store::MemStore;

/// Path of a TrackingPolicy.
pub fn policy_path(name: &str) -> String {
    format!("/apis/histor.dev/v1alpha1/trackingpolicies/{name}")
}

/// A context over a fake API server holding `policies`, with a recording registry, an empty
/// store and a stats provider reporting 42 events. Drop the context to end the server task.
pub fn context(
    policies: Vec<TrackingPolicy>,
) -> (Arc<Context>, JoinHandle<Vec<Call>>, Arc<FakeRegistry>) {
    context_with(policies, |_| {})
}

/// [`context`], with `adjust` applied to the settings first.
pub fn context_with(
    policies: Vec<TrackingPolicy>,
    adjust: impl FnOnce(&mut Settings),
) -> (Arc<Context>, JoinHandle<Vec<Call>>, Arc<FakeRegistry>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let objects = policies
        .iter()
        .map(|p| {
            (
                policy_path(p.metadata.name.as_deref().unwrap_or_default()),
                serde_json::to_value(p).expect("policy json"),
            )
        })
        .collect();
    let server = serve(handle, objects);
    let registry = Arc::new(FakeRegistry::default());
    let mut settings = Settings::new(
        "histor-system",
        WebhookClient::Service {
            namespace: "histor-system".into(),
            name: "histor".into(),
            port: 443,
        },
    );
    settings.identity = "histor-test".into();
    adjust(&mut settings);
    let stats: super::StatsProvider = Arc::new(|_| (42, None));
    let ctx = Context::new(
        client,
        settings,
        registry.clone(),
        Arc::new(MemStore::default()),
    )
    .with_stats(stats);
    (Arc::new(ctx), server, registry)
}
