//! The wire types of the query API (`query.histor.dev/v1alpha1`) as the plugin reads them, and
//! [`change_json`], which builds a `Change` from a stored event: the one place that says what a
//! `Change` looks like, so that the server and the plugin (and the plugin's tests) agree.
//!
//! Depends only on pipeline and store types.

use crate::store::StoredEvent;
use serde_json::Value;

/// `apiVersion` of every object of the query API.
pub const API_VERSION: &str = "query.histor.dev/v1alpha1";
/// Path prefix of the query API on the apiserver (and on `histor serve`).
pub const BASE_PATH: &str = "/apis/query.histor.dev/v1alpha1";
/// The APIService that registers the query API with the aggregator.
pub const API_SERVICE: &str = "v1alpha1.query.histor.dev";

// The wire types are the server's own, so both sides cannot drift apart.
pub use crate::query::api::{Change, ChangeList, ChangeMeta, ListMeta};

/// The `Change` JSON of a stored event: the list form when both objects are `None`, otherwise the
/// single-change form with `patch`, `diff`, `before` and `after` (see [`Change::detailed`]).
/// `after` should be `None` for a DELETE, `before` `None` for a CREATE or when unknown.
pub fn change_json(stored: &StoredEvent, before: Option<&Value>, after: Option<&Value>) -> Value {
    let change = if before.is_none() && after.is_none() {
        Change::summary_of(stored)
    } else {
        Change::detailed(stored, before.cloned(), after.cloned(), true)
    };
    // A Change is strings, numbers and Values: it always serialises.
    serde_json::to_value(change).unwrap_or_default()
}
