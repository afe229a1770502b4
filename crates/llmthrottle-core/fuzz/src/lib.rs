//! What the fuzz targets do, kept out of the `fuzz_targets/` stubs so that the core's own test
//! suite replays the same logic without cargo-fuzz (crates/llmthrottle-core/tests/fuzz_replay.rs
//! includes this file): it may use only `llmthrottle_core` and std.
//!
//! The promise under test: whatever bytes a shared table file holds, attaching to it either
//! fails with an error or works, and every operation on it then ends in a value or an error,
//! never a panic, a signal or a read outside the mapping. Two ways in:
//!
//! - `table_file`: the input is the whole file. Only the fields naming the host it was made on
//!   (boot id, pid namespace) are overwritten with this host's, or nearly every input would be
//!   refused as "from an earlier boot" and the fuzzer would never get past the header.
//! - `table_damage`: a valid table is created and used, then fuzzer-chosen words of its regions
//!   (header, limit registry, lease records, slots) are overwritten through the file, and both the
//!   process that had it open and a newly attached one go on using it. Random bytes alone rarely
//!   pass the header check; this puts almost every input past it.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use llmthrottle_core::*;

const S: u64 = 1_000_000_000;
const NAME: &str = "fuzz";

/// The keys every script uses: two short ones under `user:*`, one under `*` only, and one too
/// long for a short slot (it lives in the long table).
const KEYS: [&str; 4] = [
    "user:a",
    "user:b",
    "team:x",
    "user:a-key-long-enough-for-the-long-slots-of-the-table-0123456789",
];

/// Every kind of limit, in two layers, with concurrency caps small enough to fill.
pub fn policy() -> PolicySpec {
    let rate =
        |text: &str, burst: Option<u64>| LimitKind::Rate(RateParams::new(Rate::parse(text).unwrap(), burst).unwrap());
    let limit = |dimension: &str, kind: LimitKind| LimitSpec {
        dimension: dimension.into(),
        kind,
    };
    PolicySpec {
        namespace: "fuzz".into(),
        rules: vec![
            RuleSpec {
                pattern: "user:*".into(),
                layer: 0,
                limits: vec![
                    limit("requests", rate("10/s", Some(5))),
                    limit("tokens", rate("1000/min", None)),
                    limit(CONCURRENCY, LimitKind::Concurrency { max: 2 }),
                ],
            },
            RuleSpec {
                pattern: "*".into(),
                layer: 0,
                limits: vec![
                    limit("requests", rate("100/s", None)),
                    limit(
                        "tokens",
                        LimitKind::Quota(QuotaParams {
                            limit: 5_000,
                            period: Period::Day,
                        }),
                    ),
                ],
            },
            RuleSpec {
                pattern: "*".into(),
                layer: 1,
                limits: vec![
                    limit(
                        "cost_usd",
                        LimitKind::Quota(QuotaParams {
                            limit: 2_000_000,
                            period: Period::Fixed(3_600 * S),
                        }),
                    ),
                    limit(CONCURRENCY, LimitKind::Concurrency { max: 3 }),
                ],
            },
        ],
    }
}

/// A directory for the table files: `LLMTHROTTLE_FUZZ_DIR` (scripts/fuzz-table makes one and
/// removes it), else `llmthrottle-fuzz` on tmpfs when the host has one (a file is written per
/// input, named by pid, and removed after it).
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LLMTHROTTLE_FUZZ_DIR") {
            return PathBuf::from(dir);
        }
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join("llmthrottle-fuzz");
        std::fs::create_dir_all(&dir).expect("scratch directory for table files");
        dir
    })
}

fn scratch_path(tag: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    scratch_dir().join(format!("{tag}-{}-{n}", std::process::id()))
}

/// A file only its owner can write: the store refuses one writable beyond the mode it asks for.
fn write_private(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create a table file");
    file.write_all_at(bytes, 0).expect("write a table file");
}

/// The header bytes that tie a table to this host (boot id, pid namespace), and where they lie.
struct HostFields {
    range: std::ops::Range<usize>,
    bytes: Vec<u8>,
}

fn host_fields() -> &'static HostFields {
    static HOST: OnceLock<HostFields> = OnceLock::new();
    HOST.get_or_init(|| {
        let path = scratch_path("reference");
        let store = SharedStore::open(NAME, 1, Some(path.clone()), FileMode::Owner).expect("a reference table");
        let range = region(&store, "header.host");
        let bytes = std::fs::read(&path).expect("read the reference table")[range.clone()].to_vec();
        drop(store);
        let _ = std::fs::remove_file(&path);
        HostFields { range, bytes }
    })
}

fn region(store: &SharedStore, name: &str) -> std::ops::Range<usize> {
    let (_, range) = store
        .regions()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("a region of that name");
    range.start as usize..range.end as usize
}

/// Reads fuzzer bytes as choices; past the end every choice is 0.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Input(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | (self.u32() as u64) << 32
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.byte() as usize % choices.len()]
    }
}

/// The input is a whole table file.
pub fn table_file(data: &[u8]) {
    let host = host_fields();
    let mut bytes = data.to_vec();
    if bytes.len() >= host.range.end {
        bytes[host.range.clone()].copy_from_slice(&host.bytes);
    }
    let path = scratch_path("file");
    write_private(&path, &bytes);
    if let Ok(store) = SharedStore::attach(NAME, Some(path.clone())) {
        let store = Arc::new(store);
        let clock = Arc::new(FakeClock::default());
        inspect(&store);
        if let Ok(engine) = Engine::new(Arc::clone(&store), clock.clone(), &policy()) {
            // A fixed mix of steps (see `step`): acquisitions, settling, status, peek, usage.
            let mut script = Input::new(&[
                0, 0x0F, 7, 1, 0, 0x0F, 9, 2, 4, 0, 5, 6, 3, 0, 1, 7, 4, 0, 0x0F, 9, 2, 11, 8,
            ]);
            run(&engine, &clock, &path, &mut script);
        }
        inspect(&store);
    }
    let _ = std::fs::remove_file(&path);
}

/// A valid table, used, then damaged word by word through its file.
pub fn table_damage(data: &[u8]) {
    let mut input = Input::new(data);
    let config = input.byte();
    let path = scratch_path("damaged");
    let options = SharedOptions {
        capacity: [1, 8, 40][config as usize % 3],
        long_key_capacity: Some([1, 4][(config as usize / 3) % 2]),
        lease_capacity: [1, 3, 16][(config as usize / 6) % 3],
        // Every key on one home slot and one tag: probing and collisions everywhere.
        hash_mask: if config & 0x80 != 0 { 0 } else { u64::MAX },
        path: Some(path.clone()),
        ..SharedOptions::default()
    };
    let creator = Arc::new(SharedStore::open_with(NAME, &options).expect("create a fuzz table"));
    let clock = Arc::new(FakeClock::default());
    let engine = Engine::new(Arc::clone(&creator), clock.clone(), &policy()).expect("a policy on a fresh table");
    // Something in every region: registered limits, live cells in both tables, held leases.
    let mut warm = Input::new(&[0, 0x0F, 7, 1, 0, 0x0F, 9, 2, 0, 0x07, 7, 1]);
    let held = run_keeping(&engine, &clock, &path, &mut warm);

    let regions = creator.regions();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the table file");
    for _ in 0..input.byte() % 32 {
        let (_, range) = &regions[input.byte() as usize % regions.len()];
        let len = (range.end - range.start).max(1);
        let offset = range.start + input.u32() as u64 % len;
        let aligned = offset & !7;
        match input.byte() % 4 {
            0 => file.write_all_at(&[input.byte()], offset),
            1 => file.write_all_at(&input.u64().to_ne_bytes(), aligned),
            2 => file.write_all_at(&(input.u32() as u64).to_ne_bytes(), aligned),
            _ => file.write_all_at(&interesting(&mut input).to_ne_bytes(), aligned),
        }
        .expect("damage the table file");
    }
    drop(file);

    // The process that had it open goes on; one attaching now checks the header first.
    run(&engine, &clock, &path, &mut input);
    inspect(&creator);
    if let Ok(attached) = SharedStore::attach(NAME, Some(path.clone())) {
        let attached = Arc::new(attached);
        inspect(&attached);
        if let Ok(second) = Engine::new(Arc::clone(&attached), clock.clone(), &policy()) {
            run(&second, &clock, &path, &mut input);
        }
        inspect(&attached);
    }
    drop(held);
    drop(engine);
    inspect(&creator);
    let _ = std::fs::remove_file(&path);
}

/// Words a damaged table is likely to hold: edges, phase bits of slots, scopes and leases, and
/// this process's pid where a lease keeps an owner (and in a live slot's life number). Not our pid on a
/// slot or registry entry being written: a live writer is waited for, 5 s per look, by design.
fn interesting(input: &mut Input<'_>) -> u64 {
    let pid = std::process::id() as u64;
    input.pick(&[
        0,
        1,
        2,
        0xFF,
        u32::MAX as u64,
        u64::MAX,
        u64::MAX - 1,
        1 << 62,
        2 << 62,
        3 << 62,
        (3 << 62) | 1,
        (3 << 62) | 0xFF_FFFF,
        (2 << 62) | (1 << 40),
        1 << 61,
        2 << 61,
        5 << 61,
        6 << 61,
        (2 << 61) | (1 << 60) | 0xFFFF,
        (2 << 61) | 7,
        (1 << 61) | (pid << 32),
        (2 << 61) | (pid << 32),
        (3 << 62) | (pid << 40),
        (1 << 8) | 255,
        (1 << 8) | 41,
        1 << 63,
    ])
}

fn inspect(store: &SharedStore) {
    let _ = store.stats();
    let _ = store.entries();
    let _ = store.leases();
    let _ = store.reap();
    let _ = store.capacity();
}

type Held = Vec<(Reservation<SharedStore>, Vec<&'static str>)>;

/// Runs the script's steps; reservations still open at the end are dropped.
fn run(engine: &Engine<SharedStore>, clock: &FakeClock, path: &Path, script: &mut Input<'_>) {
    drop(run_keeping(engine, clock, path, script));
}

/// Runs steps until the script ends (at most 48), returning the reservations still open.
fn run_keeping(engine: &Engine<SharedStore>, clock: &FakeClock, path: &Path, script: &mut Input<'_>) -> Held {
    let mut open: Held = Vec::new();
    for _ in 0..48 {
        if script.is_empty() {
            break;
        }
        step(engine, clock, path, script, &mut open);
    }
    open
}

fn keys_of(mask: u8) -> Vec<&'static str> {
    let keys: Vec<&'static str> = KEYS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, k)| *k)
        .collect();
    if keys.is_empty() {
        vec![KEYS[0]]
    } else {
        keys
    }
}

fn amounts(script: &mut Input<'_>) -> Vec<u64> {
    // requests, tokens, concurrency (ignored), cost_usd: small, with an occasional large one.
    let b = script.byte();
    vec![
        (b & 3) as u64,
        [0, 1, 40, 900][(b >> 2 & 3) as usize],
        0,
        [0, 1, 5_000, 600_000][(b >> 4 & 3) as usize],
    ]
}

fn actual(script: &mut Input<'_>) -> Vec<Option<u64>> {
    let b = script.byte();
    vec![
        (b & 1 != 0).then_some((b >> 4) as u64 % 3),
        (b & 2 != 0).then_some([0, 3, 500, 10_000][(b >> 6) as usize]),
        None,
        (b & 4 != 0).then_some(1_000_000),
    ]
}

fn step(engine: &Engine<SharedStore>, clock: &FakeClock, path: &Path, script: &mut Input<'_>, open: &mut Held) {
    match script.byte() % 12 {
        0 => {
            let keys = keys_of(script.byte());
            let amounts = amounts(script);
            let wait = [0, S / 10, 5 * S][script.byte() as usize % 3];
            if let Ok((_, Some(reservation))) = engine.acquire(&keys, &amounts, wait) {
                if open.len() >= 4 {
                    open.remove(0);
                }
                open.push((reservation, keys));
            }
        }
        1 => {
            if let Some((mut reservation, keys)) = open.pop() {
                let actual = actual(script);
                let _ = engine.commit(&mut reservation, &keys, &actual);
            }
        }
        2 => {
            if let Some((mut reservation, keys)) = open.pop() {
                let _ = engine.cancel(&mut reservation, &keys);
            }
        }
        3 => {
            if !open.is_empty() {
                open.remove(script.byte() as usize % open.len());
            }
        }
        4 => {
            let _ = engine.status(KEYS[script.byte() as usize % KEYS.len()]);
        }
        5 => {
            let keys = keys_of(script.byte());
            let _ = engine.peek(&keys, &amounts(script));
        }
        6 => {
            let keys = keys_of(script.byte());
            let _ = engine.charge_usage(&keys, &actual(script));
        }
        7 => clock.advance([S / 1000, S, 3_600 * S, 2 * 86_400 * S, 40 * 86_400 * S][script.byte() as usize % 5]),
        8 => inspect(engine.store()),
        9 => {
            // Many distinct keys: inserts, probing past the window, a full table, reclaims.
            let base = script.byte() as usize;
            let names: Vec<String> = (0..24).map(|n| format!("k{}", base + n)).collect();
            for name in &names {
                let _ = engine.acquire(&[name], &[1, 1, 0, 0], 0);
            }
        }
        10 => {
            // Another process's view of the same file, for one decision.
            if let Ok(other) = SharedStore::attach(NAME, Some(path.to_path_buf())) {
                if let Ok(other) = Engine::new(Arc::new(other), Arc::new(FakeClock::default()), &policy()) {
                    let _ = other.acquire(&keys_of(script.byte()), &[1, 1, 0, 1], 0);
                }
            }
        }
        _ => {
            let _ = engine.store().reap();
        }
    }
}

/// The parsers of user-written rates, periods, durations and amounts.
pub fn rate_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rate) = Rate::parse(text) {
        assert!(
            rate.amount > 0.0 && rate.amount.is_finite() && rate.period_ns >= 1,
            "{text:?}: {rate:?}"
        );
        let _ = RateParams::new(rate, None);
        let _ = RateParams::new(rate, Some(u64::MAX));
    }
    if let Ok(period) = Period::parse(text) {
        let now = FakeClock::default().now();
        let _ = period.index(now.wall_ns);
        let _ = period.remaining_ns(now.wall_ns);
        let _ = period.start_ns(u64::MAX);
        let _ = period.remaining_ns(u64::MAX);
        let _ = period.start_ns(period.index(u64::MAX));
    }
    let _ = Period::parse_quota(text);
    if let Ok(ns) = llmthrottle_core::rate::parse_duration_ns(text) {
        assert!(ns >= 1, "{text:?}");
    }
    let _ = llmthrottle_core::rate::parse_amount(text);
}

/// A valid table file, and where its regions lie (for mutations aimed at them).
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
    pub regions: Vec<(&'static str, std::ops::Range<u64>)>,
}

/// Table files for the `table_file` corpus: fresh and used tables of a few sizes.
pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for (n, (capacity, leases, mask, script)) in [
        (1, 1, u64::MAX, &[][..]),
        (8, 3, u64::MAX, &[0, 0x0F, 7, 1, 0, 0x0F, 9, 2][..]),
        (8, 3, 0, &[0, 0x0F, 9, 3, 0, 0x0F, 9, 5][..]),
        (40, 16, u64::MAX, &[0, 0x0F, 7, 1, 0, 0x0F, 9, 2, 0, 0x07, 7, 1][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let path = scratch_path("seed");
        let options = SharedOptions {
            capacity,
            long_key_capacity: Some(2),
            lease_capacity: leases,
            hash_mask: mask,
            path: Some(path.clone()),
            ..SharedOptions::default()
        };
        let store = Arc::new(SharedStore::open_with(NAME, &options).expect("a seed table"));
        let clock = Arc::new(FakeClock::default());
        let engine = Engine::new(Arc::clone(&store), clock.clone(), &policy()).expect("a policy");
        // Reservations left open: the file then holds lease records and pins.
        let open = run_keeping(&engine, &clock, &path, &mut Input::new(script));
        seeds.push(Seed {
            name: format!("table-{n}"),
            bytes: std::fs::read(&path).expect("read a seed table"),
            regions: store.regions(),
        });
        drop(open);
        drop(engine);
        drop(store);
        let _ = std::fs::remove_file(&path);
    }
    seeds
}

/// Writes [`seeds`] into `dir` (the `table_file` fuzzer's starting corpus).
pub fn write_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("corpus directory");
    for seed in seeds() {
        std::fs::write(dir.join(seed.name), seed.bytes).expect("write a seed");
    }
}

/// What llmthrottle reads of a provider's replies, from bytes any server may send: the limit
/// headers (each line `name:value`), their reset formats, and where a whole reply's `usage` is.
pub fn provider_reply(data: &[u8]) {
    use llmthrottle_core::announced::{self, HeaderFamily, LimitHeaders};

    for family in [HeaderFamily::OpenAi, HeaderFamily::Azure, HeaderFamily::Anthropic] {
        let mut seen = LimitHeaders::default();
        for line in data.split(|&b| b == b'\n') {
            let at = line.iter().position(|&b| b == b':').unwrap_or(line.len());
            seen.see(family, &line[..at], line.get(at + 1..).unwrap_or_default());
        }
        for now in [0.0, 1.8e9, f64::MAX] {
            for limit in seen.announced(family, now) {
                assert!(limit.window_s > 0.0);
                if let Some(reset) = limit.reset_s {
                    assert!(reset >= 0.0 && !reset.is_nan(), "{limit:?}");
                }
            }
        }
    }
    if let Some(seconds) = announced::parse_reset_duration(data) {
        assert!(seconds >= 0.0 && seconds.is_finite(), "{seconds}");
    }
    if let Some(instant) = announced::parse_rfc3339(data) {
        assert!(instant.is_finite(), "{instant}");
    }
    if let Some((start, end)) = llmthrottle_core::reply::root_usage_span(data) {
        assert!(start < end && end <= data.len());
        assert_eq!((data[start], data[end - 1]), (b'{', b'}'));
        assert!(std::str::from_utf8(data).is_ok());
    }
}
