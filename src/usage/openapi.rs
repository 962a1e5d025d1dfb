//! An index of the cluster's endpoints from its OpenAPI v2 document: (HTTP method, concrete
//! path) → operationId. Paths are matched segment by segment against the document's templates
//! (`/api/v1/namespaces/{namespace}/configmaps/{name}`), a literal segment winning over a
//! parameter, the way the apiserver's own routes resolve `/api/v1/namespaces/demo/status`
//! against `/api/v1/namespaces/{namespace}/{resource}`-shaped paths.

use crate::{Error, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One operation of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Such as `listCoreV1NamespacedConfigMap`.
    pub operation_id: String,
    /// The document's `x-kubernetes-action`: get, list, watch, watchlist, put, post, patch,
    /// delete, deletecollection, connect; empty for non-resource paths.
    pub action: String,
    /// The path template as written in the document, trailing slash removed.
    pub template: String,
}

/// The endpoints of one OpenAPI v2 document.
#[derive(Debug, Default)]
pub struct EndpointIndex {
    root: Node,
    /// `/api/v1`, `/apis/apps/v1`: the group versions the document serves, to tell an unknown
    /// group version from an unknown resource in a known one.
    group_versions: BTreeSet<String>,
    operations: usize,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<String, Node>,
    param: Option<Box<Node>>,
    /// By upper-case HTTP method.
    operations: BTreeMap<String, Operation>,
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    swagger: Option<String>,
    paths: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct RawOperation {
    #[serde(rename = "operationId")]
    operation_id: Option<String>,
    #[serde(rename = "x-kubernetes-action", default)]
    action: String,
}

const METHODS: [&str; 7] = ["get", "put", "post", "patch", "delete", "head", "options"];

impl EndpointIndex {
    /// Reads `/openapi/v2` as the apiserver serves it (JSON).
    pub fn from_v2(document: &[u8]) -> Result<Self> {
        let doc: Document = serde_json::from_slice(document)?;
        if doc.swagger.as_deref().is_none_or(|v| !v.starts_with("2.")) {
            return Err(Error::Usage(
                "not an OpenAPI v2 document (swagger: \"2.0\" expected; /openapi/v3 is not read yet)"
                    .into(),
            ));
        }
        let mut index = EndpointIndex::default();
        for (template, methods) in doc.paths {
            let template = template.trim_end_matches('/').to_string();
            for (method, value) in methods {
                if !METHODS.contains(&method.as_str()) {
                    continue; // `parameters` and vendor extensions
                }
                let Ok(raw) = serde_json::from_value::<RawOperation>(value) else {
                    continue;
                };
                let Some(operation_id) = raw.operation_id else {
                    continue;
                };
                index.insert(
                    &method.to_ascii_uppercase(),
                    Operation {
                        operation_id,
                        action: raw.action,
                        template: template.clone(),
                    },
                );
            }
        }
        Ok(index)
    }

    fn insert(&mut self, method: &str, op: Operation) {
        if let Some(gv) = group_version_prefix(&op.template) {
            self.group_versions.insert(gv.to_string());
        }
        let mut node = &mut self.root;
        for segment in segments(&op.template) {
            node = if segment.starts_with('{') && segment.ends_with('}') {
                node.param.get_or_insert_with(Default::default)
            } else {
                node.literal.entry(segment.to_string()).or_default()
            };
        }
        node.operations.insert(method.to_string(), op);
        self.operations += 1;
    }

    /// How many operations the document has.
    pub fn len(&self) -> usize {
        self.operations
    }

    /// True when the document had no operations.
    pub fn is_empty(&self) -> bool {
        self.operations == 0
    }

    /// The operation serving `method` (upper case) on the concrete `path` (no query).
    pub fn lookup(&self, method: &str, path: &str) -> Option<&Operation> {
        let segments: Vec<&str> = segments(path.trim_end_matches('/')).collect();
        find(&self.root, &segments, method)
    }

    /// True when the document serves the group version `path` is under (`/api/v1/...`,
    /// `/apis/<group>/<version>/...`).
    pub fn serves_group_version_of(&self, path: &str) -> bool {
        group_version_prefix(path).is_some_and(|gv| self.group_versions.contains(gv))
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// Depth-first, literal before parameter, so the most specific template wins.
fn find<'a>(node: &'a Node, rest: &[&str], method: &str) -> Option<&'a Operation> {
    let Some((first, rest)) = rest.split_first() else {
        return node.operations.get(method);
    };
    if let Some(found) = node.literal.get(*first).and_then(|n| find(n, rest, method)) {
        return Some(found);
    }
    node.param.as_deref().and_then(|n| find(n, rest, method))
}

/// `/api/v1` of `/api/v1/...`, `/apis/apps/v1` of `/apis/apps/v1/...`; `None` for `/apis/apps`
/// (a group's discovery document) and non-resource paths.
pub fn group_version_prefix(path: &str) -> Option<&str> {
    let n = if path.starts_with("/api/") {
        2
    } else if path.starts_with("/apis/") {
        3
    } else {
        return None;
    };
    let parts: Vec<&str> = path[1..].splitn(n + 1, '/').take(n).collect();
    if parts.len() < n || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>() + (n - 1);
    Some(&path[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"swagger":"2.0","paths":{
        "/api/v1/namespaces/{namespace}/configmaps/{name}":{"get":{"operationId":"readCoreV1NamespacedConfigMap","x-kubernetes-action":"get"},"parameters":[]},
        "/api/v1/namespaces/{name}/status":{"get":{"operationId":"readCoreV1NamespaceStatus","x-kubernetes-action":"get"}},
        "/api/v1/namespaces/{name}":{"get":{"operationId":"readCoreV1Namespace","x-kubernetes-action":"get"}},
        "/version/":{"get":{"operationId":"getCodeVersion"}}}}"#;

    #[test]
    fn literal_segments_win_over_parameters() {
        let index = EndpointIndex::from_v2(DOC.as_bytes()).unwrap();
        assert_eq!(index.len(), 4);
        let id = |m, p| index.lookup(m, p).map(|o| o.operation_id.as_str());
        assert_eq!(
            id("GET", "/api/v1/namespaces/status/configmaps/x"),
            Some("readCoreV1NamespacedConfigMap")
        );
        assert_eq!(
            id("GET", "/api/v1/namespaces/demo/status"),
            Some("readCoreV1NamespaceStatus")
        );
        assert_eq!(
            id("GET", "/api/v1/namespaces/demo"),
            Some("readCoreV1Namespace")
        );
        assert_eq!(id("GET", "/version"), Some("getCodeVersion"));
        assert_eq!(id("GET", "/version/"), Some("getCodeVersion"));
        assert_eq!(id("POST", "/version"), None);
        assert_eq!(id("GET", "/api/v1/namespaces/demo/configmaps"), None);
    }

    #[test]
    fn group_versions() {
        assert_eq!(group_version_prefix("/api/v1/pods"), Some("/api/v1"));
        assert_eq!(group_version_prefix("/api/v1"), Some("/api/v1"));
        assert_eq!(
            group_version_prefix("/apis/apps/v1/x"),
            Some("/apis/apps/v1")
        );
        assert_eq!(group_version_prefix("/apis/apps"), None);
        assert_eq!(group_version_prefix("/version"), None);
        let index = EndpointIndex::from_v2(DOC.as_bytes()).unwrap();
        assert!(index.serves_group_version_of("/api/v1/nodes"));
        assert!(!index.serves_group_version_of("/apis/example.com/v1/widgets"));
    }

    #[test]
    fn other_documents_are_refused() {
        assert!(EndpointIndex::from_v2(b"{}").is_err());
        assert!(
            EndpointIndex::from_v2(br#"{"openapi":"3.0.0","swagger":"3","paths":{}}"#).is_err()
        );
    }
}
