//! Events recorded from a real kube-apiserver v1.33 (`tests/fixtures/v1.33/`): the watch
//! streams of both APIs over the same scenario (an events.k8s.io series patched to counts 2
//! and 3, a core Event whose `count` was bumped to 2 and 3 as the legacy recorder does), the
//! LIST they started from, and the 410 a watch from a compacted resourceVersion got.

use super::*;
use crate::store::{KubeEventStore, MemKubeEvents};
use serde_json::Value;
use std::collections::HashMap;

/// What each form adds, taken one by one, as the witness takes them into the store.
fn see(store: &MemKubeEvents, e: &KubeEvent) -> Seen {
    store.record(std::slice::from_ref(e)).unwrap()[0]
}

fn lines(file: &str) -> Vec<Value> {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/v1.33/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

/// The Events of a watch stream, in order (bookmarks and errors left out).
fn stream(file: &str) -> Vec<KubeEvent> {
    lines(file)
        .iter()
        .filter(|w| matches!(w["type"].as_str(), Some("ADDED" | "MODIFIED")))
        .map(|w| record::parse(&w["object"]).unwrap())
        .collect()
}

#[test]
fn both_apis_give_one_form() {
    let new = stream("watch/events.k8s.io-events.jsonl");
    let core = stream("watch/core-events.jsonl");
    assert_eq!(new.len(), 8);
    assert_eq!(new, core, "the same Event objects, read through either API");
}

#[test]
fn a_series_and_a_count_bump_are_one_event_each_with_its_count() {
    let events = stream("watch/events.k8s.io-events.jsonl");
    let book = MemKubeEvents::new();
    let seen: Vec<(String, Seen)> = events
        .iter()
        .map(|e| (format!("{}/{}", e.regarding.kind, e.reason), see(&book, e)))
        .collect();
    use Seen::*;
    assert_eq!(
        seen,
        [
            ("Deployment/ScalingReplicaSet".into(), New { count: 1 }),
            ("Pod/BackOff".into(), New { count: 1 }),
            ("Pod/BackOff".into(), Again { more: 1 }),
            ("Pod/BackOff".into(), Again { more: 1 }),
            ("Pod/BackOff".into(), New { count: 1 }),
            ("Deployment/ScalingReplicaSet".into(), New { count: 1 }),
            ("Pod/BackOff".into(), Again { more: 1 }),
            ("Pod/BackOff".into(), Again { more: 1 }),
        ]
    );
    assert_eq!(book.count().unwrap(), 4, "four Events, not eight");
    let series = &events[3];
    assert_eq!(series.count, 3);
    assert!(series.last_seen > series.first_seen, "{series:?}");
    assert!(series.is_warning());
    assert_eq!(series.reporter, "kubelet");
    assert_eq!(series.instance.as_deref(), Some("node-1"));
    assert_eq!(series.regarding.name, "web-7d4b9c5f8-x2x4k");
    assert_eq!(
        series
            .related
            .as_ref()
            .map(|r| (r.kind.as_str(), r.group())),
        Some(("Deployment", "apps"))
    );
    let bumped = &events[7];
    assert_eq!((bumped.count, bumped.reporter.as_str()), (3, "kubelet"));
    assert_eq!(
        bumped.regarding.field_path.as_deref(),
        Some("spec.containers{nginx}")
    );
}

#[test]
fn a_relist_adds_only_what_grew() {
    let events = stream("watch/core-events.jsonl");
    let book = MemKubeEvents::new();
    // What the LIST the watches started from held: one Event, from the apiserver's start.
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/fixtures/v1.33/list/events.k8s.io-events.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    for item in list["items"].as_array().unwrap() {
        let e = record::parse(item).unwrap();
        assert_eq!(see(&book, &e), Seen::New { count: 1 });
        assert_eq!(e.reporter, "apiserver", "deprecatedSource");
    }
    // A restart part-way: the first four updates were seen, then a relist shows the newest
    // form of each Event.
    for e in &events[..4] {
        see(&book, e);
    }
    let mut newest: HashMap<&str, &KubeEvent> = HashMap::new();
    for e in &events {
        newest.insert(e.uid.as_str(), e);
    }
    let mut added = 0;
    let mut new = 0;
    for e in newest.values() {
        match see(&book, e) {
            Seen::New { count } => {
                new += 1;
                added += count;
            }
            Seen::Again { more } => added += more,
            Seen::Later | Seen::Same => {}
        }
    }
    assert_eq!(new, 2, "the two Events made after the restart");
    assert_eq!(added, 3 + 1, "the core Event at 3, the Deployment's at 1");
    // A second relist adds nothing.
    assert!(newest.values().all(|e| see(&book, e) == Seen::Same));
}

#[test]
fn a_watch_from_a_compacted_version_is_told_410() {
    for file in [
        "watch/core-events-from-compacted-rv.jsonl",
        "watch/events.k8s.io-events-from-compacted-rv.jsonl",
    ] {
        let lines = lines(file);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["type"], "ERROR");
        assert_eq!(lines[0]["object"]["code"], 410, "{file}");
        assert!(
            record::parse(&lines[0]["object"]).is_err(),
            "a Status is no Event"
        );
    }
}

#[test]
fn a_heartbeat_that_counted_nothing_is_later_not_again() {
    let mut e = stream("watch/events.k8s.io-events.jsonl").remove(3);
    let known = Known::of(&e);
    e.last_seen += jiff::SignedDuration::from_mins(30);
    assert_eq!(observe(Some(known), &e), Seen::Later);
    e.count += 4;
    assert_eq!(observe(Some(known), &e), Seen::Again { more: 4 });
    e.count = 1;
    assert_eq!(observe(Some(known), &e), Seen::Same, "an older form");
}

#[test]
fn notes_are_cut_and_nothing_but_names_is_read_of_the_object() {
    let mut object = lines("watch/core-events.jsonl").remove(4)["object"].clone();
    object["message"] = Value::String("x".repeat(10_000));
    object["involvedObject"]["data"] = serde_json::json!({"password": "hunter2"});
    let e = record::parse(&object).unwrap();
    assert_eq!(e.note.chars().count(), record::MAX_NOTE_CHARS);
    assert!(!serde_json::to_string(&e).unwrap().contains("hunter2"));
    let mut nameless = object.clone();
    nameless["metadata"].as_object_mut().unwrap().remove("uid");
    assert_eq!(
        record::parse(&nameless),
        Err(record::NotAnEvent::Missing("metadata.uid"))
    );
}

#[test]
fn a_policy_keeps_what_its_selection_names() {
    use crate::crd::EventSelection;
    let events = stream("watch/events.k8s.io-events.jsonl");
    let kept = |sel: &EventSelection| -> Vec<String> {
        events
            .iter()
            .filter(|e| keeps(sel, e))
            .map(|e| format!("{}/{}", e.regarding.kind, e.reason))
            .collect()
    };
    // The default: Warnings only.
    let default: EventSelection = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(default, EventSelection::default());
    assert_eq!(default.max_age, "168h");
    assert_eq!(kept(&default).len(), 6);
    assert!(kept(&default).iter().all(|k| k == "Pod/BackOff"));
    let normal = EventSelection {
        types: vec!["Normal".into(), "Warning".into()],
        regarding_kinds: vec!["Deployment".into()],
        ..EventSelection::default()
    };
    assert_eq!(kept(&normal), ["Deployment/ScalingReplicaSet"; 2]);
    let other_reason = EventSelection {
        reasons: vec!["FailedScheduling".into()],
        ..EventSelection::default()
    };
    assert!(kept(&other_reason).is_empty());
}
