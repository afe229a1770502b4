//! Time sources. GCRA runs on a monotonic clock that every process on the host shares
//! (`CLOCK_MONOTONIC`), calendar quotas on wall-clock time; a fake clock makes tests exact.

use std::sync::atomic::{AtomicU64, Ordering};

/// Both readings of "now" that a decision may need, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic nanoseconds, comparable between processes on one host.
    pub monotonic_ns: u64,
    /// Nanoseconds since the Unix epoch (UTC), for calendar periods; 0 when the decision had
    /// no need to read the wall clock (then nothing may be judged by calendar).
    pub wall_ns: u64,
}

impl Now {
    /// True when `wall_ns` was read (0 means it was skipped).
    #[inline]
    pub fn knows_wall(&self) -> bool {
        self.wall_ns != 0
    }
}

pub trait Clock: Send + Sync + 'static {
    /// Monotonic nanoseconds, comparable between processes on one host.
    fn monotonic_ns(&self) -> u64;
    /// Nanoseconds since the Unix epoch (UTC).
    fn wall_ns(&self) -> u64;
    fn now(&self) -> Now {
        Now {
            monotonic_ns: self.monotonic_ns(),
            wall_ns: self.wall_ns(),
        }
    }
}

/// The host's clocks: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

fn read(clock_id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on every Linux.
    unsafe { libc::clock_gettime(clock_id, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

impl Clock for SystemClock {
    #[inline]
    fn monotonic_ns(&self) -> u64 {
        read(libc::CLOCK_MONOTONIC)
    }
    #[inline]
    fn wall_ns(&self) -> u64 {
        read(libc::CLOCK_REALTIME)
    }
}

/// A clock that moves only when told to: both readings advance together.
#[derive(Debug)]
pub struct FakeClock {
    monotonic_ns: AtomicU64,
    wall_ns: AtomicU64,
}

impl FakeClock {
    pub fn new(monotonic_ns: u64, wall_ns: u64) -> Self {
        Self {
            monotonic_ns: AtomicU64::new(monotonic_ns),
            wall_ns: AtomicU64::new(wall_ns),
        }
    }

    pub fn advance(&self, ns: u64) {
        self.monotonic_ns.fetch_add(ns, Ordering::SeqCst);
        self.wall_ns.fetch_add(ns, Ordering::SeqCst);
    }

    pub fn set(&self, now: Now) {
        self.monotonic_ns.store(now.monotonic_ns, Ordering::SeqCst);
        self.wall_ns.store(now.wall_ns, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// Starts one second after boot, at 2026-01-01T00:00:00Z.
    fn default() -> Self {
        Self::new(1_000_000_000, 1_767_225_600_000_000_000)
    }
}

impl Clock for FakeClock {
    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ns.load(Ordering::SeqCst)
    }
    fn wall_ns(&self) -> u64 {
        self.wall_ns.load(Ordering::SeqCst)
    }
}
