//! The sled engine's [`AuditJournal`]: one tree, `audit.journal`, in the store's own database.
//!
//! A sled row costs about 5 µs to write whatever it holds, and the journal takes every audit
//! event of a cluster, so rows are per append, not per event:
//! - `b` ‖ batch (big-endian u64) → the entries of one append, each key (16 bytes) ‖ time
//!   (big-endian i64 µs) ‖ length (big-endian u32) ‖ value;
//! - `d` ‖ batch → a mark for each of its entries while only some are done: queued (0), done
//!   (1), or done and forgotten (2);
//! - `r` ‖ oldest time (big-endian, sign bit flipped so that order is time order) ‖ batch → the
//!   keys and times of a batch whose entries are all done: what is remembered for dedupe until
//!   [`forget`](AuditJournal::forget) drops them;
//! - `u` ‖ hour (flipped as above) ‖ series → the usage counts (eight big-endian u64/i64).
//!
//! An entry's seq is its batch ‖ its index in the batch (the low [`INDEX_BITS`] bits). Batch
//! numbers come from sled's `generate_id` (increasing, also across restarts).
//!
//! The keys (queued and remembered) are also held in memory, loaded from the rows on first use,
//! so that an append checks them without reading: about 40 bytes a key, the events of the
//! `--audit-remember` window. Only this process writes the tree (sled locks its directory), and
//! every write updates memory once it is durable; a failed write drops memory, to be loaded
//! again from what the disk holds. Every call that writes flushes before it returns.
//!
//! The layout of earlier versions (tree `audit`: one queue row, one key row and one time row per
//! event) is converted on first use.

use super::SharedDb;
use crate::store::audit::{AuditCounts, AuditEntry, AuditJournal, AuditSeq, UsageRow};
use crate::usage::Counts;
use crate::{Error, Result};
use jiff::Timestamp;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};

const TREE: &str = "audit.journal";
const OLD_TREE: &str = "audit";
const BATCH: u8 = b'b';
const DONE: u8 = b'd';
const REMEMBERED: u8 = b'r';
const USAGE: u8 = b'u';
/// Marks a tree converted from the old layout, so that a crash before the old tree is dropped
/// does not convert it twice.
const CONVERTED: &[u8] = b"m.converted";

/// Bits of a seq that index an entry in its batch; appends of more entries are split.
const INDEX_BITS: u32 = 20;
const MAX_BATCH: usize = 1 << INDEX_BITS;

/// The journal's tree in the store's database.
pub(super) struct SledAudit {
    db: SharedDb,
    /// Serialises writes and holds the keys; `None` until loaded, and after a failed write.
    state: Mutex<Option<State>>,
}

/// What memory holds of the tree.
#[derive(Default)]
struct State {
    /// Every remembered key (queued or done) → its entry's time (µs).
    keys: HashMap<[u8; 16], i64>,
    /// Batches with queued entries.
    batches: BTreeMap<u64, Pending>,
}

/// A batch with queued entries.
#[derive(Clone)]
struct Pending {
    keys: Vec<([u8; 16], i64)>,
    /// One of [`QUEUED`], [`TAKEN`], [`FORGOTTEN`] per entry.
    marks: Vec<u8>,
}

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const FORGOTTEN: u8 = 2;

impl Pending {
    fn queued(&self) -> usize {
        self.marks.iter().filter(|m| **m == QUEUED).count()
    }

    /// The keys still remembered once every entry is done.
    fn remembered(&self) -> Vec<([u8; 16], i64)> {
        self.keys
            .iter()
            .zip(&self.marks)
            .filter(|(_, m)| **m != FORGOTTEN)
            .map(|(k, _)| *k)
            .collect()
    }
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("audit journal {what}"))
}

fn be_u64(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("record"))
}

/// Times and hours as keys: big-endian with the sign bit flipped, so that byte order is order.
fn ordered(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn unordered(b: &[u8]) -> Result<i64> {
    Ok((be_u64(b, 0)? ^ (1 << 63)) as i64)
}

fn row_key(tag: u8, batch: u64) -> [u8; 9] {
    let mut k = [tag; 9];
    k[1..].copy_from_slice(&batch.to_be_bytes());
    k
}

fn remembered_key(oldest: i64, batch: u64) -> [u8; 17] {
    let mut k = [REMEMBERED; 17];
    k[1..9].copy_from_slice(&ordered(oldest));
    k[9..].copy_from_slice(&batch.to_be_bytes());
    k
}

fn usage_key(hour: i64, series: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + series.len());
    k.push(USAGE);
    k.extend_from_slice(&ordered(hour));
    k.extend_from_slice(series);
    k
}

fn seq(batch: u64, index: usize) -> AuditSeq {
    (batch << INDEX_BITS) | index as u64
}

fn encode_batch(entries: &[&AuditEntry]) -> Vec<u8> {
    let len = entries.iter().map(|e| 28 + e.value.len()).sum();
    let mut v = Vec::with_capacity(len);
    for e in entries {
        v.extend_from_slice(&e.key);
        v.extend_from_slice(&e.at.as_microsecond().to_be_bytes());
        v.extend_from_slice(&(e.value.len() as u32).to_be_bytes());
        v.extend_from_slice(&e.value);
    }
    v
}

/// One entry of a batch row: key, time (µs), where its value is in the row.
type RowEntry = ([u8; 16], i64, std::ops::Range<usize>);

/// A batch row's entries.
fn decode_batch(v: &[u8]) -> Result<Vec<RowEntry>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < v.len() {
        let head = v.get(at..at + 28).ok_or_else(|| corrupt("batch"))?;
        let key: [u8; 16] = head[..16].try_into().map_err(|_| corrupt("batch"))?;
        let time = be_u64(head, 16)? as i64;
        let len = u32::from_be_bytes(head[24..28].try_into().map_err(|_| corrupt("batch"))?);
        let start = at + 28;
        let end = start + len as usize;
        if end > v.len() {
            return Err(corrupt("batch"));
        }
        out.push((key, time, start..end));
        at = end;
    }
    Ok(out)
}

fn encode_keys(keys: &[([u8; 16], i64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(keys.len() * 24);
    for (k, t) in keys {
        v.extend_from_slice(k);
        v.extend_from_slice(&t.to_be_bytes());
    }
    v
}

fn decode_keys(v: &[u8]) -> Result<Vec<([u8; 16], i64)>> {
    if !v.len().is_multiple_of(24) {
        return Err(corrupt("keys"));
    }
    v.chunks_exact(24)
        .map(|c| {
            Ok((
                c[..16].try_into().map_err(|_| corrupt("keys"))?,
                be_u64(c, 16)? as i64,
            ))
        })
        .collect()
}

fn encode_counts(c: &Counts) -> [u8; 64] {
    let time = |t: Option<Timestamp>| t.map_or(i64::MIN, |t| t.as_microsecond()) as u64;
    let mut v = [0u8; 64];
    let tallies = c.tallies();
    let fields = tallies
        .iter()
        .copied()
        .chain([time(c.first_seen), time(c.last_seen)]);
    for (i, f) in fields.enumerate() {
        v[i * 8..i * 8 + 8].copy_from_slice(&f.to_be_bytes());
    }
    v
}

fn decode_counts(v: &[u8]) -> Result<Counts> {
    let time = |at: usize| -> Result<Option<Timestamp>> {
        match be_u64(v, at)? as i64 {
            i64::MIN => Ok(None),
            t => Timestamp::from_microsecond(t)
                .map(Some)
                .map_err(|_| corrupt("usage time")),
        }
    };
    let mut tallies = [0u64; 6];
    for (i, t) in tallies.iter_mut().enumerate() {
        *t = be_u64(v, i * 8)?;
    }
    Ok(Counts::from_tallies(tallies, time(48)?, time(56)?))
}

impl SledAudit {
    pub(super) fn new(db: SharedDb) -> SledAudit {
        SledAudit {
            db,
            state: Mutex::new(None),
        }
    }

    fn tree(&self) -> Result<(sled::Db, sled::Tree)> {
        let db = self.db.get()?;
        let tree = db.open_tree(TREE)?;
        Ok((db, tree))
    }

    /// Runs `f` on the loaded state, holding the write lock; a failure drops the state.
    fn with_state<T>(
        &self,
        f: impl FnOnce(&sled::Db, &sled::Tree, &mut State) -> Result<T>,
    ) -> Result<T> {
        let (db, tree) = self.tree()?;
        let mut guard = self.state.lock();
        if guard.is_none() {
            *guard = Some(load(&db, &tree)?);
        }
        let result = f(&db, &tree, guard.as_mut().expect("loaded"));
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

/// Reads the keys and pending batches from the tree, converting the old layout first.
fn load(db: &sled::Db, tree: &sled::Tree) -> Result<State> {
    convert_old_layout(db, tree)?;
    let mut state = State::default();
    for item in tree.scan_prefix([BATCH]) {
        let (k, v) = item?;
        let batch = be_u64(&k, 1)?;
        let keys: Vec<_> = decode_batch(&v)?
            .into_iter()
            .map(|(key, at, _)| (key, at))
            .collect();
        let marks = match tree.get(row_key(DONE, batch))? {
            Some(d) if d.len() == keys.len() && d.iter().all(|m| *m <= FORGOTTEN) => d.to_vec(),
            Some(_) => return Err(corrupt("done marks")),
            None => vec![QUEUED; keys.len()],
        };
        let pending = Pending { keys, marks };
        state.keys.extend(
            pending
                .keys
                .iter()
                .zip(&pending.marks)
                .filter(|(_, m)| **m != FORGOTTEN)
                .map(|(k, _)| *k),
        );
        state.batches.insert(batch, pending);
    }
    for item in tree.scan_prefix([REMEMBERED]) {
        let (_, v) = item?;
        state.keys.extend(decode_keys(&v)?);
    }
    Ok(state)
}

/// Moves the old layout's rows (tree `audit`: `q` ‖ seq → key ‖ time ‖ value, `k` ‖ key →
/// time ‖ seq, 0 once done) into one batch and one remembered row, then drops the old tree.
fn convert_old_layout(db: &sled::Db, tree: &sled::Tree) -> Result<()> {
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == OLD_TREE.as_bytes())
    {
        return Ok(());
    }
    if !tree.contains_key(CONVERTED)? {
        let old = db.open_tree(OLD_TREE)?;
        let mut queued = Vec::new();
        for item in old.scan_prefix([b'q']) {
            let (_, v) = item?;
            let key: [u8; 16] = v
                .get(..16)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| corrupt("old entry"))?;
            let at = Timestamp::from_microsecond(be_u64(&v, 16)? as i64)
                .map_err(|_| corrupt("old entry"))?;
            queued.push(AuditEntry {
                key,
                at,
                value: v[24..].to_vec(),
            });
        }
        let mut done = Vec::new();
        for item in old.scan_prefix([b'k']) {
            let (k, v) = item?;
            if be_u64(&v, 8)? == 0 {
                let key = k.get(1..17).and_then(|s| s.try_into().ok());
                done.push((
                    key.ok_or_else(|| corrupt("old key"))?,
                    be_u64(&v, 0)? as i64,
                ));
            }
        }
        let mut batch = sled::Batch::default();
        for chunk in queued.chunks(MAX_BATCH) {
            let refs: Vec<&AuditEntry> = chunk.iter().collect();
            batch.insert(&row_key(BATCH, db.generate_id()? + 1), encode_batch(&refs));
        }
        if let Some(oldest) = done.iter().map(|(_, t)| *t).min() {
            batch.insert(
                &remembered_key(oldest, db.generate_id()? + 1),
                encode_keys(&done),
            );
        }
        batch.insert(CONVERTED, &[]);
        tree.apply_batch(batch)?;
        db.flush()?;
    }
    db.drop_tree(OLD_TREE)?;
    db.flush()?;
    Ok(())
}

impl AuditJournal for SledAudit {
    fn append(&self, entries: &[AuditEntry]) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        self.with_state(|db, tree, state| {
            let mut fresh: HashMap<[u8; 16], ()> = HashMap::new();
            let mut queued = Vec::with_capacity(entries.len());
            let mut taken = Vec::new();
            for e in entries {
                let new = !state.keys.contains_key(&e.key) && fresh.insert(e.key, ()).is_none();
                if new {
                    taken.push(e);
                }
                queued.push(new);
            }
            if taken.is_empty() {
                return Ok(queued);
            }
            let mut batch = sled::Batch::default();
            let mut pending = Vec::new();
            for chunk in taken.chunks(MAX_BATCH) {
                let id = db.generate_id()? + 1;
                batch.insert(&row_key(BATCH, id), encode_batch(chunk));
                let keys: Vec<_> = chunk
                    .iter()
                    .map(|e| (e.key, e.at.as_microsecond()))
                    .collect();
                pending.push((id, keys));
            }
            tree.apply_batch(batch)?;
            db.flush()?;
            for (id, keys) in pending {
                state.keys.extend(keys.iter().copied());
                let marks = vec![QUEUED; keys.len()];
                state.batches.insert(id, Pending { keys, marks });
            }
            Ok(queued)
        })
    }

    fn queued(&self, after: Option<AuditSeq>, limit: usize) -> Result<Vec<(AuditSeq, AuditEntry)>> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let (first_batch, first_index) = (from >> INDEX_BITS, (from & (MAX_BATCH as u64 - 1)));
        // What is pending, copied under the lock; the batch rows are read without it (a batch
        // row never changes, and one taken out meanwhile is skipped).
        let pending: Vec<(u64, Vec<u8>)> = self.with_state(|_, _, state| {
            let mut out = Vec::new();
            let mut left = limit;
            for (&id, p) in state.batches.range(first_batch..) {
                if left == 0 {
                    break;
                }
                let skip = if id == first_batch {
                    first_index as usize
                } else {
                    0
                };
                let n = p.marks.iter().skip(skip).filter(|m| **m == QUEUED).count();
                if n > 0 {
                    out.push((id, p.marks.clone()));
                    left = left.saturating_sub(n);
                }
            }
            Ok(out)
        })?;
        let (_, tree) = self.tree()?;
        let mut out = Vec::new();
        for (id, marks) in pending {
            let Some(v) = tree.get(row_key(BATCH, id))? else {
                continue;
            };
            for (i, (key, at, range)) in decode_batch(&v)?.into_iter().enumerate() {
                let s = seq(id, i);
                if s < from || marks.get(i) != Some(&QUEUED) {
                    continue;
                }
                if out.len() == limit {
                    return Ok(out);
                }
                let at = Timestamp::from_microsecond(at).map_err(|_| corrupt("time"))?;
                out.push((
                    s,
                    AuditEntry {
                        key,
                        at,
                        value: v[range].to_vec(),
                    },
                ));
            }
        }
        Ok(out)
    }

    fn done(&self, seqs: &[AuditSeq], usage: &[UsageRow]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.with_state(|db, tree, state| {
            let mut marks: BTreeMap<u64, Pending> = BTreeMap::new();
            for &s in seqs {
                let (id, i) = (s >> INDEX_BITS, (s & (MAX_BATCH as u64 - 1)) as usize);
                let Some(p) = state.batches.get(&id) else {
                    continue;
                };
                let p = marks.entry(id).or_insert_with(|| p.clone());
                if let Some(m) = p.marks.get_mut(i).filter(|m| **m == QUEUED) {
                    *m = TAKEN;
                }
            }
            let took = marks
                .iter()
                .any(|(id, p)| p.queued() < state.batches[id].queued());
            if !took {
                return Ok(());
            }
            let mut batch = sled::Batch::default();
            for (&id, p) in &marks {
                if p.queued() == 0 {
                    batch.remove(&row_key(BATCH, id));
                    batch.remove(&row_key(DONE, id));
                    let keys = p.remembered();
                    if let Some(oldest) = keys.iter().map(|(_, t)| *t).min() {
                        batch.insert(&remembered_key(oldest, id), encode_keys(&keys));
                    }
                } else {
                    batch.insert(&row_key(DONE, id), p.marks.clone());
                }
            }
            let mut added: HashMap<Vec<u8>, Counts> = HashMap::new();
            for row in usage {
                let key = usage_key(row.hour, &row.series);
                let counts = match added.remove(&key) {
                    Some(c) => c,
                    None => match tree.get(&key)? {
                        Some(v) => decode_counts(&v)?,
                        None => Counts::default(),
                    },
                };
                let mut counts = counts;
                counts.merge(&row.counts);
                added.insert(key, counts);
            }
            for (key, counts) in &added {
                batch.insert(key.as_slice(), &encode_counts(counts)[..]);
            }
            tree.apply_batch(batch)?;
            db.flush()?;
            for (id, p) in marks {
                if p.queued() == 0 {
                    state.batches.remove(&id);
                } else {
                    state.batches.insert(id, p);
                }
            }
            Ok(())
        })
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let before = before.as_microsecond();
        self.with_state(|db, tree, state| {
            let end = remembered_key(before, 0);
            let mut forgotten = Vec::new();
            let mut batch = sled::Batch::default();
            for item in tree.range(&[REMEMBERED][..]..&end[..]) {
                if forgotten.len() >= limit {
                    break;
                }
                let (k, v) = item?;
                let id = be_u64(&k, 9)?;
                let keys = decode_keys(&v)?;
                let (mut old, kept): (Vec<_>, Vec<_>) =
                    keys.into_iter().partition(|(_, t)| *t < before);
                let room = limit - forgotten.len();
                let mut kept = kept;
                if old.len() > room {
                    kept.extend(old.drain(room..));
                }
                batch.remove(k);
                if let Some(oldest) = kept.iter().map(|(_, t)| *t).min() {
                    batch.insert(&remembered_key(oldest, id), encode_keys(&kept));
                }
                forgotten.extend(old.into_iter().map(|(key, _)| key));
            }
            // Done entries of batches with some still queued.
            let mut marked = Vec::new();
            for (&id, p) in &state.batches {
                if forgotten.len() >= limit {
                    break;
                }
                let mut p = p.clone();
                let mut changed = false;
                for (m, (key, at)) in p.marks.iter_mut().zip(&p.keys) {
                    if *m == TAKEN && *at < before && forgotten.len() < limit {
                        *m = FORGOTTEN;
                        forgotten.push(*key);
                        changed = true;
                    }
                }
                if changed {
                    batch.insert(&row_key(DONE, id), p.marks.clone());
                    marked.push((id, p));
                }
            }
            if forgotten.is_empty() {
                return Ok(0);
            }
            tree.apply_batch(batch)?;
            db.flush()?;
            for key in &forgotten {
                state.keys.remove(key);
            }
            state.batches.extend(marked);
            Ok(forgotten.len())
        })
    }

    fn counts(&self) -> Result<AuditCounts> {
        self.with_state(|_, _, state| {
            Ok(AuditCounts {
                queued: state.batches.values().map(|p| p.queued() as u64).sum(),
                keys: state.keys.len() as u64,
            })
        })
    }

    fn usage(&self, since: i64, limit: usize) -> Result<Vec<UsageRow>> {
        let (_, tree) = self.tree()?;
        let mut out = Vec::new();
        for item in tree
            .range(usage_key(since, &[])..[USAGE + 1].to_vec())
            .take(limit)
        {
            let (k, v) = item?;
            out.push(UsageRow {
                hour: unordered(k.get(1..9).ok_or_else(|| corrupt("usage"))?)?,
                series: k[9..].to_vec(),
                counts: decode_counts(&v)?,
            });
        }
        Ok(out)
    }

    fn forget_usage(&self, before: i64) -> Result<usize> {
        let end = usage_key(before, &[]);
        self.with_state(|db, tree, _| {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in tree.range(&[USAGE][..]..end.as_slice()) {
                batch.remove(item?.0);
                n += 1;
            }
            if n > 0 {
                tree.apply_batch(batch)?;
                db.flush()?;
            }
            Ok(n)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::store::AuditEntry;

    crate::store::audit::conformance::audit_conformance_suite!(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let journal = super::SledAudit::new(store.shared.clone());
        ((dir, store), journal)
    });

    fn entry(n: u8) -> AuditEntry {
        AuditEntry {
            key: [n; 16],
            at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            value: vec![n; 3],
        }
    }

    /// A journal reopened after a crash holds what each call returned with.
    #[test]
    fn the_journal_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            let j = store.audit_journal();
            j.append(&[entry(1), entry(2), entry(3)]).unwrap();
            let q = j.queued(None, 10).unwrap();
            j.done(&[q[0].0], &[]).unwrap();
        }
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let j = store.audit_journal();
        let q = j.queued(None, 10).unwrap();
        assert_eq!(q.iter().map(|(_, e)| e.key[0]).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(j.append(&[entry(1), entry(4)]).unwrap(), [false, true]);
        let q2 = j.queued(None, 10).unwrap();
        assert!(q2[2].0 > q[1].0, "seqs keep increasing across a reopen");
        j.done(&[q2[0].0, q2[1].0, q2[2].0], &[]).unwrap();
        drop((j, store));
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let j = store.audit_journal();
        assert_eq!(
            j.append(&[entry(1), entry(2), entry(4), entry(5)]).unwrap(),
            [false, false, false, true],
            "keys of batches wholly done are remembered across a reopen"
        );
    }

    /// A store written by a version with the old layout (one queue, key and time row per
    /// event, in tree `audit`) keeps its queue and its keys.
    #[test]
    fn the_old_layout_is_converted_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let old = db.open_tree("audit").unwrap();
            let at: i64 = 1_700_000_000_000_000;
            for (n, seq) in [(1u8, 7u64), (2, 0)] {
                let mut k = vec![b'k'];
                k.extend_from_slice(&[n; 16]);
                let mut v = (at as u64).to_be_bytes().to_vec();
                v.extend_from_slice(&seq.to_be_bytes());
                old.insert(k, v).unwrap();
            }
            let mut q = vec![b'q'];
            q.extend_from_slice(&7u64.to_be_bytes());
            let mut v = [1u8; 16].to_vec();
            v.extend_from_slice(&(at as u64).to_be_bytes());
            v.extend_from_slice(b"one");
            old.insert(q, v).unwrap();
            db.flush().unwrap();
        }
        for _ in 0..2 {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            let j = store.audit_journal();
            let q = j.queued(None, 10).unwrap();
            assert_eq!(q.len(), 1);
            assert_eq!(
                (q[0].1.key, q[0].1.value.as_slice()),
                ([1; 16], &b"one"[..])
            );
            assert_eq!(j.append(&[entry(1), entry(2)]).unwrap(), [false, false]);
            assert_eq!(j.counts().unwrap().keys, 2);
        }
    }
}
