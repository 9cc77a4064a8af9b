//! Giving memory freed after a spike back to the system (ADR 0030).
//!
//! glibc keeps what a program frees in its arenas for reuse and returns pages to the system
//! only from the top of a heap: after thousands of connections came and went, the server's
//! live heap is back at its baseline but its resident memory stays near the high-water mark.
//! Two things bring it back:
//!
//! - **`malloc_trim(0)`**, which gives back every whole free page of every arena. Every
//!   [`CHECK_EVERY`] a task reads how many freed bytes glibc holds; once that has grown since
//!   the last trim (from the least it held since) by a quarter of the bytes in use, and at
//!   least [`MIN_FREED`], it trims. Free bytes count what a spike left however short it was
//!   (a peak sampled every few seconds could miss it). A steady server never trims; one that
//!   shrank trims once or twice.
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

/// Whether a trim is due: glibc holds `free` bytes freed and not given back, at least `low`
/// at every check since the last trim, with `in_use` bytes in use.
pub(crate) fn due(low: usize, free: usize, in_use: usize) -> bool {
    let freed = free.saturating_sub(low);
    freed >= MIN_FREED && freed >= in_use / 4
}

/// Starts the task on the current runtime.
pub(crate) fn spawn() {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut low = usize::MAX;
        loop {
            every.tick().await;
            let Some(glibc::Counts { in_use, free, .. }) = glibc::counts() else {
                return;
            };
            low = low.min(free);
            if due(low, free, in_use) {
                // It walks and locks each arena in turn: well under a millisecond for a
                // heap of a few MB (docs/limits.md).
                let released = glibc::trim();
                tracing::debug!(
                    in_use,
                    free,
                    released,
                    "gave freed memory back to the system"
                );
                // The pages are given back, the blocks stay free in glibc's count.
                low = free;
            }
        }
    });
}

/// Sets `sse_heap_bytes` from glibc's counts (nothing on other allocators): `in_use` counts
/// the blocks glibc maps on their own too, as `malloc_stats` does.
pub(crate) fn record_heap() {
    use resumable_sse_core::metrics::HEAP_BYTES;

    if let Some(glibc::Counts {
        in_use,
        mapped,
        free,
    }) = glibc::counts()
    {
        metrics::gauge!(HEAP_BYTES, "state" => "in_use").set((in_use + mapped) as f64);
        metrics::gauge!(HEAP_BYTES, "state" => "free").set(free as f64);
    }
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

/// Set in the environment of the process started again: it is started again once at most
/// (glibc drops tunables from the environment of a privileged program, say one given
/// `cap_net_bind_service`; without this it would start itself again forever).
const RESTARTED: &str = "SSE_SERVER_RESTARTED";

/// Starts this process again (`exec`: the same process id, arguments and descriptors) with
/// glibc's per-thread caches off, unless `GLIBC_TUNABLES` already sets their size or this is
/// the process started again. Returns only when it did not: `None` when nothing was needed,
/// the error when `exec` failed (the server then runs with the caches). Call it before any
/// thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn without_thread_caches() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;

    if std::env::var_os(RESTARTED).is_some() {
        return None;
    }
    let current = std::env::var_os("GLIBC_TUNABLES");
    let value = tunables(current.as_ref().map(|v| v.to_string_lossy()).as_deref())?;
    // The binary's path (not `/proc/self/exe`, which would rename the process `exe`).
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(err) => return Some(err),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(binary);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let err = command
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .env(RESTARTED, "1")
        .exec();
    // `exec` set SIGPIPE back to its default before it failed: ignored again, as Rust's
    // runtime has it, or a client closing its socket would end the server.
    glibc::ignore_sigpipe();
    Some(err)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn without_thread_caches() -> Option<std::io::Error> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// glibc's counts of its arenas' bytes.
    pub(super) struct Counts {
        /// Handed out from the arenas and not had back.
        pub(super) in_use: usize,
        /// Blocks mapped on their own (large ones), given back when freed.
        pub(super) mapped: usize,
        /// Freed and kept for reuse.
        pub(super) free: usize,
    }

    /// The counts now (`mallinfo2`).
    pub(super) fn counts() -> Option<Counts> {
        // SAFETY: `mallinfo2` takes no arguments and returns a plain struct by value; glibc
        // locks each arena while it counts.
        let info = unsafe { libc::mallinfo2() };
        Some(Counts {
            in_use: info.uordblks,
            mapped: info.hblkhd,
            free: info.fordblks,
        })
    }

    /// `malloc_trim(0)`: whether anything was given back.
    pub(super) fn trim() -> bool {
        // SAFETY: `malloc_trim` takes no pointers; glibc locks each arena while it trims it.
        unsafe { libc::malloc_trim(0) == 1 }
    }

    /// Ignores SIGPIPE, as Rust's runtime does at start.
    pub(super) fn ignore_sigpipe() {
        // SAFETY: installs the predefined "ignore" disposition, no handler of ours; called
        // before any other thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) struct Counts {
        pub(super) in_use: usize,
        pub(super) mapped: usize,
        pub(super) free: usize,
    }

    pub(super) fn counts() -> Option<Counts> {
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
    fn trims_once_a_quarter_of_the_heap_is_freed() {
        let kib = 1 << 10;
        let mib = 1 << 20;
        // A steady server: its free bytes move a little.
        assert!(!due(3 * mib, 3 * mib, 8 * mib));
        assert!(!due(3 * mib, 4 * mib, 8 * mib));
        // A quarter of what is in use freed since.
        assert!(due(3 * mib, 5 * mib, 8 * mib));
        // A small heap: a quarter of it is not worth a trim below 256 KiB.
        assert!(!due(0, 200 * kib, 600 * kib));
        assert!(due(0, 4 * mib, mib));
        // A large heap needs a quarter of it freed.
        assert!(!due(0, 100 * mib, 1024 * mib));
        assert!(due(0, 300 * mib, 1024 * mib));
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
