//! Notifications: tells people about recorded changes through Slack, email and generic webhooks,
//! once, without flooding them.
//!
//! The [`Notifier`] hub takes events right after the store made them durable
//! ([`Notifier::on_recorded`]), filters them per sink, holds them in a digest window or renders them
//! at once, and writes the result to a durable outbox (the store's [`OutboxStore`], beside the
//! events) before anything is sent. [`Notifier::run`] delivers from the outbox with retries,
//! jittered backoff and a per-sink rate limit; [`Notifier::health`] says how each sink is doing.
//!
//! Modules, one job each: `config` (knobs, sink specs, durations), `secrets` (where credentials
//! come from), `filter`, `digest`, `message`, `retry` and `limits` (pure), `outbox` (encoding onto
//! the store's outbox), `slack`/`email`/`webhook` (transports behind [`Sink`]), `metrics`.
//! Depends on `crd`, `pipeline`, `store` (types and the outbox contract) and `render` (the shared
//! wording of states and inferred actors); knows nothing of the controller that wires it.
//!
//! Queued work is bounded (see `limits`): a notification older than `maxPendingAge` (24 h) or
//! beyond `maxPendingPerSink` (10,000, oldest first) for its sink is dropped, a digest window is
//! sent early once it holds `maxDigestEvents` (10,000), and digest events of a sink no longer
//! configured expire after `maxPendingAge`. Drops are counted in `histor_notify_dropped_total`
//! and logged as counts at most once a minute.

pub mod config;
pub mod digest;
pub mod email;
pub mod filter;
mod follow;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod outbox;
pub mod ratelimit;
pub mod retry;
pub mod secrets;
pub mod sink;
pub mod slack;
pub mod webhook;

#[cfg(test)]
pub(crate) mod testutil;

pub use config::{NotifyConfig, SinkId, SinkKind, SinkSpec, SinkTarget, parse_duration};
pub use message::Payload;
pub use metrics::NotifyMetrics;
pub use retry::DeliveryResult;
pub use secrets::{FileSecrets, KubeSecrets, SecretSource, SecretValues, StaticSecrets};
pub use sink::{Delivery, Sink};

use crate::crd::NotifySink;
use crate::pipeline::ChangeState;
use crate::store::{EventId, EventStore, OutboxStore, StoredEvent};
use crate::{Error, Result};
use filter::CompiledFilter;
use jiff::Timestamp;
use limits::DropReason;
use message::MessageContext;
use outbox::{BufferedEvent, EntryState, Intake, Outbox, OutboxEntry};
use ratelimit::TokenBucket;
use retry::{RetryPolicy, random_u64};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

/// How one sink is doing, for the policy's `SinksReady` condition and Kubernetes Events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkHealth {
    /// TrackingPolicy name.
    pub policy: String,
    /// Sink name.
    pub sink: String,
    /// Transport; `None` when the sink's spec is invalid.
    pub kind: Option<SinkKind>,
    /// False when the sink is misconfigured, its Secret is unreadable, or its last notification
    /// failed permanently (until a later one gets through).
    pub ready: bool,
    /// CamelCase reason: `Configured`, `Delivered`, `Retrying`, `DeliveryFailed`,
    /// `SecretUnavailable` or `InvalidSink`.
    pub reason: String,
    /// Human-readable detail (never a secret value).
    pub message: String,
    /// Notifications waiting in the outbox for this sink.
    pub pending: usize,
}

#[derive(Clone, Debug)]
struct Status {
    ready: bool,
    reason: &'static str,
    message: String,
}

struct SinkState {
    spec: SinkSpec,
    filter: Option<CompiledFilter>,
    bucket: Option<TokenBucket>,
    status: Status,
}

struct Inner {
    outbox: Outbox,
    secrets: Arc<dyn SecretSource>,
    config: NotifyConfig,
    metrics: NotifyMetrics,
    http: reqwest::Client,
    sinks: Mutex<BTreeMap<SinkId, SinkState>>,
    invalid: Mutex<BTreeMap<SinkId, String>>,
    busy: Mutex<HashSet<SinkId>>,
    drops: Mutex<DropLog>,
    /// Policies whose sinks changed since the delivery loop last dropped what was queued for
    /// sinks that are gone (`set_policy` is called from sync code; the outbox is async).
    changed: Mutex<BTreeSet<String>>,
    /// Notifications waiting per sink, as of the delivery loop's last look at the outbox.
    pending: Mutex<BTreeMap<SinkId, usize>>,
    /// The shared event store the delivering replica takes events from ([`Notifier::follow`]).
    follow: Mutex<Option<Arc<dyn EventStore>>>,
    wake: Notify,
}

/// The way events reach [`Notifier::take`]; with their state it says which sinks still need them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Door {
    /// From the writer, right after the append ([`Notifier::on_recorded`]).
    Recorded,
    /// From a witness, with the state it just decided ([`Notifier::on_resolved`]).
    Resolved,
    /// Read back from the store past the cursor (`follow`: after a crash, or on the replica
    /// that delivers for a shared store), in the state the store holds now: a witness may have
    /// resolved them meanwhile.
    Stored,
}

/// Drops not yet logged: one line a minute at most says how many, however many sweeps dropped.
#[derive(Default)]
struct DropLog {
    expired: u64,
    overflow: u64,
    logged_at: Option<tokio::time::Instant>,
}

/// Shortest time between two log lines about dropped notifications.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// Locks a mutex even if a panicking thread poisoned it: the maps stay consistent between
/// statements, so the data is still good.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The notification hub. Cheap to clone; all clones share one outbox and one set of sinks.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// A notifier on `outbox` (the store's, such as `SledStore::outbox`). Pending notifications
    /// of an earlier run are delivered once [`Notifier::run`] runs and their sinks are set with
    /// [`Notifier::set_policy`]. Needs a rustls crypto provider installed (as `main` does).
    pub fn new(
        outbox: Arc<dyn OutboxStore>,
        secrets: Arc<dyn SecretSource>,
        config: NotifyConfig,
        metrics: NotifyMetrics,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!("histor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        let outbox = Outbox::new(outbox);
        let inner = Inner {
            outbox,
            secrets,
            config,
            metrics,
            http,
            sinks: Mutex::new(BTreeMap::new()),
            invalid: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(HashSet::new()),
            drops: Mutex::new(DropLog::default()),
            changed: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(BTreeMap::new()),
            follow: Mutex::new(None),
            wake: Notify::new(),
        };
        Ok(Notifier {
            inner: Arc::new(inner),
        })
    }

    /// Sets (or replaces) the sinks of policy `policy`. Valid sinks take effect even when others
    /// are invalid; the invalid ones are reported by [`Notifier::health`] and in the returned
    /// error. Work queued for sinks that are gone is dropped by the delivery loop's next pass
    /// (never sent meanwhile: nothing is sent to a sink that is not set).
    pub fn set_policy(&self, policy: &str, sinks: &[NotifySink]) -> Result<()> {
        let mut specs = Vec::new();
        let mut errors = BTreeMap::new();
        for s in sinks {
            match SinkSpec::from_crd(policy, s) {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    errors.insert(SinkId::new(policy, &s.name), e.to_string());
                }
            }
        }
        let keep: HashSet<SinkId> = specs.iter().map(|s| s.id.clone()).collect();
        {
            let mut map = lock(&self.inner.sinks);
            map.retain(|id, _| id.policy != policy || keep.contains(id));
            for spec in specs {
                let filter = spec.when.as_ref().and_then(|w| CompiledFilter::new(w).ok());
                match map.get_mut(&spec.id) {
                    Some(st) if st.spec == spec => {}
                    Some(st) => {
                        if st.spec.rate_limit_per_minute != spec.rate_limit_per_minute {
                            st.bucket = spec.rate_limit_per_minute.map(TokenBucket::per_minute);
                        }
                        st.filter = filter;
                        st.spec = spec;
                    }
                    None => {
                        let bucket = spec.rate_limit_per_minute.map(TokenBucket::per_minute);
                        map.insert(
                            spec.id.clone(),
                            SinkState {
                                spec,
                                filter,
                                bucket,
                                status: Status {
                                    ready: true,
                                    reason: "Configured",
                                    message: "no notification sent yet".into(),
                                },
                            },
                        );
                    }
                }
            }
        }
        {
            let mut invalid = lock(&self.inner.invalid);
            invalid.retain(|id, _| id.policy != policy);
            invalid.extend(errors.clone());
        }
        lock(&self.inner.changed).insert(policy.to_owned());
        self.inner.wake.notify_one();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Policy {
                policy: policy.into(),
                message: errors.into_values().collect::<Vec<_>>().join("; "),
            })
        }
    }

    /// Forgets a deleted policy: its sinks, and (at the delivery loop's next pass) everything
    /// still queued for them.
    pub fn remove_policy(&self, policy: &str) {
        lock(&self.inner.sinks).retain(|id, _| id.policy != policy);
        lock(&self.inner.invalid).retain(|id, _| id.policy != policy);
        lock(&self.inner.changed).insert(policy.to_owned());
        self.inner.wake.notify_one();
    }

    /// Hands freshly stored events to the notifier. Call it right after the store's durable
    /// append, from one writer, in id order; each event's `policies` must list only the policies
    /// it is new to (for an `AppendOutcome::Linked` event: the newly linked policy). Returns
    /// once the notifications are durable (the outbox's commit); the capture writer awaits it
    /// from its own thread, right after the append's flush.
    ///
    /// A `received` change (a witness will tell whether it was committed) goes only to sinks
    /// that notify on receipt; the others hear of it from [`on_resolved`](Notifier::on_resolved).
    /// A `notApplied` change is never sent.
    /// Events read back from the store (`follow`, `recover_from`) go through the same rules,
    /// except that a `confirmed` one goes only to the sinks that notify on receipt: the witness
    /// told the others.
    pub async fn on_recorded(&self, events: &[StoredEvent]) -> Result<()> {
        self.take(events, Door::Recorded).await
    }

    /// Hands over changes a witness has just resolved (`confirmed`, or `unconfirmed` when it
    /// could not tell), with their new state: they go to the sinks that notify on
    /// confirmation, which [`on_recorded`](Notifier::on_recorded) left out. Call it before
    /// the verdict is written, so a crash in between sends twice rather than never.
    pub async fn on_resolved(&self, events: &[StoredEvent]) -> Result<()> {
        self.take(events, Door::Resolved).await
    }

    async fn take(&self, events: &[StoredEvent], door: Door) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut intake = Intake {
            // Resolved events are older than the cursor already is.
            cursor: if door == Door::Resolved {
                None
            } else {
                events.iter().map(|e| e.id).max()
            },
            ..Default::default()
        };
        // Rendered after the sinks' lock is released: keys come from the outbox, which awaits.
        let mut immediate: Vec<(SinkSpec, StoredEvent)> = Vec::new();
        {
            let sinks = lock(&self.inner.sinks);
            for se in events {
                for (id, st) in sinks.iter() {
                    if !se.event.policies.contains(&id.policy) {
                        continue;
                    }
                    let on_receipt = st.spec.on_receipt;
                    let wanted = match (se.event.state, door) {
                        (ChangeState::NotApplied, _) => false,
                        (ChangeState::Received, Door::Resolved) => false,
                        (ChangeState::Received, _) => on_receipt,
                        (_, Door::Resolved) => !on_receipt,
                        // Only a witness confirms, and it told these sinks before it wrote
                        // the verdict this state comes from.
                        (ChangeState::Confirmed, Door::Stored) => on_receipt,
                        _ => true,
                    };
                    if !wanted {
                        continue;
                    }
                    if let Some(f) = &st.filter
                        && !f.matches(&se.event)
                    {
                        continue;
                    }
                    let mut event = se.event.clone();
                    // The outbox needs the diff, not the whole object.
                    event.object = None;
                    if st.spec.digest.is_some() {
                        intake.buffered.push(BufferedEvent {
                            sink: id.clone(),
                            id: se.id,
                            added_at: now,
                            event,
                        });
                    } else {
                        immediate.push((st.spec.clone(), StoredEvent { id: se.id, event }));
                    }
                }
            }
        }
        let keys = self.inner.outbox.next_keys(immediate.len()).await?;
        for (key, (spec, event)) in keys.into_iter().zip(immediate) {
            let entry = self
                .inner
                .new_entry(key, &spec, std::slice::from_ref(&event), now);
            intake.entries.push(entry);
        }
        self.inner.outbox.commit(&intake).await?;
        debug!(
            events = events.len(),
            queued = intake.entries.len(),
            buffered = intake.buffered.len(),
            "events handed to the notifier"
        );
        // The delivery loop refreshes the gauges on its pass.
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Delivers from the outbox until `shutdown` completes: closes due digest windows, sends due
    /// notifications (one at a time per sink, in order, within its rate limit), retries failures.
    /// Attempts still running at shutdown get `request_timeout` to finish; any cut off stay
    /// in-flight in the outbox and are sent again (same delivery id) after a restart.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        lock(&self.inner.busy).clear();
        let mut tasks: JoinSet<()> = JoinSet::new();
        let pending = self.pending().await;
        info!(pending, "notifier started");
        let mut leading = None;
        loop {
            let lead = match self.inner.outbox.try_lead().await {
                Ok(lead) => lead,
                Err(error) => {
                    warn!(%error, "cannot tell whether this replica delivers; not delivering");
                    false
                }
            };
            if leading != Some(lead) && self.inner.outbox.is_shared() {
                info!(
                    delivering = lead,
                    "notification delivery {}",
                    if lead {
                        "is this replica's: it takes every replica's events from the shared store"
                    } else {
                        "is another replica's"
                    }
                );
            }
            leading = Some(lead);
            if !lead {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
                }
                continue;
            }
            let follow = lock(&self.inner.follow).clone();
            if let Some(store) = follow
                && let Err(error) = self.follow_store(store).await
            {
                warn!(%error, "taking new events from the shared store failed");
            }
            if let Err(error) = self.inner.drop_removed().await {
                warn!(%error, "dropping notifications of removed sinks failed");
            }
            if let Err(error) = self.inner.close_due_windows(Timestamp::now()).await {
                warn!(%error, "closing digest windows failed");
            }
            if let Err(error) = self.inner.dispatch(&mut tasks).await {
                warn!(%error, "reading the outbox failed");
            }
            self.inner.update_gauges().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.inner.wake.notified() => {}
                Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = res {
                        error!(%error, "delivery task failed");
                    }
                }
                _ = tokio::time::sleep(self.inner.config.poll_interval) => {}
            }
        }
        let grace = self.inner.config.request_timeout;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!("deliveries still running at shutdown; they will be retried after restart");
            tasks.abort_all();
        }
        let pending = self.pending().await;
        info!(pending, "notifier stopped");
    }

    /// How each sink is doing, sorted by policy and sink; `pending` as of the delivery loop's
    /// last pass.
    pub fn health(&self) -> Vec<SinkHealth> {
        let pending = lock(&self.inner.pending).clone();
        let mut out: Vec<SinkHealth> = lock(&self.inner.sinks)
            .iter()
            .map(|(id, st)| SinkHealth {
                policy: id.policy.clone(),
                sink: id.sink.clone(),
                kind: Some(st.spec.target.kind()),
                ready: st.status.ready,
                reason: st.status.reason.into(),
                message: st.status.message.clone(),
                pending: pending.get(id).copied().unwrap_or(0),
            })
            .collect();
        out.extend(
            lock(&self.inner.invalid)
                .iter()
                .map(|(id, msg)| SinkHealth {
                    policy: id.policy.clone(),
                    sink: id.sink.clone(),
                    kind: None,
                    ready: false,
                    reason: "InvalidSink".into(),
                    message: msg.clone(),
                    pending: 0,
                }),
        );
        out.sort_by(|a, b| (&a.policy, &a.sink).cmp(&(&b.policy, &b.sink)));
        out
    }

    /// Notifications waiting in the outbox (0 while it cannot be read).
    pub async fn pending(&self) -> usize {
        self.inner.outbox.counts().await.map_or(0, |c| c.pending)
    }

    /// Events waiting in digest windows (0 while the outbox cannot be read).
    pub async fn buffered(&self) -> usize {
        self.inner.outbox.counts().await.map_or(0, |c| c.buffered)
    }
}

impl Inner {
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.config.initial_backoff,
            max_delay: self.config.max_backoff,
            max_duration: self.config.max_retry_duration,
        }
    }

    /// Sets the gauges from the outbox; keeps them as they were while it cannot be read.
    async fn update_gauges(&self) {
        if let Ok(counts) = self.outbox.counts().await {
            self.metrics.queue_depth.set(counts.pending as i64);
            self.metrics.digest_buffered.set(counts.buffered as i64);
        }
    }

    /// Drops what is queued for sinks that [`Notifier::set_policy`] or
    /// [`Notifier::remove_policy`] took away since the last pass.
    async fn drop_removed(&self) -> Result<()> {
        let changed = std::mem::take(&mut *lock(&self.changed));
        if changed.is_empty() {
            return Ok(());
        }
        // The sinks as they are now, not as they were when the pass began: a sink set again
        // meanwhile keeps what was queued for it.
        let keep =
            |id: &SinkId| !changed.contains(&id.policy) || lock(&self.sinks).contains_key(id);
        match self.outbox.retain(keep).await {
            Ok(dropped) => {
                if dropped > 0 {
                    info!(policies = ?changed, dropped, "dropped notifications of removed sinks");
                }
                Ok(())
            }
            Err(e) => {
                // Next pass, then.
                lock(&self.changed).extend(changed);
                Err(e)
            }
        }
    }

    /// Renders `events` for `spec` into the outbox entry `key`.
    fn new_entry(
        &self,
        key: u64,
        spec: &SinkSpec,
        events: &[StoredEvent],
        now: Timestamp,
    ) -> (u64, OutboxEntry) {
        // The key is unique in this database, the random half across databases (replicas,
        // reinstalls), so receivers can dedupe on it safely.
        let delivery_id = format!("{key:016x}{:016x}", random_u64());
        let ctx = MessageContext {
            policy: spec.id.policy.clone(),
            sink: spec.id.sink.clone(),
            delivery_id: delivery_id.clone(),
            max_fields: self.config.max_fields,
            max_listed: self.config.max_listed,
        };
        let kind = spec.target.kind();
        (
            key,
            OutboxEntry {
                delivery_id,
                sink: spec.id.clone(),
                kind,
                event_ids: events.iter().map(|e| e.id).collect(),
                payload: message::render(kind, events, &ctx),
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
                state: EntryState::Pending,
                last_error: None,
            },
        )
    }

    /// Turns every digest window that is over (or full) into one notification.
    async fn close_due_windows(&self, now: Timestamp) -> Result<()> {
        for (sink, opened, held) in self.outbox.open_windows().await? {
            let spec = lock(&self.sinks).get(&sink).map(|st| st.spec.clone());
            let spec = match spec {
                Some(spec) => spec,
                // Its policy is not (yet) set: keep the events until it is, or until they expire.
                None => {
                    self.expire_buffered(&sink, opened, now).await?;
                    continue;
                }
            };
            // A sink whose digest was switched off sends what it holds at once; a full window
            // goes before its time, so a window's buffer is bounded too.
            if let Some(window) = spec.digest
                && !digest::window_due(opened, window, now)
                && held < self.config.max_digest_events
            {
                continue;
            }
            let buffered = self.outbox.buffered(&sink).await?;
            if buffered.is_empty() {
                continue;
            }
            let ids: Vec<EventId> = buffered.iter().map(|b| b.id).collect();
            let events: Vec<StoredEvent> = buffered
                .into_iter()
                .map(|b| StoredEvent {
                    id: b.id,
                    event: b.event,
                })
                .collect();
            let key = self.outbox.next_keys(1).await?[0];
            let (key, entry) = self.new_entry(key, &spec, &events, now);
            self.outbox.close_window(&sink, &ids, key, &entry).await?;
            debug!(sink = %sink, events = ids.len(), delivery = %entry.delivery_id, "digest window closed");
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Drops the digest events of unconfigured `sink` that are older than `maxPendingAge`.
    async fn expire_buffered(
        &self,
        sink: &SinkId,
        opened: Timestamp,
        now: Timestamp,
    ) -> Result<()> {
        let max_age = self.config.max_pending_age;
        if !limits::too_old(opened, now, max_age) {
            // Its oldest event is young enough: so are the others.
            return Ok(());
        }
        let buffered = self.outbox.buffered(sink).await?;
        let gone: Vec<(SinkId, EventId)> =
            limits::buffered_to_drop(&buffered, |_| false, now, max_age)
                .into_iter()
                .map(|b| (b.sink.clone(), b.id))
                .collect();
        self.outbox.remove_buffered(&gone).await?;
        self.metrics
            .dropped("unknown", DropReason::Expired.as_str(), gone.len() as u64);
        self.note_drops(gone.len() as u64, 0);
        Ok(())
    }

    /// Removes what the bounds of `limits` reject from `entries` (the whole outbox, oldest
    /// first), counting it; returns what is left.
    async fn sweep(
        &self,
        entries: Vec<(u64, OutboxEntry)>,
        now: Timestamp,
    ) -> Result<Vec<(u64, OutboxEntry)>> {
        let drop = {
            let busy = lock(&self.busy);
            limits::entries_to_drop(
                &entries,
                &busy,
                now,
                self.config.max_pending_age,
                self.config.max_pending_per_sink,
            )
        };
        if drop.is_empty() {
            return Ok(entries);
        }
        let keys: Vec<u64> = drop.iter().map(|(k, _)| *k).collect();
        self.outbox.remove_many(&keys).await?;
        let reasons: BTreeMap<u64, DropReason> = drop.into_iter().collect();
        let (mut expired, mut overflow) = (0, 0);
        let mut kept = Vec::with_capacity(entries.len() - reasons.len());
        for (key, entry) in entries {
            match reasons.get(&key) {
                Some(reason) => {
                    match reason {
                        DropReason::Expired => expired += 1,
                        DropReason::Overflow => overflow += 1,
                    }
                    self.metrics
                        .dropped(entry.kind.as_str(), reason.as_str(), 1);
                }
                None => kept.push((key, entry)),
            }
        }
        self.note_drops(expired, overflow);
        Ok(kept)
    }

    /// Adds to the drops not yet logged.
    fn note_drops(&self, expired: u64, overflow: u64) {
        let mut log = lock(&self.drops);
        log.expired += expired;
        log.overflow += overflow;
    }

    /// Logs the drops noted since the last line, if there are any and a minute has passed.
    fn log_drops(&self) {
        let now = tokio::time::Instant::now();
        let mut log = lock(&self.drops);
        if log.expired + log.overflow == 0
            || log
                .logged_at
                .is_some_and(|at| now.duration_since(at) < DROP_LOG_EVERY)
        {
            return;
        }
        warn!(
            expired = log.expired,
            overflow = log.overflow,
            max_age = %config::format_duration(self.config.max_pending_age),
            max_per_sink = self.config.max_pending_per_sink,
            "dropped queued notifications: too old or too many for their sink"
        );
        *log = DropLog {
            logged_at: Some(now),
            ..DropLog::default()
        };
    }

    /// Starts the due head entry of every idle sink, after dropping what is over the bounds.
    async fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<()> {
        let now = Timestamp::now();
        let now_i = tokio::time::Instant::now();
        let mut heads: HashSet<SinkId> = HashSet::new();
        let mut stale = Vec::new();
        // Sinks busy before the outbox is read: a task that ends while it is read may have
        // written its entry's outcome after the read saw the entry in flight, and would be sent
        // again as if a restart had cut it off. A sink idle by now was idle before its entries
        // were read, so what was read of it is current.
        let busy_before: HashSet<SinkId> = lock(&self.busy).clone();
        let entries = self.sweep(self.outbox.entries().await?, now).await?;
        self.log_drops();
        let mut pending: BTreeMap<SinkId, usize> = BTreeMap::new();
        for (_, e) in &entries {
            *pending.entry(e.sink.clone()).or_default() += 1;
        }
        *lock(&self.pending) = pending;
        for (key, entry) in entries {
            // Only each sink's oldest entry is a candidate: messages keep their order and a sink
            // that is down is not hammered with its whole queue.
            if !heads.insert(entry.sink.clone()) {
                continue;
            }
            if entry.next_attempt_at > now
                || busy_before.contains(&entry.sink)
                || lock(&self.busy).contains(&entry.sink)
            {
                continue;
            }
            let target = {
                let mut sinks = lock(&self.sinks);
                let Some(st) = sinks.get_mut(&entry.sink) else {
                    continue;
                };
                if st.spec.target.kind() != entry.kind {
                    stale.push((key, entry));
                    continue;
                }
                if let Some(bucket) = &mut st.bucket
                    && !bucket.try_take(now_i)
                {
                    continue;
                }
                st.spec.target.clone()
            };
            lock(&self.busy).insert(entry.sink.clone());
            let inner = Arc::clone(self);
            tasks.spawn(async move { inner.deliver(key, entry, target).await });
        }
        for (key, entry) in stale {
            warn!(sink = %entry.sink, delivery = %entry.delivery_id, "sink changed kind; dropping a notification rendered for the old one");
            self.outbox.remove(key).await?;
        }
        Ok(())
    }

    fn set_status(&self, sink: &SinkId, ready: bool, reason: &'static str, message: String) {
        if let Some(st) = lock(&self.sinks).get_mut(sink) {
            st.status = Status {
                ready,
                reason,
                message,
            };
        }
    }

    /// One attempt at one entry, and its bookkeeping.
    async fn deliver(&self, key: u64, mut entry: OutboxEntry, target: SinkTarget) {
        let kind = entry.kind.as_str();
        if entry.state == EntryState::InFlight {
            info!(sink = %entry.sink, delivery = %entry.delivery_id, "an earlier attempt's outcome is unknown (restart during delivery); sending again");
        }
        entry.state = EntryState::InFlight;
        entry.attempts += 1;
        // Mark in flight on disk before sending: after a crash we know the outcome is unknown.
        if let Err(error) = self.outbox.update(key, &entry).await {
            warn!(%error, sink = %entry.sink, "cannot mark a notification in flight; not sending it now");
            lock(&self.busy).remove(&entry.sink);
            return;
        }
        let result = match sink::connect(&target, &*self.secrets, &self.http, &self.config).await {
            Ok(sink) => {
                let delivery = Delivery {
                    id: &entry.delivery_id,
                    payload: &entry.payload,
                };
                // The transports time out on their own; this bounds anything they miss.
                let limit = self.config.request_timeout + Duration::from_secs(1);
                match tokio::time::timeout(limit, sink.deliver(delivery)).await {
                    Ok(r) => r,
                    Err(_) => DeliveryResult::retry("timed out"),
                }
            }
            Err(error) => {
                warn!(%error, sink = %entry.sink, "sink cannot be set up");
                self.set_status(&entry.sink, false, "SecretUnavailable", error.to_string());
                DeliveryResult::retry(error.to_string())
            }
        };
        self.metrics.delivery(kind, result.label());
        let now = Timestamp::now();
        let outcome = match &result {
            DeliveryResult::Delivered => {
                debug!(sink = %entry.sink, delivery = %entry.delivery_id, attempts = entry.attempts, "notification delivered");
                self.set_status(
                    &entry.sink,
                    true,
                    "Delivered",
                    format!("last notification delivered at {now}"),
                );
                self.outbox.remove(key).await
            }
            DeliveryResult::Retry { reason, .. } => {
                match self.retry_policy().next_attempt(
                    entry.created_at,
                    now,
                    entry.attempts,
                    &result,
                    random_u64(),
                ) {
                    Some(at) => {
                        warn!(error = %reason, sink = %entry.sink, delivery = %entry.delivery_id, attempts = entry.attempts, next_attempt = %at, "delivery failed; will retry");
                        self.metrics.retries.get_or_create(&[("sink", kind)]).inc();
                        if lock(&self.sinks)
                            .get(&entry.sink)
                            .is_some_and(|s| s.status.reason != "SecretUnavailable")
                        {
                            let msg = format!(
                                "attempt {} failed ({reason}); retrying at {at}",
                                entry.attempts
                            );
                            let ready = lock(&self.sinks)
                                .get(&entry.sink)
                                .is_some_and(|s| s.status.ready);
                            self.set_status(&entry.sink, ready, "Retrying", msg);
                        }
                        entry.state = EntryState::Pending;
                        entry.next_attempt_at = at;
                        entry.last_error = Some(reason.clone());
                        self.outbox.update(key, &entry).await
                    }
                    None => self.give_up(key, &entry, reason).await,
                }
            }
            DeliveryResult::Permanent { reason } => self.give_up(key, &entry, reason).await,
        };
        if let Err(error) = outcome {
            warn!(%error, sink = %entry.sink, "cannot record a delivery outcome");
        }
        lock(&self.busy).remove(&entry.sink);
        self.update_gauges().await;
        self.wake.notify_one();
    }

    async fn give_up(&self, key: u64, entry: &OutboxEntry, reason: &str) -> Result<()> {
        error!(error = %reason, sink = %entry.sink, delivery = %entry.delivery_id, attempts = entry.attempts, events = entry.event_ids.len(), "notification failed permanently");
        self.metrics
            .permanent_failures
            .get_or_create(&[("sink", entry.kind.as_str())])
            .inc();
        self.set_status(
            &entry.sink,
            false,
            "DeliveryFailed",
            format!(
                "a notification of {} event(s) failed after {} attempt(s): {reason}",
                entry.event_ids.len(),
                entry.attempts
            ),
        );
        self.outbox.remove(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SecretKeyRef, WebhookSink};
    use crate::store::MemStore;
    use testutil::{event, stored};

    fn notifier(store: &MemStore) -> Notifier {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let n = Notifier::new(
            store.outbox(),
            Arc::new(StaticSecrets::default()),
            NotifyConfig::default(),
            NotifyMetrics::default(),
        )
        .unwrap();
        n.set_policy("prod", &[hook_sink()]).unwrap();
        n
    }

    fn hook_sink() -> NotifySink {
        NotifySink {
            name: "hook".into(),
            webhook: Some(WebhookSink {
                url_secret_ref: SecretKeyRef {
                    namespace: "ns".into(),
                    name: "hook".into(),
                    key: "url".into(),
                },
                signing_secret_ref: None,
            }),
            ..Default::default()
        }
    }

    fn at(id: u64) -> StoredEvent {
        let mut e = event("alice", Operation::Update, Some("demo"), &format!("a{id}"));
        e.received_at = Timestamp::from_microsecond(id as i64).unwrap();
        stored(id, e)
    }

    use crate::crd::Operation;

    #[tokio::test]
    async fn recover_from_hands_over_what_the_cursor_missed() {
        let base = 1_800_000_000_000_000u64;
        let store = Arc::new(MemStore::new());
        let n = notifier(&store);
        // Older history, to exercise paging (more than one page of `recover_from`'s 500) and
        // the look-back before the cursor.
        let older: Vec<StoredEvent> = (0..700).map(|i| at(base - 1_000_000 + i)).collect();
        store.add(&older);
        store.add(&(0..5).map(|i| at(base + i)).collect::<Vec<_>>());
        // First start: no cursor, nothing replayed, cursor set to the newest event.
        assert_eq!(n.recover_from(store.clone()).await.unwrap(), 0);
        assert_eq!(n.pending().await, 0);
        // Two events handed over normally, then three stored but lost before on_recorded.
        store.add(&[at(base + 5), at(base + 6)]);
        n.on_recorded(&[at(base + 5), at(base + 6)]).await.unwrap();
        store.add(&(7..10).map(|i| at(base + i)).collect::<Vec<_>>());
        assert_eq!(n.pending().await, 2);
        assert_eq!(n.recover_from(store.clone()).await.unwrap(), 3);
        assert_eq!(n.pending().await, 5);
        assert_eq!(n.recover_from(store.clone()).await.unwrap(), 0);
        let ids: Vec<u64> = n
            .inner
            .outbox
            .entries()
            .await
            .unwrap()
            .into_iter()
            .flat_map(|(_, e)| e.event_ids)
            .collect();
        assert_eq!(ids, (5..10).map(|i| base + i).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn policies_and_filters_route_events() {
        let store = MemStore::new();
        let n = notifier(&store);
        let mut other = at(1);
        other.event.policies = vec!["staging".into()];
        n.on_recorded(&[other, at(2)]).await.unwrap();
        assert_eq!(n.pending().await, 1);
        // Removing the policy drops its queue, at the delivery loop's next pass.
        n.remove_policy("prod");
        assert!(n.health().is_empty());
        n.inner.drop_removed().await.unwrap();
        assert_eq!(n.pending().await, 0);
    }

    /// A sink taken out of a policy loses its queue (notifications and digest events); the
    /// policy's other sinks, and other policies, keep theirs.
    #[tokio::test]
    async fn queues_of_removed_sinks_are_dropped() {
        let store = MemStore::new();
        let n = notifier(&store);
        let hook = lock(&n.inner.sinks)[&SinkId::new("prod", "hook")]
            .spec
            .clone();
        let mut digest = NotifySink {
            name: "digest".into(),
            webhook: hook_sink().webhook,
            ..Default::default()
        };
        digest.digest = Some("1h".into());
        n.set_policy("prod", &[hook_sink(), digest.clone()])
            .unwrap();
        n.set_policy("other", &[hook_sink()]).unwrap();
        let mut e = at(1);
        e.event.policies = vec!["prod".into(), "other".into()];
        n.on_recorded(&[e]).await.unwrap();
        assert_eq!((n.pending().await, n.buffered().await), (2, 1));
        n.inner.drop_removed().await.unwrap();
        assert_eq!((n.pending().await, n.buffered().await), (2, 1));
        // prod drops its webhook sink, keeps the digest one.
        n.set_policy("prod", &[digest.clone()]).unwrap();
        n.inner.drop_removed().await.unwrap();
        assert_eq!((n.pending().await, n.buffered().await), (1, 1));
        // Then the digest one goes too; other's notification stays.
        n.set_policy("prod", &[]).unwrap();
        n.inner.drop_removed().await.unwrap();
        assert_eq!((n.pending().await, n.buffered().await), (1, 0));
        let left = n.inner.outbox.entries().await.unwrap();
        assert_eq!(left[0].1.sink, SinkId::new("other", "hook"));
        assert_eq!(left[0].1.kind, hook.target.kind());
    }

    fn dropped(m: &NotifyMetrics, kind: &'static str, reason: &'static str) -> u64 {
        m.dropped
            .get_or_create(&[("sink", kind), ("reason", reason)])
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn held_back_notifications_expire_after_the_max_age() {
        let store = MemStore::new();
        let n = notifier(&store);
        let events: Vec<StoredEvent> = (1..=4).map(at).collect();
        n.on_recorded(&events).await.unwrap();
        let now = Timestamp::now();
        let day = n.inner.config.max_pending_age;
        // Held back (a rate limit, retries): kept while young, one sweep drops them all once old.
        let kept = n
            .inner
            .sweep(n.inner.outbox.entries().await.unwrap(), now)
            .await;
        assert_eq!(kept.unwrap().len(), 4);
        let later =
            now + jiff::SignedDuration::try_from(day).unwrap() + jiff::SignedDuration::from_secs(1);
        let kept = n
            .inner
            .sweep(n.inner.outbox.entries().await.unwrap(), later)
            .await;
        assert!(kept.unwrap().is_empty());
        assert_eq!(n.pending().await, 0);
        assert_eq!(dropped(&n.inner.metrics, "webhook", "expired"), 4);
        // One log line for the sweep, then none until a minute has passed.
        n.inner.log_drops();
        assert_eq!(lock(&n.inner.drops).expired, 0);
        n.inner.note_drops(1, 0);
        n.inner.log_drops();
        assert_eq!(lock(&n.inner.drops).expired, 1);
        tokio::time::advance(DROP_LOG_EVERY).await;
        n.inner.log_drops();
        assert_eq!(lock(&n.inner.drops).expired, 0);
    }

    #[tokio::test]
    async fn digest_events_of_a_sink_no_longer_configured_expire() {
        let store = MemStore::new();
        let n = notifier(&store);
        let id = SinkId::new("prod", "hook");
        lock(&n.inner.sinks).get_mut(&id).unwrap().spec.digest = Some(Duration::from_secs(60));
        n.on_recorded(&[at(1), at(2)]).await.unwrap();
        assert_eq!(n.buffered().await, 2);
        // The policy is not set (yet) in this life: its events wait, until they are too old.
        lock(&n.inner.sinks).clear();
        let now = Timestamp::now();
        n.inner.close_due_windows(now).await.unwrap();
        assert_eq!(n.buffered().await, 2);
        n.inner
            .close_due_windows(now + jiff::SignedDuration::from_hours(25))
            .await
            .unwrap();
        assert_eq!(n.buffered().await, 0);
        assert_eq!(n.pending().await, 0);
        assert_eq!(dropped(&n.inner.metrics, "unknown", "expired"), 2);
    }

    /// Prod's four sinks: `now` and `nowDigest` notify on receipt, `later` and `laterDigest` on
    /// confirmation (the default); the digest ones hold a window of an hour.
    fn by_notify_on(n: &Notifier) {
        let sink = |name: &str, on: Option<crate::crd::NotifyOn>, digest: bool| NotifySink {
            name: name.into(),
            notify_on: on,
            digest: digest.then(|| "1h".into()),
            ..hook_sink()
        };
        let received = Some(crate::crd::NotifyOn::Received);
        n.set_policy(
            "prod",
            &[
                sink("now", received, false),
                sink("nowDigest", received, true),
                sink("later", None, false),
                sink("laterDigest", None, true),
            ],
        )
        .unwrap();
    }

    /// Every (sink, event id) the outbox holds, as notifications or in digest windows, sorted.
    async fn handed_over(n: &Notifier) -> Vec<(String, EventId)> {
        let mut out: Vec<(String, EventId)> = Vec::new();
        for (_, e) in n.inner.outbox.entries().await.unwrap() {
            out.extend(e.event_ids.iter().map(|id| (e.sink.sink.clone(), *id)));
        }
        for (sink, _, _) in n.inner.outbox.open_windows().await.unwrap() {
            for b in n.inner.outbox.buffered(&sink).await.unwrap() {
                out.push((b.sink.sink.clone(), b.id));
            }
        }
        out.sort();
        out
    }

    fn in_state(id: u64, state: ChangeState) -> StoredEvent {
        let mut e = at(id);
        e.event.state = state;
        e
    }

    fn pairs(sinks: &[&str], id: EventId) -> Vec<(String, EventId)> {
        let mut v: Vec<_> = sinks.iter().map(|s| (s.to_string(), id)).collect();
        v.sort();
        v
    }

    /// A received change reaches the sinks that notify on receipt at once, and the others once
    /// the witness confirms it: every sink exactly once, digest sinks alike.
    #[tokio::test]
    async fn a_confirmed_change_reaches_each_sink_once() {
        let store = MemStore::new();
        let n = notifier(&store);
        by_notify_on(&n);
        n.on_recorded(&[in_state(1, ChangeState::Received)])
            .await
            .unwrap();
        assert_eq!(handed_over(&n).await, pairs(&["now", "nowDigest"], 1));
        n.on_resolved(&[in_state(1, ChangeState::Confirmed)])
            .await
            .unwrap();
        assert_eq!(
            handed_over(&n).await,
            pairs(&["now", "nowDigest", "later", "laterDigest"], 1)
        );
        // The witness could not tell: the same, the message says so.
        n.on_recorded(&[in_state(2, ChangeState::Received)])
            .await
            .unwrap();
        n.on_resolved(&[in_state(2, ChangeState::Unconfirmed)])
            .await
            .unwrap();
        let two: Vec<_> = handed_over(&n)
            .await
            .into_iter()
            .filter(|p| p.1 == 2)
            .collect();
        assert_eq!(two, pairs(&["now", "nowDigest", "later", "laterDigest"], 2));
    }

    /// A refused change is never announced, from either door.
    #[tokio::test]
    async fn a_change_not_applied_reaches_no_sink() {
        let store = MemStore::new();
        let n = notifier(&store);
        by_notify_on(&n);
        let refused = [in_state(1, ChangeState::NotApplied)];
        n.on_recorded(&refused).await.unwrap();
        n.on_resolved(&refused).await.unwrap();
        assert_eq!(handed_over(&n).await, vec![]);
        assert_eq!((n.pending().await, n.buffered().await), (0, 0));
    }

    /// What the writer hands over already resolved (a commit no review announced, or a change
    /// recorded where no witness runs) goes to every sink at once.
    #[tokio::test]
    async fn observed_and_unconfirmed_changes_reach_every_sink() {
        let store = MemStore::new();
        let n = notifier(&store);
        by_notify_on(&n);
        n.on_recorded(&[
            in_state(1, ChangeState::Observed),
            in_state(2, ChangeState::Unconfirmed),
        ])
        .await
        .unwrap();
        let all = ["now", "nowDigest", "later", "laterDigest"];
        let mut want = pairs(&all, 1);
        want.extend(pairs(&all, 2));
        want.sort();
        assert_eq!(handed_over(&n).await, want);
    }

    /// The cursor says how far the store's events were handed over; a change the witness
    /// resolves may be newer than it (a shared store is followed a moment behind), and moving
    /// the cursor past it would skip the events in between.
    #[tokio::test]
    async fn on_resolved_leaves_the_cursor_alone() {
        let store = MemStore::new();
        let n = notifier(&store);
        by_notify_on(&n);
        n.on_recorded(&[in_state(1, ChangeState::Received)])
            .await
            .unwrap();
        assert_eq!(n.inner.outbox.cursor().await.unwrap(), Some(1));
        n.on_resolved(&[in_state(5, ChangeState::Confirmed)])
            .await
            .unwrap();
        assert_eq!(n.inner.outbox.cursor().await.unwrap(), Some(1));
        assert_eq!(handed_over(&n).await.len(), 4);
    }

    /// A change confirmed before the store's events were read back (the witness is quicker than
    /// the shared store's follower, or a crash came between the append and `on_recorded`):
    /// the witness told the sinks that notify on confirmation, the read-back tells the others.
    #[tokio::test]
    async fn a_change_confirmed_before_it_is_read_back_reaches_each_sink_once() {
        let store = Arc::new(MemStore::new());
        let n = notifier(&store);
        by_notify_on(&n);
        store.add(&[in_state(1, ChangeState::Received)]);
        n.on_recorded(&[in_state(1, ChangeState::Received)])
            .await
            .unwrap();
        // 2 is stored, then confirmed (told, then the verdict written) before anyone read it.
        store.add(&[in_state(2, ChangeState::Confirmed)]);
        n.on_resolved(&[in_state(2, ChangeState::Confirmed)])
            .await
            .unwrap();
        assert_eq!(n.recover_from(store.clone()).await.unwrap(), 1);
        let all = ["now", "nowDigest", "later", "laterDigest"];
        let mut want = pairs(&all, 1);
        want.retain(|p| p.0.starts_with("now"));
        want.extend(pairs(&all, 2));
        want.sort();
        assert_eq!(handed_over(&n).await, want);
        assert_eq!(n.inner.outbox.cursor().await.unwrap(), Some(2));
    }

    #[test]
    fn invalid_sinks_show_in_health() {
        let n = notifier(&MemStore::new());
        let bad = NotifySink {
            name: "nothing".into(),
            ..Default::default()
        };
        assert!(n.set_policy("other", &[bad]).is_err());
        let h = n.health();
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].policy.as_str(), h[0].reason.as_str()),
            ("other", "InvalidSink")
        );
        assert!(!h[0].ready);
        assert_eq!(
            (h[1].policy.as_str(), h[1].reason.as_str()),
            ("prod", "Configured")
        );
    }
}
