//! Test helpers: events. Tests that need a store use the real one, [`crate::store::MemStore`].

use crate::crd::Operation;
use crate::pipeline::{Actor, ChangeEvent};
use crate::store::{EventId, StoredEvent};

pub(crate) mod fixtures {
    #![allow(dead_code)]
    use crate::crd::Operation;
    use crate::pipeline::{Actor, ChangeEvent, ChangeOp, FieldChange, KindId, ResourceId};
    include!("../../tests/notify_support/fixtures.rs");
}

/// A Deployment event.
pub(crate) fn event(user: &str, op: Operation, ns: Option<&str>, name: &str) -> ChangeEvent {
    ChangeEvent {
        request_uid: format!("uid-{name}"),
        received_at: "2026-11-22T02:07:53Z".parse().unwrap(),
        policies: vec!["prod".into()],
        operation: op,
        user: Actor {
            username: user.into(),
            ..Default::default()
        },
        resource: crate::pipeline::testdata::deployments(),
        kind: crate::pipeline::testdata::deployment_kind(),
        namespace: ns.map(str::to_string),
        name: name.into(),
        object_uid: None,
        changes: vec![],
        object: None,
        redacted: false,
        state: Default::default(),
        commit: None,
        inferred: None,
        audit: None,
    }
}

pub(crate) fn stored(id: EventId, event: ChangeEvent) -> StoredEvent {
    StoredEvent { id, event }
}
