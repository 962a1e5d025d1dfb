//! TYPE as kubectl accepts it (`deploy`, `deployment`, `deployments`, `deployments.apps`,
//! `Deployment`, `deployment.v1.apps`, CRD kinds and short names) resolved against the
//! apiserver's discovery documents, or, without an apiserver (`--server` mode), against a small
//! built-in table of the usual short names.
//!
//! Pure: discovery documents in, a resource out. Fetching them is [`super::client`]'s job.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

/// A resource type, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource name (`deployments`).
    pub plural: String,
    /// Kind (`Deployment`); empty when not known (unresolved pass-through in `--server` mode).
    pub kind: String,
    /// Whether objects live in namespaces; `None` when not known.
    pub namespaced: Option<bool>,
}

impl ResourceType {
    /// What the query API's `kind` parameter gets: `deployments.apps`, or `configmaps`.
    pub fn query_kind(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// How kubectl names the type in messages: `deployment.apps`, `configmap`.
    pub fn display(&self) -> String {
        let singular = if self.kind.is_empty() {
            self.plural.clone()
        } else {
            self.kind.to_lowercase()
        };
        if self.group.is_empty() {
            singular
        } else {
            format!("{singular}.{}", self.group)
        }
    }
}

/// Why TYPE did not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing in discovery is called that.
    #[error("the server doesn't have a resource type \"{0}\"")]
    Unknown(String),
}

/// One resource of one discovery document, flattened.
struct Candidate<'a> {
    group: &'a str,
    version: &'a str,
    plural: &'a str,
    singular: &'a str,
    kind: &'a str,
    short_names: &'a [String],
    namespaced: bool,
}

/// Resolves `input` against discovery documents (`/api/v1` and each group's preferred version),
/// as kubectl does: a `plural.version.group` or `plural.group` form first, then plural, singular,
/// short names and kind, case-insensitively. Groups listed earlier win ties (pass the core
/// group first, then `/apis` order, as kubectl's priority does).
pub fn resolve(input: &str, lists: &[APIResourceList]) -> Result<ResourceType, ResolveError> {
    let candidates: Vec<Candidate<'_>> = lists.iter().flat_map(candidates).collect();
    let lower = input.to_lowercase();
    let names = |c: &Candidate<'_>| -> bool {
        c.plural == lower
            || c.singular.eq_ignore_ascii_case(&lower)
            || c.kind.eq_ignore_ascii_case(&lower)
            || c.short_names.iter().any(|s| s.eq_ignore_ascii_case(&lower))
    };
    // `name.group` and `name.version.group`: the split is ambiguous (groups contain dots), so try
    // every split point, longest name first.
    let qualified = lower
        .char_indices()
        .filter(|(_, c)| *c == '.')
        .find_map(|(i, _)| {
            let (name, rest) = (&lower[..i], &lower[i + 1..]);
            candidates.iter().find(|c| {
                let matches_name = c.plural == name
                    || c.singular.eq_ignore_ascii_case(name)
                    || c.kind.eq_ignore_ascii_case(name)
                    || c.short_names.iter().any(|s| s.eq_ignore_ascii_case(name));
                let in_group = rest == c.group
                    || rest
                        .split_once('.')
                        .is_some_and(|(v, g)| v == c.version && g == c.group)
                    || (c.group.is_empty() && rest == c.version);
                matches_name && in_group
            })
        });
    // Exact plural matches beat everything else, as in kubectl's RESTMapper.
    let found = qualified
        .or_else(|| candidates.iter().find(|c| c.plural == lower))
        .or_else(|| candidates.iter().find(|c| names(c)));
    found
        .map(|c| ResourceType {
            group: c.group.to_owned(),
            plural: c.plural.to_owned(),
            kind: c.kind.to_owned(),
            namespaced: Some(c.namespaced),
        })
        .ok_or_else(|| ResolveError::Unknown(input.to_owned()))
}

fn candidates(list: &APIResourceList) -> impl Iterator<Item = Candidate<'_>> {
    let (group, version) = match list.group_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", list.group_version.as_str()),
    };
    list.resources
        .iter()
        // Subresources (`deployments/scale`) are not types one names on the command line.
        .filter(|r| !r.name.contains('/'))
        .map(move |r| Candidate {
            group: r.group.as_deref().unwrap_or(group),
            version: r.version.as_deref().unwrap_or(version),
            plural: &r.name,
            singular: &r.singular_name,
            kind: &r.kind,
            short_names: r.short_names.as_deref().unwrap_or(&[]),
            namespaced: r.namespaced,
        })
}

/// Built-in resources for `--server` mode, where there is no discovery: `(short names, singular,
/// plural, group, kind, namespaced)`.
/// One built-in type: `(short names, singular, plural, group, kind, namespaced)`.
type Builtin = (
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

#[rustfmt::skip]
const BUILTIN: &[Builtin] = &[
    (&["cm"], "configmap", "configmaps", "", "ConfigMap", true),
    (&["cj"], "cronjob", "cronjobs", "batch", "CronJob", true),
    (&["crd", "crds"], "customresourcedefinition", "customresourcedefinitions", "apiextensions.k8s.io", "CustomResourceDefinition", false),
    (&["deploy"], "deployment", "deployments", "apps", "Deployment", true),
    (&["ds"], "daemonset", "daemonsets", "apps", "DaemonSet", true),
    (&["ep"], "endpoints", "endpoints", "", "Endpoints", true),
    (&["hpa"], "horizontalpodautoscaler", "horizontalpodautoscalers", "autoscaling", "HorizontalPodAutoscaler", true),
    (&["ing"], "ingress", "ingresses", "networking.k8s.io", "Ingress", true),
    (&[], "job", "jobs", "batch", "Job", true),
    (&["netpol"], "networkpolicy", "networkpolicies", "networking.k8s.io", "NetworkPolicy", true),
    (&["no"], "node", "nodes", "", "Node", false),
    (&["ns"], "namespace", "namespaces", "", "Namespace", false),
    (&["pdb"], "poddisruptionbudget", "poddisruptionbudgets", "policy", "PodDisruptionBudget", true),
    (&["po"], "pod", "pods", "", "Pod", true),
    (&["pv"], "persistentvolume", "persistentvolumes", "", "PersistentVolume", false),
    (&["pvc"], "persistentvolumeclaim", "persistentvolumeclaims", "", "PersistentVolumeClaim", true),
    (&["rs"], "replicaset", "replicasets", "apps", "ReplicaSet", true),
    (&[], "role", "roles", "rbac.authorization.k8s.io", "Role", true),
    (&[], "rolebinding", "rolebindings", "rbac.authorization.k8s.io", "RoleBinding", true),
    (&[], "clusterrole", "clusterroles", "rbac.authorization.k8s.io", "ClusterRole", false),
    (&[], "clusterrolebinding", "clusterrolebindings", "rbac.authorization.k8s.io", "ClusterRoleBinding", false),
    (&["sa"], "serviceaccount", "serviceaccounts", "", "ServiceAccount", true),
    (&[], "secret", "secrets", "", "Secret", true),
    (&["sts"], "statefulset", "statefulsets", "apps", "StatefulSet", true),
    (&["svc"], "service", "services", "", "Service", true),
    (&["sc"], "storageclass", "storageclasses", "storage.k8s.io", "StorageClass", false),
];

/// Resolution without discovery (`--server` mode): the built-in table above, else TYPE passed
/// through unchanged (the query server accepts kinds, plurals and `plural.group` itself).
pub fn resolve_offline(input: &str) -> ResourceType {
    let lower = input.to_lowercase();
    let builtin = BUILTIN
        .iter()
        .find(|(short, singular, plural, group, kind, _)| {
            short.contains(&lower.as_str())
                || *singular == lower
                || *plural == lower
                || kind.eq_ignore_ascii_case(&lower)
                || (!group.is_empty() && lower == format!("{plural}.{group}"))
        });
    match builtin {
        Some((_, _, plural, group, kind, namespaced)) => ResourceType {
            group: (*group).to_owned(),
            plural: (*plural).to_owned(),
            kind: (*kind).to_owned(),
            namespaced: Some(*namespaced),
        },
        None => ResourceType {
            group: String::new(),
            plural: input.to_owned(),
            kind: String::new(),
            namespaced: None,
        },
    }
}
