use criterion::{criterion_group, criterion_main, Criterion};
use llmthrottle_core::*;
use std::sync::atomic::*;
use std::sync::Arc;
fn bench(c: &mut Criterion) {
    let store = LocalStore::new();
    let scope = store.scope("x", CellKind::Rate).unwrap();
    let now = SystemClock.now();
    c.bench_function("store.cell", |b| {
        b.iter(|| std::hint::black_box(store.cell(&scope, "tenant:acme", now).unwrap()))
    });
    let sw = arc_swap::ArcSwap::from_pointee(5u64);
    c.bench_function("arcswap load_full", |b| {
        b.iter(|| std::hint::black_box(sw.load_full()))
    });
    c.bench_function("arcswap load", |b| {
        b.iter(|| std::hint::black_box(**sw.load()))
    });
    let a = Arc::new(AtomicU64::new(0));
    c.bench_function("arc clone+drop", |b| {
        b.iter(|| std::hint::black_box(Arc::clone(&a)))
    });
    c.bench_function("cas", |b| {
        b.iter(|| {
            let v = a.load(Ordering::Acquire);
            std::hint::black_box(a.compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire))
        })
    });
    c.bench_function("string alloc", |b| {
        b.iter(|| std::hint::black_box(String::from("tenant:acme")))
    });
    let m = std::sync::RwLock::new(1u64);
    c.bench_function("rwlock read", |b| {
        b.iter(|| std::hint::black_box(*m.read().unwrap()))
    });
}
criterion_group! { name = benches; config = Criterion::default().warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1)); targets = bench }
criterion_main!(benches);
