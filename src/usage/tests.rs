//! Usage tested on the audit log and OpenAPI document recorded from kube-apiserver v1.33.13
//! (tests/fixtures/audit/v1.33, tests/fixtures/openapi/v1.33).

use super::*;
use proptest::prelude::*;
use std::io::Read;
use std::sync::OnceLock;

const AUDIT_LOG: &[u8] = include_bytes!("../../tests/fixtures/audit/v1.33/audit.log");
const OPENAPI_V2_GZ: &[u8] = include_bytes!("../../tests/fixtures/openapi/v1.33/v2.json.gz");

fn index() -> &'static EndpointIndex {
    static INDEX: OnceLock<EndpointIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(OPENAPI_V2_GZ)
            .read_to_end(&mut json)
            .unwrap();
        EndpointIndex::from_v2(&json).unwrap()
    })
}

fn lines() -> impl Iterator<Item = &'static [u8]> {
    AUDIT_LOG.split(|b| *b == b'\n')
}

fn events() -> impl Iterator<Item = AuditEvent> {
    lines().filter_map(|l| parse_line(l).unwrap())
}

/// The final-stage event of the recorded request with this verb and URI.
fn recorded(verb: &str, uri: &str) -> AuditEvent {
    events()
        .find(|e| e.is_final() && e.verb == verb && e.request_uri == uri)
        .unwrap_or_else(|| panic!("no recorded {verb} {uri}"))
}

fn usage_of_log(index: Option<&EndpointIndex>) -> Usage<'_> {
    let mut usage = Usage::new(index);
    for line in lines() {
        usage.add_line(line);
    }
    usage
}

#[test]
fn recorded_requests_map_to_their_operation_ids() {
    let cases = [
        (
            "list",
            "/api/v1/namespaces/demo/configmaps?limit=500",
            "listCoreV1NamespacedConfigMap",
        ),
        (
            "patch",
            "/apis/apps/v1/namespaces/demo/deployments/web?fieldManager=kubectl-label",
            "patchAppsV1NamespacedDeployment",
        ),
        (
            "patch",
            "/apis/apps/v1/namespaces/demo/deployments/web/scale",
            "patchAppsV1NamespacedDeploymentScale",
        ),
        (
            "get",
            "/apis/apps/v1/namespaces/demo/deployments/web",
            "readAppsV1NamespacedDeployment",
        ),
        (
            "create",
            "/api/v1/namespaces/demo/serviceaccounts/deployer/token",
            "createCoreV1NamespacedServiceAccountToken",
        ),
        (
            "update",
            "/api/v1/namespaces/demo/configmaps/settings?fieldManager=kubectl-replace&fieldValidation=Strict",
            "replaceCoreV1NamespacedConfigMap",
        ),
        (
            "delete",
            "/api/v1/namespaces/team-a/configmaps/alice-notes",
            "deleteCoreV1NamespacedConfigMap",
        ),
        ("get", "/api/v1/namespaces/team-a", "readCoreV1Namespace"),
        (
            "create",
            "/api/v1/namespaces?fieldManager=kubectl-create&fieldValidation=Strict",
            "createCoreV1Namespace",
        ),
        (
            "patch",
            "/api/v1/namespaces/team-a/resourcequotas/cm-quota/status?fieldManager=kubectl-patch",
            "patchCoreV1NamespacedResourceQuotaStatus",
        ),
        (
            "list",
            "/api/v1/componentstatuses?limit=500",
            "listCoreV1ComponentStatus",
        ),
        (
            "list",
            "/apis/admissionregistration.k8s.io/v1beta1/validatingadmissionpolicies?limit=500",
            "listAdmissionregistrationV1beta1ValidatingAdmissionPolicy",
        ),
        // Watches: `?watch=` on the collection path, named by the document's /watch/ operation.
        (
            "watch",
            "/api/v1/configmaps?watch=1&allowWatchBookmarks=true&resourceVersion=1",
            "watchCoreV1ConfigMapListForAllNamespaces",
        ),
        (
            "watch",
            "/api/v1/namespaces/demo/configmaps?resourceVersion=262&watch=true",
            "watchCoreV1NamespacedConfigMapList",
        ),
        (
            "watch",
            "/apis/apps/v1/deployments?watch=1&allowWatchBookmarks=true&resourceVersion=217&timeoutSeconds=150",
            "watchAppsV1DeploymentListForAllNamespaces",
        ),
    ];
    for (verb, uri, id) in cases {
        let endpoint = endpoint::map(&recorded(verb, uri), Some(index())).unwrap();
        assert_eq!(endpoint.operation_id.as_deref(), Some(id), "{verb} {uri}");
        assert_eq!(endpoint.verb, verb);
    }
    let scale = endpoint::map(
        &recorded(
            "patch",
            "/apis/apps/v1/namespaces/demo/deployments/web/scale",
        ),
        Some(index()),
    )
    .unwrap();
    assert_eq!(
        (
            scale.group.as_str(),
            scale.version.as_str(),
            scale.resource.as_str()
        ),
        ("apps", "v1", "deployments")
    );
    assert_eq!(scale.subresource.as_deref(), Some("scale"));
    assert_eq!(scale.api(), "deployments.apps/v1/scale");
}

#[test]
fn levels_of_recorded_requests() {
    let level = |uri| {
        endpoint::map(&recorded("list", uri), Some(index()))
            .unwrap()
            .level
    };
    assert_eq!(level("/api/v1/configmaps?limit=500"), Level::Stable);
    assert_eq!(
        level("/apis/networking.k8s.io/v1beta1/ipaddresses?limit=500"),
        Level::Beta
    );
    assert_eq!(
        level("/apis/admissionregistration.k8s.io/v1alpha1/mutatingadmissionpolicies?limit=500"),
        Level::Alpha
    );
}

#[test]
fn deprecated_view_lists_what_the_apiserver_marked_with_its_removal() {
    let usage = usage_of_log(Some(index()));
    let report = Report::new(
        &usage,
        &Filter {
            deprecated: true,
            ..Filter::default()
        },
    );
    let seen: Vec<(String, &str, Option<&str>, &str, &str)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.endpoint.api(),
                r.endpoint.verb.as_str(),
                r.endpoint.removed_release.as_deref(),
                r.client.user.as_str(),
                r.client.agent.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "validatingadmissionpolicies.admissionregistration.k8s.io/v1beta1".into(),
                "create",
                Some("1.34"),
                "admin",
                "kubectl"
            ),
            (
                "validatingadmissionpolicies.admissionregistration.k8s.io/v1beta1".into(),
                "list",
                Some("1.34"),
                "admin",
                "kubectl"
            ),
            (
                "volumeattributesclasses.storage.k8s.io/v1alpha1".into(),
                "list",
                Some("1.35"),
                "admin",
                "kubectl"
            ),
            (
                "componentstatuses/v1".into(),
                "list",
                None,
                "admin",
                "kubectl"
            ),
            ("endpoints/v1".into(), "list", None, "admin", "kubectl"),
        ]
    );
    // Not deprecated: a beta and an alpha version the apiserver did not mark.
    assert!(
        usage
            .series()
            .filter(|(k, _)| k.endpoint.resource == "ipaddresses")
            .all(|(k, _)| !k.endpoint.deprecated)
    );
}

#[test]
fn whole_log_counts_each_request_once() {
    let usage = usage_of_log(Some(index()));
    // 361 events: 350 requests, 11 of them watches that also wrote a ResponseStarted event.
    assert_eq!(usage.counted(), 350);
    let s = usage.skipped();
    assert_eq!(s.not_final_stage, 11);
    assert_eq!((s.duplicate, s.over_bound), (0, 0));
    assert!(s.bad_lines.is_empty());
    assert!(s.unmapped.is_empty(), "{:?}", s.unmapped);
    let calls: u64 = usage.series().map(|(_, c)| c.calls).sum();
    assert_eq!(calls, 350);
}

#[test]
fn copies_of_events_are_counted_once_but_reused_audit_ids_are_not_folded() {
    let mut usage = usage_of_log(Some(index()));
    for line in lines() {
        usage.add_line(line);
    }
    assert_eq!(usage.counted(), 350);
    assert_eq!(usage.skipped().duplicate, 350);

    // A client may choose its Audit-ID; two requests under one ID are two requests.
    let mut usage = Usage::new(Some(index()));
    let mut e = recorded("get", "/apis/apps/v1/namespaces/demo/deployments/web");
    usage.add_event(&e);
    e.request_received_timestamp = e
        .request_received_timestamp
        .map(|t| t + jiff::SignedDuration::from_secs(1));
    usage.add_event(&e);
    assert_eq!(usage.counted(), 2);
}

#[test]
fn clients_service_accounts_and_impersonation() {
    let e = recorded("get", "/apis/apps/v1/namespaces/demo/deployments/web");
    let c = Client::of(&e);
    assert_eq!(
        (c.user.as_str(), c.kind, c.agent.as_str()),
        ("admin", ClientKind::User, "kubectl")
    );

    let usage = usage_of_log(Some(index()));
    let sa = "system:serviceaccount:demo:deployer";
    let report = Report::new(
        &usage,
        &Filter {
            user: Some(sa.into()),
            ..Filter::default()
        },
    );
    let used: Vec<(&str, Option<&str>, ClientKind)> = report
        .rows
        .iter()
        .map(|r| {
            (
                r.endpoint.verb.as_str(),
                r.endpoint.operation_id.as_deref(),
                r.client.kind,
            )
        })
        .collect();
    assert_eq!(
        used,
        vec![
            (
                "create",
                Some("createCoreV1NamespacedConfigMap"),
                ClientKind::ServiceAccount
            ),
            (
                "get",
                Some("readAppsV1NamespacedDeployment"),
                ClientKind::ServiceAccount
            ),
            (
                "patch",
                Some("patchAppsV1NamespacedDeployment"),
                ClientKind::ServiceAccount
            ),
        ]
    );

    // bob, impersonated by admin: found under either name, shown as bob.
    let bob = Report::new(
        &usage,
        &Filter {
            user: Some("bob".into()),
            ..Filter::default()
        },
    );
    assert_eq!(bob.rows.len(), 3);
    assert!(
        bob.rows
            .iter()
            .all(|r| r.client.user == "bob" && r.client.impersonator.as_deref() == Some("admin"))
    );
    let admin = Report::new(
        &usage,
        &Filter {
            user: Some("admin".into()),
            ..Filter::default()
        },
    );
    assert!(admin.rows.iter().any(|r| r.client.user == "bob"));
}

#[test]
fn unmapped_requests_are_counted_by_reason() {
    let base = recorded("get", "/apis/apps/v1/namespaces/demo/deployments/web");
    let non_resource = |uri: &str| AuditEvent {
        request_uri: uri.into(),
        object_ref: None,
        ..base.clone()
    };
    let version = endpoint::map(&non_resource("/version"), Some(index())).unwrap();
    assert_eq!(version.operation_id.as_deref(), Some("getCodeVersion"));
    assert_eq!(version.path.as_deref(), Some("/version"));
    let mut widgets = base.clone();
    widgets.request_uri = "/apis/example.com/v1/namespaces/demo/widgets/w".into();
    if let Some(o) = widgets.object_ref.as_mut() {
        o.api_group = "example.com".into();
        o.resource = "widgets".into();
    }
    let mut gadgets = widgets.clone();
    gadgets.request_uri = "/apis/apps/v1/namespaces/demo/gadgets/g".into();
    let mut odd = base.clone();
    odd.verb = "frobnicate".into();

    let mut usage = Usage::new(Some(index()));
    let events = [
        non_resource("/healthz/etcd"),
        widgets,
        gadgets,
        odd,
        non_resource("/version"),
    ];
    for (i, mut e) in events.into_iter().enumerate() {
        e.audit_id = format!("unmapped-{i}");
        usage.add_event(&e);
    }
    let reasons: Vec<(Unmapped, u64)> = usage
        .skipped()
        .unmapped
        .iter()
        .map(|(r, u)| (*r, u.count))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (Unmapped::NonResourceNotInSpec, 1),
            (Unmapped::UnknownGroupVersion, 1),
            (Unmapped::UnknownResource, 1),
            (Unmapped::UnknownVerb, 1),
        ]
    );
    assert_eq!(usage.counted(), 1);
    let text = summary(&Report::new(&usage, &Filter::default()));
    assert!(
        text.contains("unknown_group_version: get /apis/example.com/v1/namespaces/demo/widgets/w"),
        "{text}"
    );

    // Without a document a non-resource request is its path, and nothing is unmapped.
    let plain = endpoint::map(&non_resource("/healthz/etcd"), None).unwrap();
    assert_eq!(
        (plain.operation_id, plain.path.as_deref()),
        (None, Some("/healthz/etcd"))
    );
}

#[test]
fn without_a_document_endpoints_come_from_the_event() {
    let usage = usage_of_log(None);
    assert_eq!(usage.counted(), 350);
    assert!(
        usage
            .series()
            .all(|(k, _)| k.endpoint.operation_id.is_none())
    );
    let scale = endpoint::map(
        &recorded(
            "patch",
            "/apis/apps/v1/namespaces/demo/deployments/web/scale",
        ),
        None,
    )
    .unwrap();
    assert_eq!(scale.api(), "deployments.apps/v1/scale");
    assert_eq!(scale.level, Level::Stable);
    let report = Report::new(&usage, &Filter::default());
    assert!(summary(&report).contains("--openapi FILE"));
    assert!(!render_table(&report).contains("OPERATION"));
}

#[test]
fn recorded_bad_lines_are_counted_not_fatal() {
    let line = lines().next().unwrap();
    let mut usage = Usage::new(Some(index()));
    usage.add_line(&line[..line.len() - 40]);
    usage.add_line(b"\xff\xfe not json");
    usage.add_line(br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[]}"#);
    usage.add_line(&vec![b'{'; MAX_LINE_BYTES + 1]);
    usage.add_line(b"");
    usage.add_line(line);
    let bad: Vec<(BadLine, u64)> = usage
        .skipped()
        .bad_lines
        .iter()
        .map(|(r, n)| (*r, *n))
        .collect();
    assert_eq!(
        bad,
        vec![
            (BadLine::TooLong, 1),
            (BadLine::Truncated, 1),
            (BadLine::NotJson, 1),
            (BadLine::NotAnEvent, 1),
        ]
    );
    assert_eq!(usage.counted(), 1);
}

proptest! {
    /// Any line, and any cut of a recorded line, is counted once somewhere and never panics.
    #[test]
    fn any_line_is_counted_once(
        junk in proptest::collection::vec(any::<u8>(), 0..400),
        pick in 0usize..361,
        cut in 0usize..4000,
    ) {
        let recorded_line = lines().nth(pick).unwrap();
        let cut_line = &recorded_line[..cut.min(recorded_line.len())];
        for line in [junk.as_slice(), cut_line] {
            let mut usage = Usage::new(Some(index()));
            usage.add_line(line);
            let s = usage.skipped();
            let outcomes = usage.counted()
                + s.bad_lines.values().sum::<u64>()
                + s.not_final_stage
                + s.unmapped.values().map(|u| u.count).sum::<u64>();
            let blank = line.iter().all(u8::is_ascii_whitespace);
            prop_assert_eq!(outcomes, u64::from(!blank));
        }
    }
}

fn deployer_report() -> Report {
    let usage = usage_of_log(Some(index()));
    Report::new(
        &usage,
        &Filter {
            user: Some("system:serviceaccount:demo:deployer".into()),
            ..Filter::default()
        },
    )
}

#[test]
fn table_output() {
    insta::assert_snapshot!(render_table(&deployer_report()));
}

#[test]
fn deprecated_table_output() {
    let usage = usage_of_log(Some(index()));
    let report = Report::new(
        &usage,
        &Filter {
            deprecated: true,
            ..Filter::default()
        },
    );
    insta::assert_snapshot!(render_table(&report));
}

#[test]
fn csv_output() {
    insta::assert_snapshot!(render_csv(&deployer_report()));
}

#[test]
fn json_output() {
    insta::assert_snapshot!(render_json(&deployer_report()).unwrap());
}

#[test]
fn table_escapes_user_controlled_strings() {
    let mut e = recorded("get", "/apis/apps/v1/namespaces/demo/deployments/web");
    e.user.username = "mallory\x1b[8m".into();
    e.user_agent = Some("evil\r\nFAKE/1.0".into());
    let mut usage = Usage::new(Some(index()));
    usage.add_event(&e);
    let out = render_table(&Report::new(&usage, &Filter::default()));
    assert!(out.contains("mallory\\u001b[8m"), "{out}");
    assert!(out.contains("evil\\r\\nFAKE"), "{out}");
    assert!(!out.contains('\x1b') && !out.contains('\r'));
}

/// The JSON the page embeds for its script, parsed back.
fn page_data(page: &str) -> serde_json::Value {
    let open = r#"<script type="application/json" id="usage-data">"#;
    let start = page.find(open).expect("no usage-data element") + open.len();
    let len = page[start..]
        .find("</script>")
        .expect("usage-data not closed");
    serde_json::from_str(&page[start..start + len]).unwrap()
}

/// The child of `node` named `name`.
fn child<'a>(node: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    node["children"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} under {}", node["name"]))
}

/// Every node's calls are its children's sum.
fn assert_sums(node: &serde_json::Value) {
    if let Some(children) = node["children"].as_array() {
        let sum: u64 = children.iter().map(|c| c["calls"].as_u64().unwrap()).sum();
        assert_eq!(node["calls"].as_u64(), Some(sum), "{}", node["name"]);
        children.iter().for_each(assert_sums);
    }
}

#[test]
fn html_page_embeds_the_tree_of_the_report() {
    let usage = usage_of_log(Some(index()));
    let report = Report::new(&usage, &Filter::default());
    let page = render_html(&report).unwrap();
    let data = page_data(&page);
    let tree = &data["tree"];

    let total: u64 = report.rows.iter().map(|r| r.counts.calls).sum();
    assert_eq!(tree["calls"].as_u64(), Some(total));
    assert_sums(tree);
    let mut levels: Vec<Level> = report.rows.iter().map(|r| r.endpoint.level).collect();
    levels.sort();
    levels.dedup();
    let names: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let labels: Vec<&str> = levels.iter().map(|l| l.label()).collect();
    assert_eq!(names, labels);
    assert!(
        labels.starts_with(&["stable", "beta", "alpha"]),
        "{labels:?}"
    );

    let calls = |level: Level, group: &str, resource: &str, verb: Option<&str>| -> u64 {
        report
            .rows
            .iter()
            .filter(|r| {
                let e = &r.endpoint;
                e.level == level
                    && e.group == group
                    && e.resource == resource
                    && e.subresource.is_none()
                    && e.path.is_none()
                    && verb.is_none_or(|v| e.verb == v)
            })
            .map(|r| r.counts.calls)
            .sum()
    };
    let stable = child(tree, "stable");
    let configmaps = child(child(stable, "core"), "configmaps");
    let create = child(configmaps, "create");
    assert!(calls(Level::Stable, "", "configmaps", Some("create")) > 0);
    assert_eq!(
        create["calls"].as_u64(),
        Some(calls(Level::Stable, "", "configmaps", Some("create")))
    );
    assert_eq!(
        configmaps["calls"].as_u64(),
        Some(calls(Level::Stable, "", "configmaps", None))
    );
    // A subresource is its own resource segment, as RBAC names it.
    let scale = child(child(child(stable, "apps"), "deployments/scale"), "patch");
    assert!(scale["calls"].as_u64().unwrap() > 0);

    // The deprecated v1beta1 policies: every call deprecated, with the release that removes
    // them.
    let policies = child(
        child(child(tree, "beta"), "admissionregistration.k8s.io"),
        "validatingadmissionpolicies",
    );
    assert_eq!(policies["deprecatedCalls"], policies["calls"]);
    assert_eq!(policies["removedRelease"], "1.34");

    assert_eq!(data["rows"].as_array().unwrap().len(), report.rows.len());
    assert_eq!(data["counted"].as_u64(), Some(report.counted));
    assert!(page.contains("<title>API usage: 350 requests counted</title>"));
}

const HOSTILE: &str = "</script><img src=x onerror=alert(1)>";

/// A recorded request made by a user, with an agent and to a resource, named [`HOSTILE`] and
/// with U+2028 and U+2029 in them.
fn hostile_usage() -> Usage<'static> {
    let mut e = recorded("get", "/apis/apps/v1/namespaces/demo/deployments/web");
    e.user.username = format!("{HOSTILE}\u{2028}");
    e.user_agent = Some(format!("{HOSTILE}\u{2029}"));
    if let Some(o) = e.object_ref.as_mut() {
        o.resource = HOSTILE.into();
    }
    let mut usage = Usage::new(None);
    usage.add_event(&e);
    usage
}

#[test]
fn html_page_never_writes_user_strings_as_markup() {
    let usage = hostile_usage();
    let report = Report::new(
        &usage,
        &Filter {
            user: Some(format!("{HOSTILE}\u{2028}")),
            ..Filter::default()
        },
    );
    assert_eq!(report.rows.len(), 1);
    let page = render_html(&report).unwrap();
    assert!(!page.contains(HOSTILE), "{page}");
    assert!(!page.contains("<img"));
    assert!(!page.contains('\u{2028}') && !page.contains('\u{2029}'));
    // Only the page's own two script elements close.
    assert_eq!(page.matches("</script>").count(), 2);
    assert!(page.contains("<title>API usage: 1 requests counted; user &lt;/script&gt;&lt;img"));
    let data = page_data(&page);
    assert_eq!(data["rows"][0]["user"], format!("{HOSTILE}\u{2028}"));
    assert_eq!(data["rows"][0]["path"][2], HOSTILE);
    assert_eq!(
        child(child(&data["tree"], "stable"), "apps")["children"][0]["name"],
        HOSTILE
    );
}

#[test]
fn html_page_loads_nothing() {
    let usage = usage_of_log(Some(index()));
    let page = render_html(&Report::new(&usage, &Filter::default())).unwrap();
    for url in [
        "http:",
        "https:",
        "//",
        "src=",
        "href=",
        "url(",
        "@import",
        "@font-face",
    ] {
        // `//` would be a scheme-relative URL; the script has comments, so look outside it.
        let outside_script = page.split("<script>").next().unwrap();
        let haystack = if url == "//" {
            outside_script
        } else {
            page.as_str()
        };
        assert!(!haystack.contains(url), "the page names {url}");
    }
    assert!(page.contains("default-src 'none'"));
    // The policy allows the page's own script, by hash.
    let script = page
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
    use base64::Engine as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    assert!(page.contains(&format!("script-src 'sha256-{hash}'")));
}
