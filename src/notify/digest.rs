//! Digests: the events of one window summed up for one message (how many, who, what, where), and
//! when a window is due. Pure; the durable buffer holding a window's events lives in the outbox.

use crate::crd::Operation;
use crate::pipeline::ChangeEvent;
use jiff::Timestamp;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a batch of events amounts to.
#[derive(Clone, Debug, PartialEq)]
pub struct DigestSummary {
    /// Number of events.
    pub count: usize,
    /// Users and how many changes each made, most active first.
    pub users: Vec<(String, usize)>,
    /// Namespaces (`None`: cluster-scoped) and their change counts, busiest first.
    pub namespaces: Vec<(Option<String>, usize)>,
    /// Operations and their counts, in CREATE, UPDATE, DELETE, CONNECT order.
    pub operations: Vec<(Operation, usize)>,
    /// Resources (`deployments.apps`) and their counts, busiest first.
    pub resources: Vec<(String, usize)>,
    /// Receipt time of the first and last event.
    pub first: Option<Timestamp>,
    /// Receipt time of the last event.
    pub last: Option<Timestamp>,
}

fn ranked<K: Ord + Clone>(counts: BTreeMap<K, usize>) -> Vec<(K, usize)> {
    let mut v: Vec<_> = counts.into_iter().collect();
    // Stable sort keeps the BTreeMap's name order among equal counts: deterministic messages.
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

/// Sums up `events`.
pub fn summarize<'a>(events: impl IntoIterator<Item = &'a ChangeEvent>) -> DigestSummary {
    let mut count = 0;
    let mut users = BTreeMap::new();
    let mut namespaces = BTreeMap::new();
    let mut operations = BTreeMap::new();
    let mut resources = BTreeMap::new();
    let (mut first, mut last): (Option<Timestamp>, Option<Timestamp>) = (None, None);
    for e in events {
        count += 1;
        // An observed change's actor is inferred, and says so.
        *users.entry(crate::render::actor(e)).or_insert(0) += 1;
        *namespaces.entry(e.namespace.clone()).or_insert(0) += 1;
        *operations.entry(e.operation).or_insert(0) += 1;
        *resources.entry(e.resource.group_resource()).or_insert(0) += 1;
        first = Some(first.map_or(e.received_at, |f| f.min(e.received_at)));
        last = Some(last.map_or(e.received_at, |l| l.max(e.received_at)));
    }
    DigestSummary {
        count,
        users: ranked(users),
        namespaces: ranked(namespaces),
        operations: operations.into_iter().collect(),
        resources: ranked(resources),
        first,
        last,
    }
}

/// Up to `max` names joined with commas, then "and N others".
pub fn name_list(names: &[String], max: usize) -> String {
    let shown = names
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(max) {
        0 => shown,
        1 => format!("{shown} and 1 other"),
        n => format!("{shown} and {n} others"),
    }
}

impl DigestSummary {
    /// `200 changes by alice, bob in demo`: the gist, for subjects and headers.
    pub fn headline(&self) -> String {
        let users: Vec<String> = self.users.iter().map(|(u, _)| u.clone()).collect();
        let noun = if self.count == 1 { "change" } else { "changes" };
        let place = match self.namespaces.as_slice() {
            [(Some(ns), _)] => format!(" in {ns}"),
            [(None, _)] => " to cluster-scoped objects".to_string(),
            many => format!(" in {} namespaces", many.len()),
        };
        format!("{} {noun} by {}{place}", self.count, name_list(&users, 3))
    }

    /// `150 updated, 50 created`.
    pub fn operations_line(&self) -> String {
        self.operations
            .iter()
            .map(|(op, n)| format!("{n} {}", super::message::verb(*op)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// True when a window opened at `opened` is over at `now`.
pub fn window_due(opened: Timestamp, window: Duration, now: Timestamp) -> bool {
    let window = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    opened.checked_add(window).is_ok_and(|end| end <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testutil::event;

    #[test]
    fn summary_of_a_burst() {
        let mut events = Vec::new();
        for i in 0..200 {
            let user = if i % 4 == 0 { "bob" } else { "alice" };
            let op = if i < 50 {
                Operation::Create
            } else {
                Operation::Update
            };
            events.push(event(user, op, Some("demo"), &format!("app-{i}")));
        }
        let s = summarize(&events);
        assert_eq!(s.count, 200);
        assert_eq!(s.users, vec![("alice".into(), 150), ("bob".into(), 50)]);
        assert_eq!(s.headline(), "200 changes by alice, bob in demo");
        assert_eq!(s.operations_line(), "50 created, 150 updated");
    }

    #[test]
    fn headline_places() {
        let a = event("alice", Operation::Update, Some("a"), "x");
        let b = event("bob", Operation::Update, Some("b"), "x");
        let c = event("carol", Operation::Create, None, "n");
        let d = event("dave", Operation::Create, None, "n");
        let e = event("erin", Operation::Create, None, "n");
        assert_eq!(
            summarize([&a, &b]).headline(),
            "2 changes by alice, bob in 2 namespaces"
        );
        assert_eq!(
            summarize([&c]).headline(),
            "1 change by carol to cluster-scoped objects"
        );
        assert_eq!(
            summarize([&a, &c, &d, &e]).headline(),
            "4 changes by alice, carol, dave and 1 other in 2 namespaces"
        );
    }

    #[test]
    fn windows() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let w = Duration::from_secs(60);
        assert!(!window_due(t, w, t));
        assert!(!window_due(t, w, "2026-01-01T00:00:59Z".parse().unwrap()));
        assert!(window_due(t, w, "2026-01-01T00:01:00Z".parse().unwrap()));
    }
}
