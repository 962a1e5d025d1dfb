//! [`MemKubeEvents`]: the reference [`KubeEventStore`], in memory: one lock, one map.

use super::{KeptEvent, KubeEventStore, MAX_REGARDING, Regarding};
use crate::Result;
use crate::events::{KubeEvent, Seen};
use jiff::Timestamp;
use parking_lot::Mutex;
use std::collections::HashMap;

/// The in-memory store of Events.
#[derive(Default)]
pub struct MemKubeEvents {
    records: Mutex<HashMap<String, KeptEvent>>,
}

impl MemKubeEvents {
    /// An empty store.
    pub fn new() -> MemKubeEvents {
        MemKubeEvents::default()
    }
}

impl KubeEventStore for MemKubeEvents {
    fn record(&self, events: &[KubeEvent]) -> Result<Vec<Seen>> {
        Ok(super::take_into(&mut self.records.lock(), events))
    }

    fn regarding(
        &self,
        objects: &[Regarding],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeptEvent>> {
        let records = self.records.lock();
        let mut out: Vec<KeptEvent> = records
            .values()
            .filter(|k| k.event.last_seen >= since && objects.contains(&Regarding::of(&k.event)))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (b.event.last_seen, &b.event.uid).cmp(&(a.event.last_seen, &a.event.uid))
        });
        out.truncate(limit.min(MAX_REGARDING));
        Ok(out)
    }

    fn get(&self, uid: &str) -> Result<Option<KeptEvent>> {
        Ok(self.records.lock().get(uid).cloned())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let mut records = self.records.lock();
        let mut old: Vec<(Timestamp, String)> = records
            .values()
            .filter(|k| k.event.last_seen < before)
            .map(|k| (k.event.last_seen, k.event.uid.clone()))
            .collect();
        old.sort();
        old.truncate(limit);
        for (_, uid) in &old {
            records.remove(uid);
        }
        Ok(old.len())
    }

    fn count(&self) -> Result<u64> {
        Ok(self.records.lock().len() as u64)
    }
}

#[cfg(test)]
mod tests {
    crate::store::kube_events::conformance::kube_events_conformance_suite!(|| (
        (),
        super::MemKubeEvents::new()
    ));
}
