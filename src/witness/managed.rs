//! Who wrote an object last, as its `metadata.managedFields` tell it: the actor of an observed
//! change, one that a witness saw committed and no review announced. Inferred, never
//! authenticated: a field manager is a name the client chose (`kubectl-edit`, `race-1`), not a
//! user. Pure: a function over the object as the watch delivered it (managedFields included).
//!
//! The entry that changed last is the one whose `time` is newest. What that can and cannot tell,
//! seen on kube-apiserver v1.33 (`tests/fixtures/v1.33/watch/`):
//! - `time` has second precision, and the apiserver sorts the entries by operation, time and
//!   manager name. Of several writes in one second, the entry sorted last wins, which is not
//!   always the one that wrote last (the six racing PATCHes of `race` end with `race-6` last in
//!   the list while `race-1` made the last commit).
//! - An entry written through the `scale` subresource carries no `time` at all, so it loses to
//!   any timed entry: a `kubectl scale` is inferred as the manager that wrote before it.
//! - A DELETE writes no entry: the managedFields of a deleted object tell who wrote it last, not
//!   who deleted it.
//!
//! Depends on nothing of ours but the event types.

use crate::pipeline::InferredActor;
use jiff::Timestamp;
use serde_json::Value;

/// The longest manager name kept, in bytes. The apiserver allows 128 characters; what is longer
/// is cut (on a character boundary), so a hostile object cannot make a huge actor.
pub const MAX_MANAGER: usize = 128;
/// The longest `operation` kept (the real ones are `Apply` and `Update`).
const MAX_OPERATION: usize = 16;
/// The longest `subresource` kept (the real ones are `status`, `scale` and the like).
const MAX_SUBRESOURCE: usize = 64;
/// A `time` longer than this is no RFC 3339 time; it is not parsed.
const MAX_TIME: usize = 64;

/// The `managedFields` entry of `object` that changed last: newest `time` first; of entries with
/// the same time, the later in the list; entries without a (valid) time lose to every timed one.
/// Entries that are not objects with a non-empty string `manager` are ignored. `None` when no
/// entry is left (no metadata, managedFields absent or not an array), never a panic.
pub fn infer_actor(object: &Value) -> Option<InferredActor> {
    let entries = object.get("metadata")?.get("managedFields")?.as_array()?;
    let (entry, manager, time) = entries
        .iter()
        .filter_map(|entry| {
            let manager = entry.get("manager")?.as_str().filter(|m| !m.is_empty())?;
            let time = entry
                .get("time")
                .and_then(Value::as_str)
                .and_then(parse_time);
            Some((entry, manager, time))
        })
        // `None` orders before every time; of equal maxima, max_by_key returns the last.
        .max_by_key(|(_, _, time)| *time)?;
    let text = |key: &str, max: usize| {
        entry
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| bounded(s, max))
    };
    Some(InferredActor {
        manager: bounded(manager, MAX_MANAGER),
        operation: text("operation", MAX_OPERATION).unwrap_or_default(),
        time,
        subresource: text("subresource", MAX_SUBRESOURCE),
    })
}

fn parse_time(s: &str) -> Option<Timestamp> {
    if s.len() > MAX_TIME {
        return None;
    }
    s.parse().ok()
}

/// `s`, cut to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CONFIGMAPS: &str = include_str!("../../tests/fixtures/v1.33/watch/configmaps.jsonl");
    const DEPLOYMENTS: &str = include_str!("../../tests/fixtures/v1.33/watch/deployments.jsonl");
    const SECRETS: &str = include_str!("../../tests/fixtures/v1.33/watch/secrets.jsonl");

    /// The object of watch event `line` (1-based, as index.json counts) of a recorded stream.
    fn watched(stream: &str, line: usize) -> Value {
        let text = stream.lines().nth(line - 1).unwrap();
        let event: Value = serde_json::from_str(text).unwrap();
        event["object"].clone()
    }

    fn actor(stream: &str, line: usize) -> InferredActor {
        infer_actor(&watched(stream, line)).unwrap_or_else(|| panic!("no actor on line {line}"))
    }

    fn at(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn kubectl_edit_of_app_config() {
        // configmaps.jsonl:6 is the commit of admission 010 (kubectl edit), resourceVersion 235.
        let object = watched(CONFIGMAPS, 6);
        assert_eq!(object["metadata"]["resourceVersion"], "235");
        assert_eq!(
            infer_actor(&object),
            Some(InferredActor {
                manager: "kubectl-edit".into(),
                operation: "Update".into(),
                time: at("2026-12-01T21:22:31Z"),
                subresource: None,
            })
        );
    }

    #[test]
    fn each_kubectl_verb_of_app_config_names_itself() {
        for (line, manager) in [
            (1, "kubectl-client-side-apply"),
            (2, "kubectl-client-side-apply"),
            (5, "kubectl-patch"),
            (7, "kubectl-replace"),
            (9, "kubectl-create"),
            (10, "kubectl-patch"),
        ] {
            assert_eq!(actor(CONFIGMAPS, line).manager, manager, "line {line}");
        }
        assert_eq!(actor(SECRETS, 1).manager, "kubectl-create");
    }

    #[test]
    fn server_side_apply_is_an_apply() {
        for line in [3, 4] {
            let a = actor(CONFIGMAPS, line);
            assert_eq!(
                (a.manager.as_str(), a.operation.as_str()),
                ("kubectl", "Apply")
            );
            assert_eq!(a.time, at("2026-12-01T21:22:30Z"));
        }
    }

    #[test]
    fn a_tie_within_a_second_goes_to_the_later_entry() {
        // race-4's PATCH (rv 257) and the create share 21:22:44: the later entry, race-4, wins,
        // and race-4 did write last.
        assert_eq!(actor(CONFIGMAPS, 19).manager, "race-4");
        // rv 262 was race-1's commit, but four managers share 21:22:45 and the apiserver sorts
        // them by name: the guess is race-6. Second precision cannot tell them apart.
        let object = watched(CONFIGMAPS, 24);
        let names: Vec<&str> = object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "kubectl-create",
                "race-2",
                "race-4",
                "race-1",
                "race-3",
                "race-5",
                "race-6"
            ]
        );
        assert_eq!(actor(CONFIGMAPS, 24).manager, "race-6");
    }

    #[test]
    fn the_scale_entry_has_no_time_on_v1_33_so_it_loses() {
        // deployments.jsonl:2 is the commit of `kubectl scale` (rv 226): its entry is recorded,
        // with subresource scale and no time.
        let object = watched(DEPLOYMENTS, 2);
        let scale = &object["metadata"]["managedFields"][0];
        assert_eq!(scale["subresource"], "scale");
        assert!(scale.get("time").is_none());
        assert_eq!(actor(DEPLOYMENTS, 2).manager, "kubectl-create");
        // Were it timed, and newest, it would be the actor, with its subresource.
        let mut object = object;
        object["metadata"]["managedFields"][0]["time"] = "2026-12-01T21:22:28Z".into();
        assert_eq!(
            infer_actor(&object),
            Some(InferredActor {
                manager: "kubectl".into(),
                operation: "Update".into(),
                time: at("2026-12-01T21:22:28Z"),
                subresource: Some("scale".into()),
            })
        );
        // The later writes of the Deployment name their managers.
        assert_eq!(actor(DEPLOYMENTS, 3).manager, "kubectl-label");
        assert_eq!(actor(DEPLOYMENTS, 4).manager, "kubectl-set");
        assert_eq!(actor(DEPLOYMENTS, 5).manager, "kubectl-annotate");
        assert_eq!(actor(DEPLOYMENTS, 6).manager, "kubectl-label");
    }

    #[test]
    fn every_recorded_object_has_an_actor_and_bookmarks_none() {
        for stream in [CONFIGMAPS, DEPLOYMENTS, SECRETS] {
            for text in stream.lines() {
                let event: Value = serde_json::from_str(text).unwrap();
                let got = infer_actor(&event["object"]);
                if event["type"] == "BOOKMARK" {
                    assert_eq!(got, None, "{text}");
                } else {
                    let got = got.unwrap_or_else(|| panic!("{text}"));
                    assert!(!got.manager.is_empty() && got.time.is_some(), "{text}");
                }
            }
        }
    }

    #[test]
    fn timeless_entries_lose_and_alone_still_tell() {
        let object = json!({"metadata": {"managedFields": [
            {"manager": "timed", "operation": "Update", "time": "2026-12-01T21:22:28Z"},
            {"manager": "timeless", "operation": "Update"},
            {"manager": "bad-time", "operation": "Update", "time": "yesterday"},
        ]}});
        assert_eq!(infer_actor(&object).unwrap().manager, "timed");
        let object = json!({"metadata": {"managedFields": [
            {"manager": "first"}, {"manager": "second", "subresource": "status"},
        ]}});
        let a = infer_actor(&object).unwrap();
        assert_eq!((a.manager.as_str(), a.time), ("second", None));
        assert_eq!(a.subresource.as_deref(), Some("status"));
        assert_eq!(a.operation, "");
    }

    #[test]
    fn hostile_objects_give_none_or_bounded_strings() {
        for object in [
            json!(null),
            json!("x"),
            json!([1, 2]),
            json!({}),
            json!({"metadata": "x"}),
            json!({"metadata": {}}),
            json!({"metadata": {"managedFields": null}}),
            json!({"metadata": {"managedFields": {"manager": "m"}}}),
            json!({"metadata": {"managedFields": "kubectl"}}),
            json!({"metadata": {"managedFields": []}}),
            json!({"metadata": {"managedFields": [1, "m", null, [], {}]}}),
            json!({"metadata": {"managedFields": [{"manager": 7}, {"manager": ""}]}}),
        ] {
            assert_eq!(infer_actor(&object), None, "{object}");
        }

        let object = json!({"metadata": {"managedFields": [
            {"manager": "ok", "time": "2026-12-01T21:22:28Z"},
            {"manager": "numeric-time", "time": 1_800_000_000},
            {"manager": "long-time", "time": format!("2026-12-01T21:22:29Z{}", " ".repeat(1 << 20))},
            {"manager": {"nested": "x"}, "time": "2030-01-01T00:00:00Z"},
        ]}});
        assert_eq!(infer_actor(&object).unwrap().manager, "ok");

        let huge = "m".repeat(1 << 20);
        let object = json!({"metadata": {"managedFields": [{
            "manager": huge, "operation": huge, "subresource": huge,
            "time": "2026-12-01T21:22:28Z",
        }]}});
        let a = infer_actor(&object).unwrap();
        assert_eq!(a.manager.len(), MAX_MANAGER);
        assert!(a.operation.len() <= MAX_OPERATION);
        assert!(a.subresource.unwrap().len() <= MAX_SUBRESOURCE);

        // Cut on a character boundary: 'é' is two bytes, '€' three.
        let object = json!({"metadata": {"managedFields": [{"manager": "é".repeat(100)}]}});
        assert_eq!(infer_actor(&object).unwrap().manager, "é".repeat(64));
        let name = format!("{}€", "a".repeat(MAX_MANAGER - 1));
        let object = json!({"metadata": {"managedFields": [{"manager": name}]}});
        assert_eq!(
            infer_actor(&object).unwrap().manager,
            "a".repeat(MAX_MANAGER - 1)
        );
    }
}
