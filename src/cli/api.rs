//! The wire types of the query API (`query.histor.dev/v1alpha1`) as the plugin reads them, and
//! [`change_json`], which builds a `Change` from a stored event: the one place that says what a
//! `Change` looks like, so that the server and the plugin (and the plugin's tests) agree.
//!
//! Depends only on pipeline and store types.

use crate::pipeline::{self, ChangeEvent};
use crate::store::StoredEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `apiVersion` of every object of the query API.
pub const API_VERSION: &str = "query.histor.dev/v1alpha1";
/// Path prefix of the query API on the apiserver (and on `histor serve`).
pub const BASE_PATH: &str = "/apis/query.histor.dev/v1alpha1";
/// The APIService that registers the query API with the aggregator.
pub const API_SERVICE: &str = "v1alpha1.query.histor.dev";

/// One recorded change, as the query API serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `Change`.
    pub kind: String,
    /// Name (the event id), namespace and time of the change.
    pub metadata: ChangeMeta,
    /// The event, without its `object`.
    pub event: ChangeEvent,
    /// One line saying what changed (`spec.replicas: 1 → 3`).
    #[serde(default)]
    pub summary: String,
    /// RFC 6902 operations (only when one change is fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
    /// Unified YAML diff (only when one change is fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The cleaned object before the change (`include=objects`; absent for CREATE or unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The cleaned object after the change (`include=objects`; absent for DELETE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// `metadata` of a [`Change`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeMeta {
    /// The event id, in decimal.
    pub name: String,
    /// Namespace of the changed object; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When histor received the change (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// A page of changes, newest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeList {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `ChangeList`.
    pub kind: String,
    /// The continue token of the next page.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The changes.
    #[serde(default)]
    pub items: Vec<Change>,
}

/// `metadata` of a [`ChangeList`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// Pass as `continue` for the next (older) page; absent or empty on the last page.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

impl ChangeList {
    /// A list of `items` with no further page.
    pub fn new(items: Vec<Change>) -> ChangeList {
        ChangeList {
            api_version: API_VERSION.into(),
            kind: "ChangeList".into(),
            metadata: ListMeta::default(),
            items,
        }
    }
}

impl Change {
    /// The event id (`metadata.name`).
    pub fn id(&self) -> &str {
        &self.metadata.name
    }

    /// The list form of a stored event: no patch, diff or objects.
    pub fn from_stored(stored: &StoredEvent) -> Change {
        let mut event = stored.event.clone();
        event.object = None;
        Change {
            api_version: API_VERSION.into(),
            kind: "Change".into(),
            metadata: ChangeMeta {
                name: stored.id.to_string(),
                namespace: event.namespace.clone(),
                creation_timestamp: Some(
                    event.received_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
            },
            summary: pipeline::summarize(&event),
            event,
            patch: None,
            diff: None,
            before: None,
            after: None,
        }
    }

    /// The single-change form: with the JSON Patch, the unified YAML diff between `before` and
    /// `after` (`a/TARGET`, `b/TARGET`, `/dev/null` for a missing side), and the objects
    /// themselves when `include_objects`.
    pub fn detailed(
        stored: &StoredEvent,
        before: Option<&Value>,
        after: Option<&Value>,
        include_objects: bool,
    ) -> Change {
        let mut change = Change::from_stored(stored);
        // The patch of a JSON Patch list cannot fail to serialise: it is built from Values.
        change.patch = Some(serde_json::to_value(stored.event.json_patch()).unwrap_or_default());
        let target = stored.event.target();
        let label = |side: &str, v: Option<&Value>| match v {
            Some(_) => format!("{side}/{target}"),
            None => "/dev/null".to_owned(),
        };
        change.diff = Some(pipeline::unified_yaml_diff(
            before,
            after,
            &label("a", before),
            &label("b", after),
        ));
        if include_objects {
            change.before = before.cloned();
            change.after = after.cloned();
        }
        change
    }
}

/// The `Change` JSON of a stored event: the list form when both objects are `None`, otherwise the
/// single-change form with `patch`, `diff`, `before` and `after` (see [`Change::detailed`]).
/// `after` should be `None` for a DELETE, `before` `None` for a CREATE or when unknown.
pub fn change_json(stored: &StoredEvent, before: Option<&Value>, after: Option<&Value>) -> Value {
    let change = if before.is_none() && after.is_none() {
        Change::from_stored(stored)
    } else {
        Change::detailed(stored, before, after, true)
    };
    // A Change is strings, numbers and Values: it always serialises.
    serde_json::to_value(change).unwrap_or_default()
}
