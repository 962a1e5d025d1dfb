//! From one audit event to the endpoint it called (operationId, group, version, resource,
//! subresource, verb, level, deprecation) and the client that called it (user or service
//! account, impersonator, user agent product). Pure.

use super::event::AuditEvent;
use super::openapi::{EndpointIndex, group_version_prefix};
use serde::{Deserialize, Serialize};

/// Annotation the apiserver sets on requests to a deprecated API version.
pub const DEPRECATED_ANNOTATION: &str = "k8s.io/deprecated";
/// Annotation the apiserver sets, beside [`DEPRECATED_ANNOTATION`], when the version has a
/// planned removal: the release (such as `1.34`) that no longer serves it.
pub const REMOVED_RELEASE_ANNOTATION: &str = "k8s.io/removed-release";

/// Longest user-agent product kept; the header is the client's to choose.
const MAX_AGENT_CHARS: usize = 64;

/// An API version's stability, read from its name as Kubernetes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Level {
    /// `v1`, `v2`.
    Stable,
    /// `v1beta1`.
    Beta,
    /// `v1alpha1`.
    Alpha,
    /// Non-resource paths and versions named otherwise.
    Other,
}

impl Level {
    /// `v1` → stable, `v2beta3` → beta, `v1alpha1` → alpha, anything else → other.
    pub fn of_version(version: &str) -> Level {
        let Some(rest) = version.strip_prefix('v') else {
            return Level::Other;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Level::Other;
        }
        let (major, rest) = rest.split_at(digits);
        if major.starts_with('0') {
            return Level::Other;
        }
        let numbered = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match rest {
            "" => Level::Stable,
            r if r.strip_prefix("beta").is_some_and(numbered) => Level::Beta,
            r if r.strip_prefix("alpha").is_some_and(numbered) => Level::Alpha,
            _ => Level::Other,
        }
    }

    /// A short, fixed label.
    pub fn label(self) -> &'static str {
        match self {
            Level::Stable => "stable",
            Level::Beta => "beta",
            Level::Alpha => "alpha",
            Level::Other => "other",
        }
    }
}

/// The endpoint one request called.
/// Ordered by group, resource, version, subresource, path, then verb: the order reports list
/// endpoints in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// API group, empty for the core group.
    pub group: String,
    /// Plural resource name; empty for non-resource requests.
    pub resource: String,
    /// API version, such as `v1beta1`; empty for non-resource requests.
    pub version: String,
    /// Such as `status` or `scale`.
    pub subresource: Option<String>,
    /// For non-resource requests: the path (the document's template when mapped), no query.
    pub path: Option<String>,
    /// The audit verb: get, list, watch, create, update, patch, delete, deletecollection; for
    /// non-resource requests the lower-case HTTP method.
    pub verb: String,
    /// The OpenAPI operationId, such as `patchAppsV1NamespacedDeployment`; `None` without a
    /// document.
    pub operation_id: Option<String>,
    /// Stability of the version.
    pub level: Level,
    /// The apiserver marked the request as calling a deprecated API.
    pub deprecated: bool,
    /// The release that removes this API, as the apiserver announced it.
    pub removed_release: Option<String>,
}

impl Endpoint {
    /// `deployments.apps/v1/scale`, `configmaps/v1`, or the path of a non-resource request.
    pub fn api(&self) -> String {
        if let Some(path) = &self.path {
            return path.clone();
        }
        let mut s = self.resource.clone();
        if !self.group.is_empty() {
            s.push('.');
            s.push_str(&self.group);
        }
        s.push('/');
        s.push_str(&self.version);
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        s
    }
}

/// Why a request was counted without an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Unmapped {
    /// A non-resource URL (no objectRef) the document does not list, such as `/healthz`.
    NonResourceNotInSpec,
    /// A group version the document does not serve: an aggregated API that was down when the
    /// document was read, a CRD added later, a typo.
    UnknownGroupVersion,
    /// A served group version, but no path of the document matches (a resource or subresource
    /// it does not publish).
    UnknownResource,
    /// A verb that is neither a Kubernetes verb nor an HTTP method.
    UnknownVerb,
}

impl Unmapped {
    /// A short, fixed label.
    pub fn label(self) -> &'static str {
        match self {
            Unmapped::NonResourceNotInSpec => "non_resource_not_in_spec",
            Unmapped::UnknownGroupVersion => "unknown_group_version",
            Unmapped::UnknownResource => "unknown_resource",
            Unmapped::UnknownVerb => "unknown_verb",
        }
    }
}

/// The HTTP method a verb is served by. Non-resource requests carry the method itself.
fn method(verb: &str) -> Option<&'static str> {
    Some(match verb {
        "get" | "list" | "watch" => "GET",
        "create" | "post" => "POST",
        "update" | "put" => "PUT",
        "patch" => "PATCH",
        "delete" | "deletecollection" => "DELETE",
        "head" => "HEAD",
        "options" => "OPTIONS",
        _ => return None,
    })
}

/// The endpoint `event` called: operationId from `index` when given, the rest from the event's
/// objectRef (resource requests) or path (non-resource requests).
pub fn map(event: &AuditEvent, index: Option<&EndpointIndex>) -> Result<Endpoint, Unmapped> {
    let method = method(&event.verb).ok_or(Unmapped::UnknownVerb)?;
    let path = event
        .request_uri
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let deprecated = event.annotation(DEPRECATED_ANNOTATION) == Some("true");
    let removed_release = event
        .annotation(REMOVED_RELEASE_ANNOTATION)
        .filter(|r| !r.is_empty())
        .map(str::to_string);
    let Some(object) = &event.object_ref else {
        let (operation_id, path) = match index {
            None => (None, path.trim_end_matches('/').to_string()),
            Some(index) => {
                let op = index
                    .lookup(method, path)
                    .ok_or(Unmapped::NonResourceNotInSpec)?;
                (Some(op.operation_id.clone()), op.template.clone())
            }
        };
        return Ok(Endpoint {
            operation_id,
            verb: event.verb.clone(),
            group: String::new(),
            version: String::new(),
            resource: String::new(),
            subresource: None,
            path: Some(if path.is_empty() { "/".into() } else { path }),
            level: Level::Other,
            deprecated,
            removed_release,
        });
    };
    let operation_id = match index {
        None => None,
        Some(index) => Some(resource_operation(index, &event.verb, method, path)?),
    };
    Ok(Endpoint {
        operation_id,
        verb: event.verb.clone(),
        group: object.api_group.clone(),
        version: object.api_version.clone(),
        resource: object.resource.clone(),
        subresource: object.subresource.clone().filter(|s| !s.is_empty()),
        path: None,
        level: Level::of_version(&object.api_version),
        deprecated,
        removed_release,
    })
}

/// A watch is served on the collection or item path with `?watch=true` (what clients send
/// today) and on the legacy `/watch/` paths; the document lists watch operationIds only under
/// the latter, so a watch is looked up there first, then as the list or get it rides on.
fn resource_operation(
    index: &EndpointIndex,
    verb: &str,
    method: &str,
    path: &str,
) -> Result<String, Unmapped> {
    if verb == "watch"
        && let Some(gv) = group_version_prefix(path)
    {
        let rest = &path[gv.len()..];
        if !rest.starts_with("/watch/") {
            let watch_path = format!("{gv}/watch{rest}");
            if let Some(op) = index.lookup(method, &watch_path) {
                return Ok(op.operation_id.clone());
            }
        }
    }
    match index.lookup(method, path) {
        Some(op) => Ok(op.operation_id.clone()),
        None if index.serves_group_version_of(path) => Err(Unmapped::UnknownResource),
        None => Err(Unmapped::UnknownGroupVersion),
    }
}

/// What kind of identity made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// A person or an external identity.
    User,
    /// `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount,
    /// `system:node:<name>`.
    Node,
    /// The apiserver, controllers and other `system:` identities.
    System,
}

impl ClientKind {
    /// Reads the kind from a username.
    pub fn of(username: &str) -> ClientKind {
        if username
            .strip_prefix("system:serviceaccount:")
            .is_some_and(|rest| rest.split(':').count() == 2)
        {
            ClientKind::ServiceAccount
        } else if username.starts_with("system:node:") {
            ClientKind::Node
        } else if username.starts_with("system:") {
            ClientKind::System
        } else {
            ClientKind::User
        }
    }

    /// A short, fixed label.
    pub fn label(self) -> &'static str {
        match self {
            ClientKind::User => "user",
            ClientKind::ServiceAccount => "serviceaccount",
            ClientKind::Node => "node",
            ClientKind::System => "system",
        }
    }
}

/// Who called: the identity the request acted as, and with what program.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// The username the request acted as: the impersonated user when there was one.
    pub user: String,
    /// What kind of identity `user` is.
    pub kind: ClientKind,
    /// The authenticated user that impersonated `user`.
    pub impersonator: Option<String>,
    /// The user agent's product, without version or platform (`kubectl`).
    pub agent: String,
}

impl Client {
    /// The client of `event`.
    pub fn of(event: &AuditEvent) -> Client {
        let (user, impersonator) = match &event.impersonated_user {
            Some(as_user) => (as_user.username.clone(), Some(event.user.username.clone())),
            None => (event.user.username.clone(), None),
        };
        Client {
            kind: ClientKind::of(&user),
            user,
            impersonator,
            agent: agent_product(event.user_agent.as_deref().unwrap_or_default()),
        }
    }

    /// True when `name` is the user, or the impersonator, of this client.
    pub fn is(&self, name: &str) -> bool {
        self.user == name || self.impersonator.as_deref() == Some(name)
    }
}

/// The product of a User-Agent header, without version noise:
/// `kubectl/v1.32.0 (linux/amd64) kubernetes/abc` → `kubectl`, `kubectl.exe/v1.30.0 (windows/
/// amd64) …` → `kubectl`, `Go-http-client/1.1` → `Go-http-client`; `-` when there is none.
/// Cut to 64 characters: the header is whatever the client says.
pub fn agent_product(user_agent: &str) -> String {
    let product = user_agent
        .trim()
        .split(['/', ' '])
        .next()
        .unwrap_or_default();
    let product = product.strip_suffix(".exe").unwrap_or(product);
    if product.is_empty() {
        return "-".into();
    }
    product.chars().take(MAX_AGENT_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_from_version_names() {
        assert_eq!(Level::of_version("v1"), Level::Stable);
        assert_eq!(Level::of_version("v2"), Level::Stable);
        assert_eq!(Level::of_version("v1beta1"), Level::Beta);
        assert_eq!(Level::of_version("v2beta3"), Level::Beta);
        assert_eq!(Level::of_version("v1alpha1"), Level::Alpha);
        assert_eq!(Level::of_version("v1alpha"), Level::Other);
        assert_eq!(Level::of_version("v0"), Level::Other);
        assert_eq!(Level::of_version("version1"), Level::Other);
        assert_eq!(Level::of_version(""), Level::Other);
    }

    #[test]
    fn agent_products() {
        assert_eq!(
            agent_product("kubectl/v1.32.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(
            agent_product("kubectl.exe/v1.30.0 (windows/amd64) kubernetes/7c48c2b"),
            "kubectl"
        );
        assert_eq!(agent_product("Go-http-client/1.1"), "Go-http-client");
        assert_eq!(
            agent_product(
                "kube-controller-manager/v1.33.13 (linux/amd64) kubernetes/2df3632/system:serviceaccount:kube-system:deployment-controller"
            ),
            "kube-controller-manager"
        );
        assert_eq!(agent_product("curl"), "curl");
        assert_eq!(agent_product(""), "-");
        assert_eq!(agent_product(&"x".repeat(500)).len(), MAX_AGENT_CHARS);
    }

    #[test]
    fn client_kinds() {
        assert_eq!(
            ClientKind::of("system:serviceaccount:demo:deployer"),
            ClientKind::ServiceAccount
        );
        assert_eq!(
            ClientKind::of("system:serviceaccounts:demo"),
            ClientKind::System
        );
        assert_eq!(ClientKind::of("system:node:n1"), ClientKind::Node);
        assert_eq!(ClientKind::of("system:apiserver"), ClientKind::System);
        assert_eq!(ClientKind::of("alice"), ClientKind::User);
    }
}
