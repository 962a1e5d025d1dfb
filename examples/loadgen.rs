//! Open-loop load generator for the capture endpoint: sends reviews at a fixed rate (not waiting
//! for answers, so a slow server cannot slow the load down and hide its latency) and reports
//! latency percentiles. Each request gets a fresh uid so every review is recorded.
//!
//! cargo run --release --example loadgen -- URL CA_FILE RATE SECONDS [FIXTURE]
use std::time::{Duration, Instant};

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
    let client = reqwest::Client::builder()
        .tls_certs_only([cert])
        .pool_max_idle_per_host(64)
        .build()?;

    let total = rate * seconds;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Duration, String>>();
    let start = Instant::now();
    for i in 0..total {
        // Sleep until this request's slot; tokio timers have 1 ms granularity, so requests go
        // out in small bursts that average to the rate.
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let body = format!(
            "{head}{:08x}-0000-4000-8000-{i:012x}{tail}",
            std::process::id()
        );
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let outcome = match result {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(_) => Ok(sent.elapsed()),
                    Err(e) => Err(e.to_string()),
                },
                Ok(r) => Err(format!("status {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx.send(outcome);
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0u64;
    while let Some(outcome) = rx.recv().await {
        match outcome {
            Ok(d) => latencies.push(d),
            Err(e) => {
                if errors < 3 {
                    eprintln!("error: {e}");
                }
                errors += 1;
            }
        }
    }
    let elapsed = start.elapsed();
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
