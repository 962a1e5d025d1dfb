//! Prometheus metrics of capture and storage. Labels stay low-cardinality: outcomes and error
//! kinds, never user, object or policy names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label of a review counter: what happened to the review.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `recorded`, `duplicate`, `linked`, `dry_run`, `empty_diff`, `not_matched`, `unknown_policy`,
    /// `uninterpretable`, `bad_request`, `body_timeout`, `unauthenticated`, `forbidden`, `dropped`,
    /// `deadline_exceeded`, `store_error`, `store_unavailable` (answered at once while the store
    /// could not write), `spooled` (durable in the local spool, the shared store down or slow), ...
    pub outcome: &'static str,
}

/// Label of the condition error counter: the fixed error category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionErrorLabels {
    /// `no_such_key`, `type_mismatch`, `overflow`, ... ([`crate::pipeline::ConditionErrorKind`]).
    pub kind: &'static str,
}

/// Label of a connection or store-failure counter: why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Connections: `per_source`, `full`, `reserved_unauthenticated`, `first_request_timeout`,
    /// `idle_timeout`. Store writes: `no_space`, `store_error`, `stalled`, `slow` (past the
    /// append budget, spooled), `spool_full`.
    pub reason: &'static str,
}

/// Label of a witness counter: which resource's watch (`deployments.apps`), a handful per
/// cluster, never an object name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// Resource, such as `deployments.apps`.
    pub resource: String,
}

/// Label of the verdict counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `confirmed`, `notApplied`, `observed`, `unconfirmed`.
    pub state: &'static str,
}

/// Every metric histor exports.
#[derive(Debug)]
pub struct Metrics {
    /// Reviews answered, by outcome.
    pub reviews: Family<OutcomeLabels, Counter>,
    /// Time from receiving a review to answering it, in seconds.
    pub review_latency: Histogram,
    /// Events written durably.
    pub events_recorded: Counter,
    /// Updates whose cleaned diff was empty, so nothing was recorded.
    pub empty_diffs: Counter,
    /// Reviews answered without recording because the queue was full.
    pub dropped: Counter,
    /// Policy conditions that could not be evaluated, by error kind.
    pub condition_errors: Family<ConditionErrorLabels, Counter>,
    /// Reviews answered before their durable write finished (the event stays queued).
    pub deadline_exceeded: Counter,
    /// Events waiting for the writer.
    pub queue_depth: Gauge,
    /// Events in the store.
    pub store_events: Gauge<u64, AtomicU64>,
    /// Bytes the store occupies on disk.
    pub store_bytes: Gauge<u64, AtomicU64>,
    /// Events removed by retention.
    pub retention_removed: Counter,
    /// Size of the group-commit batches, in events.
    pub batch_size: Histogram,
    /// Time one group-commit flush takes.
    pub flush_latency: Histogram,
    /// Time one retention pass holds the writer.
    pub retention_latency: Histogram,
    /// Connections of the HTTPS port open now.
    pub connections_open: Gauge,
    /// Connections closed before their first request because of the limits, by reason.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// Connections closed for want of requests, by reason.
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// 1 while the store takes writes, 0 while it cannot (full disk, I/O error, stuck flush).
    pub store_writable: Gauge,
    /// Failed or stalled store writes, by reason.
    pub store_write_failures: Family<ReasonLabels, Counter>,
    /// Batches in the local spool, waiting for the shared store.
    pub spool_batches: Gauge<u64, AtomicU64>,
    /// Bytes of the batches in the local spool.
    pub spool_bytes: Gauge<u64, AtomicU64>,
    /// Batches put in the local spool because the shared store could not take them in time.
    pub spooled_batches: Counter,
    /// Witness verdicts, by state: `notApplied` counts changes that did not happen, `observed`
    /// commits no review announced (what the webhook missed).
    pub witness_verdicts: Family<StateLabels, Counter>,
    /// Time from a review to its confirmation by the watch, in seconds.
    pub witness_confirm_lag: Histogram,
    /// Watch failures (then retried with backoff), by resource.
    pub witness_restarts: Family<ResourceLabels, Counter>,
    /// Relists after `410 Gone`, by resource.
    pub witness_relists: Family<ResourceLabels, Counter>,
    /// Received changes awaiting a verdict.
    pub witness_pending: Gauge,
    /// Resources watched now.
    pub witness_watches: Gauge,
    /// Audit batches posted to `/audit`, by outcome (`stored`, `refused_full`, `bad_request`,
    /// `store_error`, `unauthenticated`, `forbidden`).
    pub audit_batches: Family<OutcomeLabels, Counter>,
    /// Audit events taken in, by outcome (`new`, `duplicate`, `skipped_stage`, and the reasons
    /// an item or line is not an event: `truncated`, `not_json`, `not_an_event`, `invalid`,
    /// `too_long`).
    pub audit_events: Family<OutcomeLabels, Counter>,
    /// Audit events the audit witness used, by outcome (`joined`, `not_histors`, `unjoined`:
    /// naming a change histor never found in time, `undecodable`).
    pub audit_joins: Family<OutcomeLabels, Counter>,
    /// Audit events waiting in the journal.
    pub audit_queued: Gauge,
    /// A witness's verdict disagreed with the verdict another witness wrote first.
    pub witness_disagreements: Counter,
    /// Forms of Kubernetes Events the Events watch took, by what they added (`new`, `again`,
    /// `later`, `same`) or why not (`not_selected`, `invalid`).
    pub kube_events: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reviews: Family::default(),
            // 100 µs .. ~3 s: the interesting part is well under the 500 ms deadline.
            review_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            events_recorded: Counter::default(),
            empty_diffs: Counter::default(),
            dropped: Counter::default(),
            condition_errors: Family::default(),
            deadline_exceeded: Counter::default(),
            queue_depth: Gauge::default(),
            store_events: Gauge::default(),
            store_bytes: Gauge::default(),
            retention_removed: Counter::default(),
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 2.0, 12,
            )),
            // 50 µs .. ~3 s.
            flush_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17),
            ),
            retention_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 17),
            ),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            connections_closed: Family::default(),
            store_writable: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            store_write_failures: Family::default(),
            spool_batches: Gauge::default(),
            spool_bytes: Gauge::default(),
            spooled_batches: Counter::default(),
            witness_verdicts: Family::default(),
            // 1 ms .. ~65 s.
            witness_confirm_lag: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
            ),
            witness_restarts: Family::default(),
            witness_relists: Family::default(),
            witness_pending: Gauge::default(),
            witness_watches: Gauge::default(),
            audit_batches: Family::default(),
            audit_events: Family::default(),
            audit_joins: Family::default(),
            audit_queued: Gauge::default(),
            witness_disagreements: Counter::default(),
            kube_events: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `histor_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("histor");
        r.register(
            "admission_reviews",
            "Admission reviews answered, by outcome",
            self.reviews.clone(),
        );
        r.register(
            "admission_review_duration_seconds",
            "Time from receiving a review to answering it",
            self.review_latency.clone(),
        );
        r.register(
            "events_recorded",
            "Change events written durably",
            self.events_recorded.clone(),
        );
        r.register(
            "empty_diffs",
            "Updates skipped because their cleaned diff was empty",
            self.empty_diffs.clone(),
        );
        r.register(
            "events_dropped",
            "Reviews not recorded because the queue was full",
            self.dropped.clone(),
        );
        r.register(
            "condition_errors",
            "Policy conditions that could not be evaluated, by error kind",
            self.condition_errors.clone(),
        );
        r.register(
            "deadline_exceeded",
            "Reviews answered before their durable write finished",
            self.deadline_exceeded.clone(),
        );
        r.register(
            "queue_depth",
            "Events waiting for the writer",
            self.queue_depth.clone(),
        );
        r.register(
            "store_events",
            "Events held in the store",
            self.store_events.clone(),
        );
        r.register(
            "store_size_bytes",
            "Bytes the store occupies on disk",
            self.store_bytes.clone(),
        );
        r.register(
            "retention_removed",
            "Events removed by retention",
            self.retention_removed.clone(),
        );
        r.register(
            "write_batch_events",
            "Events per group commit",
            self.batch_size.clone(),
        );
        r.register(
            "write_flush_duration_seconds",
            "Time one group-commit flush to disk takes",
            self.flush_latency.clone(),
        );
        r.register(
            "retention_pass_duration_seconds",
            "Time one retention pass takes",
            self.retention_latency.clone(),
        );
        r.register(
            "connections_open",
            "Connections of the HTTPS port open now",
            self.connections_open.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once because of the connection limits, by reason",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed because no request came in time, by reason",
            self.connections_closed.clone(),
        );
        r.register(
            "store_writable",
            "1 while the store takes writes; 0 while it cannot (full disk, I/O error, stuck flush)",
            self.store_writable.clone(),
        );
        r.register(
            "store_write_failures",
            "Failed or stalled store writes, by reason",
            self.store_write_failures.clone(),
        );
        r.register(
            "spool_batches",
            "Batches in the local spool, waiting for the shared store (0 unless it is down or slow)",
            self.spool_batches.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of the batches in the local spool",
            self.spool_bytes.clone(),
        );
        r.register(
            "spooled_batches",
            "Batches put in the local spool because the shared store could not take them in time",
            self.spooled_batches.clone(),
        );
        r.register(
            "witness_verdicts",
            "Witness verdicts on changes, by state (notApplied: did not happen; observed: committed without a review)",
            self.witness_verdicts.clone(),
        );
        r.register(
            "witness_confirmation_lag_seconds",
            "Time from a review to its confirmation by the watch",
            self.witness_confirm_lag.clone(),
        );
        r.register(
            "witness_watch_restarts",
            "Watch failures, retried with backoff, by resource",
            self.witness_restarts.clone(),
        );
        r.register(
            "witness_relists",
            "Relists after 410 Gone, by resource",
            self.witness_relists.clone(),
        );
        r.register(
            "witness_pending",
            "Received changes awaiting a witness verdict",
            self.witness_pending.clone(),
        );
        r.register(
            "witness_watches",
            "Resources watched now",
            self.witness_watches.clone(),
        );
        r.register(
            "audit_batches",
            "Audit event batches posted by the apiserver's webhook backend, by outcome",
            self.audit_batches.clone(),
        );
        r.register(
            "audit_events",
            "Audit events taken in (webhook, log file, ingest), by outcome",
            self.audit_events.clone(),
        );
        r.register(
            "audit_joins",
            "Audit events the audit witness used, by outcome",
            self.audit_joins.clone(),
        );
        r.register(
            "audit_queued",
            "Audit events waiting in the journal",
            self.audit_queued.clone(),
        );
        r.register(
            "witness_disagreements",
            "Verdicts that disagreed with the one another witness wrote first",
            self.witness_disagreements.clone(),
        );
        r.register(
            "kube_events",
            "Forms of Kubernetes Events the Events watch took, by what they added",
            self.kube_events.clone(),
        );
    }

    /// Counts `n` audit events with `outcome`.
    pub fn audit_events(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            self.audit_events
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(n);
        }
    }

    /// Counts one witness verdict.
    pub fn witness_verdict(&self, state: crate::pipeline::ChangeState) {
        self.witness_verdicts
            .get_or_create(&StateLabels {
                state: state.as_str(),
            })
            .inc();
    }

    /// Counts one review outcome.
    pub fn review(&self, outcome: &'static str) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}
