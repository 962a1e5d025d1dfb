//! Usage reports: the rows a view selects from [`Usage`], and renderers for them: an aligned
//! table for people, CSV for spreadsheets (one row per endpoint × client × hour), JSON.
//!
//! The HTML page with the sunburst is [`super::html`]'s: it takes a [`Report`] too, and reads
//! its four rings from each [`Row`] (`endpoint.level`, `endpoint.group`, `endpoint.resource`,
//! `endpoint.verb`) and the size from `counts.calls`.

use super::aggregate::{Counts, Skipped, Usage};
use super::endpoint::{Client, Endpoint};
use crate::render::{escape_controls, table};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Which rows a report shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only requests made as, or by an impersonator named, this user.
    pub user: Option<String>,
    /// Only requests the apiserver marked as calling a deprecated API.
    pub deprecated: bool,
}

/// Calls to one endpoint by one client over every hour seen.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// What was called.
    pub endpoint: Endpoint,
    /// Who called.
    pub client: Client,
    /// All hours together.
    pub counts: Counts,
    /// Hour by hour, oldest first.
    pub hours: Vec<Hour>,
}

/// One hour of a [`Row`].
#[derive(Debug, Clone, Serialize)]
pub struct Hour {
    /// Start of the hour (UTC); `None` for events without a timestamp.
    pub start: Option<jiff::Timestamp>,
    /// That hour's calls.
    #[serde(flatten)]
    pub counts: Counts,
}

/// A report, ready to render.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The rows the filter selected, most called first (deprecated view: soonest removal first).
    pub rows: Vec<Row>,
    /// The user filter, when given.
    pub user: Option<String>,
    /// True for the deprecated-APIs view.
    pub deprecated: bool,
    /// True when operationIds were looked up in an OpenAPI document.
    pub operation_ids: bool,
    /// Requests counted (before the filter).
    pub counted: u64,
    /// What was left out, by reason (before the filter).
    pub skipped: Skipped,
}

impl Report {
    /// Collects the rows of `usage` that `filter` selects.
    pub fn new(usage: &Usage<'_>, filter: &Filter) -> Report {
        let mut rows: HashMap<(&Endpoint, &Client), Row> = HashMap::new();
        for (key, counts) in usage.series() {
            if filter.deprecated && !key.endpoint.deprecated {
                continue;
            }
            if filter.user.as_deref().is_some_and(|u| !key.client.is(u)) {
                continue;
            }
            let row = rows
                .entry((&key.endpoint, &key.client))
                .or_insert_with(|| Row {
                    endpoint: key.endpoint.clone(),
                    client: key.client.clone(),
                    counts: Counts::default(),
                    hours: Vec::new(),
                });
            row.counts.merge(counts);
            row.hours.push(Hour {
                start: key.hour.and_then(|s| jiff::Timestamp::from_second(s).ok()),
                counts: counts.clone(),
            });
        }
        let mut rows: Vec<Row> = rows.into_values().collect();
        for row in &mut rows {
            row.hours.sort_by_key(|h| h.start);
        }
        if filter.deprecated {
            // Soonest removal first; deprecated without a planned removal last.
            rows.sort_by(|a, b| {
                let removal = |r: &Row| {
                    r.endpoint
                        .removed_release
                        .as_deref()
                        .map(release_order)
                        .unwrap_or((u32::MAX, u32::MAX))
                };
                removal(a)
                    .cmp(&removal(b))
                    .then_with(|| a.endpoint.cmp(&b.endpoint))
                    .then_with(|| a.client.cmp(&b.client))
            });
        } else {
            rows.sort_by(|a, b| {
                b.counts
                    .calls
                    .cmp(&a.counts.calls)
                    .then_with(|| a.endpoint.cmp(&b.endpoint))
                    .then_with(|| a.client.cmp(&b.client))
            });
        }
        Report {
            rows,
            user: filter.user.clone(),
            deprecated: filter.deprecated,
            operation_ids: usage.has_index(),
            counted: usage.counted(),
            skipped: usage.skipped().clone(),
        }
    }
}

/// `1.34` → (1, 34), so `1.100` sorts after `1.34`.
pub(super) fn release_order(release: &str) -> (u32, u32) {
    let mut parts = release
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    (
        parts.next().unwrap_or(u32::MAX),
        parts.next().unwrap_or(u32::MAX),
    )
}

fn time(t: Option<jiff::Timestamp>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// `bob (as, by admin)` for impersonation, else the user name.
fn client_cell(client: &Client) -> String {
    match &client.impersonator {
        Some(by) => format!("{} (impersonated by {by})", client.user),
        None => client.user.clone(),
    }
}

/// Aligned columns, and the tallies below. Every user-controlled cell is escaped by
/// [`table`].
pub fn render_table(report: &Report) -> String {
    let mut out = if report.rows.is_empty() {
        if report.deprecated {
            "No calls to deprecated APIs.\n".to_string()
        } else {
            "No API calls counted.\n".to_string()
        }
    } else if report.deprecated {
        let header = [
            "API",
            "VERB",
            "REMOVED IN",
            "CLIENT",
            "AGENT",
            "CALLS",
            "LAST SEEN",
        ]
        .map(String::from);
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.endpoint.api(),
                    r.endpoint.verb.clone(),
                    r.endpoint
                        .removed_release
                        .clone()
                        .unwrap_or_else(|| "-".into()),
                    client_cell(&r.client),
                    r.client.agent.clone(),
                    r.counts.calls.to_string(),
                    time(r.counts.last_seen),
                ]
            })
            .collect();
        table(&header, &rows)
    } else {
        let mut header = vec!["CALLS", "LEVEL", "VERB", "API"];
        if report.operation_ids {
            header.push("OPERATION");
        }
        header.extend(["CLIENT", "AGENT", "2XX", "4XX", "5XX", "LAST SEEN"]);
        let header: Vec<String> = header.into_iter().map(String::from).collect();
        let rows: Vec<Vec<String>> = report
            .rows
            .iter()
            .map(|r| {
                let mut row = vec![
                    r.counts.calls.to_string(),
                    r.endpoint.level.label().to_string(),
                    r.endpoint.verb.clone(),
                    r.endpoint.api(),
                ];
                if report.operation_ids {
                    row.push(
                        r.endpoint
                            .operation_id
                            .clone()
                            .unwrap_or_else(|| "-".into()),
                    );
                }
                row.extend([
                    client_cell(&r.client),
                    r.client.agent.clone(),
                    r.counts.success.to_string(),
                    r.counts.client_error.to_string(),
                    r.counts.server_error.to_string(),
                    time(r.counts.last_seen),
                ]);
                row
            })
            .collect();
        table(&header, &rows)
    };
    out.push('\n');
    out.push_str(&summary(report));
    out
}

/// What was counted and what was left out, by reason, as a few lines for people (the table's
/// footer; standard error for CSV).
pub fn summary(report: &Report) -> String {
    let s = &report.skipped;
    let mut out = String::new();
    let shown: u64 = report.rows.iter().map(|r| r.counts.calls).sum();
    let _ = write!(
        out,
        "{shown} calls in {} rows shown, of {} requests counted",
        report.rows.len(),
        report.counted
    );
    let unmapped: u64 = s.unmapped.values().map(|u| u.count).sum();
    if unmapped > 0 {
        let reasons: Vec<String> = s
            .unmapped
            .iter()
            .map(|(r, u)| format!("{} {}", r.label(), u.count))
            .collect();
        let _ = write!(
            out,
            "; {unmapped} mapped to no endpoint ({})",
            reasons.join(", ")
        );
    }
    out.push('\n');
    for (reason, u) in &s.unmapped {
        for example in &u.examples {
            let _ = writeln!(out, "  {}: {}", reason.label(), escape_controls(example));
        }
    }
    let mut left = Vec::new();
    if s.not_final_stage > 0 {
        left.push(format!(
            "{} events of an earlier stage (a request counts at its last)",
            s.not_final_stage
        ));
    }
    if s.duplicate > 0 {
        left.push(format!("{} duplicates", s.duplicate));
    }
    if s.over_bound > 0 {
        left.push(format!(
            "{} requests past the bound of {} series",
            s.over_bound,
            super::aggregate::MAX_SERIES
        ));
    }
    for (reason, n) in &s.bad_lines {
        left.push(format!("{n} lines {}", reason.label()));
    }
    if !left.is_empty() {
        let _ = writeln!(out, "not counted: {}", left.join(", "));
    }
    if !report.operation_ids {
        out.push_str(
            "operationIds need the cluster's OpenAPI document: --openapi FILE \
             (kubectl get --raw /openapi/v2 > FILE)\n",
        );
    }
    out
}

const CSV_HEADER: [&str; 22] = [
    "hour",
    "operationId",
    "level",
    "verb",
    "group",
    "version",
    "resource",
    "subresource",
    "path",
    "deprecated",
    "removedRelease",
    "user",
    "userKind",
    "impersonator",
    "agent",
    "calls",
    "success",
    "clientError",
    "serverError",
    "other",
    "firstSeen",
    "lastSeen",
];

/// One row per endpoint × client × hour, RFC 4180 quoting, CRLF line ends.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::new();
    push_record(&mut out, CSV_HEADER.iter().map(|h| h.to_string()));
    let rfc3339 = |t: Option<jiff::Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    for row in &report.rows {
        let e = &row.endpoint;
        let c = &row.client;
        for hour in &row.hours {
            let h = &hour.counts;
            push_record(
                &mut out,
                [
                    rfc3339(hour.start),
                    e.operation_id.clone().unwrap_or_default(),
                    e.level.label().into(),
                    e.verb.clone(),
                    e.group.clone(),
                    e.version.clone(),
                    e.resource.clone(),
                    e.subresource.clone().unwrap_or_default(),
                    e.path.clone().unwrap_or_default(),
                    e.deprecated.to_string(),
                    e.removed_release.clone().unwrap_or_default(),
                    c.user.clone(),
                    c.kind.label().into(),
                    c.impersonator.clone().unwrap_or_default(),
                    c.agent.clone(),
                    h.calls.to_string(),
                    h.success.to_string(),
                    h.client_error.to_string(),
                    h.server_error.to_string(),
                    (h.other + h.no_code).to_string(),
                    rfc3339(h.first_seen),
                    rfc3339(h.last_seen),
                ]
                .into_iter(),
            );
        }
    }
    out
}

fn push_record(out: &mut String, fields: impl Iterator<Item = String>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(&field));
    }
    out.push_str("\r\n");
}

/// Quoted when it holds a comma, quote or line break (quotes doubled). A cell a spreadsheet
/// would run as a formula (`=`, `+`, `@`, `-` followed by more, tab, CR) gets a leading `'`:
/// user names, agents and paths are the caller's to choose.
fn csv_field(field: &str) -> String {
    let formula = matches!(
        field.as_bytes(),
        [b'=' | b'+' | b'@' | b'\t' | b'\r', ..] | [b'-', _, ..]
    );
    let field = if formula {
        format!("'{field}")
    } else {
        field.to_string()
    };
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// The report as pretty JSON, with a final newline.
pub fn render_json(report: &Report) -> crate::Result<String> {
    Ok(serde_json::to_string_pretty(report)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_formula_guard() {
        assert_eq!(csv_field("kubectl"), "kubectl");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-"), "-");
        assert_eq!(csv_field("-1+1"), "'-1+1");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn releases_sort_by_number() {
        assert!(release_order("1.34") < release_order("1.100"));
        assert!(release_order("1.34") < release_order("2.0"));
        assert!(release_order("1.34") < release_order("soon"));
    }
}
