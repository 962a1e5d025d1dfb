//! Noise stripping: removes from an object what changes on every write without anyone meaning it,
//! so that diffs show only what a person (or controller) changed.
//!
//! Always removed: `metadata.managedFields`, `metadata.resourceVersion`, `metadata.generation` and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation (`annotations` goes too when that
//! leaves it empty). `status` is removed unless the policy tracks it, then the policy's
//! `ignoreFields` ([`IgnorePattern`]: JSON pointers where `*` stands for any one segment).
//!
//! [`cleaned`] builds the cleaned copy of a borrowed object without ever copying the parts it drops
//! (managedFields is often half an object); [`clean`] does the same in place. Pure functions over
//! `serde_json::Value`; no dependency on the rest of the crate.

use serde_json::{Map, Value};

/// The annotation `kubectl apply` writes: a full copy of the object (for Secrets, of its values).
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata fields that change on every write.
const NOISY_METADATA: [&str; 3] = ["managedFields", "resourceVersion", "generation"];

/// One segment of an [`IgnorePattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `*`: any key of an object, any element of an array.
    Any,
    /// A key (or, on arrays, an index), unescaped.
    Key(String),
}

/// A field pattern from `ignoreFields`: a JSON pointer (RFC 6901, `~0` and `~1` escapes) where a
/// segment `*` matches any one key or array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnorePattern {
    source: String,
    segments: Vec<Segment>,
}

impl IgnorePattern {
    /// Parses a pattern; it must start with `/` and name at least one segment.
    pub fn parse(pointer: &str) -> Result<Self, String> {
        let Some(rest) = pointer.strip_prefix('/') else {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: it must start with '/'"
            ));
        };
        let segments = rest
            .split('/')
            .map(|raw| {
                if raw == "*" {
                    return Ok(Segment::Any);
                }
                unescape(raw).map(Segment::Key).ok_or_else(|| {
                    format!(
                        "{pointer:?}: bad escape in segment {raw:?} (only ~0 and ~1 are allowed)"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(IgnorePattern {
            source: pointer.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Removes every field the pattern matches from `value`.
    pub fn remove_from(&self, value: &mut Value) {
        remove_matching(value, &self.segments);
    }
}

impl std::fmt::Display for IgnorePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('~') {
        return Some(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn remove_matching(value: &mut Value, segments: &[Segment]) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match (value, first) {
        (Value::Object(map), Segment::Any) => {
            if last {
                map.clear();
            } else {
                map.values_mut().for_each(|v| remove_matching(v, rest));
            }
        }
        (Value::Object(map), Segment::Key(k)) => {
            if last {
                map.remove(k);
            } else if let Some(v) = map.get_mut(k) {
                remove_matching(v, rest);
            }
        }
        (Value::Array(items), Segment::Any) => {
            if last {
                items.clear();
            } else {
                items.iter_mut().for_each(|v| remove_matching(v, rest));
            }
        }
        (Value::Array(items), Segment::Key(k)) => {
            let Ok(i) = k.parse::<usize>() else { return };
            if i >= items.len() {
                return;
            }
            if last {
                items.remove(i);
            } else {
                remove_matching(&mut items[i], rest);
            }
        }
        _ => {}
    }
}

/// Strips noise from `obj` in place (see the module docs).
pub fn clean(obj: &mut Value, track_status: bool, ignore: &[IgnorePattern]) {
    if let Value::Object(top) = obj {
        if !track_status {
            top.remove("status");
        }
        if let Some(Value::Object(meta)) = top.get_mut("metadata") {
            for f in NOISY_METADATA {
                meta.remove(f);
            }
            remove_last_applied(meta);
        }
    }
    for p in ignore {
        p.remove_from(obj);
    }
}

/// Removes the last-applied annotation from a `metadata` map, and `annotations` if it is left empty.
pub(crate) fn remove_last_applied(meta: &mut Map<String, Value>) {
    if let Some(Value::Object(ann)) = meta.get_mut("annotations") {
        ann.remove(LAST_APPLIED);
        if ann.is_empty() {
            meta.remove("annotations");
        }
    }
}

/// The cleaned copy of `obj`: same result as cloning then [`clean`], without copying what is dropped.
pub fn cleaned(obj: &Value, track_status: bool, ignore: &[IgnorePattern]) -> Value {
    let Value::Object(top) = obj else {
        let mut v = obj.clone();
        clean(&mut v, track_status, ignore);
        return v;
    };
    let mut out = Map::new();
    for (k, v) in top {
        match (k.as_str(), v) {
            ("status", _) if !track_status => {}
            ("metadata", Value::Object(meta)) => {
                out.insert(k.clone(), Value::Object(cleaned_metadata(meta)));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    let mut out = Value::Object(out);
    for p in ignore {
        p.remove_from(&mut out);
    }
    out
}

fn cleaned_metadata(meta: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in meta {
        match (k.as_str(), v) {
            (f, _) if NOISY_METADATA.contains(&f) => {}
            ("annotations", Value::Object(ann)) => {
                let kept: Map<String, Value> = ann
                    .iter()
                    .filter(|(a, _)| a.as_str() != LAST_APPLIED)
                    .map(|(a, v)| (a.clone(), v.clone()))
                    .collect();
                if !kept.is_empty() {
                    out.insert(k.clone(), Value::Object(kept));
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata;
    use serde_json::json;

    fn patterns(ps: &[&str]) -> Vec<IgnorePattern> {
        ps.iter()
            .map(|p| IgnorePattern::parse(p).unwrap())
            .collect()
    }

    #[test]
    fn strips_noise_from_a_real_object() {
        let req = testdata::request("create-widget");
        let mut obj = req.object.clone().unwrap();
        assert!(obj["metadata"]["annotations"][LAST_APPLIED].is_string());
        clean(&mut obj, false, &[]);
        let meta = &obj["metadata"];
        assert!(meta.get("managedFields").is_none());
        assert!(meta.get("generation").is_none());
        assert!(meta.get("annotations").is_none(), "emptied annotations go");
        assert_eq!(meta["labels"]["app"], "widgets");
        assert_eq!(meta["uid"], "c4adbf22-9bf1-455e-a09b-fa31a16e11a4");
        assert_eq!(obj["spec"]["color"], "red");
    }

    #[test]
    fn cleaned_equals_clean_on_every_fixture() {
        let ignore = patterns(&[
            "/spec/replicas",
            "/metadata/labels/*",
            "/spec/template/spec/containers/*/image",
        ]);
        for (name, _) in testdata::FIXTURES {
            let req = testdata::request(name);
            for obj in [&req.object, &req.old_object].into_iter().flatten() {
                for track in [false, true] {
                    for ig in [&[][..], &ignore[..]] {
                        let mut a = obj.clone();
                        clean(&mut a, track, ig);
                        assert_eq!(a, cleaned(obj, track, ig), "{name}");
                        if !track {
                            assert!(a.get("status").is_none());
                        }
                        assert!(a["metadata"].get("resourceVersion").is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn status_kept_when_tracked() {
        let req = testdata::request("update-widget-status");
        let obj = req.object.unwrap();
        assert!(cleaned(&obj, true, &[]).get("status").is_some());
        assert!(cleaned(&obj, false, &[]).get("status").is_none());
    }

    #[test]
    fn other_annotations_survive() {
        let mut obj = json!({"metadata": {"annotations": {LAST_APPLIED: "{}", "team": "a"}}});
        clean(&mut obj, false, &[]);
        assert_eq!(obj, json!({"metadata": {"annotations": {"team": "a"}}}));
    }

    #[test]
    fn ignore_patterns() {
        let mut obj = json!({
            "metadata": {"labels": {"a": "1", "b/c": "2"}, "annotations": {"x~y": "1", "keep": "2"}},
            "spec": {"replicas": 3, "containers": [{"name": "a", "image": "i1"}, {"name": "b", "image": "i2"}],
                     "list": [1, 2, 3]}
        });
        let ps = patterns(&[
            "/spec/replicas",
            "/metadata/labels/b~1c",
            "/metadata/annotations/x~0y",
            "/spec/containers/*/image",
            "/spec/list/1",
            "/spec/missing/deeper",
            "/spec/containers/9/image",
        ]);
        clean(&mut obj, false, &ps);
        assert_eq!(
            obj,
            json!({
                "metadata": {"labels": {"a": "1"}, "annotations": {"keep": "2"}},
                "spec": {"containers": [{"name": "a"}, {"name": "b"}], "list": [1, 3]}
            })
        );
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}});
        clean(&mut obj, false, &patterns(&["/metadata/labels/*"]));
        assert_eq!(obj, json!({"metadata": {"labels": {}}}));
    }

    #[test]
    fn bad_patterns() {
        assert!(IgnorePattern::parse("spec/replicas").is_err());
        assert!(IgnorePattern::parse("").is_err());
        assert!(IgnorePattern::parse("/a~2b").is_err());
        assert!(IgnorePattern::parse("/a~").is_err());
        assert_eq!(IgnorePattern::parse("/a~1b").unwrap().to_string(), "/a~1b");
    }
}
