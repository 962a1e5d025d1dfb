//! [`MemAudit`]: the reference [`AuditJournal`], in memory: one lock, ordered maps.

use super::{AuditCounts, AuditEntry, AuditJournal, AuditSeq, UsageRow};
use crate::Result;
use crate::usage::Counts;
use jiff::Timestamp;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

/// The in-memory journal.
#[derive(Default)]
pub struct MemAudit {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: AuditSeq,
    queue: BTreeMap<AuditSeq, AuditEntry>,
    /// Remembered keys: their entry's time, and their seq while queued.
    keys: HashMap<[u8; 16], (Timestamp, Option<AuditSeq>)>,
    usage: BTreeMap<(i64, Vec<u8>), Counts>,
}

impl MemAudit {
    /// An empty journal.
    pub fn new() -> MemAudit {
        MemAudit::default()
    }
}

impl AuditJournal for MemAudit {
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>> {
        let mut inner = self.inner.lock();
        let mut queued = Vec::with_capacity(entries.len());
        for e in entries {
            if inner.keys.contains_key(&e.key) {
                queued.push(false);
                continue;
            }
            inner.next += 1;
            let seq = inner.next;
            inner.keys.insert(e.key, (e.at, Some(seq)));
            inner.queue.insert(seq, e.clone());
            queued.push(true);
        }
        Ok(queued)
    }

    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>> {
        let inner = self.inner.lock();
        let from = after.map_or(0, |a| a.saturating_add(1));
        Ok(inner
            .queue
            .range(from..)
            .take(limit)
            .map(|(&s, e)| (s, e.clone()))
            .collect())
    }

    fn done(&self, seqs: &[AuditSeq], usage: &[UsageRow]) -> Result<()> {
        let mut inner = self.inner.lock();
        let mut took = false;
        for s in seqs {
            if let Some(e) = inner.queue.remove(s) {
                took = true;
                if let Some(k) = inner.keys.get_mut(&e.key) {
                    k.1 = None;
                }
            }
        }
        if took {
            for row in usage {
                inner
                    .usage
                    .entry((row.hour, row.series.clone()))
                    .or_default()
                    .merge(&row.counts);
            }
        }
        Ok(())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let mut inner = self.inner.lock();
        let old: Vec<[u8; 16]> = inner
            .keys
            .iter()
            .filter(|(_, (at, seq))| *at < before && seq.is_none())
            .map(|(k, _)| *k)
            .take(limit)
            .collect();
        for k in &old {
            inner.keys.remove(k);
        }
        Ok(old.len())
    }

    fn counts(&self) -> Result<AuditCounts> {
        let inner = self.inner.lock();
        Ok(AuditCounts {
            queued: inner.queue.len() as u64,
            keys: inner.keys.len() as u64,
        })
    }

    fn usage(&self, since: i64, limit: usize) -> Result<Vec<UsageRow>> {
        let inner = self.inner.lock();
        Ok(inner
            .usage
            .range((since, Vec::new())..)
            .take(limit)
            .map(|((hour, series), counts)| UsageRow {
                hour: *hour,
                series: series.clone(),
                counts: counts.clone(),
            })
            .collect())
    }

    fn forget_usage(&self, before: i64) -> Result<usize> {
        let mut inner = self.inner.lock();
        let kept = inner.usage.split_off(&(before, Vec::new()));
        let gone = std::mem::replace(&mut inner.usage, kept);
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    crate::store::audit::conformance::audit_conformance_suite!(|| ((), super::MemAudit::new()));
}
