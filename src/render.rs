//! Text output for people: tables of events and diffs. Pure: events in, strings out.

use crate::pipeline::{self, ChangeEvent};
use crate::store::StoredEvent;

/// Widest CHANGES cell before it is shortened.
const MAX_CHANGES_WIDTH: usize = 72;

/// A table with aligned columns: TIME, NAMESPACE, USER, OP, TARGET, CHANGES.
pub fn events_table(events: &[StoredEvent]) -> String {
    let header = ["TIME", "NAMESPACE", "USER", "OP", "TARGET", "CHANGES"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = events.iter().map(|e| row(&e.event)).collect();
    table(&header, &rows)
}

fn row(e: &ChangeEvent) -> Vec<String> {
    vec![
        e.received_at.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        e.namespace.clone().unwrap_or_else(|| "-".into()),
        e.user.username.clone(),
        e.operation.to_string(),
        target(e),
        shorten(&pipeline::summarize(e), MAX_CHANGES_WIDTH),
    ]
}

/// `deployments.apps/nginx`, with the subresource as `deployments.apps/nginx (scale)`.
pub fn target(e: &ChangeEvent) -> String {
    match &e.resource.subresource {
        Some(sub) => format!("{} ({sub})", e.target()),
        None => e.target(),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
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
    fn shortens_on_char_boundaries() {
        assert_eq!(shorten("→→→→", 3), "→→…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
