//! Test helpers: events and a minimal in-memory [`EventStore`].

use crate::crd::Operation;
use crate::pipeline::{Actor, ChangeEvent};
use crate::store::{EventId, EventStore, Page, Query, StoredEvent};

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
    }
}

pub(crate) fn stored(id: EventId, event: ChangeEvent) -> StoredEvent {
    StoredEvent { id, event }
}

/// Just enough of a store for `recover_from`: `query` by `since`, newest first, paged.
#[derive(Default)]
pub(crate) struct MemStore(pub std::sync::Mutex<Vec<StoredEvent>>);

impl EventStore for MemStore {
    fn append_buffered(
        &self,
        _: &[crate::pipeline::Captured],
    ) -> crate::Result<Vec<crate::store::AppendOutcome>> {
        unimplemented!()
    }
    fn query(&self, q: &Query) -> crate::Result<Page> {
        let mut all: Vec<StoredEvent> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| q.since.is_none_or(|s| e.event.received_at >= s))
            .filter(|e| q.after.is_none_or(|a| e.id < a))
            .cloned()
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.id));
        let limit = q.limit.clamp(1, 100);
        let next = (all.len() > limit).then(|| all[limit - 1].id);
        all.truncate(limit);
        Ok(Page { events: all, next })
    }
    fn get(&self, _: EventId) -> crate::Result<Option<StoredEvent>> {
        unimplemented!()
    }
    fn state_after(&self, _: EventId) -> crate::Result<Option<serde_json::Value>> {
        unimplemented!()
    }
    fn state_before(&self, _: EventId) -> crate::Result<Option<serde_json::Value>> {
        unimplemented!()
    }
    fn enforce_retention(
        &self,
        _: jiff::Timestamp,
        _: &dyn Fn(&str) -> Option<crate::store::RetentionRule>,
        _: crate::store::RetentionRule,
    ) -> crate::Result<crate::store::RetentionReport> {
        unimplemented!()
    }
    fn stats(&self) -> crate::Result<crate::store::StoreStats> {
        unimplemented!()
    }
}
