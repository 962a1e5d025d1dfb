//! Commits seen by the watch, in the pipeline's terms: the digest of a committed object as each
//! policy would clean it (to compare with what reviews announced), and the event recording a
//! commit no review announced (`observed`). Pure: the store's head state comes in.

use super::reconcile::state_digest;
use crate::crd::Operation;
use crate::pipeline::{
    Actor, Captured, ChangeEvent, ChangeState, CompiledPolicy, KindId, Redactor, Request,
    ResourceId, cleaned, diff,
};
use crate::store::StoredEvent;
use jiff::Timestamp;
use kube::discovery::ApiResource;
use serde_json::Value;

/// A watched object as the request that would have made it: what policy matching and
/// cleaning take. The user is unknown (empty).
pub fn synthetic_request(
    api: &ApiResource,
    object: &Value,
    operation: Operation,
    uid: &str,
) -> Request {
    let meta = |f: &str| {
        object
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (obj, old) = match operation {
        Operation::Delete => (None, Some(object.clone())),
        _ => (Some(object.clone()), None),
    };
    Request {
        uid: uid.to_owned(),
        kind: KindId {
            group: api.group.clone(),
            version: api.version.clone(),
            kind: api.kind.clone(),
        },
        resource: ResourceId {
            group: api.group.clone(),
            version: api.version.clone(),
            resource: api.plural.clone(),
            subresource: None,
        },
        name: meta("name").unwrap_or_default(),
        namespace: meta("namespace"),
        operation,
        user: Actor::default(),
        object: obj,
        old_object: old,
        dry_run: false,
        options: None,
    }
}

/// Whom a watched object is cleaned for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// To compare with what a review announced: the review already passed the policy's user
    /// filters, so only the object's side of the policy counts.
    Compare,
    /// To record a change no review announced, by an unknown user: a policy that filters by
    /// user (or whose conditions read the request) cannot tell whether it wants it, and is
    /// left out, so that an excluded user's change is not recorded because the webhook missed it.
    Record,
}

/// `object` cleaned and redacted as `policy` records it, when the policy covers it for
/// `purpose`; with whether Secret values were replaced.
pub fn clean_under(
    policy: &CompiledPolicy,
    redactor: &Redactor,
    req: &Request,
    purpose: Purpose,
) -> Option<(Value, bool)> {
    let by_user = policy.matches_unattributed(req, redactor).ok()?;
    if by_user && purpose == Purpose::Record {
        return None;
    }
    let raw = req.object.as_ref().or(req.old_object.as_ref())?;
    let mut v = cleaned(raw, policy.track_status(), policy.ignore_fields());
    let redacted = redactor.redact(&mut v, &req.kind);
    Some((v, redacted))
}

/// The digest of the committed object under each policy that covers it.
pub fn digests(
    policies: &[std::sync::Arc<CompiledPolicy>],
    redactor: &Redactor,
    req: &Request,
) -> Vec<(String, u64)> {
    policies
        .iter()
        .filter_map(|p| {
            clean_under(p, redactor, req, Purpose::Compare)
                .map(|(v, _)| (p.name().to_owned(), state_digest(&v)))
        })
        .collect()
}

/// What the store holds of an object: its newest event that may have happened, and the state
/// after it.
pub struct Head {
    /// The event.
    pub event: StoredEvent,
    /// The state after it (`None`: the store cannot rebuild it).
    pub state: Option<Value>,
}

/// The event recording a commit no review announced, or `None` when there is nothing to
/// record: the store already holds that state (a change only noise fields saw), a deletion of
/// an object the store never knew, or an object first seen in the baseline list.
#[allow(clippy::too_many_arguments)]
pub fn observed_event(
    policies: &[std::sync::Arc<CompiledPolicy>],
    redactor: &Redactor,
    api: &ApiResource,
    object: &Value,
    deleted: bool,
    baseline: bool,
    head: Option<&Head>,
    commit: crate::pipeline::Commit,
    inferred: Option<crate::pipeline::InferredActor>,
) -> Option<Captured> {
    let uid = object.pointer("/metadata/uid").and_then(Value::as_str)?;
    let existed = head.is_some_and(|h| h.event.event.operation != Operation::Delete);
    let operation = match (deleted, existed) {
        (true, false) => return None,
        (true, true) => Operation::Delete,
        (false, false) if baseline => return None,
        (false, false) => Operation::Create,
        (false, true) => Operation::Update,
    };
    let request_uid = format!("watch:{uid}:{}", commit.resource_version);
    let req = synthetic_request(api, object, operation, &request_uid);
    let mut matched = Vec::new();
    let mut state = None;
    for p in policies {
        if let Some(v) = clean_under(p, redactor, &req, Purpose::Record) {
            matched.push(p.name().to_owned());
            state.get_or_insert(v);
        }
    }
    let (state, redacted) = state?;
    let before = head.and_then(|h| h.state.clone());
    let changes = match operation {
        Operation::Update => {
            let changes = diff(before.as_ref().unwrap_or(&Value::Null), &state);
            if changes.is_empty() {
                return None;
            }
            changes
        }
        _ => Vec::new(),
    };
    let event = ChangeEvent {
        request_uid,
        received_at: commit.seen_at,
        policies: matched,
        operation,
        user: Actor::default(),
        resource: req.resource.clone(),
        kind: req.kind.clone(),
        namespace: req.namespace.clone(),
        name: req.name.clone(),
        object_uid: Some(uid.to_owned()),
        changes,
        object: Some(state),
        redacted,
        state: ChangeState::Observed,
        commit: Some(commit),
        inferred,
        audit: None,
    };
    let before = match operation {
        Operation::Create => None,
        _ => before,
    };
    Some(Captured::new(event, before))
}

/// The event recording that an object the store believed alive is gone (a relist did not list
/// it): a DELETE by an unknown actor, with its last known state.
pub fn vanished_event(head: &Head, seen_at: Timestamp) -> Option<Captured> {
    let last = &head.event.event;
    let state = head.state.clone()?;
    let uid = last.object_uid.clone()?;
    let event = ChangeEvent {
        request_uid: format!("watch:{uid}:gone"),
        received_at: seen_at,
        policies: last.policies.clone(),
        operation: Operation::Delete,
        user: Actor::default(),
        resource: ResourceId {
            subresource: None,
            ..last.resource.clone()
        },
        kind: last.kind.clone(),
        namespace: last.namespace.clone(),
        name: last.name.clone(),
        object_uid: Some(uid),
        changes: Vec::new(),
        object: Some(state.clone()),
        redacted: last.redacted,
        state: ChangeState::Observed,
        commit: None,
        inferred: None,
        audit: None,
    };
    Some(Captured::new(event, Some(state)))
}
