//! The HTTPS admission endpoint. It answers every review `allowed: true` (histor observes, it never
//! denies), runs the pure pipeline, queues the event for the group-commit writer and waits for the
//! durable write no longer than the deadline. Also serves `/healthz`, `/readyz` and `/metrics`.
//! Knows nothing of Kubernetes clients; policies come from the shared [`PolicyIndex`].

pub mod tls;
mod writer;

pub use writer::{Ack, Health, Problem, RecordObserver, Writer};

use crate::index::PolicyIndex;
use crate::metrics::Metrics;
use crate::pipeline::{self, Outcome, Redactor, SkipReason};
use crate::store::AppendOutcome;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest review body accepted. An AdmissionReview carries the object twice (object and
/// oldObject), each up to etcd's 1.5 MiB default and the apiserver's 3 MiB request limit.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Default for how long a review waits for its durable write before it is answered anyway.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(500);

/// Everything the handlers share.
pub struct Capture {
    /// Compiled policies by name.
    pub policies: Arc<PolicyIndex>,
    /// Secret value hasher.
    pub redactor: Arc<Redactor>,
    /// Queue to the group-commit writer.
    pub writer: Writer,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The registry `/metrics` encodes.
    pub registry: Arc<Registry>,
    /// Longest wait for the durable write.
    pub deadline: Duration,
    /// Users whose requests are never recorded: the operator's own service account, whose
    /// ChangeRecord writes must not loop back (also pushed down as matchConditions where the
    /// apiserver supports them).
    pub ignored_users: Vec<String>,
    /// False until the server is ready to record (and after shutdown starts).
    pub ready: AtomicBool,
}

/// The capture endpoint's routes.
pub fn router(state: Arc<Capture>) -> Router {
    Router::new()
        .route("/admit/{policy}", post(admit))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(ops_router(state.clone()))
        .with_state(state)
}

/// Probes and metrics alone, for a plain-HTTP port that kubelet and Prometheus reach without TLS.
pub fn ops_router(state: Arc<Capture>) -> Router<Arc<Capture>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Alive unless a store operation has been stuck so long that only a restart helps.
async fn healthz(State(state): State<Arc<Capture>>) -> Response {
    let health = state.writer.health();
    if health.wedged() {
        let secs = health.busy_for().unwrap_or_default().as_secs();
        let message = format!("store write stuck for {secs} s\n");
        return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

/// Ready while serving and while the store can write.
async fn readyz(State(state): State<Arc<Capture>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    match state.writer.health().problem() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store cannot write ({})\n", problem.label()),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<Capture>>) -> Response {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        tracing::warn!(%error, "encoding metrics failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn admit(
    State(state): State<Arc<Capture>>,
    Path(policy): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let received_at = jiff::Timestamp::now();
    let (response, outcome) = match body {
        Ok(body) => review(&state, &policy, &body, received_at).await,
        Err(rejection) => {
            tracing::warn!(policy = %policy, error = %rejection, "review body rejected");
            (rejection.into_response(), "bad_request")
        }
    };
    state.metrics.review(outcome);
    state
        .metrics
        .review_latency
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Answers one review body and names what happened to it (the metric label).
async fn review(
    state: &Capture,
    policy: &str,
    body: &[u8],
    received_at: jiff::Timestamp,
) -> (Response, &'static str) {
    let parsed = match pipeline::review::parse(body) {
        Ok(parsed) => parsed,
        Err(error) => {
            tracing::warn!(policy = %policy, %error, bytes = body.len(), "request body is not an AdmissionReview");
            let message = format!("histor: {error}\n");
            return (
                (StatusCode::BAD_REQUEST, message).into_response(),
                "bad_request",
            );
        }
    };
    let answer = allowed(
        &parsed.api_version,
        parsed.uid.as_deref().unwrap_or_default(),
    );
    let request = match &parsed.request {
        Ok(request) => request,
        Err(why) => {
            // Allowed all the same: histor must never be the reason a change fails.
            tracing::warn!(policy = %policy, uid = parsed.uid.as_deref().unwrap_or("-"), reason = %why, "cannot interpret admission review; allowed without recording");
            return (answer, "uninterpretable");
        }
    };
    if state.ignored_users.contains(&request.user.username) {
        return (answer, "ignored_user");
    }
    let Some(compiled) = state.policies.get(policy) else {
        tracing::debug!(policy = %policy, "review for an unknown policy");
        return (answer, "unknown_policy");
    };
    let captured = match pipeline::process(request, &compiled, &state.redactor, received_at) {
        Outcome::Record(captured) => captured,
        Outcome::Skip(reason) => {
            if matches!(reason, SkipReason::EmptyDiff) {
                state.metrics.empty_diffs.inc();
            } else if matches!(reason, SkipReason::ConditionError { .. }) {
                // The policy's author needs to know: the condition is broken for this input.
                tracing::warn!(policy = %policy, %reason, "policy condition could not be evaluated; not recorded");
            }
            return (answer, reason.metric_label());
        }
    };
    let ack = match state.writer.submit(captured) {
        Ok(ack) => ack,
        Err(_) => {
            state.metrics.dropped.inc();
            tracing::error!(policy = %policy, uid = %request.uid, "event queue full: change answered but NOT recorded");
            return (answer, "dropped");
        }
    };
    if state.writer.health().problem().is_some() {
        // Known broken: waiting out the deadline would only delay the apiserver. The event
        // stays queued and is written if the store recovers before the process stops.
        return (answer, "store_unavailable");
    }
    let outcome = match tokio::time::timeout(state.deadline, ack).await {
        Ok(Ok(AppendOutcome::Recorded(_))) => "recorded",
        Ok(Ok(AppendOutcome::Linked(_))) => "linked",
        Ok(Ok(AppendOutcome::Duplicate(_))) => "duplicate",
        Ok(Err(_)) => "store_error",
        Err(_) => {
            state.metrics.deadline_exceeded.inc();
            "deadline_exceeded"
        }
    };
    (answer, outcome)
}

fn allowed(api_version: &str, uid: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        pipeline::allowed_response(api_version, uid),
    )
        .into_response()
}
