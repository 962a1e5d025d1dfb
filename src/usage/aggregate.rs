//! Bounded aggregates of API usage: calls per endpoint × client × hour, with first and last
//! seen and status code classes, and a count, by reason, of every line and request that did not
//! make it into them.
//!
//! Counting rule: a request counts once, at its final stage (ResponseComplete, or Panic). The
//! log has one event per stage (a watch writes ResponseStarted, then ResponseComplete when it
//! ends), so earlier stages are tallied as `notFinalStage` and not counted; a watch still open
//! when the log ends is therefore not counted. Copies of the same final event (overlapping
//! files, the log and the webhook backend's batches read together) are counted once: they are
//! recognised by auditID *and* receipt time, because a client may send its own `Audit-ID`
//! header and the apiserver keeps it, so the ID alone would let a client fold all its requests
//! into one.
//!
//! Bounds: at most [`MAX_SERIES`] series (endpoint × client × hour); requests for a new series
//! past that are tallied as `overBound`. Duplicates are recognised within the last
//! [`DEDUPE_WINDOW`] to 2 × [`DEDUPE_WINDOW`] final events (8 bytes each), which covers any
//! overlap of files read in order.

use super::endpoint::{self, Client, Endpoint, Unmapped};
use super::event::{self, AuditEvent, BadLine};
use super::openapi::EndpointIndex;
use super::series::Series;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

/// Most series kept. A busy cluster has a few hundred endpoints in use by a few dozen clients;
/// 100,000 series hold a week of hours of that.
pub const MAX_SERIES: usize = 100_000;
/// Final events remembered, per generation, to recognise copies.
pub const DEDUPE_WINDOW: usize = 1 << 19;
/// Example paths kept per unmapped reason.
const UNMAPPED_EXAMPLES: usize = 3;

/// Calls and how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests.
    pub calls: u64,
    /// Earliest receipt time.
    pub first_seen: Option<jiff::Timestamp>,
    /// Latest receipt time.
    pub last_seen: Option<jiff::Timestamp>,
    /// 1xx and 3xx answers (101 Switching Protocols for exec and port-forward, redirects).
    pub other: u64,
    /// 2xx answers.
    pub success: u64,
    /// 4xx answers.
    pub client_error: u64,
    /// 5xx answers.
    pub server_error: u64,
    /// Events without a response code (a Panic stage).
    pub no_code: u64,
}

impl Counts {
    /// Counts one call, received at `time`, answered `code`.
    pub fn add(&mut self, time: Option<jiff::Timestamp>, code: Option<u16>) {
        self.calls += 1;
        if let Some(t) = time {
            self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
        match code {
            None => self.no_code += 1,
            Some(200..=299) => self.success += 1,
            Some(400..=499) => self.client_error += 1,
            Some(500..=599) => self.server_error += 1,
            Some(_) => self.other += 1,
        }
    }

    /// The tallies, in a fixed order: calls, other, success, client error, server error, no
    /// code (what stores keep as columns).
    pub fn tallies(&self) -> [u64; 6] {
        [
            self.calls,
            self.other,
            self.success,
            self.client_error,
            self.server_error,
            self.no_code,
        ]
    }

    /// Counts from [`tallies`](Counts::tallies) and the first and last times seen.
    pub fn from_tallies(
        tallies: [u64; 6],
        first_seen: Option<jiff::Timestamp>,
        last_seen: Option<jiff::Timestamp>,
    ) -> Counts {
        let [calls, other, success, client_error, server_error, no_code] = tallies;
        Counts {
            calls,
            first_seen,
            last_seen,
            other,
            success,
            client_error,
            server_error,
            no_code,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.other += other.other;
        self.success += other.success;
        self.client_error += other.client_error;
        self.server_error += other.server_error;
        self.no_code += other.no_code;
        for t in [other.first_seen, other.last_seen].into_iter().flatten() {
            self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
    }
}

/// One series: an endpoint, a client, an hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// What was called.
    pub endpoint: Endpoint,
    /// Who called.
    pub client: Client,
    /// Start of the hour (UTC, Unix seconds); `None` for events without a timestamp.
    pub hour: Option<i64>,
}

/// Requests left out of the series, by why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    /// Lines that are not audit events, by reason.
    pub bad_lines: BTreeMap<BadLine, u64>,
    /// Events of a stage before the final one.
    pub not_final_stage: u64,
    /// Copies of a final event already counted.
    pub duplicate: u64,
    /// Requests that map to no endpoint, by reason, with up to three example paths each.
    pub unmapped: BTreeMap<Unmapped, UnmappedCount>,
    /// Requests for a new series once [`MAX_SERIES`] were kept.
    pub over_bound: u64,
}

/// Requests of one unmapped reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnmappedCount {
    /// How many.
    pub count: u64,
    /// A few of their `verb path` (no query), to see what is missing.
    pub examples: BTreeSet<String>,
}

/// API usage read from audit events. Feed it lines or events, in any order; read the series and
/// tallies, or build a [`super::Report`].
#[derive(Debug)]
pub struct Usage<'a> {
    index: Option<&'a EndpointIndex>,
    series: HashMap<SeriesKey, Counts>,
    /// Requests counted into the series.
    counted: u64,
    skipped: Skipped,
    seen: Seen,
    /// True once a stored series came with an operationId.
    stored_ids: bool,
}

impl<'a> Usage<'a> {
    /// Empty usage; operationIds come from `index` when given.
    pub fn new(index: Option<&'a EndpointIndex>) -> Self {
        Usage {
            index,
            series: HashMap::new(),
            counted: 0,
            skipped: Skipped::default(),
            seen: Seen::default(),
            stored_ids: false,
        }
    }

    /// Takes one line of a JSON-lines audit log.
    pub fn add_line(&mut self, line: &[u8]) {
        match event::parse_line(line) {
            Ok(Some(event)) => self.add_event(&event),
            Ok(None) => {}
            Err(reason) => self.add_bad_line(reason),
        }
    }

    /// Counts a line that was not taken, for readers that judge lines themselves (a reader
    /// that stops buffering a line past [`event::MAX_LINE_BYTES`]).
    pub fn add_bad_line(&mut self, reason: BadLine) {
        *self.skipped.bad_lines.entry(reason).or_default() += 1;
    }

    /// Takes one audit event.
    pub fn add_event(&mut self, event: &AuditEvent) {
        if !event.is_final() {
            self.skipped.not_final_stage += 1;
            return;
        }
        if !self.seen.insert(copy_key(event)) {
            self.skipped.duplicate += 1;
            return;
        }
        let endpoint = match endpoint::map(event, self.index) {
            Ok(endpoint) => endpoint,
            Err(reason) => {
                let entry = self.skipped.unmapped.entry(reason).or_default();
                entry.count += 1;
                if entry.examples.len() < UNMAPPED_EXAMPLES {
                    let path = event.request_uri.split('?').next().unwrap_or_default();
                    // Bounded: the path is the client's to choose.
                    let example: String =
                        format!("{} {path}", event.verb).chars().take(200).collect();
                    entry.examples.insert(example);
                }
                return;
            }
        };
        let time = event.time();
        let key = SeriesKey {
            endpoint,
            client: Client::of(event),
            hour: time.map(|t| t.as_second().div_euclid(3600) * 3600),
        };
        let full = self.series.len() >= MAX_SERIES;
        match self.series.get_mut(&key) {
            Some(counts) => counts.add(time, event.code()),
            None if full => {
                self.skipped.over_bound += 1;
                return;
            }
            None => self.series.entry(key).or_default().add(time, event.code()),
        }
        self.counted += 1;
    }

    /// Adds counts the store kept (see [`super::series`]): calls to a series in an hour, or
    /// requests of an unmapped reason or over the bound.
    pub fn add_stored(&mut self, hour: i64, series: Series, counts: &Counts) {
        match series {
            Series::Calls { endpoint, client } => {
                self.stored_ids |= endpoint.operation_id.is_some();
                let key = SeriesKey {
                    endpoint: *endpoint,
                    client: *client,
                    hour: Some(hour),
                };
                self.series.entry(key).or_default().merge(counts);
                self.counted += counts.calls;
            }
            Series::Unmapped(reason) => {
                self.skipped.unmapped.entry(reason).or_default().count += counts.calls;
            }
            Series::OverBound => self.skipped.over_bound += counts.calls,
        }
    }

    /// The series, in no particular order.
    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &Counts)> {
        self.series.iter()
    }

    /// Requests counted into the series.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// What was left out, by reason.
    pub fn skipped(&self) -> &Skipped {
        &self.skipped
    }

    /// True when operationIds are being looked up, or came with stored series.
    pub fn has_index(&self) -> bool {
        self.index.is_some() || self.stored_ids
    }
}

/// What makes two final events copies of one: the auditID and the receipt time (see the module
/// documentation for why not the ID alone).
fn copy_key(event: &AuditEvent) -> u64 {
    // DefaultHasher::new() has fixed keys: the same event hashes the same across files.
    let mut h = std::hash::DefaultHasher::new();
    event.audit_id.hash(&mut h);
    event.request_received_timestamp.hash(&mut h);
    event.stage.hash(&mut h);
    h.finish()
}

/// Two generations of remembered keys: when the current one fills, it becomes the previous one
/// and the older is dropped, so memory stays bounded and recent keys are always remembered.
#[derive(Debug, Default)]
struct Seen {
    current: HashSet<u64>,
    previous: HashSet<u64>,
}

impl Seen {
    /// False when `key` was seen recently.
    fn insert(&mut self, key: u64) -> bool {
        if self.current.contains(&key) || self.previous.contains(&key) {
            return false;
        }
        if self.current.len() >= DEDUPE_WINDOW {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_forgets_only_old_generations() {
        let mut seen = Seen::default();
        for k in 0..DEDUPE_WINDOW as u64 {
            assert!(seen.insert(k));
        }
        assert!(!seen.insert(0));
        // Filling a second generation keeps the first one.
        assert!(seen.insert(u64::MAX));
        assert!(!seen.insert(1));
        assert!(seen.current.len() + seen.previous.len() <= 2 * DEDUPE_WINDOW);
    }

    #[test]
    fn status_classes() {
        let mut c = Counts::default();
        for code in [Some(200), Some(201), Some(101), Some(404), Some(503), None] {
            c.add(None, code);
        }
        assert_eq!(
            (
                c.calls,
                c.success,
                c.other,
                c.client_error,
                c.server_error,
                c.no_code
            ),
            (6, 2, 1, 1, 1, 1)
        );
    }
}
