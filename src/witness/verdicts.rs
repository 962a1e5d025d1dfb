//! Writing witnesses' verdicts, the same for every witness: the notifier hears of confirmed
//! (and unconfirmed) changes before the verdict is written, the store applies the first
//! verdict on each event, and the ChangeRecord writer hears of each change found not applied.

use crate::capture::RecordObserver;
use crate::metrics::Metrics;
use crate::pipeline::ChangeState;
use crate::store::{EventStore, Resolution};
use jiff::Timestamp;
use std::sync::Arc;

/// Where verdicts go.
#[derive(Clone)]
pub struct Verdicts {
    /// The store the verdicts are written to.
    pub store: Arc<dyn EventStore>,
    /// Told of every change confirmed (or found unconfirmed) before the verdict is written:
    /// the sinks that notify on confirmation send it then.
    pub notifier: Option<crate::notify::Notifier>,
    /// Told of every change found `notApplied`, once the store holds the verdict.
    pub on_not_applied: Option<Arc<dyn RecordObserver>>,
    /// Confirmation lag.
    pub metrics: Arc<Metrics>,
}

impl Verdicts {
    /// Writes `resolutions`; returns, for each, whether it was applied (the store holds only
    /// the first verdict on an event). An error means nothing was written: try again.
    pub async fn write(&self, resolutions: &[Resolution]) -> crate::Result<Vec<bool>> {
        if resolutions.is_empty() {
            return Ok(Vec::new());
        }
        let store = self.store.clone();
        let rs = resolutions.to_vec();
        let observer = self.on_not_applied.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let applied = store.resolve(&rs)?;
            let mut refused = Vec::new();
            for (r, applied) in rs.iter().zip(&applied) {
                if *applied && r.state == ChangeState::NotApplied {
                    refused.extend(store.get(r.id)?);
                }
            }
            if let Some(o) = observer
                && !refused.is_empty()
            {
                o.on_recorded(&refused);
            }
            Ok::<_, crate::Error>(applied)
        })
        .await
        .map_err(|e| crate::Error::Usage(format!("writing verdicts: {e}")))??;
        let now = Timestamp::now();
        for (r, applied) in resolutions.iter().zip(&applied) {
            if !applied {
                continue;
            }
            tracing::debug!(id = r.id, state = %r.state, "change resolved");
            if r.state == ChangeState::Confirmed
                && let Ok(received) = Timestamp::from_microsecond(r.id as i64)
            {
                // Ids are receipt times in µs.
                let lag = now.duration_since(received).as_secs_f64().max(0.0);
                self.metrics.witness_confirm_lag.observe(lag);
            }
        }
        Ok(applied)
    }

    /// Hands confirmed (and unconfirmed) changes to the notifier with their new state, before
    /// the verdict is written: a crash in between sends a notification twice, never not at all.
    pub async fn announce(&self, resolutions: &[Resolution]) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let wanted: Vec<Resolution> = resolutions
            .iter()
            .filter(|r| matches!(r.state, ChangeState::Confirmed | ChangeState::Unconfirmed))
            .cloned()
            .collect();
        if wanted.is_empty() {
            return;
        }
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut events = Vec::new();
            for r in wanted {
                if let Some(mut e) = store.get(r.id)?
                    && e.event.state == ChangeState::Received
                {
                    e.event.state = r.state;
                    e.event.commit = r.commit;
                    events.push(e);
                }
            }
            Ok::<_, crate::Error>(events)
        })
        .await;
        match read {
            Ok(Ok(events)) => {
                if let Err(error) = notifier.on_resolved(&events).await {
                    tracing::warn!(%error, "handing confirmed changes to the notifier failed");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "reading confirmed changes failed"),
            Err(_) => {}
        }
    }
}
