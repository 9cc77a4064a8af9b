//! Giving memory freed after a spike back to the system (ADR 0030).
//!
//! glibc keeps what a program frees in its arenas for reuse and returns pages to the system
//! only from the top of a heap: after thousands of connections came and went, the server's
//! live heap is back at its baseline but its resident memory stays near the high-water mark.
//! Two things bring it back:
//!
//! - **`malloc_trim(0)`**, which gives back every whole free page of every arena. Every
//!   [`CHECK_EVERY`] a task reads glibc's count of bytes in use; once a quarter of the most it
//!   saw since it last trimmed (and at least [`MIN_FREED`]) has been freed, it trims. A
//!   steady server never trims; one that shrank trims once or twice.
//! - **No per-thread caches** (glibc's tcache: up to 7 freed blocks of each size up to 1 KiB,
//!   per thread, never given back). The blocks freed last are scattered over the pages a
//!   spike used, and each pins its page: measured after 1 000 connections, 2.5 MB of a
//!   3.9 MB residue. glibc reads its tunables only when a process starts, so
//!   [`without_thread_caches`] starts the server again with `glibc.malloc.tcache_count=0`.
//!
//! Other allocators (musl, macOS) return memory themselves: there none of this runs.

use std::time::Duration;

/// How often the bytes in use are read.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The least freed memory worth a trim.
pub(crate) const MIN_FREED: usize = 256 << 10;

/// Whether a trim is due: `in_use` bytes now, `peak` the most seen since the last trim.
pub(crate) fn due(peak: usize, in_use: usize) -> bool {
    let freed = peak.saturating_sub(in_use);
    freed >= MIN_FREED && freed >= peak / 4
}

/// Starts the task on the current runtime.
pub(crate) fn spawn() {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peak = 0;
        loop {
            every.tick().await;
            let Some(in_use) = glibc::in_use() else {
                return;
            };
            peak = peak.max(in_use);
            if due(peak, in_use) {
                // It walks and locks each arena in turn: well under a millisecond for a
                // heap of a few MB (docs/limits.md).
                let released = glibc::trim();
                tracing::debug!(
                    peak,
                    in_use,
                    released,
                    "gave freed memory back to the system"
                );
                peak = in_use;
            }
        }
    });
}

/// The tunable that turns glibc's per-thread caches off.
const NO_TCACHE: &str = "glibc.malloc.tcache_count=0";

/// `GLIBC_TUNABLES` with the per-thread caches off, or `None` when it already says how
/// many blocks they keep (the operator's setting wins).
fn tunables(current: Option<&str>) -> Option<String> {
    match current {
        Some(current) if current.contains("glibc.malloc.tcache_count") => None,
        Some(current) if !current.is_empty() => Some(format!("{current}:{NO_TCACHE}")),
        _ => Some(NO_TCACHE.to_owned()),
    }
}

/// Starts this process again (`exec`: the same process id, arguments and descriptors) with
/// glibc's per-thread caches off, unless `GLIBC_TUNABLES` already sets their size. Returns
/// only when it did not: `None` when nothing was needed, the error when `exec` failed (the
/// server then runs with the caches). Call it before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn without_thread_caches() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;

    let current = std::env::var_os("GLIBC_TUNABLES");
    let value = tunables(current.as_ref().map(|v| v.to_string_lossy()).as_deref())?;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    Some(command.args(args).env("GLIBC_TUNABLES", value).exec())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn without_thread_caches() -> Option<std::io::Error> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// The bytes glibc's arenas have handed out and not had back (`mallinfo2`; blocks it
    /// maps on their own are given back when freed and not counted).
    pub(super) fn in_use() -> Option<usize> {
        // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value; glibc
        // locks each arena while it counts.
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks)
    }

    /// `malloc_trim(0)`: whether anything was given back.
    pub(super) fn trim() -> bool {
        // SAFETY: `malloc_trim` takes no pointers; glibc locks each arena while it trims it.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) fn in_use() -> Option<usize> {
        None
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_quarter_of_the_peak_is_freed() {
        let kib = 1 << 10;
        let mib = 1 << 20;
        // A steady or growing server: never.
        assert!(!due(8 * mib, 8 * mib));
        assert!(!due(8 * mib, 7 * mib));
        // A quarter of the peak freed.
        assert!(due(8 * mib, 6 * mib));
        // A small heap: a quarter of it is not worth a trim below 256 KiB.
        assert!(!due(mib, 800 * kib));
        assert!(due(2 * mib, 1500 * kib));
        // A large heap needs a quarter of it freed.
        assert!(!due(1024 * mib, 1000 * mib));
        assert!(due(1024 * mib, 700 * mib));
    }

    #[test]
    fn caches_off_unless_the_operator_sized_them() {
        assert_eq!(tunables(None).as_deref(), Some(NO_TCACHE));
        assert_eq!(tunables(Some("")).as_deref(), Some(NO_TCACHE));
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(tunables(Some("glibc.malloc.tcache_count=3")), None);
        // Already restarted: no loop.
        assert_eq!(tunables(Some(NO_TCACHE)), None);
    }
}
