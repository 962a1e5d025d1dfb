//! The blame view: an object's current (or last known) cleaned YAML with every line annotated
//! with the change that last touched it, like `git blame`.
//!
//! Attribution, over the object's history oldest → newest:
//! - a recorded CREATE attributes every line to itself; without one, every line starts as
//!   `(before history)` — the oldest change's diff says which fields it set, so the rest of its
//!   state (its `before`, or its `after` when that is all the server knows) predates the record;
//! - each later change claims every path it touched and everything under it, and for a removal
//!   the parent line too (the line where the field used to be);
//! - a line that heads a block (a key with children) shows the newest attribution in its block,
//!   so `spec:` tells when anything under `spec` last changed.
//!
//! The state shown is the newest change's `after`, or for a deleted object the DELETE's `before`.
//! A change the apiserver did not commit (`notApplied`) is listed in the header but claims no
//! line, and its state is never the one shown: the object never looked like that.
//! Pure: changes in, lines out; [`super::output`] owns time and colour.

use super::api::Change;
use super::output::{View, bold, dim, short_uid};
use super::yaml;
use crate::crd::Operation;
use crate::pipeline::{ChangeOp, FieldChange};
use crate::render::{self, escape_controls, shorten};
use serde_json::Value;

/// Who a line is attributed to: an index into the history, or `None` for the state before the
/// first recorded change.
pub type Attribution = Option<usize>;

/// One annotated line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlameLine {
    /// The change that last touched the line.
    pub attribution: Attribution,
    /// The YAML text of the line.
    pub text: String,
}

/// Why there is nothing to blame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlameError {
    /// No changes at all.
    #[error("no changes recorded")]
    Empty,
    /// Every recorded change was refused: the object never had a recorded state.
    #[error("no recorded change was applied (see -o table)")]
    NothingApplied,
    /// The newest change does not carry the object (fetched without `include=objects`, or the
    /// store could not rebuild it).
    #[error("the state of the object after change {0} is unknown")]
    NoState(String),
}

/// The annotated lines of the object whose `history` (oldest → newest, one object; the last
/// change fetched with `include=objects`) is given.
pub fn blame(history: &[Change]) -> Result<Vec<BlameLine>, BlameError> {
    if history.is_empty() {
        return Err(BlameError::Empty);
    }
    // Only changes that may have happened own lines; the ones refused are history, not state.
    let applied: Vec<usize> = (0..history.len())
        .filter(|&i| history[i].event.state.may_have_happened())
        .collect();
    let (Some(&first), Some(&last)) = (applied.first(), applied.last()) else {
        return Err(BlameError::NothingApplied);
    };
    let state = final_state(&history[last])
        .ok_or_else(|| BlameError::NoState(history[last].id().to_owned()))?;
    // A recorded CREATE is the baseline and owns every line nobody changed since. Without it,
    // the oldest change's own diff says exactly which fields it set, so everything else
    // predates the history (rather than being pinned on whoever happened to be recorded first).
    let (baseline, claims) = if history[first].event.operation == Operation::Create {
        (Some(first), &applied[1..])
    } else {
        (None, &applied[..])
    };
    let lines = yaml::lines(state);
    let own: Vec<Attribution> = lines
        .iter()
        .map(|line| {
            claims
                .iter()
                .rev()
                .map(|&i| (i, &history[i]))
                .find(|(_, c)| {
                    c.event
                        .changes
                        .iter()
                        .any(|fc| line.pointers.iter().any(|p| touches(fc, p)))
                })
                .map_or(baseline, |(i, _)| Some(i))
        })
        .collect();
    Ok(lines
        .iter()
        .enumerate()
        .map(|(i, line)| BlameLine {
            attribution: own[i..line.end].iter().copied().max().unwrap_or(baseline),
            text: line.text.clone(),
        })
        .collect())
}

/// The newest change of `history` (oldest → newest) that may have happened: the one whose state
/// the blame view shows, and so the one to fetch with its objects.
pub fn shown(history: &[Change]) -> Option<usize> {
    history
        .iter()
        .rposition(|c| c.event.state.may_have_happened())
}

/// The object as last known: after the newest change, or before it when it was a DELETE.
pub fn final_state(last: &Change) -> Option<&Value> {
    match last.event.operation {
        Operation::Delete => last.before.as_ref().or(last.after.as_ref()),
        _ => last.after.as_ref(),
    }
}

/// Whether `change` claims the line showing `pointer`: the path itself, anything under it, and
/// for a removal the parent of the removed field.
fn touches(change: &FieldChange, pointer: &str) -> bool {
    let path = change.path.as_str();
    let under = pointer
        .strip_prefix(path)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    under
        || (change.op == ChangeOp::Remove
            && path
                .rsplit_once('/')
                .is_some_and(|(parent, _)| parent == pointer))
}

/// Longest user name shown in the gutter before it is cut.
const MAX_USER: usize = 16;
/// Changes listed in the header before older ones are only counted.
const MAX_LISTED: usize = 10;

/// The blame view as text: a header (the object, how many changes by whom over what span, the
/// newest changes with their states, what the witnesses know of the change shown, whether it
/// was deleted) and the annotated lines. Every user-controlled string
/// (names, users, uids, summaries) goes through [`escape_controls`]; the YAML lines are escaped
/// by their writer. `history` is the one given
/// to [`blame`]; `earlier` counts changes to earlier objects of the same name left out.
pub fn render(history: &[Change], lines: &[BlameLine], earlier: usize, view: &View) -> String {
    let (Some(first), Some(last)) = (history.first(), history.last()) else {
        return String::new();
    };
    let mut out = String::new();
    let target = match &last.event.namespace {
        Some(ns) => format!("{} in namespace {ns}", last.event.target()),
        None => last.event.target(),
    };
    let target = escape_controls(&target);
    let mut users: Vec<String> = Vec::new();
    for c in history {
        let actor = render::actor(&c.event);
        if !users.contains(&actor) {
            users.push(actor);
        }
    }
    let users = escape_controls(&users.join(", ")).into_owned();
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    out.push_str(&bold(
        &format!(
            "# {target}: {} by {} from {} to {}",
            plural(history.len(), "change"),
            users,
            view.minute(first.event.received_at),
            view.minute(last.event.received_at),
        ),
        view.color,
    ));
    out.push('\n');

    // Cut before it is escaped (an escape is never cut in two), measured after.
    let user = |c: &Change| escape_controls(&render::actor_cut(&c.event, MAX_USER)).into_owned();
    let user_width = history
        .iter()
        .map(|c| user(c).chars().count())
        .max()
        .unwrap_or(0);
    let gutter = |c: &Change| {
        format!(
            "{} {:<w$}  {}  {:<6}",
            short_uid(&escape_controls(&c.event.request_uid)),
            user(c),
            view.minute(c.event.received_at),
            c.event.operation.as_str(),
            w = user_width
        )
    };
    let skipped = history.len().saturating_sub(MAX_LISTED);
    if skipped > 0 {
        out.push_str(&format!(
            "#   … {} not listed\n",
            plural(skipped, "older change")
        ));
    }
    let listed = &history[skipped..];
    let state_width = listed
        .iter()
        .map(|c| c.event.state.as_str().len())
        .max()
        .unwrap_or(0);
    for c in listed {
        out.push_str(&format!(
            "#   {}  {:<state_width$}  {}\n",
            gutter(c),
            c.event.state.as_str(),
            shorten(&escape_controls(&render::summary(&c.event)), 72)
        ));
    }
    if history.iter().any(|c| !c.event.state.may_have_happened()) {
        out.push_str("#   notApplied: the apiserver did not commit it, so it owns no line\n");
    }
    let before_history = lines.iter().any(|l| l.attribution.is_none());
    if before_history {
        out.push_str("#   (before history): not changed since before the oldest recorded change\n");
    }
    if earlier > 0 {
        out.push_str(&format!(
            "#   {} to an earlier object of the same name not shown (see -o table)\n",
            plural(earlier, "change")
        ));
    }
    // The change whose state is shown: the newest that may have happened.
    let shown = shown(history).and_then(|i| history.get(i)).unwrap_or(last);
    out.push_str(&format!(
        "# state of {} (the change shown): {}\n",
        short_uid(&escape_controls(&shown.event.request_uid)).trim_end(),
        escape_controls(&render::state_note(&shown.event)),
    ));
    if shown.event.operation == Operation::Delete {
        out.push_str(&bold(
            &format!(
                "# deleted by {} at {} ({} ago): showing its last state",
                escape_controls(&render::actor(&shown.event)),
                view.minute(shown.event.received_at),
                view.age(shown.event.received_at),
            ),
            view.color,
        ));
        out.push('\n');
    }
    out.push('\n');

    let width = gutter(first).chars().count();
    let mut previous: Option<Attribution> = None;
    for line in lines {
        let text = match line.attribution {
            Some(i) => history.get(i).map(gutter).unwrap_or_default(),
            None => format!("{:<width$}", "(before history)"),
        };
        // On a terminal, repeated gutters fade so the eye sees where attribution changes; piped
        // output keeps every gutter so that grep works line by line.
        let text = if previous == Some(line.attribution) {
            dim(&text, view.color)
        } else {
            text
        };
        previous = Some(line.attribution);
        out.push_str(&text);
        out.push_str(" │ ");
        // Already safe: the YAML writer quotes and escapes any string with a control in it
        // (tabs inside literal blocks excepted; they move no cursor anywhere but right).
        out.push_str(&line.text);
        out.push('\n');
    }
    out
}
