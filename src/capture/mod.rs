//! The HTTPS admission endpoint. It answers every review `allowed: true` (histor observes, it never
//! denies), runs the pure pipeline, queues the event for the group-commit writer and waits for the
//! durable write no longer than the deadline. Also serves `/healthz`, `/readyz` and `/metrics`.
//! Knows nothing of Kubernetes clients; policies come from the shared [`PolicyIndex`].

pub mod audit;
pub mod conn;
mod ratelog;
pub mod tls;
mod writer;

pub use ratelog::LogLimiter;
pub use writer::{Ack, Health, Problem, RecordObserver, Timing, Writer, Written};

use crate::index::PolicyIndex;
use crate::metrics::{ConditionErrorLabels, Metrics};
use crate::pipeline::{self, ChangeState, ConditionErrorKind, Outcome, Redactor, SkipReason};
use crate::store::AppendOutcome;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use writer::Written as W;

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
    /// Longest time to receive a review's body once its headers are in.
    pub body_timeout: Duration,
    /// When set, only clients with a certificate from this CA (the apiserver) may post reviews.
    pub client_ca: Option<Arc<tls::ClientCa>>,
    /// Users whose requests are never recorded: the operator's own service account, whose
    /// ChangeRecord writes must not loop back (also pushed down as matchConditions where the
    /// apiserver supports them).
    pub ignored_users: Vec<String>,
    /// A witness (the operator's watch) will tell whether each change was committed: events
    /// start `received`. Without one (standalone `serve`) they are `unconfirmed`.
    pub witnessed: bool,
    /// Where `/audit` puts the apiserver's audit events; `None` refuses them.
    pub audit: Option<Arc<audit::AuditIntake>>,
    /// False until the server is ready to record (and after shutdown starts).
    pub ready: AtomicBool,
    /// Keeps warnings that every review can trigger to one line per minute and cause.
    pub warnings: LogLimiter,
}

/// The capture endpoint's routes.
pub fn router(state: Arc<Capture>) -> Router {
    Router::new()
        .route("/admit/{policy}", post(admit))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route(
            "/audit",
            post(audit::audit).layer(DefaultBodyLimit::max(audit::MAX_AUDIT_BODY)),
        )
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

/// Ready while serving and while events can be made durable: in the store, or while a shared
/// store is down or slow in the local spool (every replica sees that outage; failing them all
/// would only take the webhook's endpoints away), which the text says.
async fn readyz(State(state): State<Arc<Capture>>) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response();
    }
    let health = state.writer.health();
    match health.problem() {
        None => match health.spooling() {
            None => (StatusCode::OK, "ready").into_response(),
            Some(batches) => (
                StatusCode::OK,
                format!("ready: spooling: the store cannot take writes; {batches} batches kept on local disk\n"),
            )
                .into_response(),
        },
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
    request: axum::extract::Request,
) -> Response {
    let started = Instant::now();
    let received_at = jiff::Timestamp::now();
    if let Some(refused) = refuse_client(&state, &request) {
        state.metrics.review(refused.1);
        return refused.0;
    }
    // A total deadline, not one per chunk: a body dribbled a byte at a time must not hold the
    // connection (and its slot) for ever.
    let body = tokio::time::timeout(state.body_timeout, Bytes::from_request(request, &())).await;
    let (response, outcome) = match body {
        Ok(Ok(body)) => review(&state, &policy, &body, received_at).await,
        Ok(Err(rejection)) => {
            tracing::warn!(policy = %policy, error = %rejection, "review body rejected");
            (rejection.into_response(), "bad_request")
        }
        Err(_) => {
            tracing::warn!(policy = %policy, "review body not received in time; closing the connection");
            let response = (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "histor: request body not received in time\n",
            );
            (response.into_response(), "body_timeout")
        }
    };
    state.metrics.review(outcome);
    state
        .metrics
        .review_latency
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The answer to a client that may not post reviews, and its metric label; `None` when it may.
/// Refused reviews are not read, let alone recorded.
fn refuse_client(
    state: &Capture,
    request: &axum::extract::Request,
) -> Option<(Response, &'static str)> {
    let ca = state.client_ca.as_ref()?;
    let chain = request
        .extensions()
        .get::<tls::PeerCertificates>()
        .and_then(|p| p.0.as_deref());
    let refusal = ca.check(chain.map(Vec::as_slice)).err()?;
    let (status, label, message) = match refusal {
        tls::ClientRefusal::NoCertificate => (
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "histor: this endpoint needs the apiserver's webhook client certificate\n",
        ),
        tls::ClientRefusal::Untrusted | tls::ClientRefusal::NameNotAllowed => (
            StatusCode::FORBIDDEN,
            "forbidden",
            "histor: this client certificate may not post here\n",
        ),
    };
    // Debug only: whoever is refused could otherwise fill the log; the metric counts them.
    tracing::debug!(reason = ?refusal, "review from a client that is not the apiserver; not recorded");
    Some(((status, message).into_response(), label))
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
    // Built only on the path that answers. Once the event is queued it is (or will be) in the
    // store, and the answer names it for the audit log.
    let answer = || allowed(parsed.response_api_version(), parsed.response_uid(), false);
    let queued = || allowed(parsed.response_api_version(), parsed.response_uid(), true);
    let request = match &parsed.request {
        Ok(request) => request,
        Err(why) => {
            // Allowed all the same: histor must never be the reason a change fails.
            tracing::warn!(policy = %policy, uid = parsed.response_uid(), reason = %why, "cannot interpret admission review; allowed without recording");
            return (answer(), "uninterpretable");
        }
    };
    if state.ignored_users.contains(&request.user.username) {
        return (answer(), "ignored_user");
    }
    let Some(compiled) = state.policies.get(policy) else {
        tracing::debug!(policy = %policy, "review for an unknown policy");
        return (answer(), "unknown_policy");
    };
    let mut captured = match pipeline::process(request, &compiled, &state.redactor, received_at) {
        Outcome::Record(captured) => captured,
        Outcome::Skip(reason) => {
            match &reason {
                SkipReason::EmptyDiff => {
                    state.metrics.empty_diffs.inc();
                }
                SkipReason::ConditionError { name, kind } => {
                    condition_error(state, policy, name, *kind);
                }
                SkipReason::Oversized(o) => oversized(state, o),
                _ => {}
            }
            return (answer(), reason.metric_label());
        }
    };
    captured.event.state = if state.witnessed {
        ChangeState::Received
    } else {
        ChangeState::Unconfirmed
    };
    let ack = match state.writer.submit(captured) {
        Ok(ack) => ack,
        Err(_) => {
            state.metrics.dropped.inc();
            tracing::error!(policy = %policy, uid = %request.uid, "event queue full: change answered but NOT recorded");
            return (answer(), "dropped");
        }
    };
    if state.writer.health().problem().is_some() {
        // Known broken: waiting out the deadline would only delay the apiserver. The event
        // stays queued and is written if the store recovers before the process stops.
        return (queued(), "store_unavailable");
    }
    let outcome = match tokio::time::timeout(state.deadline, ack).await {
        Ok(Ok(W::Stored(AppendOutcome::Recorded(_)))) => "recorded",
        Ok(Ok(W::Stored(AppendOutcome::Linked(_)))) => "linked",
        Ok(Ok(W::Stored(AppendOutcome::Duplicate(_)))) => "duplicate",
        Ok(Ok(W::Spooled)) => "spooled",
        Ok(Err(_)) => "store_error",
        Err(_) => {
            state.metrics.deadline_exceeded.inc();
            "deadline_exceeded"
        }
    };
    (queued(), outcome)
}

/// Counts a condition that could not be evaluated and warns about it: the policy's author needs to
/// know that the condition is broken for some input. The line names the policy, the condition and
/// the error kind only (CEL's message quotes the values it failed on, which may be anyone's data),
/// at most once a minute per condition, with the number of failures held back since the last one.
fn condition_error(state: &Capture, policy: &str, condition: &str, kind: ConditionErrorKind) {
    state
        .metrics
        .condition_errors
        .get_or_create(&ConditionErrorLabels {
            kind: kind.as_str(),
        })
        .inc();
    let key = format!("condition\0{policy}\0{condition}");
    if let Some(suppressed) = state.warnings.check(&key, Instant::now()) {
        tracing::warn!(
            policy = %policy,
            condition = %condition,
            kind = kind.as_str(),
            suppressed,
            "policy condition could not be evaluated; not recorded"
        );
    }
}

/// Warns about a review over Kubernetes' size bounds, which no apiserver sends: which field, how
/// long, never its value; at most once a minute per field, with the number held back since.
fn oversized(state: &Capture, o: &pipeline::limits::Oversized) {
    let key = format!("oversized\0{}", o.field);
    if let Some(suppressed) = state.warnings.check(&key, Instant::now()) {
        tracing::warn!(
            field = o.field,
            bytes = o.len,
            limit = o.limit,
            suppressed,
            "review beyond Kubernetes' size limits (no apiserver sends one); allowed without recording"
        );
    }
}

/// `allowed: true`; for a review being recorded (`recorded`) with the audit annotation that
/// joins the request's audit event to the change.
fn allowed(api_version: &str, uid: &str, recorded: bool) -> Response {
    let body = if recorded {
        pipeline::recorded_response(api_version, uid)
    } else {
        pipeline::allowed_response(api_version, uid)
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests;
