//! The `audit.k8s.io/v1` Event, as far as usage needs it, and a line parser that never panics:
//! every line is either an event or a [`BadLine`] reason to count.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Longest line parsed. The log backend does not truncate (the webhook backend truncates events
/// over 100 KB); a RequestResponse event of a big object can reach a few MB. Longer lines are
/// counted as [`BadLine::TooLong`] without being parsed, so one runaway line cannot take the
/// reader's memory.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// One audit event. Fields neither usage nor the audit witness reads (the request object, and
/// the response object but for its resourceVersion) are skipped by the parser, so neither a
/// Secret's data nor a token a TokenRequest returned is ever held; unknown fields are ignored,
/// so newer apiservers' events still parse. Serialises back to the same shape, trimmed: what
/// the audit journal keeps.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// `Event`; checked by [`parse_line`] (items of a webhook batch have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `audit.k8s.io/v1`; checked by [`parse_line`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The request's id, the same in every stage's event.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// RequestReceived, ResponseStarted, ResponseComplete or Panic.
    pub stage: String,
    /// The URI as the client sent it, query included.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The Kubernetes verb (get, list, watch, create, update, patch, delete, deletecollection)
    /// for resource requests; the lower-case HTTP method for non-resource requests.
    pub verb: String,
    /// Who authenticated.
    pub user: UserInfo,
    /// Who the authenticated user acted as, when impersonating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    /// The client's addresses: `X-Forwarded-For` first, then the peer.
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The client's User-Agent header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The resource, for resource requests; absent for non-resource URLs such as `/version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    /// How the request ended (absent before the response stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The response object's metadata, at level RequestResponse: the resourceVersion a write
    /// committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<ResponseObject>,
    /// When the apiserver received the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_received_timestamp: Option<jiff::Timestamp>,
    /// When this stage's event was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_timestamp: Option<jiff::Timestamp>,
    /// `k8s.io/deprecated`, `k8s.io/removed-release`, authorisation and webhook annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The part of a response object the witness reads.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ResponseObject {
    /// Its metadata (a Status has none worth reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ResponseMeta>,
}

/// `metadata` of a response object, as far as the witness reads it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseMeta {
    /// The object's resourceVersion after the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// `authentication.k8s.io/v1 UserInfo`, the parts usage reads.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's name; service accounts are `system:serviceaccount:<namespace>:<name>`.
    #[serde(default)]
    pub username: String,
}

/// The object a resource request concerns.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Plural resource name, such as `deployments`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Empty for the core group.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// Such as `v1` or `v1beta1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Such as `status` or `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// Absent for cluster-scoped objects and cluster-wide lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Absent for lists and for a create whose name the server generates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The response's status, the part usage reads.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

impl AuditEvent {
    /// True for the stages that end a request: ResponseComplete, and Panic for a handler that
    /// panicked. Each request has exactly one of them.
    pub fn is_final(&self) -> bool {
        matches!(self.stage.as_str(), "ResponseComplete" | "Panic")
    }

    /// The time the request counts at: when it was received, else when this event was made.
    pub fn time(&self) -> Option<jiff::Timestamp> {
        self.request_received_timestamp.or(self.stage_timestamp)
    }

    /// The response code, when the event has one.
    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref().and_then(|s| s.code)
    }

    /// The annotation's value, when set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// Why a line was not taken as an audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BadLine {
    /// Longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// JSON that ends early: a line cut by a crash, a full disk or a rotation.
    Truncated,
    /// Not JSON at all.
    NotJson,
    /// JSON, but not an `audit.k8s.io` Event (an EventList, another kind, not an object).
    NotAnEvent,
    /// An `audit.k8s.io` Event missing a field usage needs, or with one of the wrong type.
    Invalid,
}

impl BadLine {
    /// A short, fixed label.
    pub fn label(self) -> &'static str {
        match self {
            BadLine::TooLong => "too_long",
            BadLine::Truncated => "truncated",
            BadLine::NotJson => "not_json",
            BadLine::NotAnEvent => "not_an_event",
            BadLine::Invalid => "invalid",
        }
    }
}

/// Just enough of a line to tell an Event that lacks fields from something else.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    api_version: Option<String>,
}

/// Parses one line of a JSON-lines audit log (surrounding whitespace allowed). `Ok(None)` for a
/// blank line.
pub fn parse_line(line: &[u8]) -> Result<Option<AuditEvent>, BadLine> {
    if line.len() > MAX_LINE_BYTES {
        return Err(BadLine::TooLong);
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    match serde_json::from_slice::<AuditEvent>(line) {
        // The fields usage needs are there, but the kind may still be something else that
        // happens to carry them; a line without kind is taken at its word.
        Ok(event) if is_event(event.kind.as_deref(), event.api_version.as_deref()) => {
            Ok(Some(event))
        }
        Ok(_) => Err(BadLine::NotAnEvent),
        Err(e) => Err(classify(line, &e)),
    }
}

fn is_event(kind: Option<&str>, api_version: Option<&str>) -> bool {
    kind.is_none_or(|k| k == "Event") && api_version.is_none_or(|v| v.starts_with("audit.k8s.io/"))
}

fn classify(line: &[u8], e: &serde_json::Error) -> BadLine {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => BadLine::Truncated,
        Category::Syntax | Category::Io => BadLine::NotJson,
        Category::Data => match serde_json::from_slice::<Probe>(line) {
            Ok(probe)
                if probe.kind.is_some()
                    && probe.api_version.is_some()
                    && is_event(probe.kind.as_deref(), probe.api_version.as_deref()) =>
            {
                BadLine::Invalid
            }
            _ => BadLine::NotAnEvent,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/demo/configmaps?limit=500","verb":"list","user":{"username":"admin","groups":["system:masters"]},"userAgent":"kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0","objectRef":{"resource":"configmaps","namespace":"demo","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-12-01T21:24:27.511040Z","stageTimestamp":"2026-12-01T21:24:27.513202Z","annotations":{"authorization.k8s.io/decision":"allow"},"aNewField":{"x":1}}"#;

    #[test]
    fn parses_an_event_and_ignores_unknown_fields() {
        let e = parse_line(LINE.as_bytes()).unwrap().unwrap();
        assert_eq!(e.audit_id, "a1");
        assert_eq!(e.verb, "list");
        assert_eq!(e.code(), Some(200));
        assert_eq!(e.object_ref.unwrap().resource, "configmaps");
        assert!(parse_line(b"  \r\n").unwrap().is_none());
    }

    #[test]
    fn bad_lines_are_told_apart() {
        let cut = &LINE[..LINE.len() / 2];
        assert_eq!(parse_line(cut.as_bytes()), Err(BadLine::Truncated));
        assert_eq!(
            parse_line(b"I1201 21:22:19 log line"),
            Err(BadLine::NotJson)
        );
        assert_eq!(parse_line(b"[1,2]"), Err(BadLine::NotAnEvent));
        assert_eq!(
            parse_line(br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#),
            Err(BadLine::NotAnEvent)
        );
        let other = LINE.replace(r#""kind":"Event""#, r#""kind":"Status""#);
        assert_eq!(parse_line(other.as_bytes()), Err(BadLine::NotAnEvent));
        let no_verb = LINE.replace(r#""verb":"list","#, "");
        assert_eq!(parse_line(no_verb.as_bytes()), Err(BadLine::Invalid));
        let huge = vec![b' '; MAX_LINE_BYTES + 1];
        assert_eq!(parse_line(&huge), Err(BadLine::TooLong));
    }
}
