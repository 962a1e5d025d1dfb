//! [`Spool`]: a durable first-in, first-out queue of batches on local disk, for the writer to
//! keep events in while a shared engine (PostgreSQL) cannot take them, and to hand them over in
//! order when it can. It lives with the sled engine because it is a sled database (its own, in
//! its own directory); nothing else of sled's shows through.
//!
//! One tree, `batches`: sequence number (big-endian, so key order is push order) → a format byte
//! and the batch as JSON (events and their `before`, exactly as captured). Sequence numbers
//! continue after a restart from the highest one held. A push is flushed before it returns; so is
//! a removal (a batch removed but not flushed would be handed to the store again after a crash;
//! the store recognises it as a duplicate, but observers would not hear of it twice either way).
//! The bytes held are bounded: a push that would pass the bound is [`Error::SpoolFull`].

use crate::pipeline::{Captured, ChangeEvent};
use crate::{Error, Result};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Default bound of the bytes a spool holds: 1 GiB, hours of a busy cluster's changes.
pub const DEFAULT_SPOOL_BYTES: u64 = 1 << 30;

/// The first byte of every stored batch: the encoding, so that a later one can be told apart.
const FORMAT_JSON: u8 = 1;

/// One spooled event as stored: the captured event, its `before` and its dedupe key (hex; left
/// out when it is the request uid's, as in batches spooled before keys were kept).
#[derive(Serialize)]
struct EntryRef<'a> {
    event: &'a ChangeEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: &'a Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dedupe: Option<String>,
}

#[derive(Deserialize)]
struct Entry {
    event: ChangeEvent,
    #[serde(default)]
    before: Option<Value>,
    #[serde(default)]
    dedupe: Option<String>,
}

fn hex(key: &[u8; 16]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    let mut key = [0u8; 16];
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Batches taken from the front of the spool, in push order, merged into one.
#[derive(Clone, Debug, PartialEq)]
pub struct Spooled {
    /// Sequence number of the first batch taken.
    pub first: u64,
    /// Sequence number of the last batch taken: pass it to [`Spool::remove_through`] once the
    /// store holds them.
    pub last: u64,
    /// Their events, oldest first.
    pub batch: Vec<Captured>,
}

#[derive(Default)]
struct Counts {
    /// Batches held.
    batches: u64,
    /// Bytes of the batches held (their stored values).
    bytes: u64,
    /// The sequence number the next push gets.
    next: u64,
}

/// A durable FIFO of batches in its own sled database. Safe to share between threads: one
/// pushes (the writer), another takes from the front (the drainer).
pub struct Spool {
    path: PathBuf,
    db: sled::Db,
    batches: sled::Tree,
    limit: u64,
    counts: Mutex<Counts>,
}

impl Spool {
    /// Opens (creating if needed) the spool in directory `path`, holding at most `limit_bytes` of
    /// batches; what an earlier process left in it comes first. A spool held by another process
    /// gives [`Error::StoreLocked`].
    pub fn open(path: impl AsRef<Path>, limit_bytes: u64) -> Result<Spool> {
        let path = path.as_ref();
        let db = sled::Config::new()
            .path(path)
            // Small and sequential: a batch is written once and read once.
            .cache_capacity(8 << 20)
            // Every push and removal flushes itself; a timer flush would only wait beside them.
            .flush_every_ms(None)
            .open()
            .map_err(|e| super::open_error(e, path))?;
        let batches = db.open_tree("batches")?;
        let mut counts = Counts::default();
        for kv in batches.iter() {
            let (key, value) = kv?;
            counts.batches += 1;
            counts.bytes += value.len() as u64;
            counts.next = seq_of(&key)? + 1;
        }
        Ok(Spool {
            path: path.to_owned(),
            db,
            batches,
            limit: limit_bytes,
            counts: Mutex::new(counts),
        })
    }

    /// Appends `batch` at the back and flushes it to disk; returns its sequence number.
    /// [`Error::SpoolFull`] (and nothing written) when it would take the spool past its bound.
    pub fn push(&self, batch: &[Captured]) -> Result<u64> {
        let mut value = vec![FORMAT_JSON];
        let entries: Vec<EntryRef<'_>> = batch
            .iter()
            .map(|c| EntryRef {
                event: &c.event,
                before: &c.before,
                dedupe: (c.dedupe != crate::store::digest::request_digest(&c.event.request_uid))
                    .then(|| hex(&c.dedupe)),
            })
            .collect();
        serde_json::to_writer(&mut value, &entries)?;
        let size = value.len() as u64;
        let seq = {
            let mut counts = self.counts.lock();
            if counts.bytes + size > self.limit {
                return Err(Error::SpoolFull {
                    held: counts.bytes,
                    needed: size,
                    limit: self.limit,
                });
            }
            let seq = counts.next;
            // Under the lock: sequence numbers must reach the tree in the order they are given.
            self.batches.insert(seq.to_be_bytes(), value)?;
            counts.next += 1;
            counts.batches += 1;
            counts.bytes += size;
            seq
        };
        self.db.flush()?;
        Ok(seq)
    }

    /// The oldest batches, merged, up to `max_events` events (always at least the oldest batch,
    /// however large); `None` when the spool is empty. Nothing is removed.
    pub fn peek(&self, max_events: usize) -> Result<Option<Spooled>> {
        let mut taken: Option<Spooled> = None;
        for kv in self.batches.iter() {
            let (key, value) = kv?;
            let seq = seq_of(&key)?;
            let batch = match decode(seq, &value) {
                Ok(batch) => batch,
                // Kept for a person to look at, out of the way: the batches behind it must not
                // wait for ever on one that no store can take.
                Err(error) if taken.is_none() => {
                    self.set_aside(&key, &value)?;
                    tracing::error!(%error, seq, bytes = value.len(), "spooled batch does not decode: set aside in the spool's `corrupt` tree, NOT stored");
                    continue;
                }
                Err(_) => break,
            };
            match taken.as_mut() {
                None => {
                    taken = Some(Spooled {
                        first: seq,
                        last: seq,
                        batch,
                    })
                }
                Some(t) if t.batch.len() + batch.len() <= max_events => {
                    t.last = seq;
                    t.batch.extend(batch);
                }
                Some(_) => break,
            }
            if taken.as_ref().is_some_and(|t| t.batch.len() >= max_events) {
                break;
            }
        }
        Ok(taken)
    }

    /// Removes every batch up to sequence number `last` (inclusive) and flushes.
    pub fn remove_through(&self, last: u64) -> Result<()> {
        {
            let mut counts = self.counts.lock();
            while let Some((key, value)) = self.batches.first()? {
                if seq_of(&key)? > last {
                    break;
                }
                self.batches.remove(&key)?;
                counts.batches -= 1;
                counts.bytes -= value.len() as u64;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    fn set_aside(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.db.open_tree("corrupt")?.insert(key, value)?;
        let mut counts = self.counts.lock();
        if self.batches.remove(key)?.is_some() {
            counts.batches -= 1;
            counts.bytes -= value.len() as u64;
        }
        drop(counts);
        self.db.flush()?;
        Ok(())
    }

    /// Batches held.
    pub fn len(&self) -> u64 {
        self.counts.lock().batches
    }

    /// True when no batch is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the held batches take (their encoded size, not sled's files).
    pub fn bytes(&self) -> u64 {
        self.counts.lock().bytes
    }

    /// The bound on [`bytes`](Spool::bytes).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The directory it lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn seq_of(key: &[u8]) -> Result<u64> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Corrupt(format!("spool key of {} bytes", key.len())))
}

fn decode(seq: u64, value: &[u8]) -> Result<Vec<Captured>> {
    let corrupt = |why: String| Error::Corrupt(format!("spooled batch {seq}: {why}"));
    match value.split_first() {
        Some((&FORMAT_JSON, json)) => {
            let entries: Vec<Entry> =
                serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
            entries
                .into_iter()
                .map(|e| {
                    let captured = Captured::new(e.event, e.before);
                    match e.dedupe.as_deref() {
                        None => Ok(captured),
                        Some(key) => unhex(key)
                            .map(|key| captured.with_fingerprint(key))
                            .ok_or_else(|| corrupt(format!("dedupe key {key:?}"))),
                    }
                })
                .collect()
        }
        Some((format, _)) => Err(corrupt(format!("unknown format {format}"))),
        None => Err(corrupt("empty".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TrackingPolicySpec;
    use crate::pipeline::{CompiledPolicy, Outcome, Redactor, process, testdata};

    /// The recorded review `fixture` as the pipeline captures it, a request of its own by `n`.
    fn captured(fixture: &str, n: usize) -> Captured {
        let spec: TrackingPolicySpec = serde_json::from_value(
            serde_json::json!({"resources": [{"apiGroups": ["*"], "resources": ["*"]}]}),
        )
        .unwrap();
        let policy = CompiledPolicy::compile("all", &spec).unwrap();
        let redactor = Redactor::new(b"0123456789abcdef0123456789abcdef");
        let mut req = testdata::request(fixture);
        req.uid = format!("{}-{n}", req.uid);
        match process(&req, &policy, &redactor, jiff::Timestamp::now()) {
            Outcome::Record(c) => c,
            Outcome::Skip(why) => panic!("fixture skipped: {why:?}"),
        }
    }

    fn uids(batch: &[Captured]) -> Vec<String> {
        batch.iter().map(|c| c.event.request_uid.clone()).collect()
    }

    #[test]
    fn batches_come_back_exactly_and_in_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![
            captured("update-deployment", 1),
            captured("create-secret", 2),
        ];
        let second = vec![captured("delete-configmap", 3)];
        assert!(first[0].before.is_some() && second[0].before.is_some());
        {
            let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
            assert!(spool.is_empty());
            assert_eq!(spool.peek(10).unwrap(), None);
            assert_eq!(spool.push(&first).unwrap(), 0);
            assert_eq!(spool.push(&second).unwrap(), 1);
            assert_eq!(spool.len(), 2);
        }
        let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        assert_eq!(spool.len(), 2);
        let bytes = spool.bytes();
        assert!(bytes > 0);
        let one = spool.peek(2).unwrap().unwrap();
        assert_eq!((one.first, one.last), (0, 0));
        assert_eq!(one.batch, first, "events and befores as pushed");
        let both = spool.peek(10).unwrap().unwrap();
        assert_eq!((both.first, both.last), (0, 1));
        assert_eq!(uids(&both.batch), uids(&[first, second.clone()].concat()));
        // Peeking takes nothing.
        assert_eq!(spool.len(), 2);
        spool.remove_through(0).unwrap();
        assert_eq!(spool.len(), 1);
        assert!(spool.bytes() < bytes);
        // Numbering continues after a reopen, behind what is held.
        drop(spool);
        let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        assert_eq!(spool.push(&second).unwrap(), 2);
        let rest = spool.peek(10).unwrap().unwrap();
        assert_eq!((rest.first, rest.last), (1, 2));
        spool.remove_through(rest.last).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert_eq!(spool.peek(10).unwrap(), None);
    }

    #[test]
    fn a_batch_past_the_bound_is_refused_whole_and_room_returns_with_removal() {
        let dir = tempfile::tempdir().unwrap();
        let batch = vec![captured("update-deployment", 1)];
        let probe = Spool::open(dir.path().join("probe"), DEFAULT_SPOOL_BYTES).unwrap();
        probe.push(&batch).unwrap();
        let size = probe.bytes();
        // Room for two such batches, not three.
        let spool = Spool::open(dir.path().join("spool"), 2 * size + size / 2).unwrap();
        spool.push(&batch).unwrap();
        spool.push(&batch).unwrap();
        match spool.push(&batch) {
            Err(Error::SpoolFull {
                held,
                needed,
                limit,
            }) => {
                assert_eq!((held, needed, limit), (2 * size, size, 2 * size + size / 2));
            }
            other => panic!("expected SpoolFull, got {other:?}"),
        }
        let message = spool.push(&batch).unwrap_err().to_string();
        assert!(message.contains("spool full"), "{message}");
        assert_eq!(spool.len(), 2, "nothing of the refused batch is kept");
        spool.remove_through(0).unwrap();
        assert_eq!(spool.push(&batch).unwrap(), 2);
    }

    #[test]
    fn a_batch_that_does_not_decode_is_set_aside_and_the_next_one_comes() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<Vec<Captured>> = (0..3)
            .map(|n| vec![captured("create-configmap", n)])
            .collect();
        {
            let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
            for b in &batches {
                spool.push(b).unwrap();
            }
            // A torn value where the middle batch was.
            spool
                .batches
                .insert(1u64.to_be_bytes(), &[FORMAT_JSON, b'['][..])
                .unwrap();
            spool.db.flush().unwrap();
        }
        let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        assert_eq!(spool.len(), 3);
        let first = spool.peek(10).unwrap().unwrap();
        assert_eq!(
            (first.first, first.last),
            (0, 0),
            "stops before the torn one"
        );
        assert_eq!(first.batch, batches[0]);
        spool.remove_through(0).unwrap();
        let next = spool.peek(10).unwrap().unwrap();
        assert_eq!((next.first, next.last), (2, 2));
        assert_eq!(next.batch, batches[2]);
        assert_eq!(spool.len(), 1);
        assert_eq!(
            spool.db.open_tree("corrupt").unwrap().len(),
            1,
            "kept aside"
        );
    }

    #[test]
    fn dedupe_keys_and_states_come_back_and_older_batches_fall_back_to_the_uid() {
        let dir = tempfile::tempdir().unwrap();
        let mut keyed = captured("update-deployment", 1).with_fingerprint([9; 16]);
        keyed.event.state = crate::pipeline::ChangeState::Received;
        // Keyed by its uid, as every event spooled before dedupe keys existed was.
        let c = captured("create-configmap", 2);
        let plain = Captured::new(c.event, c.before);
        let spool = Spool::open(dir.path(), DEFAULT_SPOOL_BYTES).unwrap();
        spool.push(&[keyed.clone(), plain.clone()]).unwrap();
        // As a histor without dedupe keys spooled it: events and befores only.
        let old = serde_json::json!([{"event": plain.event, "before": plain.before}]);
        let mut value = vec![FORMAT_JSON];
        serde_json::to_writer(&mut value, &old).unwrap();
        spool.batches.insert(1u64.to_be_bytes(), value).unwrap();
        let back = spool.peek(10).unwrap().unwrap();
        assert_eq!(back.batch, vec![keyed, plain.clone(), plain.clone()]);
        assert_eq!(
            back.batch[2].dedupe,
            crate::store::digest::request_digest(&plain.event.request_uid)
        );
        assert_ne!(back.batch[0].dedupe, back.batch[1].dedupe);
    }
}
