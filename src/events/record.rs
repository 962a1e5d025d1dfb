//! A Kubernetes Event as histor keeps it, from either API that serves one: `events.k8s.io/v1`
//! (`regarding`, `note`, `series`, `eventTime`, `reportingController`) or `core/v1`
//! (`involvedObject`, `message`, `count`, `firstTimestamp`/`lastTimestamp`, `source`). One Event
//! object is served by both (recorded: the same uid and resourceVersion in both watch streams,
//! each API showing the other's fields under its own names, `deprecatedCount` and `series`), so
//! the normal form takes whichever fields are set.
//!
//! Secret-free by construction: an Event names its object and carries text written by a
//! controller; nothing of the object's data is read, and the text is cut to [`MAX_NOTE_CHARS`].
//!
//! Pure: JSON in, [`KubeEvent`] out.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Longest note kept, in characters (the apiserver allows 1 KiB for events.k8s.io notes; core
/// messages are unbounded).
pub const MAX_NOTE_CHARS: usize = 1024;

/// An Event, in one form whatever API served it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeEvent {
    /// The Event object's uid: what names it across updates and relists.
    pub uid: String,
    /// The Event object's namespace.
    pub namespace: String,
    /// The Event object's name.
    pub name: String,
    /// The resourceVersion this form was read at.
    pub resource_version: String,
    /// `Normal` or `Warning` (what the Event says, else empty).
    #[serde(rename = "type")]
    pub type_: String,
    /// Why: `BackOff`, `ScalingReplicaSet`, …
    pub reason: String,
    /// What was done (`events.k8s.io` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The human text, cut to [`MAX_NOTE_CHARS`].
    pub note: String,
    /// The object the Event is about.
    pub regarding: ObjectRef,
    /// A second object it involves (`events.k8s.io` only), such as the Deployment of a Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<ObjectRef>,
    /// Who reported it: the reporting controller, else the source component.
    pub reporter: String,
    /// Which instance of the reporter (the host for kubelets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// When it was first seen.
    pub first_seen: Timestamp,
    /// When it was last seen.
    pub last_seen: Timestamp,
    /// How many times it happened (at least 1).
    pub count: u64,
}

impl KubeEvent {
    /// True for a `Warning` Event.
    pub fn is_warning(&self) -> bool {
        self.type_ == "Warning"
    }
}

/// An object an Event names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// `apps/v1`, `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Deployment`, `Pod`.
    #[serde(default)]
    pub kind: String,
    /// Its namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// Its uid, when the reporter gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The part of it (`spec.containers{nginx}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
}

impl ObjectRef {
    /// The API group of `api_version` (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }
}

/// Why a JSON object is not an Event histor can keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAnEvent {
    /// Not JSON of an object.
    #[error("not an Event: {0}")]
    Json(String),
    /// A field every Event has is missing.
    #[error("an Event without {0}")]
    Missing(&'static str),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    metadata: RawMeta,
    #[serde(default, rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    action: Option<String>,
    // events.k8s.io/v1
    #[serde(default)]
    regarding: Option<ObjectRef>,
    #[serde(default)]
    related: Option<ObjectRef>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    event_time: Option<Timestamp>,
    #[serde(default)]
    series: Option<RawSeries>,
    #[serde(default)]
    reporting_controller: Option<String>,
    #[serde(default)]
    reporting_instance: Option<String>,
    #[serde(default)]
    deprecated_source: Option<RawSource>,
    #[serde(default)]
    deprecated_first_timestamp: Option<Timestamp>,
    #[serde(default)]
    deprecated_last_timestamp: Option<Timestamp>,
    #[serde(default)]
    deprecated_count: Option<i64>,
    // core/v1
    #[serde(default)]
    involved_object: Option<ObjectRef>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    first_timestamp: Option<Timestamp>,
    #[serde(default)]
    last_timestamp: Option<Timestamp>,
    #[serde(default)]
    source: Option<RawSource>,
    #[serde(default)]
    reporting_component: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Timestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSeries {
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    last_observed_time: Option<Timestamp>,
}

#[derive(Deserialize)]
struct RawSource {
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// The Event of a JSON object from either API (a watch event's `object`, a list's item).
pub fn parse(object: &serde_json::Value) -> Result<KubeEvent, NotAnEvent> {
    let raw = Raw::deserialize(object).map_err(|e| NotAnEvent::Json(e.to_string()))?;
    let uid = non_empty(raw.metadata.uid).ok_or(NotAnEvent::Missing("metadata.uid"))?;
    let name = non_empty(raw.metadata.name).ok_or(NotAnEvent::Missing("metadata.name"))?;
    let regarding = raw
        .regarding
        .or(raw.involved_object)
        .ok_or(NotAnEvent::Missing("regarding"))?;
    let series_count = raw.series.as_ref().and_then(|s| s.count);
    let count = series_count
        .or(raw.count)
        .or(raw.deprecated_count)
        .unwrap_or(1)
        .max(1) as u64;
    let first_seen = raw
        .event_time
        .or(raw.first_timestamp)
        .or(raw.deprecated_first_timestamp)
        .or(raw.metadata.creation_timestamp)
        .ok_or(NotAnEvent::Missing("a time"))?;
    let last_seen = raw
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time)
        .or(raw.last_timestamp)
        .or(raw.deprecated_last_timestamp)
        .unwrap_or(first_seen)
        .max(first_seen);
    let source = raw.source.or(raw.deprecated_source);
    let reporter = non_empty(raw.reporting_controller)
        .or(non_empty(raw.reporting_component))
        .or_else(|| source.as_ref().and_then(|s| non_empty(s.component.clone())))
        .unwrap_or_default();
    let instance = non_empty(raw.reporting_instance)
        .or_else(|| source.as_ref().and_then(|s| non_empty(s.host.clone())));
    let note: String = raw
        .note
        .or(raw.message)
        .unwrap_or_default()
        .chars()
        .take(MAX_NOTE_CHARS)
        .collect();
    Ok(KubeEvent {
        uid,
        namespace: raw.metadata.namespace.unwrap_or_default(),
        name,
        resource_version: raw.metadata.resource_version.unwrap_or_default(),
        type_: raw.type_.unwrap_or_default(),
        reason: raw.reason.unwrap_or_default(),
        action: non_empty(raw.action),
        note,
        regarding,
        related: raw.related,
        reporter,
        instance,
        first_seen,
        last_seen,
        count,
    })
}

/// What histor knew of an Event before a new form of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// Its count then.
    pub count: u64,
    /// When it was last seen then.
    pub last_seen: Timestamp,
}

impl Known {
    /// What `event` tells of itself.
    pub fn of(event: &KubeEvent) -> Known {
        Known {
            count: event.count,
            last_seen: event.last_seen,
        }
    }
}

/// What a form of an Event adds to what was known of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// An Event not seen before, `count` times.
    New {
        /// Its count.
        count: u64,
    },
    /// It happened again: `more` times since the form known (a series update, a core `count`
    /// bump; the client-go recorder's heartbeat carries the count it gathered).
    Again {
        /// Occurrences added.
        more: u64,
    },
    /// Seen later with no new occurrence (a heartbeat that counted nothing more).
    Later,
    /// Nothing new: the same form again (a relist, a resent watch event, an edit of another
    /// field), or an older one.
    Same,
}

/// What `event` adds to `known` (`None`: never seen). Counts only grow: an Event recreated
/// under the same name is a new uid, so a smaller count is an older form.
pub fn observe(known: Option<Known>, event: &KubeEvent) -> Seen {
    match known {
        None => Seen::New { count: event.count },
        Some(k) if event.count > k.count => Seen::Again {
            more: event.count - k.count,
        },
        Some(k) if event.count == k.count && event.last_seen > k.last_seen => Seen::Later,
        Some(_) => Seen::Same,
    }
}
