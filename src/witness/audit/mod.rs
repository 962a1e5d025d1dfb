//! The audit witness: the apiserver's audit events, taken in from its webhook backend (the
//! capture server's `/audit`), a followed log file ([`follow`]) or `histor audit ingest`, kept
//! in the store's audit journal exactly once ([`take_in`]), then joined to the changes histor
//! recorded ([`join`]) by the leader ([`AuditWitness::run`]): the request's response code
//! confirms a change or marks it not applied, and its audit ID, source, user agent and
//! impersonator are added to it. The watch and the audit log write the same states; the
//! first to decide stands, and a later disagreement is logged and counted. Every entry taken
//! out, reads included, is also counted as API usage ([`crate::usage::series`]), in the same
//! write, named by the cluster's own endpoints ([`endpoints`]).

pub mod endpoints;
pub mod follow;
pub mod join;
pub mod logfile;
pub mod record;

use super::verdicts::Verdicts;
use crate::pipeline::ChangeState;
use crate::store::{
    AuditJournal, AuditSeq, EventStore, MAX_PAGE, Query, Resolution, StoredEvent, UsageRow,
};
use crate::usage::series::{self, Bound, Series};
use crate::usage::{AuditEvent, Counts};
use endpoints::Endpoints;
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Entries read from the journal at once.
const READ_BATCH: usize = 256;
/// How often the journal is read.
const PASS_EVERY: Duration = Duration::from_millis(250);
/// How often old journal keys are forgotten, and received changes swept.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);
/// Most keys forgotten per housekeeping pass.
const FORGET_PER_PASS: usize = 100_000;

/// What [`take_in`] did with a set of events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Queued in the journal.
    pub new: u64,
    /// Already taken (the same audit ID and stage).
    pub duplicate: u64,
    /// Stages before the end of a request, which the journal does not keep.
    pub skipped: u64,
}

impl Taken {
    /// Counts it in `histor_audit_events_total`.
    pub fn count(&self, metrics: &crate::metrics::Metrics) {
        metrics.audit_events("new", self.new);
        metrics.audit_events("duplicate", self.duplicate);
        metrics.audit_events("skipped_stage", self.skipped);
    }
}

/// Puts audit events in the journal, each once; durable when it returns. Blocks on the store.
pub fn take_in(journal: &dyn AuditJournal, events: &[AuditEvent]) -> crate::Result<Taken> {
    let mut taken = Taken::default();
    let entries: Vec<_> = events
        .iter()
        .filter_map(|e| {
            let entry = record::entry(e);
            if entry.is_none() {
                taken.skipped += 1;
            }
            entry
        })
        .collect();
    for queued in journal.append(&entries)? {
        if queued {
            taken.new += 1;
        } else {
            taken.duplicate += 1;
        }
    }
    Ok(taken)
}

/// Settings of the audit witness.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long an audit event that names a change waits for it to be in the store (a review
    /// still in the local spool, a write that missed the deadline), counted from the event's
    /// time; then it is given up on.
    pub patience: SignedDuration,
    /// How long audit IDs are remembered, so that a source repeating an event (a retried
    /// batch, the same event by webhook and by log file) adds nothing.
    pub remember: SignedDuration,
    /// When the audit log is the only witness: received changes older than this become
    /// `unconfirmed` (their audit event never came). `None` when the watch decides that.
    pub unconfirmed_after: Option<SignedDuration>,
    /// How long API usage is kept, by the hour it counts.
    pub usage_retention: SignedDuration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            patience: SignedDuration::from_mins(2),
            remember: SignedDuration::from_hours(1),
            unconfirmed_after: None,
            usage_retention: SignedDuration::from_hours(30 * 24),
        }
    }
}

/// Longest wait, from the witness's start, for the cluster's endpoints to be read before
/// requests are counted without them.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(30);

/// Longest wait between two looks for the change a waiting audit event names.
const MAX_RETRY_EVERY: SignedDuration = SignedDuration::from_secs(15);

/// The audit witness: made by the server, run on the leader.
pub struct AuditWitness {
    journal: Arc<dyn AuditJournal>,
    verdicts: Verdicts,
    settings: Settings,
    /// Entries waiting for their change: when to look again, and how often it was looked for.
    /// Each look is a store query, so the wait doubles (up to [`MAX_RETRY_EVERY`]).
    waiting: parking_lot::Mutex<HashMap<AuditSeq, (Timestamp, u32)>>,
    /// What names the endpoints of usage.
    endpoints: Arc<Endpoints>,
    /// The cap on usage series per hour.
    bound: Arc<parking_lot::Mutex<Bound>>,
    /// When the witness was made, for [`ENDPOINTS_WAIT`].
    started: std::time::Instant,
}

/// What one pass over the journal did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries taken out of the journal.
    pub done: usize,
    /// Entries left for a later pass (their change is not in the store yet).
    pub waiting: usize,
    /// Verdicts applied.
    pub resolved: usize,
    /// Audit accounts added to changes.
    pub noted: usize,
    /// Requests counted as API usage.
    pub counted: u64,
}

/// One entry's outcome in a pass.
enum Step {
    Done(&'static str),
    /// Its change is not in the store yet: look again later.
    Wait,
    /// Not looked for this pass (it waits between looks).
    Later,
    Plan(join::Plan, HashMap<u64, ChangeState>),
}

impl AuditWitness {
    /// A witness reading `journal` and writing verdicts through `verdicts`.
    pub fn new(journal: Arc<dyn AuditJournal>, verdicts: Verdicts, settings: Settings) -> Self {
        AuditWitness {
            journal,
            verdicts,
            settings,
            waiting: Default::default(),
            endpoints: Arc::new(Endpoints::none()),
            bound: Default::default(),
            started: std::time::Instant::now(),
        }
    }

    /// Names usage endpoints with `endpoints` (by default, without operationIds).
    pub fn with_endpoints(mut self, endpoints: Arc<Endpoints>) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// Runs until dropped (the leader's term ends): reads the journal, joins, writes.
    pub async fn run(&self) {
        tracing::info!("audit witness started");
        let mut pass = tokio::time::interval(PASS_EVERY);
        pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                _ = pass.tick() => {
                    if let Err(error) = self.pass(Timestamp::now()).await {
                        tracing::warn!(%error, "reading the audit journal failed; trying again");
                    }
                }
                _ = housekeeping.tick() => self.housekeeping(Timestamp::now()).await,
            }
        }
    }

    /// Reads every queued entry once: joins those whose change is in the store, gives up on
    /// those past their patience, leaves the rest queued.
    pub async fn pass(&self, now: Timestamp) -> crate::Result<PassReport> {
        let mut report = PassReport::default();
        if self.endpoints.first_read_pending() && self.started.elapsed() < ENDPOINTS_WAIT {
            // Entries wait in the journal until the cluster's endpoints are read once.
            return Ok(report);
        }
        let mut after: Option<AuditSeq> = None;
        loop {
            let journal = self.journal.clone();
            let store = self.verdicts.store.clone();
            let patience = self.settings.patience;
            let not_yet: std::collections::HashSet<AuditSeq> = self
                .waiting
                .lock()
                .iter()
                .filter(|(_, (next, _))| *next > now)
                .map(|(&seq, _)| seq)
                .collect();
            let (endpoints, bound) = (self.endpoints.clone(), self.bound.clone());
            let (steps, usage) = blocking(move || {
                let queued = journal.queued(after, READ_BATCH)?;
                let index = endpoints.get();
                let mut steps = Vec::with_capacity(queued.len());
                let mut usage: HashMap<(i64, Series), Counts> = HashMap::new();
                for (seq, entry) in queued {
                    if not_yet.contains(&seq) && now.duration_since(entry.at) <= patience {
                        steps.push((seq, Step::Later));
                        continue;
                    }
                    let Ok(event) = record::decode(&entry.value) else {
                        steps.push((seq, Step::Done("undecodable")));
                        continue;
                    };
                    let step = step(store.as_ref(), &event, entry.at, now, patience)?;
                    if !matches!(step, Step::Wait)
                        && let Some((hour, s, counts)) = series::count(&event, index.as_deref())
                    {
                        endpoints.saw(&event, &s);
                        let s = bound.lock().admit(hour, s);
                        usage.entry((hour, s)).or_default().merge(&counts);
                    }
                    steps.push((seq, step));
                }
                Ok((steps, usage))
            })
            .await?;
            let Some(&(last, _)) = steps.last() else {
                break;
            };
            after = Some(last);
            let mut done = Vec::new();
            let mut resolutions = Vec::new();
            let mut notes = Vec::new();
            let mut states = HashMap::new();
            for (seq, step) in steps {
                match step {
                    Step::Done(outcome) => {
                        self.joined(outcome);
                        done.push(seq);
                    }
                    Step::Wait => {
                        report.waiting += 1;
                        let mut waiting = self.waiting.lock();
                        let (next, tries) = waiting.entry(seq).or_insert((now, 0));
                        *tries += 1;
                        let wait = PASS_EVERY.as_millis() as i64 * (1i64 << (*tries).min(10));
                        *next = now + SignedDuration::from_millis(wait).min(MAX_RETRY_EVERY);
                    }
                    Step::Later => report.waiting += 1,
                    Step::Plan(plan, known) => {
                        self.joined("joined");
                        resolutions.extend(plan.resolutions);
                        notes.extend(plan.notes);
                        states.extend(known);
                        done.push(seq);
                    }
                }
            }
            self.verdicts.announce(&resolutions).await;
            let applied = self.verdicts.write(&resolutions).await?;
            for (r, applied) in resolutions.iter().zip(&applied) {
                if *applied {
                    report.resolved += 1;
                    self.verdicts.metrics.witness_verdict(r.state);
                } else {
                    self.disagreement(r, states.get(&r.id).copied());
                }
            }
            let store = self.verdicts.store.clone();
            let journal = self.journal.clone();
            let done_seqs = done.clone();
            report.counted += usage.values().map(|c| c.calls).sum::<u64>();
            let usage: Vec<UsageRow> = usage
                .into_iter()
                .map(|((hour, s), counts)| UsageRow {
                    hour,
                    series: s.encode(),
                    counts,
                })
                .collect();
            let noted = blocking(move || {
                let noted = store.annotate(&notes)?;
                // Only once the verdicts and notes are durable: a crash before reads them again.
                // The usage of the entries is added in the same write that takes them out.
                journal.done(&done, &usage)?;
                Ok((noted.iter().filter(|&&n| n).count(), done.len()))
            })
            .await?;
            report.noted += noted.0;
            report.done += noted.1;
            let mut waiting = self.waiting.lock();
            for seq in &done_seqs {
                waiting.remove(seq);
            }
        }
        self.verdicts
            .metrics
            .audit_queued
            .set(report.waiting as i64);
        Ok(report)
    }

    /// Forgets old audit IDs and usage past its retention; with the audit log as the only
    /// witness, makes received changes whose audit event never came `unconfirmed`.
    pub async fn housekeeping(&self, now: Timestamp) {
        let journal = self.journal.clone();
        let before = now - self.settings.remember;
        match blocking(move || journal.forget(before, FORGET_PER_PASS)).await {
            Ok(n) if n > 0 => tracing::debug!(forgotten = n, "old audit IDs forgotten"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "forgetting old audit IDs failed"),
        }
        let journal = self.journal.clone();
        let before = (now - self.settings.usage_retention).as_second();
        let before = before.div_euclid(3600) * 3600;
        match blocking(move || journal.forget_usage(before)).await {
            Ok(n) if n > 0 => tracing::debug!(rows = n, "API usage past its retention dropped"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "dropping old API usage failed"),
        }
        if let Some(after) = self.settings.unconfirmed_after
            && let Err(error) = self.sweep(now - after).await
        {
            tracing::warn!(%error, "marking unwitnessed changes unconfirmed failed");
        }
    }

    /// Received changes received before `before` become `unconfirmed`.
    async fn sweep(&self, before: Timestamp) -> crate::Result<()> {
        let store = self.verdicts.store.clone();
        let stale = blocking(move || {
            let page = store.query(&Query {
                state: Some(ChangeState::Received),
                until: Some(before),
                limit: MAX_PAGE,
                ..Query::default()
            })?;
            Ok(page.events)
        })
        .await?;
        let resolutions: Vec<Resolution> = stale
            .iter()
            .map(|e| Resolution {
                id: e.id,
                state: ChangeState::Unconfirmed,
                commit: None,
            })
            .collect();
        if resolutions.is_empty() {
            return Ok(());
        }
        tracing::info!(
            changes = resolutions.len(),
            "no audit event came for these changes; unconfirmed"
        );
        self.verdicts.announce(&resolutions).await;
        for (r, applied) in resolutions
            .iter()
            .zip(self.verdicts.write(&resolutions).await?)
        {
            if applied {
                self.verdicts.metrics.witness_verdict(r.state);
            }
        }
        Ok(())
    }

    fn joined(&self, outcome: &'static str) {
        self.verdicts
            .metrics
            .audit_joins
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }

    /// A verdict not applied: the change was decided already. Agreeing is the rule; a
    /// disagreement (the watch saw a commit the audit log says failed, say) is worth a line.
    fn disagreement(&self, r: &Resolution, stored: Option<ChangeState>) {
        let Some(stored) = stored else { return };
        let decided = matches!(stored, ChangeState::Confirmed | ChangeState::NotApplied);
        if decided && stored != r.state {
            self.verdicts.metrics.witness_disagreements.inc();
            tracing::warn!(
                id = r.id,
                decided = %stored,
                audit = %r.state,
                "the audit log disagrees with the verdict the watch wrote first; the first stands"
            );
        }
    }
}

/// Decides one journal entry: blocks on the store.
fn step(
    store: &dyn EventStore,
    event: &AuditEvent,
    at: Timestamp,
    now: Timestamp,
    patience: SignedDuration,
) -> crate::Result<Step> {
    if record::request_uids(event).next().is_none() {
        return Ok(Step::Done("not_histors"));
    }
    let candidates = candidates(store, event)?;
    match join::plan(event, &candidates) {
        Some(plan) => {
            let known = candidates.iter().map(|c| (c.id, c.event.state)).collect();
            Ok(Step::Plan(plan, known))
        }
        None if now.duration_since(at) > patience => Ok(Step::Done("unjoined")),
        None => Ok(Step::Wait),
    }
}

/// The stored changes of the event's object received within its request's time window.
pub fn candidates(store: &dyn EventStore, e: &AuditEvent) -> crate::Result<Vec<StoredEvent>> {
    let (Some(object), Some((since, until))) = (&e.object_ref, join::window(e)) else {
        return Ok(Vec::new());
    };
    let kind = if object.api_group.is_empty() {
        object.resource.clone()
    } else {
        format!("{}.{}", object.resource, object.api_group)
    };
    let mut query = Query {
        namespace: object.namespace.clone(),
        kind: Some(kind),
        // A create whose name the server generates has none in the audit event.
        name: object.name.clone().filter(|n| !n.is_empty()),
        since: Some(since),
        until: Some(until),
        limit: MAX_PAGE,
        ..Query::default()
    };
    let mut out = Vec::new();
    loop {
        let page = store.query(&query)?;
        out.extend(page.events);
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(out),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> crate::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::Error::Usage(format!("audit witness task: {e}")))?
}

#[cfg(test)]
mod tests;
