//! Criterion benchmarks of the hot path: parsing a review, running the pipeline, and the store's
//! group commit. Figures go into the README.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use histor::crd::TrackingPolicySpec;
use histor::pipeline::{self, CompiledPolicy, Outcome, Redactor};
use histor::store::{EventStore, SledStore};

// The allocator the `histor` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UPDATE: &str =
    include_str!("../tests/fixtures/admission/admissionreview-update-deployment.json");
const SECRET: &str = include_str!("../tests/fixtures/admission/admissionreview-update-secret.json");

fn policy() -> CompiledPolicy {
    let spec: TrackingPolicySpec = serde_json::from_value(
        serde_json::json!({"resources": [{"apiGroups": ["*"], "resources": ["*/*"]}]}),
    )
    .unwrap();
    CompiledPolicy::compile("bench", &spec).unwrap()
}

fn with_uid(body: &str, n: u64) -> Vec<u8> {
    body.replace(
        "5f7c0deb-38fa-4591-b677-95437ac76d3d",
        &format!("00000000-0000-4000-8000-{n:012x}"),
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    let redactor = Redactor::new(b"benchmark-key-0123456789abcdef");
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(UPDATE.len() as u64));
    group.bench_function("parse update-deployment (8.7 KB)", |b| {
        b.iter(|| pipeline::review::parse(UPDATE.as_bytes()).unwrap())
    });
    group.bench_function("parse + process update-deployment", |b| {
        b.iter(|| {
            let parsed = pipeline::review::parse(UPDATE.as_bytes()).unwrap();
            let request = parsed.request.unwrap();
            pipeline::process(&request, &policy, &redactor, jiff::Timestamp::now())
        })
    });
    group.bench_function("parse + process update-secret (redacted)", |b| {
        b.iter(|| {
            let parsed = pipeline::review::parse(SECRET.as_bytes()).unwrap();
            let request = parsed.request.unwrap();
            pipeline::process(&request, &policy, &redactor, jiff::Timestamp::now())
        })
    });
    group.finish();

    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("store")).unwrap();
    let mut n = 0u64;
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(64));
    group.sample_size(20);
    group.bench_function("append 64 update events + flush", |b| {
        b.iter_batched(
            || {
                (0..64)
                    .map(|_| {
                        n += 1;
                        let parsed = pipeline::review::parse(&with_uid(UPDATE, n)).unwrap();
                        let mut request = parsed.request.unwrap();
                        // Calls of one change share a fingerprint whatever their uid: give each
                        // event the newer base version a real next update has, or the store
                        // would dedupe 63 of the 64.
                        if let Some(old) = request.old_object.as_mut() {
                            old["metadata"]["resourceVersion"] = n.to_string().into();
                        }
                        match pipeline::process(
                            &request,
                            &policy,
                            &redactor,
                            jiff::Timestamp::now(),
                        ) {
                            Outcome::Record(captured) => captured,
                            Outcome::Skip(reason) => panic!("not recorded: {reason:?}"),
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |batch| store.append(&batch).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
