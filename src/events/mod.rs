//! Kubernetes Events, the fourth account: what happened to an object after its change. Pure, like
//! [`crate::usage`]: [`record`] reads an Event from either API into one form, and tells what a
//! new form of it adds ([`record::observe`]); [`Book`] keeps what is known per Event uid, so
//! that repeats are counted, not dropped and not duplicated: a series update, a core `count`
//! bump and a heartbeat are one Event with a count, and a relist (after a restart or a 410)
//! adds only what grew. The store keeps them (`store::kube_events`); the witness watches them.

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

use std::collections::HashMap;

/// What is known of each Event, by uid.
#[derive(Debug, Default)]
pub struct Book {
    known: HashMap<String, Known>,
}

impl Book {
    /// An empty book.
    pub fn new() -> Book {
        Book::default()
    }

    /// What `event` adds; the book then knows its newest form.
    pub fn see(&mut self, event: &KubeEvent) -> Seen {
        let seen = observe(self.known.get(&event.uid).copied(), event);
        if seen != Seen::Same {
            self.known.insert(event.uid.clone(), Known::of(event));
        }
        seen
    }

    /// Forgets an Event (deleted, or past its retention).
    pub fn forget(&mut self, uid: &str) {
        self.known.remove(uid);
    }

    /// Events known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// True when none is known.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests;
