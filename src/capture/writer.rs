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

use crate::metrics::Metrics;
use crate::pipeline::Captured;
use crate::store::{AppendOutcome, EventStore, StoredEvent};
use crate::{Error, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most events in one batch; bounds the time one flush keeps later events waiting.
const MAX_BATCH: usize = 1024;

/// A flush slower than this is logged: reviews wait on it, up to the capture deadline.
const SLOW_FLUSH: Duration = Duration::from_millis(100);

/// Told about every batch after it is durable (the notification outbox, ChangeRecord summaries).
pub trait RecordObserver: Send + Sync {
    /// Called on the writer thread with the events just made durable; keep it quick.
    fn on_recorded(&self, events: &[StoredEvent]);
}

/// The answer a waiting review gets.
pub type Ack = oneshot::Receiver<AppendOutcome>;

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
}

impl Writer {
    /// Starts the writer thread with a queue of `capacity` events.
    pub fn spawn(
        store: Arc<dyn EventStore>,
        capacity: usize,
        metrics: Arc<Metrics>,
        observers: Vec<Arc<dyn RecordObserver>>,
    ) -> Result<(Writer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("histor-writer".into())
            .spawn(move || run(rx, store.as_ref(), &m, &observers))?;
        Ok((Writer { tx, metrics }, handle))
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

fn run(
    mut rx: mpsc::Receiver<Job>,
    store: &dyn EventStore,
    metrics: &Metrics,
    observers: &[Arc<dyn RecordObserver>],
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
        // Retried until the store takes it: a full disk or a transient store error must not lose
        // events that are already queued. Reviews stop waiting at their deadline anyway. The
        // flush is retried on its own, so a batch is never appended twice.
        let outcomes = retry("append", metrics, || store.append_buffered(&batch));
        flush(store, metrics, batch.len());
        acknowledge(batch, acks, outcomes, metrics, observers);
    }
    tracing::debug!("event writer stopped: queue closed and drained");
}

fn retry<T>(what: &str, metrics: &Metrics, mut op: impl FnMut() -> Result<T>) -> T {
    let mut backoff = Duration::from_millis(50);
    loop {
        match op() {
            Ok(v) => return v,
            Err(error) => {
                tracing::error!(%error, retry_in_ms = backoff.as_millis() as u64, "store {what} failed; retrying");
                metrics.review("store_error");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Makes the appended batch durable, retrying until it is.
fn flush(store: &dyn EventStore, metrics: &Metrics, events: usize) {
    let started = std::time::Instant::now();
    retry("flush", metrics, || store.sync());
    let took = started.elapsed();
    metrics.flush_latency.observe(took.as_secs_f64());
    if took > SLOW_FLUSH {
        tracing::warn!(
            events,
            took_ms = took.as_millis() as u64,
            "slow flush: reviews waited on the disk"
        );
    }
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
    use crate::store::SledStore;
    use std::sync::Mutex;

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
