//! Parsing AdmissionReview bodies: bytes in, a [`Parsed`] review (or a reason it is not one) out.
//!
//! The capture endpoint must answer every review, so parsing is split in three outcomes:
//! - [`ReviewError::NotAReview`]: the body is not JSON, or JSON that is not an AdmissionReview (no
//!   `kind: AdmissionReview`, no `request` object). The server answers 400 with the message.
//! - [`Parsed`] with `request: Err(why)`: an AdmissionReview we cannot interpret (unsupported
//!   `apiVersion`, missing `uid`, fields of the wrong type, unknown operation, nesting too deep). The
//!   server still answers `allowed: true`, echoing whatever `uid` and `apiVersion` it could find.
//! - [`Parsed`] with `request: Ok(Request)`: the request, with `object`/`oldObject` kept as
//!   [`serde_json::Value`] and moved (not copied) out of the parsed body. Their
//!   `metadata.managedFields` is skipped while parsing (never built): it is about half of a
//!   typical object and noise the pipeline drops anyway, so CEL conditions do not see it either.
//!
//! Numbers: valid JSON has no range limit, serde_json does (`f64`). A number beyond it (`1e999`, an
//! integer of hundreds of digits) would make the body unparsable, so such a body is parsed again
//! with those numbers as strings of their exact text (see `quote_wide_numbers` for why strings).
//! Numbers within range are read as serde_json reads them: integers within 64 bits exactly, the rest
//! as the nearest `f64`.
//!
//! Depth: serde_json stops at 128 levels of nesting, so no body can overflow the stack here. A
//! review nested deeper than that is re-read leniently (serde_json skips ignored values iteratively,
//! without recursion) to recover its `uid`, so even it gets a proper `allowed` answer.
//!
//! Depends on nothing of ours but the event and CRD types.

use super::event::{Actor, KindId, ResourceId};
use crate::crd::Operation;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// `apiVersion` of the current AdmissionReview API.
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";
/// `apiVersion` of the older AdmissionReview API, still accepted.
pub const ADMISSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

/// A body that is not an AdmissionReview at all: answer 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or JSON without `kind: AdmissionReview` and a `request` object.
    #[error("not an AdmissionReview: {0}")]
    NotAReview(String),
}

impl From<ReviewError> for crate::Error {
    fn from(e: ReviewError) -> Self {
        match e {
            ReviewError::NotAReview(m) => crate::Error::BadReview(m),
        }
    }
}

/// An AdmissionReview, interpretable or not: enough to answer it in every case.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The `apiVersion` to answer with: the review's own when it is a string, else
    /// [`ADMISSION_V1`].
    pub api_version: String,
    /// `request.uid` when it is a string, even if the rest of the request is unusable.
    pub uid: Option<String>,
    /// The request, or why it cannot be interpreted (for the warning log).
    pub request: Result<Request, String>,
}

impl Parsed {
    /// The response body for this review: always allowed, echoing uid and apiVersion (see
    /// [`response_uid`](Self::response_uid) and [`response_api_version`](Self::response_api_version)).
    pub fn allowed_response(&self) -> Vec<u8> {
        allowed_response(self.response_api_version(), self.response_uid())
    }

    /// The uid to answer with: the request's, or empty when it had none or one longer than
    /// [`MAX_REQUEST_UID`](super::limits::MAX_REQUEST_UID).
    ///
    /// The apiserver requires the answer's uid to equal the request's, so echoing is right for
    /// every uid it sends: UUIDs of 36 characters. A longer uid never comes from an apiserver, and
    /// echoing it would hand whoever sent it a response as large as their request (a megabyte uid
    /// makes a megabyte answer). Truncating would match nothing either, so the answer is a plain
    /// well-formed `allowed: true` with an empty uid: still allowed, as every review is.
    pub fn response_uid(&self) -> &str {
        match self.uid.as_deref() {
            Some(uid) if uid.len() <= super::limits::MAX_REQUEST_UID => uid,
            _ => "",
        }
    }

    /// The `apiVersion` to answer with: the review's own, or [`ADMISSION_V1`] when it is longer
    /// than any real one could be ([`MAX_API_VERSION`](super::limits::MAX_API_VERSION)); for the
    /// same reason as [`response_uid`](Self::response_uid).
    pub fn response_api_version(&self) -> &str {
        if self.api_version.len() <= super::limits::MAX_API_VERSION {
            &self.api_version
        } else {
            ADMISSION_V1
        }
    }
}

/// What histor keeps of an AdmissionRequest.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `request.uid`: unique per webhook call (two webhooks, or a conflict retry, get new ones).
    pub uid: String,
    /// Kind of `object` (for `scale`, `autoscaling/v1 Scale`).
    pub kind: KindId,
    /// Resource the request was made against, with `subResource`.
    pub resource: ResourceId,
    /// Object name; empty for `generateName` creates before the name is known.
    pub name: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The operation.
    pub operation: Operation,
    /// Who made the request.
    pub user: Actor,
    /// The object after the change (`None` for DELETE).
    pub object: Option<Value>,
    /// The object before the change (`None` for CREATE).
    pub old_object: Option<Value>,
    /// True for dry-run requests, which change nothing.
    pub dry_run: bool,
    /// Create/Update/Delete options, as sent.
    pub options: Option<Value>,
}

impl Request {
    /// 128 bits of the SHA-256 of what identifies one attempt at a change, whichever webhook it
    /// was sent to: operation, resource group, resource, subresource, namespace, name, object uid,
    /// `oldObject.metadata.resourceVersion` (empty for CREATE), `userInfo.username` and `object`
    /// (as JSON; `null` for DELETE), separated by NUL.
    ///
    /// Why not `uid`: measured on v1.33, the apiserver gives each webhook call its own `uid`, so
    /// two policies (two webhooks) matching one request see two uids for one change. Why the old
    /// resourceVersion: a conflict retry calls the webhooks again with a new uid *and* a newer
    /// `oldObject`, and only the last attempt is committed, so each attempt must stay apart.
    /// `object` is as parsed (its `managedFields` skipped), which every call of one attempt shares.
    ///
    /// Computed from the fields each time (by the pipeline, once per policy), so it can never
    /// disagree with the request it describes.
    pub fn fingerprint(&self) -> [u8; 16] {
        let object_uid = [self.object.as_ref(), self.old_object.as_ref()]
            .into_iter()
            .find_map(|o| o?.get("metadata")?.get("uid")?.as_str())
            .unwrap_or_default();
        let old_version = self
            .old_object
            .as_ref()
            .and_then(|o| o.get("metadata")?.get("resourceVersion")?.as_str())
            .unwrap_or_default();
        let mut ctx = DigestWriter::new();
        for part in [
            self.operation.as_str(),
            &self.resource.group,
            &self.resource.resource,
            self.resource.subresource.as_deref().unwrap_or_default(),
            self.namespace.as_deref().unwrap_or_default(),
            &self.name,
            object_uid,
            old_version,
            &self.user.username,
        ] {
            ctx.put(part.as_bytes());
            ctx.put(&[0]);
        }
        // Writing into a digest cannot fail, nor can serialising a Value (its keys are strings).
        let _ = serde_json::to_writer(&mut ctx, &self.object);
        ctx.finish()
    }
}

/// Feeds what serde_json writes straight into a SHA-256 context, without building the JSON text:
/// a small buffer gathers serde_json's many tiny writes into fewer digest updates.
struct DigestWriter {
    ctx: ring::digest::Context,
    buf: [u8; 1024],
    len: usize,
}

impl DigestWriter {
    fn new() -> Self {
        DigestWriter {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            buf: [0; 1024],
            len: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        if self.len + bytes.len() > self.buf.len() {
            self.drain();
            if bytes.len() >= self.buf.len() {
                self.ctx.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn drain(&mut self) {
        self.ctx.update(&self.buf[..self.len]);
        self.len = 0;
    }

    fn finish(mut self) -> [u8; 16] {
        self.drain();
        let d = self.ctx.finish();
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        out
    }
}

impl std::io::Write for DigestWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.put(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses an AdmissionReview body. Never panics, whatever the bytes.
pub fn parse(body: &[u8]) -> Result<Parsed, ReviewError> {
    match parse_json(body) {
        Ok(value) => classify(value),
        Err(e) if is_recursion_limit(&e) => parse_too_deep(body, &e),
        Err(e) if is_out_of_range(&e) => {
            let invalid = || ReviewError::NotAReview(format!("invalid JSON: {e}"));
            // Rare (no apiserver sends such numbers), so the copy is only made here.
            let quoted = quote_wide_numbers(body).ok_or_else(invalid)?;
            match parse_json(&quoted) {
                Ok(value) => classify(value),
                Err(e) if is_recursion_limit(&e) => parse_too_deep(&quoted, &e),
                Err(_) => Err(invalid()),
            }
        }
        Err(e) => Err(ReviewError::NotAReview(format!("invalid JSON: {e}"))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    Lean(Level::Top)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
}

/// The response body for a review: `allowed: true` with its uid, in its apiVersion.
pub fn allowed_response(api_version: &str, uid: &str) -> Vec<u8> {
    answer(api_version, uid, false)
}

/// [`allowed_response`] for a review histor records: it also carries the uid as the audit
/// annotation [`AUDIT_UID_ANNOTATION`], which the apiserver records in the request's audit event
/// as `<webhook name>/request-uid`, joining that audit event to the change exactly. Only
/// recorded reviews carry it, so an audit event that names a uid names a change histor has (or
/// is writing). An empty uid is left out.
pub fn recorded_response(api_version: &str, uid: &str) -> Vec<u8> {
    answer(api_version, uid, true)
}

fn answer(api_version: &str, uid: &str, note: bool) -> Vec<u8> {
    // Built by hand: cheaper than a serde struct and cannot fail; strings still go through
    // serde_json so quotes and control characters in a hostile uid stay escaped.
    let mut out = Vec::with_capacity(128 + api_version.len() + 2 * uid.len());
    out.extend_from_slice(b"{\"apiVersion\":");
    write_json_str(&mut out, api_version);
    out.extend_from_slice(b",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    write_json_str(&mut out, uid);
    out.extend_from_slice(b",\"allowed\":true");
    if note && !uid.is_empty() {
        out.extend_from_slice(b",\"auditAnnotations\":{\"");
        out.extend_from_slice(AUDIT_UID_ANNOTATION.as_bytes());
        out.extend_from_slice(b"\":");
        write_json_str(&mut out, uid);
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    out
}

/// The key of the audit annotation a recorded review's answer carries: the review's uid. The apiserver
/// prefixes it with the webhook's name (`<policy>.histor.dev/request-uid`).
pub const AUDIT_UID_ANNOTATION: &str = "request-uid";

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail; fall back to an empty string all the same.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Where in the review a JSON value sits, for [`Lean`].
#[derive(Clone, Copy)]
enum Level {
    Top,
    Request,
    Object,
    Metadata,
    Other,
}

/// Reads JSON into a [`Value`] like `Value`'s own `Deserialize`, except that
/// `request.object.metadata.managedFields` and `request.oldObject.metadata.managedFields` are skipped
/// without being built: they are about half of a typical object, and noise that is dropped anyway.
struct Lean(Level);

impl<'de> DeserializeSeed<'de> for Lean {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Lean {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let next = match (self.0, key.as_str()) {
                (Level::Metadata, "managedFields") => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                (Level::Top, "request") => Level::Request,
                (Level::Request, "object" | "oldObject") => Level::Object,
                (Level::Object, "metadata") => Level::Metadata,
                _ => Level::Other,
            };
            let value = match next {
                Level::Other => map.next_value::<Value>()?,
                level => map.next_value_seed(Lean(level))?,
            };
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

fn is_recursion_limit(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("recursion limit exceeded")
}

fn is_out_of_range(e: &serde_json::Error) -> bool {
    e.is_syntax() && e.to_string().starts_with("number out of range")
}

/// `body` with every number serde_json cannot hold (beyond `f64`'s range: `1e999`, an integer of
/// hundreds of digits) turned into a JSON string of its exact text; `None` when there is none, or
/// when a number token is malformed (then the body is not JSON, and the first error stands).
///
/// Why strings: valid JSON has no limit on numbers, the promise is `allowed` for every well-formed
/// review, and the number is user data that history should show digit for digit. serde_json
/// holds such numbers only with its `arbitrary_precision` feature, which changes every `Value` in
/// the program (kube's included) and makes any JSON object whose first key is
/// `$serde_json::private::Number` parse as a number, or fail to parse at all: a hostile review
/// could then earn a 400, or make stored history unreadable. A string keeps every digit and is
/// harmless everywhere. Only strings and numbers are lexed; everything else is left for serde_json
/// to judge on the second parse, so invalid JSON stays invalid.
fn quote_wide_numbers(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut i, mut copied) = (0, 0);
    while i < body.len() {
        match body[i] {
            b'"' => {
                // Skip the string, escapes included; an unterminated one ends the scan.
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = number_end(body, i)?;
                let text = &body[i..end];
                let fits = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(f64::is_finite);
                if !fits {
                    out.extend_from_slice(&body[copied..i]);
                    out.push(b'"');
                    out.extend_from_slice(text);
                    out.push(b'"');
                    copied = end;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&body[copied..]);
    Some(out)
}

/// End of the JSON number starting at `start` (`-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`),
/// or `None` when what starts there is not one.
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > from).then_some(i)
    };
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

fn classify(value: Value) -> Result<Parsed, ReviewError> {
    let Value::Object(mut top) = value else {
        return Err(ReviewError::NotAReview(format!(
            "expected a JSON object, got {}",
            type_name(&value)
        )));
    };
    match top.get("kind") {
        Some(Value::String(k)) if k == "AdmissionReview" => {}
        Some(Value::String(k)) => {
            return Err(ReviewError::NotAReview(format!(
                "kind is {k:?}, expected \"AdmissionReview\""
            )));
        }
        Some(other) => {
            return Err(ReviewError::NotAReview(format!(
                "kind is a {}, expected the string \"AdmissionReview\"",
                type_name(other)
            )));
        }
        None => return Err(ReviewError::NotAReview("no kind".into())),
    }
    let request = match top.remove("request") {
        Some(Value::Object(r)) => r,
        Some(other) => {
            return Err(ReviewError::NotAReview(format!(
                "request is a {}, expected an object",
                type_name(&other)
            )));
        }
        None => return Err(ReviewError::NotAReview("no request".into())),
    };
    let (api_version, version_ok) = match top.get("apiVersion") {
        Some(Value::String(v)) => (v.clone(), v == ADMISSION_V1 || v == ADMISSION_V1BETA1),
        _ => (ADMISSION_V1.to_owned(), false),
    };
    let uid = match request.get("uid") {
        Some(Value::String(u)) => Some(u.clone()),
        _ => None,
    };
    let request = if version_ok {
        interpret(request)
    } else {
        Err(match top.get("apiVersion") {
            Some(Value::String(v)) => format!("unsupported apiVersion {v:?}"),
            Some(other) => format!("apiVersion is a {}", type_name(other)),
            None => "no apiVersion".to_owned(),
        })
    };
    Ok(Parsed {
        api_version,
        uid,
        request,
    })
}

/// Turns the `request` object into a [`Request`], or says which field is unusable.
fn interpret(mut r: Map<String, Value>) -> Result<Request, String> {
    let uid = match r.get("uid") {
        Some(Value::String(u)) if !u.is_empty() => u.clone(),
        Some(Value::String(_)) => return Err("request.uid is empty".into()),
        Some(v) => return Err(format!("request.uid is a {}", type_name(v))),
        None => return Err("no request.uid".into()),
    };
    let operation = match r.get("operation") {
        Some(Value::String(op)) => op
            .parse::<Operation>()
            .map_err(|e| format!("request.operation: {e}"))?,
        Some(v) => return Err(format!("request.operation is a {}", type_name(v))),
        None => return Err("no request.operation".into()),
    };
    let kind: KindId = field(&r, "kind")?.ok_or("no request.kind")?;
    let mut resource: ResourceId = field(&r, "resource")?.ok_or("no request.resource")?;
    let sub: Option<String> = field(&r, "subResource")?;
    resource.subresource = sub.filter(|s| !s.is_empty());
    let name: Option<String> = field(&r, "name")?;
    let namespace: Option<String> = field(&r, "namespace")?;
    let user: Actor = field(&r, "userInfo")?.ok_or("no request.userInfo")?;
    let dry_run: Option<bool> = field(&r, "dryRun")?;
    let object = object_field(&mut r, "object")?;
    let old_object = object_field(&mut r, "oldObject")?;
    let options = match r.remove("options") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    };
    let request = Request {
        uid,
        kind,
        resource,
        name: name.unwrap_or_default(),
        namespace: namespace.filter(|n| !n.is_empty()),
        operation,
        user,
        object,
        old_object,
        dry_run: dry_run.unwrap_or(false),
        options,
    };
    Ok(request)
}

/// A small typed field, deserialised from a borrowed value (no copy of the body). `null` and
/// absence are both `None`.
fn field<'a, T: Deserialize<'a>>(
    r: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<T>, String> {
    match r.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(|e| format!("request.{key}: {e}")),
    }
}

/// `object`/`oldObject`: moved out of the map; must be a JSON object or null.
fn object_field(r: &mut Map<String, Value>, key: &str) -> Result<Option<Value>, String> {
    match r.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(v)),
        Some(v) => Err(format!(
            "request.{key} is a {}, expected an object",
            type_name(&v)
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The shape read when the body nests deeper than serde_json's limit: everything but the envelope
/// is skipped, and skipping is iterative, so depth costs nothing.
#[derive(Deserialize)]
struct Shallow {
    kind: Option<String>,
    #[serde(rename = "apiVersion")]
    api_version: Option<IgnoredOrString>,
    request: Option<ShallowRequest>,
}

#[derive(Deserialize)]
struct ShallowRequest {
    uid: Option<IgnoredOrString>,
}

/// A string, or anything else (skipped).
#[derive(Deserialize)]
#[serde(untagged)]
enum IgnoredOrString {
    String(String),
    #[allow(dead_code)]
    Other(IgnoredAny),
}

impl IgnoredOrString {
    fn into_string(self) -> Option<String> {
        match self {
            IgnoredOrString::String(s) => Some(s),
            IgnoredOrString::Other(_) => None,
        }
    }
}

fn parse_too_deep(body: &[u8], first: &serde_json::Error) -> Result<Parsed, ReviewError> {
    let not_a_review = || {
        ReviewError::NotAReview(format!(
            "invalid JSON: {first} (nesting deeper than 128 levels)"
        ))
    };
    // Untagged enums buffer their input into serde's Content type, which recurses: only use them
    // on the short scalar fields, never on the deep parts (those go through IgnoredAny directly).
    let shallow: Shallow = serde_json::from_slice(body).map_err(|_| not_a_review())?;
    if shallow.kind.as_deref() != Some("AdmissionReview") {
        return Err(not_a_review());
    }
    let request = shallow.request.ok_or_else(not_a_review)?;
    Ok(Parsed {
        api_version: shallow
            .api_version
            .and_then(IgnoredOrString::into_string)
            .unwrap_or_else(|| ADMISSION_V1.to_owned()),
        uid: request.uid.and_then(IgnoredOrString::into_string),
        request: Err("request nested deeper than 128 levels".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata;

    #[test]
    fn every_fixture_parses() {
        for (name, body) in testdata::FIXTURES {
            let parsed = parse(body.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            let req = parsed.request.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.uid.as_deref(), Some(req.uid.as_str()), "{name}");
            assert_eq!(parsed.api_version, ADMISSION_V1);
            assert_eq!(req.uid, testdata::index_uid(name), "{name}");
            assert!(!req.user.username.is_empty(), "{name}");
        }
    }

    #[test]
    fn fields_of_a_subresource_request() {
        let req = testdata::request("update-deployment-scale");
        assert_eq!(req.operation, Operation::Update);
        assert_eq!(req.resource.group, "apps");
        assert_eq!(req.resource.resource, "deployments");
        assert_eq!(req.resource.subresource.as_deref(), Some("scale"));
        assert_eq!(req.kind.kind, "Scale");
        assert_eq!(req.kind.group, "autoscaling");
        assert_eq!(req.name, "nginx");
        assert_eq!(req.namespace.as_deref(), Some("demo"));
        assert_eq!(req.user.username, "admin");
        assert!(!req.dry_run);
        assert!(req.object.is_some() && req.old_object.is_some());
        assert_eq!(req.options.as_ref().unwrap()["kind"], "UpdateOptions");
    }

    #[test]
    fn delete_has_old_object_only_and_alice_is_alice() {
        let req = testdata::request("delete-configmap-alice");
        assert_eq!(req.operation, Operation::Delete);
        assert!(req.object.is_none());
        assert!(req.old_object.is_some());
        assert_eq!(req.user.username, "alice");
        assert_eq!(req.user.groups, ["dev", "system:authenticated"]);
    }

    #[test]
    fn dry_run_flag() {
        assert!(testdata::request("create-configmap-dryrun").dry_run);
        assert!(testdata::request("update-deployment-dryrun").dry_run);
    }

    fn not_a_review(body: &[u8]) -> String {
        match parse(body) {
            Err(ReviewError::NotAReview(m)) => m,
            other => panic!("expected NotAReview, got {other:?}"),
        }
    }

    fn uninterpretable(body: &[u8]) -> (Parsed, String) {
        match parse(body) {
            Ok(p) => match p.request.clone() {
                Err(why) => (p, why),
                Ok(_) => panic!("expected an uninterpretable review"),
            },
            Err(e) => panic!("expected a Parsed review, got {e}"),
        }
    }

    #[test]
    fn bodies_that_are_not_reviews() {
        let full = testdata::fixture("update-deployment");
        let m = not_a_review(&full.as_bytes()[..full.len() / 2]);
        assert!(m.starts_with("invalid JSON"), "{m}");
        not_a_review(b"");
        not_a_review(b"hello");
        not_a_review(b"\xff\xfe\x00");
        not_a_review(b"[]");
        not_a_review(b"42");
        assert_eq!(not_a_review(b"{}"), "no kind");
        assert!(not_a_review(br#"{"kind":"Pod","request":{}}"#).contains("Pod"));
        assert_eq!(
            not_a_review(br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#),
            "no request"
        );
        not_a_review(br#"{"kind":"AdmissionReview","request":"x"}"#);
        not_a_review(br#"{"kind":1,"request":{}}"#);
    }

    #[test]
    fn uninterpretable_reviews_keep_uid_and_api_version() {
        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["apiVersion"] = "admission.k8s.io/v2".into();
        let (p, why) = uninterpretable(&serde_json::to_vec(&v).unwrap());
        assert_eq!(p.api_version, "admission.k8s.io/v2");
        assert_eq!(
            p.uid.as_deref(),
            Some(testdata::index_uid("create-configmap"))
        );
        assert!(why.contains("apiVersion"), "{why}");

        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["request"].as_object_mut().unwrap().remove("uid");
        let (p, why) = uninterpretable(&serde_json::to_vec(&v).unwrap());
        assert_eq!(p.uid, None);
        assert_eq!(why, "no request.uid");
        let answer: Value = serde_json::from_slice(&p.allowed_response()).unwrap();
        assert_eq!(answer["response"]["uid"], "");
        assert_eq!(answer["response"]["allowed"], true);

        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["request"]["operation"] = "PATCH".into();
        let (_, why) = uninterpretable(&serde_json::to_vec(&v).unwrap());
        assert!(why.contains("operation"), "{why}");

        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["request"]["userInfo"]["groups"] = 7.into();
        let (p, why) = uninterpretable(&serde_json::to_vec(&v).unwrap());
        assert!(why.starts_with("request.userInfo"), "{why}");
        assert!(p.uid.is_some());

        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["request"]["object"] = "x".into();
        let (_, why) = uninterpretable(&serde_json::to_vec(&v).unwrap());
        assert!(why.contains("request.object"), "{why}");

        let (p, _) = uninterpretable(br#"{"kind":"AdmissionReview","request":{"uid":"u1"}}"#);
        assert_eq!(p.api_version, ADMISSION_V1);
        assert_eq!(p.uid.as_deref(), Some("u1"));
    }

    #[test]
    fn managed_fields_are_skipped_and_the_rest_is_as_serde_json_reads_it() {
        for (name, body) in testdata::FIXTURES {
            let req = parse(body.as_bytes()).unwrap().request.unwrap();
            let full: Value = serde_json::from_str(body).unwrap();
            for (key, got) in [("object", &req.object), ("oldObject", &req.old_object)] {
                let mut want = full["request"][key].clone();
                if let Some(meta) = want.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("managedFields");
                }
                assert_eq!(got.clone().unwrap_or(Value::Null), want, "{name} {key}");
            }
            assert_eq!(
                req.options.unwrap_or(Value::Null),
                full["request"]["options"]
            );
        }
        // Trailing garbage is not JSON.
        let body = format!("{} x", testdata::fixture("create-configmap"));
        assert!(parse(body.as_bytes()).is_err());
    }

    /// The fingerprint as its definition spells it: SHA-256 over the NUL-terminated parts and the
    /// object's JSON text, built the slow way.
    fn fingerprint_by_definition(req: &Request, object_uid: &str, old_version: &str) -> [u8; 16] {
        let mut text = Vec::new();
        for part in [
            req.operation.as_str(),
            &req.resource.group,
            &req.resource.resource,
            req.resource.subresource.as_deref().unwrap_or(""),
            req.namespace.as_deref().unwrap_or(""),
            &req.name,
            object_uid,
            old_version,
            &req.user.username,
        ] {
            text.extend_from_slice(part.as_bytes());
            text.push(0);
        }
        text.extend_from_slice(&serde_json::to_vec(&req.object).unwrap());
        let d = ring::digest::digest(&ring::digest::SHA256, &text);
        d.as_ref()[..16].try_into().unwrap()
    }

    #[test]
    fn fingerprint_is_the_digest_of_its_parts() {
        // 001 (a CREATE), 010 (an UPDATE), 012 (a DELETE: object null, uid and resourceVersion
        // from oldObject), 002 (a subresource: a Scale), 021 (a CREATE of a ConfigMap).
        for (prefix, uid, old_version) in [
            ("001-", "1f9ce3af-adf2-46e9-8fe0-f298c36ccbe2", ""),
            ("010-", "126abc3c-1dfa-4ffb-8806-e55fe8ada607", "234"),
            ("012-", "126abc3c-1dfa-4ffb-8806-e55fe8ada607", "236"),
            ("002-", "1f9ce3af-adf2-46e9-8fe0-f298c36ccbe2", "225"),
            ("021-", "0f97c163-c2c9-43f0-b35e-2dac1d34391f", ""),
        ] {
            let req = testdata::v133_request(prefix);
            let want = fingerprint_by_definition(&req, uid, old_version);
            assert_eq!(req.fingerprint(), want, "{prefix}");
        }
        // Objects longer than the writer's buffer, written in pieces smaller and larger than it.
        let mut req = testdata::v133_request("001-");
        for (i, len) in [700, 300, 3000, 10, 1023, 1024, 1025]
            .into_iter()
            .enumerate()
        {
            req.object.as_mut().unwrap()["metadata"]["labels"][format!("l{i}")] =
                "x".repeat(len).into();
            let uid = "1f9ce3af-adf2-46e9-8fe0-f298c36ccbe2";
            assert_eq!(
                req.fingerprint(),
                fingerprint_by_definition(&req, uid, ""),
                "{len}"
            );
        }
    }

    #[test]
    fn one_request_sent_to_two_webhooks_has_one_fingerprint() {
        // 021 went to validate.kapi.test, 022 to deny.kapi.test: one user request, two uids.
        let a = testdata::v133_request("021-");
        let b = testdata::v133_request("022-");
        assert_ne!(a.uid, b.uid);
        assert_eq!(a.fingerprint(), b.fingerprint());
        // Stored in dedupe keys, so it must not drift between builds.
        assert_eq!(a.fingerprint()[..4], [0x8a, 0xe1, 0x44, 0xcd]);
    }

    #[test]
    fn every_conflict_retry_attempt_has_its_own_fingerprint() {
        let attempts: Vec<(String, [u8; 16])> = testdata::v133_reviews()
            .into_iter()
            .filter(|(name, _)| name.contains("-race-k") && name.contains("-attempt-"))
            .map(|(name, body)| {
                (
                    name,
                    parse(body.as_bytes())
                        .unwrap()
                        .request
                        .unwrap()
                        .fingerprint(),
                )
            })
            .collect();
        // 6 PATCHes, 18 webhook calls: every attempt saw a newer oldObject.
        assert_eq!(attempts.len(), 18);
        let distinct: std::collections::HashSet<_> = attempts.iter().map(|(_, f)| f).collect();
        assert_eq!(distinct.len(), 18, "{attempts:?}");
    }

    #[test]
    fn distinct_recorded_requests_have_distinct_fingerprints() {
        let mut seen = std::collections::HashMap::new();
        for (name, body) in testdata::v133_reviews() {
            let req = parse(body.as_bytes()).unwrap().request.unwrap();
            if let Some(other) = seen.insert(req.fingerprint(), name.clone()) {
                // The only pair: the denied create, sent to both webhooks.
                assert!(
                    other.starts_with("021-") && name.starts_with("022-"),
                    "{other} and {name}"
                );
            }
        }
        assert_eq!(seen.len(), 49);
    }

    #[test]
    fn each_part_of_the_fingerprint_counts_and_the_uid_does_not() {
        let base = testdata::v133_request("010-");
        type Edit = fn(&mut Request);
        let edits: [(&str, Edit); 10] = [
            ("operation", |r| r.operation = Operation::Delete),
            ("group", |r| r.resource.group = "apps".into()),
            ("resource", |r| r.resource.resource = "secrets".into()),
            ("subresource", |r| {
                r.resource.subresource = Some("status".into())
            }),
            ("namespace", |r| r.namespace = Some("team-a".into())),
            ("name", |r| r.name = "other".into()),
            ("object uid", |r| {
                r.object.as_mut().unwrap()["metadata"]["uid"] = "u2".into();
                r.old_object.as_mut().unwrap()["metadata"]["uid"] = "u2".into();
            }),
            ("old resourceVersion", |r| {
                r.old_object.as_mut().unwrap()["metadata"]["resourceVersion"] = "1".into()
            }),
            ("username", |r| r.user.username = "alice".into()),
            ("object", |r| {
                r.object.as_mut().unwrap()["data"]["mode"] = "x".into()
            }),
        ];
        for (what, edit) in edits {
            let mut r = base.clone();
            edit(&mut r);
            assert_ne!(r.fingerprint(), base.fingerprint(), "{what}");
        }
        // Moving a byte between two parts changes it too (the NUL keeps parts apart).
        let mut r = base.clone();
        r.namespace = Some("dem".into());
        r.name = format!("o{}", r.name);
        assert_ne!(r.fingerprint(), base.fingerprint());
        let mut r = base.clone();
        r.uid = "another-call".into();
        r.user.groups.push("extra".into());
        assert_eq!(r.fingerprint(), base.fingerprint());
    }

    #[test]
    fn v1beta1_is_accepted() {
        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        v["apiVersion"] = ADMISSION_V1BETA1.into();
        let p = parse(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(p.api_version, ADMISSION_V1BETA1);
        assert!(p.request.is_ok());
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = "[".repeat(100_000);
        let m = not_a_review(deep.as_bytes());
        assert!(m.contains("recursion limit"), "{m}");

        let deep_obj = format!("{}{}", "{\"a\":".repeat(100_000), "1");
        not_a_review(deep_obj.as_bytes());

        // A real review whose object nests too deep: still answered with its uid.
        let body = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"deep-1","object":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let (p, why) = uninterpretable(body.as_bytes());
        assert_eq!(p.uid.as_deref(), Some("deep-1"));
        assert!(why.contains("128"), "{why}");

        // Deep and truncated: not JSON.
        let body = format!(
            r#"{{"kind":"AdmissionReview","request":{{"uid":"deep-1","object":{}"#,
            "[".repeat(100_000)
        );
        not_a_review(body.as_bytes());
    }

    #[test]
    fn numbers_beyond_f64_are_kept_digit_for_digit() {
        let (body, huge) = testdata::wide_numbers_review();
        assert!(
            serde_json::from_str::<Value>(&body).is_err(),
            "serde_json alone refuses it"
        );
        let p = parse(body.as_bytes()).unwrap();
        let req = p.request.unwrap();
        let spec = &req.object.as_ref().unwrap()["spec"];
        assert_eq!(spec["huge"], Value::String(huge));
        assert_eq!(spec["big"], "1e999");
        // Strings that look like numbers stay as they were; numbers in range stay numbers.
        assert_eq!(spec["note"], "1e999 \" -1e999");
        assert_eq!(spec["replicas"], 1);
        assert_eq!(req.uid, testdata::index_uid("update-widget"));
        assert_eq!(p.uid.as_deref(), Some(req.uid.as_str()));
    }

    #[test]
    fn wide_numbers_do_not_make_invalid_json_valid() {
        for bad in [
            "1e999 x",
            "-1e999e5",
            "1e999.5",
            "--1e999",
            "1e999, 01",
            "1e",
            "[1e999",
            "\"1e999",
        ] {
            let body = format!(
                r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"u","x":{bad}}}}}"#
            );
            let m = not_a_review(body.as_bytes());
            assert!(m.starts_with("invalid JSON"), "{bad}: {m}");
        }
        assert_eq!(quote_wide_numbers(b"[1, 2.5, -3e5]"), None);
        assert_eq!(
            quote_wide_numbers(br#"[1e999,"a\"1e999",-0.5E+999]"#).as_deref(),
            Some(&br#"["1e999","a\"1e999","-0.5E+999"]"#[..])
        );
        // Deep as well as wide: still answered with its uid.
        let body = format!(
            r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"deep-2","object":{}1e999{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let (p, why) = uninterpretable(body.as_bytes());
        assert_eq!(p.uid.as_deref(), Some("deep-2"));
        assert!(why.contains("128"), "{why}");
    }

    #[test]
    fn only_uids_an_apiserver_could_send_are_echoed() {
        let mut v: Value = serde_json::from_str(testdata::fixture("create-configmap")).unwrap();
        let answer = |v: &Value| {
            let p = parse(&serde_json::to_vec(v).unwrap()).unwrap();
            let body = p.allowed_response();
            (serde_json::from_slice::<Value>(&body).unwrap(), body.len())
        };
        let (a, _) = answer(&v);
        assert_eq!(
            a["response"]["uid"],
            testdata::index_uid("create-configmap")
        );
        v["request"]["uid"] = "u".repeat(128).into();
        assert_eq!(answer(&v).0["response"]["uid"], "u".repeat(128));
        v["request"]["uid"] = "u".repeat(1 << 20).into();
        let (a, len) = answer(&v);
        assert_eq!(a["response"]["uid"], "");
        assert_eq!(a["response"]["allowed"], true);
        assert!(len < 200, "{len} bytes");
        // Uninterpretable as well (no kind), and a huge apiVersion is not echoed either.
        v["request"]["kind"] = Value::Null;
        v["apiVersion"] = "a".repeat(1 << 20).into();
        let (a, len) = answer(&v);
        assert_eq!(a["response"]["uid"], "");
        assert_eq!(a["apiVersion"], ADMISSION_V1);
        assert!(len < 200, "{len} bytes");
    }

    #[test]
    fn allowed_response_shape() {
        let body = recorded_response(ADMISSION_V1, "abc\"def");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": ADMISSION_V1, "kind": "AdmissionReview",
                "response": {"uid": "abc\"def", "allowed": true,
                    "auditAnnotations": {"request-uid": "abc\"def"}}})
        );
        let v: Value = serde_json::from_slice(&recorded_response(ADMISSION_V1, "")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": ADMISSION_V1, "kind": "AdmissionReview",
                "response": {"uid": "", "allowed": true}}),
            "no uid, no annotation"
        );
        let v: Value = serde_json::from_slice(&allowed_response(ADMISSION_V1, "u")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": ADMISSION_V1, "kind": "AdmissionReview",
                "response": {"uid": "u", "allowed": true}}),
            "a review not recorded: no annotation"
        );
    }

    mod fuzz {
        use super::super::parse;
        use crate::pipeline::testdata;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let _ = parse(&body);
            }

            #[test]
            fn never_panics_on_mutated_fixtures(
                idx in 0..testdata::FIXTURES.len(),
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
            ) {
                let mut body = testdata::FIXTURES[idx].1.as_bytes().to_vec();
                for (at, byte, how) in edits {
                    if body.is_empty() { break; }
                    let i = at.index(body.len());
                    match how {
                        0 => body[i] = byte,
                        1 => { body.remove(i); }
                        _ => body.truncate(i),
                    }
                }
                let _ = parse(&body);
            }

            #[test]
            fn never_panics_on_retyped_fields(
                idx in 0..testdata::FIXTURES.len(),
                field in prop::sample::select(vec!["uid", "kind", "resource", "subResource", "name",
                    "namespace", "operation", "userInfo", "object", "oldObject", "dryRun", "options"]),
                replacement in prop::sample::select(vec!["null", "1", "\"x\"", "[]", "{}", "true", "[[{}]]"]),
            ) {
                let mut v: serde_json::Value = serde_json::from_str(testdata::FIXTURES[idx].1).unwrap();
                v["request"][field] = serde_json::from_str(replacement).unwrap();
                let parsed = parse(&serde_json::to_vec(&v).unwrap());
                prop_assert!(parsed.is_ok());
            }
        }
    }
}
