//! A small YAML writer that knows, for every line it writes, which JSON pointer(s) the line shows
//! and which lines below it belong to it: what the blame view needs to annotate each line, and
//! what a general YAML serialiser cannot tell.
//!
//! Style is kubectl's: block style, keys sorted, sequences at the indentation of their key,
//! strings plain unless YAML would read them as something else (then JSON-quoted, which YAML
//! reads back identically), multi-line strings as literal blocks. Redacted Secret values
//! (`hmac-sha256:…`) print as `<redacted>`: the hash means nothing to people.
//!
//! Pure: depends only on serde_json, the pipeline's redaction marker and
//! [`crate::render::escape_controls`].

use crate::pipeline::is_redacted_value;
use crate::render::{escape_controls, is_unprintable};
use serde_json::Value;

/// One written line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The text, indentation included, without the newline.
    pub text: String,
    /// JSON pointers the line shows: one, or two for `- key: value` (the item and its first key).
    pub pointers: Vec<String>,
    /// This line and the lines after it up to (not including) `end` are the subtree it heads.
    pub end: usize,
}

/// The lines of `value` as YAML. A non-object root is written as one scalar line.
pub fn lines(value: &Value) -> Vec<Line> {
    let mut w = Writer { out: Vec::new() };
    match value {
        Value::Object(map) if !map.is_empty() => w.map(map, "", 0),
        Value::Array(items) if !items.is_empty() => w.seq(items, "", 0),
        other => w.scalar_entry(String::new(), other, "", 0),
    }
    w.out
}

struct Writer {
    out: Vec<Line>,
}

impl Writer {
    fn push(&mut self, text: String, pointers: Vec<String>) -> usize {
        let at = self.out.len();
        self.out.push(Line {
            text,
            pointers,
            end: at + 1,
        });
        at
    }

    fn map(&mut self, map: &serde_json::Map<String, Value>, ptr: &str, indent: usize) {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            let child = &map[key];
            let cptr = format!("{ptr}/{}", escape(key));
            let prefix = format!("{}{}:", " ".repeat(indent), scalar_text(key));
            match child {
                Value::Object(m) if !m.is_empty() => {
                    let at = self.push(prefix, vec![cptr.clone()]);
                    self.map(m, &cptr, indent + 2);
                    self.out[at].end = self.out.len();
                }
                Value::Array(a) if !a.is_empty() => {
                    let at = self.push(prefix, vec![cptr.clone()]);
                    self.seq(a, &cptr, indent);
                    self.out[at].end = self.out.len();
                }
                other => self.scalar_entry(prefix, other, &cptr, indent),
            }
        }
    }

    fn seq(&mut self, items: &[Value], ptr: &str, indent: usize) {
        let pad = " ".repeat(indent);
        for (i, item) in items.iter().enumerate() {
            let iptr = format!("{ptr}/{i}");
            match item {
                Value::Object(m) if !m.is_empty() => {
                    // The item's keys go two columns in; its first line then starts with `- `
                    // instead of the two spaces.
                    let first = self.out.len();
                    self.map(m, &iptr, indent + 2);
                    let line = &mut self.out[first];
                    line.text.replace_range(indent..indent + 2, "- ");
                    line.pointers.insert(0, iptr);
                }
                Value::Array(a) if !a.is_empty() => {
                    let at = self.push(format!("{pad}-"), vec![iptr.clone()]);
                    self.seq(a, &iptr, indent + 2);
                    self.out[at].end = self.out.len();
                }
                other => self.scalar_entry(format!("{pad}-"), other, &iptr, indent),
            }
        }
    }

    /// `prefix value` (prefix is `key:`, `-`, or empty at the root), or a literal block for
    /// multi-line strings, all lines showing `ptr`.
    fn scalar_entry(&mut self, prefix: String, value: &Value, ptr: &str, indent: usize) {
        let sep = if prefix.is_empty() { "" } else { " " };
        match block(value) {
            Some((indicator, body)) => {
                let at = self.push(format!("{prefix}{sep}{indicator}"), vec![ptr.to_owned()]);
                let pad = " ".repeat(indent + 2);
                for l in body {
                    let text = if l.is_empty() {
                        String::new()
                    } else {
                        format!("{pad}{l}")
                    };
                    self.push(text, vec![ptr.to_owned()]);
                }
                self.out[at].end = self.out.len();
            }
            None => {
                self.push(
                    format!("{prefix}{sep}{}", inline(value)),
                    vec![ptr.to_owned()],
                );
            }
        }
    }
}

/// RFC 6901 escaping of one pointer segment.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A scalar (or empty container) on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) if is_redacted_value(value) => "<redacted>".into(),
        Value::String(s) => scalar_text(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A multi-line string as a literal block: the indicator (`|`, `|-`, `|+`) and its lines. `None`
/// when the value is not one, or cannot be one (a leading space on the first line would need an
/// indentation indicator; carriage returns and other control characters would not survive).
fn block(value: &Value) -> Option<(&'static str, Vec<&str>)> {
    let Value::String(s) = value else { return None };
    if !s.contains('\n')
        || s.starts_with([' ', '\n'])
        || s.chars()
            .any(|c| is_unprintable(c) && c != '\n' && c != '\t')
        || is_redacted_value(value)
    {
        return None;
    }
    let trimmed = s.trim_end_matches('\n');
    let indicator = match s.len() - trimmed.len() {
        0 => "|-",
        1 => "|",
        _ => "|+",
    };
    let mut body: Vec<&str> = trimmed.split('\n').collect();
    if indicator == "|+" {
        body.extend(std::iter::repeat_n("", s.len() - trimmed.len() - 1));
    }
    Some((indicator, body))
}

/// A string as a plain scalar when YAML reads it back as the same string, else JSON-quoted.
/// Quoted strings also escape what serde_json leaves raw (DEL, C1 controls, bidirectional
/// overrides) with [`escape_controls`]: `\u009b` reads back the same in JSON and YAML, and a
/// terminal never sees the character itself.
pub fn scalar_text(s: &str) -> String {
    if needs_quotes(s) {
        // Quoting a string cannot fail.
        let quoted = serde_json::to_string(s).unwrap_or_default();
        escape_controls(&quoted).into_owned()
    } else {
        s.to_owned()
    }
}

fn needs_quotes(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return true;
    };
    if s.trim() != s
        || "-?:,[]{}#&*!|>'\"%@`".contains(first)
        || s.ends_with(':')
        || s.contains(": ")
        || s.contains(" #")
        || s.chars().any(is_unprintable)
    {
        // `-`, `?` and `:` are only indicators before a space, but quoting them is clearer.
        return true;
    }
    let lower = s.to_ascii_lowercase();
    // YAML 1.1 (what Go's yaml reads) and 1.2 booleans and nulls.
    if matches!(
        lower.as_str(),
        "true"
            | "false"
            | "yes"
            | "no"
            | "on"
            | "off"
            | "y"
            | "n"
            | "null"
            | "~"
            | ".nan"
            | ".inf"
            | "-.inf"
            | "+.inf"
    ) {
        return true;
    }
    // What a YAML 1.1 or 1.2 reader would take for a number or a timestamp: decimal, float,
    // `1_000`, `0x1F`, `0o17`, `0b101`, sexagesimal `12:30`, dates `2026-11-22…`. Anything else
    // that merely starts with a digit (a UUID, `25%`, `1.2.3`) stays plain.
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let radix = |prefix: &str, ok: fn(&char) -> bool| {
        unsigned
            .strip_prefix(prefix)
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| ok(&c) || c == '_'))
    };
    let bytes = s.as_bytes();
    s.parse::<f64>().is_ok()
        || (unsigned.chars().any(|c| c.is_ascii_digit())
            && unsigned
                .chars()
                .all(|c| c.is_ascii_digit() || c == '_' || c == '.')
            && unsigned.matches('.').count() <= 1)
        || radix("0x", char::is_ascii_hexdigit)
        || radix("0o", |c| ('0'..='7').contains(c))
        || radix("0b", |c| *c == '0' || *c == '1')
        || (unsigned.contains(':')
            && unsigned
                .chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.'))
        || (bytes.len() >= 10
            && bytes[..4].iter().all(u8::is_ascii_digit)
            && bytes[4] == b'-'
            && bytes[5..7].iter().all(u8::is_ascii_digit)
            && bytes[7] == b'-')
}

/// The whole of `value` as YAML text.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    for line in lines(value) {
        out.push_str(&line.text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_kubectl_style() {
        let v = json!({
            "b": {"z": 1, "a": [1, "x"]},
            "a": "plain",
            "c": [{"name": "web", "image": "nginx", "ports": [{"p": 80}]}, []],
            "d": {}, "e": [], "f": "two\nlines\n", "g": null,
        });
        assert_eq!(
            to_string(&v),
            "a: plain\nb:\n  a:\n  - 1\n  - x\n  z: 1\nc:\n- image: nginx\n  name: web\n  ports:\n  - p: 80\n- []\nd: {}\ne: []\nf: |\n  two\n  lines\ng: null\n"
        );
    }

    #[test]
    fn pointers_and_subtrees() {
        let v = json!({"spec": {"containers": [{"name": "web", "image": "i"}], "r": 1}});
        let ls = lines(&v);
        let show: Vec<(String, Vec<String>, usize)> = ls
            .iter()
            .map(|l| (l.text.clone(), l.pointers.clone(), l.end))
            .collect();
        let p = |s: &str| s.to_string();
        assert_eq!(
            show,
            vec![
                (p("spec:"), vec![p("/spec")], 5),
                (p("  containers:"), vec![p("/spec/containers")], 4),
                (
                    p("  - image: i"),
                    vec![p("/spec/containers/0"), p("/spec/containers/0/image")],
                    3
                ),
                (p("    name: web"), vec![p("/spec/containers/0/name")], 4),
                (p("  r: 1"), vec![p("/spec/r")], 5),
            ]
        );
    }

    #[test]
    fn quotes_only_when_needed() {
        for plain in [
            "nginx",
            "25%",
            "app.kubernetes.io/name",
            "a b",
            "/dev/termination-log",
            "v1.2",
            "0586b4f3-e1f7-4e9e-b154-4db6d9bb92af",
            "1.2.3",
            "12abc",
        ] {
            assert_eq!(scalar_text(plain), plain);
        }
        for quoted in [
            "",
            "true",
            "No",
            "null",
            "1",
            "1.5",
            "0x1F",
            "1e3",
            "2026-11-22",
            "2026-11-22T02:07:49Z",
            "12:30",
            "1_000",
            "0o17",
            "-5",
            "y",
            "n",
            "-",
            "a: b",
            " x",
            "x ",
            "#c",
            "*a",
            "{}",
        ] {
            assert!(scalar_text(quoted).starts_with('"'), "{quoted}");
        }
        let redacted = json!({"data": {"k": format!("hmac-sha256:{}", "a".repeat(64))}});
        assert_eq!(to_string(&redacted), "data:\n  k: <redacted>\n");
    }

    #[test]
    fn block_scalars_keep_their_ends() {
        assert_eq!(to_string(&json!({"k": "a\nb"})), "k: |-\n  a\n  b\n");
        assert_eq!(
            to_string(&json!({"k": "a\n\nb\n\n"})),
            "k: |+\n  a\n\n  b\n\n"
        );
        assert_eq!(to_string(&json!({"k": " a\nb"})), "k: \" a\\nb\"\n");
        assert_eq!(to_string(&json!(["a\nb\n"])), "- |\n  a\n  b\n");
    }
}
