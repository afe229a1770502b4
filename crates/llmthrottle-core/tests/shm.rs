//! The shared-memory store: the engine's whole behaviour suite over a shared table, then what
//! only shared memory has to get right: real processes hammering one limit, a process killed
//! while holding concurrency slots, many processes creating one table at once, hash collisions,
//! a full table, and every kind of bad file, path or name.
//!
//! Child processes are this test binary run again with `LLMTHROTTLE_SHM_CHILD` set: it then
//! runs only `child_process`, which plays the role named in that variable.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llmthrottle_core::shm::SharedEntry;
use llmthrottle_core::*;

/// The engine's behaviour tests (tests/engine.rs), unchanged, on shared memory.
#[path = "engine.rs"]
mod behaviour;

mod store_under_test {
    pub type TestStore = llmthrottle_core::SharedStore;
    pub fn new_store() -> TestStore {
        super::fresh_store(&llmthrottle_core::SharedOptions {
            capacity: 4096,
            ..Default::default()
        })
    }
}

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;

/// Shared by every run; each test removes what it made.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("llmthrottle-shm-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    scratch_dir().join(format!("{tag}-{}-{n}", std::process::id()))
}

/// A table of its own, whose file is already unlinked (the mapping lives on).
fn fresh_store(options: &SharedOptions) -> SharedStore {
    let path = unique_path("table");
    let store = SharedStore::open_with(
        "test",
        &SharedOptions {
            path: Some(path.clone()),
            ..options.clone()
        },
    )
    .unwrap();
    assert!(store.created());
    std::fs::remove_file(path).unwrap();
    store
}

use behaviour::{rate, spec};

fn monotonic_ns() -> u64 {
    SystemClock.now().monotonic_ns
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// The scenarios children hammer: every process builds the same policy from the name.
fn scenario(name: &str) -> PolicySpec {
    match name {
        // Bursts of 200 ms of rate, so that a process descheduled for less loses no quota.
        // One limit on one key.
        "one" => spec(vec![("*", vec![("requests", rate("20k/s", Some(4000)))])]),
        // Two dimensions: tokens bind, requests must still hold.
        "two" => spec(vec![(
            "*",
            vec![
                ("requests", rate("20k/s", Some(4000))),
                ("tokens", rate("100k/s", Some(20_000))),
            ],
        )]),
        // Four users and their team, all or nothing: the team binds.
        "keys" => spec(vec![
            ("user:*", vec![("requests", rate("1000/s", Some(200)))]),
            ("team:*", vec![("requests", rate("3000/s", Some(600)))]),
        ]),
        "held" => spec(vec![("*", vec![("concurrency", LimitKind::Concurrency { max: 4 })])]),
        "churn" => spec(vec![(
            "*",
            vec![
                ("concurrency", LimitKind::Concurrency { max: 1000 }),
                ("requests", rate("1G/s", None)),
            ],
        )]),
        other => panic!("no scenario {other}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn open_for_child() -> SharedStore {
    SharedStore::open("child", 4096, Some(env("SHM_PATH").into()), FileMode::Owner).unwrap()
}

/// Admitted amounts per (key, dimension), and the span of time the attempts covered.
fn hammer(scenario_name: &str) {
    let store = Arc::new(open_for_child());
    let engine = Engine::new(store, Arc::new(SystemClock), &scenario(scenario_name)).unwrap();
    let start: u64 = env("SHM_START").parse().unwrap();
    let end = start + env("SHM_DURATION").parse::<u64>().unwrap();
    while monotonic_ns() < start {
        std::hint::spin_loop();
    }
    let mut seed = std::process::id() as u64 | 1;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut admitted: Vec<(String, u64, u64)> = Vec::new(); // key, requests, tokens
    let (mut first, mut last) = (u64::MAX, 0);
    loop {
        let before = monotonic_ns();
        if before >= end {
            break;
        }
        first = first.min(before);
        let (keys, amounts): (Vec<String>, Vec<u64>) = match scenario_name {
            "one" => (vec!["k".into()], vec![1]),
            "two" => (vec!["k".into()], vec![1, 1 + random(16)]),
            _ => (vec![format!("user:{}", random(4)), "team:t".into()], vec![1]),
        };
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (decision, _) = engine.acquire(&key_refs, &amounts, 0).unwrap();
        last = monotonic_ns();
        if decision.allowed {
            for key in keys {
                let tokens = amounts.get(1).copied().unwrap_or(0);
                match admitted.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(entry) => {
                        entry.1 += 1;
                        entry.2 += tokens;
                    }
                    None => admitted.push((key, 1, tokens)),
                }
            }
        }
    }
    let counts: Vec<String> = admitted.iter().map(|(k, r, t)| format!("{k}={r},{t}")).collect();
    println!("RESULT {first} {last} {}", counts.join(" "));
}

fn hold_and_wait() {
    let engine = Engine::new(Arc::new(open_for_child()), Arc::new(SystemClock), &scenario("held")).unwrap();
    let count: usize = env("SHM_COUNT").parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..count {
        let (decision, reservation) = engine.acquire(&["k"], &[], 0).unwrap();
        assert!(decision.allowed);
        held.push(reservation.unwrap());
    }
    println!("HELD");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

fn churn() {
    let engine = Engine::new(Arc::new(open_for_child()), Arc::new(SystemClock), &scenario("churn")).unwrap();
    println!("CHURNING");
    std::io::stdout().flush().unwrap();
    let mut held = Vec::new();
    let mut n = 0u64;
    loop {
        n += 1;
        let key = format!("k{}", n % 3);
        let (_, reservation) = engine.acquire(&[&key], &[0, 1], 0).unwrap();
        if let Some(r) = reservation {
            held.push((r, key));
        }
        if held.len() > 5 {
            let (mut r, key) = held.remove((n % 5) as usize);
            if n % 2 == 0 {
                engine.commit(&mut r, &[&key], &[]).unwrap();
            } else {
                engine.cancel(&mut r, &[&key]).unwrap();
            }
        }
    }
}

fn open_at_once() {
    let start: u64 = env("SHM_START").parse().unwrap();
    while monotonic_ns() < start {
        std::hint::spin_loop();
    }
    let store = open_for_child();
    println!("TABLE {} {}", store.table_id(), store.created());
}

/// Works after fork(): the child shares the parent's table through the inherited store, and
/// handles made before the fork stay the parent's.
fn fork_and_share() {
    let store = Arc::new(open_for_child());
    let engine = Engine::new(store, Arc::new(SystemClock), &scenario("held")).unwrap();
    let (_, parent_reservation) = engine.acquire(&["k"], &[], 0).unwrap();
    let parent_reservation = parent_reservation.unwrap();
    // SAFETY: this process runs one test thread; the child only calls the engine and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let (decision, reservation) = engine.acquire(&["k"], &[], 0).unwrap();
        let used = engine.status("k").unwrap()[0].used;
        drop(reservation);
        // An inherited reservation is the parent's: dropping it here releases nothing.
        drop(parent_reservation);
        let after = engine.status("k").unwrap()[0].used;
        let code = if decision.allowed && used == 2 && after == 1 {
            0
        } else {
            1
        };
        // SAFETY: leaves the forked child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child saw the wrong counts"
    );
    assert_eq!(
        engine.status("k").unwrap()[0].used,
        1,
        "the child's unit came back, ours stays"
    );
    drop(parent_reservation);
    assert_eq!(engine.status("k").unwrap()[0].used, 0);
    println!("FORK OK");
}

/// Not a test of its own: the entry point of child processes (a no-op in the parent).
#[test]
fn child_process() {
    let Ok(role) = std::env::var("LLMTHROTTLE_SHM_CHILD") else {
        return;
    };
    match role.as_str() {
        "hammer" => hammer(&env("SHM_SCENARIO")),
        "hold" => hold_and_wait(),
        "churn" => churn(),
        "open" => open_at_once(),
        "fork" => fork_and_share(),
        other => panic!("no role {other}"),
    }
}

fn spawn(role: &str, vars: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "child_process", "--nocapture", "--test-threads=1", "-q"])
        .env("LLMTHROTTLE_SHM_CHILD", role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in vars {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

/// The child's first stdout line starting with `prefix` (without it).
fn read_line(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.as_mut().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("child ended before printing {prefix}"))
            .unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Many processes, one limit

struct Hammered {
    first: u64,
    last: u64,
    /// key -> (requests, tokens)
    admitted: Vec<(String, u64, u64)>,
}

fn hammer_from_processes(scenario_name: &str, processes: usize, duration_ns: u64) -> Hammered {
    // One hammering at a time: three at once on a small machine starve each other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let path = unique_path("hammer");
    // Created by the parent so that children only attach.
    let _table = SharedStore::open("child", 4096, Some(path.clone()), FileMode::Owner).unwrap();
    let start = monotonic_ns() + 300 * MS;
    let children: Vec<Child> = (0..processes)
        .map(|_| {
            spawn(
                "hammer",
                &[
                    ("SHM_PATH", path.display().to_string()),
                    ("SHM_SCENARIO", scenario_name.into()),
                    ("SHM_START", start.to_string()),
                    ("SHM_DURATION", duration_ns.to_string()),
                ],
            )
        })
        .collect();
    let mut total = Hammered {
        first: u64::MAX,
        last: 0,
        admitted: Vec::new(),
    };
    for mut child in children {
        let result = read_line(&mut child, "RESULT ");
        assert!(child.wait().unwrap().success());
        let mut parts = result.split(' ');
        total.first = total.first.min(parts.next().unwrap().parse().unwrap());
        total.last = total.last.max(parts.next().unwrap().parse().unwrap());
        for entry in parts.filter(|p| !p.is_empty()) {
            let (key, counts) = entry.split_once('=').unwrap();
            let (requests, tokens) = counts.split_once(',').unwrap();
            let (requests, tokens): (u64, u64) = (requests.parse().unwrap(), tokens.parse().unwrap());
            match total.admitted.iter_mut().find(|(k, _, _)| k == key) {
                Some(e) => {
                    e.1 += requests;
                    e.2 += tokens;
                }
                None => total.admitted.push((key.into(), requests, tokens)),
            }
        }
    }
    SharedStore::remove("child", Some(path)).unwrap();
    total
}

/// GCRA's guarantee over the window the attempts spanned: amount * emission <= tolerance + window.
fn assert_within(limit: &LimitKind, admitted: u64, window_ns: u64, what: &str) {
    let LimitKind::Rate(p) = limit else { unreachable!() };
    assert!(
        admitted as u128 * p.emission_ns as u128 <= p.tolerance_ns as u128 + window_ns as u128,
        "{what}: {admitted} admitted within {window_ns} ns exceeds burst {} + rate",
        p.burst
    );
}

/// Most of burst + rate * duration was used: the limit admits, it does not only deny. How
/// much depends on the machine (processes that are not scheduled make no attempts), so the
/// test asks for half; benches/bench_shared.py measures how close to all of it a quiet machine
/// comes.
fn assert_used(limit: &LimitKind, admitted: u64, duration_ns: u64, what: &str) {
    let LimitKind::Rate(p) = limit else { unreachable!() };
    let quota = p.burst as f64 + duration_ns as f64 / p.emission_ns as f64;
    assert!(
        admitted as f64 >= 0.5 * quota,
        "{what}: only {admitted} of {quota} admitted"
    );
}

const PROCESSES: usize = 8;
const HAMMER_NS: u64 = 2 * S;

#[test]
fn processes_hammering_one_limit_never_over_admit() {
    let result = hammer_from_processes("one", PROCESSES, HAMMER_NS);
    let limit = &scenario("one").rules[0].limits[0].kind;
    let requests = result.admitted[0].1;
    println!("one limit, {PROCESSES} processes: {requests} admitted");
    assert_within(limit, requests, result.last - result.first, "requests");
    assert_used(limit, requests, HAMMER_NS, "requests");
}

#[test]
fn processes_hammering_two_dimensions_never_over_admit() {
    let result = hammer_from_processes("two", PROCESSES, HAMMER_NS);
    let limits = &scenario("two").rules[0].limits;
    let (_, requests, tokens) = result.admitted[0];
    println!("two dimensions, {PROCESSES} processes: {requests} requests, {tokens} tokens admitted");
    let window = result.last - result.first;
    assert_within(&limits[0].kind, requests, window, "requests");
    assert_within(&limits[1].kind, tokens, window, "tokens");
    assert_used(&limits[1].kind, tokens, HAMMER_NS, "tokens");
}

#[test]
fn processes_hammering_several_keys_never_over_admit() {
    let result = hammer_from_processes("keys", PROCESSES, HAMMER_NS);
    let policy = scenario("keys");
    let (user_limit, team_limit) = (&policy.rules[0].limits[0].kind, &policy.rules[1].limits[0].kind);
    let window = result.last - result.first;
    let mut users = 0;
    for (key, requests, _) in &result.admitted {
        if key.starts_with("user:") {
            assert_within(user_limit, *requests, window, key);
            users += requests;
        }
    }
    let team = result.admitted.iter().find(|(k, _, _)| k == "team:t").unwrap().1;
    println!("several keys, {PROCESSES} processes: team {team}, users {users}");
    assert_eq!(
        users, team,
        "all or nothing: every admitted call charged its user and the team"
    );
    assert_within(team_limit, team, window, "team");
    assert_used(team_limit, team, HAMMER_NS, "team");
}

// ---------------------------------------------------------------------------------------------
// Crashes

fn held_engine(path: &std::path::Path) -> Engine<SharedStore> {
    let store = SharedStore::open("child", 4096, Some(path.into()), FileMode::Owner).unwrap();
    Engine::new(Arc::new(store), Arc::new(SystemClock), &scenario("held")).unwrap()
}

#[test]
fn concurrency_slots_of_a_killed_process_come_back() {
    let path = unique_path("killed");
    let engine = held_engine(&path);
    let mut child = spawn(
        "hold",
        &[("SHM_PATH", path.display().to_string()), ("SHM_COUNT", "3".into())],
    );
    read_line(&mut child, "HELD");
    let (decision, last_one) = engine.acquire(&["k"], &[], 0).unwrap();
    assert!(decision.allowed);
    assert!(!engine.acquire(&["k"], &[], 0).unwrap().0.allowed, "4 of 4 held");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(5)); // past the per-process reap throttle
    let mut again = Vec::new();
    for _ in 0..3 {
        let (decision, r) = engine.acquire(&["k"], &[], 0).unwrap();
        assert!(decision.allowed, "the killed process's slots are given back");
        again.push(r.unwrap());
    }
    assert!(
        !engine.acquire(&["k"], &[], 0).unwrap().0.allowed,
        "and no more than those"
    );
    drop(again);
    drop(last_one);
    assert_eq!(engine.status("k").unwrap()[0].used, 0);
    assert!(engine.store().leases().is_empty());
    SharedStore::remove("child", Some(path)).unwrap();
}

/// Processes killed at random instants while taking and giving back units: once they are all
/// gone, every unit comes back, nothing is over-admitted meanwhile and no slot is corrupt.
#[test]
fn processes_killed_at_random_instants_leak_nothing() {
    let path = unique_path("churn");
    let store = SharedStore::open("child", 4096, Some(path.clone()), FileMode::Owner).unwrap();
    let engine = Engine::new(Arc::new(store), Arc::new(SystemClock), &scenario("churn")).unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _round in 0..6 {
        let mut children: Vec<Child> = (0..3)
            .map(|_| spawn("churn", &[("SHM_PATH", path.display().to_string())]))
            .collect();
        for child in &mut children {
            read_line(child, "CHURNING");
        }
        for mut child in children {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_micros(seed % 40_000));
            child.kill().unwrap();
            child.wait().unwrap();
        }
        for key in ["k0", "k1", "k2"] {
            assert!(engine.status(key).unwrap()[0].used <= 1000);
        }
    }
    engine.store().reap();
    for key in ["k0", "k1", "k2"] {
        assert_eq!(engine.status(key).unwrap()[0].used, 0, "{key}: every unit came back");
    }
    assert!(engine.store().leases().is_empty(), "{:?}", engine.store().leases());
    let entries = engine.store().entries();
    assert!(entries.iter().all(|e| e.key.starts_with('k')), "{entries:?}");
    // The table still works for new and old keys.
    let (decision, _) = engine.acquire(&["k0", "fresh"], &[0, 1], 0).unwrap();
    assert!(decision.allowed);
    SharedStore::remove("child", Some(path)).unwrap();
}

#[test]
fn works_after_fork() {
    let path = unique_path("fork");
    let _table = SharedStore::open("child", 4096, Some(path.clone()), FileMode::Owner).unwrap();
    let mut child = spawn("fork", &[("SHM_PATH", path.display().to_string())]);
    read_line(&mut child, "FORK OK");
    assert!(child.wait().unwrap().success());
    SharedStore::remove("child", Some(path)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// One table, however many open it at once

#[test]
fn processes_opening_at_once_share_exactly_one_table() {
    for _round in 0..3 {
        let path = unique_path("race");
        let start = monotonic_ns() + 200 * MS;
        let children: Vec<Child> = (0..8)
            .map(|_| {
                spawn(
                    "open",
                    &[
                        ("SHM_PATH", path.display().to_string()),
                        ("SHM_START", start.to_string()),
                    ],
                )
            })
            .collect();
        let mut tables = Vec::new();
        for mut child in children {
            tables.push(read_line(&mut child, "TABLE "));
            assert!(child.wait().unwrap().success());
        }
        let created = tables.iter().filter(|t| t.ends_with(" true")).count();
        assert_eq!(created, 1, "{tables:?}");
        let id = tables[0].split(' ').next().unwrap();
        assert!(tables.iter().all(|t| t.starts_with(id)), "{tables:?}");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&format!(".{}.", path.file_name().unwrap().to_string_lossy()))
                    && name.ends_with(".tmp")
            })
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        SharedStore::remove("child", Some(path)).unwrap();
    }
}

#[test]
fn a_second_open_attaches_the_same_table() {
    let path = unique_path("attach");
    let a = SharedStore::open("t", 100, Some(path.clone()), FileMode::Owner).unwrap();
    // A different capacity: the creator's size is what everyone gets.
    let b = SharedStore::open("t", 5000, Some(path.clone()), FileMode::Owner).unwrap();
    assert!(a.created() && !b.created());
    assert_eq!((a.table_id(), b.capacity()), (b.table_id(), 100));
    let policy = spec(vec![("*", vec![("requests", rate("10/min", None))])]);
    let clock = Arc::new(FakeClock::default());
    let ea = Engine::new(Arc::new(a), clock.clone(), &policy).unwrap();
    let eb = Engine::new(Arc::new(b), clock, &policy).unwrap();
    for _ in 0..6 {
        assert!(ea.acquire(&["k"], &[1], 0).unwrap().0.allowed);
    }
    assert_eq!(eb.status("k").unwrap()[0].remaining, 4);
    assert!(SharedStore::attach("t", Some(path.clone())).is_ok());
    assert!(SharedStore::remove("t", Some(path.clone())).unwrap());
    assert!(!SharedStore::remove("t", Some(path.clone())).unwrap());
    let err = SharedStore::attach("t", Some(path)).unwrap_err();
    assert!(
        matches!(err, CoreError::State(ref m) if m.contains("no shared table")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Exactness of the table

/// Every key hashes alike (home and tag): only the stored key bytes tell them apart.
#[test]
fn colliding_keys_never_share_a_counter() {
    let store = fresh_store(&SharedOptions {
        capacity: 400,
        hash_mask: 0,
        ..Default::default()
    });
    let clock = Arc::new(FakeClock::default());
    let policy = spec(vec![("*", vec![("tokens", rate("1000/min", None))])]);
    let engine = Engine::new(Arc::new(store), clock, &policy).unwrap();
    let long = |n: usize| format!("{}{n}", "L".repeat(100));
    let keys: Vec<String> = (0..150).map(|n| format!("user:{n}")).chain((0..20).map(long)).collect();
    for (n, key) in keys.iter().enumerate() {
        assert!(engine.acquire(&[key], &[n as u64 + 1], 0).unwrap().0.allowed);
    }
    for (n, key) in keys.iter().enumerate() {
        assert_eq!(engine.status(key).unwrap()[0].used, n as u64 + 1, "{key}");
    }
    assert_eq!(engine.store().entries().len(), keys.len());
}

/// Keys of every length up to the limit, in two scopes, each with its own counter.
#[test]
fn keys_of_every_length_are_exact() {
    let store = fresh_store(&SharedOptions {
        capacity: 2000,
        long_key_capacity: Some(500),
        ..Default::default()
    });
    let clock = Arc::new(FakeClock::default());
    let policy = spec(vec![
        ("a*", vec![("tokens", rate("1000/min", None))]),
        ("*", vec![("tokens", rate("1000/min", None))]),
    ]);
    let engine = Engine::new(Arc::new(store), clock, &policy).unwrap();
    for len in 1..=MAX_KEY_BYTES {
        for first in ['a', 'b'] {
            let key: String = std::iter::once(first).chain("x".repeat(len - 1).chars()).collect();
            assert!(engine.acquire(&[&key], &[len as u64], 0).unwrap().0.allowed);
        }
    }
    for len in 1..=MAX_KEY_BYTES {
        for first in ['a', 'b'] {
            let key: String = std::iter::once(first).chain("x".repeat(len - 1).chars()).collect();
            assert_eq!(engine.status(&key).unwrap()[0].used, len as u64);
        }
    }
    let entries: Vec<SharedEntry> = engine.store().entries();
    assert_eq!(entries.len(), 2 * MAX_KEY_BYTES);
    assert!(entries
        .iter()
        .all(|e| e.kind == CellKind::Rate && e.scope.starts_with("test\x1f")));
}

#[test]
fn a_full_table_says_how_to_size_it_and_expired_slots_are_reused() {
    let store = fresh_store(&SharedOptions {
        capacity: 8,
        ..Default::default()
    });
    let clock = Arc::new(FakeClock::default());
    let policy = spec(vec![("*", vec![("requests", rate("1/min", None))])]);
    let engine = Engine::new(Arc::new(store), clock.clone(), &policy).unwrap();
    let mut admitted = 0;
    let err = loop {
        match engine.acquire(&[&format!("k{admitted}")], &[1], 0) {
            Ok((decision, _)) => {
                assert!(decision.allowed);
                admitted += 1;
            }
            Err(err) => break err,
        }
    };
    assert!(admitted >= 8, "holds at least its capacity ({admitted})");
    let message = err.to_string();
    assert!(
        matches!(err, CoreError::State(_)) && message.contains("is full") && message.contains("capacity="),
        "{message}"
    );
    // A minute later every entry has drained: their slots take new keys.
    clock.advance(60 * S);
    for n in 0..admitted {
        assert!(engine.acquire(&[&format!("new{n}")], &[1], 0).unwrap().0.allowed);
    }
}

#[test]
fn usage_that_meets_a_full_table_is_still_charged_wherever_it_fits() {
    let store = fresh_store(&SharedOptions {
        capacity: 8,
        ..Default::default()
    });
    let policy = spec(vec![(
        "*",
        vec![("requests", rate("1000/min", None)), ("tokens", rate("1000/min", None))],
    )]);
    let engine = Engine::new(Arc::new(store), Arc::new(FakeClock::default()), &policy).unwrap();
    // "b" has a cell in both dimensions, "a" in requests only; then other keys fill the table.
    assert!(engine.acquire(&["b"], &[0, 1], 0).unwrap().0.allowed);
    let (decision, reservation) = engine.acquire(&["a", "b"], &[1, 0], 0).unwrap();
    let mut reservation = reservation.filter(|_| decision.allowed).expect("admitted");
    let mut filler = 0;
    while engine.acquire(&[&format!("f{filler}")], &[1, 0], 0).is_ok() {
        filler += 1;
    }
    let tokens_used = |key: &str| {
        engine
            .status(key)
            .unwrap()
            .iter()
            .find(|s| s.dimension == "tokens")
            .unwrap()
            .used
    };
    let is_full = |error: CoreError| matches!(error, CoreError::State(ref m) if m.contains("is full"));

    // Tokens were reserved in no dimension: both keys are charged. "a" has no room for a tokens
    // cell; "b", after it, is charged all the same, and the error still says what went wrong.
    let error = engine
        .commit(&mut reservation, &["a", "b"], &[None, Some(5)])
        .unwrap_err();
    assert!(is_full(error));
    assert_eq!(tokens_used("b"), 1 + 5);
    let error = engine.charge_usage(&["a", "b"], &[None, Some(7)]).unwrap_err();
    assert!(is_full(error));
    assert_eq!(tokens_used("b"), 1 + 5 + 7);
    assert!(matches!(
        engine.commit(&mut reservation, &["a", "b"], &[]),
        Err(CoreError::AlreadySettled)
    ));
}

#[test]
fn a_table_of_a_million_keys_fits_in_128_mb() {
    let layout_bytes = {
        let path = unique_path("million");
        let store = SharedStore::open("m", 1_000_000, Some(path.clone()), FileMode::Owner).unwrap();
        SharedStore::remove("m", Some(path)).unwrap();
        store.stats().file_bytes
    };
    assert!(layout_bytes <= 128_000_000, "{layout_bytes} bytes");
}

// ---------------------------------------------------------------------------------------------
// Files, paths and names

fn open_at(path: &std::path::Path) -> Result<SharedStore> {
    SharedStore::open("t", 100, Some(path.into()), FileMode::Owner)
}

fn state_error(result: Result<SharedStore>) -> String {
    match result {
        Err(CoreError::State(message)) => message,
        other => panic!("expected a state error, got {other:?}"),
    }
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let path = unique_path("bad");
    std::fs::write(&path, b"hello").unwrap();
    assert!(state_error(open_at(&path)).contains("only 5 bytes"));
    std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
    assert!(state_error(open_at(&path)).contains("not an llmthrottle shared table"));
    std::fs::remove_file(&path).unwrap();

    // A real table cut short.
    drop(open_at(&path).unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(64 * 1024).unwrap();
    assert!(state_error(open_at(&path)).contains("truncated"));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_table_of_another_layout_version_is_refused() {
    let path = unique_path("version");
    drop(open_at(&path).unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&999u32.to_ne_bytes()); // the layout version follows the magic
    std::fs::write(&path, bytes).unwrap();
    let message = state_error(open_at(&path));
    assert!(
        message.contains("layout 999") && message.contains("state reset"),
        "{message}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unusable_locations_are_clear_errors() {
    // Not writable (even for root): /proc refuses new files.
    let message = state_error(open_at(std::path::Path::new("/proc/llmthrottle-test")));
    assert!(message.contains("cannot"), "{message}");
    // No such directory.
    let message = state_error(open_at(&scratch_dir().join("no/such/dir/table")));
    assert!(message.contains("does not exist"), "{message}");
    // A directory where the file should be.
    let dir = unique_path("dir");
    std::fs::create_dir(&dir).unwrap();
    assert!(open_at(&dir).is_err());
    std::fs::remove_dir(dir).unwrap();
}

#[test]
fn bad_names_and_sizes_are_config_errors() {
    for name in ["", "a/b", "../x", ".hidden", "a b", "x\0y", &"n".repeat(201)] {
        let err = SharedStore::open(name, 100, None, FileMode::Owner).unwrap_err();
        assert!(matches!(err, CoreError::Config(_)), "{name:?}: {err}");
    }
    let path = unique_path("size");
    for capacity in [0, usize::MAX] {
        let err = SharedStore::open("t", capacity, Some(path.clone()), FileMode::Owner).unwrap_err();
        assert!(matches!(err, CoreError::Config(_)), "{capacity}: {err}");
    }
    let long_namespace = PolicySpec {
        namespace: "n".repeat(2000),
        ..spec(vec![("*", vec![("requests", rate("1/s", None))])])
    };
    let store = Arc::new(fresh_store(&SharedOptions::default()));
    let err = Engine::new(store, Arc::new(SystemClock), &long_namespace)
        .err()
        .unwrap();
    assert!(matches!(err, CoreError::Config(_)), "{err}");
}

#[test]
fn files_are_private_unless_group_access_is_asked_for() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, bits) in [(FileMode::Owner, 0o600), (FileMode::Group, 0o660)] {
        let path = unique_path("mode");
        let _store = SharedStore::open("t", 100, Some(path.clone()), mode).unwrap();
        let actual = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, bits);
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn the_default_path_is_under_dev_shm() {
    let name = format!("selftest-{}", std::process::id());
    let store = SharedStore::open(&name, 100, None, FileMode::Owner).unwrap();
    assert_eq!(
        store.path(),
        std::path::Path::new(&format!("/dev/shm/llmthrottle-{name}"))
    );
    assert!(SharedStore::remove(&name, None).unwrap());
}

#[test]
fn inspection_lists_entries_and_leases() {
    let store = Arc::new(fresh_store(&SharedOptions::default()));
    let policy = spec(vec![(
        "*",
        vec![
            ("requests", rate("10/min", None)),
            ("concurrency", LimitKind::Concurrency { max: 5 }),
        ],
    )]);
    let engine = Engine::new(Arc::clone(&store), Arc::new(FakeClock::default()), &policy).unwrap();
    let (_, held) = engine.acquire(&["tenant:acme"], &[1], 0).unwrap();
    let mut entries = store.entries();
    entries.sort_by_key(|e| e.scope.clone());
    assert_eq!(entries.len(), 2);
    assert!(entries[0].scope.ends_with("concurrency:concurrency#0") && entries[0].value == 1);
    assert!(entries[1].scope.ends_with("rate:requests#0") && entries[1].kind == CellKind::Rate);
    assert!(entries.iter().all(|e| e.key == "tenant:acme"));
    let leases = store.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (leases[0].pid, leases[0].alive, leases[0].phase),
        (std::process::id(), true, "held")
    );
    assert_eq!(leases[0].key.as_deref(), Some("tenant:acme"));
    drop(held);
    assert!(store.leases().is_empty());
    let stats = store.stats();
    assert_eq!((stats.live.0, stats.scopes), (2, 2));
}

/// A tiny deterministic generator for the damaged-file tests below.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn damage(path: &std::path::Path, seed: u64, whole_words: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // The header (first page) is checked at open; everything after it is shared words.
    let body = 4096..bytes.len();
    if whole_words {
        for byte in &mut bytes[body] {
            *byte = xorshift(&mut state) as u8;
        }
    } else {
        for _ in 0..64 {
            let at = body.start + (xorshift(&mut state) as usize % (body.len() / 8)) * 8;
            bytes[at..at + 8].copy_from_slice(&xorshift(&mut state).to_ne_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_table_is_never_followed_out_of_bounds() {
    let policy = spec(vec![(
        "*",
        vec![
            ("requests", rate("100/s", None)),
            ("concurrency", LimitKind::Concurrency { max: 3 }),
        ],
    )]);
    for seed in 1..=24u64 {
        let path = unique_path("damaged");
        {
            let store = Arc::new(open_at(&path).unwrap());
            let engine = Engine::new(Arc::clone(&store), Arc::new(SystemClock), &policy).unwrap();
            for key in ["tenant:a", "tenant:b", &"long-key-".repeat(8)] {
                let _ = engine.acquire(&[key], &[1], 0);
            }
        }
        damage(&path, seed, seed % 2 == 0);
        // Whatever the words say, every operation ends in a value or an error, never a signal.
        if let Ok(store) = open_at(&path) {
            let store = Arc::new(store);
            let _ = store.entries();
            let _ = store.leases();
            let _ = store.reap();
            if let Ok(engine) = Engine::new(Arc::clone(&store), Arc::new(SystemClock), &policy) {
                for key in ["tenant:a", "tenant:b", "tenant:c", &"long-key-".repeat(8)] {
                    let _ = engine.acquire(&[key], &[1], 0);
                }
            }
            let _ = store.entries();
        }
        std::fs::remove_file(&path).unwrap();
    }
}

/// A table file with holes (made sparse by `truncate` or a sparse copy) passes every check, and
/// its first write to a hole allocates a page: on a full tmpfs, a SIGBUS in every process using
/// it. Attaching allocates the holes, or fails with an error when there is no room for them.
#[test]
fn attaching_a_sparse_table_file_allocates_its_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let made = unique_path("dense");
    drop(open_at(&made).unwrap());
    let table = std::fs::read(&made).unwrap();
    std::fs::remove_file(&made).unwrap();
    // The same table, but only its header written: an empty registry, leases and slots are zeros.
    let path = unique_path("sparse");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(table.len() as u64).unwrap();
    file.write_all_at(&table[..4096], 0).unwrap();
    let allocated = |path: &std::path::Path| std::fs::metadata(path).unwrap().blocks() * 512;
    assert!(allocated(&path) < table.len() as u64, "the file system kept the holes");
    let store = Arc::new(open_at(&path).unwrap());
    assert!(!store.created());
    assert!(
        allocated(&path) >= table.len() as u64,
        "every page is allocated once attached"
    );
    let engine = Engine::new(
        store,
        Arc::new(SystemClock),
        &spec(vec![("*", vec![("requests", rate("10/s", None))])]),
    );
    assert!(engine.unwrap().acquire(&["k"], &[1], 0).unwrap().0.allowed);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn tables_another_user_could_change_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let path = unique_path("owner");
    drop(open_at(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let message = state_error(open_at(&path));
    assert!(message.contains("writable beyond what was asked"), "{message}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    drop(open_at(&path).unwrap());
    // SAFETY: plain query of this process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        // Root can hand the file to another uid, as an attacker who pre-created it would have.
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid C string.
        assert_eq!(unsafe { libc::chown(c_path.as_ptr(), 65534, 65534) }, 0);
        let message = state_error(open_at(&path));
        assert!(message.contains("belongs to uid 65534"), "{message}");
    }
    std::fs::remove_file(&path).unwrap();
}
