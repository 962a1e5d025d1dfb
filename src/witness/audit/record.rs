//! Audit events in and out of the journal: an `audit.k8s.io/v1` EventList as the webhook
//! backend posts it, the journal entry of one event (keyed by audit ID and stage, trimmed to
//! what histor reads), and what an event tells about the change it made.
//!
//! Pure: bytes in, events and entries out.

use crate::pipeline::AuditInfo;
use crate::store::AuditEntry;
use crate::usage::{AuditEvent, BadLine};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The suffix of the audit annotation histor's answers set (`<webhook>/request-uid`).
const UID_SUFFIX: &str = "/request-uid";

/// An EventList's items, each parsed on its own so that one bad item costs only itself.
#[derive(Deserialize)]
struct EventList<'a> {
    #[serde(default)]
    kind: Option<String>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>,
}

/// What a posted batch held.
#[derive(Debug, Default)]
pub struct Batch {
    /// Its events, in order.
    pub events: Vec<AuditEvent>,
    /// Items that were not audit events, by why.
    pub bad: Vec<BadLine>,
}

/// Why a posted body is not an EventList at all (answered 400: resending it cannot help).
#[derive(Debug, thiserror::Error)]
pub enum NotAList {
    /// Not JSON, or JSON cut short.
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of another kind.
    #[error("the body is a {0}, not an audit.k8s.io EventList")]
    Kind(String),
}

/// Parses an `audit.k8s.io/v1` EventList. Its items carry no `kind` or `apiVersion` of their
/// own (recorded: the log's lines do, a batch's items do not).
pub fn parse_list(body: &[u8]) -> Result<Batch, NotAList> {
    let list: EventList<'_> = serde_json::from_slice(body)?;
    let kind = list.kind.as_deref().unwrap_or("");
    let api_version = list.api_version.as_deref().unwrap_or("");
    if kind != "EventList" || !api_version.starts_with("audit.k8s.io/") {
        return Err(NotAList::Kind(
            format!("{api_version} {kind}").trim().to_owned(),
        ));
    }
    let mut batch = Batch::default();
    for item in list.items {
        match crate::usage::parse_line(item.get().as_bytes()) {
            Ok(Some(e)) => batch.events.push(e),
            Ok(None) => {}
            // An object in an EventList is an event by where it is, kind or none: one that
            // does not parse lacks a field.
            Err(BadLine::NotAnEvent) if item.get().starts_with('{') => {
                batch.bad.push(BadLine::Invalid)
            }
            Err(bad) => batch.bad.push(bad),
        }
    }
    Ok(batch)
}

/// The journal key of an event: its audit ID, stage and receipt time (a request's stages are
/// separate events; each source repeats them the same). Not the ID alone: a client may send its
/// own `Audit-ID` header and the apiserver keeps it, so a client reusing one would otherwise
/// have its later requests taken as copies of its first.
pub fn key(e: &AuditEvent) -> [u8; 16] {
    let received = e
        .request_received_timestamp
        .map_or(i64::MIN, |t| t.as_microsecond());
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\0{}\0{received}", e.audit_id, e.stage).as_bytes(),
    );
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// The event as the journal keeps it. `None` for what the journal does not take: stages
/// before the end of a request (each request has one final event, which says everything
/// they do), and events without a time.
pub fn entry(e: &AuditEvent) -> Option<AuditEntry> {
    if !e.is_final() {
        return None;
    }
    let at = e.stage_timestamp.or(e.request_received_timestamp)?;
    let mut trimmed = e.clone();
    // Kind and apiVersion are the same for every entry; the journal need not repeat them.
    trimmed.kind = None;
    trimmed.api_version = None;
    Some(AuditEntry {
        key: key(e),
        at,
        value: serde_json::to_vec(&trimmed).ok()?,
    })
}

/// The event of a journal entry.
pub fn decode(value: &[u8]) -> serde_json::Result<AuditEvent> {
    serde_json::from_slice(value)
}

/// The admission request uids the event's annotations name (`<webhook>/request-uid`): for a
/// request histor's webhook saw, the uid of its first call of it.
pub fn request_uids(e: &AuditEvent) -> impl Iterator<Item = &str> {
    e.annotations
        .iter()
        .filter(|(k, _)| k.ends_with(UID_SUFFIX))
        .map(|(_, v)| v.as_str())
}

/// What the event adds to the change it made. `change_user` is the user the webhook saw (when
/// impersonating, the impersonated one): the authenticated user is named only when it differs.
pub fn info(e: &AuditEvent, change_user: &str) -> AuditInfo {
    let impersonated_by = e
        .impersonated_user
        .as_ref()
        .map(|_| e.user.username.clone())
        .filter(|u| u != change_user);
    AuditInfo {
        audit_id: e.audit_id.clone(),
        code: e.code(),
        source_ips: e.source_ips.clone(),
        user_agent: e.user_agent.clone(),
        impersonated_by,
    }
}

/// The resourceVersion the request committed, when the event holds its response object.
pub fn committed_version(e: &AuditEvent) -> Option<&str> {
    e.response_object
        .as_ref()?
        .metadata
        .as_ref()?
        .resource_version
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_batch() -> Batch {
        parse_list(include_bytes!(
            "../../../tests/fixtures/audit/v1.33/webhook-batches/0001.json"
        ))
        .unwrap()
    }

    #[test]
    fn a_recorded_batch_parses_whole_and_its_items_match_the_log() {
        let batch = fixture_batch();
        assert!(batch.bad.is_empty(), "{:?}", batch.bad);
        assert_eq!(batch.events.len(), 230, "the recorded bootstrap burst");
        let log = include_str!("../../../tests/fixtures/audit/v1.33/audit.log");
        let first = crate::usage::parse_line(log.lines().next().unwrap().as_bytes())
            .unwrap()
            .unwrap();
        let same = batch
            .events
            .iter()
            .find(|e| e.audit_id == first.audit_id && e.stage == first.stage)
            .expect("the log's first event is in the batch");
        assert_eq!(key(same), key(&first));
        assert_eq!(
            (same.kind.as_deref(), first.kind.as_deref()),
            (None, Some("Event")),
            "batch items carry no kind; log lines do"
        );
    }

    #[test]
    fn entries_round_trip_trimmed_and_never_hold_objects() {
        let log = include_str!("../../../tests/fixtures/audit/v1.33/audit.log");
        let mut taken = 0;
        for line in log.lines() {
            let e = crate::usage::parse_line(line.as_bytes()).unwrap().unwrap();
            let Some(entry) = entry(&e) else {
                assert!(!e.is_final());
                continue;
            };
            taken += 1;
            let back = decode(&entry.value).unwrap();
            assert_eq!(back.audit_id, e.audit_id);
            assert_eq!(back.annotations, e.annotations);
            assert_eq!(back.object_ref, e.object_ref);
            assert_eq!(committed_version(&back), committed_version(&e));
            let text = String::from_utf8(entry.value).unwrap();
            // The recorded Secret's value, plain and base64, and any token: never kept.
            assert!(!text.contains("czNjcjN0LXYxMzM="), "{text}");
            assert!(!text.contains("s3cr3t-v133"), "{text}");
            assert!(!text.contains("eyJhbGciOi"), "a JWT: {text}");
        }
        assert!(taken > 300, "{taken}");
    }

    #[test]
    fn bad_bodies_and_items_are_told_apart() {
        assert!(matches!(parse_list(b"{\"items\":"), Err(NotAList::Json(_))));
        assert!(matches!(
            parse_list(br#"{"kind":"Status","apiVersion":"v1"}"#),
            Err(NotAList::Kind(_))
        ));
        let b = parse_list(
            br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"a"},[1],
                {"auditID":"b","stage":"ResponseComplete","requestURI":"/version","verb":"get",
                 "user":{"username":"u"},"stageTimestamp":"2026-12-01T21:22:37.753619Z"}]}"#,
        )
        .unwrap();
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.bad, [BadLine::Invalid, BadLine::NotAnEvent]);
    }

    #[test]
    fn impersonation_names_the_authenticated_user() {
        let log = include_str!("../../../tests/fixtures/audit/v1.33/audit.log");
        let bob = log
            .lines()
            .map(|l| crate::usage::parse_line(l.as_bytes()).unwrap().unwrap())
            .find(|e| e.audit_id == "9df6c8dc-228b-46b9-8559-60a2bf7d59a0" && e.is_final())
            .unwrap();
        let i = info(&bob, "bob");
        assert_eq!(i.impersonated_by.as_deref(), Some("admin"));
        assert_eq!(i.code, Some(201));
        assert_eq!(i.source_ips, ["127.0.0.1"]);
        assert_eq!(
            i.user_agent.as_deref(),
            Some("kubectl/v1.33.1 (linux/amd64) kubernetes/8adc0f0")
        );
        assert_eq!(
            request_uids(&bob).collect::<Vec<_>>(),
            ["93b26d80-4a0f-40b9-aa4a-9265c4d8a118"]
        );
        assert_eq!(info(&bob, "admin").impersonated_by, None);
    }
}
