//! Rendering changes for people and for programs: table, wide, json, yaml, patch, diff (the
//! blame view lives in [`super::blame`]). Pure: changes and a [`View`] (the clock, time zone and
//! whether to colour) in, text out, so every format is snapshot-tested with a fixed `now`.
//!
//! Everything in a change may come from a hostile review (a user name, an object name, a value),
//! so text formats pass it through [`escape_controls`] before it meets a terminal; JSON and YAML
//! are left to their own (serde's) escaping, so they stay exact.

use super::api::{Change, ChangeList};
use super::yaml;
use crate::render::{self, escape_controls, shorten, table};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde_json::Value;

/// Output formats of `kubectl blame -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// TIME, USER, OP, STATE, TARGET, CHANGES.
    Table,
    /// The table with absolute times, groups and request uids.
    Wide,
    /// The changes as a `ChangeList` in JSON.
    Json,
    /// The changes as a `ChangeList` in YAML.
    Yaml,
    /// JSON Patch operations (with values) of each change.
    Patch,
    /// Unified YAML diff of each change.
    Diff,
    /// The object's YAML, each line annotated with who last changed it and when.
    Blame,
    /// With `usage`: one row per endpoint × client × hour.
    Csv,
    /// With `usage`: a self-contained page with a zoomable sunburst.
    Html,
}

/// What rendering depends on besides the changes.
#[derive(Clone, Debug)]
pub struct View {
    /// The present, for ages.
    pub now: Timestamp,
    /// Time zone of absolute times.
    pub tz: TimeZone,
    /// Whether to colour (a terminal, and `NO_COLOR` unset).
    pub color: bool,
    /// Whether the changes span namespaces (adds a NAMESPACE column).
    pub all_namespaces: bool,
}

impl View {
    /// `2026-11-22 02:07`.
    pub fn minute(&self, t: Timestamp) -> String {
        self.zoned(t).strftime("%Y-%m-%d %H:%M").to_string()
    }

    /// `2026-11-22 02:07:49`.
    pub fn second(&self, t: Timestamp) -> String {
        self.zoned(t).strftime("%Y-%m-%d %H:%M:%S").to_string()
    }

    fn zoned(&self, t: Timestamp) -> Zoned {
        t.to_zoned(self.tz.clone())
    }

    /// How long ago, as kubectl prints ages (`45s`, `5m30s`, `3h`, `2d4h`).
    pub fn age(&self, t: Timestamp) -> String {
        human_duration(self.now.as_second() - t.as_second())
    }
}

/// kubectl's `HumanDuration` (k8s.io/apimachinery/pkg/util/duration): precise when recent,
/// coarser as it grows.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    let days = hours / 24;
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        };
    }
    format!("{}y", days / 365)
}

/// The first 8 characters of a request uid: enough to tell changes apart, as git's short hashes.
pub fn short_uid(uid: &str) -> String {
    format!("{:<8}", uid.chars().take(8).collect::<String>())
}

fn paint(s: &str, code: &str, color: bool) -> String {
    if color && !s.is_empty() {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

/// Bold, when colouring.
pub fn bold(s: &str, color: bool) -> String {
    paint(s, "1", color)
}

/// Faint, when colouring.
pub fn dim(s: &str, color: bool) -> String {
    paint(s, "2", color)
}

/// Widest CHANGES cell of the table; wide output shows more.
const CHANGES_WIDTH: usize = 72;
const WIDE_CHANGES_WIDTH: usize = 160;
const USER_WIDTH: usize = 32;

/// The table (or wide table) of `changes`, newest first as given.
pub fn changes_table(changes: &[Change], wide: bool, view: &View) -> String {
    let mut header: Vec<&str> = Vec::new();
    if view.all_namespaces {
        header.push("NAMESPACE");
    }
    header.push("TIME");
    if wide {
        header.push("TIMESTAMP");
    }
    header.push("USER");
    if wide {
        header.push("GROUPS");
    }
    header.extend(["OP", "STATE", "TARGET", "CHANGES"]);
    if wide {
        header.extend([
            "REQUEST-UID",
            "IMPERSONATED-BY",
            "SOURCE",
            "USER-AGENT",
            "AUDIT-ID",
        ]);
    }
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            let e = &c.event;
            let mut row = Vec::new();
            if view.all_namespaces {
                row.push(e.namespace.clone().unwrap_or_else(|| "-".into()));
            }
            row.push(view.age(e.received_at));
            if wide {
                row.push(view.second(e.received_at));
            }
            row.push(if wide {
                render::actor(e)
            } else {
                render::actor_cut(e, USER_WIDTH)
            });
            if wide {
                let groups = e.user.groups.join(",");
                row.push(if groups.is_empty() {
                    "-".into()
                } else {
                    groups
                });
            }
            row.push(e.operation.to_string());
            row.push(e.state.to_string());
            row.push(render::target(e));
            let width = if wide {
                WIDE_CHANGES_WIDTH
            } else {
                CHANGES_WIDTH
            };
            row.push(shorten(&render::summary(e), width));
            if wide {
                row.push(e.request_uid.clone());
                // What the audit log adds; `-` where it has no account of the change.
                let a = e.audit.as_ref();
                let or_dash =
                    |v: Option<String>| v.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into());
                row.push(or_dash(a.and_then(|a| a.impersonated_by.clone())));
                row.push(or_dash(a.map(|a| a.source_ips.join(","))));
                row.push(or_dash(a.and_then(|a| a.user_agent.clone())));
                row.push(or_dash(a.map(|a| a.audit_id.clone())));
            }
            row
        })
        .collect();
    table(&header, &rows)
}

/// The changes as a `ChangeList`, pretty JSON.
pub fn json(changes: &[Change]) -> Result<String, serde_json::Error> {
    Ok(serde_json::to_string_pretty(&ChangeList::new(changes.to_vec(), None))? + "\n")
}

/// The changes as a `ChangeList`, YAML (kubectl style, through the same writer as blame).
pub fn yaml(changes: &[Change]) -> Result<String, serde_json::Error> {
    Ok(yaml::to_string(&serde_json::to_value(ChangeList::new(
        changes.to_vec(),
        None,
    ))?))
}

/// `# change 1763777269000000  2026-11-22 02:07:49 (5m ago)  admin  UPDATE  deployments.apps/nginx`
/// and under it `# state: confirmed: committed at resourceVersion 4242 (seen by the watch)`.
fn heading(c: &Change, view: &View) -> String {
    let e = &c.event;
    let mut state = format!("# state: {}", escape_controls(&render::state_note(e)));
    if let Some(audit) = render::audit_note(e) {
        state = format!("{state}\n# {}", escape_controls(&audit));
    }
    // A change that did not happen stands out on a terminal.
    let state = if e.state.may_have_happened() {
        state
    } else {
        paint(&state, "33", view.color)
    };
    format!(
        "{}\n{state}",
        bold(
            &format!(
                "# change {}  {} ({} ago)  {}  {}  {}",
                escape_controls(c.id()),
                view.second(e.received_at),
                view.age(e.received_at),
                escape_controls(&render::actor(e)),
                e.operation,
                escape_controls(&render::target(e)),
            ),
            view.color,
        )
    )
}

/// Each change's JSON Patch, one operation a line, under a heading. Uses the server's `patch`
/// when the change was fetched alone, else the one the event's changes make.
pub fn patches(changes: &[Change], view: &View) -> String {
    let mut out = String::new();
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&heading(c, view));
        out.push('\n');
        let ops: Vec<Value> = match &c.patch {
            Some(Value::Array(ops)) => ops.clone(),
            _ => serde_json::to_value(c.event.json_patch())
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default(),
        };
        if ops.is_empty() {
            let what = match c.event.operation {
                // A refused change did nothing: the heading's state line says why.
                _ if !c.event.state.may_have_happened() => "not applied: no field changes",
                crate::crd::Operation::Create => "created: no field changes (see -o diff)",
                crate::crd::Operation::Delete => "deleted: no field changes (see -o diff)",
                _ => "no field changes",
            };
            out.push_str(&format!("[]  # {what}\n"));
            continue;
        }
        out.push_str("[\n");
        for (j, op) in ops.iter().enumerate() {
            let comma = if j + 1 < ops.len() { "," } else { "" };
            // serde_json escapes C0 controls; DEL, C1 and bidi overrides it leaves raw.
            let op = escape_controls(&hide_hashes(&op.to_string())).into_owned();
            out.push_str(&format!("  {op}{comma}\n"));
        }
        out.push_str("]\n");
    }
    out
}

/// Each change's unified YAML diff under a heading; coloured as git colours diffs.
pub fn diffs(changes: &[Change], view: &View) -> String {
    let mut out = String::new();
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&heading(c, view));
        out.push('\n');
        match c.diff.as_deref() {
            Some(d) if !d.is_empty() => out.push_str(&paint_diff(&hide_hashes(d), view)),
            _ => out.push_str("(no diff: the object's states around this change are unknown)\n"),
        }
    }
    out
}

/// A unified diff, escaped and coloured as git colours diffs. The diff may come from the
/// server: a raw CR or ESC in it is shown, not obeyed. Split on LF only, so a CR before it
/// stays visible.
pub fn paint_diff(diff: &str, view: &View) -> String {
    let mut out = String::new();
    for line in diff.split_terminator('\n') {
        let line = escape_controls(line);
        let line = line.as_ref();
        let painted = if line.starts_with("+++") || line.starts_with("---") {
            bold(line, view.color)
        } else if line.starts_with("@@") {
            paint(line, "36", view.color)
        } else if line.starts_with('+') {
            paint(line, "32", view.color)
        } else if line.starts_with('-') {
            paint(line, "31", view.color)
        } else {
            line.to_owned()
        };
        out.push_str(&painted);
        out.push('\n');
    }
    out
}

/// Redacted Secret values (`hmac-sha256:` and 64 hex digits) as `<redacted>`: the hash tells
/// people nothing, and `-`/`+` lines around it already say the value changed.
pub fn hide_hashes(text: &str) -> String {
    const MARK: &str = "hmac-sha256:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let hex = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        out.push_str(&rest[..at]);
        if hex >= 64 {
            out.push_str("<redacted>");
            rest = &after[hex..];
        } else {
            out.push_str(MARK);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}
