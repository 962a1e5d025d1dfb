//! The sled engine's [`AuditJournal`]: three trees in the store's own database.
//! - `audit_queue`: seq (big-endian u64) → key (16 bytes) ‖ time (big-endian i64 µs) ‖ value.
//! - `audit_keys`: key → time (big-endian i64 µs) ‖ seq (big-endian u64; 0 once done).
//! - `audit_times`: time (big-endian, sign bit flipped so that order is time order) ‖ key →
//!   empty, so that [`forget`](AuditJournal::forget) reads the oldest keys first.
//!
//! Seqs come from sled's `generate_id` (increasing, also across restarts), taken under a lock
//! held for the append's transaction, so that queue order is append order. Every call that
//! writes flushes before it returns.

use super::SharedDb;
use crate::store::audit::{AuditCounts, AuditEntry, AuditJournal, AuditSeq};
use crate::{Error, Result};
use jiff::Timestamp;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

const QUEUE_TREE: &str = "audit_queue";
const KEYS_TREE: &str = "audit_keys";
const TIMES_TREE: &str = "audit_times";

/// The journal's trees in the store's database.
pub(super) struct SledAudit {
    db: SharedDb,
    /// Serialises appends: seqs are taken and written in one order.
    append: parking_lot::Mutex<()>,
}

struct Trees {
    db: sled::Db,
    queue: sled::Tree,
    keys: sled::Tree,
    times: sled::Tree,
}

fn tx_error(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

fn micros(at: Timestamp) -> i64 {
    at.as_microsecond()
}

fn time_key(at: i64, key: &[u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(key);
    k
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("audit journal {what}"))
}

fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("record"))
}

fn decode_entry(v: &[u8]) -> Result<AuditEntry> {
    let key: [u8; 16] = v
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("entry"))?;
    let at = Timestamp::from_microsecond(u64_at(v, 16)? as i64).map_err(|_| corrupt("time"))?;
    Ok(AuditEntry {
        key,
        at,
        value: v[24..].to_vec(),
    })
}

impl SledAudit {
    pub(super) fn new(db: SharedDb) -> SledAudit {
        SledAudit {
            db,
            append: parking_lot::Mutex::new(()),
        }
    }

    fn trees(&self) -> Result<Trees> {
        let db = self.db.get()?;
        Ok(Trees {
            queue: db.open_tree(QUEUE_TREE)?,
            keys: db.open_tree(KEYS_TREE)?,
            times: db.open_tree(TIMES_TREE)?,
            db,
        })
    }
}

impl AuditJournal for SledAudit {
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.trees()?;
        let _order = self.append.lock();
        // Keys already remembered need no transaction; the rest are checked again inside it.
        let mut fresh = Vec::with_capacity(entries.len());
        for e in entries {
            fresh.push(!t.keys.contains_key(e.key)?);
        }
        let mut seqs = Vec::new();
        for _ in fresh.iter().filter(|&&f| f) {
            seqs.push(t.db.generate_id()? + 1);
        }
        let queued = (&t.queue, &t.keys, &t.times)
            .transaction(|(queue, keys, times)| {
                let mut queued = Vec::with_capacity(entries.len());
                let mut seq = seqs.iter();
                for (e, &f) in entries.iter().zip(&fresh) {
                    if !f || keys.get(e.key)?.is_some() {
                        queued.push(false);
                        continue;
                    }
                    let s = *seq.next().expect("a seq per fresh entry");
                    let at = micros(e.at);
                    let mut v = Vec::with_capacity(24 + e.value.len());
                    v.extend_from_slice(&e.key);
                    v.extend_from_slice(&(at as u64).to_be_bytes());
                    v.extend_from_slice(&e.value);
                    queue.insert(&s.to_be_bytes(), v)?;
                    let mut k = [0u8; 16];
                    k[..8].copy_from_slice(&(at as u64).to_be_bytes());
                    k[8..].copy_from_slice(&s.to_be_bytes());
                    keys.insert(&e.key, &k)?;
                    times.insert(&time_key(at, &e.key), &[])?;
                    queued.push(true);
                }
                Ok::<_, ConflictableTransactionError<Error>>(queued)
            })
            .map_err(tx_error)?;
        drop(_order);
        t.db.flush()?;
        Ok(queued)
    }

    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>> {
        let t = self.trees()?;
        let mut out = Vec::new();
        let from = after.map_or(0, |a| a.saturating_add(1)).to_be_bytes();
        for item in t.queue.range(from..).take(limit) {
            let (k, v) = item?;
            out.push((u64_at(&k, 0)?, decode_entry(&v)?));
        }
        Ok(out)
    }

    fn done(&self, seqs: &[AuditSeq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let t = self.trees()?;
        (&t.queue, &t.keys)
            .transaction(|(queue, keys)| {
                for s in seqs {
                    let Some(v) = queue.remove(&s.to_be_bytes())? else {
                        continue;
                    };
                    let key = &v[..16.min(v.len())];
                    if let Some(k) = keys.get(key)? {
                        let mut k = k.to_vec();
                        if k.len() == 16 {
                            k[8..].fill(0);
                            keys.insert(key, k)?;
                        }
                    }
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_error)?;
        t.db.flush()?;
        Ok(())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let t = self.trees()?;
        let end = time_key(micros(before), &[0; 16]);
        let mut forgotten = 0;
        let mut batch_keys = sled::Batch::default();
        let mut batch_times = sled::Batch::default();
        for item in t.times.range(..end.as_slice()) {
            if forgotten >= limit {
                break;
            }
            let (tk, _) = item?;
            let key = &tk[8..];
            match t.keys.get(key)? {
                // Queued: kept until done.
                Some(k) if u64_at(&k, 8)? != 0 => continue,
                Some(_) => batch_keys.remove(key),
                None => {}
            }
            batch_times.remove(tk);
            forgotten += 1;
        }
        if forgotten == 0 {
            return Ok(0);
        }
        // Keys first: a crash in between leaves a time row without a key, which the next pass
        // removes (counted again, harmlessly).
        t.keys.apply_batch(batch_keys)?;
        t.times.apply_batch(batch_times)?;
        t.db.flush()?;
        Ok(forgotten)
    }

    fn counts(&self) -> Result<AuditCounts> {
        let t = self.trees()?;
        Ok(AuditCounts {
            queued: t.queue.len() as u64,
            keys: t.keys.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    crate::store::audit::conformance::audit_conformance_suite!(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let journal = super::SledAudit::new(store.shared.clone());
        ((dir, store), journal)
    });
}
