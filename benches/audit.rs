//! Criterion benchmarks of audit intake, beside a plain JSON-lines parse of the same recorded
//! log in the same run (the reference the README's ratio is against): the log file path (parse,
//! journal entries, durable append) and the webhook backend (an EventList of 400 events POSTed
//! over HTTPS to `histor serve`, answered once durable). Figures go into the README.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use histor::cmd::{CaptureArgs, ServeArgs, start};
use histor::store::SledStore;
use histor::witness::audit::{record, take_in};
use serde_json::Value;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LOG: &str = include_str!("../tests/fixtures/audit/v1.33/audit.log");

/// The log's lines with every audit ID made unique by `n` (the journal takes an ID once).
fn fresh_lines(n: u64) -> Vec<String> {
    LOG.lines()
        .map(|l| l.replacen("\"auditID\":\"", &format!("\"auditID\":\"{n}-"), 1))
        .collect()
}

/// An EventList of `count` of the log's events (cycling), audit IDs made unique by `n`.
fn batch(n: u64, count: usize) -> String {
    let items: Vec<String> = LOG
        .lines()
        .cycle()
        .take(count)
        .enumerate()
        .map(|(i, l)| l.replacen("\"auditID\":\"", &format!("\"auditID\":\"{n}-{i}-"), 1))
        .collect();
    format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{}]}}"#,
        items.join(",")
    )
}

fn file(c: &mut Criterion) {
    let lines: Vec<&str> = LOG.lines().collect();
    let mut group = c.benchmark_group("audit log");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function(
        "reference: plain JSON-lines parse (serde_json::Value)",
        |b| {
            b.iter(|| {
                lines
                    .iter()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap())
                    .filter(Value::is_object)
                    .count()
            })
        },
    );
    group.bench_function("parse (histor's audit event)", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter_map(|l| histor::usage::parse_line(l.as_bytes()).unwrap())
                .count()
        })
    });
    group.bench_function("parse + journal entries", |b| {
        b.iter(|| {
            lines
                .iter()
                .filter_map(|l| histor::usage::parse_line(l.as_bytes()).unwrap())
                .filter_map(|e| record::entry(&e))
                .count()
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("store")).unwrap();
    let journal = store.audit_journal();
    let mut n = 0u64;
    group.sample_size(20);
    group.bench_function("ingest: parse + durable append to the sled journal", |b| {
        b.iter_batched(
            || {
                n += 1;
                fresh_lines(n)
            },
            |lines| {
                let events: Vec<_> = lines
                    .iter()
                    .filter_map(|l| histor::usage::parse_line(l.as_bytes()).unwrap())
                    .collect();
                let taken = take_in(journal.as_ref(), &events).unwrap();
                assert!(taken.new > 300);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    drop(journal);
}

fn webhook(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: histor.dev/v1alpha1\nkind: TrackingPolicy\nmetadata: {name: all}\n\
         spec: {resources: [{apiGroups: [\"*\"], resources: [\"*\"]}]}\n",
    )
    .unwrap();
    let audit = histor::cmd::AuditArgs {
        audit_webhook: true,
        ..Default::default()
    };
    let running = rt
        .block_on(start(ServeArgs {
            policy_files: vec![policy],
            data_dir: dir.path().join("data"),
            store: Default::default(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: None,
            tls_key: None,
            capture: CaptureArgs::default(),
            audit,
            secrets_dir: None,
            token_file: None,
        }))
        .unwrap();
    let ca = std::fs::read(running.ca_file.as_ref().unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()])
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/audit", running.addr.port());
    let mut group = c.benchmark_group("audit webhook");
    group.throughput(Throughput::Elements(400));
    let body = batch(0, 400);
    group.bench_function("reference: plain JSON parse of an EventList of 400", |b| {
        b.iter(|| serde_json::from_str::<Value>(&body).unwrap())
    });
    group.bench_function("parse an EventList of 400", |b| {
        b.iter(|| record::parse_list(body.as_bytes()).unwrap())
    });
    let mut n = 0u64;
    group.sample_size(20);
    group.bench_function("POST /audit, 400 events, answered once durable", |b| {
        b.iter_batched(
            || {
                n += 1;
                batch(n, 400)
            },
            |body| {
                let status = rt.block_on(async {
                    client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                });
                assert!(status.is_success(), "{status}");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    rt.block_on(running.shutdown()).unwrap();
}

criterion_group!(benches, file, webhook);
criterion_main!(benches);
