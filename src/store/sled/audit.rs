//! The sled engine's [`AuditJournal`]: one tree, `audit`, in the store's own database, so that
//! every call is one atomic sled batch (a transaction over several trees costs several times
//! more), holding three kinds of row by their first byte:
//! - `q` ‖ seq (big-endian u64) → key (16 bytes) ‖ time (big-endian i64 µs) ‖ value: the queue.
//! - `k` ‖ key → time (big-endian i64 µs) ‖ seq (big-endian u64; 0 once done): remembered keys.
//! - `t` ‖ time (big-endian, sign bit flipped so that order is time order) ‖ key → empty, so
//!   that [`forget`](AuditJournal::forget) reads the oldest keys first.
//!
//! Seqs come from sled's `generate_id` (increasing, also across restarts), taken under a lock
//! held until the batch is applied, so that queue order is append order. Every call that writes
//! flushes before it returns.

use super::SharedDb;
use crate::store::audit::{AuditCounts, AuditEntry, AuditJournal, AuditSeq};
use crate::{Error, Result};
use jiff::Timestamp;
use std::collections::HashSet;

const TREE: &str = "audit";
const QUEUE: u8 = b'q';
const KEYS: u8 = b'k';
const TIMES: u8 = b't';

/// The journal's tree in the store's database.
pub(super) struct SledAudit {
    db: SharedDb,
    /// Serialises writes: seqs are taken and written in one order, and a key is checked and
    /// written by one call at a time.
    write: parking_lot::Mutex<()>,
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

fn queue_key(seq: AuditSeq) -> [u8; 9] {
    let mut k = [QUEUE; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn key_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(KEYS);
    k.extend_from_slice(key);
    k
}

fn time_key(at: i64, key: &[u8; 16]) -> [u8; 25] {
    let mut k = [TIMES; 25];
    k[1..9].copy_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k[9..].copy_from_slice(key);
    k
}

fn key_row(at: i64, seq: AuditSeq) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&(at as u64).to_be_bytes());
    v[8..].copy_from_slice(&seq.to_be_bytes());
    v
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
            write: parking_lot::Mutex::new(()),
        }
    }

    fn tree(&self) -> Result<(sled::Db, sled::Tree)> {
        let db = self.db.get()?;
        let tree = db.open_tree(TREE)?;
        Ok((db, tree))
    }
}

impl AuditJournal for SledAudit {
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (db, tree) = self.tree()?;
        let mut queued = Vec::with_capacity(entries.len());
        {
            let _order = self.write.lock();
            let mut batch = sled::Batch::default();
            let mut seen = HashSet::with_capacity(entries.len());
            for e in entries {
                if !seen.insert(e.key) || tree.contains_key(key_key(&e.key))? {
                    queued.push(false);
                    continue;
                }
                let seq = db.generate_id()? + 1;
                let at = e.at.as_microsecond();
                let mut v = Vec::with_capacity(24 + e.value.len());
                v.extend_from_slice(&e.key);
                v.extend_from_slice(&(at as u64).to_be_bytes());
                v.extend_from_slice(&e.value);
                batch.insert(&queue_key(seq), v);
                batch.insert(key_key(&e.key), &key_row(at, seq));
                batch.insert(&time_key(at, &e.key), &[]);
                queued.push(true);
            }
            if !queued.contains(&true) {
                return Ok(queued);
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        Ok(queued)
    }

    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>> {
        let (_, tree) = self.tree()?;
        let from = queue_key(after.map_or(0, |a| a.saturating_add(1)));
        let mut out = Vec::new();
        for item in tree
            .range(from.as_slice()..[QUEUE + 1].as_slice())
            .take(limit)
        {
            let (k, v) = item?;
            out.push((u64_at(&k, 1)?, decode_entry(&v)?));
        }
        Ok(out)
    }

    fn done(&self, seqs: &[AuditSeq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let (db, tree) = self.tree()?;
        {
            let _order = self.write.lock();
            let mut batch = sled::Batch::default();
            for &s in seqs {
                let Some(v) = tree.get(queue_key(s))? else {
                    continue;
                };
                batch.remove(&queue_key(s));
                let key = key_key(v.get(..16).ok_or_else(|| corrupt("entry"))?);
                if let Some(row) = tree.get(&key)? {
                    batch.insert(key, &key_row(u64_at(&row, 0)? as i64, 0));
                }
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        Ok(())
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let (db, tree) = self.tree()?;
        let end = time_key(before.as_microsecond(), &[0; 16]);
        let mut forgotten = 0;
        {
            let _order = self.write.lock();
            let mut batch = sled::Batch::default();
            for item in tree.range([TIMES].as_slice()..end.as_slice()) {
                if forgotten >= limit {
                    break;
                }
                let (tk, _) = item?;
                let key = key_key(&tk[9..]);
                match tree.get(&key)? {
                    // Queued: kept until done.
                    Some(row) if u64_at(&row, 8)? != 0 => continue,
                    Some(_) => batch.remove(key),
                    None => {}
                }
                batch.remove(tk);
                forgotten += 1;
            }
            if forgotten == 0 {
                return Ok(0);
            }
            tree.apply_batch(batch)?;
        }
        db.flush()?;
        Ok(forgotten)
    }

    fn counts(&self) -> Result<AuditCounts> {
        let (_, tree) = self.tree()?;
        Ok(AuditCounts {
            queued: tree.scan_prefix([QUEUE]).count() as u64,
            keys: tree.scan_prefix([KEYS]).count() as u64,
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

    /// A journal reopened after a crash holds what each call returned with.
    #[test]
    fn the_journal_survives_a_reopen() {
        use crate::store::AuditEntry;
        let dir = tempfile::tempdir().unwrap();
        let entry = |n: u8| AuditEntry {
            key: [n; 16],
            at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            value: vec![n; 3],
        };
        {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            let j = store.audit_journal();
            j.append(&[entry(1), entry(2), entry(3)]).unwrap();
            let q = j.queued(None, 10).unwrap();
            j.done(&[q[0].0]).unwrap();
        }
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let j = store.audit_journal();
        let q = j.queued(None, 10).unwrap();
        assert_eq!(q.iter().map(|(_, e)| e.key[0]).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(j.append(&[entry(1), entry(4)]).unwrap(), [false, true]);
        let q2 = j.queued(None, 10).unwrap();
        assert!(q2[2].0 > q[1].0, "seqs keep increasing across a reopen");
    }
}
