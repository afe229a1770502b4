//! The fuzz targets (fuzz/, run with cargo-fuzz by scripts/fuzz-table) as a plain test, so that
//! every build exercises them without nightly: the `table_file` seeds and deterministic
//! mutations of them, random `table_damage` scripts, and the parsers; then every input a fuzzer
//! found crashing, kept as a regression. `FUZZ_REPLAY_CASES` scales the random part.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use llmthrottle_core::*;

/// A tiny deterministic generator: the same cases on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("FUZZ_REPLAY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn damaged_table_files_attach_or_fail_with_an_error() {
    let seeds = harness::seeds();
    for seed in &seeds {
        harness::table_file(&seed.bytes);
    }
    let mut random = XorShift(0x5EED_F11E);
    for _ in 0..cases(300) {
        let seed = &seeds[random.below(seeds.len() as u64) as usize];
        let mut bytes = seed.bytes.clone();
        for _ in 0..1 + random.below(8) {
            // Aim at a region (the registry alone is most of the file), then a byte or a word.
            let (_, range) = &seed.regions[random.below(seed.regions.len() as u64) as usize];
            let at = (range.start + random.below(range.end - range.start)) as usize;
            if random.below(2) == 0 {
                bytes[at] = random.next() as u8;
            } else {
                let at = at & !7;
                bytes[at..at + 8].copy_from_slice(&random.next().to_ne_bytes());
            }
        }
        if random.below(16) == 0 {
            bytes.truncate(random.below(bytes.len() as u64) as usize);
        }
        harness::table_file(&bytes);
    }
}

#[test]
fn tables_damaged_while_in_use_end_in_values_or_errors() {
    let mut random = XorShift(0x0DA3_A6ED);
    for _ in 0..cases(300) {
        let len = 8 + random.below(400) as usize;
        let input: Vec<u8> = (0..len).map(|_| random.next() as u8).collect();
        harness::table_damage(&input);
    }
}

#[test]
fn the_parsers_accept_any_text() {
    let alphabet = b"0123456789./_ kKmMgGbBsecondminutehourdayweekmsw\xff";
    let mut random = XorShift(0x9A75E);
    for _ in 0..cases(20_000) {
        let len = random.below(12) as usize;
        let text: Vec<u8> = (0..len)
            .map(|_| alphabet[random.below(alphabet.len() as u64) as usize])
            .collect();
        harness::rate_parse(&text);
    }
}

// ---------------------------------------------------------------------------------------------
// Crashes the fuzzers found, as regressions

/// rate_parse, input `mo`: the start of a month past year 2554 overflowed the date arithmetic
/// (`days_from_civil`) instead of saturating like the other periods.
#[test]
fn period_starts_saturate_at_the_end_of_time() {
    harness::rate_parse(b"mo");
    for period in [
        Period::Day,
        Period::Week,
        Period::Month,
        Period::Fixed(1),
        Period::Fixed(3_600_000_000_000),
    ] {
        assert_eq!(period.start_ns(u64::MAX), u64::MAX, "{period:?}");
        // The last period has no end inside u64: what remains of it is measured to u64::MAX.
        assert_eq!(period.remaining_ns(u64::MAX), 0, "{period:?}");
    }
}

/// table_file: two concurrency cells whose units only orphaned lease records hold, each count
/// near u64::MAX (a damaged file): the reaper gave back both counts and their sum overflowed.
#[test]
fn reaping_damaged_counts_saturates() {
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    let path = std::env::temp_dir().join(format!("llmthrottle-fuzz-reap-{}", std::process::id()));
    let store = Arc::new(SharedStore::open("t", 16, Some(path.clone()), FileMode::Owner).unwrap());
    let policy = harness::policy();
    let engine = Engine::new(Arc::clone(&store), Arc::new(FakeClock::default()), &policy).unwrap();
    let held: Vec<_> = ["user:a", "user:b"]
        .iter()
        .map(|key| engine.acquire(&[key], &[1, 0, 0, 0], 0).unwrap().1.unwrap())
        .collect();
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as u64;
        child.wait().unwrap();
        pid
    };
    // Every lease record becomes PENDING (phase 1) of a dead pid, and its cell a huge count. A
    // record is `phase << 61 | long << 60 | pid << 32 | slot`; a short slot is 64 bytes, its cell
    // the second word.
    let region = |name: &str| store.regions().into_iter().find(|(n, _)| *n == name).unwrap().1;
    let (leases, short) = (region("leases"), region("short"));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut records = 0;
    for at in (leases.start..leases.end).step_by(8) {
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, at).unwrap();
        let word = u64::from_ne_bytes(word);
        if word == 0 || word >> 60 & 1 == 1 {
            continue;
        }
        records += 1;
        let orphaned = 1 << 61 | dead << 32 | word & 0xFFFF_FFFF;
        file.write_all_at(&orphaned.to_ne_bytes(), at).unwrap();
        let cell = short.start + (word & 0xFFFF_FFFF) * 64 + 8;
        file.write_all_at(&(u64::MAX - 1).to_ne_bytes(), cell).unwrap();
    }
    assert!(records >= 2, "two keys' concurrency units, one record each or more");
    assert_eq!(store.reap(), u64::MAX);
    drop(held);
    std::fs::remove_file(&path).unwrap();
}
