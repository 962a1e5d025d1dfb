//! The store lane: with a spool, the one thread that calls the store. It appends the batches
//! the writer hands it while the spool is empty (the writer waits for each at most its budget)
//! and drains the spool otherwise, oldest first. One thread for both keeps the store's calls in
//! queue order without a lock, and lets a call the writer stopped waiting for run to its end:
//! its answer is not lost, the lane takes it (see [`Call`]).

use super::{
    Durable, FIRST_BACKOFF, Health, Job, MAX_BACKOFF, MAX_BATCH, Problem, RecordObserver, Timing,
    append, count, gave_up, needs_recovery, observe, recover, reopen,
};
use crate::metrics::Metrics;
use crate::pipeline::Captured;
use crate::store::{AppendOutcome, EventStore, Spool, Spooled};
use crate::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One store call the writer waits for with a budget.
struct Call {
    state: Mutex<CallState>,
    done: Condvar,
}

enum CallState {
    Running,
    /// The store answered; the writer takes it.
    Done(Result<Vec<AppendOutcome>>),
    /// The writer stopped waiting and spooled the batch under this sequence number (its reviews
    /// heard "spooled"): the lane takes the answer, as it would a drain's.
    Abandoned(u64),
}

impl Call {
    fn new() -> Call {
        Call {
            state: Mutex::new(CallState::Running),
            done: Condvar::new(),
        }
    }

    /// The answer, waiting at most `budget` for it (as long as it takes with `None`).
    fn wait(&self, budget: Option<Duration>) -> Option<Result<Vec<AppendOutcome>>> {
        let until = budget.map(|b| Instant::now() + b);
        let mut state = self.state.lock();
        loop {
            if let Some(answer) = take_done(&mut state) {
                return Some(answer);
            }
            match until {
                Some(until) => {
                    if self.done.wait_until(&mut state, until).timed_out() {
                        return take_done(&mut state);
                    }
                }
                None => self.done.wait(&mut state),
            }
        }
    }

    /// Hands the running call to the lane, its batch spooled as `seq`; the answer instead when
    /// it came meanwhile.
    fn abandon(&self, seq: u64) -> Option<Result<Vec<AppendOutcome>>> {
        let mut state = self.state.lock();
        let answer = take_done(&mut state);
        if answer.is_none() {
            *state = CallState::Abandoned(seq);
        }
        answer
    }

    /// The lane's side: gives the writer the answer, or, when the writer abandoned the call,
    /// returns it with the batch and its sequence number.
    fn finish(
        &self,
        batch: Arc<Vec<Captured>>,
        answer: Result<Vec<AppendOutcome>>,
    ) -> Option<Abandoned> {
        let mut state = self.state.lock();
        if let CallState::Abandoned(seq) = *state {
            return Some((seq, batch, answer));
        }
        // Dropped first, so the writer, seeing the answer, holds the batch's only reference.
        drop(batch);
        *state = CallState::Done(answer);
        self.done.notify_all();
        None
    }
}

/// A call the writer abandoned: the sequence number it spooled the batch under, the batch, and
/// the store's answer.
type Abandoned = (u64, Arc<Vec<Captured>>, Result<Vec<AppendOutcome>>);

fn take_done(state: &mut CallState) -> Option<Result<Vec<AppendOutcome>>> {
    match std::mem::replace(state, CallState::Running) {
        CallState::Done(answer) => Some(answer),
        other => {
            *state = other;
            None
        }
    }
}

enum ToLane {
    /// Append this batch now (the spool is empty) and answer through the call.
    Append(Arc<Call>, Arc<Vec<Captured>>),
    /// Something was spooled: drain. With the batch whose append just failed, spooled as it
    /// is, to append it again before anything else and alone.
    Drain(Option<Spooled>),
}

/// A stretch of time in which the spool held batches, for the log lines at its ends.
struct Episode {
    started: Instant,
    /// Batches spooled (or found at start).
    batches: u64,
    /// Events the drain handed to the store.
    events: u64,
}

impl Episode {
    fn new() -> Episode {
        Episode {
            started: Instant::now(),
            batches: 0,
            events: 0,
        }
    }
}

/// The writer's end of the lane.
pub(super) struct Lane {
    tx: std_mpsc::Sender<ToLane>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Held while pushing and while deciding that the spool has drained, so that the two log
    /// lines pair up.
    episode: Arc<Mutex<Option<Episode>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Lane {
    /// Starts the lane thread; what `spool` holds goes to the store first.
    pub(super) fn spawn(
        store: Arc<dyn EventStore>,
        spool: Arc<Spool>,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
        observers: &Arc<[Arc<dyn RecordObserver>]>,
        shutdown_grace: Duration,
    ) -> Result<Lane> {
        let (tx, rx) = std_mpsc::channel();
        let episode = Arc::new(Mutex::new(None));
        gauges(&spool, metrics, health);
        let drainer = Drainer {
            store,
            spool: spool.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            observers: observers.clone(),
            episode: episode.clone(),
            current: None,
            draining: false,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            shutdown_grace,
        };
        let thread = std::thread::Builder::new()
            .name("histor-store-lane".into())
            .spawn(move || drainer.run(rx))?;
        Ok(Lane {
            tx,
            spool,
            metrics: metrics.clone(),
            health: health.clone(),
            episode,
            thread,
        })
    }

    /// Closes the lane and waits for it: it finishes the store call it is in, if any, and goes
    /// on draining while the store takes batches, for at most its shutdown grace; what is still
    /// spooled then stays for the next start.
    pub(super) fn stop(self) {
        drop(self.tx);
        if self.thread.join().is_err() {
            tracing::error!("store lane thread panicked");
        }
    }

    /// Makes `batch` durable, in the store or else in the spool, trying again until one takes
    /// it; `None` when the queue closed (shutdown) and neither could `shutdown_grace` later.
    pub(super) fn write(
        &self,
        batch: &Arc<Vec<Captured>>,
        metrics: &Metrics,
        health: &Health,
        rx: &mpsc::Receiver<Job>,
        timing: Timing,
    ) -> Option<Durable> {
        let mut backoff = FIRST_BACKOFF;
        let mut closed_at = None;
        loop {
            if let Some(durable) = self.attempt(batch, metrics, health, timing.append_budget) {
                if health.recovered() {
                    tracing::info!("events are made durable again");
                }
                return Some(durable);
            }
            if gave_up(rx, &mut closed_at, timing.shutdown_grace) {
                return None;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try: the store, if nothing is spooled and it answers within `budget`; else the spool.
    fn attempt(
        &self,
        batch: &Arc<Vec<Captured>>,
        metrics: &Metrics,
        health: &Health,
        budget: Duration,
    ) -> Option<Durable> {
        if !self.spool.is_empty() {
            // Behind what is spooled: the store must see batches in queue order.
            self.push(batch, health, "behind_spooled", None)?;
            self.wake(None);
            return Some(Durable::Spooled);
        }
        let call = Arc::new(Call::new());
        if self
            .tx
            .send(ToLane::Append(call.clone(), batch.clone()))
            .is_err()
        {
            if health.failed(Problem::Error) {
                tracing::error!("store lane stopped: events wait in memory");
            }
            return None;
        }
        match call.wait(Some(budget)) {
            Some(Ok(outcomes)) => Some(Durable::Stored(outcomes)),
            Some(Err(error)) => {
                store_failed(metrics, &error);
                let seq = self.push(batch, health, "store_error", Some(&error))?;
                self.wake(Some(Spooled {
                    first: seq,
                    last: seq,
                    batch: batch.to_vec(),
                }));
                Some(Durable::Spooled)
            }
            None => {
                count(metrics, "slow");
                let Some(seq) = self.push(batch, health, "slow", None) else {
                    // The spool cannot take it: wait for the store after all, as without one.
                    return match call.wait(None)? {
                        Ok(outcomes) => Some(Durable::Stored(outcomes)),
                        Err(error) => {
                            store_failed(metrics, &error);
                            None
                        }
                    };
                };
                match call.abandon(seq) {
                    // The lane takes the answer when it comes.
                    None => Some(Durable::Spooled),
                    // It came while the batch was being spooled: the spool need not keep it.
                    Some(Ok(outcomes)) => {
                        self.unspool(seq);
                        Some(Durable::Stored(outcomes))
                    }
                    Some(Err(error)) => {
                        store_failed(metrics, &error);
                        self.wake(Some(Spooled {
                            first: seq,
                            last: seq,
                            batch: batch.to_vec(),
                        }));
                        Some(Durable::Spooled)
                    }
                }
            }
        }
    }

    /// Spools `batch`; its sequence number, or `None` (and the problem recorded) when the spool
    /// cannot take it. `reason` and `error` say why the store did not take it, for the log line
    /// that opens a spooling episode.
    fn push(
        &self,
        batch: &[Captured],
        health: &Health,
        reason: &'static str,
        error: Option<&Error>,
    ) -> Option<u64> {
        let mut episode = self.episode.lock();
        match self.spool.push(batch) {
            Ok(seq) => {
                self.metrics.spooled_batches.inc();
                gauges(&self.spool, &self.metrics, &self.health);
                let e = episode.get_or_insert_with(|| {
                    tracing::warn!(
                        reason,
                        error = error.map(tracing::field::display),
                        spool = %self.spool.path().display(),
                        "store cannot take writes: batches are kept in the local spool and go to the store when it can; reviews are answered once spooled"
                    );
                    Episode::new()
                });
                e.batches += 1;
                Some(seq)
            }
            Err(error) => {
                drop(episode);
                let problem = Problem::of(&error);
                count(&self.metrics, problem.label());
                if health.failed(problem) {
                    tracing::error!(
                        %error,
                        reason = problem.label(),
                        events = batch.len(),
                        "spool cannot take a batch while the store cannot either: reviews are answered at once; their events wait in memory, up to the queue capacity"
                    );
                }
                None
            }
        }
    }

    /// Removes batch `seq`, which the store took after all, and closes the episode when that
    /// empties the spool.
    fn unspool(&self, seq: u64) {
        if let Err(error) = self.spool.remove_through(seq) {
            tracing::warn!(%error, "removing a stored batch from the spool failed; the store will see it again and find it a duplicate");
        }
        gauges(&self.spool, &self.metrics, &self.health);
        settle(&self.spool, &self.episode);
    }

    fn wake(&self, retry: Option<Spooled>) {
        // A lane that stopped has already been reported by `attempt`; the batch is spooled.
        let _ = self.tx.send(ToLane::Drain(retry));
    }
}

/// Counts a store failure the spool covers (no [`Health`] problem: events stay durable).
fn store_failed(metrics: &Metrics, error: &Error) {
    count(metrics, Problem::of(error).label());
    tracing::debug!(%error, "store append failed; the batch goes to the spool");
}

fn gauges(spool: &Spool, metrics: &Metrics, health: &Health) {
    let batches = spool.len();
    health.spooled.store(batches, Ordering::Release);
    metrics.spool_batches.set(batches);
    metrics.spool_bytes.set(spool.bytes());
}

/// Closes the episode when the spool is empty (logging it); true when the spool is empty.
fn settle(spool: &Spool, episode: &Mutex<Option<Episode>>) -> bool {
    let mut episode = episode.lock();
    if !spool.is_empty() {
        return false;
    }
    if let Some(e) = episode.take() {
        tracing::info!(
            batches = e.batches,
            events = e.events,
            took_ms = e.started.elapsed().as_millis() as u64,
            "spool drained: the store holds every spooled event"
        );
    }
    true
}

/// The lane thread.
struct Drainer {
    store: Arc<dyn EventStore>,
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    observers: Arc<[Arc<dyn RecordObserver>]>,
    episode: Arc<Mutex<Option<Episode>>>,
    /// The batch the last failed append was given: the next append, alone.
    current: Option<Spooled>,
    /// The spool may hold batches.
    draining: bool,
    backoff: Duration,
    /// No store call before this, after a failure.
    retry_at: Option<Instant>,
    /// How long to keep draining once the writer has stopped.
    shutdown_grace: Duration,
}

impl Drainer {
    fn run(mut self, rx: std_mpsc::Receiver<ToLane>) {
        if !self.spool.is_empty() {
            let mut e = Episode::new();
            e.batches = self.spool.len();
            tracing::info!(
                batches = e.batches,
                bytes = self.spool.bytes(),
                "the spool holds batches from an earlier run: they go to the store first"
            );
            *self.episode.lock() = Some(e);
            self.draining = true;
        }
        // Set once the writer has gone (shutdown): drain what the store still takes, for a
        // while, since a spool on a pod's scratch volume goes with the pod.
        let mut closing: Option<Instant> = None;
        loop {
            let message = if let Some(since) = closing {
                if !self.draining || since.elapsed() >= self.shutdown_grace {
                    break;
                }
                if let Some(at) = self.retry_at {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                None
            } else if self.draining {
                let wait = self
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                        closing = Some(Instant::now());
                        None
                    }
                }
            } else {
                match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => {
                        closing = Some(Instant::now());
                        None
                    }
                }
            };
            match message {
                Some(ToLane::Append(call, batch)) => self.append_now(&call, batch),
                Some(ToLane::Drain(retry)) => {
                    self.draining = true;
                    if retry.is_some() {
                        self.current = retry;
                    }
                }
                None => {}
            }
            if self.draining && self.retry_at.is_none_or(|at| at <= Instant::now()) {
                self.drain_one();
            }
        }
        let left = self.spool.len();
        if left > 0 {
            tracing::warn!(
                batches = left,
                spool = %self.spool.path().display(),
                "stopping with batches in the spool: they go to the store at the next start from this spool"
            );
        } else {
            tracing::debug!("store lane stopped");
        }
    }

    /// A batch the writer waits for (the spool was empty when it sent it).
    fn append_now(&mut self, call: &Call, batch: Arc<Vec<Captured>>) {
        // Nothing is spooled (only the writer spools, and it is waiting): no drain to do until
        // it says so.
        if settle(&self.spool, &self.episode) {
            self.draining = false;
        }
        let answer = self
            .health
            .timed(|| append(self.store.as_ref(), &self.metrics, &batch));
        let recovery = answer.as_ref().err().is_some_and(needs_recovery);
        let Some((seq, batch, answer)) = call.finish(batch, answer) else {
            if recovery {
                reopen(self.store.as_ref(), &self.health);
            }
            return;
        };
        // The writer stopped waiting and spooled the batch: this is the drain's answer.
        self.draining = true;
        let spooled = Spooled {
            first: seq,
            last: seq,
            batch: Arc::unwrap_or_clone(batch),
        };
        match answer {
            Ok(outcomes) => self.took(spooled, outcomes),
            Err(error) => {
                self.failed(&error);
                self.current = Some(spooled);
            }
        }
    }

    /// Appends the oldest spooled batches (or the one that failed last) to the store.
    fn drain_one(&mut self) {
        let spooled = match self.current.take() {
            Some(spooled) => spooled,
            None => match self.spool.peek(MAX_BATCH) {
                Ok(Some(spooled)) => spooled,
                Ok(None) => {
                    if settle(&self.spool, &self.episode) {
                        self.draining = false;
                    }
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, "reading the spool failed; trying again");
                    self.later();
                    return;
                }
            },
        };
        let answer = self
            .health
            .timed(|| append(self.store.as_ref(), &self.metrics, &spooled.batch));
        match answer {
            Ok(outcomes) => self.took(spooled, outcomes),
            Err(error) => {
                self.failed(&error);
                self.current = Some(spooled);
            }
        }
    }

    /// The store took `spooled`: observers hear of it, then it leaves the spool (a crash in
    /// between appends it again, and the store finds it a duplicate).
    fn took(&mut self, spooled: Spooled, outcomes: Vec<AppendOutcome>) {
        let last = spooled.last;
        if let Some(e) = self.episode.lock().as_mut() {
            e.events += spooled.batch.len() as u64;
        }
        observe(spooled.batch, outcomes, &self.metrics, &self.observers);
        self.backoff = FIRST_BACKOFF;
        self.retry_at = None;
        if let Err(error) = self.spool.remove_through(last) {
            tracing::error!(%error, "removing stored batches from the spool failed; the store will see them again and find them duplicates");
            self.later();
        }
        gauges(&self.spool, &self.metrics, &self.health);
    }

    fn failed(&mut self, error: &Error) {
        count(&self.metrics, Problem::of(error).label());
        tracing::debug!(%error, spooled = self.spool.len(), "store still cannot take writes");
        self.later();
        recover(self.store.as_ref(), &self.health, error);
    }

    fn later(&mut self) {
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
