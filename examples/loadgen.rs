//! Open-loop load generator for the capture endpoint: sends reviews at a fixed rate (not waiting
//! for answers, so a slow server cannot slow the load down and hide its latency) and reports
//! latency percentiles. Each request gets a fresh uid so every review is recorded.
//!
//! cargo run --release --example loadgen -- URL CA_FILE RATE SECONDS [FIXTURE]
use std::time::{Duration, Instant};

/// Keep-alive connections, as in the wrk setup.
const CONNECTIONS: usize = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, ca, rate, seconds, rest @ ..] = args.as_slice() else {
        eprintln!("usage: loadgen URL CA_FILE RATE SECONDS [FIXTURE]");
        std::process::exit(2);
    };
    let fixture = rest.first().cloned().unwrap_or_else(|| {
        "tests/fixtures/admission/admissionreview-update-deployment.json".into()
    });
    let rate: u64 = rate.parse()?;
    let seconds: u64 = seconds.parse()?;
    let body = std::fs::read_to_string(fixture)?;
    let uid = "5f7c0deb-38fa-4591-b677-95437ac76d3d";
    let (head, tail) = body
        .split_once(uid)
        .ok_or("fixture lacks the expected uid")?;
    let (head, tail) = (head.to_string(), tail.to_string());
    let cert = reqwest::Certificate::from_pem(&std::fs::read(ca)?)?;
    let total = rate * seconds;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let client = reqwest::Client::builder()
            .tls_certs_only([cert.clone()])
            .http1_only()
            .pool_max_idle_per_host(1)
            .build()?;
        // Connect (TCP and TLS handshake) before the clock starts, as wrk does: the figures are
        // about reviews on open keep-alive connections, which is how the apiserver sends them.
        let warmup = format!(
            "{head}{:08x}-0000-4000-8000-ffff{c:08x}{tail}",
            std::process::id()
        );
        client
            .post(url)
            .header("content-type", "application/json")
            .body(warmup)
            .send()
            .await?;
        clients.push(client);
    }
    let start = Instant::now();
    // Like wrk2: 16 keep-alive connections, each request due at its slot in a fixed schedule, and
    // latency counted from that slot, so a server that falls behind is charged for the queueing
    // it causes (no coordinated omission).
    let mut workers = Vec::new();
    for client in clients {
        let (next, url, head, tail) = (next.clone(), url.clone(), head.clone(), tail.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                tokio::time::sleep_until(due.into()).await;
                let body = format!(
                    "{head}{:08x}-0000-4000-8000-{i:012x}{tail}",
                    std::process::id()
                );
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(_) => latencies.push((i, due.elapsed())),
                        Err(e) => {
                            errors += 1;
                            eprintln!("error: {e}");
                        }
                    },
                    Ok(r) => {
                        errors += 1;
                        eprintln!("status {}", r.status());
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    for worker in workers {
        let (l, e) = worker.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    if std::env::var_os("LOADGEN_PER_SECOND").is_some() {
        // Latency over time, to tell steady queueing from periodic stalls.
        let mut seconds: std::collections::BTreeMap<u64, Vec<Duration>> = Default::default();
        for (i, l) in &latencies {
            seconds.entry(i / rate).or_default().push(*l);
        }
        for (second, mut l) in seconds {
            l.sort();
            let at = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
            eprintln!(
                "second {second:>3}: p50 {:>10.2?} p99 {:>10.2?} max {:>10.2?}",
                at(0.5),
                at(0.99),
                l[l.len() - 1]
            );
        }
    }
    let mut latencies: Vec<Duration> = latencies.into_iter().map(|(_, l)| l).collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    println!(
        "sent {total} at {rate}/s in {:.1}s: ok {} errors {errors}; latency p50 {:?} p90 {:?} p99 {:?} p99.9 {:?} max {:?}",
        elapsed.as_secs_f64(),
        latencies.len(),
        pct(0.50).copied().unwrap_or_default(),
        pct(0.90).copied().unwrap_or_default(),
        pct(0.99).copied().unwrap_or_default(),
        pct(0.999).copied().unwrap_or_default(),
        latencies.last().copied().unwrap_or_default(),
    );
    Ok(())
}
