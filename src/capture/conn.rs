//! Limits on the connections of the HTTPS port, so that a client that connects and then stalls
//! cannot take the webhook away from the apiserver.
//!
//! - A [`Limiter`] admits a connection before its TLS handshake, or closes it at once: at most
//!   `max_connections` in all (set below the process's open-files limit, so accepting never runs
//!   the process out of descriptors for the store, the Kubernetes client and the sinks), at most
//!   `max_per_source` from one address (in a cluster every pod and node has its own, so one
//!   hostile pod cannot take every slot), and the last `reserved` slots only for connections that
//!   prove with a client certificate that they are the apiserver (checked after the handshake by
//!   the acceptor).
//! - A [`Guarded`] stream closes its connection when no request has been in flight for
//!   `idle_timeout`, or when the first request has not arrived `header_timeout` after the
//!   handshake (hyper has no such bound for HTTP/2, nor for the first bytes of either protocol).
//!   Bytes do not count as activity, requests do: pings or a dribble keep nothing open.
//! - [`Tracked`] is the per-connection service that tells the stream when requests start and end.
//!
//! What bounds the rest: hyper's HTTP/1 header-read timeout (a dribbled header, and the wait for
//! the next request on a kept-alive connection), the TLS handshake timeout, and the review body
//! deadline of the admit handler.
//!
//! Depends on tokio, hyper's body and service traits and the metrics; nothing of Kubernetes.

use crate::capture::tls::ClientCa;
use crate::metrics::Metrics;
use axum::body::HttpBody;
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Descriptors kept back from connections at least: the store's files, the listeners, the
/// Kubernetes client, SMTP and webhook sinks, the metrics port.
pub const MIN_FD_HEADROOM: u64 = 64;

/// Most connections when derived from the open-files limit: beyond this, memory (a TLS session
/// and buffers each) matters more than descriptors.
pub const MAX_DERIVED_CONNECTIONS: usize = 1024;

/// How the HTTPS port limits its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one source address (reserved slots not counted).
    pub max_per_source: usize,
    /// Slots, out of `max_connections`, only for connections whose client certificate chains to
    /// the webhook client CA. Zero when no such CA is configured.
    pub reserved: usize,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for a request's headers: the first request of a connection, and with
    /// HTTP/1.1 each next one.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: MAX_DERIVED_CONNECTIONS,
            max_per_source: 64,
            reserved: 0,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The connection cap for an open-files soft limit of `nofile`: what is left after the
/// headroom (a quarter of the limit, at least [`MIN_FD_HEADROOM`]), at most
/// [`MAX_DERIVED_CONNECTIONS`], at least 8.
pub fn derived_max_connections(nofile: u64) -> usize {
    let headroom = (nofile / 4).max(MIN_FD_HEADROOM);
    let left = nofile.saturating_sub(headroom);
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(8, MAX_DERIVED_CONNECTIONS)
}

/// The soft open-files limit in the text of `/proc/self/limits`.
pub fn parse_nofile_soft(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// This process's soft open-files limit, where the system says (Linux).
pub fn nofile_soft_limit() -> Option<u64> {
    parse_nofile_soft(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// Why a connection was closed before it could send a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address holds its share of the slots already.
    PerSource,
    /// Every slot is taken.
    Full,
    /// It took a reserved slot without a client certificate from the webhook client CA.
    Unauthenticated,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerSource => "per_source",
            Refusal::Full => "full",
            Refusal::Unauthenticated => "reserved_unauthenticated",
        }
    }
}

#[derive(Default)]
struct Counts {
    shared: usize,
    reserved: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Hands out connection slots; see the module documentation for the rules.
pub struct Limiter {
    limits: ConnLimits,
    reserve_for: Option<Arc<ClientCa>>,
    counts: parking_lot::Mutex<Counts>,
    open: Gauge,
    refused: Family<crate::metrics::ReasonLabels, Counter>,
    closed: Family<crate::metrics::ReasonLabels, Counter>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter for `limits`, counting in `metrics`, whose reserved slots are kept only by
    /// connections with a client certificate `reserve_for` accepts (none without it).
    pub fn new(
        limits: ConnLimits,
        metrics: &Metrics,
        reserve_for: Option<Arc<ClientCa>>,
    ) -> Arc<Self> {
        Arc::new(Limiter {
            limits,
            reserve_for,
            counts: Default::default(),
            open: metrics.connections_open.clone(),
            refused: metrics.connections_refused.clone(),
            closed: metrics.connections_closed.clone(),
        })
    }

    /// The limits applied.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// A slot for a connection from `source`, or why there is none (counted).
    pub fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Result<Slot, Refusal> {
        let decision = {
            let mut counts = self.counts.lock();
            let reserved = self.limits.reserved.min(self.limits.max_connections);
            let shared_cap = self.limits.max_connections - reserved;
            let from_source =
                source.map_or(0, |ip| counts.per_source.get(&ip).copied().unwrap_or(0));
            if from_source < self.limits.max_per_source && counts.shared < shared_cap {
                counts.shared += 1;
                if let Some(ip) = source {
                    *counts.per_source.entry(ip).or_default() += 1;
                }
                Ok(false)
            } else if counts.reserved < reserved {
                counts.reserved += 1;
                Ok(true)
            } else if from_source >= self.limits.max_per_source {
                Err(Refusal::PerSource)
            } else {
                Err(Refusal::Full)
            }
        };
        match decision {
            Ok(reserved) => {
                self.open.inc();
                Ok(Slot {
                    limiter: self.clone(),
                    source,
                    reserved,
                })
            }
            Err(refusal) => {
                self.refuse(refusal);
                Err(refusal)
            }
        }
    }

    /// Whether a connection in a reserved slot, with client chain `chain`, may keep it.
    pub fn may_keep_reserved(&self, chain: Option<&[CertificateDer<'_>]>) -> bool {
        self.reserve_for
            .as_ref()
            .is_some_and(|ca| ca.check(chain).is_ok())
    }

    /// Counts a refusal.
    pub fn refuse(&self, refusal: Refusal) {
        self.refused
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: refusal.label(),
            })
            .inc();
    }

    fn closed(&self, reason: &'static str) {
        self.closed
            .get_or_create(&crate::metrics::ReasonLabels { reason })
            .inc();
    }
}

/// A connection's place under the limits, given back when dropped.
pub struct Slot {
    limiter: Arc<Limiter>,
    source: Option<IpAddr>,
    reserved: bool,
}

impl Slot {
    /// Whether this is one of the slots kept for authenticated apiservers.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("source", &self.source)
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock();
        if self.reserved {
            counts.reserved -= 1;
        } else {
            counts.shared -= 1;
            if let Some(ip) = self.source
                && let Some(n) = counts.per_source.get_mut(&ip)
            {
                *n -= 1;
                if *n == 0 {
                    counts.per_source.remove(&ip);
                }
            }
        }
        drop(counts);
        self.limiter.open.dec();
    }
}

/// What one connection is doing, shared by its stream and its service.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    served: AtomicBool,
    last_done: parking_lot::Mutex<Instant>,
    waker: AtomicWaker,
}

impl Activity {
    /// A connection that has just finished its handshake.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            last_done: parking_lot::Mutex::new(Instant::now()),
            waker: AtomicWaker::new(),
        })
    }

    /// Marks a request as started; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing happens first, and why; `None` while a
    /// request is in flight.
    fn deadline(&self, started: Instant, limits: &Timeouts) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.served.load(Ordering::Relaxed) {
            Some((*self.last_done.lock() + limits.idle, "idle_timeout"))
        } else {
            Some((started + limits.first_request, "first_request_timeout"))
        }
    }
}

/// A request in flight on a connection: from the service call until its response body is
/// dropped (sent, or abandoned with the connection).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.last_done.lock() = Instant::now();
            // The stream may be parked on a read with no timer armed: let it arm one.
            self.0.waker.wake();
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    first_request: Duration,
    idle: Duration,
}

/// A connection's stream that ends it (an I/O error of kind `TimedOut`) once it has been idle
/// too long, and holds its [`Slot`] until dropped.
pub struct Guarded<S> {
    inner: S,
    activity: Arc<Activity>,
    started: Instant,
    timeouts: Timeouts,
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    expired: bool,
    slot: Slot,
}

impl<S> Guarded<S> {
    /// Wraps the stream of a connection admitted with `slot` whose requests are reported to
    /// `activity`.
    pub fn new(inner: S, slot: Slot, activity: Arc<Activity>) -> Self {
        let limits = slot.limiter.limits();
        let timeouts = Timeouts {
            first_request: limits.header_timeout,
            idle: limits.idle_timeout,
        };
        let started = Instant::now();
        let armed = started + timeouts.first_request;
        Guarded {
            inner,
            activity,
            started,
            timeouts,
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
            expired: false,
            slot,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// `Ready(error)` once the connection has been idle past its deadline; otherwise arranges
    /// to be woken at the deadline (or when the last request in flight ends).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if self.expired {
            return Poll::Ready(timed_out());
        }
        self.activity.waker.register(cx.waker());
        loop {
            let Some((deadline, reason)) = self.activity.deadline(self.started, &self.timeouts)
            else {
                return Poll::Pending;
            };
            if deadline != self.armed {
                self.armed = deadline;
                self.sleep.as_mut().reset(deadline);
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // A request may have ended while the timer ran: look again.
                Poll::Ready(())
                    if self.activity.deadline(self.started, &self.timeouts)
                        != Some((deadline, reason)) =>
                {
                    continue;
                }
                Poll::Ready(()) => {
                    self.expired = true;
                    self.slot.limiter.closed(reason);
                    tracing::debug!(reason, "closing a connection without requests");
                    return Poll::Ready(timed_out());
                }
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => match this.poll_expired(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            // A peer that stops reading our answers is as idle as one that stops writing.
            Poll::Pending => match this.poll_expired(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => match this.poll_expired(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => match this.poll_expired(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The per-connection service: reports each request's start and end to the connection's
/// [`Activity`].
#[derive(Clone, Debug)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    /// `inner`, reporting to `activity`.
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S, Req, B> tower_service::Service<http::Request<Req>> for Tracked<S>
where
    S: tower_service::Service<http::Request<Req>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let guard = self.activity.begin();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that keeps its request in flight until it is dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limiter(max: usize, per_source: usize, reserved: usize) -> Arc<Limiter> {
        Limiter::new(
            ConnLimits {
                max_connections: max,
                max_per_source: per_source,
                reserved,
                header_timeout: Duration::from_millis(300),
                idle_timeout: Duration::from_millis(1000),
                ..ConnLimits::default()
            },
            &Metrics::default(),
            None,
        )
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let limiter = limiter(6, 2, 0);
        let a: Vec<Slot> = (0..2).map(|_| limiter.admit(ip(1)).unwrap()).collect();
        assert_eq!(limiter.admit(ip(1)).unwrap_err(), Refusal::PerSource);
        let b: Vec<Slot> = (0..2).map(|_| limiter.admit(ip(2)).unwrap()).collect();
        let c: Vec<Slot> = (0..2).map(|_| limiter.admit(ip(3)).unwrap()).collect();
        assert_eq!(limiter.admit(ip(4)).unwrap_err(), Refusal::Full);
        drop(a);
        assert!(
            limiter.admit(ip(1)).is_ok(),
            "slots come back when connections close"
        );
        drop((b, c));
        assert!(
            limiter.counts.lock().per_source.len() <= 1,
            "no entry kept for gone sources"
        );
    }

    #[test]
    fn reserved_slots_are_the_last_ones_and_ignore_the_source_share() {
        let limiter = limiter(4, 2, 2);
        let _shared: Vec<Slot> = [1, 2].map(|n| limiter.admit(ip(n)).unwrap()).into();
        let first = limiter.admit(ip(1)).unwrap();
        assert!(first.is_reserved(), "shared slots are 4 - 2 = 2");
        let second = limiter.admit(ip(1)).unwrap();
        assert!(second.is_reserved());
        assert_eq!(limiter.admit(ip(3)).unwrap_err(), Refusal::Full);
        drop(first);
        assert!(limiter.admit(ip(3)).unwrap().is_reserved());
    }

    #[test]
    fn the_cap_leaves_room_below_the_open_files_limit() {
        assert_eq!(derived_max_connections(256), 192);
        assert_eq!(derived_max_connections(1024), 768);
        assert_eq!(derived_max_connections(100), 36);
        assert_eq!(derived_max_connections(20), 8);
        assert_eq!(derived_max_connections(1 << 20), MAX_DERIVED_CONNECTIONS);
        assert_eq!(derived_max_connections(u64::MAX), MAX_DERIVED_CONNECTIONS);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63712                63712                processes \n\
                      Max open files            256                  524288               files     \n";
        assert_eq!(parse_nofile_soft(limits), Some(256));
        assert_eq!(
            parse_nofile_soft(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
        assert_eq!(parse_nofile_soft("nothing here"), None);
    }

    /// A guarded in-memory connection and the peer's end.
    fn connection(
        limiter: &Arc<Limiter>,
    ) -> (
        Guarded<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (server, client) = tokio::io::duplex(64);
        let activity = Activity::new();
        let slot = limiter.admit(ip(1)).unwrap();
        (
            Guarded::new(server, slot, activity.clone()),
            client,
            activity,
        )
    }

    async fn read_error_after(
        stream: &mut Guarded<tokio::io::DuplexStream>,
    ) -> (io::ErrorKind, Duration) {
        let started = Instant::now();
        let mut buf = [0u8; 16];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => continue,
                Err(error) => return (error.kind(), started.elapsed()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_first_request_ends_at_the_header_timeout() {
        let limiter = limiter(4, 4, 0);
        let (mut server, mut client, _activity) = connection(&limiter);
        // Bytes that never make a request do not keep it open.
        let dribble = tokio::spawn(async move {
            loop {
                if client.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let (kind, after) = read_error_after(&mut server).await;
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(after, Duration::from_millis(300));
        drop(server);
        dribble.await.unwrap();
        assert_eq!(limiter.counts.lock().shared, 0, "the slot is given back");
        let closed = limiter
            .closed
            .get_or_create(&crate::metrics::ReasonLabels {
                reason: "first_request_timeout",
            })
            .get();
        assert_eq!(closed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request_and_not_while_one_runs() {
        let limiter = limiter(4, 4, 0);
        let (mut server, _client, activity) = connection(&limiter);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let request = activity.begin();
        let ends = tokio::spawn(async move {
            // Longer than both timeouts: a request in flight is never cut.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(request);
        });
        let (kind, after) = read_error_after(&mut server).await;
        ends.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        // 5 s until the request ended (the read was parked without a timer), then 1 s idle.
        assert_eq!(after, Duration::from_millis(6000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_idle_too() {
        let limiter = limiter(4, 4, 0);
        let (mut server, _client, activity) = connection(&limiter);
        drop(activity.begin());
        let started = Instant::now();
        let error = loop {
            if let Err(error) = server.write_all(&[0u8; 1024]).await {
                break error;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
    }
}
