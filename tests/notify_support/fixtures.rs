// Test-only: turns a recorded AdmissionReview fixture into a ChangeEvent the way the pipeline will,
// including a stand-in for the Secret redactor (written in parallel): `data`/`stringData` values
// become `"hmac-sha256:<hex>"`. Shared by the lib's unit tests and tests/notify.rs through
// `include!`; the includer brings `ChangeEvent`, `Actor`, `ResourceId`, `KindId`, `FieldChange`,
// `ChangeOp` and `Operation` into scope.

/// The plain value stored in the Secret fixtures.
pub const SECRET_PLAIN: &str = "s3cr3t";
/// Its base64 form, as it appears in the fixtures.
pub const SECRET_BASE64: &str = "czNjcjN0";

/// Reads `tests/fixtures/admission/admissionreview-<name>.json`.
pub fn review(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/admission/admissionreview-{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The hash the redactor stores in place of a Secret value.
pub fn hmac_of(value: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"test-redaction-key");
    let tag = ring::hmac::sign(&key, value.as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("hmac-sha256:{hex}")
}

/// What the redactor will do: Secret `data`/`stringData` values become keyed hashes.
pub fn redact(object: &mut serde_json::Value) -> bool {
    if object.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
        return false;
    }
    for field in ["data", "stringData"] {
        if let Some(map) = object.get_mut(field).and_then(|d| d.as_object_mut()) {
            for v in map.values_mut() {
                let plain = v.as_str().unwrap_or_default().to_string();
                *v = serde_json::Value::String(hmac_of(&plain));
            }
        }
    }
    true
}

fn strip_noise(object: &mut serde_json::Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for k in ["managedFields", "resourceVersion", "generation"] {
            meta.remove(k);
        }
    }
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn diff(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<FieldChange>) {
    match (old, new) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}/{}", escape_pointer(k));
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(FieldChange {
                        op: ChangeOp::Remove,
                        path: p,
                        old: Some(va.clone()),
                        new: None,
                    }),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    out.push(FieldChange {
                        op: ChangeOp::Add,
                        path: format!("{path}/{}", escape_pointer(k)),
                        old: None,
                        new: Some(vb.clone()),
                    });
                }
            }
        }
        (a, b) if a != b => out.push(FieldChange {
            op: ChangeOp::Replace,
            path: path.to_string(),
            old: Some(a.clone()),
            new: Some(b.clone()),
        }),
        _ => {}
    }
}

/// The event the pipeline would make of an AdmissionReview (noise stripped, redacted, diffed).
pub fn event_from_review(review: &serde_json::Value, policy: &str) -> ChangeEvent {
    let r = &review["request"];
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut object = r.get("object").filter(|o| !o.is_null()).cloned();
    let mut old = r.get("oldObject").filter(|o| !o.is_null()).cloned();
    let mut redacted = false;
    for o in [object.as_mut(), old.as_mut()].into_iter().flatten() {
        strip_noise(o);
        redacted |= redact(o);
    }
    let operation: Operation = s(&r["operation"]).parse().expect("operation");
    let mut changes = Vec::new();
    if let (Operation::Update, Some(a), Some(b)) = (operation, &old, &object) {
        diff("", a, b, &mut changes);
    }
    let namespace = r
        .get("namespace")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    ChangeEvent {
        request_uid: s(&r["uid"]),
        received_at: "2026-11-22T02:07:53Z".parse().expect("timestamp"),
        policies: vec![policy.to_string()],
        operation,
        user: Actor {
            username: s(&r["userInfo"]["username"]),
            groups: r["userInfo"]["groups"]
                .as_array()
                .map(|g| g.iter().map(s).collect())
                .unwrap_or_default(),
            ..Default::default()
        },
        resource: ResourceId {
            group: s(&r["resource"]["group"]),
            version: s(&r["resource"]["version"]),
            resource: s(&r["resource"]["resource"]),
            subresource: r
                .get("subResource")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        },
        kind: KindId {
            group: s(&r["kind"]["group"]),
            version: s(&r["kind"]["version"]),
            kind: s(&r["kind"]["kind"]),
        },
        namespace,
        name: s(&r["name"]),
        object_uid: object
            .as_ref()
            .or(old.as_ref())
            .and_then(|o| o["metadata"]["uid"].as_str())
            .map(str::to_string),
        changes,
        object: object.or(old),
        redacted,
        state: Default::default(),
        commit: None,
        inferred: None,
        audit: None,
    }
}

/// Events made from every Secret fixture, plus one UPDATE whose password really changed (the
/// recorded update only relabels the Secret, so its diff holds no value at all).
pub fn secret_events(policy: &str) -> Vec<ChangeEvent> {
    let mut events: Vec<ChangeEvent> = ["create-secret", "update-secret", "delete-secret"]
        .iter()
        .map(|n| event_from_review(&review(n), policy))
        .collect();
    let mut rotated = review("update-secret");
    rotated["request"]["oldObject"]["data"]["password"] = serde_json::json!("b2xk");
    rotated["request"]["oldObject"]["data"]["extra"] = serde_json::json!(SECRET_BASE64);
    rotated["request"]["object"]["stringData"] = serde_json::json!({"token": SECRET_PLAIN});
    events.push(event_from_review(&rotated, policy));
    events
}

/// Asserts that `text` shows no Secret value in any form.
pub fn assert_no_secret_values(text: &str) {
    for needle in [SECRET_PLAIN, SECRET_BASE64, "hmac-sha256"] {
        assert!(
            !text.contains(needle),
            "message leaks {needle:?}:\n{text}"
        );
    }
}
