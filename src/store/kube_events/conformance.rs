//! The Kubernetes Event contract's tests, written once and run against every engine, on the
//! Events recorded from a real kube-apiserver v1.33 (`tests/fixtures/v1.33/watch/`):
//! [`kube_events_conformance_suite!`] turns the list into `#[test]`s for an engine.

use super::*;
use crate::events::record;
use std::sync::Arc;

/// `#[test]`s running every Event contract test against the store `$open()` makes.
macro_rules! kube_events_conformance_suite {
    (optional $open:expr) => {
        $crate::store::kube_events::conformance::kube_events_conformance_suite!(@list optional $open);
    };
    ($open:expr) => {
        $crate::store::kube_events::conformance::kube_events_conformance_suite!(@list always $open);
    };
    (@list $how:ident $open:expr) => {
        $crate::store::kube_events::conformance::kube_events_conformance_suite!(@tests $how $open;
            repeats_are_counted_in_one_record,
            a_relist_adds_nothing_it_had,
            forms_in_one_call_count_in_order,
            events_are_found_by_the_object_they_regard,
            old_events_are_forgotten_oldest_first,
        );
    };
    (@tests always $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = ($open)();
                $crate::store::kube_events::conformance::$name(std::sync::Arc::new(store));
            }
        )*
    };
    (@tests optional $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some((_guard, store)) = ($open)() {
                    $crate::store::kube_events::conformance::$name(std::sync::Arc::new(store));
                }
            }
        )*
    };
}
pub(crate) use kube_events_conformance_suite;

const STREAM: &str = include_str!("../../../tests/fixtures/v1.33/watch/events.k8s.io-events.jsonl");

/// The recorded stream's Events, in order: the Deployment's, a Pod's series (counts 1, 2, 3),
/// a Pod's core Event (counts 1, 2, 3 in between the Deployment's second).
fn stream() -> Vec<KubeEvent> {
    STREAM
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|w| w["type"] != "BOOKMARK")
        .map(|w| record::parse(&w["object"]).unwrap())
        .collect()
}

fn pod() -> Regarding {
    Regarding {
        namespace: "demo".into(),
        kind: "Pod".into(),
        name: "web-7d4b9c5f8-x2x4k".into(),
    }
}

fn deployment() -> Regarding {
    Regarding {
        namespace: "demo".into(),
        kind: "Deployment".into(),
        name: "web".into(),
    }
}

pub(crate) fn repeats_are_counted_in_one_record(s: Arc<impl KubeEventStore>) {
    let events = stream();
    let mut seen = Vec::new();
    for e in &events {
        seen.extend(s.record(std::slice::from_ref(e)).unwrap());
    }
    let added: u64 = seen
        .iter()
        .map(|s| match s {
            Seen::New { count } => *count,
            Seen::Again { more } => *more,
            _ => 0,
        })
        .sum();
    assert_eq!(added, 8, "{seen:?}");
    assert_eq!(s.count().unwrap(), 4);
    let series = s.get(&events[3].uid).unwrap().unwrap();
    assert_eq!(series.event, events[3], "the newest form");
    assert_eq!(
        series.sightings.iter().map(|x| x.count).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(series.sightings[2].at, events[3].last_seen);
    assert_eq!(s.get("no-such-uid").unwrap(), None);
}

pub(crate) fn a_relist_adds_nothing_it_had(s: Arc<impl KubeEventStore>) {
    let events = stream();
    s.record(&events).unwrap();
    let before: Vec<_> = events.iter().map(|e| s.get(&e.uid).unwrap()).collect();
    // A relist after a restart or a 410: every Event's newest form, and older ones too.
    let again = s.record(&events).unwrap();
    assert!(again.iter().all(|x| *x == Seen::Same), "{again:?}");
    let after: Vec<_> = events.iter().map(|e| s.get(&e.uid).unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(s.count().unwrap(), 4);
}

pub(crate) fn forms_in_one_call_count_in_order(s: Arc<impl KubeEventStore>) {
    let events = stream();
    let (one, two, three) = (&events[1], &events[2], &events[3]);
    let mut later = three.clone();
    later.last_seen += jiff::SignedDuration::from_mins(30);
    let mut earlier_start = later.clone();
    earlier_start.first_seen -= jiff::SignedDuration::from_mins(5);
    assert_eq!(
        s.record(&[one.clone(), three.clone(), two.clone(), later.clone()])
            .unwrap(),
        [
            Seen::New { count: 1 },
            Seen::Again { more: 2 },
            Seen::Same,
            Seen::Later
        ]
    );
    let kept = s.get(&one.uid).unwrap().unwrap();
    assert_eq!(kept.event, later);
    assert_eq!(
        kept.event.first_seen, one.first_seen,
        "the earliest first-seen time"
    );
    assert_eq!(s.record(&[earlier_start]).unwrap(), [Seen::Same]);
}

pub(crate) fn events_are_found_by_the_object_they_regard(s: Arc<impl KubeEventStore>) {
    let events = stream();
    s.record(&events).unwrap();
    let t0 = events.iter().map(|e| e.first_seen).min().unwrap();
    let of_pod = s.regarding(&[pod()], t0, 100).unwrap();
    assert_eq!(of_pod.len(), 2);
    assert!(of_pod.iter().all(|k| k.event.regarding.kind == "Pod"));
    assert!(
        of_pod[0].event.last_seen >= of_pod[1].event.last_seen,
        "newest first"
    );
    let both = s.regarding(&[deployment(), pod()], t0, 100).unwrap();
    assert_eq!(both.len(), 4);
    assert!(
        both.windows(2)
            .all(|w| w[0].event.last_seen >= w[1].event.last_seen)
    );
    assert_eq!(
        s.regarding(&[deployment(), pod()], t0, 3).unwrap(),
        &both[..3]
    );
    let newest = both[0].event.last_seen;
    let recent = s.regarding(&[deployment(), pod()], newest, 100).unwrap();
    assert!(!recent.is_empty() && recent.iter().all(|k| k.event.last_seen >= newest));
    let elsewhere = Regarding {
        namespace: "other".into(),
        ..pod()
    };
    assert!(s.regarding(&[elsewhere], t0, 100).unwrap().is_empty());
    assert!(s.regarding(&[], t0, 100).unwrap().is_empty());
}

pub(crate) fn old_events_are_forgotten_oldest_first(s: Arc<impl KubeEventStore>) {
    let events = stream();
    s.record(&events).unwrap();
    let mut by_last: Vec<(Timestamp, String)> = events
        .iter()
        .map(|e| s.get(&e.uid).unwrap().unwrap())
        .map(|k| (k.event.last_seen, k.event.uid))
        .collect();
    by_last.sort();
    by_last.dedup();
    let newest = by_last.last().unwrap().0;
    assert_eq!(s.forget(newest, 1).unwrap(), 1, "bounded");
    assert_eq!(s.get(&by_last[0].1).unwrap(), None, "the oldest went first");
    let left = s.forget(newest, 100).unwrap();
    assert_eq!(s.count().unwrap(), 4 - 1 - left as u64);
    assert!(s.get(&by_last.last().unwrap().1).unwrap().is_some());
    assert_eq!(s.forget(newest, 100).unwrap(), 0);
}
