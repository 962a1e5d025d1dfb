//! Secret redaction: no value of a Secret's `data` or `stringData` survives; each becomes a keyed
//! hash, `hmac-sha256:<hex>`, so history can still say that a value changed, and whether two
//! versions (or `data` and `stringData`) hold the same value, without revealing it.
//!
//! The hash covers the value's bytes: base64-decoded for `data`, the string itself for
//! `stringData`, so the same secret hashes equal in both. The HMAC key belongs to the operator
//! (loading or generating it is I/O, done elsewhere); without the key a hash cannot be brute-forced
//! offline from the store. The `kubectl.kubernetes.io/last-applied-configuration` annotation (which
//! holds a full copy of the Secret) is removed here too, whatever noise stripping did before.
//!
//! Pure: depends on nothing of ours but the event types.

use super::event::KindId;
use super::noise::remove_last_applied;
use base64::Engine as _;
use ring::hmac;
use serde_json::Value;
use std::borrow::Cow;

/// Prefix of every redacted value.
pub const REDACTED_PREFIX: &str = "hmac-sha256:";

/// Replaces Secret values by keyed hashes.
pub struct Redactor {
    key: hmac::Key,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.write_str("Redactor { .. }")
    }
}

impl Redactor {
    /// A redactor keyed with `key` (32 random bytes or more is right for HMAC-SHA256).
    pub fn new(key: &[u8]) -> Self {
        Redactor {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// Redacts `obj` when it is a core/v1 Secret (by the request's `kind` or the object's own
    /// `apiVersion`/`kind`): every `data` and `stringData` value becomes a hash and the last-applied
    /// annotation goes. Returns true when `obj` is a Secret (and so was redacted).
    pub fn redact(&self, obj: &mut Value, kind: &KindId) -> bool {
        if !is_secret(obj, kind) {
            return false;
        }
        let Value::Object(top) = obj else {
            return true;
        };
        if let Some(data) = top.get_mut("data") {
            self.redact_values(data, true);
        }
        if let Some(data) = top.get_mut("stringData") {
            self.redact_values(data, false);
        }
        if let Some(Value::Object(meta)) = top.get_mut("metadata") {
            remove_last_applied(meta);
        }
        true
    }

    /// `obj` as [`redact`](Self::redact) leaves it: borrowed untouched when it is not a Secret,
    /// else a redacted copy. For readers that must not see values but must not change the
    /// request either (CEL conditions).
    pub fn redacted<'a>(&self, obj: &'a Value, kind: &KindId) -> Cow<'a, Value> {
        if !is_secret(obj, kind) {
            return Cow::Borrowed(obj);
        }
        let mut copy = obj.clone();
        self.redact(&mut copy, kind);
        Cow::Owned(copy)
    }

    fn redact_values(&self, data: &mut Value, base64: bool) {
        match data {
            Value::Object(map) => {
                for v in map.values_mut() {
                    *v = Value::String(self.hash_value(v, base64));
                }
            }
            Value::Null => {}
            // Not the shape the apiserver sends: keep nothing of it.
            other => *other = Value::String(self.hash_value(other, false)),
        }
    }

    fn hash_value(&self, v: &Value, base64: bool) -> String {
        let tag = match v {
            Value::String(s) if base64 => {
                match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(bytes) => hmac::sign(&self.key, &bytes),
                    // Not base64 (the apiserver would not send it): hash the string as it is.
                    Err(_) => hmac::sign(&self.key, s.as_bytes()),
                }
            }
            Value::String(s) => hmac::sign(&self.key, s.as_bytes()),
            other => hmac::sign(&self.key, other.to_string().as_bytes()),
        };
        let mut out = String::with_capacity(REDACTED_PREFIX.len() + 64);
        out.push_str(REDACTED_PREFIX);
        for b in tag.as_ref() {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `obj` is a core/v1 Secret, by the request's `kind` or the object's own
/// `apiVersion`/`kind` (either is enough: a hostile review may set only one of them).
fn is_secret(obj: &Value, kind: &KindId) -> bool {
    is_secret_kind(kind) || is_secret_object(obj)
}

fn is_secret_kind(kind: &KindId) -> bool {
    kind.group.is_empty() && kind.kind == "Secret"
}

fn is_secret_object(obj: &Value) -> bool {
    obj.get("kind").and_then(Value::as_str) == Some("Secret")
        && obj.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// True for a value this module produced: renderers show "changed", never the hash as a value.
pub fn is_redacted_value(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == REDACTED_PREFIX.len() + 64
            && s.starts_with(REDACTED_PREFIX)
            && s[REDACTED_PREFIX.len()..].bytes().all(|b| HEX.contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata;
    use serde_json::json;

    fn secret_kind() -> KindId {
        KindId {
            group: String::new(),
            version: "v1".into(),
            kind: "Secret".into(),
        }
    }

    #[test]
    fn nothing_of_the_value_survives() {
        let r = Redactor::new(b"test key");
        for name in ["create-secret", "update-secret", "delete-secret"] {
            let req = testdata::request(name);
            for obj in [req.object, req.old_object].into_iter().flatten() {
                let mut obj = obj;
                assert!(r.redact(&mut obj, &req.kind), "{name}");
                let text = obj.to_string();
                assert!(!text.contains("czNjcjN0"), "{name}: {text}");
                assert!(!text.contains("s3cr3t"), "{name}: {text}");
                assert!(is_redacted_value(&obj["data"]["password"]), "{name}");
                assert!(
                    obj["metadata"]["annotations"]
                        .get(LAST_APPLIED_FOR_TEST)
                        .is_none()
                );
            }
        }
    }

    const LAST_APPLIED_FOR_TEST: &str = super::super::noise::LAST_APPLIED;

    #[test]
    fn data_and_string_data_hash_equal() {
        let r = Redactor::new(b"k");
        let mut obj = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"password": "czNjcjN0"}, "stringData": {"password": "s3cr3t", "other": "x"},
            "metadata": {"annotations": {LAST_APPLIED_FOR_TEST: "{\"stringData\":{\"password\":\"s3cr3t\"}}"}}});
        assert!(
            r.redact(&mut obj, &KindId::default()),
            "recognised by the object itself"
        );
        assert_eq!(obj["data"]["password"], obj["stringData"]["password"]);
        assert_ne!(obj["stringData"]["other"], obj["stringData"]["password"]);
        assert!(obj["metadata"].get("annotations").is_none());
        assert!(!obj.to_string().contains("s3cr3t"));
    }

    #[test]
    fn key_matters_and_other_kinds_are_untouched() {
        let a = Redactor::new(b"a");
        let b = Redactor::new(b"b");
        let mut x = json!({"data": {"p": "czNjcjN0"}});
        let mut y = x.clone();
        a.redact(&mut x, &secret_kind());
        b.redact(&mut y, &secret_kind());
        assert_ne!(x, y);

        let req = testdata::request("create-configmap");
        let mut cm = req.object.clone().unwrap();
        assert!(!a.redact(&mut cm, &req.kind));
        assert_eq!(Some(cm), req.object);
    }

    #[test]
    fn odd_shapes_keep_nothing() {
        let r = Redactor::new(b"k");
        let mut obj = json!({"data": "czNjcjN0", "stringData": {"n": 5, "z": null}});
        r.redact(&mut obj, &secret_kind());
        assert!(is_redacted_value(&obj["data"]));
        assert!(is_redacted_value(&obj["stringData"]["n"]));
        assert!(is_redacted_value(&obj["stringData"]["z"]));
        assert_eq!(format!("{r:?}"), "Redactor { .. }");
    }

    #[test]
    fn recognises_only_its_own_values() {
        assert!(!is_redacted_value(&json!("hmac-sha256:xyz")));
        assert!(!is_redacted_value(&json!(1)));
        let r = Redactor::new(b"k");
        assert!(is_redacted_value(&json!(r.hash_value(&json!("v"), false))));
    }
}
