//! Fetching from the query API: a small [`QueryApi`] trait (one GET, JSON text back) with two
//! transports — the user's kubeconfig through the apiserver's aggregation layer ([`KubeApi`]), or
//! a standalone `histor serve` over HTTPS with a bearer token ([`DirectApi`]) — and, generic over
//! it, what the plugin asks: pages of changes ([`list_changes`]) and single changes
//! ([`get_change`]). Errors keep the apiserver's `Status` (code, reason, message) so that
//! [`super::CliError`] can explain them.

use super::api::{BASE_PATH, Change, ChangeList};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use std::future::Future;
use std::path::Path;

/// What a GET can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered with an error status (a `meta.k8s.io/v1 Status`, or reconstructed from
    /// a bare HTTP status).
    #[error("{code} {reason}: {message}")]
    Status {
        /// HTTP status code.
        code: u16,
        /// `reason` of the Status (`NotFound`, `Forbidden`, `ServiceUnavailable`…), may be empty.
        reason: String,
        /// `message` of the Status.
        message: String,
    },
    /// No answer: connection, TLS or credential trouble, or an unreadable body.
    #[error("{0}")]
    Transport(String),
}

/// One GET against the query API's host. Implemented by the two transports and by test fakes.
pub trait QueryApi: Sync {
    /// GETs `path_and_query` (absolute, such as `/apis/query.histor.dev/v1alpha1/changes?limit=5`)
    /// and returns the body of a successful answer.
    fn get(&self, path_and_query: &str) -> impl Future<Output = Result<String, FetchError>> + Send;
}

/// Filters of a change listing, as the query API takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    /// Namespace; `None` for all namespaces (and cluster-scoped objects).
    pub namespace: Option<String>,
    /// `kind`: a kind, plural or `plural.group`.
    pub kind: Option<String>,
    /// Object name.
    pub name: Option<String>,
    /// Object uid.
    pub uid: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`.
    pub operation: Option<String>,
    /// RFC 3339 time or relative duration (`1h`).
    pub since: Option<String>,
    /// RFC 3339 time or relative duration.
    pub until: Option<String>,
    /// `received`, `confirmed`, `notApplied`, `observed`, `unconfirmed`.
    pub state: Option<String>,
}

impl ListParams {
    /// The path and query string of one page of at most `limit` changes.
    pub fn path(&self, limit: usize, continue_: Option<&str>) -> String {
        let mut path = match &self.namespace {
            Some(ns) => format!("{BASE_PATH}/namespaces/{}/changes", encode(ns)),
            None => format!("{BASE_PATH}/changes"),
        };
        let limit = limit.to_string();
        let pairs = [
            ("kind", self.kind.as_deref()),
            ("name", self.name.as_deref()),
            ("uid", self.uid.as_deref()),
            ("user", self.user.as_deref()),
            ("operation", self.operation.as_deref()),
            ("since", self.since.as_deref()),
            ("until", self.until.as_deref()),
            ("state", self.state.as_deref()),
            ("limit", Some(limit.as_str())),
            ("continue", continue_),
        ];
        let mut sep = '?';
        for (key, value) in pairs {
            if let Some(value) = value {
                path.push(sep);
                path.push_str(key);
                path.push('=');
                path.push_str(&encode(value));
                sep = '&';
            }
        }
        path
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Up to `limit` changes (0: no limit), newest first, following `continue` tokens.
pub async fn list_changes(
    api: &impl QueryApi,
    params: &ListParams,
    limit: usize,
) -> Result<Vec<Change>, FetchError> {
    // The server caps pages itself; asking for more than it gives is harmless.
    const PAGE: usize = 500;
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let want = if limit == 0 {
            PAGE
        } else {
            (limit - items.len()).min(PAGE)
        };
        let body = api.get(&params.path(want, token.as_deref())).await?;
        let page: ChangeList = parse(&body)?;
        items.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() || (limit != 0 && items.len() >= limit) {
            break;
        }
    }
    if limit != 0 {
        items.truncate(limit);
    }
    Ok(items)
}

/// One change with its patch and diff, and the objects before and after when `objects`.
pub async fn get_change(
    api: &impl QueryApi,
    namespace: Option<&str>,
    id: &str,
    objects: bool,
) -> Result<Change, FetchError> {
    let mut path = match namespace {
        Some(ns) => format!(
            "{BASE_PATH}/namespaces/{}/changes/{}",
            encode(ns),
            encode(id)
        ),
        None => format!("{BASE_PATH}/changes/{}", encode(id)),
    };
    if objects {
        path.push_str("?include=objects");
    }
    parse(&api.get(&path).await?)
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, FetchError> {
    serde_json::from_str(body)
        .map_err(|e| FetchError::Transport(format!("unexpected answer from the query API: {e}")))
}

/// The query API through the apiserver, with the user's kubeconfig credentials.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
}

impl KubeApi {
    /// Connects with the kubeconfig (`path`, or the usual `KUBECONFIG`/`~/.kube/config` lookup)
    /// and `context`; returns the client and the context's default namespace.
    pub async fn connect(
        path: Option<&Path>,
        context: Option<String>,
        impersonate: Option<(String, Vec<String>)>,
    ) -> Result<(KubeApi, String), FetchError> {
        let options = kube::config::KubeConfigOptions {
            context,
            ..Default::default()
        };
        let transport = |e: &dyn std::fmt::Display| FetchError::Transport(e.to_string());
        let config = match path {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path).map_err(|e| transport(&e))?;
                kube::Config::from_custom_kubeconfig(file, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| transport(&e))?;
        let mut config = config;
        if let Some((user, groups)) = impersonate {
            config.auth_info.impersonate = Some(user);
            if !groups.is_empty() {
                config.auth_info.impersonate_groups = Some(groups);
            }
        }
        let namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).map_err(|e| transport(&e))?;
        Ok((KubeApi { client }, namespace))
    }

    /// The discovery documents TYPE resolves against: `/api/v1` first, then each group's
    /// preferred version in `/apis` order (kubectl's priority), fetched concurrently.
    pub async fn discovery(&self) -> Result<Vec<APIResourceList>, FetchError> {
        let core = self.client.list_core_api_resources("v1");
        let groups = self.client.list_api_groups();
        let (core, groups) = futures::join!(core, groups);
        let mut lists = vec![core.map_err(kube_error)?];
        let versions: Vec<String> = groups
            .map_err(kube_error)?
            .groups
            .into_iter()
            .filter_map(|g| {
                g.preferred_version
                    .map(|v| v.group_version)
                    .or_else(|| g.versions.into_iter().next().map(|v| v.group_version))
            })
            .collect();
        let fetched = futures::future::join_all(
            versions
                .iter()
                .map(|gv| self.client.list_api_group_resources(gv)),
        )
        .await;
        // A broken aggregated API (a metrics server that is down, say) must not stop TYPE from
        // resolving against every other group: kubectl also carries on without it.
        lists.extend(fetched.into_iter().filter_map(Result::ok));
        Ok(lists)
    }
}

impl QueryApi for KubeApi {
    async fn get(&self, path_and_query: &str) -> Result<String, FetchError> {
        let request = http::Request::get(path_and_query)
            .header(http::header::ACCEPT, "application/json")
            .body(Vec::new())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        self.client.request_text(request).await.map_err(kube_error)
    }
}

fn kube_error(e: kube::Error) -> FetchError {
    match e {
        kube::Error::Api(status) => FetchError::Status {
            code: status.code,
            reason: status.reason.clone(),
            message: status.message.clone(),
        },
        other => FetchError::Transport(other.to_string()),
    }
}

/// A standalone `histor serve`, reached directly with a bearer token.
#[derive(Clone)]
pub struct DirectApi {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl DirectApi {
    /// A client of the server at `base` (`https://localhost:8443`), trusting only the PEM CA at
    /// `ca` when given (a self-signed `histor serve`), else the platform's roots.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<DirectApi, FetchError> {
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| FetchError::Transport(format!("{}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| FetchError::Transport(format!("{}: {e}", ca.display())))?;
            builder = builder.tls_certs_only([cert]);
        }
        let http = builder
            .build()
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        Ok(DirectApi {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }
}

impl QueryApi for DirectApi {
    async fn get(&self, path_and_query: &str) -> Result<String, FetchError> {
        let mut request = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| FetchError::Transport(format!("{}: {}", self.base, error_chain(&e))))?;
        let code = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| FetchError::Transport(error_chain(&e)))?;
        if code.is_success() {
            return Ok(body);
        }
        Err(status_error(code.as_u16(), &body))
    }
}

/// The error of a failed answer: its `Status` when the body is one, else the bare HTTP status.
pub fn status_error(code: u16, body: &str) -> FetchError {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Status {
        code: u16,
        reason: String,
        message: String,
    }
    let status: Status = serde_json::from_str(body).unwrap_or_default();
    FetchError::Status {
        code: if status.code == 0 { code } else { status.code },
        reason: status.reason,
        message: if status.message.is_empty() {
            body.trim().to_owned()
        } else {
            status.message
        },
    }
}

/// `e: cause: cause`, since reqwest's own message hides the useful part ("connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
