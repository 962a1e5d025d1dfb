//! The Events witness, on the leader: one cluster-wide watch of `events.k8s.io/v1` Events
//! (the shared [`watch`](super::watch) loop: resumed from the resourceVersion kept in the store,
//! relisted after `410 Gone`), each form kept when a TrackingPolicy's `events` selection takes
//! it, in the store's [`KubeEventStore`]: one record per Event with its count, so that repeats
//! are counted and a restart or a relist records nothing twice. It runs while some policy asks
//! for Events, and forgets Events past the longest `events.maxAge` of the policies.

use super::Input;
use super::watch::{self, Target};
use crate::events::{KubeEvent, Seen, record};
use crate::index::PolicyIndex;
use crate::metrics::{Metrics, OutcomeLabels};
use crate::store::{EventStore, KubeEventStore};
use jiff::{SignedDuration, Timestamp};
use kube::discovery::ApiResource;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most forms recorded in one store call.
const BATCH: usize = 256;
/// How often the witness forgets old Events.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(30);
/// Most Events forgotten per housekeeping pass.
const FORGET_PER_PASS: usize = 10_000;

/// `events.k8s.io/v1` Events.
pub fn events_api() -> ApiResource {
    ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    }
}

/// The Events witness.
pub struct EventsWitness {
    /// Where Events are kept.
    pub store: Arc<dyn KubeEventStore>,
    /// Where the watch keeps its position (the change store's cursors).
    pub cursors: Arc<dyn EventStore>,
    /// The policies, whose `events` selections choose what is kept.
    pub policies: Arc<PolicyIndex>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl EventsWitness {
    /// True when some policy asks for Events.
    fn wanted(&self) -> bool {
        self.policies
            .all()
            .iter()
            .any(|p| p.spec().events.is_some())
    }

    /// Runs until dropped (the leader's term ends).
    pub async fn run(&self, client: kube::Client) {
        while !self.wanted() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::info!("events witness started: watching events.k8s.io/v1 Events");
        let (tx, mut rx) = mpsc::channel::<Input>(1024);
        let watch = tokio::spawn(watch::run(
            client,
            Target::new(events_api()),
            self.cursors.clone(),
            tx,
            self.metrics.clone(),
        ));
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_EVERY);
        let mut inputs = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut inputs, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let policies = self.policies.all();
                    let forms: Vec<KubeEvent> =
                        inputs.drain(..).filter_map(|i| self.form(&policies, i)).collect();
                    self.record(forms).await;
                }
                _ = housekeeping.tick() => self.forget().await,
            }
        }
        watch.abort();
    }

    /// The Event a watch input carries, when a policy keeps it.
    fn form(
        &self,
        policies: &[Arc<crate::pipeline::CompiledPolicy>],
        input: Input,
    ) -> Option<KubeEvent> {
        let Input::Commit {
            object, deleted, ..
        } = input
        else {
            return None;
        };
        // An Event deleted by its TTL stays on the timeline until its own retention.
        if deleted {
            return None;
        }
        let event = match record::parse(&object) {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, "not an Event");
                self.count("invalid", 1);
                return None;
            }
        };
        if policies.iter().any(|p| p.keeps_event(&event)) {
            Some(event)
        } else {
            self.count("not_selected", 1);
            None
        }
    }

    /// Records the forms, trying again (with backoff) while the store cannot write: the watch
    /// waits meanwhile, so that no form is dropped.
    async fn record(&self, forms: Vec<KubeEvent>) {
        if forms.is_empty() {
            return;
        }
        let forms = Arc::new(forms);
        let mut backoff = Duration::from_millis(500);
        let seen = loop {
            let (store, batch) = (self.store.clone(), forms.clone());
            match tokio::task::spawn_blocking(move || store.record(&batch)).await {
                Ok(Ok(seen)) => break seen,
                Ok(Err(error)) => {
                    tracing::warn!(%error, retry_in = ?backoff, "Events not recorded; trying again")
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "Events not recorded; trying again")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        };
        for s in seen {
            let outcome = match s {
                Seen::New { .. } => "new",
                Seen::Again { .. } => "again",
                Seen::Later => "later",
                Seen::Same => "same",
            };
            self.count(outcome, 1);
        }
    }

    /// Forgets Events past the longest retention any policy gives them.
    async fn forget(&self) {
        let longest = self
            .policies
            .all()
            .iter()
            .filter_map(|p| p.spec().events.as_ref())
            .filter_map(|e| crate::pipeline::parse_duration(&e.max_age).ok())
            .max();
        let Some(longest) = longest else { return };
        let before = Timestamp::now() - longest.max(SignedDuration::from_mins(1));
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.forget(before, FORGET_PER_PASS)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(forgotten = n, "old Events forgotten"),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "forgetting old Events failed"),
            Err(error) => tracing::warn!(%error, "forgetting old Events failed"),
        }
    }

    fn count(&self, outcome: &'static str, n: u64) {
        self.metrics
            .kube_events
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(n);
    }
}
