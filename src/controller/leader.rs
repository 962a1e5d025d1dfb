//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager). Only the leader
//! reconciles policies, rotates certificates and writes ChangeRecords; every replica serves the
//! webhook, so losing leadership never interrupts capture.

use super::{Error, Result, Settings};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::future::Future;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Seconds a Lease stays valid after its last renewal.
const LEASE_DURATION_SECS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECS: u64 = 5;

/// This replica's identity: the pod name when the Downward API provides it, else the host name,
/// plus the process id so two processes on one host stay apart.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "histor".into());
    format!("{host}-{}", std::process::id())
}

/// Starts leader election and returns an "is leader" receiver. Without leader election the
/// receiver says `true` for good. The join handle (if any) ends when every receiver is dropped,
/// releasing the Lease.
pub async fn elect(
    client: Client,
    settings: &Settings,
) -> Result<(watch::Receiver<bool>, Option<JoinHandle<()>>)> {
    if !settings.leader_election {
        info!("leader election disabled: this replica leads");
        let (tx, rx) = watch::channel(true);
        // Keep the sender alive for as long as anyone listens, so `changed()` never reports
        // a closed channel (which the loops read as shutdown).
        let handle = tokio::spawn(async move { tx.closed().await });
        return Ok((rx, Some(handle)));
    }
    let manager = LeaseManagerBuilder::new(client, &settings.lease_name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(LEASE_DURATION_SECS)
        .with_grace(LEASE_GRACE_SECS)
        .with_field_manager(format!("{}-lease", super::FIELD_MANAGER))
        .build()
        .await
        .map_err(|e| Error::Lease(e.to_string()))?;
    let (rx, task) = manager.watch().await;
    let lease = settings.lease_name.clone();
    let handle = tokio::spawn(async move {
        match task.await {
            Ok(Ok(_)) => info!(%lease, "leader election stopped"),
            Ok(Err(error)) => warn!(%error, %lease, "leader election failed"),
            Err(error) => warn!(%error, %lease, "leader election task panicked"),
        }
    });
    info!(lease = %settings.lease_name, identity = %settings.identity, "leader election started");
    Ok((rx, Some(handle)))
}

/// Runs `work` while this replica leads: started on gaining leadership, dropped (cancelled) on
/// losing it, started again on regaining it. Returns when `work` finishes on its own or the
/// leadership channel closes.
pub async fn while_leader<F, Fut>(mut leading: watch::Receiver<bool>, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        info!("leading: starting leader-only work");
        tokio::select! {
            () = work() => return,
            lost = leading.wait_for(|l| !*l) => {
                if lost.is_err() {
                    return;
                }
                warn!("lost leadership: stopping leader-only work");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn work_runs_only_while_leading() {
        let (tx, rx) = watch::channel(false);
        let started = Arc::new(AtomicU32::new(0));
        let counter = started.clone();
        let task = tokio::spawn(while_leader(rx, move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await
            }
        }));
        tokio::task::yield_now().await;
        assert_eq!(started.load(Ordering::SeqCst), 0);
        tx.send(true).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1);
        tx.send(false).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(true).expect("send");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            2,
            "restarted after regaining"
        );
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("ends when the channel closes")
            .expect("no panic");
    }
}
