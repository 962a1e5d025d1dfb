//! Copying a history from one store into another, whatever their engines (`histor store copy`
//! moves a sled history to PostgreSQL with it): every event oldest first, through the contract
//! only, into [`EventStore::append_copied`], so that ids, policies and every state read back
//! as they did; and the notification outbox, so that nothing the old process had queued is
//! lost. Knows nothing of terminals: the caller watches progress through a callback.

use super::outbox::{OutboxIntake, OutboxStore};
use super::{EventId, EventStore, MAX_PAGE, Query};
use crate::pipeline::Captured;
use crate::{Error, Result};
use jiff::Timestamp;

/// Events per [`EventStore::append_copied`] call (one transaction or flush each).
pub const COPY_BATCH: usize = 500;

/// The first id window: one second. Windows double while they hold few events and halve when
/// one holds more than a page, so that empty years pass in a few queries and a busy second is
/// still read a page at a time.
const FIRST_WINDOW: u64 = 1_000_000;

/// How to copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// Events per append.
    pub batch: usize,
    /// Copy into a destination that already holds events: only source events newer than its
    /// newest are copied (what resumes an interrupted copy, which writes oldest first).
    pub into_nonempty: bool,
    /// Read every copied event back from the destination and compare it with the source.
    pub verify: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            batch: COPY_BATCH,
            into_nonempty: false,
            verify: false,
        }
    }
}

/// What a copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Events copied.
    pub copied: u64,
    /// The oldest and newest id copied.
    pub first: Option<EventId>,
    pub last: Option<EventId>,
    /// With `into_nonempty`: the destination's newest event before the copy (older source
    /// events were left out).
    pub resumed_after: Option<EventId>,
}

/// The newest event's id, if any.
fn newest(store: &dyn EventStore) -> Result<Option<EventId>> {
    let page = store.query(&Query {
        limit: 1,
        ..Query::default()
    })?;
    Ok(page.events.first().map(|e| e.id))
}

fn timestamp(id: EventId) -> Result<Timestamp> {
    Timestamp::from_microsecond(i64::try_from(id).unwrap_or(i64::MAX))
        .map_err(|e| Error::Corrupt(format!("event id {id} is not a time: {e}")))
}

/// Copies every event of `src` (as it is when the copy starts) into `dst`, oldest first,
/// calling `progress` with the running count after each batch. Memory stays bounded by one page
/// and one batch whatever the history's size.
pub fn copy_events(
    src: &dyn EventStore,
    dst: &dyn EventStore,
    options: CopyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let mut lo = 0;
    if let Some(id) = newest(dst)? {
        if !options.into_nonempty {
            return Err(Error::Usage(format!(
                "the destination already holds events (the newest is {id}); copy into an empty \
                 store, or pass --into-nonempty to copy only newer events (resuming a copy)"
            )));
        }
        report.resumed_after = Some(id);
        lo = id + 1;
    }
    let Some(end) = newest(src)?.map(|id| id + 1) else {
        return Ok(report);
    };
    let batch_size = options.batch.max(1);
    let mut batch = Vec::with_capacity(batch_size);
    let mut width = FIRST_WINDOW;
    while lo < end {
        let hi = lo.saturating_add(width).min(end);
        let page = src.query(&Query {
            since: Some(timestamp(lo)?),
            until: Some(timestamp(hi)?),
            limit: MAX_PAGE,
            ..Query::default()
        })?;
        if page.next.is_some() {
            // More than a page: ids are unique microseconds, so a window of at most a page's
            // worth of them always fits.
            width = (width / 2).max(1);
            continue;
        }
        for found in page.events.iter().rev() {
            // Gone meanwhile (retention on a live source): nothing to copy.
            let Some(stored) = src.get(found.id)? else {
                continue;
            };
            let before = src.state_before(found.id)?;
            batch.push((found.id, Captured::new(stored.event, before)));
            if batch.len() >= batch_size {
                flush(src, dst, &mut batch, options, &mut report)?;
                progress(report.copied);
            }
        }
        if page.events.len() < MAX_PAGE / 4 {
            width = width.saturating_mul(2);
        }
        lo = hi;
    }
    if !batch.is_empty() {
        flush(src, dst, &mut batch, options, &mut report)?;
        progress(report.copied);
    }
    Ok(report)
}

/// Writes one batch durably (and checks it, with `verify`).
fn flush(
    src: &dyn EventStore,
    dst: &dyn EventStore,
    batch: &mut Vec<(EventId, Captured)>,
    options: CopyOptions,
    report: &mut CopyReport,
) -> Result<()> {
    dst.append_copied(batch)?;
    dst.sync()?;
    if options.verify {
        for (id, _) in batch.iter() {
            verify_one(src, dst, *id)?;
        }
    }
    report.copied += batch.len() as u64;
    report.first = report.first.or(batch.first().map(|(id, _)| *id));
    report.last = batch.last().map(|(id, _)| *id).or(report.last);
    batch.clear();
    Ok(())
}

/// Compares event `id` in both stores: the event with its state after, and the state before.
pub fn verify_one(src: &dyn EventStore, dst: &dyn EventStore, id: EventId) -> Result<()> {
    let differs = |what: &str| {
        Err(Error::Corrupt(format!(
            "event {id} reads back from the destination with a different {what}"
        )))
    };
    if src.get(id)? != dst.get(id)? {
        return differs("event or state after it");
    }
    if src.state_before(id)? != dst.state_before(id)? {
        return differs("state before it");
    }
    Ok(())
}

/// What [`copy_outbox`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxCopy {
    /// Queued notifications copied.
    pub entries: usize,
    /// Events in digest windows copied.
    pub buffered: usize,
    /// The destination's outbox was in use already: nothing copied, so that no notification
    /// goes out twice.
    pub skipped: bool,
}

/// Copies the notification outbox: queued notifications (under fresh keys of the destination,
/// in their order), events waiting in digest windows, and the cursor (event ids are kept by the
/// copy, so it still names the same event). Skipped when the destination's outbox holds
/// anything or has a cursor.
pub async fn copy_outbox(src: &dyn OutboxStore, dst: &dyn OutboxStore) -> Result<OutboxCopy> {
    let counts = dst.counts().await?;
    if counts.pending > 0 || counts.buffered > 0 || dst.cursor().await?.is_some() {
        return Ok(OutboxCopy {
            skipped: true,
            ..OutboxCopy::default()
        });
    }
    let entries = src.entries().await?;
    let buffered = src.buffered(None).await?;
    let cursor = src.cursor().await?;
    let keys = dst.next_keys(entries.len()).await?;
    let copy = OutboxCopy {
        entries: entries.len(),
        buffered: buffered.len(),
        skipped: false,
    };
    let intake = OutboxIntake {
        entries: keys
            .into_iter()
            .zip(entries)
            .map(|(key, (_, value))| (key, value))
            .collect(),
        buffered,
        cursor,
    };
    if !intake.is_empty() {
        dst.commit(intake).await?;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{T0, assert_same_history, varied_history};
    use crate::store::outbox::BufferedRecord;
    use crate::store::{MemStore, SledStore};
    use std::sync::Arc;

    fn sled_source(dir: &std::path::Path) -> SledStore {
        let store = SledStore::open(dir).unwrap();
        varied_history(&store);
        store
    }

    fn verified() -> CopyOptions {
        CopyOptions {
            verify: true,
            ..CopyOptions::default()
        }
    }

    /// Two queued notifications, an event in a digest window and the cursor.
    async fn seed_outbox(o: &dyn OutboxStore) {
        let keys = o.next_keys(2).await.unwrap();
        o.commit(OutboxIntake {
            entries: vec![(keys[0], b"first".to_vec()), (keys[1], b"second".to_vec())],
            buffered: vec![BufferedRecord {
                sink: "team-digest".into(),
                event: T0 as u64 + 60,
                value: b"held".to_vec(),
            }],
            cursor: Some(T0 as u64 + 91),
        })
        .await
        .unwrap();
    }

    /// The same notifications in the same order (keys are the destination's own), buffered
    /// events and cursor.
    async fn assert_same_outbox(a: &dyn OutboxStore, b: &dyn OutboxStore) {
        let values = |e: Vec<(u64, Vec<u8>)>| e.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
        assert_eq!(
            values(a.entries().await.unwrap()),
            values(b.entries().await.unwrap())
        );
        assert_eq!(
            a.buffered(None).await.unwrap(),
            b.buffered(None).await.unwrap()
        );
        assert_eq!(a.cursor().await.unwrap(), b.cursor().await.unwrap());
    }

    #[test]
    fn a_sled_history_copies_into_memory_and_into_another_sled_store() {
        let dir = tempfile::tempdir().unwrap();
        let src = sled_source(&dir.path().join("src"));
        let mem = MemStore::new();
        copy_events(&src, &mem, verified(), &mut |_| {}).unwrap();
        assert_same_history(&src, &mem);
        {
            let sled = SledStore::open(dir.path().join("dst")).unwrap();
            copy_events(&src, &sled, verified(), &mut |_| {}).unwrap();
        }
        // What the copy wrote was durable: a reopened destination reads the same.
        let sled = SledStore::open(dir.path().join("dst")).unwrap();
        assert_same_history(&src, &sled);
    }

    #[test]
    fn the_outbox_comes_across_once() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = SledStore::open(dir.path()).unwrap();
        let dst = MemStore::new();
        let (from, to) = (src.outbox(), dst.outbox());
        rt.block_on(async {
            seed_outbox(&*from).await;
            let copy = copy_outbox(&*from, &*to).await.unwrap();
            assert_eq!(
                copy,
                OutboxCopy {
                    entries: 2,
                    buffered: 1,
                    skipped: false
                }
            );
            assert_same_outbox(&*from, &*to).await;
            // A second copy would send every notification twice.
            assert!(copy_outbox(&*from, &*to).await.unwrap().skipped);
            assert_eq!(to.counts().await.unwrap().pending, 2);
        });
    }

    #[test]
    fn a_sled_history_and_its_outbox_copy_into_postgresql() {
        let Some((_schema, pg)) = crate::store::postgres::tests::fresh() else {
            return;
        };
        let pg = Arc::new(pg);
        let dir = tempfile::tempdir().unwrap();
        let src = sled_source(dir.path());
        let report = copy_events(&src, &*pg, verified(), &mut |_| {}).unwrap();
        assert_eq!(report.copied, src.stats().unwrap().events);
        assert_same_history(&src, &*pg);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (from, to) = (src.outbox(), pg.outbox());
        rt.block_on(async {
            seed_outbox(&*from).await;
            assert!(!copy_outbox(&*from, &*to).await.unwrap().skipped);
            assert_same_outbox(&*from, &*to).await;
        });
    }
}
