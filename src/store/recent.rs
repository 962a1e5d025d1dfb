//! The request-uid dedupe window: which event each recently seen request became.
//!
//! Kept as a queue of per-time-slice hash maps rather than one map with an expiry queue: one map
//! of a few hundred thousand entries doubles all at once as it grows (a copy of megabytes, a
//! stall of the writer that every waiting review shares: p99 18–22 ms in that second at 6,000/s),
//! and expiring it costs a removal per entry. Here a new slice starts at the size of the last
//! one, so a steady load never rehashes, and expiry drops whole slices.

use super::EventId;
use std::collections::{HashMap, VecDeque};

/// A slice covers `2^SLICE_SHIFT` µs of event ids (about 8 s), so a two-minute window is ~15
/// slices and a lookup probes at most that many maps.
const SLICE_SHIFT: u32 = 23;

/// Request key (see `request_key`) → event id, for ids no older than the window.
#[derive(Default)]
pub(super) struct Recent {
    /// Oldest first: (slice number, its entries).
    slices: VecDeque<(u64, HashMap<u128, EventId>)>,
}

impl Recent {
    /// The newest event recorded for `request`, if still in the window.
    pub(super) fn get(&self, request: u128) -> Option<EventId> {
        self.slices
            .iter()
            .rev()
            .find_map(|(_, entries)| entries.get(&request).copied())
    }

    /// Remembers that `request` became event `id`. Ids must not decrease (the store's ids grow).
    pub(super) fn insert(&mut self, request: u128, id: EventId) {
        let slice = id >> SLICE_SHIFT;
        if self.slices.back().is_none_or(|(s, _)| *s < slice) {
            let size = self.slices.back().map_or(0, |(_, e)| e.len());
            self.slices.push_back((slice, HashMap::with_capacity(size)));
        }
        if let Some((_, entries)) = self.slices.back_mut() {
            entries.insert(request, id);
        }
    }

    /// Forgets slices whose every id is older than `floor`: the window keeps at least everything
    /// from `floor` on, and at most one slice more.
    pub(super) fn expire(&mut self, floor: EventId) {
        while let Some((slice, _)) = self.slices.front() {
            if (slice + 1) << SLICE_SHIFT > floor {
                break;
            }
            self.slices.pop_front();
        }
    }

    /// Requests remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slices.iter().map(|(_, e)| e.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: u64 = 1 << SLICE_SHIFT;

    #[test]
    fn finds_the_newest_event_of_a_request_across_slices() {
        let mut r = Recent::default();
        r.insert(7, 10);
        r.insert(8, SLICE + 1);
        r.insert(7, 3 * SLICE);
        assert_eq!(r.get(7), Some(3 * SLICE));
        assert_eq!(r.get(8), Some(SLICE + 1));
        assert_eq!(r.get(9), None);
    }

    #[test]
    fn expiry_drops_only_slices_entirely_older_than_the_floor() {
        let mut r = Recent::default();
        r.insert(1, 5);
        r.insert(2, SLICE + 5);
        r.insert(3, 2 * SLICE + 5);
        // The floor falls inside the second slice: it stays, with its older entry.
        r.expire(SLICE + 10);
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(2), Some(SLICE + 5));
        assert_eq!(r.get(3), Some(2 * SLICE + 5));
        r.expire(3 * SLICE);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_new_slice_starts_at_the_size_of_the_last() {
        let mut r = Recent::default();
        for i in 0..1000u64 {
            r.insert(u128::from(i), i);
        }
        r.insert(u128::MAX, SLICE);
        let (_, newest) = r.slices.back().unwrap();
        assert!(newest.capacity() >= 1000, "{}", newest.capacity());
    }
}
