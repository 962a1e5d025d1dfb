//! The HTML usage page (issue #16) in a real browser: headless Chromium (Debian's `chromium`)
//! opens the page of the recorded v1.33 audit log from a file, runs its script, and the DOM it
//! dumps is checked against the report: the sunburst's segments, their names and calls, the
//! zoom, and a hostile user name and resource that stay text.
//!
//! Without Chromium on PATH these tests skip with a message; with `HISTOR_E2E_REQUIRED=1` (set by
//! `.ci/run`) a skip is a failure.

use histor::usage::{EndpointIndex, Filter, Report, Usage, render_html};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AUDIT_LOG: &[u8] = include_bytes!("fixtures/audit/v1.33/audit.log");
const OPENAPI_V2_GZ: &[u8] = include_bytes!("fixtures/openapi/v1.33/v2.json.gz");
const HOSTILE: &str = "</script><img src=x onerror=alert(1)>";
/// Longest a browser may take to dump one page.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);

/// One browser at a time: the machine may be small.
static BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `chromium` or `chromium-browser` on PATH; `None` skips the test, unless
/// `HISTOR_E2E_REQUIRED=1`, which fails it.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("HISTOR_E2E_REQUIRED").as_deref() == Ok("1") => {
            panic!(
                "HISTOR_E2E_REQUIRED=1 but no chromium or chromium-browser on PATH for the HTML \
                 usage page test (apt-get install chromium)"
            )
        }
        None => {
            eprintln!(
                "skipped: the HTML usage page test needs headless Chromium (apt-get install chromium)"
            );
            None
        }
    }
}

/// The report of the recorded log, plus one request by a user named [`HOSTILE`], with that
/// user agent, to a resource of that name.
fn report() -> Report {
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(OPENAPI_V2_GZ)
        .read_to_end(&mut json)
        .unwrap();
    let index = EndpointIndex::from_v2(&json).unwrap();
    let mut usage = Usage::new(Some(&index));
    let mut hostile = None;
    for line in AUDIT_LOG.split(|b| *b == b'\n') {
        usage.add_line(line);
        if hostile.is_none() && !line.is_empty() {
            let mut e: serde_json::Value = serde_json::from_slice(line).unwrap();
            if e["stage"] == "ResponseComplete" && e["objectRef"]["resource"] == "configmaps" {
                e["auditID"] = "hostile".into();
                e["user"]["username"] = HOSTILE.into();
                e["userAgent"] = HOSTILE.into();
                e["objectRef"]["resource"] = HOSTILE.into();
                hostile = Some(serde_json::to_vec(&e).unwrap());
            }
        }
    }
    // Mapped without the document: the document serves no resource of that name.
    let mut plain = Usage::new(None);
    plain.add_line(&hostile.unwrap());
    let mut report = Report::new(&usage, &Filter::default());
    let extra = Report::new(&plain, &Filter::default());
    report.rows.extend(extra.rows);
    report.counted += extra.counted;
    report
}

/// The segment names of a row, level to verb, as the page names them.
fn ring_names(row: &histor::usage::report::Row) -> [String; 4] {
    let e = &row.endpoint;
    let (group, resource) = match &e.path {
        Some(path) => ("non-resource".to_string(), path.clone()),
        None if e.group.is_empty() => ("core".to_string(), resource_name(e)),
        None => (e.group.clone(), resource_name(e)),
    };
    [e.level.label().to_string(), group, resource, e.verb.clone()]
}

fn resource_name(e: &histor::usage::Endpoint) -> String {
    match &e.subresource {
        Some(sub) => format!("{}/{sub}", e.resource),
        None => e.resource.clone(),
    }
}

/// Calls by (depth, data-path) of every segment the report's rows make.
fn expected_segments(report: &Report) -> BTreeMap<(usize, String), u64> {
    let mut segments = BTreeMap::new();
    for row in &report.rows {
        let names = ring_names(row);
        for depth in 1..=4 {
            *segments
                .entry((depth, names[..depth].join("/")))
                .or_default() += row.counts.calls;
        }
    }
    segments
}

/// Writes the page, opens it with `#fragment` in headless Chromium and returns the DOM it
/// dumps after running the page's script.
fn dump_dom(browser: &Path, page: &str, fragment: &str) -> String {
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usage.html");
    std::fs::write(&file, page).unwrap();
    let profile = dir.path().join("profile");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}{fragment}", file.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not dump the page within {BROWSER_TIMEOUT:?}: {}",
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let dom = out.join().unwrap().unwrap();
    let err = err.join().unwrap();
    assert!(status.success(), "chromium failed ({status}): {err}");
    assert!(dom.contains("</html>"), "no DOM dumped: {err}");
    dom
}

/// An element's tag attributes, entities decoded.
type Attrs = BTreeMap<String, String>;

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The attributes of every `<tag …>` in `dom`, in order. Chromium writes every attribute value
/// in double quotes, with `"` as `&quot;`.
fn elements(dom: &str, tag: &str) -> Vec<Attrs> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let mut attrs = Attrs::new();
        loop {
            rest = rest.trim_start();
            if rest.starts_with('>') || rest.starts_with("/>") || rest.is_empty() {
                break;
            }
            let name_end = rest
                .find(|c: char| c == '=' || c == '>' || c.is_whitespace())
                .unwrap_or(rest.len());
            let name = rest[..name_end].to_string();
            rest = &rest[name_end..];
            let value = match rest.strip_prefix("=\"") {
                Some(v) => {
                    let end = v.find('"').expect("unterminated attribute");
                    rest = &v[end + 1..];
                    decode(&v[..end])
                }
                None => String::new(),
            };
            attrs.insert(name, value);
        }
        found.push(attrs);
    }
    found
}

fn segments(dom: &str) -> Vec<Attrs> {
    elements(dom, "path")
        .into_iter()
        .filter(|a| {
            a.get("class")
                .is_some_and(|c| c.split(' ').any(|c| c == "segment"))
        })
        .collect()
}

/// Rows the page's table shows.
fn table_rows(dom: &str) -> usize {
    let body = dom
        .split("<tbody id=\"rows\">")
        .nth(1)
        .and_then(|b| b.split("</tbody>").next())
        .expect("no table body");
    body.matches("<tr").count()
}

#[test]
fn the_page_draws_one_segment_per_level_group_resource_and_verb_sized_by_calls() {
    let Some(browser) = chromium() else { return };
    let report = report();
    let dom = dump_dom(&browser, &render_html(&report).unwrap(), "");
    let drawn = segments(&dom);
    assert!(!drawn.is_empty(), "no segments drawn:\n{dom}");

    let levels: BTreeSet<&str> = report
        .rows
        .iter()
        .map(|r| r.endpoint.level.label())
        .collect();
    let depth_one: BTreeSet<&str> = drawn
        .iter()
        .filter(|s| s["data-depth"] == "1")
        .map(|s| s["data-name"].as_str())
        .collect();
    assert_eq!(depth_one, levels);

    let expected = expected_segments(&report);
    let seen: BTreeMap<(usize, String), u64> = drawn
        .iter()
        .map(|s| {
            (
                (s["data-depth"].parse().unwrap(), s["data-path"].clone()),
                s["data-calls"].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), drawn.len(), "a segment drawn twice");
    assert_eq!(seen, expected);
    let create = (4, "stable/core/configmaps/create".to_string());
    assert!(expected[&create] > 0);
    assert_eq!(seen[&create], expected[&create]);
    let total: u64 = report.rows.iter().map(|r| r.counts.calls).sum();
    let level_calls: u64 = drawn
        .iter()
        .filter(|s| s["data-depth"] == "1")
        .map(|s| s["data-calls"].parse::<u64>().unwrap())
        .sum();
    assert_eq!(level_calls, total);

    // Each segment has its path and calls as a tooltip, and the deprecated ones are marked.
    assert!(dom.contains("<title>stable/core/configmaps/create: "));
    let deprecated: BTreeSet<&str> = drawn
        .iter()
        .filter(|s| s.get("data-deprecated").is_some_and(|d| d == "true"))
        .map(|s| s["data-path"].as_str())
        .collect();
    assert!(
        deprecated.contains("beta/admissionregistration.k8s.io/validatingadmissionpolicies/list"),
        "{deprecated:?}"
    );
    assert!(!deprecated.contains("stable"));

    // The hostile names are text and attribute values, never elements.
    assert!(!dom.to_lowercase().contains("<img"), "{dom}");
    assert!(dom.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(
        drawn
            .iter()
            .any(|s| s["data-depth"] == "3" && s["data-name"] == HOSTILE)
    );
    assert_eq!(table_rows(&dom), report.rows.len());
    let centre = &elements(&dom, "circle")[0];
    assert_eq!(centre["id"], "zoom-out");
    assert_eq!(centre["data-path"], "");

    // Nothing to fetch.
    for tag in ["script", "img", "link", "iframe", "a", "image", "use"] {
        for attrs in elements(&dom, tag) {
            assert!(
                !attrs.contains_key("src") && !attrs.contains_key("href"),
                "<{tag}> loads {attrs:?}"
            );
        }
    }
}

#[test]
fn a_zoom_fragment_opens_the_page_zoomed_into_that_segment() {
    let Some(browser) = chromium() else { return };
    let report = report();
    let dom = dump_dom(
        &browser,
        &render_html(&report).unwrap(),
        "#zoom=stable/apps",
    );
    let centre = &elements(&dom, "circle")[0];
    assert_eq!(centre["id"], "zoom-out");
    assert_eq!(centre["data-path"], "stable/apps");
    let expected = expected_segments(&report);
    assert_eq!(
        centre["data-calls"].parse::<u64>().unwrap(),
        expected[&(2, "stable/apps".to_string())]
    );

    // Only what is below stable/apps is drawn, all of it, with the same calls.
    let under: BTreeMap<(usize, String), u64> = expected
        .into_iter()
        .filter(|((_, path), _)| path.starts_with("stable/apps/"))
        .collect();
    assert!(under.contains_key(&(3, "stable/apps/deployments".to_string())));
    let seen: BTreeMap<(usize, String), u64> = segments(&dom)
        .iter()
        .map(|s| {
            (
                (s["data-depth"].parse().unwrap(), s["data-path"].clone()),
                s["data-calls"].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, under);

    // The table shows the rows under it.
    let rows = report
        .rows
        .iter()
        .filter(|r| {
            let names = ring_names(r);
            names[0] == "stable" && names[1] == "apps"
        })
        .count();
    assert!(rows > 0);
    assert_eq!(table_rows(&dom), rows);
}
