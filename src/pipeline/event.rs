//! The change event: what histor knows about one admitted change after cleaning and redaction.
//! This is the type every stage after the pipeline speaks.

use crate::crd::Operation;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One recorded change to one object, attributed to who made it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEvent {
    /// `request.uid` of the AdmissionReview: unique per request, shared by every policy it matched.
    pub request_uid: String,
    /// When histor received the review (the apiserver sends no timestamp).
    pub received_at: Timestamp,
    /// Policies the request matched.
    pub policies: Vec<String>,
    /// What kind of change.
    pub operation: Operation,
    /// Who made it.
    pub user: Actor,
    /// The resource the request was made against (subresource included).
    pub resource: ResourceId,
    /// Kind of the object in the request (for `scale`, `autoscaling/v1 Scale`).
    pub kind: KindId,
    /// Namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object (for `generateName` creates, the generated name when known).
    pub name: String,
    /// UID of the object (shared by its subresources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_uid: Option<String>,
    /// The cleaned diff between the old and new object, with values. Empty for CREATE and DELETE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    /// The cleaned object after the change; for DELETE the last state. For subresource requests,
    /// the subresource object (a Scale, say), not the parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// True when Secret values were replaced by keyed hashes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    /// What the witnesses know of the change: was it committed?
    #[serde(default)]
    pub state: ChangeState,
    /// The commit a witness saw (`confirmed` and `observed` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<Commit>,
    /// For an `observed` change, which no review announced: who made it as the object's
    /// `managedFields` tell it. `user` is then empty: the actor is inferred, not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inferred: Option<InferredActor>,
    /// What the apiserver's audit log adds to the change: its audit ID, how the request ended,
    /// where it came from and, when the user impersonated someone, who really sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditInfo>,
}

/// What the witnesses know of a change. Admission (the webhook) sees a request before the
/// apiserver stores it, so it alone cannot tell whether the change happened; the watch (and the
/// audit log) see what was committed.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub enum ChangeState {
    /// Announced by a review; no witness has told yet whether it was committed.
    Received,
    /// Announced by a review and seen committed (same object, same cleaned state; for a DELETE,
    /// the deletion).
    Confirmed,
    /// Announced by a review and not committed: not seen within the confirmation window while
    /// the watch was healthy (a later webhook, a quota, a conflict or storage refused it, an
    /// attempt superseded by a conflict retry, or a forged review).
    NotApplied,
    /// Committed, seen by a witness, announced by no review (made while the webhook was
    /// unreachable, say): the actor is inferred from `managedFields`.
    Observed,
    /// No witness could tell: standalone mode, a witness down past the window, or recorded
    /// before histor had witnesses.
    #[default]
    Unconfirmed,
}

impl ChangeState {
    /// The name used in the API and on the command line (`notApplied`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Received => "received",
            ChangeState::Confirmed => "confirmed",
            ChangeState::NotApplied => "notApplied",
            ChangeState::Observed => "observed",
            ChangeState::Unconfirmed => "unconfirmed",
        }
    }

    /// Every state, in the order above.
    pub const ALL: [ChangeState; 5] = [
        ChangeState::Received,
        ChangeState::Confirmed,
        ChangeState::NotApplied,
        ChangeState::Observed,
        ChangeState::Unconfirmed,
    ];

    /// The state's number where an engine persists it. Stored in every store: never renumber.
    pub fn code(self) -> u8 {
        match self {
            ChangeState::Received => 0,
            ChangeState::Confirmed => 1,
            ChangeState::NotApplied => 2,
            ChangeState::Observed => 3,
            ChangeState::Unconfirmed => 4,
        }
    }

    /// The state of a persisted [`code`](ChangeState::code).
    pub fn from_code(code: u8) -> Option<ChangeState> {
        ChangeState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// False only for `notApplied`: a change that did not happen is not counted or announced.
    pub fn may_have_happened(self) -> bool {
        self != ChangeState::NotApplied
    }
}

impl std::fmt::Display for ChangeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ChangeState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ChangeState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown state {s:?}: one of received, confirmed, notApplied, observed, unconfirmed")
            })
    }
}

/// A commit as a witness saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Commit {
    /// The resourceVersion the object got (for a DELETE, that of the deletion).
    pub resource_version: String,
    /// When the witness saw it (a watch event carries no commit time).
    pub seen_at: Timestamp,
    /// Which witness.
    pub witness: Witness,
}

/// A witness of commits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Witness {
    /// A watch of the resource (list, then watch).
    Watch,
    /// The apiserver's audit log.
    Audit,
}

/// The audit log's account of the request that made a change, joined exactly by the request
/// uid histor's webhook put in the audit event's annotations.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditInfo {
    /// The apiserver's id of the request (`Audit-Id` in its response headers).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// The HTTP status the request ended with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// The client's addresses, nearest proxy last (`X-Forwarded-For` first, then the peer).
    #[serde(default, rename = "sourceIPs", skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// The client's User-Agent header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Who authenticated, when it was not the change's user: the user impersonated the
    /// change's `user` (the webhook sees only the impersonated identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_by: Option<String>,
}

/// The author of an observed change as the object's `managedFields` tell it: the entry whose
/// time is newest (the one that changed last). Inferred, never authenticated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InferredActor {
    /// Field manager, such as `kubectl-edit` or `kube-controller-manager`.
    pub manager: String,
    /// `Update` or `Apply`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    /// The entry's time (second precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    /// The subresource the entry was written through (`status`, `scale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// The authenticated user behind a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// User name, such as `alice` or `system:serviceaccount:ns:name`.
    pub username: String,
    /// The authenticator's UID of the user, when it gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Groups the user belongs to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes from the authenticator (such as the credential id of a token).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Group, version, resource and subresource of a request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ResourceId {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name, such as `deployments`.
    pub resource: String,
    /// Subresource, such as `scale` or `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

impl ResourceId {
    /// `deployments.apps` (or `configmaps` for the core group): how kubectl names a resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// Group, version and kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct KindId {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind, such as `Deployment`.
    pub kind: String,
}

impl KindId {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// One operation of the diff: an RFC 6902 operation that also keeps the value it replaced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FieldChange {
    /// `add`, `remove` or `replace`.
    pub op: ChangeOp,
    /// JSON pointer (RFC 6901) of the changed field.
    pub path: String,
    /// Value before the change (`remove`, `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// Value after the change (`add`, `replace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl FieldChange {
    /// This change as an RFC 6902 operation; `None` when the path is not a JSON pointer.
    pub fn patch_operation(&self) -> Option<json_patch::PatchOperation> {
        use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
        let path = self.path.parse().ok()?;
        let value = || self.new.clone().unwrap_or(Value::Null);
        Some(match self.op {
            ChangeOp::Add => PatchOperation::Add(AddOperation {
                path,
                value: value(),
            }),
            ChangeOp::Remove => PatchOperation::Remove(RemoveOperation { path }),
            ChangeOp::Replace => PatchOperation::Replace(ReplaceOperation {
                path,
                value: value(),
            }),
        })
    }
}

/// The kind of a field change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// The field is new.
    Add,
    /// The field is gone.
    Remove,
    /// The field has a new value.
    Replace,
}

impl ChangeEvent {
    /// The diff as an RFC 6902 JSON Patch that turns the old object into the new one.
    pub fn json_patch(&self) -> json_patch::Patch {
        json_patch::Patch(
            self.changes
                .iter()
                .filter_map(FieldChange::patch_operation)
                .collect(),
        )
    }

    /// `deployments.apps/nginx`: the target as kubectl would name it.
    pub fn target(&self) -> String {
        format!("{}/{}", self.resource.group_resource(), self.name)
    }
}

/// What the pipeline hands to the store: the event, plus the cleaned old object so the store can
/// tell whether its delta chain for the object is unbroken, and the key the store dedupes by.
#[derive(Clone, Debug, PartialEq)]
pub struct Captured {
    /// The event to record.
    pub event: ChangeEvent,
    /// The cleaned (and redacted) old object, for UPDATE and DELETE.
    pub before: Option<Value>,
    /// What makes two webhook calls the same change (see [`Captured::new`] and
    /// [`Captured::with_fingerprint`]); the store dedupes and links by it.
    pub dedupe: [u8; 16],
}

impl Captured {
    /// An event to store, deduped by its request uid.
    pub fn new(event: ChangeEvent, before: Option<Value>) -> Self {
        let dedupe = crate::store::digest::request_digest(&event.request_uid);
        Captured {
            event,
            before,
            dedupe,
        }
    }

    /// Dedupes by `fingerprint` instead of the request uid: the apiserver gives every webhook
    /// call its own uid (two policies matching one request see two), so the pipeline keys a
    /// change by what the calls of one request share (see [`Request::fingerprint`](super::Request::fingerprint)).
    pub fn with_fingerprint(mut self, fingerprint: [u8; 16]) -> Self {
        self.dedupe = fingerprint;
        self
    }
}
