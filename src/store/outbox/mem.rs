//! [`MemOutbox`]: the reference [`OutboxStore`], in memory (one lock, ordered maps). Nothing is
//! durable; [`MemStore::outbox`](crate::store::MemStore::outbox) hands out the one its store
//! keeps, so a notifier made again on the same store finds what the previous one left.

use super::{BufferedRecord, OutboxCounts, OutboxIntake, OutboxKey, OutboxStore};
use crate::Result;
use crate::store::EventId;
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// The in-memory outbox.
#[derive(Default)]
pub struct MemOutbox {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_key: OutboxKey,
    entries: BTreeMap<OutboxKey, Vec<u8>>,
    buffered: BTreeMap<(String, EventId), Vec<u8>>,
    cursor: Option<EventId>,
}

impl MemOutbox {
    /// An empty outbox.
    pub fn new() -> MemOutbox {
        MemOutbox::default()
    }
}

#[async_trait::async_trait]
impl OutboxStore for MemOutbox {
    async fn next_keys(&self, n: usize) -> Result<Vec<OutboxKey>> {
        let mut inner = self.inner.lock();
        let first = inner.last_key + 1;
        inner.last_key += n as OutboxKey;
        Ok((first..=inner.last_key).collect())
    }

    async fn commit(&self, intake: OutboxIntake) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.entries.extend(intake.entries);
        for b in intake.buffered {
            inner.buffered.insert((b.sink, b.event), b.value);
        }
        if let Some(c) = intake.cursor {
            inner.cursor = Some(inner.cursor.map_or(c, |old| old.max(c)));
        }
        Ok(())
    }

    async fn cursor(&self) -> Result<Option<EventId>> {
        Ok(self.inner.lock().cursor)
    }

    async fn init_cursor(&self, at: EventId) -> Result<EventId> {
        Ok(*self.inner.lock().cursor.get_or_insert(at))
    }

    async fn entries(&self) -> Result<Vec<(OutboxKey, Vec<u8>)>> {
        Ok(self
            .inner
            .lock()
            .entries
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    async fn update(&self, key: OutboxKey, value: Vec<u8>) -> Result<()> {
        if let Some(v) = self.inner.lock().entries.get_mut(&key) {
            *v = value;
        }
        Ok(())
    }

    async fn remove(&self, keys: &[OutboxKey]) -> Result<()> {
        let mut inner = self.inner.lock();
        for k in keys {
            inner.entries.remove(k);
        }
        Ok(())
    }

    async fn buffered(&self, sink: Option<&str>) -> Result<Vec<BufferedRecord>> {
        Ok(self
            .inner
            .lock()
            .buffered
            .iter()
            .filter(|((s, _), _)| sink.is_none_or(|want| want == s))
            .map(|((s, id), v)| BufferedRecord {
                sink: s.clone(),
                event: *id,
                value: v.clone(),
            })
            .collect())
    }

    async fn remove_buffered(&self, events: &[(String, EventId)]) -> Result<()> {
        let mut inner = self.inner.lock();
        for e in events {
            inner.buffered.remove(e);
        }
        Ok(())
    }

    async fn close_window(
        &self,
        sink: &str,
        events: &[EventId],
        key: OutboxKey,
        value: Vec<u8>,
    ) -> Result<()> {
        let mut inner = self.inner.lock();
        for id in events {
            inner.buffered.remove(&(sink.to_owned(), *id));
        }
        inner.entries.insert(key, value);
        Ok(())
    }

    async fn counts(&self) -> Result<OutboxCounts> {
        let inner = self.inner.lock();
        Ok(OutboxCounts {
            pending: inner.entries.len(),
            buffered: inner.buffered.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    /// The contract's tests ([`super::super::conformance`]) on the in-memory outbox.
    mod contract {
        crate::store::outbox::conformance::outbox_conformance_suite!(|| (
            (),
            std::sync::Arc::new(super::super::MemOutbox::new())
        ));
    }
}
