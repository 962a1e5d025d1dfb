//! The usage report as one self-contained HTML page: a zoomable sunburst of calls (rings level →
//! group → resource → verb, arcs sized by calls) above the report's rows. Pure: a [`Report`] in,
//! a string out.
//!
//! Self-contained: the CSS and the script (`html/sunburst.css`, `html/sunburst.js`) are inlined
//! and the page names no URL, so it works opened from `file://` with no network. Its Content
//! Security Policy allows only that one script and that one stylesheet, by hash, and loads
//! nothing else.
//!
//! User names, user agents, resource names and paths are the caller's to choose, so none of
//! them is written as markup: the data goes in as JSON in a `<script type="application/json">`
//! with `<`, `>`, `&`, U+2028 and U+2029 written as `\u` escapes (nothing in it can close the
//! element), and the script puts it on the page with `textContent` and `setAttribute` only. The
//! title, the one string written by Rust, is HTML-escaped.
//!
//! `#zoom=PATH` in the page's URL (a segment's `data-path`, such as `stable/apps/deployments`)
//! opens it zoomed into that segment; zooming by clicking keeps the fragment up to date.

use super::endpoint::Level;
use super::report::{Report, Row, release_order, summary};
use crate::render::{escape_controls, html_escape};
use base64::Engine as _;
use serde::Serialize;
use std::collections::BTreeMap;

const CSS: &str = include_str!("html/sunburst.css");
const SCRIPT: &str = include_str!("html/sunburst.js");

/// The group ring's name for the core group (whose name is empty).
pub const CORE_GROUP: &str = "core";
/// The group ring's name for non-resource requests (`/healthz`, `/version`); their resource
/// ring is the path.
pub const NON_RESOURCE_GROUP: &str = "non-resource";

/// One segment of the sunburst and what is below it.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    /// The segment's own name: a level, a group, a resource (with `/subresource`), a verb.
    name: String,
    /// Calls below it.
    calls: u64,
    /// How many of them the apiserver marked deprecated.
    deprecated_calls: u64,
    /// The soonest removal announced for any of them.
    removed_release: Option<String>,
    /// Most called first (levels: stable, beta, alpha, other).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    children: Vec<Node>,
    #[serde(skip)]
    rank: Option<Level>,
}

impl Node {
    fn add(&mut self, row: &Row) {
        self.calls += row.counts.calls;
        if row.endpoint.deprecated {
            self.deprecated_calls += row.counts.calls;
        }
        if let Some(r) = &row.endpoint.removed_release {
            let sooner = self
                .removed_release
                .as_deref()
                .is_none_or(|have| release_order(r) < release_order(have));
            if sooner {
                self.removed_release = Some(r.clone());
            }
        }
    }

    fn sort(&mut self) {
        self.children.sort_by(|a, b| {
            a.rank
                .cmp(&b.rank)
                .then_with(|| b.calls.cmp(&a.calls))
                .then_with(|| a.name.cmp(&b.name))
        });
        for c in &mut self.children {
            c.sort();
        }
    }
}

/// The four ring names of a row: level, group (`core` for the core group), resource (with its
/// subresource, as RBAC names it: `deployments/scale`; the path of a non-resource request),
/// verb.
fn ring_names(row: &Row) -> [String; 4] {
    let e = &row.endpoint;
    let (group, resource) = match &e.path {
        Some(path) => (NON_RESOURCE_GROUP.to_string(), path.clone()),
        None => {
            let group = if e.group.is_empty() {
                CORE_GROUP.to_string()
            } else {
                e.group.clone()
            };
            let resource = match &e.subresource {
                Some(sub) => format!("{}/{sub}", e.resource),
                None => e.resource.clone(),
            };
            (group, resource)
        }
    };
    [e.level.label().to_string(), group, resource, e.verb.clone()]
}

fn tree(report: &Report) -> Node {
    // Built through maps (name → index) so that a large report stays linear.
    let mut root = Node {
        name: "all".into(),
        ..Node::default()
    };
    let mut index: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for row in &report.rows {
        root.add(row);
        let names = ring_names(row);
        let mut node = &mut root;
        for depth in 0..names.len() {
            let key = names[..=depth].to_vec();
            let i = match index.get(&key) {
                Some(i) => *i,
                None => {
                    node.children.push(Node {
                        name: names[depth].clone(),
                        rank: (depth == 0).then_some(row.endpoint.level),
                        ..Node::default()
                    });
                    let i = node.children.len() - 1;
                    index.insert(key, i);
                    i
                }
            };
            node = &mut node.children[i];
            node.add(row);
        }
    }
    root.sort();
    root
}

/// One row of the table below the sunburst.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TableRow<'a> {
    /// The row's segment names, level to verb: the table shows the rows under the zoomed one.
    path: [String; 4],
    level: &'static str,
    verb: &'a str,
    api: String,
    operation_id: Option<&'a str>,
    user: &'a str,
    kind: &'static str,
    impersonator: Option<&'a str>,
    agent: &'a str,
    calls: u64,
    success: u64,
    client_error: u64,
    server_error: u64,
    deprecated: bool,
    removed_release: Option<&'a str>,
    first_seen: Option<jiff::Timestamp>,
    last_seen: Option<jiff::Timestamp>,
}

impl<'a> TableRow<'a> {
    fn of(row: &'a Row) -> Self {
        let (e, c, n) = (&row.endpoint, &row.client, &row.counts);
        TableRow {
            path: ring_names(row),
            level: e.level.label(),
            verb: &e.verb,
            api: e.api(),
            operation_id: e.operation_id.as_deref(),
            user: &c.user,
            kind: c.kind.label(),
            impersonator: c.impersonator.as_deref(),
            agent: &c.agent,
            calls: n.calls,
            success: n.success,
            client_error: n.client_error,
            server_error: n.server_error,
            deprecated: e.deprecated,
            removed_release: e.removed_release.as_deref(),
            first_seen: n.first_seen,
            last_seen: n.last_seen,
        }
    }
}

/// What the page's script reads.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PageData<'a> {
    title: String,
    counted: u64,
    user: Option<&'a str>,
    deprecated: bool,
    operation_ids: bool,
    tree: Node,
    rows: Vec<TableRow<'a>>,
}

/// `API usage: 350 requests counted` and the filter, as the page's title says it: a tab or a
/// window list shows it too, so control and bidi characters are escaped as the table escapes
/// them.
fn title(report: &Report) -> String {
    let mut title = format!("API usage: {} requests counted", report.counted);
    if let Some(user) = &report.user {
        title.push_str(&format!("; user {}", escape_controls(user)));
    }
    if report.deprecated {
        title.push_str("; deprecated APIs only");
    }
    title
}

/// JSON that can sit inside a `<script>` element: `<`, `>` and `&` (which could close it or
/// open a comment) and U+2028, U+2029 (line ends to older JavaScript) become `\u` escapes.
/// serde_json writes these characters only inside strings, where the escapes mean the same.
fn script_json(value: &impl Serialize) -> crate::Result<String> {
    let json = serde_json::to_string(value)?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `'sha256-…'`, the Content-Security-Policy source that allows exactly this inline element.
fn csp_hash(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The report as one self-contained HTML page: the sunburst, a legend, the summary and the
/// rows (see the module documentation for what it loads and how it escapes).
pub fn render_html(report: &Report) -> crate::Result<String> {
    let title = title(report);
    let data = PageData {
        title: title.clone(),
        counted: report.counted,
        user: report.user.as_deref(),
        deprecated: report.deprecated,
        operation_ids: report.operation_ids,
        tree: tree(report),
        rows: report.rows.iter().map(TableRow::of).collect(),
    };
    let json = script_json(&data)?;
    let csp = format!(
        "default-src 'none'; script-src {}; style-src {}; base-uri 'none'; form-action 'none'",
        csp_hash(SCRIPT),
        csp_hash(CSS)
    );
    let title = html_escape(&title);
    let summary = html_escape(&summary(report));
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{title}</h1>
<p class="summary">{summary}</p>
<noscript><p>The sunburst and the table are drawn by the page's script: allow it, or use <code>histor usage -o table</code>.</p></noscript>
<div class="chart">
<svg id="sunburst" viewBox="-320 -320 640 640" role="img" aria-label="API calls by level, group, resource and verb"></svg>
<ul class="legend">
<li><span class="swatch stable"></span>stable</li>
<li><span class="swatch beta"></span>beta</li>
<li><span class="swatch alpha"></span>alpha</li>
<li><span class="swatch other"></span>other (non-resource paths, other version names)</li>
<li><span class="swatch deprecated"></span>deprecated: every call marked by the apiserver</li>
<li>Rings from the centre: level, group, resource, verb. Arcs are sized by calls.</li>
<li>Click a segment to zoom in, the centre to zoom out.</li>
</ul>
</div>
<p id="zoomed"></p>
<table>
<thead><tr><th>Calls</th><th>Level</th><th>Verb</th><th>API</th><th>Operation</th><th>Client</th><th>Impersonated by</th><th>Agent</th><th>2xx</th><th>4xx</th><th>5xx</th><th>Deprecated</th><th>Removed in</th><th>First seen</th><th>Last seen</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<script type="application/json" id="usage-data">{json}</script>
<script>{SCRIPT}</script>
</body>
</html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_escapes_what_could_close_the_element() {
        let json = script_json(&"</script><!-- & \u{2028}\u{2029}").unwrap();
        assert_eq!(
            json,
            r#""\u003c/script\u003e\u003c!-- \u0026 \u2028\u2029""#
        );
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "</script><!-- & \u{2028}\u{2029}");
    }

    #[test]
    fn html_escaping_covers_text_and_attributes() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
