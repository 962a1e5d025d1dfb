//! `GET /apis/query.histor.dev/v1alpha1/apiusages`: the API usage the audit witness counted, as
//! the store keeps it (one item per series and hour), for `kubectl blame usage` to select and
//! render as `histor usage` does offline. Who calls what is sensitive: it needs `list
//! apiusages.query.histor.dev` at the cluster scope.
//!
//! Parameters: `since` (RFC 3339 or a duration back, default 24h). At most [`MAX_ITEMS`] items
//! are served, oldest hours first; a cut list says so in `metadata.truncated`.

use super::authz::Target;
use super::{QueryState, Request, authenticate, blocking, forbidden, pairs};
use crate::usage::{Counts, Series};
use crate::{Error, Result};
use axum::Json;
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Most items one answer holds.
pub const MAX_ITEMS: usize = 100_000;
/// What `since` is when not given.
const DEFAULT_SINCE: SignedDuration = SignedDuration::from_hours(24);

/// The answer: `APIUsageList`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageList {
    /// `APIUsageList`.
    pub kind: String,
    /// `query.histor.dev/v1alpha1`.
    pub api_version: String,
    /// Whether items were left out.
    pub metadata: UsageListMeta,
    /// The counts.
    pub items: Vec<UsageItem>,
}

/// The list's metadata.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageListMeta {
    /// True when more than [`MAX_ITEMS`] matched: the newest were left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Calls to one series in one hour.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UsageItem {
    /// Start of the hour.
    pub hour: Timestamp,
    /// What was called by whom, or why requests map to no endpoint.
    pub series: Series,
    /// The counts.
    pub counts: Counts,
}

impl UsageList {
    fn new(items: Vec<UsageItem>, truncated: bool) -> UsageList {
        UsageList {
            kind: "APIUsageList".into(),
            api_version: super::api::API_VERSION.into(),
            metadata: UsageListMeta { truncated },
            items,
        }
    }
}

/// Serves the list.
pub(super) async fn serve(state: &QueryState, req: Request) -> Result<Response> {
    let user = authenticate(state, &req).await?;
    let target = Target::usage();
    if !state.authorizer.may_get(&user, &target).await? {
        return Err(forbidden(&user, &target));
    }
    let now = Timestamp::now();
    let mut since = now - DEFAULT_SINCE;
    for (key, value) in pairs(req.params)? {
        if key == "since" && !value.trim().is_empty() {
            since = super::params::time("since", value.trim(), now)?;
        }
    }
    let Some(journal) = state.usage.clone() else {
        return Err(Error::NotFound(
            "no API usage is counted here: histor takes no audit events (--audit-webhook or \
             --audit-log)"
                .into(),
        ));
    };
    let hour = since.as_second().div_euclid(3600) * 3600;
    let rows = blocking(move || journal.usage(hour, MAX_ITEMS + 1)).await?;
    let truncated = rows.len() > MAX_ITEMS;
    let items: Vec<UsageItem> = rows
        .into_iter()
        .take(MAX_ITEMS)
        .filter_map(|row| {
            Some(UsageItem {
                hour: Timestamp::from_second(row.hour).ok()?,
                // Rows a later version wrote in a shape this one does not read are left out.
                series: Series::decode(&row.series)?,
                counts: row.counts,
            })
        })
        .collect();
    tracing::debug!(user = %user.username, items = items.len(), "API usage listed");
    Ok(Json(UsageList::new(items, truncated)).into_response())
}
