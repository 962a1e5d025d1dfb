//! API usage from audit events, as apisnoop does it: every request mapped to the endpoint it
//! called (the OpenAPI operationId, group, version, resource, subresource, verb), the level of
//! its version (stable, beta, alpha), whether the apiserver marked it deprecated and the release
//! that removes it, and the client (user or service account, impersonator, user agent product);
//! counted into bounded aggregates and rendered as reports.
//!
//! Pure: depends on serde, serde_json, jiff, ring and base64 (the HTML page's script hash) and
//! our own types. Bytes in (audit log lines, an OpenAPI document), aggregates and strings out;
//! reading files is the caller's job (`histor usage`).
//!
//! Parts: [`event`] parses lines, [`openapi`] indexes the document, [`endpoint`] maps one event,
//! [`aggregate`] counts, [`report`] selects and renders (table, CSV, JSON), [`html`] renders the
//! self-contained page with the zoomable sunburst; [`series`] is usage as a store keeps it,
//! live.

pub mod aggregate;
pub mod endpoint;
pub mod event;
pub mod html;
pub mod openapi;
pub mod report;
pub mod series;

pub use aggregate::{Counts, MAX_SERIES, Skipped, Usage};
pub use endpoint::{Client, ClientKind, Endpoint, Level, Unmapped};
pub use event::{AuditEvent, BadLine, MAX_LINE_BYTES, parse_line};
pub use html::render_html;
pub use openapi::EndpointIndex;
pub use report::{Filter, Report, render_csv, render_json, render_table, summary};
pub use series::Series;

#[cfg(test)]
mod tests;
