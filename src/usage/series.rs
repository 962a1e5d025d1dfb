//! Usage as a store keeps it, live: one row per series (calls to an endpoint by a client, or
//! requests that map to none, by reason) and hour, with [`Counts`]. The audit witness counts each
//! journal entry it takes out with [`count`] and adds the rows in the same write; reports read
//! them back with [`Usage::add_stored`](super::Usage::add_stored).
//!
//! Bounded as the offline aggregates are: a client is its user, impersonator and user agent
//! product (cut to 64 characters), so a series is an endpoint × identity, not a request;
//! [`Bound`] caps the series of an hour, and what comes past it is counted as
//! [`Series::OverBound`].

use super::aggregate::Counts;
use super::endpoint::{self, Client, Endpoint, Unmapped};
use super::event::AuditEvent;
use super::openapi::EndpointIndex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};

/// Most series kept per hour (the offline report's bound spread over a week of hours is
/// about 600; a cluster with many clients reaches a few thousand).
pub const MAX_SERIES_PER_HOUR: usize = 10_000;

/// What one stored row counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Series {
    /// Calls to an endpoint by a client.
    Calls {
        /// What was called.
        endpoint: Box<Endpoint>,
        /// Who called.
        client: Box<Client>,
    },
    /// Requests that map to no endpoint, for this reason.
    Unmapped(Unmapped),
    /// Requests of new series once an hour held [`MAX_SERIES_PER_HOUR`].
    OverBound,
}

impl Series {
    /// The bytes a store keys the row by (JSON: readable in the database, and stable).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The series of stored bytes; `None` for bytes this version does not read.
    pub fn decode(bytes: &[u8]) -> Option<Series> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What one final audit event adds: its hour (Unix seconds), series and counts. `None` for an
/// event of an earlier stage or without a time.
pub fn count(event: &AuditEvent, index: Option<&EndpointIndex>) -> Option<(i64, Series, Counts)> {
    if !event.is_final() {
        return None;
    }
    let time = event.time()?;
    let hour = time.as_second().div_euclid(3600) * 3600;
    let series = match endpoint::map(event, index) {
        Ok(endpoint) => Series::Calls {
            endpoint: Box::new(endpoint),
            client: Box::new(Client::of(event)),
        },
        Err(reason) => Series::Unmapped(reason),
    };
    let mut counts = Counts::default();
    counts.add(Some(time), event.code());
    Some((hour, series, counts))
}

/// The series seen per hour, to cap them: an hour past [`MAX_SERIES_PER_HOUR`] takes no new
/// one. Remembers the hours it was asked about most recently (a few), 8 bytes a series.
#[derive(Debug, Default)]
pub struct Bound {
    hours: BTreeMap<i64, HashSet<u64>>,
}

/// Hours remembered: audit events arrive within minutes of their time.
const BOUND_HOURS: usize = 3;

impl Bound {
    /// The series to count `series` under in `hour`: itself, or [`Series::OverBound`].
    pub fn admit(&mut self, hour: i64, series: Series) -> Series {
        if matches!(series, Series::OverBound) {
            return series;
        }
        let mut h = std::hash::DefaultHasher::new();
        series.hash(&mut h);
        let key = h.finish();
        let seen = self.hours.entry(hour).or_default();
        if seen.contains(&key) {
            return series;
        }
        if seen.len() >= MAX_SERIES_PER_HOUR {
            return Series::OverBound;
        }
        seen.insert(key);
        while self.hours.len() > BOUND_HOURS {
            self.hours.pop_first();
        }
        series
    }
}
