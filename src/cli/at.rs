//! Time travel for one object: `kubectl blame TYPE NAME --at TIME` prints the object as it was
//! at that time (`-o yaml`, the default, or `-o json`), and `-o diff --since T1 --until T2` the
//! net change between two times, rebuilt from the recorded changes: the state after the newest
//! change before the time that may have happened (a change the apiserver refused never did).
//! Times are RFC 3339 or a duration ago, as `--since` takes them (the server reads them).

use super::api::Change;
use super::client::{self, FetchError, ListParams, QueryApi};
use super::output::{self, Format, View};
use super::{CliError, yaml};
use crate::crd::Operation;
use crate::render::escape_controls;
use serde_json::Value;

/// Changes read per page while looking for the newest one that happened.
const PAGE: usize = 50;

/// The object's state before `until`: `Ok(None)` when it did not exist then (deleted, or
/// created later); `Err` with what to say when nothing was recorded before it.
async fn state_before(
    api: &impl QueryApi,
    params: &ListParams,
    until: &str,
) -> Result<Option<(Change, Option<Value>)>, FetchError> {
    let mut params = params.clone();
    params.until = Some(until.to_owned());
    params.since = None;
    // Newest first; most objects need one page.
    let mut changes = client::list_changes(api, &params, PAGE).await?;
    if changes.len() == PAGE && !changes.iter().any(|c| c.event.state.may_have_happened()) {
        changes = client::list_changes(api, &params, 0).await?;
    }
    let Some(newest) = changes
        .into_iter()
        .find(|c| c.event.state.may_have_happened())
    else {
        return Ok(None);
    };
    if newest.event.operation == Operation::Delete {
        return Ok(Some((newest, None)));
    }
    let detailed =
        client::get_change(api, newest.event.namespace.as_deref(), newest.id(), true).await?;
    let after = detailed.after.clone();
    Ok(Some((detailed, after)))
}

/// `--at TIME`: the object as it was then.
pub async fn state_at(
    api: &impl QueryApi,
    params: &ListParams,
    at: &str,
    format: Format,
    view: &View,
    what: &str,
    server: Option<&str>,
) -> Result<String, CliError> {
    let fetch = |e| CliError::from_fetch(e, server);
    let Some((change, state)) = state_before(api, params, at).await.map_err(fetch)? else {
        return Err(CliError::Usage(format!(
            "no change to {what} was recorded before {at}: histor knows it only from its first \
             recorded change on"
        )));
    };
    let Some(state) = state else {
        return Err(CliError::Usage(format!(
            "{what} did not exist at {at}: deleted at {} by {}",
            view.second(change.event.received_at),
            escape_controls(&change.event.user.username)
        )));
    };
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&state)? + "\n",
        _ => yaml::to_string(&state),
    };
    // Secret values are stored as keyed hashes: shown as what they are, redacted.
    let text = output::hide_hashes(&text);
    Ok(format!(
        "# {what} at {at}: as left by change {} ({}, {})\n{}",
        escape_controls(change.id()),
        view.second(change.event.received_at),
        escape_controls(&crate::render::actor(&change.event)),
        text.split_terminator('\n')
            .map(|l| escape_controls(l).into_owned() + "\n")
            .collect::<String>()
    ))
}

/// `-o diff --since T1 --until T2`: the net change between the two times.
pub async fn net_diff(
    api: &impl QueryApi,
    params: &ListParams,
    since: &str,
    until: &str,
    view: &View,
    server: Option<&str>,
) -> Result<String, CliError> {
    let fetch = |e| CliError::from_fetch(e, server);
    let before = state_before(api, params, since).await.map_err(fetch)?;
    let after = state_before(api, params, until).await.map_err(fetch)?;
    let (before, after) = (before.and_then(|(_, s)| s), after.and_then(|(_, s)| s));
    let diff = crate::pipeline::unified_yaml_diff(
        before.as_ref(),
        after.as_ref(),
        &format!("at {since}"),
        &format!("at {until}"),
    );
    if diff.is_empty() {
        return Ok(format!(
            "# no net change between {} and {}\n",
            escape_controls(since),
            escape_controls(until)
        ));
    }
    Ok(output::paint_diff(&output::hide_hashes(&diff), view))
}
