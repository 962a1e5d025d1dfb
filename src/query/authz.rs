//! Who may see what: a user sees an event only if they may `get` the changed object's resource
//! (the parent resource for subresource events) in its namespace. Secrets are resource `secrets`
//! like any other, so Secret history needs `get secrets`. API usage (who calls what) is its own
//! resource, `apiusages.query.histor.dev`, which needs `list` at the cluster scope. Denied unless
//! an [`Authorizer`] says yes.
//! The kube implementation asks SubjectAccessReviews and caches decisions briefly.

use super::auth::UserInfo;
use super::cache::TtlCache;
use crate::Result;
use crate::pipeline::ChangeEvent;
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use std::fmt;
use std::time::Duration;

/// How long a SubjectAccessReview decision is reused.
pub const DECISION_TTL: Duration = Duration::from_secs(10);

/// Most decisions kept.
const DECISION_CAPACITY: usize = 10_000;

/// What seeing something requires: the verb on this resource in this namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// `get` for a change, `list` for API usage.
    pub verb: &'static str,
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource, without subresource.
    pub resource: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
}

impl Target {
    /// What seeing `event` requires.
    pub fn of(event: &ChangeEvent) -> Target {
        Target {
            verb: "get",
            group: event.resource.group.clone(),
            resource: event.resource.resource.clone(),
            namespace: event.namespace.clone(),
        }
    }
}

impl Target {
    /// What reading API usage requires: `list apiusages.query.histor.dev`, cluster-wide.
    pub fn usage() -> Target {
        Target {
            verb: "list",
            group: super::api::GROUP.into(),
            resource: super::api::USAGE_RESOURCE.into(),
            namespace: None,
        }
    }
}

impl fmt::Display for Target {
    /// `deployments.apps in namespace prod`, as the 403 message words it (after the verb).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)?;
        } else {
            write!(f, "{}.{}", self.resource, self.group)?;
        }
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns}"),
            None => f.write_str(" at the cluster scope"),
        }
    }
}

/// Decides whether a user may do what a target names.
pub trait Authorizer: Send + Sync {
    /// True when `user` may do `target.verb` on `target`. An error means no decision (the
    /// request fails).
    fn may_get<'a>(&'a self, user: &'a UserInfo, target: &'a Target)
    -> BoxFuture<'a, Result<bool>>;
}

/// Allows everything: standalone mode, where every listed token sees everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn may_get<'a>(&'a self, _: &'a UserInfo, _: &'a Target) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async { Ok(true) })
    }
}

/// Asks the apiserver with SubjectAccessReviews (needs `create subjectaccessreviews`).
pub struct KubeAuthorizer {
    client: kube::Client,
    cache: TtlCache<(UserInfo, Target), bool>,
}

impl KubeAuthorizer {
    /// An authorizer using `client`'s identity for the reviews.
    pub fn new(client: kube::Client) -> Self {
        KubeAuthorizer {
            client,
            cache: TtlCache::new(DECISION_TTL, DECISION_CAPACITY),
        }
    }

    async fn review(&self, user: &UserInfo, target: &Target) -> Result<bool> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.username.clone()),
                uid: user.uid.clone(),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(target.verb.into()),
                    group: Some(target.group.clone()),
                    resource: Some(target.resource.clone()),
                    namespace: target.namespace.clone(),
                    ..ResourceAttributes::default()
                }),
                non_resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = answer.status.unwrap_or_default();
        if let Some(error) = status.evaluation_error.as_deref().filter(|e| !e.is_empty()) {
            tracing::debug!(user = %user.username, target = %target, error, "authorizer evaluation error");
        }
        // `denied` only matters when `allowed` is false too; default deny either way.
        Ok(status.allowed && status.denied != Some(true))
    }
}

impl Authorizer for KubeAuthorizer {
    fn may_get<'a>(
        &'a self,
        user: &'a UserInfo,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let key = (user.clone(), target.clone());
            if let Some(allowed) = self.cache.get(&key) {
                return Ok(allowed);
            }
            let allowed = self.review(user, target).await?;
            self.cache.insert(key, allowed);
            Ok(allowed)
        })
    }
}
