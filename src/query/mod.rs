//! The query API: recorded changes served under `/apis/query.histor.dev/v1alpha1/`, shaped so the
//! kube-apiserver can aggregate it (APIService `v1alpha1.query.histor.dev`) and `kubectl get
//! changes` prints a table. Every request is authenticated ([`auth`]) and every event authorised
//! ([`authz`]) with the caller's own identity, so history follows cluster RBAC.
//!
//! Depends on the store (reads only), pipeline types, and kube for the reviews; the capture side
//! knows nothing of it. [`router`] is merged into the capture endpoint's HTTPS server; [`tls`]
//! provides the server configuration and acceptor that make front-proxy certificates visible.

pub mod api;
pub mod auth;
pub mod authz;
mod cache;
pub mod params;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod usage;

use self::api::{Change, ChangeList, IncludeObject, PREFIX};
use self::auth::{Authenticator, FrontProxy, StaticTokens, TokenReviewer, Tokens, UserInfo};
use self::authz::{AllowAll, Authorizer, KubeAuthorizer, Target};
use self::params::{include_objects, list_params};
use self::tls::PeerCertificates;
use crate::crd::Operation;
use crate::store::{AuditJournal, EventId, EventStore, Page, Query, StoredEvent};
use crate::{Error, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Most events one list request examines while filtering out what the caller may not see; a
/// page cut short by it still carries a continue token.
pub const SCAN_BUDGET: usize = 10_000;

/// Smallest store page read while filling a list page: small client pages (`limit=5`) over
/// mostly-hidden events should not cost one store round trip per few events.
const MIN_STORE_PAGE: usize = 250;

/// Everything the handlers share.
pub struct QueryState {
    /// The events.
    pub store: Arc<dyn EventStore>,
    /// Who is asking.
    pub authenticator: Authenticator,
    /// What they may see.
    pub authorizer: Arc<dyn Authorizer>,
    /// Where API usage is counted, when audit events come in.
    pub usage: Option<Arc<dyn AuditJournal>>,
}

impl QueryState {
    /// Standalone mode (`histor serve`): the listed tokens see everything; no front proxy.
    pub fn standalone(store: Arc<dyn EventStore>, tokens: StaticTokens) -> Self {
        QueryState {
            store,
            authenticator: Authenticator {
                front_proxy: None,
                tokens: Tokens::Static(tokens),
            },
            authorizer: Arc::new(AllowAll),
            usage: None,
        }
    }

    /// Serves API usage from `journal`'s counts.
    pub fn with_usage(mut self, journal: Arc<dyn AuditJournal>) -> Self {
        self.usage = Some(journal);
        self
    }

    /// In a cluster: front-proxy identities (once [`auth::refresh_request_header`] has read the
    /// requestheader settings into [`QueryState::front_proxy`]), TokenReview and
    /// SubjectAccessReview through `client`.
    pub fn in_cluster(store: Arc<dyn EventStore>, client: kube::Client) -> Self {
        QueryState {
            store,
            authenticator: Authenticator {
                front_proxy: Some(FrontProxy::default()),
                tokens: Tokens::Review(TokenReviewer::new(client.clone())),
            },
            authorizer: Arc::new(KubeAuthorizer::new(client)),
            usage: None,
        }
    }

    /// The shared requestheader settings, to hand to [`tls::server_config`] and the refresh loop.
    pub fn front_proxy(&self) -> Option<FrontProxy> {
        self.authenticator.front_proxy.clone()
    }
}

/// The query API's routes. Discovery documents are public (they reveal only that the group
/// exists, and the aggregator's availability check fetches them without a user).
pub fn router(state: Arc<QueryState>) -> Router {
    Router::new()
        .route("/apis", get(|| async { Json(api::group_list()) }))
        .route(
            "/apis/query.histor.dev",
            get(|| async { Json(api::group()) }),
        )
        .route(PREFIX, get(|| async { Json(api::resource_list()) }))
        .route(&format!("{PREFIX}/changes"), get(list_cluster))
        .route(&format!("{PREFIX}/changes/{{id}}"), get(get_cluster))
        .route(
            &format!("{PREFIX}/namespaces/{{namespace}}/changes"),
            get(list_namespaced),
        )
        .route(
            &format!("{PREFIX}/namespaces/{{namespace}}/changes/{{id}}"),
            get(get_namespaced),
        )
        .route(
            &format!("{PREFIX}/{}", api::USAGE_RESOURCE),
            get(list_usage),
        )
        .with_state(state)
}

type Params = Result<UrlQuery<Vec<(String, String)>>, QueryRejection>;
type Peer = Option<Extension<PeerCertificates>>;

/// What every data request carries besides its path.
struct Request {
    peer: Peer,
    headers: HeaderMap,
    params: Params,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Request {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Request {
            peer: parts
                .extensions
                .get::<PeerCertificates>()
                .cloned()
                .map(Extension),
            headers: parts.headers.clone(),
            // A malformed query string is answered as a 400 Status by the handler.
            params: UrlQuery::<Vec<(String, String)>>::from_request_parts(parts, state).await,
        })
    }
}

async fn list_usage(State(state): State<Arc<QueryState>>, req: Request) -> Response {
    respond(usage::serve(&state, req).await)
}

async fn list_cluster(State(state): State<Arc<QueryState>>, req: Request) -> Response {
    respond(serve_list(&state, req, None).await)
}

async fn list_namespaced(
    State(state): State<Arc<QueryState>>,
    Path(namespace): Path<String>,
    req: Request,
) -> Response {
    respond(serve_list(&state, req, Some(namespace)).await)
}

async fn get_cluster(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    respond(serve_one(&state, req, None, &id).await)
}

async fn get_namespaced(
    State(state): State<Arc<QueryState>>,
    Path((namespace, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    respond(serve_one(&state, req, Some(namespace), &id).await)
}

/// Turns an error into its `Status` document; internal errors are logged here.
fn respond(result: Result<Response>) -> Response {
    result.unwrap_or_else(|error| {
        let (code, doc) = api::status(&error);
        if code >= 500 {
            tracing::warn!(%error, error_kind = error.metric_label(), "query request failed");
        } else {
            tracing::debug!(%error, code, "query request refused");
        }
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(doc)).into_response()
    })
}

async fn authenticate(state: &QueryState, req: &Request) -> Result<UserInfo> {
    let chain = req
        .peer
        .as_ref()
        .and_then(|Extension(p)| p.0.as_deref())
        .map(Vec::as_slice);
    state.authenticator.authenticate(chain, &req.headers).await
}

fn pairs(params: Params) -> Result<Vec<(String, String)>> {
    params
        .map(|UrlQuery(p)| p)
        .map_err(|e| Error::BadRequest(e.body_text()))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(api::wants_table)
}

async fn serve_list(
    state: &QueryState,
    req: Request,
    namespace: Option<String>,
) -> Result<Response> {
    let user = authenticate(state, &req).await?;
    let table = wants_table(&req.headers);
    let params = list_params(&pairs(req.params)?, jiff::Timestamp::now())?;
    let mut query = params.query;
    query.namespace = namespace;
    let (events, next) = visible_page(state, &user, query).await?;
    let items: Vec<Change> = events.iter().map(Change::summary_of).collect();
    tracing::debug!(user = %user.username, items = items.len(), "changes listed");
    Ok(if table {
        Json(api::table(&items, next, params.include_object)).into_response()
    } else {
        Json(ChangeList::new(items, next)).into_response()
    })
}

/// One page of what `user` may see of `query`, and its continue token. Events the user may not
/// see are skipped (the page is refilled from older events, within [`SCAN_BUDGET`]). A namespaced
/// list that shows nothing because everything in it was denied answers 403, naming what was.
async fn visible_page(
    state: &QueryState,
    user: &UserInfo,
    mut query: Query,
) -> Result<(Vec<StoredEvent>, Option<EventId>)> {
    let limit = query.limit;
    // The continue token is the last event returned, so reading ahead loses nothing.
    query.limit = limit.max(MIN_STORE_PAGE);
    // Only a first page can be refused: a later one that happens to show nothing is just empty.
    let refusable = query.namespace.is_some() && query.after.is_none();
    let mut visible = Vec::new();
    let mut denied: Option<Target> = None;
    let mut scanned = 0;
    let next = loop {
        let page = store_query(state, query.clone()).await?;
        let decisions = decide(state, user, &page).await?;
        let count = page.events.len();
        let mut cut = None;
        for (i, stored) in page.events.into_iter().enumerate() {
            scanned += 1;
            let target = Target::of(&stored.event);
            let id = stored.id;
            if decisions.get(&target).copied().unwrap_or(false) {
                visible.push(stored);
            } else if denied.is_none() {
                denied = Some(target);
            }
            if visible.len() == limit {
                let more = i + 1 < count || page.next.is_some();
                cut = Some(more.then_some(id));
                break;
            }
        }
        if let Some(next) = cut {
            break next;
        }
        match page.next {
            Some(after) if scanned < SCAN_BUDGET => query.after = Some(after),
            other => break other,
        }
    };
    if refusable
        && visible.is_empty()
        && let Some(target) = denied
    {
        return Err(forbidden(user, &target));
    }
    Ok((visible, next))
}

/// The authoriser's answer for every distinct target of a page (asked concurrently).
async fn decide(state: &QueryState, user: &UserInfo, page: &Page) -> Result<HashMap<Target, bool>> {
    let targets: BTreeSet<Target> = page.events.iter().map(|e| Target::of(&e.event)).collect();
    let answers =
        futures::future::join_all(targets.iter().map(|t| state.authorizer.may_get(user, t))).await;
    targets
        .into_iter()
        .zip(answers)
        .map(|(t, allowed)| Ok((t, allowed?)))
        .collect()
}

fn forbidden(user: &UserInfo, target: &Target) -> Error {
    Error::Forbidden(format!(
        "user {} cannot {} {target}",
        user.username, target.verb
    ))
}

async fn serve_one(
    state: &QueryState,
    req: Request,
    namespace: Option<String>,
    id: &str,
) -> Result<Response> {
    let user = authenticate(state, &req).await?;
    let table = wants_table(&req.headers);
    let pairs = pairs(req.params)?;
    let not_found = || Error::NotFound(format!("changes {id:?} not found"));
    let id: EventId = id.parse().map_err(|_| not_found())?;
    let store = state.store.clone();
    let stored = blocking(move || store.get(id))
        .await?
        .ok_or_else(not_found)?;
    // The cluster-scoped path serves any change by id; the namespaced one only its namespace's.
    if namespace.is_some() && stored.event.namespace != namespace {
        return Err(not_found());
    }
    let target = Target::of(&stored.event);
    if !state.authorizer.may_get(&user, &target).await? {
        return Err(forbidden(&user, &target));
    }
    let store = state.store.clone();
    let (before, after) =
        blocking(move || Ok((store.state_before(id)?, store.state_after(id)?))).await?;
    let (before, after) = match stored.event.operation {
        // A DELETE leaves no object; what was deleted is the last known state.
        Operation::Delete => (before.or(after).or(stored.event.object.clone()), None),
        Operation::Create => (None, after.or(stored.event.object.clone())),
        _ => (before, after),
    };
    let change = Change::detailed(&stored, before, after, include_objects(&pairs));
    tracing::debug!(user = %user.username, id, "change served");
    Ok(if table {
        let include = pairs
            .iter()
            .find(|(k, _)| k == "includeObject")
            .map_or(IncludeObject::Metadata, |(_, v)| IncludeObject::parse(v));
        Json(api::table(std::slice::from_ref(&change), None, include)).into_response()
    } else {
        Json(change).into_response()
    })
}

async fn store_query(state: &QueryState, query: Query) -> Result<Page> {
    let store = state.store.clone();
    blocking(move || store.query(&query)).await
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("store task failed: {e}"))))?
}
