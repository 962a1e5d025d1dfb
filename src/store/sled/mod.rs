//! [`SledStore`]: the [`EventStore`] on an embedded sled database.
//!
//! Trees (all in one `sled::Db`, so one `flush` makes a whole batch durable):
//! - `events`: id → compact event record ([`codec`]); the cluster-wide index is this tree itself.
//!   Each record links to the previous event of its object, so an object's history is a chain
//!   from its head (retention bounds its length) and costs no index rows.
//! - `snaps`: id → full object state (JSON) after that event, for the few events that carry one.
//! - `ix`: namespace and user indexes at a coarse grain: `tag ‖ hash(subject) ‖ time bucket` →
//!   empty, one row per subject per [`BUCKET_SHIFT`]-sized slice of time in which it had events;
//!   a query scans the events of those slices only.
//! - `targets`: `hash(group/resource, name) ‖ hash(object)` → empty: kind+name → objects.
//! - `heads`: hash(object) → [`Head`]: last event, event count, events since a snapshot; written
//!   once per batch (a crash in between is repaired on open from `meta`'s `heads_through`).
//! - `dict`: id → tagged string, for the strings events repeat (users, resources, policies...).
//! - `kinds`: alias ‖ 0 ‖ group/resource → empty, so queries accept `Deployment` or `deploy...`.
//! - `meta`: last id, event count, clean-shutdown flag.
//! - `cursors`: key → value, the small durable values of [`EventStore::cursor`] (a watch's
//!   resourceVersion).
//! - `notify_outbox`, `notify_digest`, `notify_meta`: the notification outbox ([`outbox`]).
//! - `audit_queue`, `audit_keys`, `audit_times`: the audit journal ([`audit`]).
//!
//! Objects are stored as deltas (the event's `changes`) with a full snapshot on an object's first
//! event, when the delta would not reproduce the object exactly, and every
//! [`SNAPSHOT_EVERY`](super::SNAPSHOT_EVERY) events ([`history`] decides, and rebuilds). When the pipeline's `before` is not the state the store last saw (the object changed
//! unseen: downtime, a dropped event, another replica), the record also carries that unseen change
//! as a delta (its gap, `F_GAP`) rather than starting over with a snapshot. The writer keeps
//! recent states in memory, so checking and extending a chain costs no reads.
//!
//! Why so few rows: sled costs 100–150 bytes on disk per row written, whatever its size (log
//! records, page rewrites, segment slack). A row per index per event would triple disk use, so
//! the only per-event row is the event itself (plus a snapshot every so often).
//!
//! Request-uid dedupe uses an in-memory window ([`DEDUPE_WINDOW`]) rebuilt from the newest events
//! on open rather than a persisted uid → id tree: the apiserver only repeats a request uid for
//! retries and for several webhooks of one request, all within its 30 s webhook timeout, and the
//! tree would cost more disk per event than the event itself.

use self::codec::{Head, Reader};
use self::keys::{TAG_NAMESPACE, TAG_USER};
use super::history::{self, ChainPos, Link, RecordSource};
use super::query::{self, KindAliases, PageBuilder};
use super::recent::Recent;
use super::retention::{CountWalk, MAX_REMOVALS_PER_PASS, Rules};
use super::{
    AppendOutcome, DEDUPE_WINDOW, EmptiedObject, EventId, EventStore, ObjectHead, Page, Query,
    Resolution, RetentionReport, RetentionRule, StoreStats, StoredEvent,
};
use crate::crd::Operation;
use crate::pipeline::{
    Actor, AuditInfo, Captured, ChangeEvent, ChangeState, FieldChange, KindId, ResourceId,
};
use crate::store::audit::AuditJournal;
use crate::store::outbox::OutboxStore;
use crate::{Error, Result};
use jiff::Timestamp;
use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;
use sled::Tree;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use self::spool::{DEFAULT_SPOOL_BYTES, Spool, Spooled};

mod audit;
mod codec;
mod keys;
mod kube_events;
mod outbox;
mod spool;
#[cfg(test)]
mod tests;

// The dedupe window ([`DEDUPE_WINDOW`]) at 12,000 events/s is ~1.4 M entries of 40-odd bytes.

/// Index rows cover `2^BUCKET_SHIFT` µs of ids (about 4 s): a query by namespace or user scans
/// at most that slice of events per row, and a busy subject writes at most one row per slice.
pub const BUCKET_SHIFT: u32 = 22;

/// Most removals per hold of the writer lock: well under a millisecond of work, so reviews
/// waiting on a group commit barely wait on retention.
const PRUNE_CHUNK: usize = 64;

/// Current states kept in memory for the writer (used when a subresource event must be applied
/// to its parent). Past this the cache is dropped and states are rebuilt from disk on demand.
const STATE_CACHE: usize = 4096;

/// Object heads kept in memory. Heads live on disk (the `heads` tree); this is a cache of them,
/// dropped whole once past the bound after a batch's heads are written (all are persisted then),
/// so memory stays at most this many heads (~40 bytes each, plus the map) however many objects
/// the store has seen. (64 in unit tests, so that every store test runs through evictions.)
pub const HEADS_CACHE: usize = if cfg!(test) { 64 } else { 65_536 };

/// Retention pauses for [`PACE`] every this many chain steps and after every chunk it prunes.
const PACE_EVERY: usize = 256;
const PACE: std::time::Duration = std::time::Duration::from_micros(500);

/// How often retention re-examines every object and every old event, not only what changed.
const FULL_RETENTION_SCAN_US: i64 = 60 * 1_000_000;

// Event record flag bits (the low two bits hold the operation).
const F_REDACTED: u8 = 1 << 2;
/// The state after this event is not known (a subresource change on an object whose state the
/// store did not have).
const F_UNKNOWN_STATE: u8 = 1 << 3;
/// The pipeline's `before` did not match the stored state: the state before this event is not the
/// state after the object's previous stored event.
const F_CHAIN_BREAK: u8 = 1 << 4;
const F_HAS_NS: u8 = 1 << 5;
const F_HAS_UID: u8 = 1 << 6;
/// The record carries the unseen change of a chain break as a delta of its own (the `gap`), so
/// the state before the event is known without a snapshot.
const F_GAP: u8 = 1 << 7;

// Dictionary tags.
const D_USER: u8 = b'u';
const D_RESOURCE: u8 = b'r';
const D_KIND: u8 = b'k';
const D_POLICY: u8 = b'p';
const D_NAMESPACE: u8 = b'n';

const META_LAST_ID: &[u8] = b"last_id";
const META_COUNT: &[u8] = b"count";
const META_CLEAN: &[u8] = b"clean";
/// Newest event whose object head is persisted: heads are written once per batch, so after a
/// crash the events past this one may need their heads repaired.
const META_HEADS_THROUGH: &[u8] = b"heads_through";

/// The sled-backed event store. Cheap to share behind an `Arc`; appends and retention serialise on
/// an internal lock, queries run concurrently with them.
pub struct SledStore {
    /// The directory, to reopen the database after a write failure.
    path: PathBuf,
    /// The open database and its trees; `None` while it is being reopened.
    trees: parking_lot::RwLock<Option<Arc<Trees>>>,
    /// The database as the notification outbox reaches it.
    shared: SharedDb,
    dict: RwLock<Dict>,
    kinds: RwLock<KindAliases>,
    count: AtomicU64,
    writer: Mutex<Writer>,
    /// One retention pass at a time: a pass walks chains before it takes the writer lock.
    retention: Mutex<()>,
    /// Tests: event records still to write before writes fail (`usize::MAX`: never).
    #[cfg(test)]
    fail_after: std::sync::atomic::AtomicUsize,
}

/// One open sled database and the store's trees in it.
pub(super) struct Trees {
    db: sled::Db,
    events: Tree,
    pub(super) snaps: Tree,
    pub(super) ix: Tree,
    targets: Tree,
    heads: Tree,
    dict_tree: Tree,
    kinds_tree: Tree,
    meta: Tree,
    cursors: Tree,
}

impl Trees {
    /// [`Trees::open`], waiting up to a second for a lock that sled's threads still hold for a
    /// database of this process just closed.
    fn open_waiting(path: &Path) -> Result<Trees> {
        let mut attempt = 0;
        loop {
            match Trees::open(path) {
                Err(Error::StoreLocked(_)) if attempt < 40 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn open(path: &Path) -> Result<Trees> {
        let db = sled::Config::new()
            .path(path)
            // sled's default page cache is 1 GiB, far beyond an operator pod's memory limit;
            // reads are rare (queries), writes are sequential.
            .cache_capacity(CACHE_BYTES)
            // The writer flushes after every batch and the outbox after its own writes; sled's
            // timer flush would only run beside them, and every sled flush waits on sled's I/O
            // threads, so flushes at once wait on each other (see capture::writer).
            .flush_every_ms(None)
            .open()
            .map_err(|e| open_error(e, path))?;
        Ok(Trees {
            events: db.open_tree("events")?,
            snaps: db.open_tree("snaps")?,
            ix: db.open_tree("ix")?,
            targets: db.open_tree("targets")?,
            heads: db.open_tree("heads")?,
            dict_tree: db.open_tree("dict")?,
            kinds_tree: db.open_tree("kinds")?,
            meta: db.open_tree("meta")?,
            cursors: db.open_tree("cursors")?,
            db,
        })
    }
}

/// The store's database as the outbox ([`outbox`]) reaches it. The store replaces the database
/// when it reopens after a write failure, so a holder takes it for each use rather than keeping
/// a clone: a kept clone would also keep the old database's file lock, and the reopen would fail.
#[derive(Clone)]
struct SharedDb(Arc<parking_lot::RwLock<Option<sled::Db>>>);

impl SharedDb {
    /// The current database; [`Error::StoreClosed`] while the store is reopening it.
    pub fn get(&self) -> Result<sled::Db> {
        self.0.read().clone().ok_or(Error::StoreClosed)
    }

    fn set(&self, db: Option<sled::Db>) {
        *self.0.write() = db;
    }
}

impl From<sled::Db> for SharedDb {
    fn from(db: sled::Db) -> Self {
        SharedDb(Arc::new(parking_lot::RwLock::new(Some(db))))
    }
}

impl From<&sled::Db> for SharedDb {
    fn from(db: &sled::Db) -> Self {
        SharedDb::from(db.clone())
    }
}

/// Interned strings: tag ‖ text ↔ small integer.
///
/// Bounded by what the cluster has, not by its traffic: users are interned as username, uid and
/// groups only (one entry per identity and set of groups), never with the authenticator's
/// `extra`, which for bound service-account tokens names the credential and pod
/// (`authentication.kubernetes.io/credential-id`, `.../pod-uid`) and so changes with every pod.
/// `extra` is not stored at all.
#[derive(Default)]
struct Dict {
    ids: HashMap<Vec<u8>, u64>,
    strings: HashMap<u64, Vec<u8>>,
    /// Username → its user entries, so a query by user does not scan the dictionary.
    users: HashMap<String, Vec<u64>>,
    next: u64,
}

impl Dict {
    fn add(&mut self, id: u64, key: Vec<u8>) {
        if key.first() == Some(&D_USER)
            && let Ok(actor) = serde_json::from_slice::<Actor>(&key[1..])
        {
            self.users.entry(actor.username).or_default().push(id);
        }
        self.strings.insert(id, key.clone());
        self.ids.insert(key, id);
        self.next = self.next.max(id + 1);
    }
}

/// The part of an [`Actor`] the store keeps; serialises as an `Actor` without `extra` does.
#[derive(serde::Serialize)]
struct StoredActor<'a> {
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    groups: &'a [String],
}

/// State only the writer (append, retention) touches.
#[derive(Default)]
struct Writer {
    last_id: EventId,
    heads: HashMap<u64, Head>,
    /// Heads changed since they were last written; written once per batch.
    dirty_heads: HashSet<u64>,
    /// The state after each cached object's newest event, to check and extend its chain without
    /// reading the store.
    states: HashMap<u64, Value>,
    /// Request uid (as [`request_key`]) → event, for the dedupe window.
    recent: Recent,
    /// What appends since the last successful [`EventStore::sync`] wrote (request key, hash of
    /// the policies, outcome), so that a retry after a failed append or flush reports an event
    /// its failed attempt already wrote as what that attempt did, not as a `Duplicate` nobody
    /// ever heard of. Holds one batch in normal operation (the writer syncs after each).
    unsynced: Vec<Unsynced>,
    /// Objects with new events since the last retention pass.
    touched: HashSet<u64>,
    /// Learnt (group/resource, kind) pairs, to skip alias writes on the hot path.
    kinds_seen: HashSet<(String, String)>,
    /// Index rows written recently, to skip rewriting them on every event.
    buckets: HashSet<[u8; 17]>,
    last_full_retention: Option<i64>,
}

/// One outcome not yet known to be durable: see `Writer::unsynced`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unsynced {
    request: u128,
    policies: u64,
    outcome: AppendOutcome,
}

impl Unsynced {
    fn of(captured: &Captured, outcome: AppendOutcome) -> Unsynced {
        use std::hash::{Hash, Hasher};
        // Only ever compared in memory, within one process: std's hasher will do.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        captured.event.policies.hash(&mut h);
        Unsynced {
            request: request_key(captured),
            policies: h.finish(),
            outcome,
        }
    }
}

/// An event decoded from its record.
struct Record {
    flags: u8,
    /// The object's previous event.
    prev: Option<EventId>,
    /// With [`F_GAP`]: the change between the state after `prev` and the state before this event.
    gap: Vec<FieldChange>,
    /// The key the event was deduped by ([`Captured::dedupe`]).
    dedupe: [u8; 16],
    event: ChangeEvent,
}

impl Record {
    fn object_hash(&self) -> u64 {
        object_hash_of(&self.event)
    }
}

fn object_hash_of(e: &ChangeEvent) -> u64 {
    keys::object_hash(
        e.object_uid.as_deref(),
        &e.resource.group_resource(),
        e.namespace.as_deref(),
        &e.name,
    )
}

/// Bytes of sled's page cache.
const CACHE_BYTES: u64 = 64 << 20;

impl SledStore {
    /// Opens (creating if needed) the store in directory `path`. A store held by another process
    /// gives [`Error::StoreLocked`].
    pub fn open(path: impl AsRef<Path>) -> Result<SledStore> {
        let path = path.as_ref();
        let trees = Trees::open(path)?;
        let store = SledStore {
            path: path.to_owned(),
            shared: SharedDb::from(&trees.db),
            trees: parking_lot::RwLock::new(Some(Arc::new(trees))),
            dict: RwLock::default(),
            kinds: RwLock::default(),
            count: AtomicU64::new(0),
            writer: Mutex::default(),
            retention: Mutex::default(),
            #[cfg(test)]
            fail_after: std::sync::atomic::AtomicUsize::new(usize::MAX),
        };
        store.load(&mut store.lock_writer())?;
        Ok(store)
    }

    /// The open trees; [`Error::StoreClosed`] while the database is being reopened.
    pub(super) fn t(&self) -> Result<Arc<Trees>> {
        self.trees.read().clone().ok_or(Error::StoreClosed)
    }

    /// The notification outbox, in three trees of this store's database (its cursor and
    /// buffered events become durable with the next append's flush, its notifications with
    /// its own). It follows the store when it reopens after a write failure.
    pub fn outbox(&self) -> Arc<dyn OutboxStore> {
        Arc::new(outbox::SledOutbox::new(self.shared.clone()))
    }

    /// The audit journal, in this store's database.
    pub fn audit_journal(&self) -> Arc<dyn AuditJournal> {
        Arc::new(audit::SledAudit::new(self.shared.clone()))
    }

    /// The Kubernetes Events, in this store's database.
    pub fn kube_events(&self) -> Arc<dyn crate::store::KubeEventStore> {
        Arc::new(kube_events::SledKubeEvents::new(self.shared.clone()))
    }

    /// Tests: the database as it is now.
    #[cfg(test)]
    fn db(&self) -> SharedDb {
        self.shared.clone()
    }

    /// Reopens the database after a failed write or flush. sled keeps the first I/O error of a
    /// database (a full disk, say) and fails every later write and flush with it, even once
    /// space is back, so the only way back is a new `sled::Db`. Checks first that the directory
    /// takes a write again (a small probe file written, synced and removed), so that a disk
    /// still full costs no reopen. What the old database had not flushed is gone with it: the
    /// caller appends its unflushed batch again (the events the old one made durable come back
    /// as they were reported, see [`EventStore::append_buffered`]).
    pub fn reopen(&self) -> Result<()> {
        probe_writable(&self.path)?;
        // Retention first, then the writer: the order a retention pass takes them in.
        let _pass = self.retention.lock();
        let mut w = self.lock_writer();
        // Dropping the last handle on the old database releases its file lock. Readers in flight
        // (a query's iterator) hold it a little longer: wait for them, briefly.
        self.trees.write().take();
        self.shared.set(None);
        let trees = Trees::open_waiting(&self.path)?;
        let unsynced = std::mem::take(&mut w.unsynced);
        *w = Writer {
            unsynced,
            ..Writer::default()
        };
        self.shared.set(Some(trees.db.clone()));
        *self.trees.write() = Some(Arc::new(trees));
        if let Err(e) = self.load(&mut w) {
            self.trees.write().take();
            self.shared.set(None);
            return Err(e);
        }
        tracing::info!(path = %self.path.display(), "store reopened after a write failure");
        Ok(())
    }

    fn load(&self, w: &mut Writer) -> Result<()> {
        let mut dict = Dict::default();
        for item in self.t()?.dict_tree.iter() {
            let (k, v) = item?;
            let id = keys::id_from_key(&k).ok_or_else(|| Error::Corrupt("dict key".into()))?;
            dict.add(id, v.to_vec());
        }
        *write_lock(&self.dict) = dict;

        let mut kinds = KindAliases::default();
        for item in self.t()?.kinds_tree.iter() {
            let (k, _) = item?;
            let text = String::from_utf8_lossy(&k);
            if let Some((alias, gr)) = text.split_once('\0') {
                kinds.insert(alias.to_owned(), gr);
            }
        }
        *write_lock(&self.kinds) = kinds;

        let meta_last = self.meta_u64(META_LAST_ID)?.unwrap_or(0);
        // A crash can leave events of an unacknowledged batch behind the persisted last id.
        let tree_last = match self.t()?.events.last()? {
            Some((k, _)) => keys::id_from_key(&k).unwrap_or(0),
            None => 0,
        };
        w.last_id = meta_last.max(tree_last);

        let clean = self.meta_u64(META_CLEAN)? == Some(1);
        let count = match self.meta_u64(META_COUNT)? {
            Some(c) if clean => c,
            // After a crash the persisted count may lag the tree: count once.
            _ => self.t()?.events.len() as u64,
        };
        self.count.store(count, Ordering::Relaxed);
        self.t()?.meta.insert(META_CLEAN, &0u64.to_be_bytes())?;

        if !clean {
            let through = match self.meta_u64(META_HEADS_THROUGH)? {
                Some(t) => t,
                // A new store that crashed in its first batch, or one whose heads were all
                // written with their events (before heads were batched).
                None if meta_last == 0 => 0,
                None => w.last_id,
            };
            self.repair_heads(w, through)?;
        }

        // Rebuild the dedupe window from the newest events.
        let floor = w.last_id.saturating_sub(DEDUPE_WINDOW);
        let mut recent = Vec::new();
        for item in self.t()?.events.range(keys::id_key(floor)..).rev() {
            let (k, v) = item?;
            let id = keys::id_from_key(&k).unwrap_or(0);
            recent.push((id, u128::from_be_bytes(peek_dedupe(&v)?)));
        }
        for (id, uid) in recent.into_iter().rev() {
            w.recent.insert(uid, id);
        }
        Ok(())
    }

    /// Points object heads at events written after `through` that they do not know of: a crash
    /// can persist part of a batch (sled writes its log as it fills) without the heads that are
    /// written at its end.
    fn repair_heads(&self, w: &mut Writer, through: EventId) -> Result<()> {
        let mut repaired = 0u64;
        for item in self
            .t()?
            .events
            .range(keys::id_key(through.saturating_add(1))..)
        {
            let (k, v) = item?;
            let id = keys::id_from_key(&k).ok_or_else(|| Error::Corrupt("event key".into()))?;
            let rec = self.decode(id, &v)?;
            let object = rec.object_hash();
            let mut head = self.head(w, object)?.unwrap_or_default();
            if head.count > 0 && head.last >= id {
                continue;
            }
            head.last = id;
            head.count += 1;
            head.since_snapshot = if self.t()?.snaps.contains_key(&k)? {
                0
            } else {
                head.since_snapshot + 1
            };
            head.broken = rec.flags & F_UNKNOWN_STATE != 0;
            w.heads.insert(object, head);
            w.dirty_heads.insert(object);
            repaired += 1;
        }
        if repaired > 0 {
            tracing::warn!(
                events = repaired,
                "store was not closed cleanly: linked events of an interrupted batch to their objects"
            );
            self.persist_heads(w)?;
        }
        Ok(())
    }

    /// Tests: user entries in the dictionary, and heads cached in memory.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        let users = read_lock(&self.dict)
            .strings
            .values()
            .filter(|s| s.first() == Some(&D_USER))
            .count();
        (users, self.lock_writer().heads.len())
    }

    /// Tests: the next `n` event records are written, the one after them fails once (as a
    /// write to a full disk does), and writes succeed again after it.
    #[cfg(test)]
    pub(crate) fn fail_once_after(&self, n: usize) {
        self.fail_after.store(n, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn injected_failure(&self) -> Result<()> {
        match self.fail_after.load(Ordering::SeqCst) {
            usize::MAX => Ok(()),
            0 => {
                self.fail_after.store(usize::MAX, Ordering::SeqCst);
                let io = std::io::Error::from_raw_os_error(28);
                Err(sled::Error::Io(io).into())
            }
            left => {
                self.fail_after.store(left - 1, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.t()?.meta.get(key)?.and_then(|v| keys::id_from_key(&v)))
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // Not poisoned by a panic: the in-memory state is only a cache of what was written.
        self.writer.lock()
    }

    // ---------- dictionary ----------

    fn intern(&self, tag: u8, text: &str) -> Result<u64> {
        let key = tagged(tag, text);
        if let Some(&id) = read_lock(&self.dict).ids.get(&key) {
            return Ok(id);
        }
        let mut dict = write_lock(&self.dict);
        if let Some(&id) = dict.ids.get(&key) {
            return Ok(id);
        }
        let id = dict.next;
        self.t()?
            .dict_tree
            .insert(keys::id_key(id), key.as_slice())?;
        dict.add(id, key);
        Ok(id)
    }

    fn intern_json<T: serde::Serialize>(&self, tag: u8, v: &T) -> Result<u64> {
        self.intern(tag, &serde_json::to_string(v)?)
    }

    fn lookup(&self, tag: u8, id: u64) -> Result<String> {
        let dict = read_lock(&self.dict);
        match dict.strings.get(&id) {
            Some(s) if s.first() == Some(&tag) => Ok(String::from_utf8_lossy(&s[1..]).into_owned()),
            _ => Err(Error::Corrupt(format!("unknown dictionary entry {id}"))),
        }
    }

    fn lookup_json<T: serde::de::DeserializeOwned>(&self, tag: u8, id: u64) -> Result<T> {
        Ok(serde_json::from_str(&self.lookup(tag, id)?)?)
    }

    /// Dictionary ids of every stored identity of user `name` (one per uid and set of groups).
    fn actors_named(&self, name: &str) -> HashSet<u64> {
        read_lock(&self.dict)
            .users
            .get(name)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    fn policies(&self) -> Vec<String> {
        read_lock(&self.dict)
            .strings
            .values()
            .filter(|s| s.first() == Some(&D_POLICY))
            .map(|s| String::from_utf8_lossy(&s[1..]).into_owned())
            .collect()
    }

    // ---------- records ----------

    fn encode(
        &self,
        flags: u8,
        id: EventId,
        prev: Option<EventId>,
        e: &ChangeEvent,
        gap: &[FieldChange],
        dedupe: &[u8; 16],
    ) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(96);
        let mut flags = (flags & !(3 | F_GAP)) | codec::op_code(e.operation);
        if !gap.is_empty() {
            flags |= F_GAP;
        }
        if e.redacted {
            flags |= F_REDACTED;
        }
        if e.namespace.is_some() {
            flags |= F_HAS_NS;
        }
        if e.object_uid.is_some() {
            flags |= F_HAS_UID;
        }
        out.push(flags);
        // Receipt time relative to the id (usually equal to within the sub-microsecond part).
        let ns = e.received_at.as_nanosecond();
        let delta = ns - i128::from(id) * 1000;
        codec::put_varint(
            &mut out,
            codec::zigzag(delta.clamp(i64::MIN.into(), i64::MAX.into()) as i64),
        );
        // The previous event as a distance back (small), 0 for none.
        codec::put_varint(&mut out, prev.map_or(0, |p| id.saturating_sub(p).max(1)));
        codec::put_id_string(&mut out, &e.request_uid);
        codec::put_varint(&mut out, e.policies.len() as u64);
        for p in &e.policies {
            codec::put_varint(&mut out, self.intern(D_POLICY, p)?);
        }
        let user = StoredActor {
            username: &e.user.username,
            uid: e.user.uid.as_deref(),
            groups: &e.user.groups,
        };
        codec::put_varint(&mut out, self.intern_json(D_USER, &user)?);
        codec::put_varint(&mut out, self.intern_json(D_RESOURCE, &e.resource)?);
        codec::put_varint(&mut out, self.intern_json(D_KIND, &e.kind)?);
        if let Some(ns) = &e.namespace {
            codec::put_varint(&mut out, self.intern(D_NAMESPACE, ns)?);
        }
        codec::put_bytes(&mut out, e.name.as_bytes());
        if let Some(uid) = &e.object_uid {
            codec::put_id_string(&mut out, uid);
        }
        codec::put_changes(&mut out, &e.changes)?;
        if !gap.is_empty() {
            codec::put_changes(&mut out, gap)?;
        }
        codec::put_witnessed(&mut out, &e.request_uid, dedupe, e)?;
        Ok(out)
    }

    fn decode(&self, id: EventId, buf: &[u8]) -> Result<Record> {
        let mut r = Reader::new(buf);
        let flags = r.u8()?;
        let delta = codec::unzigzag(r.varint()?);
        let ns = i128::from(id) * 1000 + i128::from(delta);
        let received_at = Timestamp::from_nanosecond(ns)
            .map_err(|e| Error::Corrupt(format!("event {id}: receipt time: {e}")))?;
        let prev = match r.varint()? {
            0 => None,
            back => Some(id.saturating_sub(back)),
        };
        let request_uid = codec::get_id_string(&mut r)?;
        let n = r.varint()? as usize;
        let mut policies = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            policies.push(self.lookup(D_POLICY, r.varint()?)?);
        }
        let user: Actor = self.lookup_json(D_USER, r.varint()?)?;
        let resource: ResourceId = self.lookup_json(D_RESOURCE, r.varint()?)?;
        let kind: KindId = self.lookup_json(D_KIND, r.varint()?)?;
        let namespace = if flags & F_HAS_NS != 0 {
            Some(self.lookup(D_NAMESPACE, r.varint()?)?)
        } else {
            None
        };
        let name = r.string()?;
        let object_uid = if flags & F_HAS_UID != 0 {
            Some(codec::get_id_string(&mut r)?)
        } else {
            None
        };
        let changes = codec::get_changes(&mut r)?;
        let gap = if flags & F_GAP != 0 {
            codec::get_changes(&mut r)?
        } else {
            Vec::new()
        };
        let witnessed = codec::get_witnessed(&mut r, &request_uid)?;
        Ok(Record {
            flags,
            prev,
            gap,
            dedupe: witnessed.dedupe,
            event: ChangeEvent {
                request_uid,
                received_at,
                policies,
                operation: codec::op_from_code(flags),
                user,
                resource,
                kind,
                namespace,
                name,
                object_uid,
                changes,
                object: None,
                redacted: flags & F_REDACTED != 0,
                state: witnessed.state,
                commit: witnessed.commit,
                inferred: witnessed.inferred,
                audit: witnessed.audit,
            },
        })
    }

    fn load_record(&self, id: EventId) -> Result<Option<Record>> {
        match self.t()?.events.get(keys::id_key(id))? {
            Some(v) => Ok(Some(self.decode(id, &v)?)),
            None => Ok(None),
        }
    }

    fn head(&self, w: &mut Writer, object: u64) -> Result<Option<Head>> {
        if let Some(h) = w.heads.get(&object) {
            return Ok(Some(*h));
        }
        match self.t()?.heads.get(object.to_be_bytes())? {
            Some(v) => {
                let h = Head::decode(&v)?;
                w.heads.insert(object, h);
                Ok(Some(h))
            }
            None => Ok(None),
        }
    }

    // ---------- append ----------

    /// Appends one event; `copied`: under this id, as [`EventStore::append_copied`] does (no
    /// dedupe, its states as the source had them).
    fn append_one(
        &self,
        w: &mut Writer,
        captured: &Captured,
        copied: Option<EventId>,
    ) -> Result<AppendOutcome> {
        let event = &captured.event;
        let request = request_key(captured);
        if copied.is_none()
            && let Some(id) = w.recent.get(request)
        {
            return self.link(id, &event.policies);
        }

        let received_us = event.received_at.as_microsecond().max(0) as u64;
        let id = copied.unwrap_or(received_us.max(w.last_id + 1));
        w.last_id = id;

        let gr = event.resource.group_resource();
        let object = object_hash_of(event);
        let prior = self.head(w, object)?;
        if event.resource.subresource.is_none() {
            self.learn_kind(w, &gr, &event.resource, &event.kind)?;
        }

        let mut head = prior.unwrap_or_default();
        // The state after the object's previous event, when the store knows it.
        let previous = match prior {
            Some(h) if !h.broken => match w.states.remove(&object) {
                Some(s) => Some(s),
                None => self.state_after_record(h.last)?,
            },
            _ => None,
        };
        let pos = ChainPos {
            since_snapshot: head.since_snapshot,
            broken: head.broken,
        };
        let before = captured.before.as_ref();
        let step = match copied {
            Some(_) => history::extend_copied(pos, previous, prior.is_some(), before, event),
            None => history::extend(pos, previous, before, event),
        };
        head.since_snapshot = step.pos.since_snapshot;
        head.broken = step.pos.broken;
        let mut flags = 0u8;
        if step.chain_break {
            flags |= F_CHAIN_BREAK;
        }
        if step.unknown_state {
            flags |= F_UNKNOWN_STATE;
        }
        let gap = step.gap;
        // A full object's snapshot is the event's object as captured (the cached state equals
        // it, but may order its keys differently).
        let snapshot = match (&event.resource.subresource, &event.object, &step.state) {
            (None, Some(object), _) if step.snapshot => Some(serde_json::to_vec(object)?),
            (_, _, Some(state)) if step.snapshot => Some(serde_json::to_vec(state)?),
            _ => None,
        };
        if let Some(state) = step.state {
            cache_state(w, object, state);
        }

        // The record is written last: an event exists once its record does, and everything the
        // record needs (index rows, target, snapshot) is there by then. A failure before it
        // leaves only rows that are harmless without it; a failure after it cannot happen, so
        // a retry of the batch finds the event in the dedupe window (see `Writer::unsynced`).
        let record = self.encode(
            flags,
            id,
            prior.map(|h| h.last),
            event,
            &gap,
            &captured.dedupe,
        )?;
        if w.buckets.len() > 65_536 {
            w.buckets.clear();
        }
        let bucket = id >> BUCKET_SHIFT;
        let mut rows = vec![keys::index_key(
            TAG_USER,
            keys::hash64(&[&event.user.username]),
            bucket,
        )];
        if let Some(ns) = &event.namespace {
            rows.push(keys::index_key(TAG_NAMESPACE, keys::hash64(&[ns]), bucket));
        }
        for row in rows {
            if !w.buckets.contains(&row) {
                self.t()?.ix.insert(row, &[])?;
                w.buckets.insert(row);
            }
        }
        if prior.is_none() {
            let t = keys::target_hash(&gr, &event.name);
            self.t()?.targets.insert(keys::target_key(t, object), &[])?;
        }
        if let Some(s) = snapshot {
            self.t()?.snaps.insert(keys::id_key(id), s)?;
        }
        #[cfg(test)]
        self.injected_failure()?;
        self.t()?.events.insert(keys::id_key(id), record)?;
        head.last = id;
        head.count += 1;
        w.heads.insert(object, head);
        w.dirty_heads.insert(object);
        w.touched.insert(object);

        w.recent.insert(request, id);
        w.recent.expire(id.saturating_sub(DEDUPE_WINDOW));
        self.count.fetch_add(1, Ordering::Relaxed);
        Ok(AppendOutcome::Recorded(id))
    }

    /// The request is already stored as `id`: link the new policies to it, if any.
    fn link(&self, id: EventId, policies: &[String]) -> Result<AppendOutcome> {
        let Some(mut rec) = self.load_record(id)? else {
            // Recorded, then removed by retention: nothing to link to.
            return Ok(AppendOutcome::Duplicate(id));
        };
        let mut added = false;
        for p in policies {
            if !rec.event.policies.contains(p) {
                rec.event.policies.push(p.clone());
                added = true;
            }
        }
        if !added {
            return Ok(AppendOutcome::Duplicate(id));
        }
        let bytes = self.encode(rec.flags, id, rec.prev, &rec.event, &rec.gap, &rec.dedupe)?;
        #[cfg(test)]
        self.injected_failure()?;
        self.t()?.events.insert(keys::id_key(id), bytes)?;
        Ok(AppendOutcome::Linked(id))
    }

    fn learn_kind(&self, w: &mut Writer, gr: &str, res: &ResourceId, kind: &KindId) -> Result<()> {
        if w.kinds_seen.contains(&(gr.to_owned(), kind.kind.clone())) {
            return Ok(());
        }
        let mut cache = write_lock(&self.kinds);
        for a in cache.learn(res, kind) {
            self.t()?
                .kinds_tree
                .insert(format!("{a}\0{gr}").as_bytes(), &[])?;
        }
        w.kinds_seen.insert((gr.to_owned(), kind.kind.clone()));
        Ok(())
    }

    // ---------- rebuild ----------

    /// The object's state after event `id` (see [`history::state_after`]).
    fn state_after_record(&self, id: EventId) -> Result<Option<Value>> {
        history::state_after(self, id)
    }

    /// The newest event of an object, from its head.
    fn object_last(&self, object: u64) -> Result<Option<EventId>> {
        match self.t()?.heads.get(object.to_be_bytes())? {
            Some(v) => Ok(Some(Head::decode(&v)?.last)),
            None => Ok(None),
        }
    }

    /// The ids of an object's events, oldest first.
    fn object_ids(&self, object: u64) -> Result<Vec<EventId>> {
        let mut ids: Vec<EventId> = Chain {
            store: self,
            next: self.object_last(object)?,
            hi: u64::MAX,
        }
        .collect::<Result<_>>()?;
        ids.reverse();
        Ok(ids)
    }

    // ---------- query ----------

    fn resolve_kind(&self, kind: &str) -> BTreeSet<String> {
        read_lock(&self.kinds).resolve(kind)
    }

    /// Ids in `[lo, hi)`, newest first, from the most selective index the query allows.
    fn id_stream<'a>(
        &'a self,
        q: &Query,
        kinds: Option<&BTreeSet<String>>,
        lo: EventId,
        hi: EventId,
    ) -> Result<Box<dyn Iterator<Item = Result<EventId>> + 'a>> {
        let chain = |object: u64| -> Result<Box<dyn Iterator<Item = Result<EventId>> + 'a>> {
            let next = self.object_last(object)?;
            Ok(Box::new(
                Chain {
                    store: self,
                    next,
                    hi,
                }
                .take_while(move |id| id.as_ref().map_or(true, |id| *id >= lo)),
            ))
        };
        if let Some(uid) = &q.uid {
            return chain(keys::object_hash(Some(uid), "", None, ""));
        }
        if let (Some(kinds), Some(name)) = (kinds, &q.name) {
            let mut streams = Vec::new();
            for gr in kinds {
                let t = keys::target_hash(gr, name);
                for item in self.t()?.targets.scan_prefix(t.to_be_bytes()) {
                    let (k, _) = item?;
                    let object = keys::id_of_index_key(&k)
                        .ok_or_else(|| Error::Corrupt("target key".into()))?;
                    streams.push(chain(object)?.peekable());
                }
            }
            return Ok(Box::new(Merge { streams }));
        }
        if let Some(user) = &q.user {
            return self.bucket_stream(TAG_USER, keys::hash64(&[user]), lo, hi);
        }
        if let Some(ns) = &q.namespace {
            return self.bucket_stream(TAG_NAMESPACE, keys::hash64(&[ns]), lo, hi);
        }
        let range = keys::id_key(lo)..keys::id_key(hi);
        Ok(Box::new(self.t()?.events.range(range).keys().rev().map(
            |k| keys::id_from_key(&k?).ok_or_else(|| Error::Corrupt("event key".into())),
        )))
    }

    /// Ids in `[lo, hi)` of the time slices in which `subject` had events, newest first. The ids
    /// include other subjects' events of those slices: the caller filters.
    fn bucket_stream<'a>(
        &'a self,
        tag: u8,
        subject: u64,
        lo: EventId,
        hi: EventId,
    ) -> Result<Box<dyn Iterator<Item = Result<EventId>> + 'a>> {
        let rows = keys::index_key(tag, subject, lo >> BUCKET_SHIFT)
            ..=keys::index_key(tag, subject, (hi - 1) >> BUCKET_SHIFT);
        let t = self.t()?;
        let events = t.events.clone();
        Ok(Box::new(t.ix.range(rows).rev().flat_map(move |row| {
            let ids: Box<dyn Iterator<Item = Result<EventId>>> = match row {
                Err(e) => Box::new(std::iter::once(Err(e.into()))),
                Ok((k, _)) => {
                    let bucket = keys::id_of_index_key(&k).unwrap_or(0);
                    let start = (bucket << BUCKET_SHIFT).max(lo);
                    let end = ((bucket + 1) << BUCKET_SHIFT).min(hi);
                    Box::new(
                        events
                            .range(keys::id_key(start)..keys::id_key(end))
                            .keys()
                            .rev()
                            .map(|k| {
                                keys::id_from_key(&k?)
                                    .ok_or_else(|| Error::Corrupt("event key".into()))
                            }),
                    )
                }
            };
            ids
        })))
    }

    // ---------- retention ----------

    /// Removes `remove` (events of `object`) under the writer lock. `ids` is the object's chain,
    /// oldest first, as walked before the lock was taken; events appended since are newer and
    /// linked onto it, and are picked up here.
    fn prune_object(
        &self,
        w: &mut Writer,
        object: u64,
        ids: &mut Vec<EventId>,
        remove: &BTreeSet<EventId>,
        report: &mut RetentionReport,
    ) -> Result<()> {
        let Some(mut head) = self.head(w, object)? else {
            return Ok(());
        };
        // Events appended since the chain was walked: `ids` keeps them, so the next chunk of
        // this object walks only what arrived after this one.
        let walked = ids.last().copied().unwrap_or(0);
        let mut newer = Vec::new();
        let mut next = Some(head.last);
        while let Some(id) = next.filter(|&id| id > walked) {
            newer.push(id);
            next = match self.t()?.events.get(keys::id_key(id))? {
                Some(buf) => peek_prev_policies(id, &buf)?.0,
                None => None,
            };
        }
        ids.extend(newer.into_iter().rev());

        // Keep the chain rebuildable and linked: the first kept event after removed ones gets a
        // snapshot (written before its predecessors go) and a link past them.
        let mut prev_kept = None;
        let mut after_removed = false;
        for &id in ids.iter() {
            if remove.contains(&id) {
                after_removed = true;
                continue;
            }
            if after_removed {
                let mut unknown = false;
                if !self.t()?.snaps.contains_key(keys::id_key(id))? {
                    match self.state_after_record(id)? {
                        Some(state) => {
                            self.t()?
                                .snaps
                                .insert(keys::id_key(id), serde_json::to_vec(&state)?)?;
                        }
                        None => unknown = true,
                    }
                }
                if let Some(rec) = self.load_record(id)? {
                    let mut flags = rec.flags;
                    if unknown {
                        flags |= F_UNKNOWN_STATE;
                    }
                    // What came just before it is gone, and so is what a gap was relative to.
                    if prev_kept.is_some() {
                        flags |= F_CHAIN_BREAK;
                    }
                    let bytes = self.encode(flags, id, prev_kept, &rec.event, &[], &rec.dedupe)?;
                    self.t()?.events.insert(keys::id_key(id), bytes)?;
                }
            }
            after_removed = false;
            prev_kept = Some(id);
        }

        // The head moves off removed events before they go, so a crash in between never leaves
        // it pointing at a missing event while older ones remain.
        let emptied = remove.contains(&head.last) && prev_kept.is_none();
        if remove.contains(&head.last)
            && let Some(newest) = prev_kept
        {
            // The state the cache holds is gone: the next full object starts a new chain.
            head.last = newest;
            head.broken = true;
            w.states.remove(&object);
        }

        let mut removed = 0u64;
        let mut last_removed = None;
        for &id in remove {
            self.t()?.snaps.remove(keys::id_key(id))?;
            if let Some(bytes) = self.t()?.events.remove(keys::id_key(id))? {
                removed += 1;
                last_removed = Some((id, bytes));
            }
        }
        self.count.fetch_sub(removed, Ordering::Relaxed);
        report.removed += removed;
        ids.retain(|id| !remove.contains(id));

        if emptied {
            self.t()?.heads.remove(object.to_be_bytes())?;
            w.heads.remove(&object);
            w.dirty_heads.remove(&object);
            w.states.remove(&object);
            if let Some((id, bytes)) = last_removed {
                let e = self.decode(id, &bytes)?.event;
                let t = keys::target_hash(&e.resource.group_resource(), &e.name);
                self.t()?.targets.remove(keys::target_key(t, object))?;
                report.objects_emptied.push(EmptiedObject {
                    resource: e.resource.group_resource(),
                    namespace: e.namespace,
                    name: e.name,
                    uid: e.object_uid,
                });
            }
        } else {
            head.count = head.count.saturating_sub(removed);
            self.t()?
                .heads
                .insert(object.to_be_bytes(), head.encode())?;
            w.heads.insert(object, head);
        }
        Ok(())
    }

    /// Removes index rows of time slices older than the oldest event. Subjects come from the
    /// dictionary (every namespace and user ever stored), so no scan of the index is needed.
    fn drop_stale_buckets(&self) -> Result<()> {
        let oldest = match self.t()?.events.first()? {
            Some((k, _)) => keys::id_from_key(&k).unwrap_or(0) >> BUCKET_SHIFT,
            None => u64::MAX,
        };
        let mut subjects = HashSet::new();
        for s in read_lock(&self.dict).strings.values() {
            let (Some(&tag), Some(text)) = (s.first(), s.get(1..)) else {
                continue;
            };
            let text = String::from_utf8_lossy(text);
            match tag {
                D_NAMESPACE => subjects.insert((TAG_NAMESPACE, keys::hash64(&[&text]))),
                D_USER => match serde_json::from_str::<Actor>(&text) {
                    Ok(actor) => subjects.insert((TAG_USER, keys::hash64(&[&actor.username]))),
                    Err(_) => false,
                },
                _ => false,
            };
        }
        for (tag, subject) in subjects {
            let stale = keys::index_key(tag, subject, 0)..keys::index_key(tag, subject, oldest);
            for row in self.t()?.ix.range(stale).keys() {
                self.t()?.ix.remove(row?)?;
            }
        }
        Ok(())
    }

    /// Writes the heads this batch changed: once per object per batch rather than per event, so
    /// a busy object does not rewrite its head row on every change.
    fn persist_heads(&self, w: &mut Writer) -> Result<()> {
        // Cleared only once all are written: a failed write leaves them for the retry.
        for object in &w.dirty_heads {
            if let Some(head) = w.heads.get(object) {
                self.t()?
                    .heads
                    .insert(object.to_be_bytes(), head.encode())?;
            }
        }
        w.dirty_heads.clear();
        if w.heads.len() > HEADS_CACHE {
            w.heads.clear();
        }
        self.t()?
            .meta
            .insert(META_HEADS_THROUGH, &w.last_id.to_be_bytes())?;
        Ok(())
    }

    fn persist_counters(&self, w: &Writer) -> Result<()> {
        self.t()?
            .meta
            .insert(META_LAST_ID, &w.last_id.to_be_bytes())?;
        self.t()?.meta.insert(
            META_COUNT,
            &self.count.load(Ordering::Relaxed).to_be_bytes(),
        )?;
        Ok(())
    }
}

impl RecordSource for SledStore {
    fn snapshot(&self, id: EventId) -> Result<Option<Value>> {
        match self.t()?.snaps.get(keys::id_key(id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn link(&self, id: EventId) -> Result<Option<Link>> {
        Ok(self.load_record(id)?.map(|rec| Link {
            prev: rec.prev,
            gap: rec.gap,
            changes: rec.event.changes,
            unknown_state: rec.flags & F_UNKNOWN_STATE != 0,
            chain_break: rec.flags & F_CHAIN_BREAK != 0,
        }))
    }
}

impl EventStore for SledStore {
    fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
        let mut w = self.lock_writer();
        // Outcomes of an earlier attempt that was not synced: a `Duplicate` of one of them is
        // that attempt's write of this very event, and is reported as what it was then.
        let mut earlier = std::mem::take(&mut w.unsynced);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut done = Vec::with_capacity(batch.len());
        let mut result = Ok(());
        for captured in batch {
            let mut outcome = match self.append_one(&mut w, captured, None) {
                Ok(outcome) => outcome,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            if let AppendOutcome::Duplicate(id) = outcome
                && !earlier.is_empty()
            {
                let key = Unsynced::of(captured, outcome);
                if let Some(i) = earlier.iter().position(|u| {
                    u.request == key.request
                        && u.policies == key.policies
                        && event_id(u.outcome) == id
                }) {
                    outcome = earlier.swap_remove(i).outcome;
                }
            }
            if !matches!(outcome, AppendOutcome::Duplicate(_)) {
                done.push(Unsynced::of(captured, outcome));
            }
            outcomes.push(outcome);
        }
        let result = result
            .and_then(|()| self.persist_heads(&mut w))
            .and_then(|()| self.persist_counters(&w));
        // Kept until a sync succeeds, whatever happens now: a failed flush loses nothing that a
        // retry cannot report.
        earlier.extend(done);
        w.unsynced = earlier;
        result.map(|()| outcomes)
    }

    fn append_copied(&self, batch: &[(EventId, Captured)]) -> Result<()> {
        let mut w = self.lock_writer();
        super::check_copied_ids(w.last_id, batch.iter().map(|(id, _)| *id))?;
        let mut result = Ok(());
        for (id, captured) in batch {
            if let Err(e) = self.append_one(&mut w, captured, Some(*id)) {
                result = Err(e);
                break;
            }
        }
        result
            .and_then(|()| self.persist_heads(&mut w))
            .and_then(|()| self.persist_counters(&w))
    }

    fn recover(&self) -> Result<()> {
        self.reopen()
    }

    fn sync(&self) -> Result<()> {
        // Group commit: one flush makes every batch appended since the last one durable (and
        // whatever the notification outbox wrote to this database). The writer lock keeps
        // retention's writes out of the flush (see `enforce_retention`).
        let mut w = self.lock_writer();
        self.t()?.db.flush()?;
        w.unsynced.clear();
        Ok(())
    }

    fn query(&self, q: &Query) -> Result<Page> {
        let Some((lo, hi)) = query::id_range(q) else {
            return Ok(Page::default());
        };
        let kinds = q.kind.as_deref().map(|k| self.resolve_kind(k));
        // Namespace and user compare as dictionary ids on the raw record, before decoding it.
        let want_ns = match &q.namespace {
            Some(ns) => match read_lock(&self.dict).ids.get(&tagged(D_NAMESPACE, ns)) {
                Some(&id) => Some(id),
                None => return Ok(Page::default()),
            },
            None => None,
        };
        let want_actors = q.user.as_deref().map(|user| self.actors_named(user));
        let mut page = PageBuilder::new(q.limit);
        for id in self.id_stream(q, kinds.as_ref(), lo, hi)? {
            let id = id?;
            let Some(raw) = self.t()?.events.get(keys::id_key(id))? else {
                continue;
            };
            if want_ns.is_some() || want_actors.is_some() {
                let (actor, ns) = peek_actor_namespace(&raw)?;
                if want_ns.is_some_and(|w| ns != Some(w))
                    || want_actors.as_ref().is_some_and(|a| !a.contains(&actor))
                {
                    continue;
                }
            }
            let rec = self.decode(id, &raw)?;
            if !query::matches(q, kinds.as_ref(), &rec.event) {
                continue;
            }
            page.push(StoredEvent {
                id,
                event: rec.event,
            });
            if page.done() {
                break;
            }
        }
        Ok(page.finish())
    }

    fn get(&self, id: EventId) -> Result<Option<StoredEvent>> {
        let Some(rec) = self.load_record(id)? else {
            return Ok(None);
        };
        let mut event = rec.event;
        event.object = self.state_after_record(id)?;
        Ok(Some(StoredEvent { id, event }))
    }

    fn state_after(&self, id: EventId) -> Result<Option<Value>> {
        self.state_after_record(id)
    }

    fn state_before(&self, id: EventId) -> Result<Option<Value>> {
        history::state_before(self, id)
    }

    fn enforce_retention(
        &self,
        now: Timestamp,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Result<RetentionReport> {
        // Finding what is due only reads, concurrently with appends; the writer lock is taken
        // per object and per chunk of removals, so capture never waits long on retention.
        let _pass = self.retention.lock();
        let now_us = now.as_microsecond();
        let rules = Rules::new(now, self.policies(), rule, default);
        let min_count = rules.min_count();

        let mut remove: BTreeMap<u64, BTreeSet<EventId>> = BTreeMap::new();
        let mut budget = MAX_REMOVALS_PER_PASS;

        // Age: only events older than the shortest max age can be due; each is kept while any
        // of its policies keeps it.
        for item in self.t()?.events.range(..keys::id_key(rules.age_floor())) {
            if budget == 0 {
                break;
            }
            let (k, v) = item?;
            let id = keys::id_from_key(&k).unwrap_or(0);
            let rec = self.decode(id, &v)?;
            if rules.due_by_age(id, &rec.event.policies) {
                remove.entry(rec.object_hash()).or_default().insert(id);
                budget -= 1;
            }
        }

        // Count: only objects that grew since the last pass (all of them once a minute, and after
        // a restart, so a tightened rule takes effect) and hold more than the smallest limit.
        let (full, touched) = {
            let mut w = self.lock_writer();
            let full = w
                .last_full_retention
                .is_none_or(|t| now_us - t >= FULL_RETENTION_SCAN_US);
            if full {
                w.last_full_retention = Some(now_us);
            }
            (full, std::mem::take(&mut w.touched))
        };
        let over = |v: &[u8]| -> Result<bool> { Ok(Head::decode(v)?.count > u64::from(min_count)) };
        let mut candidates = Vec::new();
        if full {
            for item in self.t()?.heads.iter() {
                let (k, v) = item?;
                if over(&v)? {
                    candidates.push(keys::id_from_key(&k).unwrap_or(0));
                }
            }
        } else {
            for object in touched {
                if let Some(v) = self.t()?.heads.get(object.to_be_bytes())?
                    && over(&v)?
                {
                    candidates.push(object);
                }
            }
        }
        let mut chains: HashMap<u64, Vec<EventId>> = HashMap::new();
        let mut limits: HashMap<u64, u32> = HashMap::new();
        let mut postponed = Vec::new();
        for object in candidates {
            if budget == 0 {
                postponed.push(object);
                continue;
            }
            // Newest first: each policy keeps its newest `max_events_per_object` events. Policies
            // are dictionary ids here; `u64::MAX` stands for "no policy".
            let mut walk = CountWalk::default();
            let mut ids = Vec::new();
            let mut next = self.object_last(object)?;
            while let Some(id) = next {
                let Some(buf) = self.t()?.events.get(keys::id_key(id))? else {
                    break;
                };
                pace(ids.len());
                let (prev, policies) = peek_prev_policies(id, &buf)?;
                next = prev;
                ids.push(id);
                let policies = if policies.is_empty() {
                    vec![u64::MAX]
                } else {
                    policies
                };
                let mut with_limits = Vec::with_capacity(policies.len());
                for p in policies {
                    let max = match limits.get(&p) {
                        Some(&max) => max,
                        None => {
                            let name = match p {
                                u64::MAX => None,
                                p => Some(self.lookup(D_POLICY, p)?),
                            };
                            let max = rules.of(name.as_deref()).max_events_per_object;
                            *limits.entry(p).or_insert(max)
                        }
                    };
                    with_limits.push((p, max));
                }
                let keep = walk.keeps(with_limits);
                if !keep && budget > 0 && remove.entry(object).or_default().insert(id) {
                    budget -= 1;
                }
            }
            ids.reverse();
            chains.insert(object, ids);
        }
        if !postponed.is_empty() {
            // Come back to the rest on the next pass.
            self.lock_writer().touched.extend(postponed);
        }

        let mut report = RetentionReport {
            incomplete: budget == 0,
            ..RetentionReport::default()
        };
        for (object, due) in remove {
            let mut ids = match chains.remove(&object) {
                Some(ids) => ids,
                None => self.object_ids(object)?,
            };
            let due: Vec<EventId> = due.into_iter().collect();
            for chunk in due.chunks(PRUNE_CHUNK) {
                let chunk: BTreeSet<EventId> = chunk.iter().copied().collect();
                let mut w = self.lock_writer();
                self.prune_object(&mut w, object, &mut ids, &chunk, &mut report)?;
                // Hand the lock straight to a waiting group commit: a plain unlock lets this
                // loop take it again before the writer thread wakes.
                MutexGuard::unlock_fair(w);
                pace(0);
            }
        }
        if full {
            self.drop_stale_buckets()?;
        }
        if report.removed > 0 {
            // Flushed with the writer lock held, like every group commit, so this flush never
            // runs beside the capture writer's and neither waits on the other's log write.
            let w = self.lock_writer();
            self.persist_counters(&w)?;
            self.t()?.db.flush()?;
        }
        Ok(report)
    }

    fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            events: self.count.load(Ordering::Relaxed),
            bytes_on_disk: self.t()?.db.size_on_disk()?,
        })
    }

    fn resolve(&self, resolutions: &[Resolution]) -> Result<Vec<bool>> {
        let t = self.t()?;
        let mut applied = Vec::with_capacity(resolutions.len());
        {
            // Records are rewritten whole, as linking and retention do under this lock too.
            let _w = self.lock_writer();
            let mut batch = sled::Batch::default();
            let mut decided = HashSet::new();
            for r in resolutions {
                let open = match self.load_record(r.id)? {
                    Some(mut rec)
                        if rec.event.state == ChangeState::Received && decided.insert(r.id) =>
                    {
                        rec.event.state = r.state;
                        rec.event.commit.clone_from(&r.commit);
                        let bytes = self.encode(
                            rec.flags,
                            r.id,
                            rec.prev,
                            &rec.event,
                            &rec.gap,
                            &rec.dedupe,
                        )?;
                        batch.insert(&keys::id_key(r.id), bytes);
                        true
                    }
                    _ => false,
                };
                applied.push(open);
            }
            if decided.is_empty() {
                return Ok(applied);
            }
            // All or none: a failed call leaves every event as it was, for the retry.
            t.events.apply_batch(batch)?;
        }
        // Flushed outside the writer lock: appends need not wait on it.
        t.db.flush()?;
        Ok(applied)
    }

    fn annotate(&self, notes: &[(EventId, AuditInfo)]) -> Result<Vec<bool>> {
        let t = self.t()?;
        let mut applied = Vec::with_capacity(notes.len());
        {
            // Records are rewritten whole, as `resolve` does, under the writer lock.
            let _w = self.lock_writer();
            let mut batch = sled::Batch::default();
            let mut noted = HashSet::new();
            for (id, note) in notes {
                let open = match self.load_record(*id)? {
                    Some(mut rec) if rec.event.audit.is_none() && noted.insert(*id) => {
                        rec.event.audit = Some(note.clone());
                        let bytes = self.encode(
                            rec.flags,
                            *id,
                            rec.prev,
                            &rec.event,
                            &rec.gap,
                            &rec.dedupe,
                        )?;
                        batch.insert(&keys::id_key(*id), bytes);
                        true
                    }
                    _ => false,
                };
                applied.push(open);
            }
            if noted.is_empty() {
                return Ok(applied);
            }
            t.events.apply_batch(batch)?;
        }
        t.db.flush()?;
        Ok(applied)
    }

    fn live_objects(&self, resource: &str) -> Result<Vec<ObjectHead>> {
        // The resources (subresources included) that are `resource`, as dictionary ids.
        let wanted: HashSet<u64> = read_lock(&self.dict)
            .strings
            .iter()
            .filter(|(_, s)| s.first() == Some(&D_RESOURCE))
            .filter_map(|(&id, s)| {
                let res: ResourceId = serde_json::from_slice(&s[1..]).ok()?;
                (res.group_resource() == resource).then_some(id)
            })
            .collect();
        let mut live = Vec::new();
        if wanted.is_empty() {
            return Ok(live);
        }
        let t = self.t()?;
        for item in t.heads.iter() {
            let (_, v) = item?;
            let last = Head::decode(&v)?.last;
            let Some(raw) = t.events.get(keys::id_key(last))? else {
                continue;
            };
            let (flags, res) = peek_flags_resource(&raw)?;
            if codec::op_from_code(flags) == Operation::Delete
                || flags & F_HAS_UID == 0
                || !wanted.contains(&res)
            {
                continue;
            }
            let e = self.decode(last, &raw)?.event;
            if let Some(uid) = e.object_uid {
                live.push(ObjectHead {
                    uid,
                    namespace: e.namespace,
                    name: e.name,
                    last,
                });
            }
        }
        Ok(live)
    }

    fn cursor(&self, key: &str) -> Result<Option<String>> {
        match self.t()?.cursors.get(key.as_bytes())? {
            Some(v) => Ok(Some(String::from_utf8(v.to_vec()).map_err(|_| {
                Error::Corrupt(format!("cursor {key:?} is not UTF-8"))
            })?)),
            None => Ok(None),
        }
    }

    fn set_cursor(&self, key: &str, value: &str) -> Result<()> {
        let t = self.t()?;
        t.cursors.insert(key.as_bytes(), value.as_bytes())?;
        t.db.flush()?;
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        // Mark a clean shutdown so the next open can trust the persisted count.
        let w = self.lock_writer();
        let saved = self.persist_counters(&w).and_then(|()| {
            self.t()?.meta.insert(META_CLEAN, &1u64.to_be_bytes())?;
            Ok(())
        });
        drop(w);
        if let Err(error) = saved.and_then(|()| self.t()?.db.flush().map(drop).map_err(Error::from))
        {
            tracing::warn!(%error, "could not record a clean store shutdown");
        }
    }
}

/// An object's events below `hi`, newest first, along the records' links.
struct Chain<'a> {
    store: &'a SledStore,
    next: Option<EventId>,
    hi: EventId,
}

impl Iterator for Chain<'_> {
    type Item = Result<EventId>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let id = self.next.take()?;
            let events = match self.store.t() {
                Ok(t) => t.events.clone(),
                Err(e) => return Some(Err(e)),
            };
            let prev = match events.get(keys::id_key(id)) {
                Ok(Some(buf)) => peek_prev_policies(id, &buf).map(|(prev, _)| prev),
                // A link to an event that is gone (a crash between writes): the chain ends.
                Ok(None) => return None,
                Err(e) => Err(e.into()),
            };
            match prev {
                Ok(prev) => {
                    self.next = prev;
                    if id < self.hi {
                        return Some(Ok(id));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Newest-first merge of several newest-first id streams.
struct Merge<'a> {
    streams: Vec<std::iter::Peekable<Box<dyn Iterator<Item = Result<EventId>> + 'a>>>,
}

impl Iterator for Merge<'_> {
    type Item = Result<EventId>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut best: Option<(usize, EventId)> = None;
        for (i, s) in self.streams.iter_mut().enumerate() {
            match s.peek() {
                Some(Ok(id)) if best.is_none_or(|(_, b)| *id > b) => best = Some((i, *id)),
                Some(Err(_)) => return s.next(),
                _ => {}
            }
        }
        let (i, _) = best?;
        self.streams[i].next()
    }
}

/// Retention is background work: it pauses briefly every so often so that a pass over a long
/// backlog spreads its CPU use instead of taking a core from capture for tens of milliseconds.
fn pace(step: usize) {
    if step.is_multiple_of(PACE_EVERY) {
        std::thread::sleep(PACE);
    }
}

fn tagged(tag: u8, text: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(text.len() + 1);
    key.push(tag);
    key.extend_from_slice(text.as_bytes());
    key
}

/// The previous event of a raw event record (id `id`) and its policies (dictionary ids), without
/// decoding the rest. Mirrors [`SledStore::encode`].
fn peek_prev_policies(id: EventId, buf: &[u8]) -> Result<(Option<EventId>, Vec<u64>)> {
    let mut r = Reader::new(buf);
    r.u8()?;
    r.varint()?;
    let prev = match r.varint()? {
        0 => None,
        back => Some(id.saturating_sub(back)),
    };
    codec::skip_id_string(&mut r)?;
    let n = r.varint()?;
    let mut policies = Vec::with_capacity(n.min(64) as usize);
    for _ in 0..n {
        policies.push(r.varint()?);
    }
    Ok((prev, policies))
}

/// The user (dictionary id) and namespace (dictionary id, if any) of a raw event record,
/// without decoding the rest. Mirrors [`SledStore::encode`].
fn peek_actor_namespace(buf: &[u8]) -> Result<(u64, Option<u64>)> {
    let mut r = Reader::new(buf);
    let flags = r.u8()?;
    r.varint()?;
    r.varint()?;
    codec::skip_id_string(&mut r)?;
    for _ in 0..r.varint()? {
        r.varint()?;
    }
    let actor = r.varint()?;
    r.varint()?;
    r.varint()?;
    let ns = if flags & F_HAS_NS != 0 {
        Some(r.varint()?)
    } else {
        None
    };
    Ok((actor, ns))
}

/// The flags and resource (dictionary id) of a raw event record, without decoding the rest.
/// Mirrors [`SledStore::encode`].
fn peek_flags_resource(buf: &[u8]) -> Result<(u8, u64)> {
    let mut r = Reader::new(buf);
    let flags = r.u8()?;
    r.varint()?;
    r.varint()?;
    codec::skip_id_string(&mut r)?;
    for _ in 0..r.varint()? {
        r.varint()?;
    }
    r.varint()?;
    Ok((flags, r.varint()?))
}

/// The dedupe key of a raw event record, without decoding the values. Mirrors
/// [`SledStore::encode`].
fn peek_dedupe(buf: &[u8]) -> Result<[u8; 16]> {
    let mut r = Reader::new(buf);
    let flags = r.u8()?;
    r.varint()?;
    r.varint()?;
    let request_uid = codec::get_id_string(&mut r)?;
    for _ in 0..r.varint()? {
        r.varint()?;
    }
    // User, resource, kind, and the namespace if any.
    for _ in 0..3 + usize::from(flags & F_HAS_NS != 0) {
        r.varint()?;
    }
    r.bytes()?;
    if flags & F_HAS_UID != 0 {
        codec::skip_id_string(&mut r)?;
    }
    codec::skip_changes(&mut r)?;
    if flags & F_GAP != 0 {
        codec::skip_changes(&mut r)?;
    }
    codec::peek_witnessed_dedupe(&mut r, &request_uid)
}

fn event_id(outcome: AppendOutcome) -> EventId {
    match outcome {
        AppendOutcome::Recorded(id) | AppendOutcome::Linked(id) | AppendOutcome::Duplicate(id) => {
            id
        }
    }
}

/// A captured event's dedupe key as the window keys it.
fn request_key(captured: &Captured) -> u128 {
    u128::from_be_bytes(captured.dedupe)
}

fn cache_state(w: &mut Writer, object: u64, state: Value) {
    if w.states.len() >= STATE_CACHE
        && !w.states.contains_key(&object)
        && let Some(&evict) = w.states.keys().next()
    {
        // Any one will do: a miss costs one rebuild from the store.
        w.states.remove(&evict);
    }
    w.states.insert(object, state);
}

/// Bytes the probe writes: two of sled's log segments, so that a reopened database can at least
/// start writing again.
const PROBE_BYTES: usize = 1 << 20;

/// Checks that `dir` takes writes: a probe file written, synced and removed.
fn probe_writable(dir: &Path) -> Result<()> {
    use std::io::Write;
    let path = dir.join(".histor-write-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&path);
    written.map_err(|e| Error::file(&path, e))?;
    removed.map_err(|e| Error::file(&path, e))
}

fn open_error(e: sled::Error, path: &Path) -> Error {
    // sled reports a held lock as a plain io error of kind Other; recognise it by its message.
    if let sled::Error::Io(io) = &e
        && io.to_string().contains("could not acquire lock")
    {
        return Error::StoreLocked(PathBuf::from(path));
    }
    e.into()
}

/// A sled error as the crate's [`Error::Store`]: only this engine names sled.
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::store(SledError(e))
    }
}

/// sled's error, with its I/O error as its `source()` (sled's own error has none), so that
/// [`Error::is_no_space`] finds an ENOSPC inside it.
#[derive(Debug)]
struct SledError(sled::Error);

impl std::fmt::Display for SledError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SledError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            sled::Error::Io(io) => Some(io),
            _ => None,
        }
    }
}

fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
