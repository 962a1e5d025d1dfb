//! The sled engine's [`KubeEventStore`]: one tree, `kube_events`, in the store's own database,
//! so that every call is one atomic sled batch, holding three kinds of row by their first byte:
//! - `u` ‖ uid → the record (JSON of [`KeptEvent`]);
//! - `o` ‖ namespace ‖ 0 ‖ kind ‖ 0 ‖ name ‖ 0 ‖ last seen ‖ uid → empty: Events by the object
//!   they regard, oldest first (names hold no NUL);
//! - `t` ‖ last seen ‖ uid → empty: for [`forget`](KubeEventStore::forget), oldest first.
//!
//! Times are big-endian µs with the sign bit flipped, so that byte order is time order. Every
//! call that writes flushes before it returns.

use super::SharedDb;
use crate::events::{KubeEvent, Seen};
use crate::store::kube_events::{KeptEvent, KubeEventStore, MAX_REGARDING, Regarding, take_into};
use crate::{Error, Result};
use jiff::Timestamp;
use std::collections::HashMap;

const TREE: &str = "kube_events";
const RECORD: u8 = b'u';
const BY_OBJECT: u8 = b'o';
const BY_TIME: u8 = b't';

/// The Events' tree in the store's database.
pub(super) struct SledKubeEvents {
    db: SharedDb,
    /// Serialises writes: a record is read and written by one call at a time.
    write: parking_lot::Mutex<()>,
}

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("kube events {what}"))
}

fn ordered(t: Timestamp) -> [u8; 8] {
    ((t.as_microsecond() as u64) ^ (1 << 63)).to_be_bytes()
}

fn record_key(uid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + uid.len());
    k.push(RECORD);
    k.extend_from_slice(uid.as_bytes());
    k
}

fn object_prefix(r: &Regarding) -> Vec<u8> {
    let mut k = vec![BY_OBJECT];
    for part in [&r.namespace, &r.kind, &r.name] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k
}

fn object_key(e: &KubeEvent) -> Vec<u8> {
    let mut k = object_prefix(&Regarding::of(e));
    k.extend_from_slice(&ordered(e.last_seen));
    k.extend_from_slice(e.uid.as_bytes());
    k
}

fn time_key(e: &KubeEvent) -> Vec<u8> {
    let mut k = vec![BY_TIME];
    k.extend_from_slice(&ordered(e.last_seen));
    k.extend_from_slice(e.uid.as_bytes());
    k
}

fn decode(v: &[u8]) -> Result<KeptEvent> {
    serde_json::from_slice(v).map_err(|_| corrupt("record"))
}

impl SledKubeEvents {
    pub(super) fn new(db: SharedDb) -> SledKubeEvents {
        SledKubeEvents {
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

impl KubeEventStore for SledKubeEvents {
    fn record(&self, events: &[KubeEvent]) -> Result<Vec<Seen>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (db, tree) = self.tree()?;
        let _order = self.write.lock();
        let mut records: HashMap<String, KeptEvent> = HashMap::new();
        for e in events {
            if !records.contains_key(&e.uid)
                && let Some(v) = tree.get(record_key(&e.uid))?
            {
                records.insert(e.uid.clone(), decode(&v)?);
            }
        }
        let stored: HashMap<String, KubeEvent> = records
            .iter()
            .map(|(uid, k)| (uid.clone(), k.event.clone()))
            .collect();
        let seen = take_into(&mut records, events);
        let mut batch = sled::Batch::default();
        let mut writes = 0;
        for (uid, kept) in &records {
            let old = stored.get(uid);
            if old == Some(&kept.event) {
                continue;
            }
            if let Some(old) = old {
                batch.remove(object_key(old));
                batch.remove(time_key(old));
            }
            let value = serde_json::to_vec(kept).map_err(|_| corrupt("record"))?;
            batch.insert(record_key(uid), value);
            batch.insert(object_key(&kept.event), &[]);
            batch.insert(time_key(&kept.event), &[]);
            writes += 1;
        }
        if writes > 0 {
            tree.apply_batch(batch)?;
            db.flush()?;
        }
        Ok(seen)
    }

    fn regarding(
        &self,
        objects: &[Regarding],
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<KeptEvent>> {
        let (_, tree) = self.tree()?;
        let limit = limit.min(MAX_REGARDING);
        let mut out = Vec::new();
        for object in objects {
            let prefix = object_prefix(object);
            let mut from = prefix.clone();
            from.extend_from_slice(&ordered(since));
            let mut end = prefix.clone();
            end.extend_from_slice(&[0xff; 9]);
            // Newest first, at most `limit` of each object: the merge below keeps the newest.
            for item in tree.range(from..end).rev().take(limit) {
                let (k, _) = item?;
                let uid =
                    std::str::from_utf8(&k[prefix.len() + 8..]).map_err(|_| corrupt("key"))?;
                if let Some(v) = tree.get(record_key(uid))? {
                    out.push(decode(&v)?);
                }
            }
        }
        out.sort_by(|a, b| {
            (b.event.last_seen, &b.event.uid).cmp(&(a.event.last_seen, &a.event.uid))
        });
        out.dedup_by(|a, b| a.event.uid == b.event.uid);
        out.truncate(limit);
        Ok(out)
    }

    fn get(&self, uid: &str) -> Result<Option<KeptEvent>> {
        let (_, tree) = self.tree()?;
        tree.get(record_key(uid))?.map(|v| decode(&v)).transpose()
    }

    fn forget(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let (db, tree) = self.tree()?;
        let _order = self.write.lock();
        let mut end = vec![BY_TIME];
        end.extend_from_slice(&ordered(before));
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.range(vec![BY_TIME]..end).take(limit) {
            let (k, _) = item?;
            let uid = std::str::from_utf8(&k[9..]).map_err(|_| corrupt("key"))?;
            if let Some(v) = tree.get(record_key(uid))? {
                batch.remove(object_key(&decode(&v)?.event));
            }
            batch.remove(record_key(uid));
            batch.remove(k);
            n += 1;
        }
        if n > 0 {
            tree.apply_batch(batch)?;
            db.flush()?;
        }
        Ok(n)
    }

    fn count(&self) -> Result<u64> {
        let (_, tree) = self.tree()?;
        Ok(tree.scan_prefix([RECORD]).count() as u64)
    }
}

#[cfg(test)]
mod tests {
    crate::store::kube_events::conformance::kube_events_conformance_suite!(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let events = super::SledKubeEvents::new(store.shared.clone());
        ((dir, store), events)
    });

    /// A store reopened holds what each call returned with, and a relist after the restart adds
    /// nothing.
    #[test]
    fn records_survive_a_reopen() {
        use crate::events::{Seen, record};
        let dir = tempfile::tempdir().unwrap();
        let line = include_str!("../../../tests/fixtures/v1.33/watch/core-events.jsonl")
            .lines()
            .nth(3)
            .unwrap();
        let w: serde_json::Value = serde_json::from_str(line).unwrap();
        let e = record::parse(&w["object"]).unwrap();
        {
            let store = crate::store::SledStore::open(dir.path()).unwrap();
            assert_eq!(
                store
                    .kube_events()
                    .record(std::slice::from_ref(&e))
                    .unwrap(),
                [Seen::New { count: 3 }]
            );
        }
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let events = store.kube_events();
        assert_eq!(
            events.record(std::slice::from_ref(&e)).unwrap(),
            [Seen::Same]
        );
        assert_eq!(events.get(&e.uid).unwrap().unwrap().event, e);
    }
}
