//! `histor replay`: record AdmissionReviews from files, through the same pipeline as the server.

use super::files::{load_or_create_key, read_policy_files};
use crate::pipeline::{self, CompiledPolicy, Outcome, Redactor};
use crate::store::{AppendOutcome, EventStore, SledStore};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Options of `histor replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Directory of the store (created when missing).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// TrackingPolicy YAML files; each review is checked against every policy.
    #[arg(long = "policy-file", required = true)]
    pub policy_files: Vec<PathBuf>,
    /// Key for hashing Secret values; DATA_DIR/hmac.key when not given.
    #[arg(long)]
    pub hmac_key_file: Option<PathBuf>,
    /// Files of AdmissionReviews: one JSON document per file, or one review per line.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// How many reviews ended how, by the same labels the server's metrics use.
pub type Tally = BTreeMap<&'static str, u64>;

/// Records the files' reviews and prints what happened to them.
pub async fn run(args: ReplayArgs) -> Result<()> {
    let policies = read_policy_files(&args.policy_files)?;
    std::fs::create_dir_all(&args.data_dir).map_err(|e| Error::file(&args.data_dir, e))?;
    let key = load_or_create_key(
        &args
            .hmac_key_file
            .clone()
            .unwrap_or_else(|| args.data_dir.join("hmac.key")),
    )?;
    let redactor = Redactor::new(&key);
    let store = SledStore::open(args.data_dir.join("store"))?;
    let mut bodies = Vec::new();
    for path in &args.files {
        let text = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        bodies.extend(split_reviews(&text));
    }
    let tally = tokio::task::spawn_blocking(move || replay(&bodies, &policies, &redactor, &store))
        .await
        .map_err(|e| Error::Usage(format!("replay failed: {e}")))??;
    let summary: Vec<String> = tally.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    println!(
        "replayed {} reviews ({})",
        tally.values().sum::<u64>(),
        summary.join(", ")
    );
    Ok(())
}

/// One review per file, or JSON lines.
pub fn split_reviews(text: &[u8]) -> Vec<Vec<u8>> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
        return vec![text.to_vec()];
    }
    text.split(|b| *b == b'\n')
        .filter(|line| line.iter().any(|b| !b.is_ascii_whitespace()))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Runs every body through the pipeline for every policy and stores the events in batches.
/// Each review counts once: as recorded if any policy recorded it, else by its first outcome.
pub fn replay(
    bodies: &[Vec<u8>],
    policies: &[CompiledPolicy],
    redactor: &Redactor,
    store: &dyn EventStore,
) -> Result<Tally> {
    let mut tally = Tally::new();
    for chunk in bodies.chunks(256) {
        let mut batch = Vec::new();
        let mut owners = Vec::new();
        for (i, body) in chunk.iter().enumerate() {
            let request = match pipeline::review::parse(body) {
                Err(_) => {
                    *tally.entry("bad_request").or_default() += 1;
                    continue;
                }
                Ok(parsed) => match parsed.request {
                    Ok(request) => request,
                    Err(_) => {
                        *tally.entry("uninterpretable").or_default() += 1;
                        continue;
                    }
                },
            };
            let mut first_skip = None;
            let mut recorded = false;
            for policy in policies {
                match pipeline::process(&request, policy, redactor, jiff::Timestamp::now()) {
                    Outcome::Record(captured) => {
                        batch.push(captured);
                        owners.push(i);
                        recorded = true;
                    }
                    Outcome::Skip(reason) => {
                        first_skip.get_or_insert(reason.metric_label());
                    }
                }
            }
            if !recorded {
                *tally
                    .entry(first_skip.unwrap_or("not_matched"))
                    .or_default() += 1;
            }
        }
        let outcomes = store.append(&batch)?;
        let mut counted = std::collections::HashSet::new();
        for (owner, outcome) in owners.into_iter().zip(outcomes) {
            if counted.insert(owner) {
                let label = match outcome {
                    AppendOutcome::Recorded(_) => "recorded",
                    AppendOutcome::Linked(_) => "linked",
                    AppendOutcome::Duplicate(_) => "duplicate",
                };
                *tally.entry(label).or_default() += 1;
            }
        }
    }
    Ok(tally)
}
