//! Query semantics every engine shares: page limits, the id range a query covers, filter
//! matching, kind aliases and page assembly. Pure: no I/O, no engine types. An engine picks the
//! candidates (its indexes); these functions decide what a page holds.

use super::{EventId, Page, Query, StoredEvent};
use crate::pipeline::{ChangeEvent, KindId, ResourceId};
use std::collections::{BTreeSet, HashMap};

/// Most results per query page.
pub const MAX_PAGE: usize = 1000;

/// Page size when a query asks for 0.
pub const DEFAULT_PAGE: usize = 100;

/// The page size a query gets: 0 means [`DEFAULT_PAGE`], more than [`MAX_PAGE`] means
/// [`MAX_PAGE`].
pub fn page_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    }
}

/// The ids `[lo, hi)` a query may return (`since`, `until` and `after` combined), `None` when
/// the range is empty.
pub fn id_range(q: &Query) -> Option<(EventId, EventId)> {
    let lo = q.since.map_or(0, |t| t.as_microsecond().max(0) as u64);
    let mut hi = q
        .until
        .map_or(u64::MAX, |t| t.as_microsecond().max(0) as u64);
    if let Some(after) = q.after {
        hi = hi.min(after);
    }
    (lo < hi).then_some((lo, hi))
}

/// Whether `e` passes every filter of `q` other than the id range. `kinds` is `q.kind`
/// resolved to group/resources (see [`KindAliases::resolve`]).
pub fn matches(q: &Query, kinds: Option<&BTreeSet<String>>, e: &ChangeEvent) -> bool {
    q.namespace
        .as_ref()
        .is_none_or(|ns| e.namespace.as_ref() == Some(ns))
        && q.name.as_ref().is_none_or(|n| &e.name == n)
        && q.uid
            .as_ref()
            .is_none_or(|u| e.object_uid.as_ref() == Some(u))
        && q.user.as_ref().is_none_or(|u| &e.user.username == u)
        && q.operation.is_none_or(|op| e.operation == op)
        && kinds.is_none_or(|set| set.contains(&e.resource.group_resource()))
        && q.state.is_none_or(|st| e.state == st)
}

/// The aliases a query may name a resource by: the kind, the resource, `resource.group`, and
/// for a named group `kind.group` and `group/kind`, all lower case.
pub fn aliases(res: &ResourceId, kind: &KindId) -> Vec<String> {
    let k = kind.kind.to_lowercase();
    let mut aliases = vec![
        k.clone(),
        res.resource.to_lowercase(),
        res.group_resource().to_lowercase(),
    ];
    if !kind.group.is_empty() {
        aliases.push(format!("{k}.{}", kind.group.to_lowercase()));
        aliases.push(format!("{}/{k}", kind.group.to_lowercase()));
    }
    aliases
}

/// Alias → the group/resources it names, as learnt from stored events.
#[derive(Clone, Debug, Default)]
pub struct KindAliases(HashMap<String, BTreeSet<String>>);

impl KindAliases {
    /// Records that `alias` names `group_resource`; true when that is new.
    pub fn insert(&mut self, alias: String, group_resource: &str) -> bool {
        self.0
            .entry(alias)
            .or_default()
            .insert(group_resource.to_owned())
    }

    /// Learns the aliases of a (non-subresource) event's resource; returns those that are new,
    /// for an engine that persists them.
    pub fn learn(&mut self, res: &ResourceId, kind: &KindId) -> Vec<String> {
        let gr = res.group_resource();
        aliases(res, kind)
            .into_iter()
            .filter(|a| self.insert(a.clone(), &gr))
            .collect()
    }

    /// The group/resources `kind` names: its learnt set, or `kind` itself (lower case) when it
    /// is no known alias.
    pub fn resolve(&self, kind: &str) -> BTreeSet<String> {
        let k = kind.to_lowercase();
        match self.0.get(&k) {
            Some(set) => set.clone(),
            None => BTreeSet::from([k]),
        }
    }
}

/// Collects one page from candidates offered newest first.
pub struct PageBuilder {
    limit: usize,
    events: Vec<StoredEvent>,
    more: bool,
}

impl PageBuilder {
    /// A page of at most `page_limit(limit)` events.
    pub fn new(limit: usize) -> PageBuilder {
        PageBuilder {
            limit: page_limit(limit),
            events: Vec::new(),
            more: false,
        }
    }

    /// Whether the page is complete: the caller stops offering. True once a matching event
    /// arrived past a full page (so `next` is only set when more exist).
    pub fn done(&self) -> bool {
        self.more
    }

    /// Offers the next matching event (older than every one before it).
    pub fn push(&mut self, e: StoredEvent) {
        if self.events.len() == self.limit {
            self.more = true;
        } else {
            self.events.push(e);
        }
    }

    /// The page: `next` is the oldest event's id when more matched.
    pub fn finish(self) -> Page {
        let next = if self.more {
            self.events.last().map(|e| e.id)
        } else {
            None
        };
        Page {
            events: self.events,
            next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Operation;
    use crate::pipeline::Actor;
    use jiff::Timestamp;

    fn deployment() -> ChangeEvent {
        ChangeEvent {
            request_uid: "r".into(),
            received_at: Timestamp::UNIX_EPOCH,
            policies: vec!["p".into()],
            operation: Operation::Update,
            user: Actor {
                username: "alice".into(),
                ..Actor::default()
            },
            resource: crate::pipeline::testdata::deployments(),
            kind: crate::pipeline::testdata::deployment_kind(),
            namespace: Some("prod".into()),
            name: "api".into(),
            object_uid: Some("u1".into()),
            changes: vec![],
            object: None,
            redacted: false,
            state: Default::default(),
            commit: None,
            inferred: None,
            audit: None,
        }
    }

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(page_limit(0), DEFAULT_PAGE);
        assert_eq!(page_limit(7), 7);
        assert_eq!(page_limit(5000), MAX_PAGE);
    }

    #[test]
    fn the_id_range_combines_since_until_and_after() {
        let at = |us| Some(Timestamp::from_microsecond(us).unwrap());
        let q = Query {
            since: at(10),
            until: at(100),
            after: Some(50),
            ..Query::default()
        };
        assert_eq!(id_range(&q), Some((10, 50)));
        let empty = Query {
            after: Some(10),
            ..q
        };
        assert_eq!(id_range(&empty), None);
        assert_eq!(id_range(&Query::default()), Some((0, u64::MAX)));
    }

    #[test]
    fn every_set_filter_must_match() {
        let e = deployment();
        let mut aliases = KindAliases::default();
        assert_eq!(aliases.learn(&e.resource, &e.kind).len(), 5);
        assert!(
            aliases.learn(&e.resource, &e.kind).is_empty(),
            "learnt once"
        );
        for kind in [
            "Deployment",
            "deployments",
            "deployments.apps",
            "deployment.apps",
            "apps/deployment",
        ] {
            let q = Query {
                kind: Some(kind.into()),
                namespace: Some("prod".into()),
                ..Query::default()
            };
            let kinds = aliases.resolve(kind);
            assert!(matches(&q, Some(&kinds), &e), "{kind}");
        }
        let unknown = aliases.resolve("deploy");
        assert!(!matches(&Query::default(), Some(&unknown), &e));
        let mut scale = e.clone();
        scale.resource.subresource = Some("scale".into());
        assert!(matches(
            &Query::default(),
            Some(&aliases.resolve("deployment")),
            &scale
        ));
        for q in [
            Query {
                namespace: Some("dev".into()),
                ..Query::default()
            },
            Query {
                user: Some("bob".into()),
                ..Query::default()
            },
            Query {
                uid: Some("u2".into()),
                ..Query::default()
            },
            Query {
                name: Some("web".into()),
                ..Query::default()
            },
            Query {
                operation: Some(Operation::Delete),
                ..Query::default()
            },
        ] {
            assert!(!matches(&q, None, &e), "{q:?}");
        }
    }

    #[test]
    fn a_page_has_a_next_only_when_more_matched() {
        let ev = |id| StoredEvent {
            id,
            event: deployment(),
        };
        let mut full = PageBuilder::new(2);
        full.push(ev(9));
        full.push(ev(8));
        assert!(!full.done());
        assert_eq!(full.finish().next, None, "exactly a page: no next");
        let mut more = PageBuilder::new(2);
        for id in [9, 8, 7] {
            more.push(ev(id));
        }
        assert!(more.done());
        let page = more.finish();
        assert_eq!(page.next, Some(8));
        assert_eq!(page.events.len(), 2);
    }
}
