//! Criterion benchmarks of the core: one uncontended decision, in-process store.
//! `cargo bench -p llmthrottle-core --bench gcra`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use llmthrottle_core::*;

mod common;
use common::{acquire_in_place, admit_everything as policy};

fn bench(c: &mut Criterion) {
    let rate = RateParams::new(Rate::parse("1G/s").unwrap(), None).unwrap();
    c.bench_function("gcra::decide (pure math)", |b| {
        let mut now = 1u64;
        b.iter(|| {
            now += 1;
            std::hint::black_box(gcra::decide(std::hint::black_box(now), now, 1, &rate, 0))
        })
    });
    c.bench_function("SystemClock::now", |b| {
        b.iter(|| std::hint::black_box(SystemClock.now()))
    });
    for dims in [&["requests"][..], &["requests", "tokens"][..]] {
        let engine = Engine::new(Arc::new(LocalStore::new()), Arc::new(SystemClock), &policy(dims)).unwrap();
        let amounts = vec![1u64; dims.len()];
        c.bench_function(&format!("Engine::acquire_into local, {} dims", dims.len()), |b| {
            b.iter(|| assert!(acquire_in_place(&engine, "tenant:acme", &amounts)))
        });
    }
    let engine = Engine::new(
        Arc::new(LocalStore::new()),
        Arc::new(SystemClock),
        &policy(&["requests"]),
    )
    .unwrap();
    let keys: Vec<String> = (0..100_000).map(|i| format!("tenant:{i}")).collect();
    let mut i = 0;
    c.bench_function("Engine::acquire_into local, 1 dim, 100k keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            assert!(acquire_in_place(&engine, &keys[i], &[1]))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
