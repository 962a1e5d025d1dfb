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

use crate::metrics::{Metrics, ReasonLabels};
use crate::pipeline::Captured;
use crate::store::{AppendOutcome, EventStore, StoredEvent};
use crate::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

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

/// How long the writer keeps trying, once the queue is closed (shutdown), while the store cannot
/// write; then it gives up on what is queued, counts it as dropped and exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the watchdog looks at the running store operation.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Told about every batch after it is durable (the notification outbox, ChangeRecord summaries).
pub trait RecordObserver: Send + Sync {
    /// Called on the writer thread with the events just made durable; keep it quick.
    fn on_recorded(&self, events: &[StoredEvent]);
}

/// The answer a waiting review gets.
pub type Ack = oneshot::Receiver<AppendOutcome>;

/// Why the store cannot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The disk is full (ENOSPC).
    NoSpace,
    /// Another store error.
    Error,
    /// A store operation has been running for longer than [`STALL_AFTER`].
    Stalled,
}

impl Problem {
    /// The metric label and log field.
    pub fn label(self) -> &'static str {
        match self {
            Problem::NoSpace => "no_space",
            Problem::Error => "store_error",
            Problem::Stalled => "stalled",
        }
    }

    fn of(error: &Error) -> Problem {
        if error.is_no_space() {
            Problem::NoSpace
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
    /// The failure of the last attempt; `None` once one succeeds.
    failure: parking_lot::Mutex<Option<Problem>>,
    stall_after: Duration,
    /// The writer thread has exited (the watchdog stops).
    stopped: AtomicBool,
}

impl Health {
    fn new(stall_after: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            failure: parking_lot::Mutex::new(None),
            stall_after,
            stopped: AtomicBool::new(false),
        }
    }

    /// Why the store cannot write now, if it cannot.
    pub fn problem(&self) -> Option<Problem> {
        if let Some(p) = *self.failure.lock() {
            return Some(p);
        }
        self.busy_for()
            .filter(|d| *d >= self.stall_after)
            .map(|_| Problem::Stalled)
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
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stall_after: STALL_AFTER,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

struct Job {
    captured: Captured,
    ack: Option<oneshot::Sender<AppendOutcome>>,
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
        Writer::spawn_with(store, capacity, metrics, observers, Timing::default())
    }

    /// [`Writer::spawn`] with other time limits.
    pub fn spawn_with(
        store: Arc<dyn EventStore>,
        capacity: usize,
        metrics: Arc<Metrics>,
        observers: Vec<Arc<dyn RecordObserver>>,
        timing: Timing,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let health = Arc::new(Health::new(timing.stall_after));
        let (m, h) = (metrics.clone(), health.clone());
        let handle = std::thread::Builder::new()
            .name("histor-writer".into())
            .spawn(move || {
                run(
                    rx,
                    store.as_ref(),
                    &m,
                    &h,
                    &observers,
                    timing.shutdown_grace,
                );
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
        metrics
            .store_writable
            .set(i64::from(health.problem().is_none()));
    }
}

fn run(
    mut rx: mpsc::Receiver<Job>,
    store: &dyn EventStore,
    metrics: &Metrics,
    health: &Health,
    observers: &[Arc<dyn RecordObserver>],
    shutdown_grace: Duration,
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
        let Some(outcomes) = write(store, metrics, health, &batch, &rx, shutdown_grace) else {
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
        acknowledge(batch, acks, outcomes, metrics, observers);
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
    let mut backoff = Duration::from_millis(50);
    let mut closed_at: Option<Instant> = None;
    loop {
        let attempt = health.timed(|| {
            let outcomes = store.append_buffered(batch)?;
            flush(store, metrics, batch.len())?;
            Ok::<_, Error>(outcomes)
        });
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
        metrics
            .store_write_failures
            .get_or_create(&ReasonLabels {
                reason: problem.label(),
            })
            .inc();
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
        if rx.is_closed() {
            let since = *closed_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= shutdown_grace {
                return None;
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        if matches!(error, Error::Store(_) | Error::StoreClosed)
            && let Err(error) = health.timed(|| store.recover())
        {
            tracing::debug!(%error, "store not recovered yet");
        }
    }
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

/// Answers the waiting reviews and tells the observers.
fn acknowledge(
    batch: Vec<Captured>,
    acks: Vec<Option<oneshot::Sender<AppendOutcome>>>,
    outcomes: Vec<AppendOutcome>,
    metrics: &Metrics,
    observers: &[Arc<dyn RecordObserver>],
) {
    let mut recorded = Vec::new();
    for ((captured, ack), outcome) in batch.into_iter().zip(acks).zip(outcomes) {
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
        if let Some(ack) = ack {
            // The review may have stopped waiting (deadline); that is fine.
            let _ = ack.send(outcome);
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
    use crate::store::{MemStore, SledStore};
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

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

    /// The reference store, failing like a full disk while `full` is set, and able to block its
    /// flushes.
    #[derive(Default)]
    struct Flaky {
        store: MemStore,
        full: AtomicBool,
        /// While set, `sync` waits until it is cleared.
        hang: AtomicBool,
        recovers: AtomicU64,
    }

    fn no_space() -> Error {
        Error::store(std::io::Error::from_raw_os_error(28))
    }

    impl EventStore for Flaky {
        fn append_buffered(&self, batch: &[Captured]) -> Result<Vec<AppendOutcome>> {
            if self.full.load(Ordering::SeqCst) {
                return Err(no_space());
            }
            self.store.append_buffered(batch)
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
        assert!(matches!(first, AppendOutcome::Recorded(_)), "{first:?}");
        assert!(matches!(second, AppendOutcome::Recorded(_)), "{second:?}");
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
            Writer::spawn_with(store.clone(), 8, metrics.clone(), vec![], timing).unwrap();
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
        assert!(matches!(ack, AppendOutcome::Recorded(_)), "{ack:?}");
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
            Writer::spawn_with(store.clone(), 8, metrics.clone(), vec![], timing).unwrap();
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
        for k in [0, 1, 5, N - 1] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let seen = Arc::new(Seen::default());
            // The write after the first `k` fails once, in whichever batch holds it.
            store.fail_once_after(k);
            let (writer, thread) = Writer::spawn(
                store.clone(),
                N,
                Arc::new(Metrics::default()),
                vec![seen.clone()],
            )
            .unwrap();
            let acks: Vec<Ack> = (0..N)
                .map(|n| writer.submit(captured(n)).unwrap())
                .collect();
            drop(writer);
            let outcomes: Vec<AppendOutcome> = acks
                .into_iter()
                .map(|a| a.blocking_recv().unwrap())
                .collect();
            thread.join().unwrap();
            assert!(
                outcomes
                    .iter()
                    .all(|o| matches!(o, AppendOutcome::Recorded(_))),
                "k={k}: {outcomes:?}"
            );
            let mut ids = seen.0.lock().unwrap().clone();
            assert_eq!(ids.len(), N, "k={k}: every event once: {ids:?}");
            ids.dedup();
            assert_eq!(ids.len(), N, "k={k}: no event twice");
            assert_eq!(store.stats().unwrap().events, N as u64, "k={k}");
        }
    }
}
