//! Notification metrics. Labels stay low-cardinality: the sink kind and a fixed outcome, never
//! policy, user or object names.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type KindOutcome = [(&'static str, &'static str); 2];
type Kind = [(&'static str, &'static str); 1];
type KindReason = [(&'static str, &'static str); 2];

/// Counters and gauges of the notifier. Cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct NotifyMetrics {
    /// Delivery attempts by `sink` kind and `outcome` (`delivered`, `retry`, `permanent`).
    pub deliveries: Family<KindOutcome, Counter>,
    /// Retries scheduled, by sink kind.
    pub retries: Family<Kind, Counter>,
    /// Notifications given up on, by sink kind.
    pub permanent_failures: Family<Kind, Counter>,
    /// Notifications waiting in the outbox.
    pub queue_depth: Gauge,
    /// Events waiting in digest windows.
    pub digest_buffered: Gauge,
    /// Queued notifications dropped unsent by `sink` kind and `reason` (`expired`, `overflow`);
    /// digest events of a sink no longer configured count with `sink="unknown"`.
    pub dropped: Family<KindReason, Counter>,
}

impl NotifyMetrics {
    /// Registers the metrics under `histor_notify_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("histor_notify");
        r.register(
            "deliveries",
            "Notification delivery attempts by sink kind and outcome",
            self.deliveries.clone(),
        );
        r.register(
            "retries",
            "Notification retries scheduled",
            self.retries.clone(),
        );
        r.register(
            "permanent_failures",
            "Notifications given up on",
            self.permanent_failures.clone(),
        );
        r.register(
            "queue_depth",
            "Notifications waiting in the outbox",
            self.queue_depth.clone(),
        );
        r.register(
            "digest_buffered",
            "Events waiting in digest windows",
            self.digest_buffered.clone(),
        );
        r.register(
            "dropped",
            "Queued notifications dropped unsent: too old or too many",
            self.dropped.clone(),
        );
    }

    pub(crate) fn dropped(&self, kind: &'static str, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&[("sink", kind), ("reason", reason)])
            .inc_by(n);
    }

    pub(crate) fn delivery(&self, kind: &'static str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&[("sink", kind), ("outcome", outcome)])
            .inc();
    }
}
