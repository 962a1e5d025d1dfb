//! Kubernetes Events, the fourth account: what happened to an object after its change. Pure, like
//! [`crate::usage`]: [`record`] reads an Event from either API into one form, and tells what a
//! new form of it adds ([`record::observe`]), so that repeats are counted, not dropped and not
//! duplicated: a series update, a core `count` bump and a heartbeat are one Event with a count,
//! and a relist (after a restart or a 410) adds only what grew. The store keeps one record per
//! Event (`store::kube_events`); the witness watches them.

pub mod owners;
pub mod record;

pub use record::{Known, KubeEvent, ObjectRef, Seen, observe};

use crate::crd::EventSelection;

/// True when a policy's selection keeps `event`: its type is one of `types`, and its reason
/// and the kind of object it regards are among those listed (an empty list takes any).
pub fn keeps(selection: &EventSelection, event: &KubeEvent) -> bool {
    let listed = |list: &[String], v: &str| list.is_empty() || list.iter().any(|l| l == v);
    selection.types.contains(&event.type_)
        && listed(&selection.reasons, &event.reason)
        && listed(&selection.regarding_kinds, &event.regarding.kind)
}

#[cfg(test)]
mod tests;
