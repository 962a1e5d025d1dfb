//! How much queued work the notifier keeps: which outbox entries and digest events are dropped
//! because they are too old or too many. Pure: decides over entries and a clock it is given; the
//! notifier removes what it names and counts it.
//!
//! The bounds ([`super::NotifyConfig`]): a notification older than `maxPendingAge` (24 h) is
//! dropped as `expired`, whatever held it back (a rate limit, retries, a sink no longer
//! configured); beyond `maxPendingPerSink` (10,000) queued for one sink, the oldest are dropped as
//! `overflow`. An entry being delivered right now (the head of a busy sink) is never dropped: its
//! delivery task still owns it. Events buffered for the digest of a sink that is no longer
//! configured expire at the same age (a configured sink's window closes on time, or early when it
//! holds `maxDigestEvents`).

use super::config::SinkId;
use super::outbox::{BufferedEvent, OutboxEntry};
use jiff::{SignedDuration, Timestamp};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// Why queued work was dropped; the `reason` label of `histor_notify_dropped_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Older than `maxPendingAge`.
    Expired,
    /// Beyond `maxPendingPerSink` for its sink.
    Overflow,
}

impl DropReason {
    /// Fixed metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Expired => "expired",
            DropReason::Overflow => "overflow",
        }
    }
}

/// True when something made at `created` is older than `max_age` at `now`.
pub fn too_old(created: Timestamp, now: Timestamp, max_age: Duration) -> bool {
    let max_age = SignedDuration::try_from(max_age).unwrap_or(SignedDuration::MAX);
    now.duration_since(created) > max_age
}

/// The outbox entries to drop at `now`, with why. `entries` is the whole outbox, oldest first
/// (as [`super::outbox::Outbox::entries`] returns it); `busy` the sinks with a delivery running.
pub fn entries_to_drop(
    entries: &[(u64, OutboxEntry)],
    busy: &HashSet<SinkId>,
    now: Timestamp,
    max_age: Duration,
    max_per_sink: usize,
) -> Vec<(u64, DropReason)> {
    let mut total: HashMap<&SinkId, usize> = HashMap::new();
    for (_, e) in entries {
        *total.entry(&e.sink).or_default() += 1;
    }
    let mut seen: HashMap<&SinkId, usize> = HashMap::new();
    let mut drop = Vec::new();
    for (key, e) in entries {
        let n = seen.entry(&e.sink).or_default();
        let position = *n;
        *n += 1;
        // Only a sink's oldest entry is ever being delivered.
        if position == 0 && busy.contains(&e.sink) {
            continue;
        }
        if too_old(e.created_at, now, max_age) {
            drop.push((*key, DropReason::Expired));
        } else if total[&e.sink] - position > max_per_sink {
            // More than `max_per_sink` are newer than or as new as this one: the newest stay.
            drop.push((*key, DropReason::Overflow));
        }
    }
    drop
}

/// The digest events to drop at `now`: those of sinks `configured` rejects, older than `max_age`.
pub fn buffered_to_drop(
    buffered: &[BufferedEvent],
    configured: impl Fn(&SinkId) -> bool,
    now: Timestamp,
    max_age: Duration,
) -> Vec<&BufferedEvent> {
    buffered
        .iter()
        .filter(|b| !configured(&b.sink) && too_old(b.added_at, now, max_age))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::config::SinkKind;
    use crate::notify::message::Payload;
    use crate::notify::outbox::EntryState;
    use crate::notify::testutil::event;

    fn entry(sink: &SinkId, created: Timestamp) -> OutboxEntry {
        OutboxEntry {
            delivery_id: "d".into(),
            sink: sink.clone(),
            kind: SinkKind::Webhook,
            event_ids: vec![1],
            payload: Payload::Webhook { body: "{}".into() },
            created_at: created,
            attempts: 0,
            next_attempt_at: created,
            state: EntryState::Pending,
            last_error: None,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn entries_older_than_the_max_age_expire() {
        let a = SinkId::new("p", "a");
        let entries = vec![
            (1, entry(&a, t(0))),
            (2, entry(&a, t(10))),
            (3, entry(&a, t(20))),
        ];
        let now = t(10 + 86_400);
        // Exactly the max age is still kept; one second more is not.
        assert_eq!(
            entries_to_drop(&entries, &HashSet::new(), now, DAY, 10_000),
            vec![(1, DropReason::Expired)]
        );
        assert!(entries_to_drop(&entries, &HashSet::new(), t(86_400), DAY, 10_000).is_empty());
    }

    #[test]
    fn beyond_the_cap_the_oldest_of_that_sink_go() {
        let (a, b) = (SinkId::new("p", "a"), SinkId::new("p", "b"));
        let mut entries: Vec<(u64, OutboxEntry)> =
            (0..5).map(|i| (i, entry(&a, t(i as i64)))).collect();
        entries.insert(2, (100, entry(&b, t(1))));
        let dropped = entries_to_drop(&entries, &HashSet::new(), t(60), DAY, 3);
        assert_eq!(
            dropped,
            vec![(0, DropReason::Overflow), (1, DropReason::Overflow)]
        );
    }

    #[test]
    fn the_entry_being_delivered_is_kept() {
        let a = SinkId::new("p", "a");
        let entries: Vec<(u64, OutboxEntry)> = (0..3).map(|i| (i, entry(&a, t(0)))).collect();
        let busy = HashSet::from([a.clone()]);
        let dropped = entries_to_drop(&entries, &busy, t(2 * 86_400), DAY, 1);
        assert_eq!(
            dropped,
            vec![(1, DropReason::Expired), (2, DropReason::Expired)]
        );
        // Not expired but over the cap: the head is kept, the rest go until one is left besides.
        let dropped = entries_to_drop(&entries, &busy, t(5), DAY, 1);
        assert_eq!(dropped, vec![(1, DropReason::Overflow)]);
    }

    #[test]
    fn digest_events_of_unconfigured_sinks_expire() {
        let (kept, gone) = (SinkId::new("p", "kept"), SinkId::new("p", "gone"));
        let buffered: Vec<BufferedEvent> = [(&kept, 0), (&gone, 0), (&gone, 50_000)]
            .into_iter()
            .enumerate()
            .map(|(i, (s, at))| BufferedEvent {
                sink: s.clone(),
                id: i as u64,
                added_at: t(at),
                event: event("alice", crate::crd::Operation::Update, Some("ns"), "x"),
            })
            .collect();
        let dropped = buffered_to_drop(&buffered, |s| *s == kept, t(90_000), DAY);
        assert_eq!(dropped.iter().map(|b| b.id).collect::<Vec<_>>(), vec![1]);
    }
}
