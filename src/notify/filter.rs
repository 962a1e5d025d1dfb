//! A sink's `when` filter: does an event go to this sink? Pure; depends on `crd` and `pipeline`
//! types only.

use crate::crd::NotifyFilter;
use crate::pipeline::ChangeEvent;
use globset::{Glob, GlobMatcher};

/// A [`NotifyFilter`] with its globs compiled.
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    operations: Vec<crate::crd::Operation>,
    users: Vec<GlobMatcher>,
    namespaces: Vec<GlobMatcher>,
    kinds: Vec<String>,
}

impl CompiledFilter {
    /// Compiles the globs; fails on a malformed one.
    pub fn new(f: &NotifyFilter) -> Result<Self, String> {
        let globs = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| {
                    Glob::new(p)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| format!("bad glob {p:?}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(CompiledFilter {
            operations: f.operations.clone(),
            users: globs(&f.users)?,
            namespaces: globs(&f.namespaces)?,
            kinds: f.kinds.iter().map(|k| k.to_ascii_lowercase()).collect(),
        })
    }

    /// True when the event passes every non-empty list of the filter.
    pub fn matches(&self, e: &ChangeEvent) -> bool {
        if !self.operations.is_empty() && !self.operations.contains(&e.operation) {
            return false;
        }
        if !self.users.is_empty() && !self.users.iter().any(|g| g.is_match(&e.user.username)) {
            return false;
        }
        if !self.namespaces.is_empty() {
            // A namespace filter speaks of namespaced objects: cluster-scoped ones never pass it.
            let Some(ns) = &e.namespace else {
                return false;
            };
            if !self.namespaces.iter().any(|g| g.is_match(ns)) {
                return false;
            }
        }
        if !self.kinds.is_empty() {
            // Accept what people type: the Kind (`Deployment`), the plural (`deployments`) or the
            // kubectl resource name (`deployments.apps`).
            let kind = e.kind.kind.to_ascii_lowercase();
            let plural = e.resource.resource.to_ascii_lowercase();
            let group_resource = e.resource.group_resource().to_ascii_lowercase();
            if !self
                .kinds
                .iter()
                .any(|k| *k == kind || *k == plural || *k == group_resource)
            {
                return false;
            }
        }
        true
    }
}

/// Convenience: does `event` pass `filter` (absent filter: everything passes)? A malformed glob
/// matches nothing, so a bad filter fails closed.
pub fn matches(filter: Option<&NotifyFilter>, event: &ChangeEvent) -> bool {
    match filter {
        None => true,
        Some(f) => CompiledFilter::new(f).is_ok_and(|c| c.matches(event)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Operation;
    use crate::notify::testutil::event;

    #[test]
    fn empty_filter_passes_everything() {
        let e = event("alice", Operation::Update, Some("demo"), "nginx");
        assert!(matches(None, &e));
        assert!(matches(Some(&NotifyFilter::default()), &e));
    }

    #[test]
    fn each_list_must_match() {
        let e = event("alice", Operation::Update, Some("prod-eu"), "nginx");
        let f = |ops: Vec<Operation>, users: &[&str], ns: &[&str], kinds: &[&str]| NotifyFilter {
            operations: ops,
            users: users.iter().map(|s| s.to_string()).collect(),
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
        };
        assert!(matches(
            Some(&f(vec![Operation::Update], &[], &[], &[])),
            &e
        ));
        assert!(!matches(
            Some(&f(vec![Operation::Delete], &[], &[], &[])),
            &e
        ));
        assert!(matches(Some(&f(vec![], &["al*"], &[], &[])), &e));
        assert!(!matches(Some(&f(vec![], &["bob"], &[], &[])), &e));
        assert!(matches(Some(&f(vec![], &[], &["prod-*"], &[])), &e));
        assert!(!matches(Some(&f(vec![], &[], &["dev-*"], &[])), &e));
        for k in [
            "Deployment",
            "deployments",
            "deployments.apps",
            "DEPLOYMENT",
        ] {
            assert!(matches(Some(&f(vec![], &[], &[], &[k])), &e), "{k}");
        }
        assert!(!matches(Some(&f(vec![], &[], &[], &["ConfigMap"])), &e));
        assert!(!matches(
            Some(&f(vec![Operation::Update], &["alice"], &["dev"], &[])),
            &e
        ));
    }

    #[test]
    fn cluster_scoped_events_fail_a_namespace_filter() {
        let e = event("alice", Operation::Create, None, "node-1");
        let f = NotifyFilter {
            namespaces: vec!["*".into()],
            ..Default::default()
        };
        assert!(!matches(Some(&f), &e));
    }

    #[test]
    fn bad_glob_fails_closed() {
        let e = event("alice", Operation::Update, Some("demo"), "nginx");
        let f = NotifyFilter {
            users: vec!["[".into()],
            ..Default::default()
        };
        assert!(CompiledFilter::new(&f).is_err());
        assert!(!matches(Some(&f), &e));
    }
}
