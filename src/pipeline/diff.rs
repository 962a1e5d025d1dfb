//! Diffing two cleaned objects: an RFC 6902 JSON Patch whose operations also carry the value they
//! replace or remove ([`FieldChange`]), and on demand a unified YAML diff for people.
//!
//! The walk is the one of `json_patch::diff` (objects key by key, arrays index by index, a
//! `replace` wherever the types differ) with two changes: each operation keeps its old value, and
//! surplus array elements are removed from the last index down, so every `path` names the same
//! element in the old object and in the patch applied in order (json_patch removes them all at the
//! first surplus index, which would make old values unrecoverable by pointer).
//!
//! Pure: depends on nothing of ours but the event types.

use super::event::{ChangeOp, FieldChange};
use serde_json::{Map, Value};
use similar::TextDiff;

/// The changes that turn `old` into `new`, in an order that applies as a JSON Patch.
pub fn diff(old: &Value, new: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    let mut path = String::new();
    diff_at(old, new, &mut path, &mut out);
    out
}

fn diff_at(old: &Value, new: &Value, path: &mut String, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => diff_objects(a, b, path, out),
        (Value::Array(a), Value::Array(b)) => diff_arrays(a, b, path, out),
        (a, b) if a != b => out.push(FieldChange {
            op: ChangeOp::Replace,
            path: path.clone(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        _ => {}
    }
}

fn diff_objects(
    a: &Map<String, Value>,
    b: &Map<String, Value>,
    path: &mut String,
    out: &mut Vec<FieldChange>,
) {
    let len = path.len();
    for (k, vb) in b {
        push_segment(path, k);
        match a.get(k) {
            Some(va) => diff_at(va, vb, path, out),
            None => out.push(FieldChange {
                op: ChangeOp::Add,
                path: path.clone(),
                old: None,
                new: Some(vb.clone()),
            }),
        }
        path.truncate(len);
    }
    for (k, va) in a {
        if !b.contains_key(k) {
            push_segment(path, k);
            out.push(FieldChange {
                op: ChangeOp::Remove,
                path: path.clone(),
                old: Some(va.clone()),
                new: None,
            });
            path.truncate(len);
        }
    }
}

fn diff_arrays(a: &[Value], b: &[Value], path: &mut String, out: &mut Vec<FieldChange>) {
    let len = path.len();
    let common = a.len().min(b.len());
    for (i, (va, vb)) in a.iter().zip(b).enumerate() {
        push_index(path, i);
        diff_at(va, vb, path, out);
        path.truncate(len);
    }
    for (i, va) in a.iter().enumerate().skip(common).rev() {
        push_index(path, i);
        out.push(FieldChange {
            op: ChangeOp::Remove,
            path: path.clone(),
            old: Some(va.clone()),
            new: None,
        });
        path.truncate(len);
    }
    for (i, vb) in b.iter().enumerate().skip(common) {
        push_index(path, i);
        out.push(FieldChange {
            op: ChangeOp::Add,
            path: path.clone(),
            old: None,
            new: Some(vb.clone()),
        });
        path.truncate(len);
    }
}

fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(path, "/{i}");
}

/// Appends `/key` with RFC 6901 escaping (`~` → `~0`, `/` → `~1`).
fn push_segment(path: &mut String, key: &str) {
    path.push('/');
    if !key.contains(['~', '/']) {
        path.push_str(key);
        return;
    }
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

/// A unified diff of the YAML forms of `old` and `new` (an absent side is empty), with
/// `--- old_label` / `+++ new_label` headers. Empty when both render the same.
pub fn unified_yaml_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    old_label: &str,
    new_label: &str,
) -> String {
    let a = old.map(to_yaml).unwrap_or_default();
    let b = new.map(to_yaml).unwrap_or_default();
    if a == b {
        return String::new();
    }
    TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}

/// YAML for display; pretty JSON (also valid YAML) should the YAML writer ever refuse a value.
fn to_yaml(v: &Value) -> String {
    let mut s = serde_saphyr::to_string(v)
        .or_else(|_| serde_json::to_string_pretty(v))
        .unwrap_or_default();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ChangeEvent, testdata};
    use proptest::prelude::*;
    use serde_json::json;

    fn apply(old: &Value, changes: Vec<FieldChange>) -> Value {
        let ev = ChangeEvent {
            request_uid: String::new(),
            received_at: jiff::Timestamp::UNIX_EPOCH,
            policies: vec![],
            operation: crate::crd::Operation::Update,
            user: Default::default(),
            resource: Default::default(),
            kind: Default::default(),
            namespace: None,
            name: String::new(),
            object_uid: None,
            changes,
            object: None,
            redacted: false,
            state: Default::default(),
            commit: None,
            inferred: None,
            audit: None,
        };
        let mut v = old.clone();
        json_patch::patch(&mut v, &ev.json_patch()).unwrap();
        v
    }

    #[test]
    fn keeps_old_values() {
        let old = json!({"spec": {"replicas": 1, "gone": "x", "a/b": 1, "list": [1, 2, 3]}});
        let new = json!({"spec": {"replicas": 3, "added": true, "a/b": 2, "list": [1]}});
        let changes = diff(&old, &new);
        let find = |p: &str| changes.iter().find(|c| c.path == p).unwrap();
        assert_eq!(find("/spec/replicas").old, Some(json!(1)));
        assert_eq!(find("/spec/replicas").new, Some(json!(3)));
        assert_eq!(find("/spec/gone").op, ChangeOp::Remove);
        assert_eq!(find("/spec/gone").old, Some(json!("x")));
        assert_eq!(find("/spec/added").op, ChangeOp::Add);
        assert_eq!(find("/spec/a~1b").old, Some(json!(1)));
        assert_eq!(find("/spec/list/2").old, Some(json!(3)));
        assert_eq!(find("/spec/list/1").old, Some(json!(2)));
        assert_eq!(apply(&old, changes), new);
    }

    #[test]
    fn same_ops_as_json_patch_for_objects() {
        let old = json!({"a": {"b": 1, "c": [1, {"d": 2}]}, "x": "y"});
        let new = json!({"a": {"b": 2, "c": [1, {"d": 3}, 4]}, "z": null});
        let ours: Vec<(String, ChangeOp)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.path, c.op))
            .collect();
        let theirs = json_patch::diff(&old, &new);
        assert_eq!(ours.len(), theirs.0.len());
        assert_eq!(apply(&old, diff(&old, &new)), new);
    }

    #[test]
    fn root_replace_and_no_change() {
        assert!(diff(&json!({"a": 1}), &json!({"a": 1})).is_empty());
        let c = diff(&json!(null), &json!({"a": 1}));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, "");
        assert_eq!(c[0].op, ChangeOp::Replace);
    }

    #[test]
    fn real_update_roundtrips() {
        for name in [
            "update-deployment",
            "update-configmap",
            "update-widget",
            "update-secret",
        ] {
            let req = testdata::request(name);
            let (old, new) = (req.old_object.unwrap(), req.object.unwrap());
            assert_eq!(apply(&old, diff(&old, &new)), new, "{name}");
        }
    }

    #[test]
    fn yaml_diff() {
        let old = json!({"spec": {"replicas": 1, "image": "nginx"}});
        let new = json!({"spec": {"replicas": 3, "image": "nginx"}});
        let d = unified_yaml_diff(Some(&old), Some(&new), "a", "b");
        assert!(d.starts_with("--- a\n+++ b\n"), "{d}");
        assert!(d.contains("-  replicas: 1\n"), "{d}");
        assert!(d.contains("+  replicas: 3\n"), "{d}");
        assert!(d.contains("   image: nginx\n"), "{d}");
        assert_eq!(unified_yaml_diff(Some(&old), Some(&old), "a", "b"), "");
        let created = unified_yaml_diff(None, Some(&new), "/dev/null", "b");
        assert!(created.contains("+spec:"), "{created}");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c~/]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c~/]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn patch_applies_and_olds_are_right(old in arb_json(), new in arb_json()) {
            let changes = diff(&old, &new);
            // Each old value is what sits at its path just before the op runs.
            let mut cur = old.clone();
            for c in &changes {
                if c.op != ChangeOp::Add {
                    prop_assert_eq!(cur.pointer(&c.path), c.old.as_ref());
                }
                let one = apply(&cur, vec![c.clone()]);
                cur = one;
            }
            prop_assert_eq!(&cur, &new);
            prop_assert_eq!(changes.is_empty(), old == new);
        }
    }
}
