//! What the shared table needs to know about processes: our own pid (which changes at `fork()`),
//! whether another process is still alive, and how to wait a bounded time for one to finish a step.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::error::{CoreError, Result};

/// Largest pid Linux hands out (`PID_MAX_LIMIT` on 64-bit): pids fit in 22 bits of a state word.
pub(crate) const PID_BITS: u32 = 22;

static PID: AtomicU32 = AtomicU32::new(0);
/// Bumped in the child of every `fork()`. A handle made before the fork belongs to the parent:
/// the child inherits a copy of its memory but must neither unpin nor release it, or the one
/// pin/lease would be given back twice.
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::SeqCst);
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Installs the fork handler; called before any handle is made.
pub(crate) fn watch_forks() {
    ATFORK.call_once(|| {
        // SAFETY: the handler only touches atomics and calls getpid, both safe in a forked child.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

/// This process's pid (cached: glibc no longer caches getpid, and claims are on the hot path).
#[inline]
pub(crate) fn pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

#[inline]
pub(crate) fn fork_generation() -> u32 {
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// False when no process `pid` exists (one syscall; a zombie still exists).
/// Every process sharing a table is in our pid namespace (the header refuses others), so a pid
/// names the same process for all of them.
pub(crate) fn exists(pid: u32) -> bool {
    if pid == 0 || pid == self::pid() {
        return pid != 0;
    }
    // SAFETY: signal 0 performs only the existence and permission checks; pid is positive.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    !(rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
}

/// False only when `pid` certainly no longer runs: no such process, or a zombie waiting to be
/// reaped by its parent.
pub(crate) fn is_alive(pid: u32) -> bool {
    if !exists(pid) {
        return false;
    }
    if pid == self::pid() {
        return true;
    }
    // Alive or zombie: a zombie's state letter in /proc/<pid>/stat (after the command) is 'Z'.
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.iter().rposition(|&b| b == b')') {
            Some(end) => stat.get(end + 2) != Some(&b'Z'),
            None => true,
        },
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Waits, spinning then sleeping, for another process to finish a step that takes it
/// nanoseconds; gives up with a clear error if it has not after `LIMIT`.
pub(crate) struct Patience {
    started: Option<Instant>,
    spins: u32,
}

const LIMIT: Duration = Duration::from_secs(5);
/// After this long the other process is asked whether it is still alive.
pub(crate) const SUSPECT_AFTER: Duration = Duration::from_millis(2);

pub(crate) enum Waited {
    /// Keep waiting.
    Again,
    /// Waited long enough that the owner should be checked for liveness.
    Suspect,
}

impl Patience {
    pub(crate) fn new() -> Self {
        Patience {
            started: None,
            spins: 0,
        }
    }

    /// One pause; `what` describes the step waited for, for the error.
    pub(crate) fn pause(&mut self, what: impl FnOnce() -> String) -> Result<Waited> {
        self.spins += 1;
        if self.spins < 64 {
            std::hint::spin_loop();
            return Ok(Waited::Again);
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let waited = started.elapsed();
        if waited > LIMIT {
            return Err(CoreError::State(format!(
                "{} for more than {} s; is that process stopped (SIGSTOP, debugger)?",
                what(),
                LIMIT.as_secs()
            )));
        }
        if self.spins < 256 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(if waited > SUSPECT_AFTER {
            Waited::Suspect
        } else {
            Waited::Again
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        miri,
        ignore = "spawns a process and asks the kernel about it (kill), which miri cannot"
    )]
    fn liveness() {
        assert!(is_alive(pid()));
        assert!(!is_alive(0));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(child_pid));
    }
}
