//! Text output for people: tables of events and diffs, and [`escape_controls`], the one escape
//! every user-controlled string goes through before a terminal sees it. Pure: events in, strings
//! out.

use crate::crd::Operation;
use crate::pipeline::{self, ChangeEvent, ChangeState, Witness};
use crate::store::StoredEvent;
use std::borrow::Cow;
use std::fmt::Write as _;

/// Widest CHANGES cell before it is shortened.
const MAX_CHANGES_WIDTH: usize = 72;

/// A table with aligned columns: TIME, NAMESPACE, USER, OP, STATE, TARGET, CHANGES.
pub fn events_table(events: &[StoredEvent]) -> String {
    let header = [
        "TIME",
        "NAMESPACE",
        "USER",
        "OP",
        "STATE",
        "TARGET",
        "CHANGES",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = events.iter().map(|e| row(&e.event)).collect();
    table(&header, &rows)
}

fn row(e: &ChangeEvent) -> Vec<String> {
    vec![
        e.received_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        e.namespace.clone().unwrap_or_else(|| "-".into()),
        actor(e),
        e.operation.to_string(),
        e.state.to_string(),
        target(e),
        shorten(&summary(e), MAX_CHANGES_WIDTH),
    ]
}

/// Who made the change, as text shows it: the authenticated user, or for an `observed` change
/// the field manager its `managedFields` name, marked `(inferred)` (and `(unknown)` when they
/// name none, as for an object that vanished while histor was away). An inferred actor is
/// never shown as if it were an authenticated user. Not escaped: the caller escapes.
pub fn actor(e: &ChangeEvent) -> String {
    actor_cut(e, usize::MAX)
}

/// [`actor`] with the name cut to `max` characters; the `(inferred)` mark is kept whole.
pub fn actor_cut(e: &ChangeEvent, max: usize) -> String {
    match &e.inferred {
        Some(i) if !i.manager.is_empty() => format!("{} (inferred)", shorten(&i.manager, max)),
        _ if e.state == ChangeState::Observed => "(unknown)".to_owned(),
        _ => shorten(&e.user.username, max),
    }
}

/// What the audit log adds, in one line, when it has an account of the change:
/// `audit 9df6c8dc-…: 201, from 127.0.0.1, kubectl/v1.33.1 (…), sent by admin impersonating bob`.
pub fn audit_note(e: &ChangeEvent) -> Option<String> {
    let a = e.audit.as_ref()?;
    let mut parts = vec![format!("audit {}", a.audit_id)];
    if let Some(code) = a.code {
        parts.push(code.to_string());
    }
    if !a.source_ips.is_empty() {
        parts.push(format!("from {}", a.source_ips.join(", ")));
    }
    if let Some(ua) = &a.user_agent {
        parts.push(ua.clone());
    }
    if let Some(by) = &a.impersonated_by {
        parts.push(format!("sent by {by} impersonating {}", e.user.username));
    }
    let mut out = parts.remove(0) + ":";
    out.push(' ');
    out.push_str(&parts.join(", "));
    Some(out.trim_end_matches([':', ' ']).to_owned())
}

/// One line saying what changed ([`pipeline::summarize`]); for a change the apiserver did not
/// commit, worded so that it does not claim to have happened, the words that say so first so
/// that a cut summary keeps them.
pub fn summary(e: &ChangeEvent) -> String {
    if e.state.may_have_happened() {
        return pipeline::summarize(e);
    }
    match e.operation {
        Operation::Create => "create not applied".to_owned(),
        Operation::Delete => "delete not applied".to_owned(),
        Operation::Connect => "connect not applied".to_owned(),
        Operation::Update if e.changes.is_empty() => "update not applied".to_owned(),
        Operation::Update => format!("not applied: {}", pipeline::summarize(e)),
    }
}

/// What the witnesses know of the change, in words, for the line under a change's heading:
/// `confirmed: committed at resourceVersion 4242 (seen by the watch)`. Not escaped (the
/// manager and resourceVersion come from objects): the caller escapes.
pub fn state_note(e: &ChangeEvent) -> String {
    let commit = e.commit.as_ref().map(|c| {
        let witness = match c.witness {
            Witness::Watch => "the watch",
            Witness::Audit => "the audit log",
        };
        if c.resource_version.is_empty() {
            // An audit event at Metadata level, or a delete (answered with a Status).
            format!("committed (seen by {witness})")
        } else {
            format!(
                "committed at resourceVersion {} (seen by {witness})",
                c.resource_version
            )
        }
    });
    let state = e.state.as_str();
    match e.state {
        ChangeState::Received => {
            format!("{state}: announced by the webhook, not yet confirmed by a witness")
        }
        ChangeState::Confirmed => match commit {
            Some(commit) => format!("{state}: {commit}"),
            None => format!("{state}: committed"),
        },
        ChangeState::NotApplied => format!(
            "{state}: the apiserver did not commit this change (refused after admission, \
             superseded by a retry, or a forged review)"
        ),
        ChangeState::Observed => {
            let commit = commit.unwrap_or_else(|| "committed".to_owned());
            let who = match &e.inferred {
                Some(i) if !i.manager.is_empty() => {
                    let mut who = format!("field manager {}", i.manager);
                    if !i.operation.is_empty() {
                        who.push_str(&format!(", {}", i.operation));
                    }
                    if let Some(sub) = &i.subresource {
                        who.push_str(&format!(" of {sub}"));
                    }
                    if let Some(t) = i.time {
                        who.push_str(&format!(" at {t}"));
                    }
                    format!("actor inferred from managedFields ({who}), not authenticated")
                }
                _ => "actor unknown".to_owned(),
            };
            format!("{state}: {commit}, announced by no review; {who}")
        }
        ChangeState::Unconfirmed => {
            format!("{state}: no witness could tell whether it was committed")
        }
    }
}

/// `deployments.apps/nginx`, with the subresource as `deployments.apps/nginx (scale)`.
pub fn target(e: &ChangeEvent) -> String {
    match &e.resource.subresource {
        Some(sub) => format!("{} ({sub})", e.target()),
        None => e.target(),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them. Every cell is passed
/// through [`escape_controls`]: cells hold user names, object names and values.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let escape = |row: &[String]| -> Vec<String> {
        row.iter()
            .map(|cell| escape_controls(cell).into_owned())
            .collect()
    };
    let header = escape(header);
    let rows: Vec<Vec<String>> = rows.iter().map(|r| escape(r)).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.as_slice()).chain(rows.iter().map(Vec::as_slice)) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            out.push_str(cell);
            if i < last {
                out.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 3));
            }
        }
        out.push('\n');
    }
    out
}

/// Cuts `s` to `max` characters, ending in `…` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` as it may reach a terminal: every control character (C0 such as ESC, CR, LF, NUL and
/// TAB; DEL; C1 such as CSI U+009B) and every character that reorders or breaks lines on screen
/// (bidirectional overrides and isolates, U+2028/U+2029) written as the escape a JSON string
/// uses (`\n`, `\r`, `\t`, `\u001b`). A user named `mallory\x1b[8m` or an object named
/// `evil\r\nFAKE LINE` then cannot hide text or forge lines on a reader's screen. Borrowed when
/// there is nothing to escape, which is nearly always.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unprintable) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Writing to a String cannot fail.
            c if is_unprintable(c) => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// What [`escape_controls`] escapes. All of it lies in the Basic Multilingual Plane, so a
/// four-digit `\uXXXX` names each one.
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let header = vec!["A".to_string(), "BB".to_string()];
        let rows = vec![vec!["long".to_string(), "x".to_string()]];
        assert_eq!(table(&header, &rows), "A      BB\nlong   x\n");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape_controls("mallory\x1b[8m\r\nFAKE\0\t\u{7f}\u{9b}2J"),
            "mallory\\u001b[8m\\r\\nFAKE\\u0000\\t\\u007f\\u009b2J"
        );
        assert_eq!(escape_controls("a\u{202e}b\u{2066}"), "a\\u202eb\\u2066");
        assert!(matches!(
            escape_controls("système:admin → ☃ DOMAIN\\user"),
            Cow::Borrowed("système:admin → ☃ DOMAIN\\user")
        ));
    }

    #[test]
    fn table_cells_are_escaped_and_aligned_by_what_is_shown() {
        let header = vec!["USER".to_string(), "NAME".to_string()];
        let rows = vec![
            vec![
                "mallory\x1b[8m".to_string(),
                "evil\r\nFAKE LINE\0".to_string(),
            ],
            vec!["bob".to_string(), "ok".to_string()],
        ];
        let out = table(&header, &rows);
        assert_eq!(
            out,
            "USER               NAME\n\
             mallory\\u001b[8m   evil\\r\\nFAKE LINE\\u0000\n\
             bob                ok\n"
        );
    }

    #[test]
    fn shortens_on_char_boundaries() {
        assert_eq!(shorten("→→→→", 3), "→→…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
