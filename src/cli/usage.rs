//! `kubectl blame usage`: the API usage histor counted from the cluster's audit events, fetched
//! from the query API (`apiusages`, which needs `list apiusages.query.histor.dev`) and selected
//! and rendered by [`crate::usage`], as `histor usage` does from log files: a table, CSV, JSON,
//! or the HTML page. `--user` keeps what one client called; `--deprecated` the calls to
//! deprecated APIs, with the release that removes them.

use super::args::BlameArgs;
use super::client::{FetchError, QueryApi, encode};
use super::output::Format;
use super::{CliError, api::BASE_PATH};
use crate::query::usage::UsageList;
use crate::usage::{self, Filter, Report, Usage};

/// What `since` is when not given: the server's default.
const DEFAULT_SINCE: &str = "24h";

/// Fetches the usage and renders it as `args.output` asks; `server` is the `--server` URL
/// when there is one.
pub async fn run(
    api: &impl QueryApi,
    args: &BlameArgs,
    server: Option<&str>,
) -> Result<String, CliError> {
    // A 403 here is about who calls what, not about an object's changes: its own hint.
    let fetch = |e| match CliError::from_fetch(e, server) {
        CliError::Forbidden(m) => CliError::UsageForbidden(m),
        other => other,
    };
    let since = args.since.as_deref().unwrap_or(DEFAULT_SINCE);
    let path = format!("{BASE_PATH}/apiusages?since={}", encode(since));
    let body = api.get(&path).await.map_err(fetch)?;
    let list: UsageList = serde_json::from_str(&body).map_err(|e| {
        fetch(FetchError::Transport(format!(
            "unexpected answer from the query API: {e}"
        )))
    })?;
    if list.metadata.truncated {
        eprintln!("The server cut the list short: ask for a shorter time (--since).");
    }
    let mut counts = Usage::new(None);
    for item in list.items {
        counts.add_stored(item.hour.as_second(), item.series, &item.counts);
    }
    let report = Report::new(
        &counts,
        &Filter {
            user: args.user.clone(),
            deprecated: args.deprecated,
        },
    );
    Ok(match args.output {
        Format::Table | Format::Wide => usage::render_table(&report),
        Format::Csv => {
            eprint!("{}", usage::summary(&report));
            usage::render_csv(&report)
        }
        Format::Json => usage::render_json(&report).map_err(|e| CliError::Usage(e.to_string()))?,
        Format::Html => usage::render_html(&report).map_err(|e| CliError::Usage(e.to_string()))?,
        other => {
            return Err(CliError::Usage(format!(
                "-o {} is not a usage format: use table, csv, json or html",
                format!("{other:?}").to_lowercase()
            )));
        }
    })
}
