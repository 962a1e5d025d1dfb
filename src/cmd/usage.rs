//! `histor usage`: API usage from audit log files, offline. Reads the files (plain or gzip, with
//! a progress bar on a terminal) and the OpenAPI document; the counting and rendering live in [`crate::usage`].

use crate::usage::{self, BadLine, EndpointIndex, Filter, MAX_LINE_BYTES, Report, Usage};
use crate::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Largest OpenAPI document read (after decompression); the v1.33 one is 2.6 MB, and clusters
/// with many CRDs reach tens of MB.
const MAX_DOCUMENT_BYTES: u64 = 256 << 20;

/// Options of `histor usage`.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    /// Audit log files: JSON lines as kube-apiserver's `--audit-log-path` writes them, plain or
    /// gzip (rotated files); `-` for standard input.
    #[arg(long = "audit-log", value_name = "FILE", required = true, num_args = 1..)]
    pub audit_logs: Vec<PathBuf>,
    /// The cluster's OpenAPI v2 document (`kubectl get --raw /openapi/v2 > FILE`; gzip
    /// allowed), to name each endpoint by its operationId. Without it endpoints are named by
    /// group, version, resource and verb.
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Only what this user called (a service account is
    /// `system:serviceaccount:NAMESPACE:NAME`), as itself or by impersonation.
    #[arg(long)]
    pub user: Option<String>,
    /// Only calls to APIs the apiserver marked deprecated, with the release that removes them.
    #[arg(long)]
    pub deprecated: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, endpoint × client, with what was not counted below.
    Table,
    /// One row per endpoint × client × hour (what was not counted goes to standard error).
    Csv,
    /// The report with its hourly series and tallies.
    Json,
    /// A self-contained HTML page that opens offline from a file: a zoomable sunburst of calls
    /// by level, group, resource and verb, with the rows below it.
    Html,
}

/// Prints the usage report of the files.
pub fn run(args: UsageArgs) -> Result<()> {
    let index = args.openapi.as_deref().map(read_document).transpose()?;
    let mut usage = Usage::new(index.as_ref());
    let files: Vec<PathBuf> = args
        .audit_logs
        .iter()
        .filter(|p| *p != Path::new("-"))
        .cloned()
        .collect();
    let bar = super::progress::bytes_bar(&files);
    for path in &args.audit_logs {
        let reader: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(super::progress::CountingReader {
                inner: std::fs::File::open(path).map_err(|e| Error::file(path, e))?,
                bar: bar.clone(),
            })
        };
        feed(
            maybe_gunzip(reader).map_err(|e| Error::file(path, e))?,
            &mut usage,
        )
        .map_err(|e| Error::file(path, e))?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = Report::new(
        &usage,
        &Filter {
            user: args.user,
            deprecated: args.deprecated,
        },
    );
    match args.output {
        Output::Table => print!("{}", usage::render_table(&report)),
        Output::Csv => {
            print!("{}", usage::render_csv(&report));
            eprint!("{}", usage::summary(&report));
        }
        Output::Json => print!("{}", usage::render_json(&report)?),
        Output::Html => print!("{}", usage::render_html(&report)?),
    }
    Ok(())
}

/// Reads and indexes an OpenAPI v2 document, plain or gzip.
/// Reads and indexes an OpenAPI v2 document file (gzip allowed).
pub fn read_document(path: &Path) -> Result<EndpointIndex> {
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut json = Vec::new();
    maybe_gunzip(Box::new(file))
        .and_then(|r| r.take(MAX_DOCUMENT_BYTES).read_to_end(&mut json))
        .map_err(|e| Error::file(path, e))?;
    EndpointIndex::from_v2(&json).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

/// A buffered reader of `reader`'s bytes, decompressed when they start with gzip's magic.
pub fn maybe_gunzip(reader: Box<dyn Read>) -> std::io::Result<Box<dyn BufRead>> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    if reader.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::bufread::MultiGzDecoder::new(reader);
        return Ok(Box::new(BufReader::with_capacity(1 << 16, gz)));
    }
    Ok(Box::new(reader))
}

/// Hands `usage` each line of `reader`, holding at most [`MAX_LINE_BYTES`] of one line: a longer
/// one is dropped as it streams past and counted as too long.
pub fn feed(reader: impl BufRead, usage: &mut Usage<'_>) -> std::io::Result<()> {
    each_line(reader, |line| match line {
        Ok(line) => usage.add_line(line),
        Err(bad) => usage.add_bad_line(bad),
    })
}

/// Calls `f` with each line of `reader` (without its newline; the last one may lack it),
/// holding at most [`MAX_LINE_BYTES`] of one line: a longer one is dropped as it streams past
/// and handed over as [`BadLine::TooLong`].
pub fn each_line(
    mut reader: impl BufRead,
    mut f: impl FnMut(std::result::Result<&[u8], BadLine>),
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut finish = |line: &mut Vec<u8>, too_long: &mut bool| {
        if *too_long {
            f(Err(BadLine::TooLong));
        } else {
            f(Ok(line));
        }
        line.clear();
        *too_long = false;
    };
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            if too_long || !line.is_empty() {
                finish(&mut line, &mut too_long);
            }
            return Ok(());
        }
        let (chunk, used, ends) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if ends {
            finish(&mut line, &mut too_long);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &[u8] = include_bytes!("../../tests/fixtures/audit/v1.33/audit.log");
    const LOG_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/audit/v1.33/audit.log"
    );
    const OPENAPI_PATH: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/openapi/v1.33/v2.json.gz"
    );

    #[test]
    fn command_line_reads_files_and_gzip_documents() {
        use clap::Parser;
        let cli = crate::cmd::Cli::try_parse_from([
            "histor",
            "usage",
            "--audit-log",
            LOG_PATH,
            LOG_PATH,
            "--openapi",
            OPENAPI_PATH,
            "-o",
            "csv",
            "--user",
            "bob",
            "--deprecated",
        ])
        .unwrap();
        let crate::cmd::Command::Usage(args) = cli.command else {
            panic!("not the usage command");
        };
        assert_eq!(args.audit_logs.len(), 2);
        assert_eq!(args.output, Output::Csv);
        assert!(args.deprecated);
        run(args.clone()).unwrap();

        let index = read_document(Path::new(OPENAPI_PATH)).unwrap();
        assert!(index.len() > 1000, "{}", index.len());
        let err = read_document(Path::new(LOG_PATH)).unwrap_err();
        assert!(err.to_string().contains("audit.log"), "{err}");
        let missing = UsageArgs {
            audit_logs: vec!["/nonexistent/audit.log".into()],
            ..args
        };
        assert!(
            run(missing)
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/audit.log")
        );
    }

    #[test]
    fn html_is_an_output() {
        use clap::Parser;
        let cli = crate::cmd::Cli::try_parse_from([
            "histor",
            "usage",
            "--audit-log",
            LOG_PATH,
            "-o",
            "html",
        ])
        .unwrap();
        let crate::cmd::Command::Usage(args) = cli.command else {
            panic!("not the usage command");
        };
        assert_eq!(args.output, Output::Html);
        run(args).unwrap();
    }

    #[test]
    fn feeds_plain_and_gzip_logs_and_drops_overlong_lines_unbuffered() {
        let mut usage = Usage::new(None);
        feed(BufReader::with_capacity(7, LOG), &mut usage).unwrap();
        assert_eq!(usage.counted(), 350);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, LOG).unwrap();
        let gz = gz.finish().unwrap();
        let mut usage = Usage::new(None);
        feed(
            maybe_gunzip(Box::new(std::io::Cursor::new(gz))).unwrap(),
            &mut usage,
        )
        .unwrap();
        assert_eq!(usage.counted(), 350);

        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.push(b'\n');
        input.extend_from_slice(LOG.split(|b| *b == b'\n').next().unwrap());
        let mut usage = Usage::new(None);
        feed(BufReader::with_capacity(4096, input.as_slice()), &mut usage).unwrap();
        assert_eq!(usage.skipped().bad_lines.get(&BadLine::TooLong), Some(&1));
        // The last line has no newline and still counts.
        assert_eq!(usage.counted(), 1);
    }
}
