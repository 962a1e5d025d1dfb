//! Tests of the query API against a mocked apiserver (TokenReview, SubjectAccessReview, the
//! requestheader ConfigMap) and a real sled store filled from the recorded admission fixtures,
//! plus one component test over real TLS with a front-proxy client certificate.

use super::auth::{RequestHeaderConfig, authenticate_front_proxy};
use super::*;
use crate::controller::fixtures::{body_json, json_response, not_found};
use crate::crd::TrackingPolicySpec;
use crate::pipeline::{Captured, CompiledPolicy, Outcome, Redactor, process, testdata};
use crate::store::SledStore;
use axum::body::Body as AxumBody;
use axum::http::{HeaderValue, Request as HttpRequest};
use kube::client::Body;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::ServiceExt;

/// The fixtures replayed into each namespace, in the order the apiserver sent them.
const HISTORY: &[&str] = &[
    "create-deployment",
    "update-deployment-scale",
    "update-deployment",
    "delete-deployment",
    "create-configmap",
    "update-configmap",
    "delete-configmap",
    "create-secret",
    "update-secret",
    "delete-secret",
    "create-configmap-alice",
    "delete-configmap-alice",
];

/// Rewrites a fixture into `namespace` (objects get namespace-specific uids, so the two copies
/// are different objects) and runs it through the pipeline.
fn captured(name: &str, namespace: &str, at: jiff::Timestamp) -> Option<Captured> {
    let spec: TrackingPolicySpec =
        serde_json::from_value(json!({"resources": [{"apiGroups": ["*"], "resources": ["*/*"]}]}))
            .unwrap();
    let policy = CompiledPolicy::compile("all", &spec).unwrap();
    let redactor = Redactor::new(b"0123456789abcdef0123456789abcdef");
    let mut req = testdata::request(name);
    req.uid = format!("{namespace}-{}", req.uid);
    req.namespace = Some(namespace.into());
    for obj in [req.object.as_mut(), req.old_object.as_mut()]
        .into_iter()
        .flatten()
    {
        obj["metadata"]["namespace"] = namespace.into();
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            obj["metadata"]["uid"] = format!("{namespace}-{uid}").into();
        }
    }
    match process(&req, &policy, &redactor, at) {
        Outcome::Record(c) => Some(c),
        Outcome::Skip(_) => None,
    }
}

/// A store holding the fixture history in namespaces `dev` and `prod`.
fn store() -> (tempfile::TempDir, Arc<SledStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("store")).unwrap();
    let t0: jiff::Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
    let mut batch = Vec::new();
    for (i, name) in HISTORY.iter().enumerate() {
        for (j, ns) in ["dev", "prod"].iter().enumerate() {
            let at = t0 + jiff::SignedDuration::from_secs((i * 2 + j) as i64);
            batch.extend(captured(name, ns, at));
        }
    }
    store.append(&batch).unwrap();
    (dir, Arc::new(store))
}

/// What the fake apiserver saw.
#[derive(Default)]
struct Seen {
    token_reviews: AtomicUsize,
    access_reviews: AtomicUsize,
    last_access_review: Mutex<Value>,
}

/// alice may get everything but Secrets in `dev`; admin everything; nobody else anything.
fn may(user: &str, attrs: &Value) -> bool {
    match user {
        "admin" => true,
        "alice" => attrs["namespace"] == "dev" && attrs["resource"] != "secrets",
        _ => false,
    }
}

/// A kube client whose apiserver answers TokenReviews, SubjectAccessReviews and the
/// requestheader ConfigMap (`configmap`, when given).
fn apiserver(configmap: Option<Value>) -> (kube::Client, Arc<Seen>) {
    let (svc, mut handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let body = body_json(req).await;
            let response = match path.as_str() {
                "/apis/authentication.k8s.io/v1/tokenreviews" => {
                    seen2.token_reviews.fetch_add(1, Ordering::SeqCst);
                    let user = match body["spec"]["token"].as_str() {
                        Some("admin-token") => {
                            json!({"username": "admin", "groups": ["system:masters"]})
                        }
                        Some("alice-token") => {
                            json!({"username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"]})
                        }
                        _ => Value::Null,
                    };
                    let mut answer = body.clone();
                    answer["status"] = if user.is_null() {
                        json!({"authenticated": false, "error": "invalid bearer token"})
                    } else {
                        json!({"authenticated": true, "user": user})
                    };
                    json_response(&answer)
                }
                "/apis/authorization.k8s.io/v1/subjectaccessreviews" => {
                    seen2.access_reviews.fetch_add(1, Ordering::SeqCst);
                    *seen2.last_access_review.lock().unwrap() = body.clone();
                    let user = body["spec"]["user"].as_str().unwrap_or_default();
                    let allowed = may(user, &body["spec"]["resourceAttributes"]);
                    let mut answer = body.clone();
                    answer["status"] = json!({"allowed": allowed});
                    json_response(&answer)
                }
                "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication" => {
                    configmap.as_ref().map_or_else(not_found, json_response)
                }
                other => panic!("unexpected call {other}"),
            };
            send.send_response(response);
        }
    });
    (kube::Client::new(svc, "default"), seen)
}

async fn call(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = HttpRequest::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app
        .clone()
        .oneshot(req.body(AxumBody::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const ALICE: (&str, &str) = ("authorization", "Bearer alice-token");
const ADMIN: (&str, &str) = ("authorization", "Bearer admin-token");

fn changes_url(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

/// `(namespace, target, op)` of each item.
fn items(list: &Value) -> Vec<(String, String, String)> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
                format!(
                    "{}/{}",
                    c["event"]["resource"]["resource"].as_str().unwrap(),
                    c["event"]["name"].as_str().unwrap()
                ),
                c["event"]["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

struct Cluster {
    _dir: tempfile::TempDir,
    app: Router,
    seen: Arc<Seen>,
}

fn cluster() -> Cluster {
    let (dir, store) = store();
    let (client, seen) = apiserver(None);
    let state = Arc::new(QueryState::in_cluster(store, client));
    Cluster {
        _dir: dir,
        app: router(state),
        seen,
    }
}

#[tokio::test]
async fn token_review_accepts_and_rejects_and_caches_by_hash() {
    let (client, seen) = apiserver(None);
    let authn = Authenticator {
        front_proxy: None,
        tokens: Tokens::Review(TokenReviewer::new(client)),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer alice-token"),
    );
    let user = authn.authenticate(None, &headers).await.unwrap();
    assert_eq!(user.username, "alice");
    assert_eq!(user.uid.as_deref(), Some("u-1"));
    assert_eq!(user.groups, ["devs", "system:authenticated"]);
    // Answered from the cache the second time.
    authn.authenticate(None, &headers).await.unwrap();
    assert_eq!(seen.token_reviews.load(Ordering::SeqCst), 1);

    headers.insert("authorization", HeaderValue::from_static("Bearer stolen"));
    let err = authn.authenticate(None, &headers).await.unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let err = authn
        .authenticate(None, &HeaderMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
}

/// A CA and a client certificate it signed, as the apiserver's front proxy holds them.
struct Pki {
    ca_pem: String,
    client_pem: String,
    client_key_pem: String,
}

fn pki(client_cn: &str) -> Pki {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "front-proxy-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, client_cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        client_pem: cert.pem(),
        client_key_pem: key.serialize_pem(),
    }
}

fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn proxy_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-remote-user", HeaderValue::from_static("alice"));
    h.append("x-remote-group", HeaderValue::from_static("devs"));
    h.append(
        "x-remote-group",
        HeaderValue::from_static("system:authenticated"),
    );
    h.insert("x-remote-extra-scopes", HeaderValue::from_static("view"));
    h.insert(
        "x-remote-extra-acme.com%2Fproject",
        HeaderValue::from_static("p1"),
    );
    h
}

#[test]
fn front_proxy_identity_needs_a_certificate_from_the_requestheader_ca() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let good = pki("front-proxy-client");
    let config = RequestHeaderConfig::new(&good.ca_pem, vec!["front-proxy-client".into()]).unwrap();
    let headers = proxy_headers();

    let user = authenticate_front_proxy(Some(&chain(&good.client_pem)), &headers, &config).unwrap();
    assert_eq!(user.username, "alice");
    assert_eq!(user.groups, ["devs", "system:authenticated"]);
    assert_eq!(user.extra["scopes"], ["view"]);
    assert_eq!(user.extra["acme.com/project"], ["p1"]);

    // Signed by another CA: the headers are not trusted.
    let other = pki("front-proxy-client");
    assert_eq!(
        authenticate_front_proxy(Some(&chain(&other.client_pem)), &headers, &config),
        None
    );
    // From the right CA but a name not allowed.
    let wrong_cn = RequestHeaderConfig::new(&good.ca_pem, vec!["aggregator".into()]).unwrap();
    assert_eq!(
        authenticate_front_proxy(Some(&chain(&good.client_pem)), &headers, &wrong_cn),
        None
    );
    // An empty allowed-names list accepts any CN from the CA.
    let any_cn = RequestHeaderConfig::new(&good.ca_pem, vec![]).unwrap();
    assert!(authenticate_front_proxy(Some(&chain(&good.client_pem)), &headers, &any_cn).is_some());
    // No certificate at all: headers ignored.
    assert_eq!(authenticate_front_proxy(None, &headers, &config), None);
    // A valid certificate without the user header: no identity.
    let mut no_user = headers.clone();
    no_user.remove("x-remote-user");
    assert_eq!(
        authenticate_front_proxy(Some(&chain(&good.client_pem)), &no_user, &config),
        None
    );
}

#[test]
fn requestheader_settings_come_from_the_configmap() {
    let good = pki("front-proxy-client");
    let data = [
        ("requestheader-client-ca-file", good.ca_pem.as_str()),
        ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
        ("requestheader-username-headers", r#"["X-Proxy-User"]"#),
        ("requestheader-group-headers", r#"["X-Proxy-Group"]"#),
        (
            "requestheader-extra-headers-prefix",
            r#"["X-Proxy-Extra-"]"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = RequestHeaderConfig::from_configmap(&data).unwrap().unwrap();
    assert_eq!(config.username_headers, ["X-Proxy-User"]);
    let mut headers = HeaderMap::new();
    headers.insert("x-proxy-user", HeaderValue::from_static("bob"));
    headers.insert("x-proxy-group", HeaderValue::from_static("ops"));
    headers.insert("x-remote-user", HeaderValue::from_static("mallory"));
    let user = authenticate_front_proxy(Some(&chain(&good.client_pem)), &headers, &config).unwrap();
    assert_eq!(
        (user.username.as_str(), user.groups.as_slice()),
        ("bob", &["ops".to_string()][..])
    );
    assert!(
        RequestHeaderConfig::from_configmap(&Default::default())
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_user_allowed_in_one_namespace_sees_nothing_of_another() {
    let c = cluster();
    let (status, list) = call(&c.app, &changes_url("/changes?limit=1000"), &[ALICE]).await;
    assert_eq!(status, 200, "{list}");
    let seen = items(&list);
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(ns, _, _)| ns == "dev"), "{seen:?}");
    // No Secret history without `get secrets`.
    assert!(
        seen.iter().all(|(_, t, _)| !t.starts_with("secrets/")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(_, t, _)| t.starts_with("deployments/")));

    let (status, all) = call(&c.app, &changes_url("/changes?limit=1000"), &[ADMIN]).await;
    assert_eq!(status, 200);
    let all = items(&all);
    assert!(all.iter().any(|(ns, _, _)| ns == "prod"));
    assert!(all.iter().any(|(_, t, _)| t.starts_with("secrets/")));
    assert_eq!(
        all.len(),
        seen.len() * 2 + 6,
        "admin sees both namespaces and the secrets"
    );

    // The review carried the user's identity and the parent resource.
    let review = c.seen.last_access_review.lock().unwrap().clone();
    assert_eq!(review["spec"]["resourceAttributes"]["verb"], "get");
    assert!(review["spec"]["resourceAttributes"]["subresource"].is_null());
}

#[tokio::test]
async fn forbidden_namespaced_lists_and_gets_answer_403() {
    let c = cluster();
    let (status, doc) = call(&c.app, &changes_url("/namespaces/prod/changes"), &[ALICE]).await;
    assert_eq!(status, 403, "{doc}");
    assert_eq!(doc["kind"], "Status");
    assert_eq!(doc["reason"], "Forbidden");
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .starts_with("user alice cannot get "),
        "{doc}"
    );
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .ends_with("in namespace prod"),
        "{doc}"
    );

    let (status, doc) = call(
        &c.app,
        &changes_url("/namespaces/dev/changes?kind=secrets"),
        &[ALICE],
    )
    .await;
    assert_eq!(status, 403, "{doc}");
    assert_eq!(
        doc["message"],
        "user alice cannot get secrets in namespace dev"
    );

    let (status, doc) = call(
        &c.app,
        &changes_url("/namespaces/dev/changes?kind=deployments.apps"),
        &[ALICE],
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(items(&doc).len(), 4, "{doc}");

    // GET one of a prod change, by either path.
    let (_, prod) = call(
        &c.app,
        &changes_url("/namespaces/prod/changes?kind=deployments.apps"),
        &[ADMIN],
    )
    .await;
    let id = prod["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, doc) = call(
        &c.app,
        &changes_url(&format!("/namespaces/prod/changes/{id}")),
        &[ALICE],
    )
    .await;
    assert_eq!(status, 403, "{doc}");
    assert_eq!(
        doc["message"],
        "user alice cannot get deployments.apps in namespace prod"
    );
    let (status, _) = call(&c.app, &changes_url(&format!("/changes/{id}")), &[ALICE]).await;
    assert_eq!(status, 403);
    // In the wrong namespace, or unknown: 404.
    let (status, doc) = call(
        &c.app,
        &changes_url(&format!("/namespaces/dev/changes/{id}")),
        &[ADMIN],
    )
    .await;
    assert_eq!((status, doc["reason"].as_str()), (404, Some("NotFound")));
    let (status, _) = call(&c.app, &changes_url("/changes/12"), &[ADMIN]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unauthenticated_and_bad_requests_get_status_documents() {
    let c = cluster();
    let (status, doc) = call(&c.app, &changes_url("/changes"), &[]).await;
    assert_eq!(
        (status, doc["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    // Front-proxy headers without a certificate are ignored.
    let (status, _) = call(
        &c.app,
        &changes_url("/changes"),
        &[("x-remote-user", "admin")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &c.app,
        &changes_url("/changes"),
        &[("authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, doc) = call(&c.app, &changes_url("/changes?since=soon"), &[ADMIN]).await;
    assert_eq!(
        (status, doc["reason"].as_str()),
        (400, Some("BadRequest")),
        "{doc}"
    );
    assert_eq!(doc["code"], 400);
}

/// Hostile parameters with a valid token: every one a 400 Status naming the parameter, none a
/// dropped connection (`since=9999999999999999d` panicked in `SignedDuration::from_hours`).
#[tokio::test]
async fn hostile_parameters_get_400_not_a_panic() {
    let c = cluster();
    // Near the longest URI the http crate accepts.
    let huge_token = "9".repeat(60_000);
    for (query, names) in [
        ("since=9999999999999999d", "since"),
        ("until=-9999999999999999d", "until"),
        ("since=2562047788015215h", "since"),
        ("since=99999-01-01T00:00:00Z", "since"),
        ("until=2024-02-30T00:00:00Z", "until"),
        ("limit=-5", "limit"),
        (&format!("continue={huge_token}"), "continue"),
        ("operation=%1b%5b8m", "operation"),
    ] {
        let (status, doc) =
            call(&c.app, &changes_url(&format!("/changes?{query}")), &[ADMIN]).await;
        let message = doc["message"].as_str().unwrap_or_default();
        assert_eq!(
            (status, doc["reason"].as_str()),
            (400, Some("BadRequest")),
            "{query}: {doc}"
        );
        assert!(
            message.contains(names) && message.len() < 300,
            "{query}: {message}"
        );
    }
    let (status, doc) = call(
        &c.app,
        &changes_url("/changes?limit=99999999999999999999999"),
        &[ADMIN],
    )
    .await;
    assert_eq!(status, 200, "a huge limit is capped: {doc}");
}

#[tokio::test]
async fn one_change_has_patch_diff_and_on_request_objects() {
    let c = cluster();
    let (_, list) = call(
        &c.app,
        &changes_url("/namespaces/dev/changes?kind=Deployment&operation=UPDATE"),
        &[ALICE],
    )
    .await;
    // Newest first: the spec update, then the scale.
    let update = &list["items"][0];
    assert!(
        update["event"]["resource"]["subresource"].is_null(),
        "{update}"
    );
    assert!(update["event"].get("object").is_none());
    assert!(update.get("patch").is_none() && update.get("diff").is_none());
    let id = update["metadata"]["name"].as_str().unwrap();

    let (status, change) = call(
        &c.app,
        &changes_url(&format!("/namespaces/dev/changes/{id}")),
        &[ALICE],
    )
    .await;
    assert_eq!(status, 200, "{change}");
    assert_eq!(change["apiVersion"], "query.histor.dev/v1alpha1");
    assert_eq!(change["kind"], "Change");
    assert_eq!(change["metadata"]["namespace"], "dev");
    assert_eq!(
        change["metadata"]["creationTimestamp"],
        "2026-01-01T10:00:04Z"
    );
    assert_eq!(change["summary"], update["summary"]);
    let patch = change["patch"].as_array().unwrap();
    assert!(!patch.is_empty());
    assert!(
        patch
            .iter()
            .all(|op| op["op"].is_string() && op["path"].is_string())
    );
    let diff = change["diff"].as_str().unwrap();
    assert!(diff.starts_with("--- a/deployments.apps/"), "{diff}");
    assert!(diff.contains("\n+    tier: web\n"), "{diff}");
    assert!(change.get("before").is_none());

    let (_, full) = call(
        &c.app,
        &changes_url(&format!("/namespaces/dev/changes/{id}?include=objects")),
        &[ALICE],
    )
    .await;
    assert_eq!(full["before"]["kind"], "Deployment");
    assert_eq!(full["after"]["metadata"]["namespace"], "dev");
    // The patch turns before into after.
    let mut rebuilt = full["before"].clone();
    let patch: json_patch::Patch = serde_json::from_value(full["patch"].clone()).unwrap();
    json_patch::patch(&mut rebuilt, &patch).unwrap();
    assert_eq!(rebuilt, full["after"]);
}

#[tokio::test]
async fn kubectl_gets_a_table() {
    let c = cluster();
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let (status, table) = call(
        &c.app,
        &changes_url("/namespaces/dev/changes?limit=500"),
        &[ALICE, ("accept", accept)],
    )
    .await;
    assert_eq!(status, 200, "{table}");
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["apiVersion"], "meta.k8s.io/v1");
    let names: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Time", "User", "Op", "State", "Target", "Changes", "Id"]
    );
    let row = &table["rows"][0];
    assert_eq!(row["cells"].as_array().unwrap().len(), 7);
    assert_eq!(row["cells"][1], "alice");
    assert_eq!(row["cells"][2], "DELETE");
    assert_eq!(row["cells"][3], "unconfirmed");
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["namespace"], "dev");

    let (_, table) = call(
        &c.app,
        &changes_url("/namespaces/dev/changes?includeObject=Object"),
        &[ALICE, ("accept", accept)],
    )
    .await;
    assert_eq!(table["rows"][0]["object"]["kind"], "Change");
}

#[tokio::test]
async fn filtered_pages_follow_continue_tokens_to_the_end() {
    let c = cluster();
    let (_, all) = call(&c.app, &changes_url("/changes?limit=1000"), &[ALICE]).await;
    let want: Vec<Value> = all["items"].as_array().unwrap().clone();
    let mut got = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..50 {
        let url = match &token {
            Some(t) => changes_url(&format!("/changes?limit=3&continue={t}")),
            None => changes_url("/changes?limit=3"),
        };
        let (status, page) = call(&c.app, &url, &[ALICE]).await;
        assert_eq!(status, 200, "{page}");
        let page_items = page["items"].as_array().unwrap();
        assert!(page_items.len() <= 3);
        got.extend(page_items.iter().cloned());
        token = page["metadata"]["continue"].as_str().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(got, want);
}

#[tokio::test]
async fn decisions_are_cached() {
    let c = cluster();
    call(&c.app, &changes_url("/changes"), &[ALICE]).await;
    let first = c.seen.access_reviews.load(Ordering::SeqCst);
    assert!(first > 0);
    call(&c.app, &changes_url("/changes"), &[ALICE]).await;
    assert_eq!(c.seen.access_reviews.load(Ordering::SeqCst), first);
    assert_eq!(c.seen.token_reviews.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn discovery_is_served_without_credentials() {
    let c = cluster();
    let (status, groups) = call(&c.app, "/apis", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(groups["kind"], "APIGroupList");
    let (_, group) = call(&c.app, "/apis/query.histor.dev", &[]).await;
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["preferredVersion"]["version"], "v1alpha1");
    let (_, resources) = call(&c.app, PREFIX, &[]).await;
    assert_eq!(resources["resources"][0]["kind"], "Change");
}

#[tokio::test]
async fn standalone_tokens_see_everything() {
    let (_dir, store) = store();
    let tokens = StaticTokens::parse("# local\nsecret-1\nsecret-2,bob\n");
    let app = router(Arc::new(QueryState::standalone(store, tokens)));
    let (status, list) = call(
        &app,
        &changes_url("/changes?limit=1000"),
        &[("authorization", "Bearer secret-2")],
    )
    .await;
    assert_eq!(status, 200);
    let all = items(&list);
    assert!(
        all.iter()
            .any(|(ns, t, _)| ns == "prod" && t.starts_with("secrets/"))
    );
    let (status, _) = call(
        &app,
        &changes_url("/changes"),
        &[("authorization", "Bearer secret-3")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        &app,
        &changes_url("/changes"),
        &[("authorization", "Bearer # local")],
    )
    .await;
    assert_eq!(status, 401);
}

/// The front-proxy path end to end: real TLS, a client certificate from the requestheader CA
/// (read from the ConfigMap), identity headers, SubjectAccessReview with that identity.
#[tokio::test]
async fn front_proxy_certificate_over_real_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy = pki("front-proxy-client");
    let configmap = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": proxy.ca_pem,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]"
        }
    });
    let (dir, store) = store();
    let (client, _seen) = apiserver(Some(configmap));
    let state = Arc::new(QueryState::in_cluster(store, client.clone()));
    let front_proxy = state.front_proxy().unwrap();
    front_proxy.set(auth::load_request_header(&client).await.unwrap());

    let files =
        crate::capture::tls::write_self_signed(&dir.path().join("tls"), &["localhost".to_string()])
            .unwrap();
    let clients = tls::ClientCerts {
        front_proxy: Some(front_proxy),
        webhook: None,
    };
    let config = tls::load(&files, &clients).unwrap();
    let handle = axum_server::Handle::new();
    let limiter = crate::capture::conn::Limiter::new(
        Default::default(),
        &crate::metrics::Metrics::default(),
        None,
    );
    let server = tls::bind("127.0.0.1:0".parse().unwrap(), config, limiter).handle(handle.clone());
    let app = router(state);
    tokio::spawn(server.serve(app.into_make_service()));
    let addr = handle.listening().await.unwrap();
    let url = format!(
        "https://localhost:{}{PREFIX}/changes?limit=1000",
        addr.port()
    );

    let ca = reqwest::Certificate::from_pem(&std::fs::read(files.ca.unwrap()).unwrap()).unwrap();
    let client_with = |identity: Option<&Pki>| {
        let mut b = reqwest::Client::builder().tls_certs_only([ca.clone()]);
        if let Some(p) = identity {
            let pem = format!("{}{}", p.client_pem, p.client_key_pem);
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let as_alice = |c: &reqwest::Client| {
        c.get(&url)
            .header("X-Remote-User", "alice")
            .header("X-Remote-Group", "devs")
    };

    // With the front-proxy certificate, the headers are alice: she sees dev only.
    let response = as_alice(&client_with(Some(&proxy))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let list: Value = response.json().await.unwrap();
    let seen = items(&list);
    assert!(
        !seen.is_empty() && seen.iter().all(|(ns, _, _)| ns == "dev"),
        "{seen:?}"
    );

    // Without a certificate the same headers are ignored.
    let response = as_alice(&client_with(None)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // A certificate from another CA does not get through the handshake.
    let impostor = pki("front-proxy-client");
    assert!(
        as_alice(&client_with(Some(&impostor)))
            .send()
            .await
            .is_err()
    );
    handle.shutdown();
}

/// A history whose witnesses have spoken: the recorded ConfigMap created (confirmed at
/// resourceVersion 4242), changed by `kubectl edit` while no review announced it (observed, its
/// actor inferred), and the recorded create another webhook denied (notApplied).
fn witnessed() -> Arc<crate::store::MemStore> {
    use crate::pipeline::{ChangeState, Commit, InferredActor, Witness};
    let store = Arc::new(crate::store::MemStore::new());
    let t0: jiff::Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
    let mut batch = Vec::new();
    for (i, name) in [
        "create-configmap",
        "update-configmap",
        "create-configmap-denied",
    ]
    .iter()
    .enumerate()
    {
        let at = t0 + jiff::SignedDuration::from_secs(i as i64);
        let mut c = captured(name, "dev", at).unwrap();
        let commit = Commit {
            resource_version: format!("424{}", i + 2),
            seen_at: at + jiff::SignedDuration::from_millis(80),
            witness: Witness::Watch,
        };
        match i {
            0 => {
                c.event.state = ChangeState::Confirmed;
                c.event.commit = Some(commit);
            }
            1 => {
                c.event.state = ChangeState::Observed;
                c.event.commit = Some(commit);
                c.event.user = Default::default();
                c.event.inferred = Some(InferredActor {
                    manager: "kubectl-edit".into(),
                    operation: "Update".into(),
                    time: Some(at),
                    subresource: None,
                });
            }
            _ => c.event.state = ChangeState::NotApplied,
        }
        batch.push(c);
    }
    store.append(&batch).unwrap();
    store
}

/// Every change says its state (the five values, `unconfirmed` when no witness told), with its
/// commit and inferred actor when set; the Table says it too, marks an inferred actor as such,
/// and does not word a refused create as done; `state=` is a filter, an unknown one a 400.
#[tokio::test]
async fn changes_say_their_state_commit_and_inferred_actor() {
    let tokens = StaticTokens::parse("secret\n");
    let app = router(Arc::new(QueryState::standalone(witnessed(), tokens)));
    let auth = ("authorization", "Bearer secret");
    let (status, list) = call(&app, &changes_url("/changes"), &[auth]).await;
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    let states: Vec<&str> = items
        .iter()
        .map(|c| c["event"]["state"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(states, ["notApplied", "observed", "confirmed"]);
    let (refused, observed, confirmed) = (&items[0], &items[1], &items[2]);
    assert_eq!(refused["summary"], "create not applied");
    assert!(refused["event"].get("commit").is_none(), "{refused}");
    assert_eq!(observed["event"]["user"]["username"], "");
    assert_eq!(observed["event"]["inferred"]["manager"], "kubectl-edit");
    assert_eq!(observed["event"]["inferred"]["operation"], "Update");
    assert_eq!(observed["event"]["commit"]["resourceVersion"], "4243");
    assert_eq!(confirmed["event"]["commit"]["resourceVersion"], "4242");
    assert_eq!(confirmed["event"]["commit"]["witness"], "watch");
    assert!(confirmed["event"].get("inferred").is_none());

    let id = observed["metadata"]["name"].as_str().unwrap();
    let (_, one) = call(
        &app,
        &changes_url(&format!("/namespaces/dev/changes/{id}")),
        &[auth],
    )
    .await;
    assert_eq!(one["event"]["state"], "observed", "{one}");
    assert_eq!(one["event"]["inferred"]["manager"], "kubectl-edit");

    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io";
    let (_, table) = call(&app, &changes_url("/changes"), &[auth, ("accept", accept)]).await;
    let cells: Vec<Vec<&str>> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["cells"].as_array().unwrap()[1..=4]
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        cells,
        [
            ["admin", "CREATE", "notApplied", "configmaps/denied-cm"],
            [
                "kubectl-edit (inferred)",
                "UPDATE",
                "observed",
                "configmaps/app-config"
            ],
            ["admin", "CREATE", "confirmed", "configmaps/app-config"],
        ]
    );
    assert_eq!(table["rows"][0]["cells"][5], "create not applied");

    for state in [
        "notApplied",
        "observed",
        "confirmed",
        "received",
        "unconfirmed",
    ] {
        let (status, doc) = call(
            &app,
            &changes_url(&format!("/changes?state={state}")),
            &[auth],
        )
        .await;
        assert_eq!(status, 200, "{state}: {doc}");
    }
    let (status, doc) = call(&app, &changes_url("/changes?state=applied"), &[auth]).await;
    assert_eq!((status, doc["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(
        doc["message"],
        "state \"applied\" is not received, confirmed, notApplied, observed or unconfirmed"
    );
}

/// A journal that counted two calls by alice and one unmapped request, an hour apart.
fn counted_usage() -> Arc<crate::store::MemAudit> {
    use crate::store::{AuditEntry, AuditJournal, UsageRow};
    use crate::usage::{Client, ClientKind, Counts, Endpoint, Level, Series, Unmapped};
    let journal = Arc::new(crate::store::MemAudit::new());
    let now = jiff::Timestamp::now();
    journal
        .append(&[AuditEntry {
            key: [1; 16],
            at: now,
            value: Vec::new(),
        }])
        .unwrap();
    let seq = journal.queued(None, 1).unwrap()[0].0;
    let hour = now.as_second().div_euclid(3600) * 3600;
    let calls = Series::Calls {
        endpoint: Box::new(Endpoint {
            group: String::new(),
            resource: "configmaps".into(),
            version: "v1".into(),
            subresource: None,
            path: None,
            verb: "list".into(),
            operation_id: Some("listCoreV1NamespacedConfigMap".into()),
            level: Level::Stable,
            deprecated: false,
            removed_release: None,
        }),
        client: Box::new(Client {
            user: "alice".into(),
            kind: ClientKind::User,
            impersonator: None,
            agent: "kubectl".into(),
        }),
    };
    let counts = |n| Counts {
        calls: n,
        success: n,
        first_seen: Some(now),
        last_seen: Some(now),
        ..Counts::default()
    };
    let rows = [
        (hour - 3600, calls.clone(), 1),
        (hour, calls, 1),
        (hour, Series::Unmapped(Unmapped::UnknownResource), 1),
        // Two days ago: outside the default day.
        (hour - 48 * 3600, Series::OverBound, 7),
    ];
    let rows: Vec<UsageRow> = rows
        .into_iter()
        .map(|(hour, series, n)| UsageRow {
            hour,
            series: series.encode(),
            counts: counts(n),
        })
        .collect();
    journal.done(&[seq], &rows).unwrap();
    journal
}

#[tokio::test]
async fn api_usage_needs_its_own_grant() {
    let (_dir, store) = store();
    let (client, seen) = apiserver(None);
    let state = QueryState::in_cluster(store.clone(), client.clone()).with_usage(counted_usage());
    let app = router(Arc::new(state));
    let url = changes_url("/apiusages");
    // alice may get configmaps in dev, and so on, but not who calls what.
    let (status, body) = call(&app, &url, &[ALICE]).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot list apiusages.query.histor.dev at the cluster scope"),
        "{body}"
    );
    let review = seen.last_access_review.lock().unwrap().clone();
    assert_eq!(
        review["spec"]["resourceAttributes"],
        json!({"verb": "list", "group": "query.histor.dev", "resource": "apiusages"})
    );
    let (status, list) = call(&app, &url, &[ADMIN]).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["kind"], "APIUsageList");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "the last day: {list}");
    assert_eq!(
        items[0]["series"]["calls"]["endpoint"]["operationId"],
        "listCoreV1NamespacedConfigMap"
    );
    let (_, week) = call(&app, &format!("{url}?since=7d"), &[ADMIN]).await;
    assert_eq!(week["items"].as_array().unwrap().len(), 4);
    let (status, _) = call(&app, &format!("{url}?since=yesterday"), &[ADMIN]).await;
    assert_eq!(status, 400);
    let (status, _) = call(&app, &url, &[]).await;
    assert_eq!(status, 401);

    // Without audit events there is nothing to serve.
    let app = router(Arc::new(QueryState::in_cluster(store, client)));
    let (status, body) = call(&app, &url, &[ADMIN]).await;
    assert_eq!(status, 404, "{body}");

    let c = cluster();
    let (_, resources) = call(&c.app, PREFIX, &[]).await;
    assert_eq!(resources["resources"][1]["name"], "apiusages");
    assert_eq!(resources["resources"][1]["namespaced"], false);
}
