//! Creating and attaching the table file, so that many processes starting at once end up on
//! exactly one table.
//!
//! The creator builds the whole table in a private temporary file next to the final path and
//! then `link()`s it into place; `link` fails if the name exists, so exactly one creator wins
//! and the losers attach the winner's table. A file therefore never appears under its name
//! half-initialised, and a creator killed half-way leaves only a temporary file behind.
//! A table from an earlier boot is replaced under an exclusive `flock` on the old file, by the
//! one process that still finds the old file at the path while holding that lock.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{CoreError, Result};

use super::header::{Header, Host, Layout, Refusal, HEADER_BYTES};

/// A shared, read-write mapping of a whole table file; unmapped on drop.
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that is only accessed through atomics (or, for the
// header, written before anyone else can see the file); the pointer stays valid until drop.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn base(&self) -> *mut u8 {
        self.base
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: every mapping is at least HEADER_BYTES long and page-aligned.
        unsafe { &*(self.base as *const Header) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len come from a successful mmap and nothing borrows the mapping any more
        // (every handle into it holds the Arc that owns this Mapping).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this guard and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| CoreError::Config(format!("path {} contains a NUL byte", path.display())))
}

fn os_error(action: &str, path: &Path) -> CoreError {
    let err = std::io::Error::last_os_error();
    let hint = match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (permission denied: it belongs to another user or group, or the directory is not writable)"
        }
        Some(libc::EROFS) => " (read-only file system: pass path= on a writable one)",
        Some(libc::ENOSPC) => " (no space left: shrink capacity= or grow the file system, e.g. /dev/shm)",
        Some(libc::ENOENT) => " (the directory does not exist)",
        _ => "",
    };
    CoreError::State(format!("cannot {action} {}: {err}{hint}", path.display()))
}

fn map(fd: &Fd, len: usize, path: &Path) -> Result<Mapping> {
    // SAFETY: a fresh shared mapping of an open descriptor; the kernel picks the address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.0,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(os_error("map", path));
    }
    Ok(Mapping { base: base.cast(), len })
}

/// What attach needs to know of a table file.
struct FileInfo {
    size: u64,
    inode: u64,
    uid: libc::uid_t,
    gid: libc::gid_t,
    mode: libc::mode_t,
}

fn file_info(fd: &Fd, path: &Path) -> Result<FileInfo> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(os_error("stat", path));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(CoreError::State(format!(
            "{} is not a regular file; remove it or choose another name",
            path.display()
        )));
    }
    Ok(FileInfo {
        size: st.st_size as u64,
        inode: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
    })
}

/// Whether this process is in group `gid`.
fn in_group(gid: libc::gid_t) -> bool {
    // SAFETY: plain queries of this process's credentials.
    if unsafe { libc::getegid() } == gid {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: the buffer holds `groups.len()` entries.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    n > 0 && groups[..n as usize].contains(&gid)
}

/// Refuses a table that another user could have prepared or can change behind our back: every
/// process on it trusts its words, and its owner can truncate it (a SIGBUS in every process that
/// has it mapped). A table is attached only when this uid owns it, or when `mode` shares it with
/// the group and the file belongs to one of our groups; and never when it grants write access
/// beyond `mode`.
fn check_owner(info: &FileInfo, mode: libc::mode_t, path: &Path) -> Result<()> {
    // SAFETY: a plain query of this process's credentials.
    let me = unsafe { libc::geteuid() };
    let shared_by_group = mode & 0o060 != 0 && in_group(info.gid);
    if info.uid != me && !shared_by_group {
        return Err(CoreError::State(format!(
            "shared table {} belongs to uid {}, not to this process (uid {me}); refusing to attach a table \
             another user controls (remove it, or open it with mode=\"group\" when a shared group owns it)",
            path.display(),
            info.uid
        )));
    }
    let extra = info.mode & 0o222 & !mode;
    if extra != 0 {
        return Err(CoreError::State(format!(
            "shared table {} is writable beyond what was asked (mode {:04o}, asked {:04o}); refusing to \
             attach it (remove it, or chmod it to {:04o})",
            path.display(),
            info.mode,
            mode,
            mode
        )));
    }
    Ok(())
}

/// How a table file is opened.
pub(crate) struct FileSpec<'a> {
    pub path: &'a Path,
    pub mode: libc::mode_t,
    /// `None`: attach only, never create.
    pub create: Option<Layout>,
    pub hash_mask: u64,
}

/// Opens the table at `spec.path`, creating it if absent; returns the mapping and whether
/// this call created it.
pub(crate) fn open(spec: &FileSpec<'_>) -> Result<(Mapping, bool)> {
    let host = Host::current();
    let path = c_path(spec.path)?;
    // Each turn either attaches, creates, or observes a concurrent create/replace and retries;
    // a handful of turns is only ever needed when other processes keep replacing the file.
    for _ in 0..32 {
        // SAFETY: path is a valid C string; the flags ask for no creation.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW) };
        if fd >= 0 {
            match attach(Fd(fd), spec, &host)? {
                Some(mapping) => return Ok((mapping, false)),
                None => continue, // replaced an earlier boot's table: create afresh
            }
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOENT) {
            return Err(os_error("open shared table", spec.path));
        }
        let Some(layout) = spec.create else {
            return Err(CoreError::State(format!(
                "no shared table at {} (nothing has created it yet)",
                spec.path.display()
            )));
        };
        if let Some(mapping) = create(spec, &layout, &host)? {
            return Ok((mapping, true));
        }
    }
    Err(CoreError::State(format!(
        "{} keeps being replaced by other processes; giving up",
        spec.path.display()
    )))
}

/// Maps an existing table; `Ok(None)` when it was from an earlier boot and has been removed.
fn attach(fd: Fd, spec: &FileSpec<'_>, host: &Host) -> Result<Option<Mapping>> {
    let path = spec.path;
    let info = file_info(&fd, path)?;
    check_owner(&info, spec.mode, path)?;
    let (size, inode) = (info.size, info.inode);
    if size < HEADER_BYTES as u64 {
        return Err(CoreError::State(format!(
            "{} is not a usable llmthrottle shared table: it is only {size} bytes long (truncated, or not a table); \
             remove it or run `llmthrottle state reset NAME`",
            path.display()
        )));
    }
    let head = map(&fd, HEADER_BYTES, path)?;
    let layout = match head.header().validate(size, host) {
        Ok(layout) => layout,
        Err(Refusal::Unusable(why)) => {
            return Err(CoreError::State(format!(
                "{} is not a usable llmthrottle shared table: {why}",
                path.display()
            )))
        }
        Err(Refusal::EarlierBoot) => {
            drop(head);
            remove_if_same(&fd, path, inode)?;
            return Ok(None);
        }
    };
    drop(head);
    reserve_holes(&fd, layout.file_bytes, path)?;
    Ok(Some(map(&fd, layout.file_bytes as usize, path)?))
}

/// Allocates every page of an attached table that is still a hole (a file made sparse by hand,
/// by `truncate` or by a sparse copy): a hole gets its page on the first write to it, and a full
/// tmpfs then kills the writer with SIGBUS instead of returning an error. The creator reserved
/// its pages the same way. `fallocate` and not `posix_fallocate`: glibc's fallback for a file
/// system without it writes zero bytes over what it read, racing with the processes using the
/// table; where the call is missing, nothing better can be done.
fn reserve_holes(fd: &Fd, file_bytes: u64, path: &Path) -> Result<()> {
    loop {
        // SAFETY: fd is open; mode 0 only allocates, never changes the size or the contents.
        if unsafe { libc::fallocate(fd.0, 0, 0, file_bytes as libc::off_t) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(()),
            Some(libc::ENOSPC) => {
                return Err(CoreError::State(format!(
                    "cannot attach shared table {}: it has unallocated pages and the file system has no \
                     space left for them (free space, e.g. in /dev/shm, or run `llmthrottle state reset NAME`)",
                    path.display()
                )))
            }
            _ => return Err(os_error("reserve the pages of", path)),
        }
    }
}

/// Removes the file at `path` if it is still the one open as `fd`. Every replacer locks the old
/// file first, so of several processes that found the same stale table only the first removes it.
fn remove_if_same(fd: &Fd, path: &Path, inode: u64) -> Result<()> {
    // SAFETY: fd is open; flock blocks until the exclusive lock is ours (released on close).
    if unsafe { libc::flock(fd.0, libc::LOCK_EX) } != 0 {
        return Err(os_error("lock", path));
    }
    let still_there = std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == inode)
        .unwrap_or(false);
    if still_there {
        std::fs::remove_file(path).map_err(|e| {
            CoreError::State(format!(
                "{} is from an earlier boot and cannot be replaced: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

fn temporary_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = super::header::random_u64();
    path.with_file_name(format!(".{name}.{}.{unique:016x}.tmp", super::process::pid()))
}

/// Builds a complete table in a temporary file and links it into place; `Ok(None)` when
/// another process linked its table first.
fn create(spec: &FileSpec<'_>, layout: &Layout, host: &Host) -> Result<Option<Mapping>> {
    let temporary = temporary_path(spec.path);
    let c_temporary = c_path(&temporary)?;
    // SAFETY: valid C string; O_EXCL makes the file ours alone.
    let fd = unsafe {
        libc::open(
            c_temporary.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            spec.mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(os_error("create shared table in the directory of", spec.path));
    }
    let fd = Fd(fd);
    let cleanup = || {
        let _ = std::fs::remove_file(&temporary);
    };
    let built = (|| -> Result<Mapping> {
        // The umask may have cleared group bits asked for; never adds bits for others.
        // SAFETY: fd is open.
        if unsafe { libc::fchmod(fd.0, spec.mode) } != 0 {
            return Err(os_error("set permissions on", &temporary));
        }
        // Reserve every page now: a tmpfs that fills up later would kill us with SIGBUS on a
        // page fault instead of returning an error.
        // SAFETY: fd is open; the length fits in off_t (capacity is bounded).
        let rc = unsafe { libc::posix_fallocate(fd.0, 0, layout.file_bytes as libc::off_t) };
        if rc != 0 {
            let err = std::io::Error::from_raw_os_error(rc);
            let hint = if rc == libc::ENOSPC {
                " (no space left: shrink capacity= or grow the file system, e.g. /dev/shm)"
            } else {
                ""
            };
            return Err(CoreError::State(format!(
                "cannot reserve {} bytes for shared table {}: {err}{hint}",
                layout.file_bytes,
                spec.path.display()
            )));
        }
        let mapping = map(&fd, layout.file_bytes as usize, spec.path)?;
        // SAFETY: the file is private to us until linked; the header is page-aligned and zeroed.
        unsafe { &mut *(mapping.base() as *mut Header) }.write_new(layout, host, spec.hash_mask);
        Ok(mapping)
    })();
    let mapping = match built {
        Ok(mapping) => mapping,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    let c_final = c_path(spec.path)?;
    // SAFETY: both are valid C strings.
    let linked = unsafe { libc::link(c_temporary.as_ptr(), c_final.as_ptr()) } == 0;
    let err = std::io::Error::last_os_error();
    cleanup();
    if linked {
        return Ok(Some(mapping));
    }
    if err.raw_os_error() == Some(libc::EEXIST) {
        return Ok(None);
    }
    Err(CoreError::State(format!(
        "cannot publish shared table {}: {err}",
        spec.path.display()
    )))
}

/// Removes the table file and any temporary files killed creators left next to it.
pub(crate) fn remove(path: &Path) -> Result<bool> {
    let existed = match std::fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            return Err(CoreError::State(format!("cannot remove {}: {e}", path.display())));
        }
    };
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let prefix = format!(".{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                // Older than any creation takes: left by a creator that was killed.
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(10));
                if file.starts_with(&prefix) && file.ends_with(".tmp") && stale {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path) -> FileSpec<'_> {
        FileSpec {
            path,
            mode: 0o600,
            create: Some(Layout::new(16, None, 16).unwrap()),
            hash_mask: u64::MAX,
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "maps a real file (open, mmap, flock), which miri cannot")]
    fn a_table_from_an_earlier_boot_is_replaced() {
        let path = std::env::temp_dir().join(format!("llmthrottle-boot-test-{}", std::process::id()));
        let (first, created) = open(&spec(&path)).unwrap();
        assert!(created);
        let first_id = first.header().table_id;
        // SAFETY: the header lies at the start of the mapping; nobody else uses this file.
        unsafe { (*(first.base() as *mut Header)).boot_id[0] ^= 0xFF };
        drop(first);
        let (second, created) = open(&spec(&path)).unwrap();
        assert!(created, "re-created, not attached");
        assert_ne!(second.header().table_id, first_id);
        let (third, created) = open(&spec(&path)).unwrap();
        assert!(!created);
        assert_eq!(third.header().table_id, second.header().table_id);
        remove(&path).unwrap();
    }
}
