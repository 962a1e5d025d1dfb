//! One-line human summaries of change events, such as `spec.replicas: 1 → 3`, for ChangeRecord
//! status, tables and notifications.
//!
//! Paths: JSON pointers shown as dotted paths; keys that are not plain identifiers (containing `.`,
//! `/`, spaces…) in brackets, array indexes as `[0]`:
//! `/spec/template/metadata/labels/app.kubernetes.io~1name` →
//! `spec.template.metadata.labels[app.kubernetes.io/name]`. An all-digit segment is shown as an
//! index (a pointer does not say whether it addressed an array).
//!
//! Redacted Secret values are never shown, not even as hashes: the summary says `data.password
//! changed`. Pure: depends on nothing of ours but the event types.

use super::event::{ChangeEvent, ChangeOp, FieldChange};
use super::redact::is_redacted_value;
use crate::crd::Operation;
use serde_json::Value;

/// Longest value shown, in characters, before it is shortened with `…`.
const MAX_VALUE_CHARS: usize = 40;
/// Changes shown before `(+N more)`.
const SHOWN: usize = 2;

/// A JSON pointer as a readable path (see the module docs). The root is `.`.
pub fn display_path(pointer: &str) -> String {
    let Some(rest) = pointer.strip_prefix('/') else {
        return if pointer.is_empty() {
            ".".to_owned()
        } else {
            pointer.to_owned()
        };
    };
    let mut out = String::with_capacity(pointer.len() + 4);
    for raw in rest.split('/') {
        let seg = unescape(raw);
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else if is_plain(&seg) {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        } else {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        }
    }
    out
}

fn is_plain(seg: &str) -> bool {
    !seg.is_empty()
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn unescape(raw: &str) -> std::borrow::Cow<'_, str> {
    if raw.contains('~') {
        raw.replace("~1", "/").replace("~0", "~").into()
    } else {
        raw.into()
    }
}

/// One line saying what the event did: `created`, `deleted`, or its first changes with
/// `(+N more)`.
pub fn summarize(event: &ChangeEvent) -> String {
    match event.operation {
        Operation::Create => "created".to_owned(),
        Operation::Delete => "deleted".to_owned(),
        Operation::Connect => "connected".to_owned(),
        Operation::Update if event.changes.is_empty() => "updated".to_owned(),
        Operation::Update => {
            let mut parts: Vec<String> = event.changes.iter().take(SHOWN).map(describe).collect();
            let more = event.changes.len().saturating_sub(SHOWN);
            if more > 0 {
                parts.push(format!("(+{more} more)"));
            }
            parts.join(", ")
        }
    }
}

/// One change in words: `spec.replicas: 1 → 3`, `metadata.labels.tier: + web`,
/// `data.password changed`.
pub fn describe(change: &FieldChange) -> String {
    let path = display_path(&change.path);
    if hides_values(change) {
        let verb = match change.op {
            ChangeOp::Add => "added",
            ChangeOp::Remove => "removed",
            ChangeOp::Replace => "changed",
        };
        // A whole map of hidden values (a Secret's `data` added at once): name its keys.
        let keys: Vec<&str> = match change.new.as_ref().or(change.old.as_ref()) {
            Some(Value::Object(map)) => map.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        return if keys.is_empty() {
            format!("{path} {verb}")
        } else {
            format!("{path} {verb}: {}", keys.join(", "))
        };
    }
    let show = |v: &Option<Value>| v.as_ref().map_or_else(|| "null".to_owned(), short_value);
    match change.op {
        ChangeOp::Add => format!("{path}: + {}", show(&change.new)),
        ChangeOp::Remove => format!("{path}: - {}", show(&change.old)),
        ChangeOp::Replace => format!("{path}: {} → {}", show(&change.old), show(&change.new)),
    }
}

/// True when the change carries redacted Secret values, so only its path may be shown.
pub fn hides_values(change: &FieldChange) -> bool {
    change.old.as_ref().is_some_and(contains_redacted)
        || change.new.as_ref().is_some_and(contains_redacted)
}

fn contains_redacted(v: &Value) -> bool {
    match v {
        Value::String(_) => is_redacted_value(v),
        Value::Array(a) => a.iter().any(contains_redacted),
        Value::Object(m) => m.values().any(contains_redacted),
        _ => false,
    }
}

/// A value for display: strings bare (quoted when empty or padded), the rest as compact JSON,
/// shortened to [`MAX_VALUE_CHARS`] characters.
fn short_value(v: &Value) -> String {
    let s = match v {
        Value::String(s) if !s.is_empty() && s.trim() == s && !s.contains('\n') => s.clone(),
        other => other.to_string(),
    };
    shorten(s)
}

fn shorten(s: String) -> String {
    if s.char_indices().nth(MAX_VALUE_CHARS).is_none() {
        return s;
    }
    let cut = s
        .char_indices()
        .nth(MAX_VALUE_CHARS - 1)
        .map_or(s.len(), |(i, _)| i);
    let mut out = s[..cut].to_owned();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            display_path("/spec/template/metadata/labels/app.kubernetes.io~1name"),
            "spec.template.metadata.labels[app.kubernetes.io/name]"
        );
        assert_eq!(display_path("/spec/replicas"), "spec.replicas");
        assert_eq!(
            display_path("/spec/template/spec/containers/0/image"),
            "spec.template.spec.containers[0].image"
        );
        assert_eq!(display_path("/data/a~0b"), "data[a~b]");
        assert_eq!(display_path("/data/tls.crt"), "data[tls.crt]");
        assert_eq!(display_path("/0"), "[0]");
        assert_eq!(display_path(""), ".");
        assert_eq!(display_path("/"), "[]");
    }

    fn change(op: ChangeOp, path: &str, old: Option<Value>, new: Option<Value>) -> FieldChange {
        FieldChange {
            op,
            path: path.into(),
            old,
            new,
        }
    }

    #[test]
    fn describes() {
        use ChangeOp::*;
        assert_eq!(
            describe(&change(
                Replace,
                "/spec/replicas",
                Some(json!(1)),
                Some(json!(3))
            )),
            "spec.replicas: 1 → 3"
        );
        assert_eq!(
            describe(&change(
                Add,
                "/metadata/labels/tier",
                None,
                Some(json!("web"))
            )),
            "metadata.labels.tier: + web"
        );
        assert_eq!(
            describe(&change(
                Remove,
                "/metadata/labels/tier",
                Some(json!("web")),
                None
            )),
            "metadata.labels.tier: - web"
        );
        let h = |c: char| json!(format!("hmac-sha256:{}", c.to_string().repeat(64)));
        assert_eq!(
            describe(&change(
                Replace,
                "/data/password",
                Some(h('a')),
                Some(h('b'))
            )),
            "data.password changed"
        );
        assert_eq!(
            describe(&change(Add, "/data", None, Some(json!({"k": h('c')})))),
            "data added: k"
        );
        let long = describe(&change(Add, "/spec/x", None, Some(json!("y".repeat(100)))));
        assert!(long.ends_with('…'), "{long}");
        assert_eq!(long.chars().count(), "spec.x: + ".len() + MAX_VALUE_CHARS);
        assert_eq!(
            describe(&change(Add, "/spec/x", None, Some(json!({"a": [1]})))),
            r#"spec.x: + {"a":[1]}"#
        );
        assert_eq!(
            describe(&change(Add, "/spec/x", None, Some(json!("")))),
            r#"spec.x: + """#
        );
        assert_eq!(
            shorten("é".repeat(MAX_VALUE_CHARS)),
            "é".repeat(MAX_VALUE_CHARS)
        );
    }

    #[test]
    fn summaries() {
        let mut ev: ChangeEvent = serde_json::from_value(json!({
            "requestUid": "u", "receivedAt": "2026-01-01T00:00:00Z", "policies": [],
            "operation": "UPDATE", "user": {"username": "a"},
            "resource": {"version": "v1", "resource": "configmaps"},
            "kind": {"version": "v1", "kind": "ConfigMap"}, "name": "x"
        }))
        .unwrap();
        assert_eq!(summarize(&ev), "updated");
        ev.changes = vec![
            change(
                ChangeOp::Replace,
                "/spec/replicas",
                Some(json!(1)),
                Some(json!(3)),
            ),
            change(
                ChangeOp::Add,
                "/metadata/labels/tier",
                None,
                Some(json!("web")),
            ),
            change(ChangeOp::Remove, "/a", Some(json!(1)), None),
            change(ChangeOp::Remove, "/b", Some(json!(1)), None),
        ];
        assert_eq!(
            summarize(&ev),
            "spec.replicas: 1 → 3, metadata.labels.tier: + web, (+2 more)"
        );
        ev.changes.truncate(1);
        assert_eq!(summarize(&ev), "spec.replicas: 1 → 3");
        ev.operation = Operation::Create;
        assert_eq!(summarize(&ev), "created");
        ev.operation = Operation::Delete;
        assert_eq!(summarize(&ev), "deleted");
    }
}
