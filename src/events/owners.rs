//! Who owns an object: the owners it names in `metadata.ownerReferences`, and the chain up from
//! an object an Event regards (Pod → ReplicaSet → Deployment), so that a Deployment's timeline
//! holds the Events of its ReplicaSets and Pods. Pure: the caller says how an owner's own
//! object is found (the store holds the objects histor tracks); this module only reads
//! references and walks them.

use super::ObjectRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde::Deserialize as _;
use serde_json::Value;

/// Most owners taken from one object.
pub const MAX_OWNERS: usize = 4;

/// Most steps [`chain`] takes up from the regarded object (a Pod's Deployment is two).
pub const MAX_DEPTH: usize = 4;

/// The owners `object` names, as references in its namespace (owner references name no
/// namespace: a namespaced object's owners are in its namespace or cluster-scoped, and the
/// latter are then looked up, and not found, in that namespace). The managing controller comes
/// first, the rest in the order given; references that are not owner references are skipped.
pub fn owners_of(object: &Value) -> Vec<ObjectRef> {
    let namespace = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .map(str::to_owned);
    let Some(refs) = object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut owners: Vec<(bool, ObjectRef)> = refs
        .iter()
        .filter_map(|r| OwnerReference::deserialize(r).ok())
        .filter(|r| !r.kind.is_empty() && !r.name.is_empty())
        .map(|r| {
            let controller = r.controller == Some(true);
            let owner = ObjectRef {
                api_version: r.api_version,
                kind: r.kind,
                namespace: namespace.clone(),
                name: r.name,
                uid: Some(r.uid).filter(|uid| !uid.is_empty()),
                field_path: None,
            };
            (controller, owner)
        })
        .collect();
    // Stable: among controllers and among the rest, the order the object gives.
    owners.sort_by_key(|(controller, _)| !controller);
    owners
        .into_iter()
        .map(|(_, o)| o)
        .take(MAX_OWNERS)
        .collect()
}

/// The owner chain up from `regarding`, nearest first, following each object's first owner
/// (its controller when it has one) for at most [`MAX_DEPTH`] steps; `owners` gives an
/// object's owners, empty when it is not known. A cycle (which the garbage collector would
/// resolve, but a hostile writer can create) ends the chain.
pub fn chain(
    regarding: &ObjectRef,
    mut owners: impl FnMut(&ObjectRef) -> Vec<ObjectRef>,
) -> Vec<ObjectRef> {
    let mut out: Vec<ObjectRef> = Vec::new();
    let mut at = regarding.clone();
    while out.len() < MAX_DEPTH {
        let Some(next) = owners(&at).into_iter().next() else {
            break;
        };
        let seen = |r: &ObjectRef| same_object(r, &next);
        if same_object(regarding, &next) || out.iter().any(seen) {
            break;
        }
        out.push(next.clone());
        at = next;
    }
    out
}

/// True when `a` and `b` name one object: the same uid when both have one, else the same
/// kind, namespace and name.
fn same_object(a: &ObjectRef, b: &ObjectRef) -> bool {
    match (&a.uid, &b.uid) {
        (Some(x), Some(y)) => x == y,
        _ => a.kind == b.kind && a.namespace == b.namespace && a.name == b.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(owners: Value) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "api-7d4b9c-x2k", "namespace": "shop", "ownerReferences": owners},
        })
    }

    fn reference(kind: &str, name: &str, uid: &str) -> ObjectRef {
        ObjectRef {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespace: Some("shop".into()),
            name: name.into(),
            uid: Some(uid.into()),
            field_path: None,
        }
    }

    #[test]
    fn the_controller_comes_first_in_the_objects_namespace() {
        let object = pod(json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": "u-cm"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d4b9c", "uid": "u-rs",
             "controller": true, "blockOwnerDeletion": true},
        ]));
        let owners = owners_of(&object);
        assert_eq!(owners.len(), 2);
        assert_eq!(owners[0], reference("ReplicaSet", "api-7d4b9c", "u-rs"));
        assert_eq!(owners[1].kind, "ConfigMap");
        assert_eq!(owners[1].namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn no_references_or_broken_ones_give_no_owners() {
        assert!(owners_of(&json!({"metadata": {"name": "x"}})).is_empty());
        assert!(owners_of(&json!("not an object")).is_empty());
        let broken =
            pod(json!([{"kind": 7}, {"apiVersion": "v1", "kind": "", "name": "n", "uid": "u"}]));
        assert!(owners_of(&broken).is_empty());
    }

    #[test]
    fn a_pods_chain_reaches_its_deployment() {
        let pod = reference("Pod", "api-7d4b9c-x2k", "u-pod");
        let rs = reference("ReplicaSet", "api-7d4b9c", "u-rs");
        let deploy = reference("Deployment", "api", "u-deploy");
        let (r, d) = (rs.clone(), deploy.clone());
        let chain = chain(&pod, move |o| match o.name.as_str() {
            "api-7d4b9c-x2k" => vec![r.clone()],
            "api-7d4b9c" => vec![d.clone()],
            _ => vec![],
        });
        assert_eq!(chain, vec![rs, deploy]);
    }

    #[test]
    fn a_cycle_or_a_long_chain_ends() {
        let a = reference("Thing", "a", "u-a");
        let b = reference("Thing", "b", "u-b");
        let (a2, b2) = (a.clone(), b.clone());
        let cycle = chain(&a, move |o| {
            if o.name == "a" {
                vec![b2.clone()]
            } else {
                vec![a2.clone()]
            }
        });
        assert_eq!(cycle, vec![b]);
        let long = chain(&a, |o| {
            vec![reference(
                "Thing",
                &format!("{}x", o.name),
                &format!("u-{}x", o.name),
            )]
        });
        assert_eq!(long.len(), MAX_DEPTH);
    }
}
