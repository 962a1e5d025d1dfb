//! ChangeRecord: a small per-object summary of its history, for `kubectl get changerecords`.
//! The history itself lives in histor's store, never in etcd.

use super::Operation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Summary of one tracked object's recorded changes. Written by histor; read by people.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "histor.dev",
    version = "v1alpha1",
    kind = "ChangeRecord",
    plural = "changerecords",
    shortname = "cr",
    shortname = "chr",
    category = "histor",
    namespaced,
    doc = "Summary of one tracked object's recorded changes, written by histor.",
    status = "ChangeRecordStatus",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Last-User","type":"string","jsonPath":".status.lastChange.user"}"#,
    printcolumn = r#"{"name":"Op","type":"string","jsonPath":".status.lastChange.operation"}"#,
    printcolumn = r#"{"name":"Changes","type":"integer","jsonPath":".status.changeCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".status.lastChange.time","description":"time since the last change"}"#,
    printcolumn = r#"{"name":"Summary","type":"string","jsonPath":".status.lastChange.summary","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecordSpec {
    /// The tracked object, as `kind/name` (with `.group` for non-core kinds), for display.
    pub target: String,
    /// The tracked object.
    pub target_ref: TargetRef,
}

/// Reference to a tracked object; the uid tells apart objects that reuse a name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API version, such as `apps/v1`.
    pub api_version: String,
    /// Kind, such as `Deployment`.
    pub kind: String,
    /// Namespace; empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// UID of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The summary itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecordStatus {
    /// Number of recorded changes still retained.
    #[serde(default)]
    pub change_count: u64,
    /// Receipt time of the oldest retained change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Time>,
    /// The newest change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<ChangeSummary>,
    /// The last few changes, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<RecentChange>,
    /// Users with the most retained changes, most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contributors: Vec<Contributor>,
}

/// One change in a line.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeSummary {
    /// When histor received it.
    pub time: Time,
    /// Who made it.
    pub user: String,
    /// What kind of change.
    pub operation: Operation,
    /// One line, such as `spec.replicas: 3 → 0`.
    pub summary: String,
}

/// One of the recent changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecentChange {
    /// When histor received it.
    pub time: Time,
    /// Who made it.
    pub user: String,
    /// What kind of change.
    pub operation: Operation,
    /// Changed paths (at most 10), such as `spec.replicas`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// A user and how many retained changes they made.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Contributor {
    /// User name.
    pub user: String,
    /// Number of changes.
    pub changes: u64,
}
