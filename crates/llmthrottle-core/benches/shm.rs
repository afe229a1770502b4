//! Shared memory against the in-process store, uncontended (criterion): one GCRA check on one
//! cell (the store's look-up, the math and the compare-and-swap; no clock read, no planning),
//! then one allowed acquire; then aggregate throughput from 1 and 2 processes on one key and on
//! distinct keys.
//! `cargo bench -p llmthrottle-core --bench shm`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use llmthrottle_core::*;

mod common;
use common::{acquire_in_place, admit_everything as policy};

fn table_path() -> PathBuf {
    PathBuf::from(format!("/dev/shm/llmthrottle-bench-{}", std::process::id()))
}

fn shared_store(path: &Path) -> Arc<SharedStore> {
    Arc::new(SharedStore::open("bench", 100_000, Some(path.to_path_buf()), FileMode::Owner).unwrap())
}

/// One admitted GCRA check and update of `key`'s cell in `scope`, at `now`, in a session of
/// its own (as a decision on one limit has).
fn check<S: Store>(store: &S, scope: &S::Scope, key: &str, now: Now, rate: &RateParams) -> bool {
    store
        .update_cell(&mut store.session(), scope, key, now, |tat| {
            match gcra::decide(tat, now.monotonic_ns, 1, rate, 0) {
                gcra::RateOutcome::Admit { new_tat, .. } => Update::Write(new_tat, true),
                gcra::RateOutcome::Deny { .. } => Update::Keep(false),
            }
        })
        .unwrap()
}

fn per_check(c: &mut Criterion) {
    let rate = RateParams::new(Rate::parse("1G/s").unwrap(), None).unwrap();
    let start = SystemClock.now();
    let local = LocalStore::new();
    let local_scope = local.scope("check", CellKind::Rate).unwrap();
    c.bench_function("one check, in-process", |b| {
        let mut now = start;
        b.iter(|| {
            now.monotonic_ns += 1;
            assert!(check(
                &local,
                &local_scope,
                std::hint::black_box("tenant:acme"),
                now,
                &rate
            ))
        })
    });
    let path = table_path();
    let shared = shared_store(&path);
    let shared_scope = shared.scope("check", CellKind::Rate).unwrap();
    c.bench_function("one check, shared memory", |b| {
        let mut now = start;
        b.iter(|| {
            now.monotonic_ns += 1;
            assert!(check(
                &*shared,
                &shared_scope,
                std::hint::black_box("tenant:acme"),
                now,
                &rate
            ))
        })
    });
    drop(shared);
    let _ = SharedStore::remove("bench", Some(path));
}

fn per_acquire(c: &mut Criterion) {
    let path = table_path();
    for dims in [&["requests"][..], &["requests", "tokens"][..]] {
        let amounts = vec![1u64; dims.len()];
        let local = Engine::new(Arc::new(LocalStore::new()), Arc::new(SystemClock), &policy(dims)).unwrap();
        c.bench_function(&format!("acquire, in-process, {} dim", dims.len()), |b| {
            b.iter(|| assert!(acquire_in_place(&local, "tenant:acme", &amounts)))
        });
        let shared = Engine::new(shared_store(&path), Arc::new(SystemClock), &policy(dims)).unwrap();
        c.bench_function(&format!("acquire, shared memory, {} dim", dims.len()), |b| {
            b.iter(|| assert!(acquire_in_place(&shared, "tenant:acme", &amounts)))
        });
    }
    let _ = SharedStore::remove("bench", Some(path));
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = per_check, per_acquire
}

const RUN: Duration = Duration::from_secs(1);

/// A child: acquires on its key until told time is up; prints how many it did.
fn hammer(key: &str, path: PathBuf) {
    let engine = Engine::new(
        shared_store(&path),
        Arc::new(SystemClock),
        &policy(&["requests", "tokens"]),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let mut done = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..256 {
            acquire_in_place(&engine, key, &[1, 1]);
        }
        done += 256;
    }
    println!("DONE {done}");
}

/// Millions of acquires per second from `processes` processes, on one key or one key each.
fn throughput(processes: usize, one_key: bool) -> f64 {
    let path = PathBuf::from(format!("/dev/shm/llmthrottle-bench-tp-{}", std::process::id()));
    let _table = shared_store(&path);
    let children: Vec<_> = (0..processes)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .env(
                    "LLMTHROTTLE_BENCH_CHILD",
                    if one_key { "hot".to_string() } else { format!("key{i}") },
                )
                .env("LLMTHROTTLE_BENCH_PATH", &path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0u64;
    for mut child in children {
        let out = BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            if let Some(n) = line.unwrap().strip_prefix("DONE ") {
                total += n.parse::<u64>().unwrap();
            }
        }
        child.wait().unwrap();
    }
    let _ = SharedStore::remove("bench", Some(path));
    total as f64 / RUN.as_secs_f64() / 1e6
}

fn main() {
    if let Ok(key) = std::env::var("LLMTHROTTLE_BENCH_CHILD") {
        hammer(&key, std::env::var("LLMTHROTTLE_BENCH_PATH").unwrap().into());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!("\naggregate throughput, shared memory, 2 dims (M acquires/s):");
    println!("{:>10} {:>10} {:>14}", "processes", "one key", "distinct keys");
    for processes in [1, 2] {
        println!(
            "{processes:>10} {:>10.2} {:>14.2}",
            throughput(processes, true),
            throughput(processes, false)
        );
    }
}
