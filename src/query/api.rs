//! The wire types of the query API (the contract `kubectl-blame` codes against) and the pure
//! builders of its documents: discovery, `Change`, `ChangeList`, `meta.k8s.io/v1` Table and Status.
//! Depends only on pipeline and store types; no I/O.

use crate::Error;
use crate::pipeline::{self, ChangeEvent};
use crate::render;
use crate::store::StoredEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, GroupVersionForDiscovery,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The API group served.
pub const GROUP: &str = "query.histor.dev";
/// The version served.
pub const VERSION: &str = "v1alpha1";
/// `query.histor.dev/v1alpha1`.
pub const API_VERSION: &str = "query.histor.dev/v1alpha1";
/// The resource of recorded changes.
pub const RESOURCE: &str = "changes";
/// The resource of API usage counted from audit events (cluster-scoped, `list` only).
pub const USAGE_RESOURCE: &str = "apiusages";
/// URL prefix of the group version.
pub const PREFIX: &str = "/apis/query.histor.dev/v1alpha1";

/// Widest CHANGES cell in a Table before it is shortened (kubectl does not wrap).
const MAX_CHANGES_WIDTH: usize = 72;

/// One recorded change, as the API serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `query.histor.dev/v1alpha1`.
    pub api_version: String,
    /// `Change`.
    pub kind: String,
    /// Name (the event id), namespace and time.
    pub metadata: ChangeMeta,
    /// The event, without its `object`.
    pub event: ChangeEvent,
    /// One line saying what changed ([`render::summary`]: worded as not applied when it was not).
    #[serde(default)]
    pub summary: String,
    /// RFC 6902 operations with values (GET one only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
    /// Unified YAML diff of the object before and after (GET one only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The cleaned object before the change (GET one with `include=objects`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The cleaned object after the change (GET one with `include=objects`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// Object metadata of a [`Change`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeMeta {
    /// The event id, as a decimal string.
    pub name: String,
    /// The changed object's namespace; absent for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When histor received the change (RFC 3339).
    pub creation_timestamp: String,
}

/// A page of changes, newest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeList {
    /// `query.histor.dev/v1alpha1`.
    pub api_version: String,
    /// `ChangeList`.
    pub kind: String,
    /// The continue token, when more pages follow.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The changes.
    #[serde(default)]
    pub items: Vec<Change>,
}

/// List metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ListMeta {
    /// Opaque token for the next page.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
}

impl Change {
    /// The event id (`metadata.name`).
    pub fn id(&self) -> &str {
        &self.metadata.name
    }

    /// The list form of a stored event: no patch, diff or objects.
    pub fn summary_of(stored: &StoredEvent) -> Change {
        let mut event = stored.event.clone();
        // The object is large and the state after the change is what GET one is for.
        event.object = None;
        Change {
            api_version: API_VERSION.into(),
            kind: "Change".into(),
            metadata: ChangeMeta {
                name: stored.id.to_string(),
                namespace: event.namespace.clone(),
                creation_timestamp: rfc3339(&event),
            },
            // Worded from the state: a refused change is not summarised as done.
            summary: render::summary(&event),
            event,
            patch: None,
            diff: None,
            before: None,
            after: None,
        }
    }

    /// The full form: patch and diff of `before` → `after`, and the objects when `objects`.
    pub fn detailed(
        stored: &StoredEvent,
        before: Option<Value>,
        after: Option<Value>,
        objects: bool,
    ) -> Change {
        let mut change = Change::summary_of(stored);
        let patch = stored.event.json_patch();
        change.patch = Some(serde_json::to_value(&patch).unwrap_or(Value::Array(vec![])));
        // The diff is text for people: a name with a line break must not add a line to it.
        let target = render::escape_controls(&stored.event.target()).into_owned();
        // As git does: a side that does not exist (before a CREATE, after a DELETE) is /dev/null.
        let label = |side: &str, v: &Option<Value>| match v {
            Some(_) => format!("{side}/{target}"),
            None => "/dev/null".to_owned(),
        };
        change.diff = Some(pipeline::unified_yaml_diff(
            before.as_ref(),
            after.as_ref(),
            &label("a", &before),
            &label("b", &after),
        ));
        if objects {
            change.before = before;
            change.after = after;
        }
        change
    }
}

impl ChangeList {
    /// A list of `items` with `next` as continue token.
    pub fn new(items: Vec<Change>, next: Option<u64>) -> ChangeList {
        ChangeList {
            api_version: API_VERSION.into(),
            kind: "ChangeList".into(),
            metadata: ListMeta {
                continue_: next.map(encode_continue),
            },
            items,
        }
    }
}

/// The continue token for a page that ends before event `id`. Opaque to clients; it is the id
/// itself so that a token stays valid across restarts and replicas sharing a store.
pub fn encode_continue(id: u64) -> String {
    id.to_string()
}

/// The event id in a continue token.
pub fn decode_continue(token: &str) -> Result<u64, Error> {
    token.parse().map_err(|_| {
        Error::BadRequest(format!(
            "invalid continue token {}",
            super::params::quoted(token)
        ))
    })
}

fn rfc3339(e: &ChangeEvent) -> String {
    // Whole seconds, as Kubernetes writes timestamps; `event.receivedAt` keeps the precision.
    jiff::Timestamp::from_second(e.received_at.as_second())
        .unwrap_or(e.received_at)
        .to_string()
}

/// `GET /apis`: the group list (only ours; the aggregator merges it with the rest).
pub fn group_list() -> APIGroupList {
    APIGroupList {
        groups: vec![group()],
    }
}

/// `GET /apis/query.histor.dev`.
pub fn group() -> APIGroup {
    let version = GroupVersionForDiscovery {
        group_version: API_VERSION.into(),
        version: VERSION.into(),
    };
    APIGroup {
        name: GROUP.into(),
        preferred_version: Some(version.clone()),
        server_address_by_client_cidrs: None,
        versions: vec![version],
    }
}

/// `GET /apis/query.histor.dev/v1alpha1`.
pub fn resource_list() -> APIResourceList {
    APIResourceList {
        group_version: API_VERSION.into(),
        resources: vec![
            APIResource {
                name: RESOURCE.into(),
                singular_name: "change".into(),
                namespaced: true,
                kind: "Change".into(),
                verbs: vec!["get".into(), "list".into()],
                short_names: Some(vec!["chg".into()]),
                categories: None,
                group: None,
                version: None,
                storage_version_hash: None,
            },
            APIResource {
                name: USAGE_RESOURCE.into(),
                singular_name: "apiusage".into(),
                namespaced: false,
                kind: "APIUsage".into(),
                verbs: vec!["list".into()],
                short_names: None,
                categories: None,
                group: None,
                version: None,
                storage_version_hash: None,
            },
        ],
    }
}

/// What the client asked the rows' `object` to be (`includeObject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// PartialObjectMetadata (kubectl's default).
    #[default]
    Metadata,
    /// The whole Change.
    Object,
}

impl IncludeObject {
    /// Parses `includeObject`; unknown values fall back to the default, as the apiserver does
    /// not but kubectl never sends them.
    pub fn parse(s: &str) -> IncludeObject {
        match s {
            "None" => IncludeObject::None,
            "Object" => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// True when `accept` asks for `meta.k8s.io/v1` Table (as `kubectl get` does).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let mut parts = media.split(';').map(str::trim);
        let ty = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let has = |k: &str, v: &str| params.iter().any(|&(pk, pv)| pk == k && pv == v);
        ty == "application/json" && has("as", "Table") && has("g", "meta.k8s.io") && has("v", "v1")
    })
}

/// A `meta.k8s.io/v1` Table of `changes`: TIME, USER, OP, STATE, TARGET, CHANGES (ID when wide).
pub fn table(changes: &[Change], next: Option<u64>, include: IncludeObject) -> Value {
    let column = |name: &str, ty: &str, format: &str, priority: u8, description: &str| json!({"name": name, "type": ty, "format": format, "priority": priority, "description": description});
    let rows: Vec<Value> = changes
        .iter()
        .map(|c| {
            // kubectl prints cells as they come: the user-controlled ones are escaped here (the
            // row's `object` stays exact).
            let cells = json!([
                c.metadata.creation_timestamp,
                render::escape_controls(&render::actor(&c.event)),
                c.event.operation.to_string(),
                c.event.state.as_str(),
                render::escape_controls(&render::target(&c.event)),
                render::escape_controls(&render::shorten(&c.summary, MAX_CHANGES_WIDTH)),
                c.metadata.name,
            ]);
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": c.metadata,
                }),
                IncludeObject::Object => serde_json::to_value(c).unwrap_or(Value::Null),
            };
            let mut row = json!({"cells": cells});
            if !object.is_null() {
                row["object"] = object;
            }
            row
        })
        .collect();
    let mut metadata = json!({});
    if let Some(next) = next {
        metadata["continue"] = encode_continue(next).into();
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [
            column("Time", "string", "date-time", 0, "When histor received the change."),
            column("User", "string", "", 0, "Who made the change; `(inferred)` when only managedFields tell it."),
            column("Op", "string", "", 0, "CREATE, UPDATE, DELETE or CONNECT."),
            column("State", "string", "", 0, "received, confirmed, notApplied, observed or unconfirmed."),
            column("Target", "string", "", 0, "The changed object (and subresource)."),
            column("Changes", "string", "", 0, "What changed."),
            column("Id", "string", "", 1, "The change's id: kubectl get changes ID shows it whole."),
        ],
        "rows": rows,
    })
}

/// A `Status` document for a failed request, with its HTTP code.
pub fn status(error: &Error) -> (u16, Value) {
    let (code, reason) = match error {
        Error::Unauthorized(_) => (401, "Unauthorized"),
        Error::Forbidden(_) => (403, "Forbidden"),
        Error::NotFound(_) => (404, "NotFound"),
        Error::BadRequest(_) => (400, "BadRequest"),
        _ => (500, "InternalError"),
    };
    let message = match code {
        // Internal details (store paths, apiserver addresses) are for the logs, not for callers.
        500 => format!("internal error ({})", error.metric_label()),
        _ => error.to_string(),
    };
    let doc = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"group": GROUP, "kind": RESOURCE},
        "code": code,
    });
    (code, doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_header_asks_for_a_table() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json;as=Table;v=v1beta1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn discovery_documents_name_the_group_and_resource() {
        let list = serde_json::to_value(group_list()).unwrap();
        assert_eq!(list["kind"], "APIGroupList");
        assert_eq!(list["groups"][0]["name"], GROUP);
        assert_eq!(
            list["groups"][0]["preferredVersion"]["groupVersion"],
            API_VERSION
        );
        let resources = serde_json::to_value(resource_list()).unwrap();
        assert_eq!(resources["kind"], "APIResourceList");
        assert_eq!(resources["groupVersion"], API_VERSION);
        assert_eq!(resources["resources"][0]["name"], "changes");
        assert_eq!(resources["resources"][0]["namespaced"], true);
        assert_eq!(resources["resources"][0]["verbs"], json!(["get", "list"]));
    }

    #[test]
    fn status_hides_internal_details() {
        let (code, doc) = status(&Error::Usage("/var/lib/histor broke".into()));
        assert_eq!(code, 500);
        assert!(!doc["message"].as_str().unwrap().contains("/var/lib"));
        let (code, doc) = status(&Error::Forbidden("no".into()));
        assert_eq!((code, &doc["reason"]), (403, &json!("Forbidden")));
    }

    /// kubectl prints Table cells raw: user-controlled ones are escaped, the row objects and
    /// the diff's content stay exact.
    #[test]
    fn table_cells_and_diff_headers_escape_control_characters() {
        use crate::cli::testsupport::{EVIL_NAME, MALLORY, hostile, store_with};
        use crate::store::EventStore;
        let (_dir, store) = store_with(&hostile());
        let stored = store.query(&crate::store::Query::default()).unwrap().events;
        let changes: Vec<Change> = stored.iter().map(Change::summary_of).collect();
        let doc = table(&changes, None, IncludeObject::Object);
        for row in doc["rows"].as_array().unwrap() {
            for cell in row["cells"].as_array().unwrap() {
                let cell = cell.as_str().unwrap();
                assert!(!cell.chars().any(render::is_unprintable), "{cell:?}");
            }
        }
        let mallory = doc["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["object"]["event"]["user"]["username"] == MALLORY)
            .expect("the row object keeps the exact user name");
        assert_eq!(mallory["cells"][1], "mallory\\u001b[8m");
        assert_eq!(mallory["cells"][3], "unconfirmed");
        assert_eq!(mallory["object"]["event"]["name"], EVIL_NAME);

        let update = stored
            .iter()
            .find(|s| {
                s.event.operation == crate::crd::Operation::Update && s.event.name == EVIL_NAME
            })
            .unwrap();
        let before = store.state_before(update.id).unwrap();
        let after = store.state_after(update.id).unwrap();
        let diff = Change::detailed(update, before, after, false).diff.unwrap();
        assert!(
            diff.starts_with("--- a/configmaps/evil\\r\\nFAKE LINE\\u0000\n"),
            "{diff}"
        );
        assert!(!diff.lines().any(|l| l.starts_with("FAKE LINE")), "{diff}");
    }

    #[test]
    fn continue_tokens_round_trip() {
        assert_eq!(decode_continue(&encode_continue(42)).unwrap(), 42);
        assert!(matches!(decode_continue("x"), Err(Error::BadRequest(_))));
    }
}
