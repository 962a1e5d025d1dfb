//! Taking events from the event store rather than from this process's writer: after a crash
//! (the events a writer made durable but did not hand over), and continuously on the delivering
//! replica when replicas share a store (every replica's events, whichever wrote them).
//!
//! The outbox's cursor is the newest event handed over. Events past it are read oldest first in
//! windows of ids (the store pages newest first, so a window bounds what one read holds): a
//! window grows while empty and shrinks while full, and the cursor moves to each window's end,
//! never past the store's newest event, so an event committed later (whose id is above every id
//! before it) is never skipped. The shared store is followed a moment behind its newest events,
//! so that a request's other webhooks have linked their policies by the time it is handed over.
//!
//! Events read back are in the state the store holds now, which a witness may have changed
//! since they were recorded: a `confirmed` one was handed to the sinks that notify on
//! confirmation by the witness itself (`Notifier::on_resolved`, before it wrote the verdict),
//! so it goes only to those that notify on receipt; they never had it as `received`.

use super::outbox::Intake;
use super::{Door, Notifier};
use crate::store::{EventId, EventStore, Page, Query, StoredEvent};
use crate::{Error, Result};
use jiff::Timestamp;
use std::sync::Arc;
use tracing::info;

/// How far behind the newest events a shared store is followed.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Most events one pass hands over; the next pass continues.
const MAX_PER_PASS: usize = 5_000;

/// The first window of ids read past the cursor (10 s of receipt time).
const FIRST_WINDOW: u64 = 10_000_000;

/// A window holding more than this many events is halved for the next read.
const FULL_WINDOW: usize = 2_000;

impl Notifier {
    /// Hands over events that were stored but never reached the notifier (a crash between the
    /// store's append and [`Notifier::on_recorded`]). Call once at startup, after
    /// [`Notifier::set_policy`] for every policy and before new events flow. Queries the store
    /// on the blocking pool. Returns how many events it recovered.
    pub async fn recover_from(&self, store: Arc<dyn EventStore>) -> Result<usize> {
        let mut total = 0;
        loop {
            let (taken, more) = self.take_from(&store, None).await?;
            total += taken;
            if !more {
                break;
            }
        }
        if total > 0 {
            info!(
                events = total,
                "recovered events stored but not yet notified"
            );
        }
        Ok(total)
    }

    /// Makes the delivery loop take events from `store`, a store other replicas write too,
    /// whenever this replica delivers ([`OutboxStore::try_lead`](crate::store::OutboxStore)).
    /// The writer then does not hand its events over itself.
    /// Call before this replica's writer starts: on a first start the cursor is set at the
    /// store's newest event then, so that nothing recorded after it is skipped.
    pub async fn follow(&self, store: Arc<dyn EventStore>) -> Result<()> {
        let newest = newest_id(&store).await?;
        self.cursor_or_start_at(newest).await?;
        *super::lock(&self.inner.follow) = Some(store);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// One pass of following: what arrived since the last one (up to a bound).
    pub(super) async fn follow_store(&self, store: Arc<dyn EventStore>) -> Result<usize> {
        let until = Timestamp::now() - SETTLE;
        let (taken, _) = self.take_from(&store, Some(until)).await?;
        Ok(taken)
    }

    /// Hands over events past the cursor with ids before `until` (all, for `None`), oldest
    /// first, at most [`MAX_PER_PASS`]; true when more remain.
    async fn take_from(
        &self,
        store: &Arc<dyn EventStore>,
        until: Option<Timestamp>,
    ) -> Result<(usize, bool)> {
        let outbox = &self.inner.outbox;
        let newest = newest_id(store).await?;
        let cursor = self.cursor_or_start_at(newest).await?;
        let Some(newest) = newest.filter(|&n| n > cursor) else {
            return Ok((0, false));
        };
        let end = until.map_or(u64::MAX, |t| t.as_microsecond().max(0) as u64);
        // Never past the newest stored event: a later commit gets a higher id than it.
        let end = end.min(newest + 1);
        let mut from = cursor + 1;
        let mut window = FIRST_WINDOW;
        let mut taken = 0;
        while from < end && taken < MAX_PER_PASS {
            let to = from.saturating_add(window).min(end);
            let mut events = window_events(store, from, to).await?;
            events.sort_by_key(|e| e.id);
            events.dedup_by_key(|e| e.id);
            let n = events.len();
            for chunk in events.chunks(256) {
                self.take(chunk, Door::Stored).await?;
            }
            // The window is done: move the cursor to its end even when it held nothing.
            outbox
                .commit(&Intake {
                    cursor: Some(to - 1),
                    ..Intake::default()
                })
                .await?;
            taken += n;
            from = to;
            window = if n == 0 {
                window.saturating_mul(4)
            } else if n > FULL_WINDOW {
                (window / 2).max(1)
            } else {
                window
            };
        }
        Ok((taken, from < end))
    }
}

impl Notifier {
    /// The cursor; on a first start (nothing ever handed over) set at `newest`, the store's
    /// newest event, instead of notifying about the whole history (an empty store: from the
    /// beginning). Set once, by whichever replica comes first.
    async fn cursor_or_start_at(&self, newest: Option<EventId>) -> Result<EventId> {
        match self.inner.outbox.cursor().await? {
            Some(cursor) => Ok(cursor),
            None => self.inner.outbox.init_cursor(newest.unwrap_or(0)).await,
        }
    }
}

/// The id of the store's newest event.
async fn newest_id(store: &Arc<dyn EventStore>) -> Result<Option<EventId>> {
    let page = query(
        store,
        Query {
            limit: 1,
            ..Query::default()
        },
    )
    .await?;
    Ok(page.events.first().map(|e| e.id))
}

/// Every event with an id in `[from, to)`.
async fn window_events(
    store: &Arc<dyn EventStore>,
    from: EventId,
    to: EventId,
) -> Result<Vec<StoredEvent>> {
    let at = |us: u64| Timestamp::from_microsecond(us.min(i64::MAX as u64) as i64).ok();
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let q = Query {
            since: at(from),
            until: at(to),
            limit: crate::store::MAX_PAGE,
            after,
            ..Query::default()
        };
        let page = query(store, q).await?;
        events.extend(page.events);
        match page.next {
            Some(next) if after != Some(next) => after = Some(next),
            _ => return Ok(events),
        }
    }
}

/// One page of `q`, queried on the blocking pool (the store blocks on its I/O).
async fn query(store: &Arc<dyn EventStore>, q: Query) -> Result<Page> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.query(&q))
        .await
        .map_err(Error::store)?
}
