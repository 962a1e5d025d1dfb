//! Tests of `kubectl blame`: every output format snapshot-tested from histories recorded by the
//! real pipeline and store, blame attribution across several users line by line, TYPE
//! resolution against a discovery document, and error explanations.

use super::client::{FetchError, ListParams};
use super::output::human_duration;
use super::resolve::{ResolveError, ResourceType, resolve, resolve_offline};
use super::testsupport::{FakeApi, at, detailed, fixture_requests, list, store_with, three_users};
use super::*;
use crate::store::EventStore;
use clap::Parser;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

/// A discovery document as a small cluster serves it (`/api/v1`, then groups in `/apis` order),
/// trimmed to what resolution looks at, with a CRD.
const DISCOVERY: &str = r#"[
 {"groupVersion": "v1", "resources": [
  {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap", "verbs": ["get"], "shortNames": ["cm"]},
  {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["get"], "shortNames": ["ns"]},
  {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["get"], "shortNames": ["po"]},
  {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
  {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret", "verbs": ["get"]},
  {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service", "verbs": ["get"], "shortNames": ["svc"]}
 ]},
 {"groupVersion": "apps/v1", "resources": [
  {"name": "deployments", "singularName": "deployment", "namespaced": true, "kind": "Deployment", "verbs": ["get"], "shortNames": ["deploy"]},
  {"name": "deployments/scale", "singularName": "", "namespaced": true, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get"]},
  {"name": "statefulsets", "singularName": "statefulset", "namespaced": true, "kind": "StatefulSet", "verbs": ["get"], "shortNames": ["sts"]}
 ]},
 {"groupVersion": "events.k8s.io/v1", "resources": [
  {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": ["get"], "shortNames": ["ev"]}
 ]},
 {"groupVersion": "histor.dev/v1alpha1", "resources": [
  {"name": "trackingpolicies", "singularName": "trackingpolicy", "namespaced": false, "kind": "TrackingPolicy", "verbs": ["get"], "shortNames": ["tp"]}
 ]},
 {"groupVersion": "example.com/v1", "resources": [
  {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget", "verbs": ["get"], "shortNames": ["wd"]}
 ]}
]"#;

fn discovery() -> Vec<APIResourceList> {
    serde_json::from_str(DISCOVERY).unwrap()
}

fn ty(group: &str, plural: &str, kind: &str, namespaced: bool) -> ResourceType {
    ResourceType {
        group: group.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced: Some(namespaced),
    }
}

#[test]
fn resolves_what_kubectl_accepts() {
    let lists = discovery();
    let deploy = ty("apps", "deployments", "Deployment", true);
    for input in [
        "deploy",
        "deployment",
        "deployments",
        "Deployment",
        "DEPLOYMENTS",
        "deployments.apps",
        "deployment.apps",
        "deploy.apps",
        "deployments.v1.apps",
    ] {
        assert_eq!(resolve(input, &lists), Ok(deploy.clone()), "{input}");
    }
    let widget = ty("example.com", "widgets", "Widget", true);
    for input in [
        "wd",
        "widget",
        "Widget",
        "widgets.example.com",
        "widget.v1.example.com",
    ] {
        assert_eq!(resolve(input, &lists), Ok(widget.clone()), "{input}");
    }
    assert_eq!(
        resolve("cm", &lists),
        Ok(ty("", "configmaps", "ConfigMap", true))
    );
    assert_eq!(
        resolve("configmaps.v1", &lists),
        Ok(ty("", "configmaps", "ConfigMap", true))
    );
    assert_eq!(
        resolve("ns", &lists),
        Ok(ty("", "namespaces", "Namespace", false))
    );
    assert_eq!(
        resolve("tp", &lists),
        Ok(ty(
            "histor.dev",
            "trackingpolicies",
            "TrackingPolicy",
            false
        ))
    );
    // Subresources are not types.
    assert_eq!(
        resolve("scale", &lists),
        Err(ResolveError::Unknown("scale".into()))
    );
    assert_eq!(
        resolve("gizmo", &lists).unwrap_err().to_string(),
        "the server doesn't have a resource type \"gizmo\""
    );
    assert_eq!(resolve("deployments.example.com", &lists).ok(), None);
    assert_eq!(
        ty("apps", "deployments", "Deployment", true).query_kind(),
        "deployments.apps"
    );
    assert_eq!(
        ty("apps", "deployments", "Deployment", true).display(),
        "deployment.apps"
    );
    assert_eq!(
        ty("", "configmaps", "ConfigMap", true).display(),
        "configmap"
    );
}

#[test]
fn resolves_offline_from_the_builtin_table() {
    assert_eq!(
        resolve_offline("deploy"),
        ty("apps", "deployments", "Deployment", true)
    );
    assert_eq!(resolve_offline("sts").query_kind(), "statefulsets.apps");
    assert_eq!(resolve_offline("ns").namespaced, Some(false));
    assert_eq!(resolve_offline("cm").query_kind(), "configmaps");
    // Unknown types go through as typed: the server resolves kinds and plurals itself.
    let widget = resolve_offline("widgets.example.com");
    assert_eq!(widget.query_kind(), "widgets.example.com");
    assert_eq!(widget.namespaced, None);
}

fn parse(cmd: &[&str]) -> BlameArgs {
    BlameArgs::try_parse_from(std::iter::once("kubectl-blame").chain(cmd.iter().copied())).unwrap()
}

#[test]
fn splits_type_and_name_like_kubectl() {
    let t = |cmd: &[&str]| parse(cmd).target();
    let target = |kind: &str, name: Option<&str>| {
        Ok(Some(args::TargetArg {
            kind: kind.into(),
            name: name.map(Into::into),
        }))
    };
    assert_eq!(t(&["deploy/nginx"]), target("deploy", Some("nginx")));
    assert_eq!(t(&["deploy", "nginx"]), target("deploy", Some("nginx")));
    assert_eq!(t(&["deployments.apps"]), target("deployments.apps", None));
    assert_eq!(t(&[]), Ok(None));
    assert!(t(&["deploy/a", "b"]).is_err());
    assert!(t(&["deploy/"]).is_err());
    assert!(BlameArgs::try_parse_from(["kubectl-blame", "-A", "-n", "x"]).is_err());
    assert!(BlameArgs::try_parse_from(["kubectl-blame", "--token", "t"]).is_err());
    assert!(BlameArgs::try_parse_from(["kubectl-blame", "-o", "blame", "cm/x"]).is_ok());
}

#[test]
fn ages_read_like_kubectl() {
    let cases = [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (330, "5m30s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 120, "3h2m"),
        (30 * 3600, "30h"),
        (50 * 3600, "2d2h"),
        (10 * 86400, "10d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ];
    for (seconds, want) in cases {
        assert_eq!(human_duration(seconds), want, "{seconds}");
    }
}

#[test]
fn list_paths_encode_filters() {
    let params = ListParams {
        namespace: Some("prod".into()),
        kind: Some("deployments.apps".into()),
        name: Some("api".into()),
        user: Some("system:serviceaccount:ci:deployer".into()),
        since: Some("2026-11-22T02:00:00+01:00".into()),
        ..ListParams::default()
    };
    assert_eq!(
        params.path(50, Some("abc=")),
        "/apis/query.histor.dev/v1alpha1/namespaces/prod/changes?kind=deployments.apps&name=api\
         &user=system%3Aserviceaccount%3Aci%3Adeployer&since=2026-11-22T02%3A00%3A00%2B01%3A00\
         &limit=50&continue=abc%3D"
    );
    assert_eq!(
        ListParams::default().path(10, None),
        "/apis/query.histor.dev/v1alpha1/changes?limit=10"
    );
}

/// The clock and zone of every snapshot: five hours after the first recorded change, in UTC.
fn view(all_namespaces: bool) -> View {
    View {
        now: at(5 * 3600),
        tz: jiff::tz::TimeZone::UTC,
        color: false,
        all_namespaces,
    }
}

/// `kubectl blame ARGS` against a fake query server holding `requests`, resolving TYPE against
/// the discovery document, with `demo` as the kubeconfig namespace.
async fn blame_cmd(
    requests: &[(pipeline_request::Request, jiff::Timestamp)],
    cmd: &[&str],
) -> (Result<String, CliError>, Vec<String>) {
    let (_dir, store) = store_with(requests);
    let api = FakeApi::new(store);
    let result = run_fake(&api, cmd).await;
    let requests = api.requests.lock().unwrap().clone();
    (result, requests)
}

mod pipeline_request {
    pub use crate::pipeline::Request;
}

async fn run_fake(api: &FakeApi, cmd: &[&str]) -> Result<String, CliError> {
    let args = parse(cmd);
    let kind = match args.target().map_err(CliError::Usage)? {
        Some(t) => Some(resolve(&t.kind, &discovery())?),
        None => None,
    };
    let ns = args.namespace.clone().unwrap_or_else(|| "demo".into());
    execute(api, &args, kind, ns, None, &view(args.all_namespaces)).await
}

async fn out(cmd: &[&str]) -> String {
    blame_cmd(&fixture_requests(), cmd).await.0.unwrap()
}

#[tokio::test]
async fn table() {
    insta::assert_snapshot!(out(&[]).await);
}

#[tokio::test]
async fn table_all_namespaces_wide() {
    insta::assert_snapshot!(out(&["-A", "-o", "wide"]).await);
}

#[tokio::test]
async fn table_of_one_object() {
    insta::assert_snapshot!(out(&["deploy/nginx"]).await);
}

#[tokio::test]
async fn json() {
    let text = out(&["cm", "app-config", "-o", "json"]).await;
    let list: ChangeList = serde_json::from_str(&text).unwrap();
    assert_eq!(list.kind, "ChangeList");
    assert_eq!(list.items.len(), 3);
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn yaml() {
    let text = out(&["cm", "app-config", "-o", "yaml"]).await;
    // What we write must read back as the same list.
    let back: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&out(&["cm", "app-config", "-o", "json"]).await).unwrap();
    assert_eq!(back, json);
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn patch() {
    insta::assert_snapshot!(out(&["deploy/nginx", "-o", "patch"]).await);
}

#[tokio::test]
async fn patch_of_a_secret_hides_values() {
    let text = out(&["secret/db-pass", "-o", "patch"]).await;
    assert!(!text.contains("hmac-sha256"), "{text}");
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn diff() {
    let text = out(&["deploy/nginx", "-o", "diff"]).await;
    assert!(!text.contains('\x1b'), "no colour when not asked");
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn diff_of_a_secret_hides_values() {
    let text = out(&["secret", "db-pass", "-o", "diff"]).await;
    assert!(!text.contains("hmac-sha256"), "{text}");
    insta::assert_snapshot!(text);
}

#[test]
fn diff_colours_on_a_terminal() {
    let (_dir, store) = store_with(&three_users());
    let changes: Vec<Change> = list(&store)
        .iter()
        .map(|c| detailed(&store, c.id().parse().unwrap()))
        .collect();
    let mut v = view(false);
    v.color = true;
    let text = output::diffs(&changes[..1], &v);
    assert!(
        text.contains("\x1b[1m--- a/deployments.apps/nginx\x1b[0m"),
        "{text}"
    );
    assert!(text.contains("\x1b[36m@@"), "{text}");
    let has = |start: &str, end: &str| {
        text.lines()
            .any(|l| l.starts_with(start) && l.ends_with(end))
    };
    assert!(has("\x1b[31m-", "image: nginx\x1b[0m"), "{text}");
    assert!(has("\x1b[32m+", "image: nginx:1.27\x1b[0m"), "{text}");
    // Context lines stay plain.
    assert!(
        text.lines()
            .any(|l| l.starts_with("   ") && !l.contains('\x1b')),
        "{text}"
    );
}

#[tokio::test]
async fn blame_of_a_deleted_object() {
    let text = out(&["deploy/nginx", "-o", "blame"]).await;
    assert!(
        text.contains("# deleted by admin at 2026-11-22 02:08"),
        "{text}"
    );
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn blame_of_a_secret_shows_no_hashes() {
    let text = out(&["secret/db-pass", "-o", "blame"]).await;
    assert!(!text.contains("hmac-sha256"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    insta::assert_snapshot!(text);
}

#[tokio::test]
async fn blame_of_a_custom_resource_scaled_through_its_subresource() {
    insta::assert_snapshot!(out(&["wd", "w1", "-o", "blame"]).await);
}

#[tokio::test]
async fn blame_three_users_snapshot() {
    let (text, requests) =
        blame_cmd(&three_users(), &["deployments.apps/nginx", "-o", "blame"]).await;
    // The whole history, then the newest change with its objects.
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[0].contains("kind=deployments.apps&name=nginx&limit=500"),
        "{requests:?}"
    );
    assert!(requests[1].ends_with("?include=objects"), "{requests:?}");
    insta::assert_snapshot!(text.unwrap());
}

/// Who each line of the blame view is attributed to, by its YAML text.
fn attribution(history: &[Change]) -> Vec<(String, String)> {
    blame::blame(history)
        .unwrap()
        .into_iter()
        .map(|l| {
            let who = match l.attribution {
                Some(i) => history[i].event.user.username.clone(),
                None => "(before history)".into(),
            };
            (l.text, who)
        })
        .collect()
}

fn history_of(requests: &[(crate::pipeline::Request, jiff::Timestamp)]) -> Vec<Change> {
    let (_dir, store) = store_with(requests);
    let mut changes: Vec<Change> = list(&store)
        .iter()
        .map(|c| detailed(&store, c.id().parse().unwrap()))
        .collect();
    changes.reverse();
    changes
}

fn who<'a>(lines: &'a [(String, String)], text: &str) -> &'a str {
    let found: Vec<&(String, String)> = lines.iter().filter(|(t, _)| t == text).collect();
    assert_eq!(found.len(), 1, "line {text:?} in {lines:#?}");
    &found[0].1
}

#[test]
fn blame_attributes_each_line_to_its_last_author() {
    let history = history_of(&three_users());
    let users: Vec<&str> = history
        .iter()
        .map(|c| c.event.user.username.as_str())
        .collect();
    assert_eq!(users, ["alice", "bob", "carol"]);
    let lines = attribution(&history);

    // Untouched since the CREATE.
    for text in [
        "apiVersion: apps/v1",
        "kind: Deployment",
        "    app: nginx",
        "  name: nginx",
        "  revisionHistoryLimit: 10",
        "    type: RollingUpdate",
        "      maxUnavailable: 25%",
        "        name: nginx",
        "        imagePullPolicy: Always",
    ] {
        assert_eq!(who(&lines, text), "alice", "{text}");
    }
    // bob's scale, through the /scale subresource, lands on the Deployment's own field.
    assert_eq!(who(&lines, "  replicas: 3"), "bob");
    // carol: the image (a key inside a list item), the new label, and the removed maxSurge,
    // which leaves its mark on its parent line while its sibling stays alice's.
    assert_eq!(who(&lines, "      - image: nginx:1.27"), "carol");
    assert_eq!(who(&lines, "    tier: web"), "carol");
    assert_eq!(who(&lines, "    rollingUpdate:"), "carol");
    assert!(!lines.iter().any(|(t, _)| t.contains("maxSurge")));
    // Block headers carry the newest attribution below them.
    assert_eq!(who(&lines, "  labels:"), "carol");
    assert_eq!(who(&lines, "  strategy:"), "carol");
    assert_eq!(who(&lines, "  selector:"), "alice");
    assert_eq!(who(&lines, "spec:"), "carol");
    assert_eq!(who(&lines, "metadata:"), "carol");
    // The app label of the pod template, under carol's containers but not in them.
    assert_eq!(who(&lines, "        app: nginx"), "alice");
    assert_eq!(who(&lines, "      containers:"), "carol");
}

#[test]
fn blame_without_the_create_starts_before_history() {
    // Only bob's and carol's changes were recorded: what neither touched predates the history.
    let history = history_of(&three_users()[1..]);
    let lines = attribution(&history);
    assert_eq!(who(&lines, "kind: Deployment"), "(before history)");
    assert_eq!(who(&lines, "      maxUnavailable: 25%"), "(before history)");
    assert_eq!(who(&lines, "  replicas: 3"), "bob");
    assert_eq!(who(&lines, "      - image: nginx:1.27"), "carol");
    assert_eq!(who(&lines, "spec:"), "carol");
    insta::assert_snapshot!(blame::render(
        &history,
        &blame::blame(&history).unwrap(),
        0,
        &view(false)
    ));
}

#[test]
fn blame_follows_the_newest_object_of_a_name() {
    let mut requests = fixture_requests()[..5].to_vec(); // nginx created, changed, deleted
    let mut again = crate::pipeline::testdata::request("create-deployment");
    again.uid = "9a9a9a9a-0000-4000-8000-000000000001".into();
    again.user.username = "dave".into();
    again.object.as_mut().unwrap()["metadata"]["uid"] =
        "11111111-2222-4333-8444-555555555555".into();
    requests.push((again, at(600)));
    let (_dir, store) = store_with(&requests);
    let changes = list(&store);
    let (history, earlier) = one_object(changes);
    assert_eq!(earlier, 4);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].event.user.username, "dave");
}

#[tokio::test]
async fn pages_are_followed_up_to_the_limit() {
    let (_dir, store) = store_with(&fixture_requests());
    let api = FakeApi::new(store);
    let params = ListParams::default();
    let all = client::list_changes(&api, &params, 0).await.unwrap();
    assert_eq!(all.len(), 17);
    let five = client::list_changes(&api, &params, 5).await.unwrap();
    assert_eq!(five, all[..5].to_vec());
    // Newest first.
    assert!(
        all.windows(2)
            .all(|w| w[0].event.received_at >= w[1].event.received_at)
    );
}

#[tokio::test]
async fn clear_errors() {
    let (_dir, store) = store_with(&fixture_requests());
    let mut api = FakeApi::new(store);
    let err = run_fake(&api, &["deploy/missing"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no changes recorded for deployment.apps/missing in namespace demo"
    );
    assert!(err.hint().unwrap().contains("TrackingPolicy"));
    let err = run_fake(&api, &["gizmo/x"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server doesn't have a resource type \"gizmo\""
    );
    let err = run_fake(&api, &["deploy", "-o", "blame"])
        .await
        .unwrap_err();
    assert!(matches!(err, CliError::Usage(_)), "{err}");
    // Nothing in a namespace is not an error.
    assert_eq!(run_fake(&api, &["-n", "empty"]).await.unwrap(), "");

    let status = |code: u16, reason: &str, message: &str| FetchError::Status {
        code,
        reason: reason.into(),
        message: message.into(),
    };
    api.error = Some(status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    ));
    let err = run_fake(&api, &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the histor query API is not registered: is histor installed?"
    );
    assert_eq!(
        err.hint().unwrap(),
        "kubectl get apiservice v1alpha1.query.histor.dev"
    );

    api.error = Some(status(
        403,
        "Forbidden",
        "user \"bob\" cannot get deployments.apps in the namespace \"prod\"",
    ));
    let err = run_fake(&api, &["deploy/api"]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "not allowed: user \"bob\" cannot get deployments.apps in the namespace \"prod\""
    );

    api.error = Some(status(503, "ServiceUnavailable", "service unavailable"));
    let err = run_fake(&api, &[]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the histor query API is unavailable: service unavailable"
    );
    assert!(
        err.hint()
            .unwrap()
            .contains("kubectl get apiservice v1alpha1.query.histor.dev")
    );

    api.error = Some(status(401, "Unauthorized", "Unauthorized"));
    assert!(matches!(
        run_fake(&api, &[]).await.unwrap_err(),
        CliError::Unauthorized(_)
    ));

    // A standalone server that is not histor.
    let err = CliError::from_fetch(
        status(404, "", "404 page not found"),
        Some("https://x:8443"),
    );
    assert_eq!(
        err.to_string(),
        "https://x:8443 does not serve the histor query API"
    );
}

#[test]
fn status_bodies_become_errors() {
    let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"no","reason":"Forbidden","code":403}"#;
    assert_eq!(
        client::status_error(403, body),
        FetchError::Status {
            code: 403,
            reason: "Forbidden".into(),
            message: "no".into()
        }
    );
    assert_eq!(
        client::status_error(502, "bad gateway\n"),
        FetchError::Status {
            code: 502,
            reason: String::new(),
            message: "bad gateway".into()
        }
    );
}

#[test]
fn change_json_matches_the_contract() {
    let (_dir, store) = store_with(&three_users());
    let newest = store.query(&crate::store::Query::default()).unwrap().events[0].clone();
    let listed = change_json(&newest, None, None);
    assert_eq!(listed["apiVersion"], "query.histor.dev/v1alpha1");
    assert_eq!(listed["kind"], "Change");
    assert_eq!(listed["metadata"]["name"], newest.id.to_string());
    assert_eq!(listed["metadata"]["namespace"], "demo");
    assert_eq!(
        listed["metadata"]["creationTimestamp"],
        "2026-11-22T05:07:49Z"
    );
    assert_eq!(listed["event"]["user"]["username"], "carol");
    assert!(listed["event"].get("object").is_none());
    assert!(listed.get("patch").is_none());
    let before = store.state_before(newest.id).unwrap();
    let after = store.state_after(newest.id).unwrap();
    let full = change_json(&newest, before.as_ref(), after.as_ref());
    assert!(
        full["patch"]
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/spec/template/spec/containers/0/image")
    );
    assert!(
        full["diff"]
            .as_str()
            .unwrap()
            .starts_with("--- a/deployments.apps/nginx\n+++ b/deployments.apps/nginx\n")
    );
    assert_eq!(full["after"]["metadata"]["labels"]["tier"], "web");
    assert_eq!(full["before"]["spec"]["replicas"], 3);
}

/// The raw characters a text format must never print: anything [`crate::render::is_unprintable`]
/// names except the renderer's own line breaks, after removing the renderer's own colours.
fn raw_controls(text: &str) -> Vec<char> {
    let mut own = text.to_owned();
    for code in ["0", "1", "2", "31", "32", "33", "36"] {
        own = own.replace(&format!("\x1b[{code}m"), "");
    }
    own.chars()
        .filter(|&c| c != '\n' && crate::render::is_unprintable(c))
        .collect()
}

fn assert_safe(what: &str, text: &str) {
    assert!(
        raw_controls(text).is_empty(),
        "{what}: raw {:?} in\n{text}",
        raw_controls(text)
    );
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE LINE")),
        "{what}: a forged line in\n{text}"
    );
}

const EVIL_NAMESPACE_ARG: &str = super::testsupport::EVIL_NAMESPACE;

/// Hostile user names, groups, object names, namespaces, API groups, subresources, request uids,
/// keys and values: every text format prints them escaped.
#[tokio::test]
async fn text_formats_escape_control_characters() {
    use super::testsupport::{EVIL_NAME, MALLORY, hostile};
    let (_dir, store) = store_with(&hostile());
    let api = FakeApi::new(store);
    let ns = EVIL_NAMESPACE_ARG;
    let one = |format: &'static str| vec!["-n", ns, "cm", EVIL_NAME, "-o", format];
    let cmds: Vec<Vec<&str>> = vec![
        vec!["-A"],
        vec!["-A", "-o", "wide"],
        vec!["-A", "-o", "patch"],
        vec!["-A", "-o", "diff"],
        one("table"),
        one("patch"),
        one("diff"),
        one("blame"),
    ];
    for cmd in cmds {
        let text = run_fake(&api, &cmd).await.unwrap();
        assert_safe(&format!("{cmd:?}"), &text);
        assert!(text.contains("mallory\\u001b[8m"), "{cmd:?}: {text}");
    }
    let wide = run_fake(&api, &["-A", "-o", "wide"]).await.unwrap();
    for shown in [
        "evil\\r\\nFAKE LINE\\u0000",
        "demo\\u009b2J",
        "dev\\u001b]0;owned\\u0007,ops\\u202enimda",
        "\\u001b[1A\\u001b[2K\\u202e",
        "widgets.example.com\\u001b[1A/w1 (scale\\u001b[2K)",
        "bob\\u001b]8;;https://evil\\u0007",
    ] {
        assert!(wide.contains(shown), "{shown} not in\n{wide}");
    }
    // Values and keys in the blame view, in YAML that reads back as the same strings.
    let blame = run_fake(&api, &one("blame")).await.unwrap();
    assert!(
        blame.contains(r#""evil\u001b[8mkey": "x\ry\n\u001b[0m""#),
        "{blame}"
    );
    assert!(blame.contains(r#"\u009b1m\u202e\u007f""#), "{blame}");

    // On a terminal, only the renderer's own colours are raw.
    let changes: Vec<Change> = list(&api.store)
        .iter()
        .map(|c| detailed(&api.store, c.id().parse().unwrap()))
        .collect();
    let mut v = view(true);
    v.color = true;
    let diffs = output::diffs(&changes, &v);
    assert!(diffs.contains("\x1b[1m"), "colour is on: {diffs}");
    assert_safe("coloured diff", &diffs);
    assert_safe("coloured patch", &output::patches(&changes, &v));
    let mut history: Vec<Change> = changes
        .iter()
        .filter(|c| c.event.name == EVIL_NAME)
        .cloned()
        .collect();
    history.reverse();
    let lines = blame::blame(&history).unwrap();
    assert_safe("coloured blame", &blame::render(&history, &lines, 0, &v));

    // JSON and YAML stay exact.
    let json: ChangeList =
        serde_json::from_str(&run_fake(&api, &["-A", "-o", "json"]).await.unwrap()).unwrap();
    assert!(json.items.iter().any(|c| c.event.user.username == MALLORY));
    assert!(json.items.iter().any(|c| c.event.name == EVIL_NAME));
    let yaml: serde_json::Value =
        serde_saphyr::from_str(&run_fake(&api, &["-A", "-o", "yaml"]).await.unwrap()).unwrap();
    assert_eq!(yaml, serde_json::to_value(&json).unwrap());
}

/// Error lines name what the user typed and what the server said: escaped too.
#[tokio::test]
async fn error_reports_escape_control_characters() {
    let (_dir, store) = store_with(&fixture_requests());
    let mut api = FakeApi::new(store);
    let err = run_fake(&api, &["cm/nope\r\nFAKE LINE\x1b[8m"])
        .await
        .unwrap_err();
    let text = report(&err);
    assert_safe("not found", &text);
    assert_eq!(
        text.lines().next().unwrap(),
        "error: no changes recorded for configmap/nope\\r\\nFAKE LINE\\u001b[8m in namespace demo"
    );
    api.error = Some(FetchError::Status {
        code: 403,
        reason: "Forbidden".into(),
        message: "user \"mallory\x1b[8m\" cannot get configmaps\r\nFAKE LINE".into(),
    });
    let text = report(&run_fake(&api, &["cm/x"]).await.unwrap_err());
    assert_safe("forbidden", &text);
    assert_eq!(text.lines().count(), 2, "error and hint: {text}");
}

/// `histor history` prints the store's events through the same table.
#[test]
fn history_table_escapes_control_characters() {
    let (_dir, store) = store_with(&super::testsupport::hostile());
    let events = store
        .query(&crate::store::Query {
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .events;
    let text = crate::render::events_table(&events);
    assert_safe("histor history", &text);
    assert_eq!(text.lines().count(), events.len() + 1, "{text}");
    assert!(text.contains("mallory\\u001b[8m"), "{text}");
}

/// The recorded history as the witnesses would have left it: the app-config ConfigMap created
/// (confirmed at resourceVersion 4242), edited while no review announced it (observed, its
/// actor inferred from managedFields as `manager`), deleted (received, not yet confirmed); the
/// denied create notApplied; everything else unconfirmed.
fn witnessed(manager: &'static str) -> (tempfile::TempDir, FakeApi) {
    use crate::crd::Operation;
    use crate::pipeline::{ChangeState, Commit, InferredActor, Witness};
    let (dir, store) = store_with(&fixture_requests());
    let api = FakeApi::edited(store, move |e| match (e.name.as_str(), e.operation) {
        ("denied-cm", _) => e.state = ChangeState::NotApplied,
        ("app-config", Operation::Create) => {
            e.state = ChangeState::Confirmed;
            e.commit = Some(Commit {
                resource_version: "4242".into(),
                seen_at: e.received_at,
                witness: Witness::Watch,
            });
        }
        ("app-config", Operation::Update) => {
            e.state = ChangeState::Observed;
            e.user = Default::default();
            e.commit = Some(Commit {
                resource_version: "4243".into(),
                seen_at: e.received_at,
                witness: Witness::Audit,
            });
            e.inferred = Some(InferredActor {
                manager: manager.into(),
                operation: "Update".into(),
                time: Some(at(0)),
                subresource: None,
            });
        }
        ("app-config", Operation::Delete) => e.state = ChangeState::Received,
        _ => {}
    });
    (dir, api)
}

#[tokio::test]
async fn every_state_shows_in_the_table() {
    let (_dir, api) = witnessed("kubectl-edit");
    let text = run_fake(&api, &["cm"]).await.unwrap();
    assert_eq!(
        text,
        "\
TIME    USER                      OP       STATE         TARGET                  CHANGES
4h57m   alice                     DELETE   unconfirmed   configmaps/alice-cm     deleted
4h57m   alice                     CREATE   unconfirmed   configmaps/alice-cm     created
4h58m   admin                     CREATE   notApplied    configmaps/denied-cm    create not applied
4h59m   admin                     DELETE   received      configmaps/app-config   deleted
4h59m   kubectl-edit (inferred)   UPDATE   observed      configmaps/app-config   data.greeting: hello → bonjour
4h59m   admin                     CREATE   confirmed     configmaps/app-config   created
"
    );
    let wide = run_fake(&api, &["cm/app-config", "-o", "wide"])
        .await
        .unwrap();
    let observed = wide.lines().find(|l| l.contains("UPDATE")).unwrap();
    // No groups: nobody authenticated.
    assert!(
        observed.contains("   kubectl-edit (inferred)   -   ")
            && observed.contains("   UPDATE   observed   "),
        "{wide}"
    );
}

/// A long manager name is cut, its `(inferred)` mark never.
#[tokio::test]
async fn an_inferred_actor_keeps_its_mark_when_cut() {
    let (_dir, api) = witnessed("a-very-long-field-manager-name-of-a-controller");
    let text = run_fake(&api, &["cm/app-config"]).await.unwrap();
    assert!(
        text.contains("   a-very-long-field-manager-name-… (inferred)   UPDATE"),
        "{text}"
    );
}

#[tokio::test]
async fn patch_and_diff_headings_say_the_state() {
    let (_dir, api) = witnessed("kubectl-edit");
    let headings = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with('#'))
            .map(String::from)
            .collect()
    };
    let patch = run_fake(&api, &["cm/app-config", "-o", "patch"])
        .await
        .unwrap();
    assert_eq!(
        headings(&patch),
        [
            "# change 1795313325000000  2026-11-22 02:08:45 (4h59m ago)  admin  DELETE  configmaps/app-config",
            "# state: received: announced by the webhook, not yet confirmed by a witness",
            "# change 1795313311000000  2026-11-22 02:08:31 (4h59m ago)  kubectl-edit (inferred)  UPDATE  configmaps/app-config",
            "# state: observed: committed at resourceVersion 4243 (seen by the audit log), announced by no review; \
             actor inferred from managedFields (field manager kubectl-edit, Update at 2026-11-22T02:07:49Z), not authenticated",
            "# change 1795313304000000  2026-11-22 02:08:24 (4h59m ago)  admin  CREATE  configmaps/app-config",
            "# state: confirmed: committed at resourceVersion 4242 (seen by the watch)",
        ]
    );
    let diff = run_fake(&api, &["cm/denied-cm", "-o", "diff"])
        .await
        .unwrap();
    assert_eq!(
        headings(&diff)[1],
        "# state: notApplied: the apiserver did not commit this change (refused after admission, \
         superseded by a retry, or a forged review)"
    );
    let patch = run_fake(&api, &["cm/denied-cm", "-o", "patch"])
        .await
        .unwrap();
    assert!(
        patch.ends_with("[]  # not applied: no field changes\n"),
        "{patch}"
    );
    let patch = run_fake(&api, &["cm/alice-cm", "-o", "patch"])
        .await
        .unwrap();
    assert_eq!(
        headings(&patch)[1],
        "# state: unconfirmed: no witness could tell whether it was committed"
    );
    // On a terminal, a change that did not happen stands out.
    let changes = list(&api.store);
    let mut refused = detailed(&api.store, changes[0].id().parse().unwrap());
    refused.event.state = crate::pipeline::ChangeState::NotApplied;
    let mut v = view(false);
    v.color = true;
    assert!(
        output::patches(&[refused], &v).contains("\x1b[33m# state: notApplied"),
        "yellow"
    );
}

/// JSON and YAML carry `state`, `commit` and `inferred` as the API serves them.
#[tokio::test]
async fn json_and_yaml_say_the_state() {
    let (_dir, api) = witnessed("kubectl-edit");
    let json: ChangeList =
        serde_json::from_str(&run_fake(&api, &["cm", "-o", "json"]).await.unwrap()).unwrap();
    let states: Vec<&str> = json.items.iter().map(|c| c.event.state.as_str()).collect();
    assert_eq!(
        states,
        [
            "unconfirmed",
            "unconfirmed",
            "notApplied",
            "received",
            "observed",
            "confirmed"
        ]
    );
    let yaml = run_fake(&api, &["cm/app-config", "-o", "yaml"])
        .await
        .unwrap();
    for line in [
        "    state: received",
        "    state: observed",
        "    state: confirmed",
        "    inferred:\n      manager: kubectl-edit\n      operation: Update",
        "      resourceVersion: \"4242\"",
    ] {
        assert!(yaml.contains(line), "{line:?} not in\n{yaml}");
    }
}

/// `--state` asks the server for one state; an unknown one is refused before any request.
#[tokio::test]
async fn the_state_flag_filters() {
    let (_dir, api) = witnessed("kubectl-edit");
    let text = run_fake(&api, &["-A", "--state", "notapplied"])
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("configmaps/denied-cm"), "{text}");
    let requests = api.requests.lock().unwrap().clone();
    assert!(requests[0].contains("?state=notApplied&"), "{requests:?}");
    let err = BlameArgs::try_parse_from(["kubectl-blame", "--state", "applied"]).unwrap_err();
    assert!(
        err.to_string().contains("unknown state \"applied\""),
        "{err}"
    );
}

/// A change the apiserver refused is listed in the blame header but owns no line, and the
/// state shown is the one before it: carol's edit never happened, so bob's scale is the last
/// word and the image is still `nginx`.
#[tokio::test]
async fn blame_leaves_out_what_was_not_applied() {
    let (_dir, store) = store_with(&three_users());
    let api = FakeApi::edited(store, |e| {
        if e.user.username == "carol" {
            e.state = crate::pipeline::ChangeState::NotApplied;
        }
    });
    let text = run_fake(&api, &["deploy/nginx", "-o", "blame"])
        .await
        .unwrap();
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    assert_eq!(
        header,
        [
            "# deployments.apps/nginx in namespace demo: 3 changes by alice, bob, carol from 2026-11-22 02:07 to 2026-11-22 05:07",
            "#   55951b6c alice  2026-11-22 02:07  CREATE  unconfirmed  created",
            "#   505b55a1 bob    2026-11-22 02:09  UPDATE  unconfirmed  spec.replicas: 1 → 3",
            "#   5f7c0deb carol  2026-11-22 05:07  UPDATE  notApplied   not applied: metadata.labels.tier: + web, spec.strategy.rollingUpdate.m…",
            "#   notApplied: the apiserver did not commit it, so it owns no line",
            "# state of 505b55a1 (the change shown): unconfirmed: no witness could tell whether it was committed",
        ]
    );
    let body = &text[text.find("\n\n").unwrap()..];
    assert!(!body.contains("carol"), "{body}");
    assert!(
        body.contains("55951b6c alice  2026-11-22 02:07  CREATE │       - image: nginx\n"),
        "{body}"
    );
    assert!(
        body.contains("505b55a1 bob    2026-11-22 02:09  UPDATE │   replicas: 3\n"),
        "{body}"
    );
    // Only the state after bob's change was fetched whole.
    let fetched: Vec<String> = api
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("include=objects"))
        .cloned()
        .collect();
    assert_eq!(fetched.len(), 1, "{fetched:?}");

    // Nothing applied: nothing to show.
    let (_dir, api) = witnessed("kubectl-edit");
    let err = run_fake(&api, &["cm/denied-cm", "-o", "blame"])
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no recorded change was applied (see -o table)"
    );
}

/// An observed change's manager comes from the object: escaped in every text format.
#[tokio::test]
async fn inferred_managers_are_escaped() {
    let (_dir, api) = witnessed("kubectl\x1b[8m\r\nFAKE LINE");
    for cmd in [
        vec!["cm"],
        vec!["cm", "-o", "wide"],
        vec!["cm/app-config", "-o", "patch"],
        vec!["cm/app-config", "-o", "diff"],
    ] {
        let text = run_fake(&api, &cmd).await.unwrap();
        assert_safe(&format!("{cmd:?}"), &text);
        assert!(
            text.contains("kubectl\\u001b[8m\\r\\nFAKE LINE (inferred)"),
            "{cmd:?}: {text}"
        );
    }
    let blame = run_fake(&api, &["cm/app-config", "-o", "blame"])
        .await
        .unwrap();
    assert_safe("blame", &blame);
    assert!(
        blame.contains("kubectl\\u001b[8m\\r\\nFA… (inferred)"),
        "{blame}"
    );
}

/// What the audit log adds (audit ID, source, user agent, impersonator) shows in `-o wide`, in
/// the headings of `-o patch` and in `-o json`, escaped where the client wrote it.
#[tokio::test]
async fn the_audit_account_shows_in_wide_patch_and_json() {
    use crate::pipeline::AuditInfo;
    let (_dir, store) = store_with(&super::testsupport::three_users());
    let api = FakeApi::edited(store, |e| {
        if e.user.username == "bob" {
            e.audit = Some(AuditInfo {
                audit_id: "9df6c8dc-228b-46b9-8559-60a2bf7d59a0".into(),
                code: Some(200),
                source_ips: vec!["10.0.0.7".into(), "127.0.0.1".into()],
                user_agent: Some("kubectl/v1.33.1 \x1b[2Jhidden".into()),
                impersonated_by: Some("admin".into()),
            });
        }
    });
    let wide = run_fake(&api, &["-A", "-o", "wide"]).await.unwrap();
    assert_safe("wide", &wide);
    let header = wide.lines().next().unwrap();
    for column in ["IMPERSONATED-BY", "SOURCE", "USER-AGENT", "AUDIT-ID"] {
        assert!(header.contains(column), "{header}");
    }
    let bob = wide.lines().find(|l| l.contains("bob")).unwrap();
    for shown in [
        "admin",
        "10.0.0.7,127.0.0.1",
        "kubectl/v1.33.1 \\u001b[2Jhidden",
        "9df6c8dc-228b-46b9-8559-60a2bf7d59a0",
    ] {
        assert!(bob.contains(shown), "{shown} not in {bob}");
    }
    let alice = wide.lines().find(|l| l.contains("alice")).unwrap();
    assert!(
        alice.trim_end().ends_with('-'),
        "no account, dashes: {alice}"
    );
    let patch = run_fake(&api, &["-A", "-o", "patch"]).await.unwrap();
    assert_safe("patch", &patch);
    assert!(
        patch.contains("# audit 9df6c8dc-228b-46b9-8559-60a2bf7d59a0: 200, from 10.0.0.7, 127.0.0.1, kubectl/v1.33.1 \\u001b[2Jhidden, sent by admin impersonating bob"),
        "{patch}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run_fake(&api, &["-A", "-o", "json"]).await.unwrap()).unwrap();
    let items = json["items"].as_array().unwrap();
    let bob = items
        .iter()
        .find(|i| i["event"]["user"]["username"] == "bob")
        .unwrap();
    assert_eq!(bob["event"]["audit"]["impersonatedBy"], "admin");
    assert_eq!(
        bob["event"]["audit"]["auditID"],
        "9df6c8dc-228b-46b9-8559-60a2bf7d59a0"
    );
    assert_eq!(bob["event"]["audit"]["sourceIPs"][0], "10.0.0.7");
}

/// `--at` and the net diff on three people's changes to one Deployment: alice creates it (at
/// 0 s, 1 replica), bob scales it to 3 (95 s), carol sets the image and a label (3 h).
#[tokio::test]
async fn the_object_at_a_time_and_the_net_change_between_two() {
    let t = |s: i64| at(s).to_string();
    let cmd = |extra: &[&str]| {
        let mut all = vec!["deploy", "nginx", "-n", "demo"];
        all.extend_from_slice(extra);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        blame_cmd(&three_users(), &args).await.0
    };
    let after_bob = run(cmd(&["--at", &t(600)])).await.unwrap();
    assert!(
        after_bob.starts_with("# deployment.apps/nginx in namespace demo at "),
        "{after_bob}"
    );
    assert!(after_bob.contains("replicas: 3"), "{after_bob}");
    assert!(
        after_bob.contains(", bob)\n"),
        "the change that left it: {after_bob}"
    );
    assert!(
        !after_bob.contains("nginx:1.27"),
        "carol's image came later: {after_bob}"
    );
    let first = run(cmd(&["--at", &t(30), "-o", "json"])).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(first.split_once('\n').unwrap().1).unwrap();
    assert_eq!(json["spec"]["replicas"], 1, "alice's");
    let before_all = run(cmd(&["--at", &t(-60)])).await.unwrap_err().to_string();
    assert!(
        before_all.contains("no change to deployment.apps/nginx"),
        "{before_all}"
    );

    let net = run(cmd(&[
        "-o",
        "diff",
        "--since",
        &t(600),
        "--until",
        &t(4 * 3600),
    ]))
    .await
    .unwrap();
    assert!(net.contains("+      - image: nginx:1.27"), "{net}");
    assert!(net.contains("-      maxSurge: 25%"), "{net}");
    assert!(net.contains("tier: web"), "{net}");
    assert!(!net.contains("replicas"), "bob's scale was before: {net}");
    let nothing = run(cmd(&["-o", "diff", "--since", &t(100), "--until", &t(600)]))
        .await
        .unwrap();
    assert!(nothing.starts_with("# no net change"), "{nothing}");

    let refused = run(vec!["deploy".into(), "--at".into(), t(600)])
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("--at shows one object"),
        "{refused}"
    );
    let refused = run(cmd(&["--at", &t(600), "-o", "patch"]))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("-o yaml"), "{refused}");
}
