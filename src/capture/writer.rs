//! The group-commit writer: one thread drains the bounded event queue in batches, appends each
//! batch to the store, flushes it, and only then acknowledges. Reviews wait on that
//! acknowledgement (up to the capture deadline), so "allowed" normally means "on disk".
//!
//! Append and flush run on this one thread, one after the other (and the store flushes with its
//! writer lock held, so retention's writes never overlap a flush either). Each sled flush hands
//! its log write to sled's I/O threads, waking all of the idle ones, and sleeps until one reports
//! back. Overlapped with appending (a flush on a second thread while the next batch is appended),
//! flushes ran for a few events each and raced the appends: 2–3x slower. Serial, one flush covers
//! everything that arrived during the one before (README, Performance).
//!
//! When the store cannot write (a full disk, an I/O error, a flush that does not return), the
//! writer keeps the batch and tries again, asking the store to recover (sled reopens its
//! database) between attempts, so writing resumes on its own once space returns. Meanwhile
//! [`Health`] says why: `/readyz` fails, the review handlers answer at once instead of waiting
//! out their deadline, and new events wait in the queue (memory, bounded by its capacity).
//!
//! **With a spool** (a shared engine such as PostgreSQL, which can be down or slow while this
//! replica is fine) the store calls move to a thread of their own, the *lane*, and the writer
//! waits for each append at most [`Timing::append_budget`]. A batch the store refuses or does not
//! take in time goes to the local [`Spool`] (durable before its reviews hear
//! [`Written::Spooled`]); while the spool holds anything, new batches go there too, so the store
//! sees every batch in queue order. The lane drains the spool oldest first, with backoff while the
//! store still fails, removes what the store took and tells the observers of it. A call the
//! writer stopped waiting for is not abandoned: it runs on, and the lane takes its answer (so a
//! batch the store took late is neither lost nor appended twice). After a failed append the lane
//! appends the same batch again, alone, before anything else, which is what
//! [`EventStore::append_buffered`] needs to report a retried batch as it wrote it. Only a spool
//! that cannot take a batch (full, or its disk failing) brings back the behaviour above: the
//! batch waits in memory, `/readyz` fails. Spooling itself keeps `/readyz` ready: the replica
//! still records every event durably, and every replica sees the same outage, so failing them
//! all would only take the webhook's endpoints away; the `histor_spool_*` metrics, `/readyz`'s
//! text and a log line when spooling starts and when the spool has drained say so.

use crate::metrics::{Metrics, ReasonLabels};
use crate::pipeline::Captured;
use crate::store::{AppendOutcome, EventStore, Spool, StoredEvent};
use crate::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod lane;

use self::lane::Lane;

/// Most events in one batch; bounds the time one flush keeps later events waiting.
const MAX_BATCH: usize = 1024;

/// A flush slower than this is logged: reviews wait on it, up to the capture deadline.
const SLOW_FLUSH: Duration = Duration::from_millis(100);

/// A store operation running longer than this counts as stalled: reviews are answered at once
/// and `/readyz` fails until it returns. Normal flushes take milliseconds.
pub const STALL_AFTER: Duration = Duration::from_secs(3);

/// A store operation running longer than this fails `/healthz` as well, so the kubelet restarts
/// the process: a thread stuck inside sled never returns, and it holds the database (and its
/// file lock), so only a new process can open it again.
pub const WEDGED_AFTER: Duration = Duration::from_secs(60);

/// Longest pause between attempts while the store cannot write: it bounds how long writing
/// resumes after space returns.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// First pause after a failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// How long the writer keeps trying, once the queue is closed (shutdown), while the store cannot
/// write; then it gives up on what is queued, counts it as dropped and exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// With a spool, the longest the writer waits for the store to take a batch before it spools
/// it: 2/5 of the default capture deadline, so that a review queued behind a batch that ran out
/// its budget still hears of its own within the deadline.
pub const APPEND_BUDGET: Duration = Duration::from_millis(200);

/// How often the watchdog looks at the running store operation.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Told about every batch after it is durable in the store (the notification outbox,
/// ChangeRecord summaries).
pub trait RecordObserver: Send + Sync {
    /// Called with the events the store just recorded or linked, in store order and one call at
    /// a time: on the writer thread, or for spooled events on the thread draining the spool.
    /// Keep it quick.
    fn on_recorded(&self, events: &[StoredEvent]);
}

/// What a waiting review hears once its event is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The store took it.
    Stored(AppendOutcome),
    /// The store could not take it in time; it is in the local spool, on disk, and goes to the
    /// store when the store can take it.
    Spooled,
}

/// The answer a waiting review gets.
pub type Ack = oneshot::Receiver<Written>;

/// Why the store cannot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The disk is full (ENOSPC).
    NoSpace,
    /// Another store error.
    Error,
    /// A store operation has been running for longer than [`STALL_AFTER`].
    Stalled,
    /// The spool is at its bound while the store cannot take writes.
    SpoolFull,
}

impl Problem {
    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Problem::NoSpace => "no_space",
            Problem::Error => "store_error",
            Problem::Stalled => "stalled",
            Problem::SpoolFull => "spool_full",
        }
    }

    fn of(error: &Error) -> Problem {
        if error.is_no_space() {
            Problem::NoSpace
        } else if matches!(error, Error::SpoolFull { .. }) {
            Problem::SpoolFull
        } else {
            Problem::Error
        }
    }
}

/// Whether the writer can write, shared with the probes and the review handlers: the last
/// attempt's failure, if it failed, and how long the running store operation has run.
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` (plus one) when the running store operation began; 0 when
    /// none runs.
    busy_since: AtomicU64,
    /// The failure of the last attempt; `None` once one succeeds. With a spool: of the last
    /// attempt to make a batch durable (in the store or the spool).
    failure: parking_lot::Mutex<Option<Problem>>,
    stall_after: Duration,
    /// The writer thread has exited (the watchdog stops).
    stopped: AtomicBool,
    /// There is a spool.
    spool: bool,
    /// Batches in it, as last counted (a count, not the spool: the watchdog, which outlives
    /// the writer a little, must not keep the spool's files open).
    spooled: AtomicU64,
}

impl Health {
    fn new(stall_after: Duration, spool: bool) -> Health {
        Health {
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            failure: parking_lot::Mutex::new(None),
            stall_after,
            stopped: AtomicBool::new(false),
            spool,
            spooled: AtomicU64::new(0),
        }
    }

    /// Why events cannot be made durable now, if they cannot.
    pub fn problem(&self) -> Option<Problem> {
        if let Some(p) = *self.failure.lock() {
            return Some(p);
        }
        // With a spool nobody waits on a slow store call: the writer spools after its budget.
        if self.spool {
            return None;
        }
        self.busy_for()
            .filter(|d| *d >= self.stall_after)
            .map(|_| Problem::Stalled)
    }

    /// Batches held in the spool while the store cannot take them; `None` when there is no
    /// spool or it is empty.
    pub fn spooling(&self) -> Option<u64> {
        Some(self.spooled.load(Ordering::Acquire)).filter(|n| *n > 0)
    }

    /// How long the running store operation has run, if one runs.
    pub fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Acquire) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    /// True when a store operation has been stuck for [`WEDGED_AFTER`]: only a restart helps.
    pub fn wedged(&self) -> bool {
        self.busy_for().is_some_and(|d| d >= WEDGED_AFTER)
    }

    /// Runs one store operation, visible to the watchdog while it runs.
    fn timed<T>(&self, op: impl FnOnce() -> T) -> T {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.busy_since.store(now, Ordering::Release);
        let out = op();
        self.busy_since.store(0, Ordering::Release);
        out
    }

    /// Records a failed attempt; true when the store was writable before it.
    fn failed(&self, problem: Problem) -> bool {
        self.failure.lock().replace(problem).is_none()
    }

    /// Records a successful attempt; true when the store was failing before it.
    fn recovered(&self) -> bool {
        self.failure.lock().take().is_some()
    }
}

/// The writer's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// After this long a store operation counts as stalled ([`STALL_AFTER`]).
    pub stall_after: Duration,
    /// How long to keep trying at shutdown while the store cannot write ([`SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
    /// With a spool, how long the writer waits for the store to take a batch ([`APPEND_BUDGET`]).
    pub append_budget: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stall_after: STALL_AFTER,
            shutdown_grace: SHUTDOWN_GRACE,
            append_budget: APPEND_BUDGET,
        }
    }
}

impl Timing {
    /// The default limits with the append budget at 2/5 of the capture `deadline`.
    pub fn for_deadline(deadline: Duration) -> Timing {
        Timing {
            append_budget: deadline * 2 / 5,
            ..Timing::default()
        }
    }
}

struct Job {
    captured: Captured,
    ack: Option<oneshot::Sender<Written>>,
}

/// Handle to submit events; cheap to clone. The writer stops once every handle is dropped and
/// the queue is drained.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` events.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        capacity: usize,
        metrics: Arc<Metrics>,
        observers: Vec<Arc<dyn RecordObserver>>,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        Writer::spawn_with(store, capacity, metrics, observers, Timing::default(), None)
    }

    /// [`Writer::spawn`] with other time limits and, for a shared engine, a local `spool` for
    /// the batches the store cannot take in time (see the module docs). What the spool holds
    /// from an earlier run goes to the store first. The returned thread ends after the thread
    /// draining the spool.
    pub fn spawn_with(
        store: Arc<dyn EventStore>,
        capacity: usize,
        metrics: Arc<Metrics>,
        observers: Vec<Arc<dyn RecordObserver>>,
        timing: Timing,
        spool: Option<Arc<Spool>>,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let health = Arc::new(Health::new(timing.stall_after, spool.is_some()));
        let observers: Arc<[Arc<dyn RecordObserver>]> = observers.into();
        let lane = spool
            .map(|spool| {
                Lane::spawn(
                    store.clone(),
                    spool,
                    &metrics,
                    &health,
                    &observers,
                    timing.shutdown_grace,
                )
            })
            .transpose()?;
        let (m, h) = (metrics.clone(), health.clone());
        let handle = std::thread::Builder::new()
            .name("histor-writer".into())
            .spawn(move || {
                run(
                    rx,
                    store.as_ref(),
                    lane.as_ref(),
                    &m,
                    &h,
                    &observers,
                    timing,
                );
                if let Some(lane) = lane {
                    lane.stop();
                }
                h.stopped.store(true, Ordering::Release);
            })?;
        let (m, h) = (metrics.clone(), health.clone());
        // Detached: it sees the writer stop and ends soon after.
        std::thread::Builder::new()
            .name("histor-writer-watchdog".into())
            .spawn(move || watch(&h, &m))?;
        Ok((
            Writer {
                tx,
                metrics,
                health,
            },
            handle,
        ))
    }

    /// Whether the store can write, and why not.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Queues an event and returns the receiver of its outcome. Never waits: a full queue is
    /// `Error::QueueFull`, because the apiserver's time is not ours to spend.
    pub fn submit(&self, captured: Captured) -> Result<Ack> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .try_send(Job {
                captured,
                ack: Some(ack),
            })
            .map_err(|_| Error::QueueFull)?;
        self.metrics.queue_depth.inc();
        Ok(rx)
    }

    /// Queues an event, waiting for room (for replay, where nobody else is waiting on us).
    pub async fn submit_wait(&self, captured: Captured) -> Result<Ack> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Job {
                captured,
                ack: Some(ack),
            })
            .await
            .map_err(|_| Error::QueueFull)?;
        self.metrics.queue_depth.inc();
        Ok(rx)
    }
}

/// Notices a store operation that does not return (sled can wait for ever on a log write that
/// failed), which the writer thread, being the one stuck, cannot report itself.
fn watch(health: &Health, metrics: &Metrics) {
    let mut reported = false;
    while !health.stopped.load(Ordering::Acquire) {
        std::thread::sleep(WATCH_EVERY);
        let stalled = health.problem() == Some(Problem::Stalled);
        if stalled && !reported {
            let busy_ms = health.busy_for().unwrap_or_default().as_millis() as u64;
            tracing::error!(
                reason = Problem::Stalled.label(),
                busy_ms,
                "store write stalled: reviews are answered at once and NOT recorded until it returns"
            );
            metrics
                .store_write_failures
                .get_or_create(&ReasonLabels {
                    reason: Problem::Stalled.label(),
                })
                .inc();
        } else if !stalled && reported {
            tracing::info!("stalled store write returned");
        }
        reported = stalled;
        let writable = health.problem().is_none() && health.spooling().is_none();
        metrics.store_writable.set(i64::from(writable));
    }
}

/// How a batch was made durable.
enum Durable {
    /// In the store, with each event's outcome.
    Stored(Vec<AppendOutcome>),
    /// In the spool.
    Spooled,
}

fn run(
    mut rx: mpsc::Receiver<Job>,
    store: &dyn EventStore,
    lane: Option<&Lane>,
    metrics: &Metrics,
    health: &Health,
    observers: &[Arc<dyn RecordObserver>],
    timing: Timing,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = Vec::with_capacity(64);
        jobs.push(first);
        // Everything that arrived while the previous batch was written goes into this one.
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics.queue_depth.dec_by(jobs.len() as i64);
        metrics.batch_size.observe(jobs.len() as f64);
        let (batch, acks): (Vec<Captured>, Vec<_>) =
            jobs.into_iter().map(|j| (j.captured, j.ack)).unzip();
        let batch = Arc::new(batch);
        let durable = match lane {
            Some(lane) => lane.write(&batch, metrics, health, &rx, timing),
            None => write(store, metrics, health, &batch, &rx, timing.shutdown_grace)
                .map(Durable::Stored),
        };
        let Some(durable) = durable else {
            // Shutting down with a store that cannot write: what is queued is lost.
            let mut lost = batch.len() as u64;
            rx.close();
            while rx.try_recv().is_ok() {
                lost += 1;
                metrics.queue_depth.dec();
            }
            metrics.dropped.inc_by(lost);
            tracing::error!(
                events = lost,
                "store cannot write at shutdown: answered events are NOT recorded"
            );
            break;
        };
        let batch = Arc::unwrap_or_clone(batch);
        acknowledge(batch, acks, durable, metrics, observers);
    }
    tracing::debug!("event writer stopped: queue closed and drained");
}

/// Appends and flushes `batch`, trying again until the store takes it: a full disk or a transient
/// store error must not lose events that are already queued (reviews are answered meanwhile,
/// see [`Health`]). After a failure the store may reopen itself ([`EventStore::recover`]), which
/// loses what it had not flushed, so each attempt appends the batch again; the store reports
/// the events an earlier attempt made durable as it did then. `None` when the queue closed
/// (shutdown) and the store still could not write `shutdown_grace` later.
fn write(
    store: &dyn EventStore,
    metrics: &Metrics,
    health: &Health,
    batch: &[Captured],
    rx: &mpsc::Receiver<Job>,
    shutdown_grace: Duration,
) -> Option<Vec<AppendOutcome>> {
    let mut backoff = FIRST_BACKOFF;
    let mut closed_at: Option<Instant> = None;
    loop {
        let attempt = health.timed(|| append(store, metrics, batch));
        let error = match attempt {
            Ok(outcomes) => {
                if health.recovered() {
                    tracing::info!("store writes again");
                }
                metrics.store_writable.set(1);
                return Some(outcomes);
            }
            Err(error) => error,
        };
        let problem = Problem::of(&error);
        metrics.store_writable.set(0);
        count(metrics, problem.label());
        if health.failed(problem) {
            tracing::error!(
                %error,
                reason = problem.label(),
                events = batch.len(),
                "store cannot write: reviews are answered at once; their events wait in memory, up to the queue capacity, until it can"
            );
        } else {
            tracing::debug!(%error, reason = problem.label(), "store still cannot write");
        }
        if gave_up(rx, &mut closed_at, shutdown_grace) {
            return None;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        recover(store, health, &error);
    }
}

/// One attempt: append and flush.
fn append(
    store: &dyn EventStore,
    metrics: &Metrics,
    batch: &[Captured],
) -> Result<Vec<AppendOutcome>> {
    let outcomes = store.append_buffered(batch)?;
    flush(store, metrics, batch.len())?;
    Ok(outcomes)
}

/// After a failed attempt: lets a store that must reopen (sled after an I/O error) do so.
fn recover(store: &dyn EventStore, health: &Health, error: &Error) {
    if needs_recovery(error) {
        reopen(store, health);
    }
}

fn reopen(store: &dyn EventStore, health: &Health) {
    if let Err(error) = health.timed(|| store.recover()) {
        tracing::debug!(%error, "store not recovered yet");
    }
}

/// True for the failures after which a store may need to reopen.
fn needs_recovery(error: &Error) -> bool {
    matches!(error, Error::Store(_) | Error::StoreClosed)
}

/// True once the queue has been closed (shutdown) for `grace` while writing still fails.
fn gave_up(rx: &mpsc::Receiver<Job>, closed_at: &mut Option<Instant>, grace: Duration) -> bool {
    rx.is_closed() && closed_at.get_or_insert_with(Instant::now).elapsed() >= grace
}

/// Counts a failed (or, with a spool, too slow) store write.
fn count(metrics: &Metrics, reason: &'static str) {
    metrics
        .store_write_failures
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Makes the appended batch durable.
fn flush(store: &dyn EventStore, metrics: &Metrics, events: usize) -> Result<()> {
    let started = std::time::Instant::now();
    store.sync()?;
    let took = started.elapsed();
    metrics.flush_latency.observe(took.as_secs_f64());
    if took > SLOW_FLUSH {
        tracing::warn!(
            events,
            took_ms = took.as_millis() as u64,
            "slow flush: reviews waited on the disk"
        );
    }
    Ok(())
}

/// Answers the waiting reviews and tells the observers of what the store recorded.
fn acknowledge(
    batch: Vec<Captured>,
    acks: Vec<Option<oneshot::Sender<Written>>>,
    durable: Durable,
    metrics: &Metrics,
    observers: &[Arc<dyn RecordObserver>],
) {
    match durable {
        Durable::Stored(outcomes) => {
            for (ack, outcome) in acks.into_iter().zip(&outcomes) {
                if let Some(ack) = ack {
                    // The review may have stopped waiting (deadline); that is fine.
                    let _ = ack.send(Written::Stored(*outcome));
                }
            }
            observe(batch, outcomes, metrics, observers);
        }
        Durable::Spooled => {
            for ack in acks.into_iter().flatten() {
                let _ = ack.send(Written::Spooled);
            }
        }
    }
}

/// Counts what the store recorded and tells the observers of it.
fn observe(
    batch: Vec<Captured>,
    outcomes: Vec<AppendOutcome>,
    metrics: &Metrics,
    observers: &[Arc<dyn RecordObserver>],
) {
    let mut recorded = Vec::new();
    for (captured, outcome) in batch.into_iter().zip(outcomes) {
        // A linked event is news to the policy it was just linked to (and only to it: the
        // captured event names that one policy), so observers hear of it too.
        let id = match outcome {
            AppendOutcome::Recorded(id) => {
                metrics.events_recorded.inc();
                Some(id)
            }
            AppendOutcome::Linked(id) => Some(id),
            AppendOutcome::Duplicate(_) => None,
        };
        if let Some(id) = id
            && !observers.is_empty()
        {
            recorded.push(StoredEvent {
                id,
                event: captured.event,
            });
        }
    }
    if !recorded.is_empty() {
        for observer in observers {
            observer.on_recorded(&recorded);
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TrackingPolicySpec;
    use crate::pipeline::{CompiledPolicy, Outcome, Redactor, process, testdata};
    use crate::store::{DEFAULT_SPOOL_BYTES, MemStore, SledStore};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    fn recorded(w: Written) -> bool {
        matches!(w, Written::Stored(AppendOutcome::Recorded(_)))
    }

    /// The recorded ConfigMap creation as the pipeline captures it, made a request and an object
    /// of its own by `n`.
    fn captured(n: usize) -> Captured {
        let spec: TrackingPolicySpec = serde_json::from_value(
            serde_json::json!({"resources": [{"apiGroups": ["*"], "resources": ["*"]}]}),
        )
        .unwrap();
        let policy = CompiledPolicy::compile("all", &spec).unwrap();
        let redactor = Redactor::new(b"0123456789abcdef0123456789abcdef");
        let mut req = testdata::request("create-configmap");
        req.uid = format!("{}-{n}", req.uid);
        req.name = format!("{}-{n}", req.name);
        if let Some(obj) = req.object.as_mut() {
            obj["metadata"]["name"] = req.name.clone().into();
            obj["metadata"]["uid"] = format!("uid-{n}").into();
        }
        match process(&req, &policy, &redactor, jiff::Timestamp::now()) {
            Outcome::Record(c) => c,
            Outcome::Skip(why) => panic!("fixture skipped: {why:?}"),
        }
    }

    /// The reference store, failing like a full disk while `full` is set and like a database
    /// that cannot be reached while `down` is, and able to block its flushes.
    #[derive(Default)]
    struct Flaky {
        store: MemStore,
        full: AtomicBool,
        down: AtomicBool,
        /// While set, `sync` waits until it is cleared.
        hang: AtomicBool,
        recovers: AtomicU64,
        /// Request uids of every event an append took, in order (duplicates too).
        taken: Mutex<Vec<String>>,
        /// When set, the next append is stored but answered with an error (a COMMIT whose
        /// answer was lost), and the store goes `down`.
        lose_answer: AtomicBool,
        /// What the PostgreSQL engine keeps to recognise a retry: the request uids of the batch
        /// whose answer was lost, and what it did.
        lost: Mutex<Option<(Vec<String>, Vec<AppendOutcome>)>>,
    }

    fn no_space() -> Error {
        Error::store(std::io::Error::from_raw_os_error(28))
    }

    impl Flaky {
        fn taken(&self) -> Vec<String> {
            self.taken.lock().unwrap().clone()
        }
    }

    impl EventStore for Flaky {
        fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
            if self.full.load(Ordering::SeqCst) {
                return Err(no_space());
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Io(std::io::Error::other(
                    "postgres: connection refused",
                )));
            }
            let uids: Vec<String> = batch.iter().map(|c| c.event.request_uid.clone()).collect();
            // Recognised only when the very next append is the same batch.
            if let Some((lost, outcomes)) = self.lost.lock().unwrap().take()
                && lost == uids
            {
                return Ok(outcomes);
            }
            self.taken.lock().unwrap().extend(uids.iter().cloned());
            let outcomes = self.store.append_buffered(batch)?;
            if self.lose_answer.swap(false, Ordering::SeqCst) {
                *self.lost.lock().unwrap() = Some((uids, outcomes));
                self.down.store(true, Ordering::SeqCst);
                return Err(Error::Io(std::io::Error::other(
                    "postgres: connection reset while committing",
                )));
            }
            Ok(outcomes)
        }

        fn sync(&self) -> Result<()> {
            while self.hang.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.store.sync()
        }

        fn recover(&self) -> Result<()> {
            self.recovers.fetch_add(1, Ordering::SeqCst);
            if self.full.load(Ordering::SeqCst) {
                return Err(no_space());
            }
            self.store.recover()
        }

        fn query(&self, q: &crate::store::Query) -> Result<crate::store::Page> {
            self.store.query(q)
        }

        fn get(&self, id: crate::store::EventId) -> Result<Option<StoredEvent>> {
            self.store.get(id)
        }

        fn state_after(&self, id: crate::store::EventId) -> Result<Option<serde_json::Value>> {
            self.store.state_after(id)
        }

        fn state_before(&self, id: crate::store::EventId) -> Result<Option<serde_json::Value>> {
            self.store.state_before(id)
        }

        fn enforce_retention(
            &self,
            now: jiff::Timestamp,
            rule: &dyn Fn(&str) -> Option<crate::store::RetentionRule>,
            default: crate::store::RetentionRule,
        ) -> Result<crate::store::RetentionReport> {
            self.store.enforce_retention(now, rule, default)
        }

        fn stats(&self) -> Result<crate::store::StoreStats> {
            self.store.stats()
        }

        fn resolve(&self, r: &[crate::store::Resolution]) -> Result<Vec<bool>> {
            self.store.resolve(r)
        }

        fn annotate(
            &self,
            n: &[(crate::store::EventId, crate::pipeline::AuditInfo)],
        ) -> Result<Vec<bool>> {
            self.store.annotate(n)
        }

        fn live_objects(&self, resource: &str) -> Result<Vec<crate::store::ObjectHead>> {
            self.store.live_objects(resource)
        }

        fn cursor(&self, key: &str) -> Result<Option<String>> {
            self.store.cursor(key)
        }

        fn set_cursor(&self, key: &str, value: &str) -> Result<()> {
            self.store.set_cursor(key, value)
        }
    }

    /// Waits (at most 10 s) until `cond` holds: for a state another thread reaches.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn failures(m: &Metrics, reason: &'static str) -> u64 {
        m.store_write_failures
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    #[test]
    fn a_full_disk_is_reported_and_writing_resumes_when_space_returns() {
        let store = Arc::new(Flaky::default());
        store.full.store(true, Ordering::SeqCst);
        let metrics = Arc::new(Metrics::default());
        let (writer, thread) = Writer::spawn(store.clone(), 8, metrics.clone(), vec![]).unwrap();
        assert_eq!(writer.health().problem(), None);
        let first = writer.submit(captured(1)).unwrap();
        eventually("the failure to show", || {
            writer.health().problem() == Some(Problem::NoSpace)
        });
        assert_eq!(metrics.store_writable.get(), 0);
        assert!(failures(&metrics, "no_space") >= 1);
        // More events wait in the queue meanwhile.
        let second = writer.submit(captured(2)).unwrap();
        eventually("a recovery attempt", || {
            store.recovers.load(Ordering::SeqCst) >= 1
        });
        store.full.store(false, Ordering::SeqCst);
        let first = first.blocking_recv().unwrap();
        let second = second.blocking_recv().unwrap();
        assert!(recorded(first), "{first:?}");
        assert!(recorded(second), "{second:?}");
        assert_eq!(store.stats().unwrap().events, 2);
        assert_eq!(writer.health().problem(), None);
        assert_eq!(metrics.store_writable.get(), 1);
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn a_flush_that_does_not_return_counts_as_stalled_until_it_does() {
        let store = Arc::new(Flaky::default());
        store.hang.store(true, Ordering::SeqCst);
        let metrics = Arc::new(Metrics::default());
        let timing = Timing {
            stall_after: Duration::from_millis(20),
            ..Timing::default()
        };
        let (writer, thread) =
            Writer::spawn_with(store.clone(), 8, metrics.clone(), vec![], timing, None).unwrap();
        let ack = writer.submit(captured(1)).unwrap();
        eventually("the stall to show", || {
            writer.health().problem() == Some(Problem::Stalled)
        });
        assert!(!writer.health().wedged());
        eventually("the watchdog to count it", || {
            failures(&metrics, "stalled") == 1 && metrics.store_writable.get() == 0
        });
        store.hang.store(false, Ordering::SeqCst);
        let ack = ack.blocking_recv().unwrap();
        assert!(recorded(ack), "{ack:?}");
        assert_eq!(writer.health().problem(), None);
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn at_shutdown_a_store_that_cannot_write_is_given_up_on_in_bounded_time() {
        let store = Arc::new(Flaky::default());
        store.full.store(true, Ordering::SeqCst);
        let metrics = Arc::new(Metrics::default());
        let timing = Timing {
            shutdown_grace: Duration::from_millis(100),
            ..Timing::default()
        };
        let (writer, thread) =
            Writer::spawn_with(store.clone(), 8, metrics.clone(), vec![], timing, None).unwrap();
        let acks: Vec<Ack> = (0..3)
            .map(|n| writer.submit(captured(n)).unwrap())
            .collect();
        drop(writer);
        let started = Instant::now();
        thread.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(metrics.dropped.get(), 3);
        assert_eq!(metrics.queue_depth.get(), 0);
        for ack in acks {
            assert!(
                ack.blocking_recv().is_err(),
                "never recorded, never acknowledged"
            );
        }
    }

    /// Every event id observers were told of, in order.
    #[derive(Default)]
    struct Seen(Mutex<Vec<crate::store::EventId>>);

    impl RecordObserver for Seen {
        fn on_recorded(&self, events: &[StoredEvent]) {
            self.0.lock().unwrap().extend(events.iter().map(|e| e.id));
        }
    }

    #[test]
    fn observers_hear_of_every_event_of_a_batch_retried_after_a_partial_failure() {
        const N: usize = 12;
        for spooled in [false, true] {
            for k in [0, 1, 5, N - 1] {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(SledStore::open(dir.path().join("store")).unwrap());
                let spool = spooled.then(|| {
                    Arc::new(Spool::open(dir.path().join("spool"), DEFAULT_SPOOL_BYTES).unwrap())
                });
                let seen = Arc::new(Seen::default());
                // The write after the first `k` fails once, in whichever batch holds it; with a
                // spool, its batch is spooled and appended again by the lane.
                store.fail_once_after(k);
                let (writer, thread) = Writer::spawn_with(
                    store.clone(),
                    N,
                    Arc::new(Metrics::default()),
                    vec![seen.clone()],
                    Timing::default(),
                    spool.clone(),
                )
                .unwrap();
                let acks: Vec<Ack> = (0..N)
                    .map(|n| writer.submit(captured(n)).unwrap())
                    .collect();
                let outcomes: Vec<Written> = acks
                    .into_iter()
                    .map(|a| a.blocking_recv().unwrap())
                    .collect();
                drop(writer);
                thread.join().unwrap();
                let case = format!("spooled={spooled} k={k}");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| recorded(*o) || (spooled && *o == Written::Spooled)),
                    "{case}: {outcomes:?}"
                );
                if let Some(spool) = &spool {
                    assert!(
                        outcomes.contains(&Written::Spooled),
                        "{case}: the failed batch was spooled"
                    );
                    assert!(spool.is_empty(), "{case}: drained before the lane stopped");
                }
                let mut ids = seen.0.lock().unwrap().clone();
                assert_eq!(ids.len(), N, "{case}: every event once: {ids:?}");
                ids.dedup();
                assert_eq!(ids.len(), N, "{case}: no event twice");
                assert_eq!(store.stats().unwrap().events, N as u64, "{case}");
            }
        }
    }

    /// A writer over `store` with a spool in `dir` holding at most `limit` bytes.
    fn spooled(
        store: &Arc<Flaky>,
        dir: &std::path::Path,
        limit: u64,
        observers: Vec<Arc<dyn RecordObserver>>,
        timing: Timing,
    ) -> (
        Writer,
        std::thread::JoinHandle<()>,
        Arc<Spool>,
        Arc<Metrics>,
    ) {
        let spool = Arc::new(Spool::open(dir, limit).unwrap());
        let metrics = Arc::new(Metrics::default());
        let (writer, thread) = Writer::spawn_with(
            store.clone(),
            64,
            metrics.clone(),
            observers,
            timing,
            Some(spool.clone()),
        )
        .unwrap();
        (writer, thread, spool, metrics)
    }

    fn uids(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|n| captured(n).event.request_uid).collect()
    }

    /// The observers heard of every event the store holds, once each, in id order.
    fn assert_heard_once(seen: &Seen, store: &Flaky, events: usize) {
        // Observers hear after the store's write returns and the spool is trimmed: wait for them.
        eventually("the observers to hear", || {
            seen.0.lock().unwrap().len() >= events
        });
        let heard = seen.0.lock().unwrap().clone();
        assert_eq!(heard.len(), events, "{heard:?}");
        assert!(
            heard.windows(2).all(|w| w[0] < w[1]),
            "in order, once: {heard:?}"
        );
        let page = store
            .query(&crate::store::Query {
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        let mut stored: Vec<_> = page.events.iter().map(|e| e.id).collect();
        stored.reverse();
        assert_eq!(heard, stored);
    }

    #[test]
    fn while_the_store_is_down_reviews_hear_spooled_and_every_event_reaches_it_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        store.down.store(true, Ordering::SeqCst);
        let seen = Arc::new(Seen::default());
        let (writer, thread, spool, metrics) = spooled(
            &store,
            dir.path(),
            DEFAULT_SPOOL_BYTES,
            vec![seen.clone()],
            Timing::default(),
        );
        // One at a time, then a burst that the writer batches.
        for n in 0..10 {
            let ack = writer.submit(captured(n)).unwrap();
            assert_eq!(ack.blocking_recv().unwrap(), Written::Spooled, "event {n}");
        }
        let acks: Vec<Ack> = (10..30)
            .map(|n| writer.submit(captured(n)).unwrap())
            .collect();
        for ack in acks {
            assert_eq!(ack.blocking_recv().unwrap(), Written::Spooled);
        }
        assert!(store.taken().is_empty());
        assert_eq!(store.stats().unwrap().events, 0);
        let batches = spool.len();
        assert!(batches >= 11, "{batches} batches");
        // Recording durably: ready, and saying so.
        assert_eq!(writer.health().problem(), None);
        assert_eq!(writer.health().spooling(), Some(batches));
        assert_eq!(metrics.spool_batches.get(), batches);
        assert_eq!(metrics.spool_bytes.get(), spool.bytes());
        assert_eq!(metrics.spooled_batches.get(), batches);
        assert!(failures(&metrics, "store_error") >= 1);
        assert_eq!(metrics.events_recorded.get(), 0);

        store.down.store(false, Ordering::SeqCst);
        // While the lane waits out its backoff: behind the spooled ones, not before them.
        let ack = writer.submit(captured(30)).unwrap();
        let ack = ack.blocking_recv().unwrap();
        assert!(recorded(ack) || ack == Written::Spooled, "{ack:?}");
        eventually("the spool to drain", || spool.is_empty());
        assert_eq!(store.taken(), uids(0..31), "every event once, in order");
        assert_eq!(store.stats().unwrap().events, 31);
        assert_heard_once(&seen, &store, 31);
        assert_eq!(metrics.events_recorded.get(), 31);
        eventually("the gauges to follow", || {
            metrics.spool_batches.get() == 0 && metrics.spool_bytes.get() == 0
        });
        assert_eq!(writer.health().spooling(), None);
        // Nothing spooled: the next event goes to the store, and its review hears so.
        let ack = writer.submit(captured(31)).unwrap();
        assert!(recorded(ack.blocking_recv().unwrap()));
        drop(writer);
        thread.join().unwrap();
        assert_eq!(store.taken(), uids(0..32));
        assert_heard_once(&seen, &store, 32);
    }

    #[test]
    fn an_append_past_its_budget_is_spooled_and_its_late_answer_is_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        store.hang.store(true, Ordering::SeqCst);
        let seen = Arc::new(Seen::default());
        let timing = Timing {
            append_budget: Duration::from_millis(20),
            stall_after: Duration::from_millis(10),
            ..Timing::default()
        };
        let (writer, thread, spool, metrics) = spooled(
            &store,
            dir.path(),
            DEFAULT_SPOOL_BYTES,
            vec![seen.clone()],
            timing,
        );
        let first = writer.submit(captured(0)).unwrap();
        assert_eq!(first.blocking_recv().unwrap(), Written::Spooled);
        // The store has the batch and is still flushing it.
        assert_eq!(store.taken(), uids(0..1));
        let second = writer.submit(captured(1)).unwrap();
        assert_eq!(second.blocking_recv().unwrap(), Written::Spooled);
        assert_eq!(spool.len(), 2);
        assert_eq!(failures(&metrics, "slow"), 1);
        eventually("the call to run past stall_after", || {
            writer.health().busy_for() >= Some(Duration::from_millis(10))
        });
        assert_eq!(
            writer.health().problem(),
            None,
            "with a spool a slow store is not a reason to answer at once"
        );

        store.hang.store(false, Ordering::SeqCst);
        eventually("the spool to drain", || spool.is_empty());
        // The late answer was taken: the first batch was not appended again.
        assert_eq!(store.taken(), uids(0..2));
        assert_heard_once(&seen, &store, 2);
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn a_spool_left_by_an_earlier_run_goes_to_the_store_first() {
        let dir = tempfile::tempdir().unwrap();
        {
            let down = Arc::new(Flaky::default());
            down.down.store(true, Ordering::SeqCst);
            let timing = Timing {
                shutdown_grace: Duration::from_millis(50),
                ..Timing::default()
            };
            let (writer, thread, spool, _) =
                spooled(&down, dir.path(), DEFAULT_SPOOL_BYTES, vec![], timing);
            for n in 0..5 {
                let ack = writer.submit(captured(n)).unwrap();
                assert_eq!(ack.blocking_recv().unwrap(), Written::Spooled);
            }
            drop(writer);
            thread.join().unwrap();
            assert_eq!(spool.len(), 5);
            assert!(down.taken().is_empty());
        }
        let store = Arc::new(Flaky::default());
        let seen = Arc::new(Seen::default());
        let (writer, thread, spool, metrics) = spooled(
            &store,
            dir.path(),
            DEFAULT_SPOOL_BYTES,
            vec![seen.clone()],
            Timing::default(),
        );
        let ack = writer.submit(captured(5)).unwrap();
        let ack = ack.blocking_recv().unwrap();
        assert!(recorded(ack) || ack == Written::Spooled, "{ack:?}");
        // Observers hear of a batch after the store took it: wait for both.
        eventually("the old spool to drain", || {
            spool.is_empty() && store.taken().len() == 6 && seen.0.lock().unwrap().len() >= 6
        });
        assert_eq!(store.taken(), uids(0..6), "the earlier run's events first");
        assert_heard_once(&seen, &store, 6);
        assert_eq!(metrics.events_recorded.get(), 6);
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn a_full_spool_leaves_events_waiting_in_memory_until_the_store_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Spool::open(dir.path().join("probe"), DEFAULT_SPOOL_BYTES).unwrap();
        probe.push(&[captured(0)]).unwrap();
        // Room for two one-event batches.
        let limit = probe.bytes() * 5 / 2;
        let store = Arc::new(Flaky::default());
        store.down.store(true, Ordering::SeqCst);
        let seen = Arc::new(Seen::default());
        let (writer, thread, spool, metrics) = spooled(
            &store,
            &dir.path().join("spool"),
            limit,
            vec![seen.clone()],
            Timing::default(),
        );
        for n in 0..2 {
            let ack = writer.submit(captured(n)).unwrap();
            assert_eq!(ack.blocking_recv().unwrap(), Written::Spooled);
        }
        let third = writer.submit(captured(2)).unwrap();
        eventually("the full spool to show", || {
            writer.health().problem() == Some(Problem::SpoolFull)
        });
        assert!(failures(&metrics, "spool_full") >= 1);
        assert_eq!(spool.len(), 2);
        assert_eq!(
            metrics.queue_depth.get(),
            0,
            "the batch is the writer's, in memory"
        );

        store.down.store(false, Ordering::SeqCst);
        let third = third.blocking_recv().unwrap();
        assert!(recorded(third) || third == Written::Spooled, "{third:?}");
        assert_eq!(writer.health().problem(), None);
        eventually("the spool to drain", || {
            spool.is_empty() && store.taken().len() == 3
        });
        assert_eq!(store.taken(), uids(0..3), "in order");
        assert_heard_once(&seen, &store, 3);
        drop(writer);
        thread.join().unwrap();
    }

    #[test]
    fn a_batch_whose_answer_was_lost_is_appended_again_alone_so_the_store_recognises_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Flaky::default());
        store.lose_answer.store(true, Ordering::SeqCst);
        let seen = Arc::new(Seen::default());
        let (writer, thread, spool, _) = spooled(
            &store,
            dir.path(),
            DEFAULT_SPOOL_BYTES,
            vec![seen.clone()],
            Timing::default(),
        );
        // The store keeps event 0 but its answer is lost; 1 and 2 are spooled behind it, so a
        // drain that merged spooled batches would send the store a batch it does not recognise.
        for n in 0..3 {
            let ack = writer.submit(captured(n)).unwrap();
            assert_eq!(ack.blocking_recv().unwrap(), Written::Spooled, "event {n}");
        }
        assert_eq!(spool.len(), 3);
        store.down.store(false, Ordering::SeqCst);
        eventually("the spool to drain", || spool.is_empty());
        assert_eq!(store.taken(), uids(0..3), "event 0 stored once");
        // Observers heard of event 0 too: the retry was recognised, not found a duplicate.
        assert_heard_once(&seen, &store, 3);
        drop(writer);
        thread.join().unwrap();
    }
}
