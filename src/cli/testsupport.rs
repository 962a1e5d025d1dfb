//! Test support: realistic histories (the recorded AdmissionReviews run through the real pipeline
//! into a real sled store), converted to the query API's `Change` shape with [`change_json`]'s
//! rules, and a fake [`QueryApi`] that serves them as the query server would.

use super::api::Change;
use super::client::{FetchError, QueryApi};
use crate::crd::{Operation, ResourceRule, TrackingPolicySpec};
use crate::pipeline::{self, CompiledPolicy, Outcome, Redactor, Request, testdata};
use crate::store::{EventStore, Query, SledStore, StoredEvent};
use jiff::Timestamp;
use serde_json::Value;

/// When the first change of every test history happens.
pub const T0: &str = "2026-11-22T02:07:49Z";

/// `T0` plus `seconds`.
pub fn at(seconds: i64) -> Timestamp {
    T0.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(seconds)
}

/// A store holding `requests` (each with its receipt time) as the pipeline records them under a
/// policy that tracks everything. Dry runs and empty diffs are skipped, as in production.
pub fn store_with(requests: &[(Request, Timestamp)]) -> (tempfile::TempDir, SledStore) {
    let spec = TrackingPolicySpec {
        resources: vec![ResourceRule {
            api_groups: vec!["*".into()],
            api_versions: vec![],
            resources: vec!["*".into(), "*/*".into()],
            operations: vec![Operation::Create, Operation::Update, Operation::Delete],
        }],
        ..Default::default()
    };
    let policy = CompiledPolicy::compile("all", &spec).unwrap();
    let redactor = Redactor::new(b"0123456789abcdef0123456789abcdef");
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("store")).unwrap();
    for (req, t) in requests {
        if let Outcome::Record(captured) = pipeline::process(req, &policy, &redactor, *t) {
            store.append(std::slice::from_ref(&captured)).unwrap();
        }
    }
    (dir, store)
}

/// Every recorded fixture, in recording order, seven seconds apart.
pub fn fixture_requests() -> Vec<(Request, Timestamp)> {
    const ORDER: [&str; 20] = [
        "create-deployment",
        "update-deployment-scale",
        "update-deployment",
        "update-deployment-dryrun",
        "delete-deployment",
        "create-configmap",
        "update-configmap",
        "create-configmap-dryrun",
        "delete-configmap",
        "create-configmap-denied",
        "create-secret",
        "update-secret",
        "delete-secret",
        "create-widget",
        "update-widget",
        "update-widget-status",
        "update-widget-scale",
        "delete-widget",
        "create-configmap-alice",
        "delete-configmap-alice",
    ];
    ORDER
        .iter()
        .enumerate()
        .map(|(i, name)| (testdata::request(name), at(7 * i as i64)))
        .collect()
}

/// The recorded nginx Deployment, changed by three people: alice creates it (1 replica), bob
/// scales it to 3 through `/scale`, carol sets the image to `nginx:1.27`, adds the label
/// `tier: web` and removes `spec.strategy.rollingUpdate.maxSurge`.
pub fn three_users() -> Vec<(Request, Timestamp)> {
    let mut create = testdata::request("create-deployment");
    create.user.username = "alice".into();
    create.user.groups = vec!["dev".into(), "system:authenticated".into()];
    let mut scale = testdata::request("update-deployment-scale");
    scale.user.username = "bob".into();
    scale.user.groups = vec!["sre".into(), "system:authenticated".into()];
    let mut edit = testdata::request("update-deployment");
    edit.user.username = "carol".into();
    edit.user.groups = vec!["dev".into(), "system:authenticated".into()];
    let mut new = edit.old_object.clone().unwrap();
    new["metadata"]["labels"]["tier"] = "web".into();
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.27".into();
    new["spec"]["strategy"]["rollingUpdate"]
        .as_object_mut()
        .unwrap()
        .remove("maxSurge");
    edit.object = Some(new);
    vec![(create, at(0)), (scale, at(95)), (edit, at(3 * 3600))]
}

/// A user name that hides what follows it on a terminal (SGR 8, concealed).
pub const MALLORY: &str = "mallory\x1b[8m";
/// An object name that would forge a line and end in NUL.
pub const EVIL_NAME: &str = "evil\r\nFAKE LINE\0";
/// A namespace carrying a C1 CSI (U+009B) that clears the screen on terminals that obey C1.
pub const EVIL_NAMESPACE: &str = "demo\u{9b}2J";

/// A hostile history: the recorded ConfigMap's create, update and delete by [`MALLORY`] (groups,
/// request uids, name, namespace, keys and values full of control characters), and a widget
/// whose API group and subresource carry escapes.
pub fn hostile() -> Vec<(Request, Timestamp)> {
    let evil = |name: &str, uid: &str| {
        let mut r = testdata::request(name);
        r.user.username = MALLORY.into();
        r.user.groups = vec!["dev\x1b]0;owned\x07".into(), "ops\u{202e}nimda".into()];
        r.uid = format!("{uid}\x1b[2K\u{202e}");
        r.name = EVIL_NAME.into();
        r.namespace = Some(EVIL_NAMESPACE.into());
        for obj in [r.object.as_mut(), r.old_object.as_mut()]
            .into_iter()
            .flatten()
        {
            obj["metadata"]["name"] = EVIL_NAME.into();
            obj["metadata"]["namespace"] = EVIL_NAMESPACE.into();
        }
        r
    };
    let create = evil("create-configmap", "\x1b[1A");
    let mut update = evil("update-configmap", "\r");
    if let Some(obj) = update.object.as_mut() {
        obj["data"]["greeting"] = "bonjour\x1b[31m\u{9b}1m\u{202e}\x7f".into();
        obj["data"]["evil\x1b[8mkey"] = "x\ry\n\x1b[0m".into();
        obj["data"]["script"] = "line one\nline\ttwo\x1b[2K\n".into();
    }
    let mut delete = evil("delete-configmap", "\0");
    delete.old_object = update.object.clone();
    let mut widget = testdata::request("update-widget-scale");
    widget.user.username = "bob\x1b]8;;https://evil\x07".into();
    widget.resource.group = "example.com\x1b[1A".into();
    widget.resource.subresource = Some("scale\x1b[2K".into());
    vec![
        (create, at(0)),
        (update, at(60)),
        (delete, at(120)),
        (widget, at(180)),
    ]
}

/// Every change in `store`, newest first, in list form.
pub fn list(store: &SledStore) -> Vec<Change> {
    store
        .query(&Query {
            limit: 1000,
            ..Query::default()
        })
        .unwrap()
        .events
        .iter()
        .map(Change::summary_of)
        .collect()
}

/// One change as `GET …/changes/{id}?include=objects` serves it: `before` absent for a CREATE
/// or when unknown, `after` absent for a DELETE (whose last state is its `before`).
pub fn detailed(store: &SledStore, id: u64) -> Change {
    let stored: StoredEvent = store.get(id).unwrap().unwrap();
    let object = stored.event.object.clone();
    let (before, after): (Option<Value>, Option<Value>) = match stored.event.operation {
        Operation::Create => (None, object),
        Operation::Delete => (store.state_before(id).unwrap().or(object), None),
        _ => (store.state_before(id).unwrap(), object),
    };
    Change::detailed(&stored, before, after, true)
}

/// A fake query server over a store, answering the contract's paths (filters `kind`, `name`,
/// `user`, `operation`, `state`, pages of `limit` with `continue`), or always `error` when set.
pub struct FakeApi {
    /// The store served.
    pub store: SledStore,
    /// Every GET, for assertions.
    pub requests: std::sync::Mutex<Vec<String>>,
    /// The answer to every request, when set.
    pub error: Option<FetchError>,
    /// Applied to every event served: how tests give events the states, commits and inferred
    /// actors the witnesses would have set (the store keeps what it is given).
    pub edit: Option<EventEdit>,
}

/// A change to the events a [`FakeApi`] serves.
pub type EventEdit = Box<dyn Fn(&mut crate::pipeline::ChangeEvent) + Send + Sync>;

impl FakeApi {
    /// Serves `store`.
    pub fn new(store: SledStore) -> FakeApi {
        FakeApi {
            store,
            requests: Default::default(),
            error: None,
            edit: None,
        }
    }

    /// Serves `store` with `edit` applied to every event.
    pub fn edited(
        store: SledStore,
        edit: impl Fn(&mut crate::pipeline::ChangeEvent) + Send + Sync + 'static,
    ) -> FakeApi {
        FakeApi {
            edit: Some(Box::new(edit)),
            ..FakeApi::new(store)
        }
    }

    /// `change` as this server serves it: edited, its summary worded from the result.
    fn serve(&self, mut change: Change) -> Change {
        if let Some(edit) = &self.edit {
            edit(&mut change.event);
            change.summary = crate::render::summary(&change.event);
        }
        change
    }

    fn answer(&self, path: &str) -> Result<String, FetchError> {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let params: Vec<(&str, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, decode(v)))
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let rest = path
            .strip_prefix(super::api::BASE_PATH)
            .ok_or_else(|| not_found(path))?;
        let (namespace, rest) = match rest.strip_prefix("/namespaces/") {
            Some(r) => {
                let (ns, r) = r.split_once('/').unwrap();
                (Some(decode(ns)), format!("/{r}"))
            }
            None => (None, rest.to_owned()),
        };
        if let Some(id) = rest.strip_prefix("/changes/") {
            let id: u64 = id.parse().map_err(|_| not_found(path))?;
            let mut c = self.serve(detailed(&self.store, id));
            if param("include").as_deref() != Some("objects") {
                c.before = None;
                c.after = None;
            }
            return Ok(serde_json::to_string(&c).unwrap());
        }
        assert_eq!(rest, "/changes", "unexpected path {path}");
        let kind = param("kind");
        let all: Vec<Change> = list(&self.store)
            .into_iter()
            .map(|c| self.serve(c))
            .filter(|c| namespace.is_none() || c.event.namespace == namespace)
            .filter(|c| {
                kind.as_deref().is_none_or(|k| {
                    k == c.event.resource.group_resource()
                        || k == c.event.resource.resource
                        || k.eq_ignore_ascii_case(&c.event.kind.kind)
                })
            })
            .filter(|c| param("name").is_none_or(|n| n == c.event.name))
            .filter(|c| param("user").is_none_or(|u| u == c.event.user.username))
            .filter(|c| param("operation").is_none_or(|o| o == c.event.operation.as_str()))
            .filter(|c| param("state").is_none_or(|s| s == c.event.state.as_str()))
            // As the server: `since` inclusive, `until` exclusive (RFC 3339 only here).
            .filter(|c| {
                param("since")
                    .is_none_or(|t| c.event.received_at >= t.parse::<Timestamp>().unwrap())
            })
            .filter(|c| {
                param("until").is_none_or(|t| c.event.received_at < t.parse::<Timestamp>().unwrap())
            })
            .collect();
        let start: usize = param("continue").map_or(0, |c| c.parse().unwrap());
        let limit: usize = param("limit").map_or(100, |l| l.parse().unwrap());
        let end = (start + limit).min(all.len());
        let mut page = super::api::ChangeList::new(all[start..end].to_vec(), None);
        if end < all.len() {
            page.metadata.continue_ = Some(end.to_string());
        }
        Ok(serde_json::to_string(&page).unwrap())
    }
}

fn not_found(path: &str) -> FetchError {
    FetchError::Status {
        code: 404,
        reason: "NotFound".into(),
        message: format!("{path} not found"),
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

impl QueryApi for FakeApi {
    async fn get(&self, path_and_query: &str) -> Result<String, FetchError> {
        self.requests
            .lock()
            .unwrap()
            .push(path_and_query.to_owned());
        match &self.error {
            Some(e) => Err(e.clone()),
            None => self.answer(path_and_query),
        }
    }
}
