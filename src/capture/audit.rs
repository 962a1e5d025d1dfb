//! `POST /audit`: the apiserver's audit webhook backend. Takes `audit.k8s.io/v1` EventLists as
//! the backend sends them (batch and blocking modes: up to 400 events a batch by default) and
//! answers once the events are durable in the audit journal, so the apiserver retries any batch
//! it did not get a 200 for. A bounded number of batches is taken at once; beyond it a batch is
//! refused at once with 429 (the apiserver backs off and sends it again) rather than queued
//! without bound. The same client-certificate check as `/admit` applies.

use super::{Capture, refuse_client};
use crate::metrics::OutcomeLabels;
use crate::store::AuditJournal;
use crate::witness::audit::{record, take_in};
use axum::body::Bytes;
use axum::extract::{FromRequest, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Largest batch body taken: 400 events of up to 100 KB each (the webhook backend truncates
/// bigger ones), with room to spare.
pub const MAX_AUDIT_BODY: usize = 64 * 1024 * 1024;

/// Batches taken in at once by default; beyond, batches are refused until one is written.
pub const DEFAULT_AUDIT_SLOTS: usize = 16;

/// Where posted audit events go.
pub struct AuditIntake {
    /// The store's journal.
    pub journal: Arc<dyn AuditJournal>,
    /// One permit per batch being read or written.
    pub slots: Semaphore,
}

impl AuditIntake {
    /// An intake into `journal` taking `slots` batches at once.
    pub fn new(journal: Arc<dyn AuditJournal>, slots: usize) -> AuditIntake {
        AuditIntake {
            journal,
            slots: Semaphore::new(slots.max(1)),
        }
    }
}

pub(super) async fn audit(
    State(state): State<Arc<Capture>>,
    request: axum::extract::Request,
) -> Response {
    let (response, outcome) = take(&state, request).await;
    state
        .metrics
        .audit_batches
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    response
}

async fn take(state: &Capture, request: axum::extract::Request) -> (Response, &'static str) {
    if let Some((response, label)) = refuse_client(state, &request) {
        return (response, label);
    }
    let Some(intake) = &state.audit else {
        let message =
            "histor: audit events are not taken here (start with the audit webhook enabled)\n";
        return ((StatusCode::NOT_FOUND, message).into_response(), "disabled");
    };
    let Ok(_permit) = intake.slots.try_acquire() else {
        return (
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "histor: audit queue full; send the batch again\n",
            )
                .into_response(),
            "refused_full",
        );
    };
    let body = tokio::time::timeout(state.body_timeout, Bytes::from_request(request, &())).await;
    let body = match body {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return (rejection.into_response(), "bad_request"),
        Err(_) => {
            let response = (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "histor: request body not received in time\n",
            );
            return (response.into_response(), "body_timeout");
        }
    };
    let batch = match record::parse_list(&body) {
        Ok(batch) => batch,
        Err(error) => {
            tracing::warn!(%error, bytes = body.len(), "audit batch is not an EventList");
            let message = format!("histor: {error}\n");
            return (
                (StatusCode::BAD_REQUEST, message).into_response(),
                "bad_request",
            );
        }
    };
    drop(body);
    for bad in &batch.bad {
        state.metrics.audit_events(bad.label(), 1);
    }
    if !batch.bad.is_empty() {
        let key = "audit\0bad-items";
        if let Some(suppressed) = state.warnings.check(key, std::time::Instant::now()) {
            tracing::warn!(
                bad = batch.bad.len(),
                suppressed,
                "audit batch items that are not audit events; skipped and counted"
            );
        }
    }
    let journal = intake.journal.clone();
    let written =
        tokio::task::spawn_blocking(move || take_in(journal.as_ref(), &batch.events)).await;
    match written {
        Ok(Ok(taken)) => {
            taken.count(&state.metrics);
            ((StatusCode::OK, "").into_response(), "stored")
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "audit batch not written; the apiserver sends it again");
            (
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "histor: store cannot write\n",
                )
                    .into_response(),
                "store_error",
            )
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            "store_error",
        ),
    }
}
