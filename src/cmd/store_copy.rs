//! `histor store copy`: moves a history from one store to another (a sled directory to
//! PostgreSQL, typically, before running several replicas), events and notification outbox,
//! with a progress bar when stderr is a terminal and a log line every so many events when not.
//! The copying itself is [`crate::store::copy`]; this wires locations, progress and totals.

use crate::Result;
use crate::store::copy::{COPY_BATCH, CopyOptions, CopyReport, copy_events, copy_outbox};
use crate::store::{EventStore, Location, StoreStats};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Without a terminal, a log line every this many events.
const LOG_EVERY: u64 = 50_000;

/// Store maintenance.
#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy every event and the notification outbox from one store into an empty one, keeping
    /// ids and every state. Stop the processes that use the source first.
    Copy(CopyArgs),
}

/// Options of `histor store copy`.
#[derive(Debug, Clone, clap::Args)]
pub struct CopyArgs {
    /// The store to read: a sled directory (`DIR` or `sled:DIR`, such as DATA_DIR/store) or
    /// `postgres://USER@HOST:PORT/DB?...`.
    #[arg(long)]
    pub from: String,
    /// The store to write, as `--from`; it must hold no events (see `--into-nonempty`).
    #[arg(long)]
    pub to: String,
    /// File holding the source's PostgreSQL password.
    #[arg(long)]
    pub from_password_file: Option<PathBuf>,
    /// File holding the destination's PostgreSQL password.
    #[arg(long)]
    pub to_password_file: Option<PathBuf>,
    /// Copy into a store that holds events already: only source events newer than its newest
    /// are copied, which resumes an interrupted copy.
    #[arg(long)]
    pub into_nonempty: bool,
    /// Events per write (one transaction or flush each).
    #[arg(long, default_value_t = COPY_BATCH)]
    pub batch: usize,
    /// Read every copied event back from the destination and compare it with the source.
    #[arg(long)]
    pub verify: bool,
}

/// Runs a `histor store` subcommand.
pub async fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Copy(args) => copy(args).await,
    }
}

async fn copy(args: CopyArgs) -> Result<()> {
    let open = |url: &str, password: Option<&Path>, flag: &str| -> Result<Location> {
        if url.trim().is_empty() {
            return Err(crate::Error::Usage(
                "--from and --to need a store: DIR, sled:DIR or postgres://...".into(),
            ));
        }
        let location = Location::parse(Some(url), Path::new("."), None)?;
        match (location, password) {
            (Location::Postgres(_), Some(file)) => {
                Location::parse(Some(url), Path::new("."), Some(file))
            }
            (Location::Sled(_), Some(_)) => Err(crate::Error::Usage(format!(
                "--{flag} is for a postgres:// store"
            ))),
            (location, None) => Ok(location),
        }
    };
    let from = open(
        &args.from,
        args.from_password_file.as_deref(),
        "from-password-file",
    )?;
    let to = open(
        &args.to,
        args.to_password_file.as_deref(),
        "to-password-file",
    )?;
    let options = CopyOptions {
        batch: args.batch,
        into_nonempty: args.into_nonempty,
        verify: args.verify,
    };
    let (from_label, to_label) = (from.to_string(), to.to_string());
    let copied = tokio::task::spawn_blocking(move || -> Result<_> {
        let crate::store::Engine {
            events: src,
            outbox: src_outbox,
            ..
        } = from.open()?;
        let crate::store::Engine {
            events: dst,
            outbox: dst_outbox,
            ..
        } = to.open()?;
        let before = (src.stats()?, dst.stats()?);
        let started = Instant::now();
        let report = copy_with_progress(&*src, &*dst, options, before.0.events)?;
        Ok((src, src_outbox, dst, dst_outbox, before, started, report))
    })
    .await
    .map_err(|e| crate::Error::Usage(format!("the copy stopped: {e}")))??;
    let (src, src_outbox, dst, dst_outbox, (src_stats, dst_before), started, report) = copied;
    let elapsed = started.elapsed();
    let outbox = copy_outbox(&*src_outbox, &*dst_outbox).await?;
    let dst_after = {
        let dst = dst.clone();
        tokio::task::spawn_blocking(move || {
            // A sled outbox commit without notifications waits for the next flush.
            dst.sync()?;
            dst.stats()
        })
        .await
        .map_err(|e| crate::Error::Usage(format!("the copy stopped: {e}")))??
    };
    drop(src);
    println!(
        "{}",
        summary(
            &from_label,
            &to_label,
            &report,
            src_stats,
            dst_before,
            dst_after,
            elapsed
        )
    );
    if outbox.skipped {
        println!(
            "outbox: not copied, the destination's outbox is in use already (a notification \
             must not go out twice)"
        );
    } else {
        println!(
            "outbox: {} queued notification(s) and {} event(s) in digest windows copied",
            outbox.entries, outbox.buffered
        );
    }
    Ok(())
}

/// Copies with a progress bar on a terminal, a log line every [`LOG_EVERY`] events otherwise.
fn copy_with_progress(
    src: &dyn EventStore,
    dst: &dyn EventStore,
    options: CopyOptions,
    total: u64,
) -> Result<CopyReport> {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let report = copy_events(src, dst, options, &mut |n| bar.set_position(n));
        bar.finish_and_clear();
        return report;
    }
    let mut logged = 0;
    copy_events(src, dst, options, &mut |n| {
        if n >= logged + LOG_EVERY {
            logged = n;
            tracing::info!(copied = n, total, "copying events");
        }
    })
}

/// The totals line: events, bytes before and after, time and rate.
fn summary(
    from: &str,
    to: &str,
    report: &CopyReport,
    src: StoreStats,
    dst_before: StoreStats,
    dst_after: StoreStats,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        report.copied as f64 / secs
    } else {
        0.0
    };
    let mut out = format!(
        "copied {} event(s) from {from} to {to} in {secs:.1} s ({rate:.0} events/s); \
         source {} event(s), {} bytes; destination {} → {} event(s), {} → {} bytes",
        report.copied,
        src.events,
        src.bytes_on_disk,
        dst_before.events,
        dst_after.events,
        dst_before.bytes_on_disk,
        dst_after.bytes_on_disk,
    );
    if let Some(after) = report.resumed_after {
        out.push_str(&format!(
            "; resumed after event {after} (older source events were not copied)"
        ));
    }
    crate::render::escape_controls(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{Cli, Command};
    use crate::store::SledStore;
    use crate::store::conformance::{assert_same_history, varied_history};
    use clap::Parser;

    fn store_command(args: &[&str]) -> StoreCommand {
        let cli = Cli::try_parse_from(["histor", "store", "copy"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Store { command } => command,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn histor_store_copy_moves_a_sled_history_and_refuses_a_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        {
            let src = SledStore::open(&from).unwrap();
            varied_history(&src);
        }
        let from_arg = from.display().to_string();
        let to_arg = format!("sled:{}", to.display());
        let args = ["--from", &from_arg, "--to", &to_arg, "--verify"];
        run(store_command(&args)).await.unwrap();
        // A second run would copy everything again on top: refused, and it says how to resume.
        let err = run(store_command(&args)).await.unwrap_err().to_string();
        assert!(err.contains("--into-nonempty"), "{err}");
        let mut resume = args.to_vec();
        resume.push("--into-nonempty");
        run(store_command(&resume)).await.unwrap();
        let (src, dst) = (
            SledStore::open(&from).unwrap(),
            SledStore::open(&to).unwrap(),
        );
        assert_same_history(&src, &dst);
    }

    #[test]
    fn password_files_belong_to_postgres_sides() {
        let cmd = store_command(&["--from", "/a", "--to", "/b", "--to-password-file", "/pw"]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt.block_on(run(cmd)).unwrap_err().to_string();
        assert!(
            err.contains("--to-password-file is for a postgres://"),
            "{err}"
        );
    }

    #[test]
    fn the_totals_say_what_was_copied_and_escape_names() {
        let report = CopyReport {
            copied: 1_000,
            resumed_after: Some(7),
            ..CopyReport::default()
        };
        let stats = |events, bytes_on_disk| StoreStats {
            events,
            bytes_on_disk,
        };
        let line = summary(
            "sled:/data/\x1b[31mstore",
            "postgres://histor@db/histor",
            &report,
            stats(1_000, 4_096),
            stats(0, 0),
            stats(1_000, 8_192),
            Duration::from_secs(2),
        );
        assert!(line.contains("copied 1000 event(s)"), "{line}");
        assert!(line.contains("500 events/s"), "{line}");
        assert!(line.contains("0 → 1000 event(s), 0 → 8192 bytes"), "{line}");
        assert!(line.contains("resumed after event 7"), "{line}");
        assert!(!line.contains('\x1b'), "{line:?}");
    }
}
