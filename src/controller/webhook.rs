//! Builds the ValidatingWebhookConfiguration of one TrackingPolicy. Pure: a policy and the
//! operator's settings in, a configuration out; no client, no clock.
//!
//! The apiserver is told as much as it can evaluate itself (rules, namespace and object selectors,
//! CEL `matchConditions` for users), so requests histor would drop anyway never leave the apiserver.
//! Whatever cannot be expressed exactly (namespace globs, glob syntax CEL cannot mirror) stays with
//! the in-process filter of the capture side, which always runs: push-down only ever narrows traffic,
//! it never decides alone.

use crate::crd::{FailurePolicy, Operation, TrackingPolicy};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Label every object histor manages carries (`app.kubernetes.io/managed-by: histor`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "histor";
/// Label naming the policy a webhook configuration belongs to.
pub const POLICY_LABEL: &str = "histor.dev/policy";
/// Annotation that asks cert-manager's CA injector to fill in `caBundle`.
pub const CERT_MANAGER_INJECT_ANNOTATION: &str = "cert-manager.io/inject-ca-from";
/// The apiserver rejects more than 64 matchConditions per webhook.
pub const MAX_MATCH_CONDITIONS: usize = 64;

/// Label carrying a namespace's name, set by the apiserver on every namespace since 1.21.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How the apiserver reaches histor's admission endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookClient {
    /// In-cluster: through a Service.
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Service port.
        port: i32,
    },
    /// Outside the cluster (or behind a load balancer): `https://HOST:PORT`, no path.
    Url(String),
}

impl WebhookClient {
    /// The name the apiserver verifies the serving certificate against when it calls.
    pub fn server_name(&self) -> String {
        match self {
            WebhookClient::Service {
                namespace, name, ..
            } => format!("{name}.{namespace}.svc"),
            WebhookClient::Url(_) => self.subject_alt_names().swap_remove(0),
        }
    }

    /// Host names the serving certificate must hold for the apiserver to accept it.
    pub fn subject_alt_names(&self) -> Vec<String> {
        match self {
            WebhookClient::Service {
                namespace, name, ..
            } => vec![
                name.clone(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            WebhookClient::Url(url) => {
                let rest = url.strip_prefix("https://").unwrap_or(url);
                let authority = rest.split('/').next().unwrap_or(rest);
                let host = if let Some(v6) = authority.strip_prefix('[') {
                    v6.split(']').next().unwrap_or(v6)
                } else {
                    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
                };
                vec![host.to_string()]
            }
        }
    }
}

/// Everything besides the policy that shapes its webhook configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookParams {
    /// The operator's namespace: never tracked.
    pub operator_namespace: String,
    /// The operator's service account name: its own writes are never tracked.
    pub service_account: String,
    /// How the apiserver reaches histor.
    pub client: WebhookClient,
    /// PEM CA bundle the apiserver trusts; `None` leaves it to cert-manager.
    pub ca_bundle: Option<Vec<u8>>,
    /// `NAMESPACE/NAME` of the cert-manager Certificate whose CA is injected, in cert-manager mode.
    pub cert_manager_certificate: Option<String>,
    /// Whether the apiserver evaluates `matchConditions` (see [`supports_match_conditions`]).
    pub match_conditions: bool,
}

/// Name of the ValidatingWebhookConfiguration made for `policy`.
pub fn configuration_name(policy: &str) -> String {
    format!("histor-{policy}")
}

/// Name of the single webhook inside the configuration.
pub fn webhook_name(policy: &str) -> String {
    format!("{policy}.histor.dev")
}

/// Path of the policy's admission endpoint on histor's server.
pub fn admit_path(policy: &str) -> String {
    format!("/admit/{policy}")
}

/// Whether the apiserver evaluates webhook `matchConditions`: beta and on by default from 1.28,
/// GA in 1.30. Older servers silently drop the field, which would be harmless, but then the
/// in-process filter must do all the work, so callers want to know.
pub fn supports_match_conditions(version: &Info) -> bool {
    fn number(s: &str) -> Option<u32> {
        // Managed clusters report minors like "28+"; the digits are what counts.
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    match (number(&version.major), number(&version.minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= 28),
        _ => false,
    }
}

/// The ValidatingWebhookConfiguration for `policy`.
pub fn build(policy: &TrackingPolicy, params: &WebhookParams) -> ValidatingWebhookConfiguration {
    let name = policy.name_any();
    let spec = &policy.spec;

    let mut labels = BTreeMap::new();
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels.insert(POLICY_LABEL.to_string(), name.clone());
    let annotations = params
        .cert_manager_certificate
        .as_ref()
        .map(|cert| BTreeMap::from([(CERT_MANAGER_INJECT_ANNOTATION.to_string(), cert.clone())]));

    let rules = spec
        .resources
        .iter()
        .map(|r| {
            let operations = if r.operations.is_empty() {
                vec![Operation::Create, Operation::Update, Operation::Delete]
            } else {
                r.operations.clone()
            };
            RuleWithOperations {
                api_groups: Some(r.api_groups.clone()),
                api_versions: Some(if r.api_versions.is_empty() {
                    vec!["*".into()]
                } else {
                    r.api_versions.clone()
                }),
                resources: Some(r.resources.clone()),
                operations: Some(operations.iter().map(|o| o.as_str().to_string()).collect()),
                scope: Some("*".into()),
            }
        })
        .collect();

    let client_config = match &params.client {
        WebhookClient::Service {
            namespace,
            name: service,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: service.clone(),
                port: Some(*port),
                path: Some(admit_path(&name)),
            }),
            ca_bundle: params.ca_bundle.clone().map(ByteString),
            url: None,
        },
        WebhookClient::Url(base) => WebhookClientConfig {
            url: Some(format!(
                "{}{}",
                base.trim_end_matches('/'),
                admit_path(&name)
            )),
            ca_bundle: params.ca_bundle.clone().map(ByteString),
            service: None,
        },
    };

    let match_conditions = params
        .match_conditions
        .then(|| match_conditions(policy, params));

    let webhook = ValidatingWebhook {
        name: webhook_name(&name),
        admission_review_versions: vec!["v1".into()],
        client_config,
        failure_policy: Some(
            match spec.webhook.failure_policy {
                FailurePolicy::Ignore => "Ignore",
                FailurePolicy::Fail => "Fail",
            }
            .into(),
        ),
        match_policy: Some("Equivalent".into()),
        namespace_selector: Some(namespace_selector(policy, &params.operator_namespace)),
        object_selector: spec.object_selector.clone(),
        rules: Some(rules),
        side_effects: "NoneOnDryRun".into(),
        timeout_seconds: Some(spec.webhook.timeout_seconds),
        match_conditions,
    };

    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(configuration_name(&name)),
            labels: Some(labels),
            annotations,
            owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![webhook]),
    }
}

/// The namespace selector: the policy's own label selector, plus exact include/exclude names as
/// `kubernetes.io/metadata.name` expressions, plus the operator's namespace, always excluded so
/// histor's own writes never loop back through its webhook.
fn namespace_selector(policy: &TrackingPolicy, operator_namespace: &str) -> LabelSelector {
    let filter = policy.spec.namespaces.as_ref();
    let mut selector = filter.and_then(|f| f.selector.clone()).unwrap_or_default();
    let mut expressions = selector.match_expressions.take().unwrap_or_default();

    if let Some(filter) = filter {
        // A single glob among the includes means the apiserver cannot tell which namespaces are in;
        // then every namespace reaches histor and the in-process filter decides.
        if !filter.include.is_empty() && filter.include.iter().all(|n| !is_glob(n)) {
            expressions.push(LabelSelectorRequirement {
                key: NAMESPACE_NAME_LABEL.into(),
                operator: "In".into(),
                values: Some(dedup(filter.include.iter().cloned())),
            });
        }
    }
    let excluded: Vec<String> = filter
        .map(|f| f.exclude.iter().filter(|n| !is_glob(n)).cloned().collect())
        .unwrap_or_default();
    expressions.push(LabelSelectorRequirement {
        key: NAMESPACE_NAME_LABEL.into(),
        operator: "NotIn".into(),
        values: Some(dedup(
            std::iter::once(operator_namespace.to_string()).chain(excluded),
        )),
    });

    selector.match_expressions = Some(expressions);
    selector
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The CEL match conditions. All must hold for the apiserver to call histor.
fn match_conditions(policy: &TrackingPolicy, params: &WebhookParams) -> Vec<MatchCondition> {
    const USERNAME: &str = "request.userInfo.username";
    let mut out = vec![MatchCondition {
        name: "exclude-histor-operator".into(),
        expression: format!(
            "{USERNAME} != {}",
            cel_string(&format!(
                "system:serviceaccount:{}:{}",
                params.operator_namespace, params.service_account
            ))
        ),
    }];

    if let Some(expr) = apiserver_churn_condition(policy) {
        out.push(MatchCondition {
            name: "exclude-apiserver-churn".into(),
            expression: expr,
        });
    }

    if let Some(users) = &policy.spec.users {
        if !users.include.is_empty()
            && let Some(any) = any_glob(USERNAME, &users.include)
        {
            out.push(MatchCondition {
                name: "include-users".into(),
                expression: any,
            });
        }
        if !users.exclude.is_empty()
            && let Some(any) = any_glob(USERNAME, &users.exclude)
        {
            out.push(MatchCondition {
                name: "exclude-users".into(),
                expression: format!("!({any})"),
            });
        }
        if !users.exclude_groups.is_empty()
            && let Some(any) = any_glob("g", &users.exclude_groups)
        {
            out.push(MatchCondition {
                name: "exclude-groups".into(),
                // `groups` is absent for some anonymous requests; has() keeps the condition from
                // erroring (an error would, under failurePolicy Ignore, skip the call anyway).
                expression: format!(
                    "!has(request.userInfo.groups) || !request.userInfo.groups.exists(g, {any})"
                ),
            });
        }
    }

    // Each list collapses into one condition, so this only bites if the fixed ones grow; keeping
    // the limit here means a future change cannot produce a configuration the apiserver rejects.
    out.truncate(MAX_MATCH_CONDITIONS);
    out
}

/// Excludes lease renewals and endpoint updates made by the control plane itself: they happen every
/// few seconds and say nothing about who changed what. A policy that names one of those resources
/// explicitly (not through `*`) gets it unfiltered.
fn apiserver_churn_condition(policy: &TrackingPolicy) -> Option<String> {
    let named = |group: &str, resource: &str| {
        policy.spec.resources.iter().any(|r| {
            r.api_groups.iter().any(|g| g == group)
                && r.resources
                    .iter()
                    .any(|res| res == resource || res.starts_with(&format!("{resource}/")))
        })
    };
    let churny: Vec<String> = [
        ("coordination.k8s.io", "leases"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
    ]
    .into_iter()
    .filter(|(g, r)| !named(g, r))
    .map(|(g, r)| {
        format!(
            "(request.resource.group == {} && request.resource.resource == {})",
            cel_string(g),
            cel_string(r)
        )
    })
    .collect();
    if churny.is_empty() {
        return None;
    }
    Some(format!(
        "!(request.operation == 'UPDATE' && ({}) && (request.userInfo.username == 'system:apiserver' \
         || request.userInfo.username.startsWith('system:kube-') \
         || request.userInfo.username.startsWith('system:serviceaccount:kube-system:')))",
        churny.join(" || ")
    ))
}

/// A CEL expression true when `var` matches any of `globs`, or `None` when one of them uses glob
/// syntax beyond `*` and `?` that this translation does not mirror exactly (then the in-process
/// filter handles the whole list rather than risk disagreeing with it).
fn any_glob(var: &str, globs: &[String]) -> Option<String> {
    let parts: Option<Vec<String>> = globs.iter().map(|g| glob_to_cel(var, g)).collect();
    let parts = parts?;
    if parts.iter().any(|p| p == "true") {
        return Some("true".into());
    }
    Some(parts.join(" || "))
}

/// One glob as CEL over the string variable `var`.
pub fn glob_to_cel(var: &str, glob: &str) -> Option<String> {
    if glob.contains(['[', ']', '{', '}', '\\']) {
        return None;
    }
    if glob.chars().all(|c| c == '*') && !glob.is_empty() {
        return Some("true".into());
    }
    let stars = glob.matches('*').count();
    let has_question = glob.contains('?');
    if !has_question {
        if stars == 0 {
            return Some(format!("{var} == {}", cel_string(glob)));
        }
        if stars == 1 {
            if let Some(prefix) = glob.strip_suffix('*') {
                return Some(format!("{var}.startsWith({})", cel_string(prefix)));
            }
            if let Some(suffix) = glob.strip_prefix('*') {
                return Some(format!("{var}.endsWith({})", cel_string(suffix)));
            }
        }
    }
    // A `*` in the middle (or a `?`): an anchored RE2 regex.
    let mut regex = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            c if "\\.+()|^$[]{}".contains(c) => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
    }
    regex.push('$');
    Some(format!("{var}.matches({})", cel_string(&regex)))
}

/// A CEL single-quoted string literal.
fn cel_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NamespaceFilter, ResourceRule, TrackingPolicySpec, UserFilter};
    use serde_json::json;

    fn policy(spec: serde_json::Value) -> TrackingPolicy {
        let spec: TrackingPolicySpec = serde_json::from_value(spec).expect("valid spec");
        let mut p = TrackingPolicy::new("prod-apps", spec);
        p.metadata.uid = Some("uid-1".into());
        p
    }

    fn params(match_conditions: bool) -> WebhookParams {
        WebhookParams {
            operator_namespace: "histor-system".into(),
            service_account: "histor".into(),
            client: WebhookClient::Service {
                namespace: "histor-system".into(),
                name: "histor".into(),
                port: 443,
            },
            ca_bundle: Some(b"CA".to_vec()),
            cert_manager_certificate: None,
            match_conditions,
        }
    }

    fn version(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn match_conditions_support_follows_the_server_version() {
        assert!(!supports_match_conditions(&version("1", "27")));
        assert!(supports_match_conditions(&version("1", "28")));
        assert!(supports_match_conditions(&version("1", "28+")));
        assert!(supports_match_conditions(&version("1", "33")));
        assert!(supports_match_conditions(&version("2", "0")));
        assert!(!supports_match_conditions(&version("1", "")));
        assert!(!supports_match_conditions(&version("", "")));
    }

    #[test]
    fn rules_keep_subresources_and_default_operations() {
        let p = policy(json!({
            "resources": [
                {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]},
                {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"], "operations": ["UPDATE"]}
            ]
        }));
        let cfg = build(&p, &params(true));
        assert_eq!(cfg.metadata.name.as_deref(), Some("histor-prod-apps"));
        let labels = cfg.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels[MANAGED_BY_LABEL], "histor");
        assert_eq!(labels[POLICY_LABEL], "prod-apps");
        let owner = &cfg.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "TrackingPolicy");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));

        let wh = &cfg.webhooks.as_ref().expect("webhooks")[0];
        assert_eq!(wh.name, "prod-apps.histor.dev");
        let rules = wh.rules.as_ref().expect("rules");
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["deployments".to_string(), "deployments/scale".to_string()][..])
        );
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(
                &[
                    "CREATE".to_string(),
                    "UPDATE".to_string(),
                    "DELETE".to_string()
                ][..]
            )
        );
        assert_eq!(
            rules[0].api_versions.as_deref(),
            Some(&["*".to_string()][..])
        );
        assert_eq!(rules[0].scope.as_deref(), Some("*"));
        assert_eq!(
            rules[1].operations.as_deref(),
            Some(&["UPDATE".to_string()][..])
        );
        assert_eq!(wh.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(wh.timeout_seconds, Some(2));
        assert_eq!(wh.side_effects, "NoneOnDryRun");
        assert_eq!(wh.match_policy.as_deref(), Some("Equivalent"));
        assert_eq!(wh.admission_review_versions, vec!["v1".to_string()]);
        let svc = wh.client_config.service.as_ref().expect("service");
        assert_eq!(
            (
                svc.namespace.as_str(),
                svc.name.as_str(),
                svc.port,
                svc.path.as_deref()
            ),
            (
                "histor-system",
                "histor",
                Some(443),
                Some("/admit/prod-apps")
            )
        );
        assert_eq!(wh.client_config.ca_bundle, Some(ByteString(b"CA".to_vec())));
    }

    #[test]
    fn url_mode_and_cert_manager_annotation() {
        let p =
            policy(json!({"resources": [{"apiGroups": ["apps"], "resources": ["deployments"]}]}));
        let mut prm = params(false);
        prm.client = WebhookClient::Url("https://127.0.0.1:8443/".into());
        prm.ca_bundle = None;
        prm.cert_manager_certificate = Some("histor-system/histor-webhook".into());
        let cfg = build(&p, &prm);
        let wh = &cfg.webhooks.as_ref().expect("webhooks")[0];
        assert_eq!(
            wh.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/admit/prod-apps")
        );
        assert!(wh.client_config.service.is_none());
        assert!(wh.client_config.ca_bundle.is_none());
        assert_eq!(
            cfg.metadata.annotations.as_ref().expect("annotations")[CERT_MANAGER_INJECT_ANNOTATION],
            "histor-system/histor-webhook"
        );
        assert_eq!(
            prm.client.subject_alt_names(),
            vec!["127.0.0.1".to_string()]
        );
    }

    #[test]
    fn namespace_push_down_exact_names_only_and_operator_namespace_always_out() {
        let mut p =
            policy(json!({"resources": [{"apiGroups": ["apps"], "resources": ["deployments"]}]}));
        p.spec.namespaces = Some(NamespaceFilter {
            include: vec!["prod".into(), "staging".into()],
            exclude: vec!["kube-*".into(), "legacy".into()],
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("team".into(), "a".into())])),
                match_expressions: None,
            }),
        });
        let cfg = build(&p, &params(true));
        let sel = cfg.webhooks.as_ref().expect("webhooks")[0]
            .namespace_selector
            .clone()
            .expect("selector");
        assert_eq!(sel.match_labels.as_ref().expect("labels")["team"], "a");
        let exprs = sel.match_expressions.expect("expressions");
        assert_eq!(exprs.len(), 2);
        assert_eq!(exprs[0].key, "kubernetes.io/metadata.name");
        assert_eq!(exprs[0].operator, "In");
        assert_eq!(exprs[0].values, Some(vec!["prod".into(), "staging".into()]));
        assert_eq!(exprs[1].operator, "NotIn");
        // the glob stays in-process; the exact name and the operator's namespace are pushed down
        assert_eq!(
            exprs[1].values,
            Some(vec!["histor-system".into(), "legacy".into()])
        );

        // one include glob: no include push-down at all
        p.spec.namespaces = Some(NamespaceFilter {
            include: vec!["prod".into(), "prod-*".into()],
            ..NamespaceFilter::default()
        });
        let cfg = build(&p, &params(true));
        let exprs = cfg.webhooks.as_ref().expect("webhooks")[0]
            .namespace_selector
            .clone()
            .expect("selector")
            .match_expressions
            .expect("expressions");
        assert_eq!(exprs.len(), 1);
        assert_eq!(exprs[0].operator, "NotIn");
        assert_eq!(exprs[0].values, Some(vec!["histor-system".into()]));
    }

    #[test]
    fn match_conditions_only_when_supported() {
        let p =
            policy(json!({"resources": [{"apiGroups": ["apps"], "resources": ["deployments"]}]}));
        let cfg = build(&p, &params(false));
        assert!(
            cfg.webhooks.as_ref().expect("webhooks")[0]
                .match_conditions
                .is_none()
        );
        let cfg = build(&p, &params(true));
        let conds = cfg.webhooks.as_ref().expect("webhooks")[0]
            .match_conditions
            .clone()
            .expect("conditions");
        assert_eq!(conds[0].name, "exclude-histor-operator");
        assert_eq!(
            conds[0].expression,
            "request.userInfo.username != 'system:serviceaccount:histor-system:histor'"
        );
        assert_eq!(conds[1].name, "exclude-apiserver-churn");
        assert!(conds[1].expression.contains("'leases'"));
        assert!(conds[1].expression.contains("'endpointslices'"));
    }

    #[test]
    fn churn_exclusion_drops_resources_the_policy_names() {
        let p = policy(json!({"resources": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]},
            {"apiGroups": [""], "resources": ["endpoints"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"]}
        ]}));
        let cfg = build(&p, &params(true));
        let conds = cfg.webhooks.as_ref().expect("webhooks")[0]
            .match_conditions
            .clone()
            .expect("conditions");
        assert!(conds.iter().all(|c| c.name != "exclude-apiserver-churn"));

        let p = policy(
            json!({"resources": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"]}]}),
        );
        let cfg = build(&p, &params(true));
        let conds = cfg.webhooks.as_ref().expect("webhooks")[0]
            .match_conditions
            .clone()
            .expect("conditions");
        let churn = conds
            .iter()
            .find(|c| c.name == "exclude-apiserver-churn")
            .expect("churn condition");
        assert!(!churn.expression.contains("'leases'"));
        assert!(churn.expression.contains("'endpoints'"));
    }

    #[test]
    fn user_globs_become_cel() {
        let mut p = policy(json!({"resources": [{"apiGroups": ["*"], "resources": ["*"]}]}));
        p.spec.users = Some(UserFilter {
            include: vec!["alice".into(), "team-*".into()],
            exclude: vec![
                "system:serviceaccount:kube-system:*".into(),
                "*@robots.example.com".into(),
                "ci-*-bot".into(),
            ],
            exclude_groups: vec!["system:nodes".into()],
        });
        let cfg = build(&p, &params(true));
        let conds = cfg.webhooks.as_ref().expect("webhooks")[0]
            .match_conditions
            .clone()
            .expect("conditions");
        let by_name = |n: &str| {
            conds
                .iter()
                .find(|c| c.name == n)
                .unwrap_or_else(|| panic!("no condition {n}"))
                .expression
                .clone()
        };
        assert_eq!(
            by_name("include-users"),
            "request.userInfo.username == 'alice' || request.userInfo.username.startsWith('team-')"
        );
        assert_eq!(
            by_name("exclude-users"),
            "!(request.userInfo.username.startsWith('system:serviceaccount:kube-system:') \
             || request.userInfo.username.endsWith('@robots.example.com') \
             || request.userInfo.username.matches('^ci-.*-bot$'))"
        );
        assert_eq!(
            by_name("exclude-groups"),
            "!has(request.userInfo.groups) || !request.userInfo.groups.exists(g, g == 'system:nodes')"
        );
        assert!(conds.len() <= MAX_MATCH_CONDITIONS);
    }

    #[test]
    fn glob_translation_edge_cases() {
        assert_eq!(glob_to_cel("u", "*").as_deref(), Some("true"));
        assert_eq!(
            glob_to_cel("u", "a.b?").as_deref(),
            Some("u.matches('^a\\\\.b.$')")
        );
        assert_eq!(
            glob_to_cel("u", "o'brien").as_deref(),
            Some("u == 'o\\'brien'")
        );
        assert_eq!(glob_to_cel("u", "[ab]*"), None);
        // an untranslatable include leaves the whole list to the in-process filter
        assert_eq!(any_glob("u", &["a".into(), "{b,c}".into()]), None);
    }

    #[test]
    fn object_selector_and_webhook_settings_pass_through() {
        let mut p = policy(json!({
            "resources": [{"apiGroups": ["apps"], "resources": ["deployments"]}],
            "webhook": {"failurePolicy": "Fail", "timeoutSeconds": 5}
        }));
        p.spec.object_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("tracked".into(), "yes".into())])),
            match_expressions: None,
        });
        let _ = ResourceRule::default();
        let cfg = build(&p, &params(true));
        let wh = &cfg.webhooks.as_ref().expect("webhooks")[0];
        assert_eq!(wh.object_selector, p.spec.object_selector);
        assert_eq!(wh.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(wh.timeout_seconds, Some(5));
    }
}
