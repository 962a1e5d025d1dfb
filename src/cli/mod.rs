//! `kubectl blame`, the kubectl plugin: asks histor's query API (through the apiserver with the
//! user's own credentials, or a standalone `histor serve`) who changed what, and shows it as a
//! table, JSON/YAML, JSON Patches, coloured diffs, or a `git blame` of the object's YAML.
//!
//! One job per module: [`args`] (command line), [`resolve`] (TYPE as kubectl reads it),
//! [`client`] (fetching, behind the [`client::QueryApi`] trait), [`api`] (the wire types),
//! [`output`] and [`blame`] (pure rendering), [`yaml`] (a line-aware YAML writer). This module
//! wires them and turns failures into one clear line and a hint. Depends on pipeline and store
//! types only.

pub mod api;
pub mod args;
pub mod at;
pub mod blame;
pub mod client;
pub mod output;
pub mod resolve;
pub mod usage;
pub mod yaml;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testsupport;

pub use api::{Change, ChangeList, change_json};
pub use args::BlameArgs;
pub use output::{Format, View};

use api::API_SERVICE;
use client::{DirectApi, FetchError, KubeApi, ListParams, QueryApi};
use futures::{StreamExt, TryStreamExt};
use resolve::ResourceType;
use std::io::IsTerminal;

/// What went wrong, in words a kubectl user acts on.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line does not make sense.
    #[error("{0}")]
    Usage(String),
    /// TYPE is not a resource the cluster knows.
    #[error("{0}")]
    UnknownType(#[from] resolve::ResolveError),
    /// Nothing recorded for the object asked about.
    #[error("no changes recorded for {what}")]
    NotFound {
        /// `deployment.apps/api in namespace prod`.
        what: String,
    },
    /// The user may not see these changes.
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The user may not see API usage.
    #[error("not allowed: {0}")]
    UsageForbidden(String),
    /// The credentials were refused.
    #[error("not authenticated: {0}")]
    Unauthorized(String),
    /// The aggregated API is not registered.
    #[error("the histor query API is not registered: is histor installed?")]
    NotInstalled,
    /// `--server` answered 404 on the API path.
    #[error("{0} does not serve the histor query API")]
    NotAQueryServer(String),
    /// The APIService exists but its backend does not answer.
    #[error("the histor query API is unavailable: {0}")]
    Unavailable(String),
    /// Any other error answer, or no answer.
    #[error("{0}")]
    Fetch(FetchError),
    /// The object's history cannot be shown as blame.
    #[error("{0}")]
    Blame(#[from] blame::BlameError),
    /// Serialising output failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl CliError {
    /// A next step for the user, printed under the error.
    pub fn hint(&self) -> Option<String> {
        match self {
            CliError::UnknownType(_) => Some("kubectl api-resources lists the types".into()),
            CliError::NotFound { .. } => Some(
                "histor records only objects a TrackingPolicy tracks (kubectl get trackingpolicies); \
                 check the name, the namespace and --since"
                    .into(),
            ),
            CliError::Forbidden(_) => Some(
                "seeing an object's changes needs `get` on that object (kubectl auth can-i get TYPE -n NS)".into(),
            ),
            CliError::UsageForbidden(_) => Some(
                "who calls what is readable with `list` on apiusages.query.histor.dev \
                 (kubectl auth can-i list apiusages.query.histor.dev)"
                    .into(),
            ),
            CliError::NotInstalled => Some(format!("kubectl get apiservice {API_SERVICE}")),
            CliError::Unavailable(_) => Some(format!(
                "kubectl get apiservice {API_SERVICE} -o yaml shows why; is the histor operator running?"
            )),
            CliError::Unauthorized(_) => Some("check the credentials (--token, or the kubeconfig user)".into()),
            _ => None,
        }
    }

    /// Explains a failed fetch; `server` is the `--server` URL when there is one, `what` names the
    /// object for a 404 on a single change.
    fn from_fetch(e: FetchError, server: Option<&str>) -> CliError {
        let FetchError::Status {
            code,
            reason,
            message,
        } = &e
        else {
            return CliError::Fetch(e);
        };
        match code {
            401 => CliError::Unauthorized(message.clone()),
            403 => CliError::Forbidden(message.clone()),
            404 => match server {
                // The aggregator answers 404 for a group nobody registered.
                None => CliError::NotInstalled,
                Some(url) => CliError::NotAQueryServer(url.to_owned()),
            },
            503 => CliError::Unavailable(if message.is_empty() {
                reason.clone()
            } else {
                message.clone()
            }),
            _ => CliError::Fetch(e),
        }
    }
}

/// What `kubectl blame` prints on standard error for `error`: `error: …` and, when there is one,
/// `hint: …`, each one line. The message can carry names from the command line, from discovery
/// and from the server's Status, so it is escaped like every other text output.
pub fn report(error: &CliError) -> String {
    let mut out = format!(
        "error: {}\n",
        crate::render::escape_controls(&error.to_string())
    );
    if let Some(hint) = error.hint() {
        out.push_str(&format!(
            "hint: {}\n",
            crate::render::escape_controls(&hint)
        ));
    }
    out
}

/// Runs `kubectl blame` and returns what to print.
pub async fn run(args: BlameArgs) -> Result<String, CliError> {
    let target = args.target().map_err(CliError::Usage)?;
    check(&args)?;
    let view = View {
        now: jiff::Timestamp::now(),
        tz: jiff::tz::TimeZone::system(),
        color: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        all_namespaces: args.all_namespaces,
    };
    match &args.server {
        Some(url) => {
            let token = match (&args.token, &args.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            };
            let api = DirectApi::new(url, token, args.certificate_authority.as_deref())
                .map_err(CliError::Fetch)?;
            if args.is_usage() {
                return usage::run(&api, &args, Some(url)).await;
            }
            let kind = target.as_ref().map(|t| resolve::resolve_offline(&t.kind));
            let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
            execute(&api, &args, kind, namespace, Some(url), &view).await
        }
        None => {
            let (api, namespace) = KubeApi::connect(
                args.kubeconfig.as_deref(),
                args.context.clone(),
                args.impersonate
                    .clone()
                    .map(|user| (user, args.impersonate_groups.clone())),
            )
            .await
            .map_err(|e| CliError::from_fetch(e, None))?;
            if args.is_usage() {
                return usage::run(&api, &args, None).await;
            }
            let kind = match &target {
                Some(t) => {
                    let lists = api
                        .discovery()
                        .await
                        .map_err(|e| CliError::from_fetch(e, None))?;
                    Some(resolve::resolve(&t.kind, &lists)?)
                }
                None => None,
            };
            let namespace = args.namespace.clone().unwrap_or(namespace);
            execute(&api, &args, kind, namespace, None, &view).await
        }
    }
}

/// Rejects argument combinations that cannot work, before any request.
fn check(args: &BlameArgs) -> Result<(), CliError> {
    let target = args.target().map_err(CliError::Usage)?;
    if args.is_usage() {
        if args.name.is_some() {
            return Err(CliError::Usage(
                "kubectl blame usage takes no name: select with --user and --deprecated".into(),
            ));
        }
        return Ok(());
    }
    if matches!(args.output, Format::Csv | Format::Html) || args.deprecated {
        return Err(CliError::Usage(
            "-o csv, -o html and --deprecated are for API usage: kubectl blame usage".into(),
        ));
    }
    let one_object = target.as_ref().is_some_and(|t| t.name.is_some());
    if args.at.is_some() {
        if !one_object {
            return Err(CliError::Usage(
                "--at shows one object: kubectl blame TYPE/NAME --at TIME".into(),
            ));
        }
        if !matches!(args.output, Format::Table | Format::Yaml | Format::Json) {
            return Err(CliError::Usage(
                "--at prints the object: -o yaml (the default) or -o json".into(),
            ));
        }
    }
    if args.output == Format::Blame && target.is_none_or(|t| t.name.is_none()) {
        return Err(CliError::Usage(
            "-o blame shows one object: kubectl blame TYPE/NAME -o blame".into(),
        ));
    }
    Ok(())
}

/// Fetches and renders; shared by both transports (and the tests, through a fake [`QueryApi`]).
pub async fn execute(
    api: &impl QueryApi,
    args: &BlameArgs,
    kind: Option<ResourceType>,
    namespace: String,
    server: Option<&str>,
    view: &View,
) -> Result<String, CliError> {
    let fetch = |e| CliError::from_fetch(e, server);
    check(args)?;
    let name = args.target().map_err(CliError::Usage)?.and_then(|t| t.name);
    // Cluster-scoped types have no namespace; -A asks for all.
    let namespace = (!args.all_namespaces
        && kind.as_ref().and_then(|k| k.namespaced) != Some(false))
    .then_some(namespace);
    let params = ListParams {
        namespace: namespace.clone(),
        kind: kind.as_ref().map(ResourceType::query_kind),
        name: name.clone(),
        user: args.user.clone(),
        operation: args.operation.as_ref().map(|o| o.to_uppercase()),
        since: args.since.clone(),
        until: args.until.clone(),
        state: args.state.map(|s| s.as_str().to_owned()),
        ..ListParams::default()
    };
    let what = || {
        let ty = kind
            .as_ref()
            .map_or_else(String::new, ResourceType::display);
        let obj = match &name {
            Some(n) => format!("{ty}/{n}"),
            None => ty,
        };
        match &namespace {
            Some(ns) => format!("{obj} in namespace {ns}"),
            None => obj,
        }
    };
    if let Some(at) = &args.at {
        let format = if args.output == Format::Json {
            Format::Json
        } else {
            Format::Yaml
        };
        return at::state_at(api, &params, at, format, view, &what(), server).await;
    }
    if let (Format::Diff, Some(_), Some(since), Some(until)) =
        (args.output, &name, &args.since, &args.until)
    {
        let mut whole = params.clone();
        whole.since = None;
        whole.until = None;
        return at::net_diff(api, &whole, since, until, view, server).await;
    }
    let limit = if args.output == Format::Blame {
        0
    } else {
        args.limit
    };
    let changes = client::list_changes(api, &params, limit)
        .await
        .map_err(fetch)?;
    if changes.is_empty() {
        if name.is_some() {
            return Err(CliError::NotFound { what: what() });
        }
        if matches!(
            args.output,
            Format::Table | Format::Wide | Format::Patch | Format::Diff
        ) {
            let scope = match (&namespace, kind.is_some()) {
                (Some(ns), _) => format!(" in namespace {ns}"),
                (None, true) => String::new(),
                (None, false) => " in any namespace".into(),
            };
            eprintln!(
                "No changes recorded{} that match.",
                crate::render::escape_controls(&scope)
            );
            return Ok(String::new());
        }
    }
    // A change lives in its object's namespace (none for cluster-scoped objects).
    let detailed = |objects: bool| {
        move |c: Change| async move {
            client::get_change(api, c.event.namespace.as_deref(), c.id(), objects).await
        }
    };
    Ok(match args.output {
        Format::Table => output::changes_table(&changes, false, view),
        Format::Wide => output::changes_table(&changes, true, view),
        Format::Json => output::json(&changes)?,
        Format::Yaml => output::yaml(&changes)?,
        Format::Patch | Format::Diff => {
            // A few requests at a time: enough to hide latency, gentle on the server.
            let full: Vec<Change> = futures::stream::iter(changes)
                .map(detailed(false))
                .buffered(8)
                .try_collect()
                .await
                .map_err(fetch)?;
            if args.output == Format::Patch {
                output::patches(&full, view)
            } else {
                output::diffs(&full, view)
            }
        }
        Format::Blame => {
            let (mut history, earlier) = one_object(changes);
            // Attribution needs only each change's paths (in the list) and the final state: the
            // state after the newest change that may have happened (a refused one never was).
            if let Some(shown) = blame::shown(&history).and_then(|i| history.get_mut(i)) {
                *shown = detailed(true)(shown.clone()).await.map_err(fetch)?;
            }
            let lines = blame::blame(&history)?;
            blame::render(&history, &lines, earlier, view)
        }
        // `check` refuses these above; kept as an answer, not a panic.
        Format::Csv | Format::Html => {
            return Err(CliError::Usage(
                "-o csv and -o html are for API usage: kubectl blame usage".into(),
            ));
        }
    })
}

/// The history (oldest → newest) of the newest object among `changes` (newest first), and how
/// many changes belonged to earlier objects of the same name (deleted and created again).
/// `changes` must not be empty.
fn one_object(changes: Vec<Change>) -> (Vec<Change>, usize) {
    let newest_uid = changes.first().and_then(|c| c.event.object_uid.clone());
    let total = changes.len();
    let mut history: Vec<Change> = match newest_uid {
        Some(uid) => changes
            .into_iter()
            .filter(|c| c.event.object_uid.as_deref().is_none_or(|u| u == uid))
            .collect(),
        None => changes,
    };
    let earlier = total - history.len();
    history.reverse();
    (history, earlier)
}
