//! Size bounds on the strings of a review that histor stores or echoes, in one place. They are
//! Kubernetes' own limits (or, where Kubernetes has none, generous ones): the apiserver never sends
//! a review beyond them, so one that exceeds them comes from someone else, and storing it whole
//! would let any client that reaches the port fill the store and the dictionaries with megabytes per
//! request. Such a review is still answered `allowed` (histor never denies), but not recorded
//! ([`check`] names the field; the pipeline skips it as [`SkipReason::Oversized`]).
//!
//! Lengths are in bytes. Kubernetes counts characters, but the names it limits are ASCII (DNS
//! labels and subdomains), so for anything it accepts the two agree.
//!
//! Pure: depends on the review types only.
//!
//! [`SkipReason::Oversized`]: super::SkipReason::Oversized

use super::review::Request;
use serde_json::Value;

/// `request.uid`: a UUID (36 characters) from a real apiserver.
pub const MAX_REQUEST_UID: usize = 128;
/// `metadata.uid` of the object: a UUID too.
pub const MAX_OBJECT_UID: usize = 128;
/// Object names (and `generateName`): a DNS subdomain, the longest any kind allows (some allow 63).
pub const MAX_NAME: usize = 253;
/// Namespaces: a DNS label.
pub const MAX_NAMESPACE: usize = 63;
/// A label key's optional prefix (before `/`): a DNS subdomain.
pub const MAX_LABEL_PREFIX: usize = 253;
/// A label key's name part (after `/`, or the whole key).
pub const MAX_LABEL_NAME: usize = 63;
/// A label value.
pub const MAX_LABEL_VALUE: usize = 63;
/// API groups, versions, kinds, resources and subresources: DNS subdomains at most.
pub const MAX_RESOURCE_PART: usize = 253;
/// User names, user uids and group names. Kubernetes sets no limit; authenticators produce names
/// of tens of characters (OIDC `issuer#subject` ones run longer), so 1 KiB is far above any.
pub const MAX_USER_STRING: usize = 1024;
/// The AdmissionReview `apiVersion` echoed in an answer: a group (a DNS subdomain), `/`, a version.
pub const MAX_API_VERSION: usize = MAX_RESOURCE_PART + 1 + 63;

/// A field of a review beyond its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Oversized {
    /// Which field, as a short fixed label (`uid`, `name`, `label_value`, ...).
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The bound.
    pub limit: usize,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {} bytes, more than the {} allowed",
            self.field, self.len, self.limit
        )
    }
}

fn bounded(field: &'static str, s: &str, limit: usize) -> Result<(), Oversized> {
    if s.len() > limit {
        return Err(Oversized {
            field,
            len: s.len(),
            limit,
        });
    }
    Ok(())
}

/// Checks every bounded field of `req`; the first one over its bound is the error.
pub fn check(req: &Request) -> Result<(), Oversized> {
    bounded("uid", &req.uid, MAX_REQUEST_UID)?;
    bounded("name", &req.name, MAX_NAME)?;
    if let Some(ns) = &req.namespace {
        bounded("namespace", ns, MAX_NAMESPACE)?;
    }
    let user = &req.user;
    bounded("username", &user.username, MAX_USER_STRING)?;
    if let Some(uid) = &user.uid {
        bounded("user_uid", uid, MAX_USER_STRING)?;
    }
    for g in &user.groups {
        bounded("group", g, MAX_USER_STRING)?;
    }
    for part in [
        &req.kind.group,
        &req.kind.version,
        &req.kind.kind,
        &req.resource.group,
        &req.resource.version,
        &req.resource.resource,
    ] {
        bounded("resource", part, MAX_RESOURCE_PART)?;
    }
    if let Some(sub) = &req.resource.subresource {
        bounded("resource", sub, MAX_RESOURCE_PART)?;
    }
    for obj in [&req.object, &req.old_object].into_iter().flatten() {
        check_metadata(obj)?;
    }
    Ok(())
}

fn check_metadata(obj: &Value) -> Result<(), Oversized> {
    let Some(meta) = obj.get("metadata").and_then(Value::as_object) else {
        return Ok(());
    };
    let str_field = |key: &str| meta.get(key).and_then(Value::as_str);
    for (key, field, limit) in [
        ("name", "name", MAX_NAME),
        ("generateName", "name", MAX_NAME),
        ("namespace", "namespace", MAX_NAMESPACE),
        ("uid", "object_uid", MAX_OBJECT_UID),
    ] {
        if let Some(s) = str_field(key) {
            bounded(field, s, limit)?;
        }
    }
    if let Some(labels) = meta.get("labels").and_then(Value::as_object) {
        for (key, value) in labels {
            let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
            bounded("label_key", prefix, MAX_LABEL_PREFIX)?;
            bounded("label_key", name, MAX_LABEL_NAME)?;
            if let Some(v) = value.as_str() {
                bounded("label_value", v, MAX_LABEL_VALUE)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::testdata;
    use serde_json::json;

    #[test]
    fn every_recorded_review_is_within_bounds() {
        for (name, _) in testdata::FIXTURES {
            assert_eq!(check(&testdata::request(name)), Ok(()), "{name}");
        }
    }

    #[test]
    fn each_bound_is_checked_at_its_edge() {
        let field = |mutate: &dyn Fn(&mut Request)| {
            let mut req = testdata::request("update-deployment");
            mutate(&mut req);
            check(&req).err().map(|o| o.field)
        };
        let meta = |req: &mut Request| {
            req.object.as_mut().unwrap()["metadata"]
                .as_object_mut()
                .unwrap()
                .clone()
        };
        let set_meta = |req: &mut Request, key: &str, v: Value| {
            let mut m = meta(req);
            m.insert(key.into(), v);
            req.object.as_mut().unwrap()["metadata"] = Value::Object(m);
        };
        let x = |n: usize| "x".repeat(n);

        assert_eq!(field(&|r| r.uid = x(128)), None);
        assert_eq!(field(&|r| r.uid = x(129)), Some("uid"));
        assert_eq!(field(&|r| r.name = x(253)), None);
        assert_eq!(field(&|r| r.name = x(254)), Some("name"));
        assert_eq!(field(&|r| r.namespace = Some(x(63))), None);
        assert_eq!(field(&|r| r.namespace = Some(x(64))), Some("namespace"));
        assert_eq!(field(&|r| r.user.username = x(1024)), None);
        assert_eq!(field(&|r| r.user.username = x(1025)), Some("username"));
        assert_eq!(field(&|r| r.user.uid = Some(x(1025))), Some("user_uid"));
        assert_eq!(field(&|r| r.user.groups.push(x(1025))), Some("group"));
        assert_eq!(field(&|r| r.kind.kind = x(254)), Some("resource"));
        assert_eq!(
            field(&|r| r.resource.subresource = Some(x(254))),
            Some("resource")
        );
        assert_eq!(field(&|r| set_meta(r, "name", json!(x(254)))), Some("name"));
        assert_eq!(
            field(&|r| set_meta(r, "generateName", json!(x(254)))),
            Some("name")
        );
        assert_eq!(
            field(&|r| set_meta(r, "uid", json!(x(129)))),
            Some("object_uid")
        );
        let label = |k: String, v: String| {
            move |r: &mut Request| set_meta(r, "labels", json!({k.clone(): v.clone()}))
        };
        assert_eq!(field(&label(format!("{}/{}", x(253), x(63)), x(63))), None);
        assert_eq!(
            field(&label(format!("{}/{}", x(254), x(63)), x(63))),
            Some("label_key")
        );
        assert_eq!(field(&label(x(64), x(1))), Some("label_key"));
        assert_eq!(field(&label(x(1), x(64))), Some("label_value"));
        // The old object is checked too.
        assert_eq!(
            field(&|r| r.old_object.as_mut().unwrap()["metadata"]["name"] = json!(x(254))),
            Some("name")
        );
        let o = Oversized {
            field: "uid",
            len: 129,
            limit: 128,
        };
        assert_eq!(o.to_string(), "uid is 129 bytes, more than the 128 allowed");
    }
}
