//! Rendering: one event or a digest of events as a Slack Block Kit message, an email (subject,
//! text/plain and text/html) or a generic webhook JSON body. Pure; depends on pipeline and store
//! types only.
//!
//! A message says what is known ([`crate::render::state_note`]): a change still `received` (sent
//! to a sink that notifies on receipt) is marked as not yet confirmed, and an `observed` change
//! names its actor as inferred from `managedFields` ([`crate::render::actor`]), never as a user.
//!
//! Secret values never reach a message: the redactor has already replaced them with
//! `hmac-sha256:<hex>` strings, and here those (and anything under a Secret's `data`/`stringData`)
//! are shown only as "which key changed".

use super::config::SinkKind;
use super::digest::{name_list, summarize};
use crate::crd::Operation;
use crate::pipeline::{ChangeEvent, ChangeState, FieldChange, summary};
use crate::render::html_escape;
use crate::render::{actor, state_note};
use crate::store::StoredEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most events a webhook body carries; the summary still counts them all.
const MAX_WEBHOOK_EVENTS: usize = 1000;

/// A rendered notification, as kept in the outbox (rendered once so that every retry sends the
/// very same bytes, and the HMAC signature of a retry matches the first attempt's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Payload {
    /// Slack Block Kit JSON.
    Slack { body: String },
    /// Email content; sender and recipients come from the sink at send time.
    Email(EmailContent),
    /// Generic webhook JSON.
    Webhook { body: String },
}

/// The parts of an email.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmailContent {
    /// Subject line saying the gist.
    pub subject: String,
    /// text/plain part.
    pub text: String,
    /// text/html part.
    pub html: String,
}

/// Where a message comes from, shown in its footer and in webhook bodies.
#[derive(Clone, Debug, Default)]
pub struct MessageContext {
    /// TrackingPolicy name.
    pub policy: String,
    /// Sink name.
    pub sink: String,
    /// The outbox delivery id (idempotency key).
    pub delivery_id: String,
    /// Changed fields shown per event.
    pub max_fields: usize,
    /// Events listed in a digest.
    pub max_listed: usize,
}

/// Renders `events` (one, or a digest of several) for a sink of `kind`.
pub fn render(kind: SinkKind, events: &[StoredEvent], ctx: &MessageContext) -> Payload {
    match kind {
        SinkKind::Slack => Payload::Slack {
            body: render_slack(events, ctx).to_string(),
        },
        SinkKind::Email => Payload::Email(render_email(events, ctx)),
        SinkKind::Webhook => Payload::Webhook {
            body: render_webhook(events, ctx).to_string(),
        },
    }
}

/// `created`, `updated`, `deleted`, `connected to`.
pub fn verb(op: Operation) -> &'static str {
    match op {
        Operation::Create => "created",
        Operation::Update => "updated",
        Operation::Delete => "deleted",
        Operation::Connect => "connected to",
    }
}

/// `deployments.apps demo/nginx` (with `/scale` for a subresource): what kubectl users recognise.
pub fn what(e: &ChangeEvent) -> String {
    let mut resource = e.resource.group_resource();
    if let Some(sub) = &e.resource.subresource {
        resource = format!("{resource} ({sub})");
    }
    match &e.namespace {
        Some(ns) => format!("{resource} {ns}/{}", e.name),
        None => format!("{resource} {}", e.name),
    }
}

fn is_secret(e: &ChangeEvent) -> bool {
    e.kind.group.is_empty() && e.kind.kind == "Secret"
}

fn is_secret_data_path(path: &str) -> bool {
    ["/data", "/stringData"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// One changed field, human-readable (`spec.replicas: 1 → 3`, `data.password changed`).
pub fn display_change(e: &ChangeEvent, c: &FieldChange) -> String {
    // Defence in depth: a Secret's data is named, never shown, even if a value escaped redaction.
    if is_secret(e) && is_secret_data_path(&c.path) && !summary::hides_values(c) {
        return format!("{} changed (value hidden)", summary::display_path(&c.path));
    }
    summary::describe(c)
}

/// Up to `max` changed fields of `e`, plus how many were left out.
pub fn change_lines(e: &ChangeEvent, max: usize) -> (Vec<String>, usize) {
    let lines = e
        .changes
        .iter()
        .take(max)
        .map(|c| display_change(e, c))
        .collect();
    (lines, e.changes.len().saturating_sub(max))
}

/// What follows the target of a change still `received`: it may yet be refused.
const NOT_YET_CONFIRMED: &str = " (not yet confirmed)";

/// `alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3` (and `+2 more fields`);
/// `… demo/nginx (not yet confirmed): …` for a `received` change, the mark before the fields so
/// that a cut line loses fields first; an inferred actor as `kubectl-edit (inferred)`.
pub fn one_line(e: &ChangeEvent) -> String {
    let mark = if e.state == ChangeState::Received {
        NOT_YET_CONFIRMED
    } else {
        ""
    };
    let head = format!("{} {} {}{mark}", actor(e), verb(e.operation), what(e));
    match e.changes.as_slice() {
        [] => head,
        [c] => format!("{head}: {}", display_change(e, c)),
        [c, rest @ ..] => format!(
            "{head}: {} (+{} more field{})",
            display_change(e, c),
            rest.len(),
            if rest.len() == 1 { "" } else { "s" }
        ),
    }
}

fn when(e: &ChangeEvent) -> String {
    e.received_at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn headline(events: &[StoredEvent]) -> String {
    match events {
        [one] => one_line(&one.event),
        many => summarize(many.iter().map(|s| &s.event)).headline(),
    }
}

/// Escapes text for Slack mrkdwn, which treats `&`, `<` and `>` as control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let c: String = s.chars().take(max - 1).collect();
        format!("{c}…")
    }
}

fn footer(ctx: &MessageContext) -> String {
    format!("histor · policy {} · sink {}", ctx.policy, ctx.sink)
}

/// Slack Block Kit message: header, who/what/where/when, changed fields, context footer.
pub fn render_slack(events: &[StoredEvent], ctx: &MessageContext) -> Value {
    let title = headline(events);
    let mut blocks = vec![json!({
        "type": "header",
        // Slack caps header text at 150 characters.
        "text": {"type": "plain_text", "text": cut(&title, 150), "emoji": false}
    })];
    match events {
        [one] => {
            let e = &one.event;
            let ts = e.received_at.as_second();
            blocks.push(json!({
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": format!("*Who*\n{}", slack_escape(&actor(e)))},
                    {"type": "mrkdwn", "text": format!("*What*\n{} {}", verb(e.operation), slack_escape(&e.resource.group_resource()))},
                    {"type": "mrkdwn", "text": format!("*Where*\n{}", slack_escape(&match &e.namespace {
                        Some(ns) => format!("{ns}/{}", e.name),
                        None => e.name.clone(),
                    }))},
                    {"type": "mrkdwn", "text": format!("*When*\n<!date^{ts}^{{date_short_pretty}} {{time_secs}}|{}>", when(e))},
                    {"type": "mrkdwn", "text": cut(&format!("*State*\n{}", slack_escape(&state_note(e))), 2000)},
                ]
            }));
            let (lines, more) = change_lines(e, ctx.max_fields);
            if !lines.is_empty() {
                let mut text = lines
                    .iter()
                    .map(|l| format!("• {}", slack_escape(l)))
                    .collect::<Vec<_>>()
                    .join("\n");
                if more > 0 {
                    text.push_str(&format!("\n…and {more} more"));
                }
                blocks.push(json!({
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": cut(&format!("*Changed fields*\n{text}"), 3000)}
                }));
            }
        }
        many => {
            let s = summarize(many.iter().map(|s| &s.event));
            let users = s
                .users
                .iter()
                .map(|(u, n)| format!("{} ({n})", slack_escape(u)))
                .collect::<Vec<_>>();
            let resources = s
                .resources
                .iter()
                .map(|(r, n)| format!("{} ({n})", slack_escape(r)))
                .collect::<Vec<_>>();
            blocks.push(json!({
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": format!("*Who*\n{}", name_list(&users, 5))},
                    {"type": "mrkdwn", "text": format!("*What*\n{}", s.operations_line())},
                    {"type": "mrkdwn", "text": format!("*Resources*\n{}", name_list(&resources, 5))},
                    {"type": "mrkdwn", "text": format!("*When*\n{} – {}",
                        s.first.map(|t| t.strftime("%H:%M:%S").to_string()).unwrap_or_default(),
                        s.last.map(|t| t.strftime("%H:%M:%S UTC").to_string()).unwrap_or_default())},
                ]
            }));
            let mut text = many
                .iter()
                .take(ctx.max_listed)
                .map(|s| format!("• {}", slack_escape(&one_line(&s.event))))
                .collect::<Vec<_>>()
                .join("\n");
            if many.len() > ctx.max_listed {
                text.push_str(&format!("\n…and {} more", many.len() - ctx.max_listed));
            }
            blocks.push(json!({
                "type": "section",
                "text": {"type": "mrkdwn", "text": cut(&text, 3000)}
            }));
        }
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": slack_escape(&footer(ctx))}]
    }));
    // `text` (mrkdwn, hence escaped) is what notifications and screen readers show. The header
    // is plain_text, which Slack never parses, so it stays as is.
    json!({"text": slack_escape(&title), "blocks": blocks})
}

/// Email with a subject that says the gist, and matching text and HTML parts.
pub fn render_email(events: &[StoredEvent], ctx: &MessageContext) -> EmailContent {
    let subject = format!("[histor] {}", cut(&headline(events), 200));
    let mut text = String::new();
    let mut html = String::from(
        "<!DOCTYPE html><html><body style=\"font-family: sans-serif; font-size: 14px\">\n",
    );
    match events {
        [one] => {
            let e = &one.event;
            let rows = [
                ("Who", actor(e)),
                ("What", format!("{} {}", verb(e.operation), what(e))),
                ("When", when(e)),
                ("State", state_note(e)),
                ("Request", e.request_uid.clone()),
            ];
            html.push_str(&format!(
                "<h2>{}</h2>\n<table>\n",
                html_escape(&one_line(e))
            ));
            for (k, v) in rows {
                text.push_str(&format!("{k:<8} {v}\n"));
                html.push_str(&format!(
                    "<tr><th align=\"left\">{k}</th><td>{}</td></tr>\n",
                    html_escape(&v)
                ));
            }
            html.push_str("</table>\n");
            let (lines, more) = change_lines(e, ctx.max_fields);
            if !lines.is_empty() {
                text.push_str("\nChanged fields:\n");
                html.push_str("<h3>Changed fields</h3>\n<ul>\n");
                for l in &lines {
                    text.push_str(&format!("  {l}\n"));
                    html.push_str(&format!("<li><code>{}</code></li>\n", html_escape(l)));
                }
                if more > 0 {
                    text.push_str(&format!("  …and {more} more\n"));
                    html.push_str(&format!("<li>…and {more} more</li>\n"));
                }
                html.push_str("</ul>\n");
            }
        }
        many => {
            let s = summarize(many.iter().map(|s| &s.event));
            let users: Vec<String> = s.users.iter().map(|(u, n)| format!("{u} ({n})")).collect();
            let resources: Vec<String> = s
                .resources
                .iter()
                .map(|(r, n)| format!("{r} ({n})"))
                .collect();
            let rows = [
                ("Who", users.join(", ")),
                ("What", s.operations_line()),
                ("Resources", resources.join(", ")),
                (
                    "When",
                    format!(
                        "{} – {}",
                        s.first.map(|t| t.to_string()).unwrap_or_default(),
                        s.last.map(|t| t.to_string()).unwrap_or_default()
                    ),
                ),
            ];
            html.push_str(&format!(
                "<h2>{}</h2>\n<table>\n",
                html_escape(&s.headline())
            ));
            text.push_str(&format!("{}\n\n", s.headline()));
            for (k, v) in rows {
                text.push_str(&format!("{k:<10} {v}\n"));
                html.push_str(&format!(
                    "<tr><th align=\"left\">{k}</th><td>{}</td></tr>\n",
                    html_escape(&v)
                ));
            }
            html.push_str("</table>\n<h3>Changes</h3>\n<ul>\n");
            text.push_str("\nChanges:\n");
            for s in many.iter().take(ctx.max_listed) {
                let l = one_line(&s.event);
                text.push_str(&format!("  {l}\n"));
                html.push_str(&format!("<li>{}</li>\n", html_escape(&l)));
            }
            if many.len() > ctx.max_listed {
                let more = many.len() - ctx.max_listed;
                text.push_str(&format!("  …and {more} more\n"));
                html.push_str(&format!("<li>…and {more} more</li>\n"));
            }
            html.push_str("</ul>\n");
        }
    }
    let foot = footer(ctx);
    text.push_str(&format!("\n-- \n{foot}\n"));
    html.push_str(&format!(
        "<p style=\"color: #888; font-size: 12px\">{}</p>\n</body></html>\n",
        html_escape(&foot)
    ));
    EmailContent {
        subject,
        text,
        html,
    }
}

/// Replaces every hashed Secret value inside `v` so that only key names remain.
fn scrub(v: &mut Value) {
    match v {
        Value::String(_) if crate::pipeline::is_redacted_value(v) => {
            *v = Value::String("(hidden)".into())
        }
        Value::Array(a) => a.iter_mut().for_each(scrub),
        Value::Object(o) => o.values_mut().for_each(scrub),
        _ => {}
    }
}

fn scrub_object_values(v: &mut Value) {
    match v {
        Value::Object(o) => o
            .values_mut()
            .for_each(|x| *x = Value::String("(hidden)".into())),
        other => *other = Value::String("(hidden)".into()),
    }
}

/// The event as a webhook receiver sees it: no `object` (receivers can query histor for it), and
/// changes without Secret values.
fn webhook_event(s: &StoredEvent) -> Value {
    let mut e = s.event.clone();
    e.object = None;
    let secret = is_secret(&s.event);
    for c in &mut e.changes {
        if secret && is_secret_data_path(&c.path) {
            c.old.as_mut().map(scrub_object_values);
            c.new.as_mut().map(scrub_object_values);
        }
        c.old.as_mut().map(scrub);
        c.new.as_mut().map(scrub);
    }
    let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("id".into(), json!(s.id));
        o.insert("summary".into(), json!(one_line(&s.event)));
    }
    v
}

/// Generic webhook body: a summary plus the events as JSON.
pub fn render_webhook(events: &[StoredEvent], ctx: &MessageContext) -> Value {
    let s = summarize(events.iter().map(|s| &s.event));
    json!({
        "deliveryId": ctx.delivery_id,
        "policy": ctx.policy,
        "sink": ctx.sink,
        "summary": headline(events),
        "count": events.len(),
        "users": s.users.iter().map(|(u, _)| u).collect::<Vec<_>>(),
        "truncated": events.len() > MAX_WEBHOOK_EVENTS,
        "events": events.iter().take(MAX_WEBHOOK_EVENTS).map(webhook_event).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testutil::{event, fixtures, stored};
    use crate::pipeline::ChangeOp;

    fn ctx() -> MessageContext {
        MessageContext {
            policy: "prod".into(),
            sink: "team".into(),
            delivery_id: "d-1".into(),
            max_fields: 10,
            max_listed: 5,
        }
    }

    fn scaled() -> ChangeEvent {
        let mut e = event("alice", Operation::Update, Some("demo"), "nginx");
        e.changes = vec![FieldChange {
            op: ChangeOp::Replace,
            path: "/spec/replicas".into(),
            old: Some(json!(1)),
            new: Some(json!(3)),
        }];
        e
    }

    #[test]
    fn single_event_email_subject_says_the_gist() {
        let m = render_email(&[stored(1, scaled())], &ctx());
        assert_eq!(
            m.subject,
            "[histor] alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3"
        );
        assert!(m.text.contains("spec.replicas: 1 → 3"));
        assert!(m.html.contains("<code>spec.replicas: 1 → 3</code>"));
    }

    #[test]
    fn html_is_escaped() {
        let mut e = scaled();
        e.user.username = "<script>alert(1)</script>".into();
        let m = render_email(&[stored(1, e.clone())], &ctx());
        assert!(!m.html.contains("<script>"));
        assert!(m.html.contains("&lt;script&gt;"));
        let slack = render_slack(&[stored(1, e)], &ctx());
        assert!(
            slack["text"]
                .as_str()
                .unwrap()
                .starts_with("&lt;script&gt;")
        );
        assert_eq!(
            slack["blocks"][1]["fields"][0]["text"],
            "*Who*\n&lt;script&gt;alert(1)&lt;/script&gt;"
        );
    }

    #[test]
    fn digest_lists_the_first_few_and_counts_the_rest() {
        let events: Vec<StoredEvent> = (0..200)
            .map(|i| {
                let user = if i % 2 == 0 { "alice" } else { "bob" };
                stored(
                    i,
                    event(user, Operation::Update, Some("demo"), &format!("a{i}")),
                )
            })
            .collect();
        let m = render_email(&events, &ctx());
        assert_eq!(m.subject, "[histor] 200 changes by alice, bob in demo");
        assert!(m.text.contains("…and 195 more"), "{}", m.text);
        let slack = render_slack(&events, &ctx());
        assert_eq!(slack["blocks"][0]["type"], "header");
        assert!(slack.to_string().contains("…and 195 more"));
        let hook = render_webhook(&events, &ctx());
        assert_eq!(hook["count"], 200);
        assert_eq!(hook["events"].as_array().map(Vec::len), Some(200));
    }

    #[test]
    fn slack_blocks_have_the_expected_shape() {
        let v = render_slack(&[stored(7, scaled())], &ctx());
        let blocks = v["blocks"].as_array().unwrap();
        let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["header", "section", "section", "context"]);
        assert_eq!(blocks[1]["fields"][0]["text"], "*Who*\nalice");
        assert!(v["text"].as_str().unwrap().contains("spec.replicas: 1 → 3"));
    }

    /// `scaled()` as a sink that notifies on receipt gets it: not yet confirmed.
    fn received() -> StoredEvent {
        let mut e = scaled();
        e.state = ChangeState::Received;
        stored(7, e)
    }

    /// A commit no review announced: no user, a field manager from `managedFields`.
    fn observed(manager: &str) -> StoredEvent {
        let mut e = scaled();
        e.user = Default::default();
        e.state = ChangeState::Observed;
        e.commit = Some(crate::pipeline::Commit {
            resource_version: "4242".into(),
            seen_at: "2026-11-22T02:07:54Z".parse().unwrap(),
            witness: crate::pipeline::Witness::Watch,
        });
        e.inferred = Some(crate::pipeline::InferredActor {
            manager: manager.into(),
            operation: "Update".into(),
            time: Some("2026-11-22T02:07:53Z".parse().unwrap()),
            subresource: None,
        });
        stored(8, e)
    }

    #[test]
    fn a_received_change_is_marked_not_yet_confirmed_in_every_message() {
        let m = render_email(&[received()], &ctx());
        assert_eq!(
            m.subject,
            "[histor] alice updated deployments.apps demo/nginx (not yet confirmed): \
             spec.replicas: 1 → 3"
        );
        assert_eq!(
            m.text,
            "Who      alice\n\
             What     updated deployments.apps demo/nginx\n\
             When     2026-11-22 02:07:53 UTC\n\
             State    received: announced by the webhook, not yet confirmed by a witness\n\
             Request  uid-nginx\n\
             \n\
             Changed fields:\n  spec.replicas: 1 → 3\n\
             \n-- \nhistor · policy prod · sink team\n"
        );
        assert!(m.html.contains(
            "<h2>alice updated deployments.apps demo/nginx (not yet confirmed): \
             spec.replicas: 1 → 3</h2>"
        ));
        assert!(m.html.contains(
            "<tr><th align=\"left\">State</th><td>received: announced by the webhook, \
             not yet confirmed by a witness</td></tr>"
        ));

        let slack = render_slack(&[received()], &ctx());
        assert_eq!(
            slack["text"],
            "alice updated deployments.apps demo/nginx (not yet confirmed): spec.replicas: 1 → 3"
        );
        assert_eq!(slack["blocks"][0]["text"]["text"], slack["text"]);
        assert_eq!(
            slack["blocks"][1]["fields"][4]["text"],
            "*State*\nreceived: announced by the webhook, not yet confirmed by a witness"
        );

        let hook = render_webhook(&[received()], &ctx());
        assert_eq!(
            hook["summary"],
            "alice updated deployments.apps demo/nginx (not yet confirmed): spec.replicas: 1 → 3"
        );
        assert_eq!(hook["events"][0]["state"], "received");
        assert_eq!(hook["events"][0]["summary"], hook["summary"]);

        // A digest lists it with the mark too.
        let digest = render_email(&[received(), stored(9, scaled())], &ctx());
        assert!(digest.text.contains(
            "  alice updated deployments.apps demo/nginx (not yet confirmed): spec.replicas: 1 → 3\n\
             \x20 alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3\n"
        ), "{}", digest.text);
    }

    #[test]
    fn a_confirmed_change_says_its_commit_and_carries_no_mark() {
        let mut e = scaled();
        e.state = ChangeState::Confirmed;
        e.commit = observed("x").event.commit;
        let one = [stored(7, e)];
        let m = render_email(&one, &ctx());
        assert_eq!(
            m.subject,
            "[histor] alice updated deployments.apps demo/nginx: spec.replicas: 1 → 3"
        );
        assert!(m.text.contains(
            "State    confirmed: committed at resourceVersion 4242 (seen by the watch)\n"
        ));
        let hook = render_webhook(&one, &ctx());
        assert_eq!(hook["events"][0]["state"], "confirmed");
        assert_eq!(hook["events"][0]["commit"]["resourceVersion"], "4242");
    }

    #[test]
    fn an_observed_change_names_its_actor_as_inferred() {
        let one = [observed("kubectl-edit")];
        let m = render_email(&one, &ctx());
        assert_eq!(
            m.subject,
            "[histor] kubectl-edit (inferred) updated deployments.apps demo/nginx: \
             spec.replicas: 1 → 3"
        );
        assert!(
            m.text.starts_with(
                "Who      kubectl-edit (inferred)\n\
             What     updated deployments.apps demo/nginx\n\
             When     2026-11-22 02:07:53 UTC\n\
             State    observed: committed at resourceVersion 4242 (seen by the watch), \
             announced by no review; actor inferred from managedFields (field manager \
             kubectl-edit, Update at 2026-11-22T02:07:53Z), not authenticated\n"
            ),
            "{}",
            m.text
        );
        let slack = render_slack(&one, &ctx());
        assert_eq!(
            slack["blocks"][1]["fields"][0]["text"],
            "*Who*\nkubectl-edit (inferred)"
        );
        assert!(
            slack["blocks"][1]["fields"][4]["text"]
                .as_str()
                .unwrap()
                .contains("actor inferred from managedFields")
        );
        let hook = render_webhook(&one, &ctx());
        assert_eq!(
            hook["summary"],
            "kubectl-edit (inferred) updated deployments.apps demo/nginx: spec.replicas: 1 → 3"
        );
        assert_eq!(hook["users"], json!(["kubectl-edit (inferred)"]));
        assert_eq!(hook["events"][0]["state"], "observed");
        assert_eq!(hook["events"][0]["inferred"]["manager"], "kubectl-edit");
        assert_eq!(hook["events"][0]["user"]["username"], "");
        // A digest counts it under the inferred actor, never as an empty user name.
        let digest = render_email(&[observed("kubectl-edit"), stored(9, scaled())], &ctx());
        assert!(
            digest
                .text
                .contains("Who        alice (1), kubectl-edit (inferred) (1)\n"),
            "{}",
            digest.text
        );
    }

    /// A field manager is whatever a client called itself: escaped like a user name.
    #[test]
    fn an_inferred_manager_is_escaped() {
        let one = [observed("<b>x&y</b>")];
        let m = render_email(&one, &ctx());
        assert!(!m.html.contains("<b>"), "{}", m.html);
        assert!(m.html.contains(
            "<tr><th align=\"left\">Who</th><td>&lt;b&gt;x&amp;y&lt;/b&gt; (inferred)</td></tr>"
        ));
        assert!(
            m.html
                .contains("field manager &lt;b&gt;x&amp;y&lt;/b&gt;, Update")
        );
        let slack = render_slack(&one, &ctx());
        assert_eq!(
            slack["blocks"][1]["fields"][0]["text"],
            "*Who*\n&lt;b&gt;x&amp;y&lt;/b&gt; (inferred)"
        );
        assert!(!slack["blocks"][1]["fields"][4].to_string().contains("<b>"));
        assert!(
            slack["text"]
                .as_str()
                .unwrap()
                .starts_with("&lt;b&gt;x&amp;y&lt;/b&gt; (inferred)")
        );
    }

    #[test]
    fn no_secret_value_in_any_message() {
        let events: Vec<StoredEvent> = fixtures::secret_events("prod")
            .into_iter()
            .enumerate()
            .map(|(i, e)| stored(i as u64, e))
            .collect();
        // The fixtures do carry the values (else this test would prove nothing).
        let raw =
            serde_json::to_string(&events.iter().map(|s| &s.event).collect::<Vec<_>>()).unwrap();
        assert!(raw.contains("hmac-sha256:"));
        let rotated = &events[3].event;
        assert!(
            rotated.changes.iter().any(|c| c.path == "/data/password"),
            "{:?}",
            rotated.changes
        );
        let mut outputs = Vec::new();
        for batch in events.chunks(1).chain([&events[..]]) {
            for kind in [SinkKind::Slack, SinkKind::Email, SinkKind::Webhook] {
                outputs.push(serde_json::to_string(&render(kind, batch, &ctx())).unwrap());
            }
        }
        for o in &outputs {
            fixtures::assert_no_secret_values(o);
        }
        // Key names are still shown.
        let m = render_email(&events[3..4], &ctx());
        assert!(m.text.contains("data.password changed"), "{}", m.text);
        assert!(m.text.contains("stringData added: token"), "{}", m.text);
    }
}
