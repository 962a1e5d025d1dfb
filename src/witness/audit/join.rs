//! Joining an audit event to the changes histor recorded, exactly: histor's answer to each
//! review put the review's uid in the audit event's annotations (`<webhook>/request-uid`), so
//! the change whose request uid is named there is the request's, never a guess by time.
//!
//! One request can be several changes: after an etcd write conflict the apiserver reads the
//! object again, applies the patch again and calls the webhook again, with a new uid each
//! time; only the last attempt is committed, and the audit event keeps only the first
//! attempt's uid (a later value for the same key is dropped). The attempts of one request are
//! the same change to a newer object: same operation, user and object, the same fields set to
//! the same values. So the join finds the first attempt by its uid, then its later attempts
//! among the object's changes up to the audit event's time; the newest is the one committed.
//!
//! Pure: an audit event and the object's stored changes in, verdicts and notes out.

use super::record;
use crate::crd::Operation;
use crate::pipeline::{AuditInfo, ChangeEvent, ChangeState, Commit, FieldChange, Witness};
use crate::store::{EventId, Resolution, StoredEvent};
use crate::usage::AuditEvent;
use jiff::{SignedDuration, Timestamp};

/// How far histor's clock (event ids are its receipt times) may be from the apiserver's.
pub const SKEW: SignedDuration = SignedDuration::from_secs(2);

/// What the audit event decides.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The first attempt, named by the annotation.
    pub first: EventId,
    /// The verdict on each attempt: the committed one `confirmed`, the others `notApplied`
    /// (all of them when the request failed).
    pub resolutions: Vec<Resolution>,
    /// The audit log's account, for every attempt.
    pub notes: Vec<(EventId, AuditInfo)>,
}

/// The time window, in event ids, in which the request's changes were received: from when
/// the apiserver received the request to when it answered, widened by [`SKEW`].
pub fn window(e: &AuditEvent) -> Option<(Timestamp, Timestamp)> {
    let start = e.request_received_timestamp.or(e.stage_timestamp)?;
    let end = e.stage_timestamp.unwrap_or(start);
    Some((start - SKEW, end + SKEW))
}

/// The verdicts of audit event `e` on `candidates`, the stored changes of its object (any
/// order) received within [`window`]. `None` when no candidate has a uid the event names
/// (not recorded yet, not histor's, or a request histor's webhook never saw).
pub fn plan(e: &AuditEvent, candidates: &[StoredEvent]) -> Option<Plan> {
    let uids: Vec<&str> = record::request_uids(e).collect();
    let first = candidates
        .iter()
        .find(|c| uids.contains(&c.event.request_uid.as_str()))?;
    let until = window(e).map(|(_, end)| end);
    let mut attempts: Vec<&StoredEvent> = candidates
        .iter()
        .filter(|c| {
            c.id == first.id
                || (c.id > first.id
                    && first.event.operation == Operation::Update
                    && until.is_none_or(|u| id_time(c.id) <= u)
                    && same_request(&first.event, &c.event))
        })
        .collect();
    attempts.sort_by_key(|c| c.id);
    let committed = e.code().is_some_and(|c| (200..300).contains(&c));
    let last = attempts.last().map(|c| c.id);
    let commit = Commit {
        resource_version: record::committed_version(e).unwrap_or_default().to_owned(),
        seen_at: e
            .stage_timestamp
            .or(e.request_received_timestamp)
            .unwrap_or_else(Timestamp::now),
        witness: Witness::Audit,
    };
    let resolutions = attempts
        .iter()
        .map(|c| {
            if committed && Some(c.id) == last {
                Resolution {
                    id: c.id,
                    state: ChangeState::Confirmed,
                    commit: Some(commit.clone()),
                }
            } else {
                Resolution {
                    id: c.id,
                    state: ChangeState::NotApplied,
                    commit: None,
                }
            }
        })
        .collect();
    let notes = attempts
        .iter()
        .map(|c| (c.id, record::info(e, &c.event.user.username)))
        .collect();
    Some(Plan {
        first: first.id,
        resolutions,
        notes,
    })
}

fn id_time(id: EventId) -> Timestamp {
    Timestamp::from_microsecond(id as i64).unwrap_or(Timestamp::MAX)
}

/// True when `b` is a later attempt of the request `a` was: the same operation on the same
/// object (and subresource) by the same user, setting the same fields to the same values (the
/// values they had before may differ: each attempt starts from a newer object).
fn same_request(a: &ChangeEvent, b: &ChangeEvent) -> bool {
    a.operation == b.operation
        && a.user.username == b.user.username
        && a.resource == b.resource
        && a.namespace == b.namespace
        && a.name == b.name
        && a.object_uid == b.object_uid
        && a.changes.len() == b.changes.len()
        && a.changes
            .iter()
            .zip(&b.changes)
            .all(|(x, y)| same_effect(x, y))
}

fn same_effect(a: &FieldChange, b: &FieldChange) -> bool {
    a.path == b.path && a.new == b.new && (a.new.is_some() || a.op == b.op)
}
