//! The witnesses of commits. A validating webhook sees a request before the apiserver stores
//! it, so admission alone cannot tell whether a change happened. While this replica leads, a
//! watch of every resource a TrackingPolicy tracks sees what was committed; the driver here
//! reconciles the two ([`reconcile`], pure) and writes the verdicts to the store: received
//! changes become `confirmed`, `notApplied` or `unconfirmed`, and commits no review announced
//! are recorded as `observed` ([`observed`]), their actor inferred from `managedFields`.
//!
//! Received changes reach the driver two ways: at once from the capture writer on this replica
//! ([`Feed`]), and by reading the store's `received` events every second (another replica's
//! reviews on a shared store, and any the feed dropped when its queue was full). Either way,
//! the store applies only the first verdict on an event.

pub mod audit;
pub mod events;
pub mod managed;
pub mod observed;
pub mod offline;
pub mod reconcile;
pub mod verdicts;
pub mod watch;

use crate::capture::{Capture, RecordObserver};
use crate::crd::Operation;
use crate::index::PolicyIndex;
use crate::pipeline::{ChangeState, Commit, Witness as WitnessKind};
use crate::store::{EventId, EventStore, Query, StoredEvent};
use jiff::{SignedDuration, Timestamp};
use kube::discovery::ApiResource;
use reconcile::{Received, Reconciler, Seen, Verdict, Windows};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Inputs of the driver queue. A list waits for room, so this bounds how many listed objects
/// are held at once (a review that finds it full is read from the store by the next poll).
const QUEUE: usize = 1_024;
/// How often the store is read for received changes.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often the policies' resource rules are compared with what is watched (cheap: no I/O).
const RULES_EVERY: Duration = Duration::from_secs(1);
/// How often the apiserver's resources are discovered again when the rules stay the same (a
/// CRD installed later, say).
const DISCOVERY_EVERY: Duration = Duration::from_secs(60);
/// Most verdicts kept for writing again while the store fails (beyond, the oldest are let go:
/// those changes stay received until a later term's sweep).
const MAX_RETRY: usize = 100_000;
/// Recently resolved events remembered, so a poll that reads one before its verdict is written
/// does not make it pending again.
const RESOLVED_MEMORY: usize = 20_000;

/// What the driver hears.
#[derive(Debug)]
pub enum Input {
    /// Changes reviews announced, durable in the store.
    Received(Vec<Received>),
    /// A watched or listed object.
    Commit {
        /// `deployments.apps`.
        resource: String,
        /// Its API.
        api: ApiResource,
        /// Gone (a DELETED event).
        deleted: bool,
        /// The object.
        object: Value,
        /// When it arrived.
        seen_at: Timestamp,
        /// `Some(relist)` when it came from a list.
        listed: Option<bool>,
    },
    /// A list ended; these uids exist.
    Listed {
        /// `deployments.apps`.
        resource: String,
        /// Every listed object's uid.
        uids: Vec<String>,
        /// The first list of this resource: unknown objects are the baseline, not changes.
        baseline: bool,
        /// When the list began: what the store learnt since may postdate its snapshot.
        started: Timestamp,
    },
    /// A watch's continuity: since when it has seen every commit, or `None`.
    Health(String, Option<Timestamp>),
    /// A watch failed (it retries): why, for the policy status.
    Failed(String, String),
}

/// What the policy status says of the watches: each watched resource, healthy or why not.
#[derive(Debug)]
struct Watches {
    /// The witness runs (this replica leads).
    running: bool,
    /// By resource: its API, and `None` while healthy or the last failure.
    by_resource: HashMap<String, (ApiResource, Option<String>)>,
    /// Bumped whenever what a policy status would say changes.
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for Watches {
    fn default() -> Self {
        Watches {
            running: false,
            by_resource: HashMap::new(),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Watches {
    /// Which resources are watched and which fail: what the conditions are made of.
    fn summary(&self) -> (bool, Vec<(String, bool)>) {
        let mut list: Vec<(String, bool)> = self
            .by_resource
            .iter()
            .map(|(r, (_, e))| (r.clone(), e.is_none()))
            .collect();
        list.sort();
        (self.running, list)
    }

    /// Runs `f`, and tells the policy controller when the summary changed.
    fn update(&mut self, f: impl FnOnce(&mut Watches)) {
        let before = self.summary();
        f(self);
        if self.summary() != before {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

/// Hands the capture writer's durable events to the driver (the fast path).
pub struct Feed(mpsc::Sender<Input>);

impl RecordObserver for Feed {
    fn on_recorded(&self, events: &[StoredEvent]) {
        let received: Vec<Received> = events.iter().filter_map(received_of).collect();
        if !received.is_empty() {
            // Full: the next poll of the store picks them up.
            let _ = self.0.try_send(Input::Received(received));
        }
    }
}

/// A stored event as a received change to reconcile, when it is one.
pub fn received_of(e: &StoredEvent) -> Option<Received> {
    let ev = &e.event;
    if ev.state != ChangeState::Received {
        return None;
    }
    let digest = match ev.resource.subresource {
        // The subresource object (a Scale) is not the committed object: any commit of the
        // parent after the review confirms it.
        Some(_) => None,
        None if ev.operation == Operation::Delete => None,
        None => ev.object.as_ref().map(reconcile::state_digest),
    };
    Some(Received {
        id: e.id,
        uid: ev.object_uid.clone()?,
        resource: ev.resource.group_resource(),
        policy: ev.policies.first()?.clone(),
        operation: ev.operation,
        digest,
        received_at: ev.received_at,
    })
}

/// The witness's settings.
#[derive(Clone, Default)]
pub struct Settings {
    /// Confirmation window and grace.
    pub windows: Windows,
    /// Told of every change found `notApplied`, once the store holds the verdict (the
    /// ChangeRecord writer, which then stops counting it).
    pub on_not_applied: Option<Arc<dyn RecordObserver>>,
    /// Told of every change confirmed (or found unconfirmed) before the verdict is written:
    /// the sinks that notify on confirmation send it then.
    pub notifier: Option<crate::notify::Notifier>,
}

/// The witness: made on every replica (its [`feed`](Witness::feed) goes to the capture
/// writer), run on the leader.
pub struct Witness {
    tx: mpsc::Sender<Input>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Input>>,
    settings: Settings,
    watches: Arc<std::sync::Mutex<Watches>>,
}

impl Witness {
    /// A witness with these settings.
    pub fn new(settings: Settings) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        Arc::new(Witness {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            settings,
            watches: Arc::default(),
        })
    }

    /// The `WatchesHealthy` condition of `policy`: `(status, reason, message)`, status `None`
    /// (Unknown) when nothing watches for it.
    pub fn policy_health(
        &self,
        policy: &crate::pipeline::CompiledPolicy,
    ) -> (Option<bool>, String, String) {
        let w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if !w.running {
            return (
                None,
                "NotWatching".into(),
                "the witness runs on the leader and has not started".into(),
            );
        }
        let mut covered: Vec<(&String, &Option<String>)> = w
            .by_resource
            .iter()
            .filter(|(_, (api, _))| policy.covers(&api.group, &api.version, &api.plural))
            .map(|(r, (_, e))| (r, e))
            .collect();
        covered.sort();
        if covered.is_empty() {
            return (
                None,
                "NothingWatched".into(),
                "no resource it tracks can be listed and watched (yet): its changes stay unconfirmed"
                    .into(),
            );
        }
        let failing: Vec<String> = covered
            .iter()
            .filter_map(|(r, e)| e.as_ref().map(|e| format!("{r}: {e}")))
            .collect();
        if failing.is_empty() {
            let names: Vec<&str> = covered.iter().map(|(r, _)| r.as_str()).collect();
            (
                Some(true),
                "Watching".into(),
                format!("watching {}", names.join(", ")),
            )
        } else {
            (
                Some(false),
                "WatchFailing".into(),
                format!(
                    "changes stay unconfirmed while a watch fails (it retries): {}",
                    failing.join("; ")
                ),
            )
        }
    }

    /// Changes whenever a policy's `WatchesHealthy` condition may have changed.
    pub fn health_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed
            .subscribe()
    }

    /// The observer to give the capture writer.
    pub fn feed(&self) -> Arc<Feed> {
        Arc::new(Feed(self.tx.clone()))
    }

    /// Watches and reconciles until cancelled (leadership lost) or the client fails for good.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        capture: Arc<Capture>,
        store: Arc<dyn EventStore>,
    ) {
        let mut rx = self.rx.lock().await;
        let _running = Running::start(self.watches.clone());
        // Left over from a previous term: verdicts would be decided on stale health.
        while rx.try_recv().is_ok() {}
        let mut driver = Driver {
            reconciler: Reconciler::new(self.settings.windows),
            verdicts: verdicts::Verdicts {
                store: store.clone(),
                notifier: self.settings.notifier.clone(),
                on_not_applied: self.settings.on_not_applied.clone(),
                metrics: capture.metrics.clone(),
            },
            store: store.clone(),
            capture: capture.clone(),
            resolved: VecDeque::new(),
            resolved_set: HashSet::new(),
            polled_until: Timestamp::now() - self.settings.windows.confirm * 2,
            watches: self.watches.clone(),
            retry: Vec::new(),
            apis: HashMap::new(),
        };
        // Aborted when this term ends (the future is dropped on losing the lead): a dropped
        // JoinHandle alone would leave the watches running into the next term.
        let mut watches = WatchTasks::default();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut poll = tokio::time::interval(POLL_EVERY);
        let mut targets = tokio::time::interval(RULES_EVERY);
        let mut rules_seen: Option<u64> = None;
        let mut discovered_at = std::time::Instant::now();
        tracing::info!("witness started: watching what policies track");
        driver.sweep_stale().await;
        loop {
            tokio::select! {
                Some(input) = rx.recv() => {
                    let verdicts = driver.input(input).await;
                    driver.apply(verdicts).await;
                }
                _ = tick.tick() => {
                    let verdicts = driver.reconciler.tick(Timestamp::now());
                    driver.apply(verdicts).await;
                    capture.metrics.witness_pending.set(driver.reconciler.pending() as i64);
                }
                _ = poll.tick() => {
                    let verdicts = driver.poll().await;
                    driver.apply(verdicts).await;
                }
                _ = targets.tick() => {
                    let rules = rules_key(&capture.policies);
                    if rules_seen == Some(rules) && discovered_at.elapsed() < DISCOVERY_EVERY {
                        continue;
                    }
                    rules_seen = Some(rules);
                    discovered_at = std::time::Instant::now();
                    match discover(&client, &capture.policies).await {
                        Ok(found) => {
                            let wanted: HashMap<String, watch::Target> = found
                                .into_iter()
                                .map(|t| (t.resource.clone(), t))
                                .collect();
                            watches.0.retain(|resource, task| {
                                let keep = wanted.contains_key(resource) && !task.is_finished();
                                if !keep {
                                    task.abort();
                                    driver.reconciler.set_health(resource, None);
                                }
                                keep
                            });
                            {
                                let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
                                w.update(|w| {
                                    w.by_resource.retain(|r, _| wanted.contains_key(r));
                                    for (r, t) in &wanted {
                                        w.by_resource
                                            .entry(r.clone())
                                            .or_insert_with(|| (t.api.clone(), None));
                                    }
                                });
                            }
                            for (resource, target) in wanted {
                                if watches.0.contains_key(&resource) {
                                    continue;
                                }
                                tracing::info!(%resource, version = %target.api.version, "watching");
                                driver.apis.insert(resource.clone(), target.api.clone());
                                let task = tokio::spawn(watch::run(client.clone(), target, store.clone(), self.tx.clone(), capture.metrics.clone()));
                                watches.0.insert(resource, task);
                            }
                            capture.metrics.witness_watches.set(watches.0.len() as i64);
                        }
                        Err(error) => tracing::warn!(%error, "discovering the resources to watch failed"),
                    }
                }
            }
        }
    }
}

/// The watch tasks of one term, by resource; aborted with it.
#[derive(Default)]
struct WatchTasks(HashMap<String, tokio::task::JoinHandle<()>>);

impl Drop for WatchTasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

/// Marks the witness running for as long as it lives (the leader's term).
struct Running(Arc<std::sync::Mutex<Watches>>);

impl Running {
    fn start(w: Arc<std::sync::Mutex<Watches>>) -> Running {
        w.lock()
            .unwrap_or_else(|e| e.into_inner())
            .update(|w| w.running = true);
        Running(w)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        w.update(|w| {
            w.running = false;
            w.by_resource.clear();
        });
    }
}

/// A digest of every policy's resource rules: discovery runs again when it changes.
fn rules_key(policies: &PolicyIndex) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for p in policies.all() {
        p.name().hash(&mut h);
        serde_json::to_string(&p.spec().resources)
            .unwrap_or_default()
            .hash(&mut h);
    }
    h.finish()
}

/// The resources the policies track, as the apiserver serves them (preferred versions, unless a
/// rule names versions), that can be listed and watched.
pub async fn discover(
    client: &kube::Client,
    policies: &PolicyIndex,
) -> crate::Result<Vec<watch::Target>> {
    use kube::discovery::{Discovery, verbs};
    let policies = policies.all();
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (api, caps) in group.recommended_resources() {
            if !(caps.supports_operation(verbs::LIST) && caps.supports_operation(verbs::WATCH)) {
                continue;
            }
            if policies
                .iter()
                .any(|p| p.covers(&api.group, &api.version, &api.plural))
            {
                out.push(watch::Target::new(api));
            }
        }
    }
    Ok(out)
}

struct Driver {
    reconciler: Reconciler,
    verdicts: verdicts::Verdicts,
    store: Arc<dyn EventStore>,
    capture: Arc<Capture>,
    resolved: VecDeque<EventId>,
    resolved_set: HashSet<EventId>,
    polled_until: Timestamp,
    watches: Arc<std::sync::Mutex<Watches>>,
    /// Verdicts whose write failed, written again on the next pass.
    retry: Vec<crate::store::Resolution>,
    apis: HashMap<String, ApiResource>,
}

impl Driver {
    async fn input(&mut self, input: Input) -> Vec<Verdict> {
        match input {
            Input::Received(list) => list
                .into_iter()
                .filter(|r| !self.resolved_set.contains(&r.id))
                .flat_map(|r| self.reconciler.received(r))
                .collect(),
            Input::Commit {
                resource,
                api,
                deleted,
                object,
                seen_at,
                listed,
            } => {
                let Some(uid) = watch::uid_of(&object) else {
                    return Vec::new();
                };
                let op = if deleted {
                    Operation::Delete
                } else {
                    Operation::Update
                };
                let req = observed::synthetic_request(&api, &object, op, "");
                let digests =
                    observed::digests(&self.capture.policies.all(), &self.capture.redactor, &req);
                if digests.is_empty() {
                    return Vec::new(); // no policy covers it (another namespace, say)
                }
                let seen = Seen {
                    uid,
                    resource,
                    resource_version: watch::rv_of(&object).unwrap_or_default(),
                    deleted,
                    digests,
                    seen_at,
                    object,
                    baseline: listed == Some(false),
                };
                if listed.is_some() && !self.reconciler.has_pending(&seen.uid) {
                    // A listed object's review, if any, came long before: no need to wait.
                    return vec![Verdict::Unannounced(seen)];
                }
                self.reconciler.committed(seen)
            }
            Input::Listed {
                resource,
                uids,
                baseline: _,
                started,
            } => {
                self.vanished(&resource, uids, started).await;
                Vec::new()
            }
            Input::Health(resource, since) => {
                if since.is_some() {
                    let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
                    w.update(|w| {
                        if let Some(entry) = w.by_resource.get_mut(&resource) {
                            entry.1 = None;
                        }
                    });
                }
                if since.is_some() {
                    self.reconciler.resumed(&resource, Timestamp::now());
                }
                self.reconciler.set_health(&resource, since);
                Vec::new()
            }
            Input::Failed(resource, error) => {
                let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
                w.update(|w| {
                    if let Some(entry) = w.by_resource.get_mut(&resource) {
                        entry.1 = Some(crate::render::shorten(&error, 300));
                    }
                });
                Vec::new()
            }
        }
    }

    /// Received changes older than this term's first poll reaches (a leader that stopped
    /// before it could tell, a witness turned off and on): no witness can tell any more, so
    /// they are `unconfirmed`, never left `received` for good.
    async fn sweep_stale(&mut self) {
        let store = self.store.clone();
        let until = self.polled_until;
        let swept = tokio::task::spawn_blocking(move || stale_to_unconfirmed(&*store, until)).await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(
                    changes = n,
                    "received changes from before this witness's term: unconfirmed"
                );
                self.capture
                    .metrics
                    .witness_verdicts
                    .get_or_create(&crate::metrics::StateLabels {
                        state: ChangeState::Unconfirmed.as_str(),
                    })
                    .inc_by(n);
            }
            Ok(Err(error)) => tracing::warn!(%error, "resolving stale received changes failed"),
            Err(_) => {}
        }
    }

    /// Received changes in the store since the last poll (another replica's, or dropped).
    async fn poll(&mut self) -> Vec<Verdict> {
        let store = self.store.clone();
        let since = self.polled_until;
        let now = Timestamp::now();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = store.query(&Query {
                    state: Some(ChangeState::Received),
                    since: Some(since),
                    limit: crate::store::MAX_PAGE,
                    after,
                    ..Query::default()
                })?;
                out.extend(page.events.iter().filter_map(received_of));
                match page.next {
                    Some(n) if out.len() < 100_000 => after = Some(n),
                    _ => break,
                }
            }
            Ok::<_, crate::Error>(out)
        })
        .await;
        match read {
            Ok(Ok(list)) => {
                // Overlap by the grace: an event appended just before `now` may commit late.
                self.polled_until = now - SignedDuration::from_secs(5);
                let new: Vec<EventId> = list
                    .into_iter()
                    .rev()
                    .map(|r| r.id)
                    .filter(|id| {
                        !self.resolved_set.contains(id) && !self.reconciler.is_pending(*id)
                    })
                    .collect();
                if new.is_empty() {
                    return Vec::new();
                }
                // Queries leave `object` out: read each new one whole, for its digest (without
                // it any later commit of the object would confirm it).
                let store = self.store.clone();
                let full = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::with_capacity(new.len());
                    for id in new {
                        out.extend(store.get(id)?.as_ref().and_then(received_of));
                    }
                    Ok::<_, crate::Error>(out)
                })
                .await;
                match full {
                    Ok(Ok(list)) => list
                        .into_iter()
                        .flat_map(|r| self.reconciler.received(r))
                        .collect(),
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "reading received changes from the store failed");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading received changes from the store failed");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    async fn apply(&mut self, verdicts: Vec<Verdict>) {
        if verdicts.is_empty() && self.retry.is_empty() {
            return;
        }
        // Verdicts a failed write left over go first; they were counted and announced then.
        let retried = std::mem::take(&mut self.retry);
        let mut resolutions = Vec::new();
        for v in verdicts {
            match v {
                Verdict::Resolve(r) => resolutions.push(r),
                Verdict::Unannounced(seen) => self.unannounced(seen).await,
            }
        }
        for r in &resolutions {
            self.remember(r.id);
            self.capture.metrics.witness_verdict(r.state);
        }
        self.verdicts.announce(&resolutions).await;
        let mut resolutions = [retried, resolutions].concat();
        if resolutions.is_empty() {
            return;
        }
        if resolutions.len() > MAX_RETRY {
            let drop = resolutions.len() - MAX_RETRY;
            tracing::warn!(
                dropped = drop,
                "too many verdicts wait to be written; the oldest stay received"
            );
            resolutions.drain(..drop);
        }
        match self.verdicts.write(&resolutions).await {
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, n = resolutions.len(), "writing verdicts failed; trying again");
                self.retry = resolutions;
            }
        }
    }

    fn remember(&mut self, id: EventId) {
        if self.resolved_set.insert(id) {
            self.resolved.push_back(id);
            if self.resolved.len() > RESOLVED_MEMORY
                && let Some(old) = self.resolved.pop_front()
            {
                self.resolved_set.remove(&old);
            }
        }
    }

    /// A commit no review announced: recorded as observed unless the store has it already.
    async fn unannounced(&mut self, seen: Seen) {
        let Some(api) = self.apis.get(&seen.resource).cloned() else {
            return;
        };
        let (store, policies, redactor) = (
            self.store.clone(),
            self.capture.policies.all(),
            self.capture.redactor.clone(),
        );
        let (resource, rv) = (seen.resource.clone(), seen.resource_version.clone());
        let built = tokio::task::spawn_blocking(move || {
            observe(&*store, &policies, &redactor, &api, &seen)
        })
        .await;
        let captured = match built {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(error)) => {
                tracing::warn!(%error, "reading an object's history failed; commit not recorded");
                return;
            }
        };
        self.capture.metrics.witness_verdict(ChangeState::Observed);
        tracing::info!(
            %resource,
            name = %captured.event.name,
            operation = ?captured.event.operation,
            resource_version = %rv,
            "change committed without a review: recorded as observed"
        );
        self.record(captured).await;
    }

    async fn record(&self, captured: crate::pipeline::Captured) {
        match self.capture.writer.submit(captured) {
            Ok(ack) => {
                let _ = ack.await;
            }
            Err(_) => tracing::warn!("event queue full: an observed change was not recorded"),
        }
    }

    /// After a list: objects the store believes alive that the list did not show were deleted
    /// while histor could not see it.
    async fn vanished(&mut self, resource: &str, uids: Vec<String>, started: Timestamp) {
        let store = self.store.clone();
        let resource_owned = resource.to_owned();
        let listed: HashSet<String> = uids.into_iter().collect();
        let found = tokio::task::spawn_blocking(move || {
            vanished(&*store, &resource_owned, &listed, started)
        })
        .await;
        let gone = match found {
            Ok(Ok(g)) => g,
            Ok(Err(error)) => {
                tracing::warn!(%error, %resource, "finding deleted objects failed");
                return;
            }
            Err(_) => return,
        };
        let now = Timestamp::now();
        for head in gone {
            if let Some(c) = observed::vanished_event(&head, now) {
                tracing::info!(%resource, name = %c.event.name, "object gone while unwatched: recorded as an observed DELETE");
                self.capture.metrics.witness_verdict(ChangeState::Observed);
                self.record(c).await;
            }
        }
    }
}

/// Resolves every change still `received` before `until` as `unconfirmed`; how many.
fn stale_to_unconfirmed(store: &dyn EventStore, until: Timestamp) -> crate::Result<u64> {
    let mut n = 0;
    loop {
        let page = store.query(&Query {
            state: Some(ChangeState::Received),
            until: Some(until),
            limit: crate::store::MAX_PAGE,
            ..Query::default()
        })?;
        if page.events.is_empty() {
            break;
        }
        let resolutions: Vec<crate::store::Resolution> = page
            .events
            .iter()
            .map(|e| crate::store::Resolution {
                id: e.id,
                state: ChangeState::Unconfirmed,
                commit: None,
            })
            .collect();
        // Each pass resolves what it read, so the next page starts over at the newest.
        let applied = store
            .resolve(&resolutions)?
            .into_iter()
            .filter(|a| *a)
            .count();
        n += applied as u64;
        if page.next.is_none() || applied == 0 {
            break;
        }
    }
    Ok(n)
}

/// The objects of `resource` the store believes alive that a list did not show, with what the
/// store last knew of them. Alive by the changes that may have happened: an object whose only
/// create was not applied never existed, and one whose last applied change is a DELETE is gone.
/// An object with a change the store took after the list `started`, or one still `received`,
/// is left alone: the list's snapshot may predate it, and its own commit will tell.
fn vanished(
    store: &dyn EventStore,
    resource: &str,
    listed: &HashSet<String>,
    started: Timestamp,
) -> crate::Result<Vec<observed::Head>> {
    let started = u64::try_from(started.as_microsecond()).unwrap_or(0);
    let mut gone = Vec::new();
    for head in store.live_objects(resource)? {
        if listed.contains(&head.uid) || head.last >= started {
            continue;
        }
        if let HeadLookup::Head(Some(h)) = head_of(store, &head.uid, None)?
            && h.event.event.operation != Operation::Delete
            && h.event.event.state != ChangeState::Received
        {
            gone.push(*h);
        }
    }
    Ok(gone)
}

/// The event recording `seen`, a commit no review announced, or `None` when the store already
/// has it or it changes nothing there (see [`observed::observed_event`]). Reads the store.
fn observe(
    store: &dyn EventStore,
    policies: &[Arc<crate::pipeline::CompiledPolicy>],
    redactor: &crate::pipeline::Redactor,
    api: &ApiResource,
    seen: &Seen,
) -> crate::Result<Option<crate::pipeline::Captured>> {
    let head = match head_of(store, &seen.uid, Some(&seen.resource_version))? {
        HeadLookup::Known => return Ok(None),
        HeadLookup::Head(head) => head,
    };
    // A deleted object's managedFields name its last writer, not who deleted it.
    let inferred = (!seen.deleted)
        .then(|| managed::infer_actor(&seen.object))
        .flatten();
    let commit = Commit {
        resource_version: seen.resource_version.clone(),
        seen_at: seen.seen_at,
        witness: WitnessKind::Watch,
    };
    Ok(observed::observed_event(
        policies,
        redactor,
        api,
        &seen.object,
        seen.deleted,
        seen.baseline,
        head.as_deref(),
        commit,
        inferred,
    ))
}

enum HeadLookup {
    /// The store already has this commit.
    Known,
    /// The newest event that may have happened, if any.
    Head(Option<Box<observed::Head>>),
}

/// The store's newest event of `uid` that may have happened (not `notApplied`), and its state;
/// `Known` when an event of it already carries commit `rv`.
fn head_of(store: &dyn EventStore, uid: &str, rv: Option<&str>) -> crate::Result<HeadLookup> {
    let page = store.query(&Query {
        uid: Some(uid.to_owned()),
        limit: 100,
        ..Query::default()
    })?;
    if let Some(rv) = rv
        && page.events.iter().any(|e| {
            e.event
                .commit
                .as_ref()
                .is_some_and(|c| c.resource_version == rv)
        })
    {
        return Ok(HeadLookup::Known);
    }
    let Some(newest) = page
        .events
        .into_iter()
        .find(|e| e.event.state.may_have_happened())
    else {
        return Ok(HeadLookup::Head(None));
    };
    let state = store.state_after(newest.id)?;
    Ok(HeadLookup::Head(Some(Box::new(observed::Head {
        event: newest,
        state,
    }))))
}

#[cfg(test)]
mod tests;
