//! Turns an AdmissionReview into a clean, attributed [`ChangeEvent`]: pure functions over values,
//! no I/O, no clock, no async. One module per stage:
//!
//! - [`review`]: bytes → [`Parsed`] review (or [`ReviewError::NotAReview`]), and the `allowed` answer;
//! - [`limits`]: Kubernetes' size bounds on the names, uids and labels histor stores or echoes;
//! - [`policy`]: a TrackingPolicy compiled once ([`CompiledPolicy`]) and matched per request;
//! - [`noise`]: strip what changes on every write (managedFields, resourceVersion, …);
//! - [`redact`]: replace Secret values by keyed hashes ([`Redactor`]);
//! - [`diff`]: JSON Patch with old values, and unified YAML diffs;
//! - [`summary`]: one-line human summaries;
//! - [`process`](mod@process): all of the above for one request and one policy → [`Outcome`].

pub mod diff;
mod event;
pub mod limits;
pub mod noise;
pub mod policy;
pub mod process;
pub mod redact;
pub mod review;
pub mod summary;
#[cfg(test)]
pub(crate) mod testdata;

pub use diff::{diff, unified_yaml_diff};
pub use event::*;
pub use noise::{IgnorePattern, clean, cleaned};
pub use policy::{CompiledPolicy, ConditionErrorKind, NotMatched, parse_duration};
pub use process::{Outcome, SkipReason, process};
pub use redact::{Redactor, is_redacted_value};
pub use review::{
    AUDIT_UID_ANNOTATION, Parsed, Request, ReviewError, allowed_response, parse, recorded_response,
};
pub use summary::{describe, display_path, summarize};
