//! Giving memory freed after a spike back to the system (ADR 0030).
//!
//! glibc keeps what a program frees in its arenas for reuse and returns pages to the system
//! only from the top of a heap: after thousands of connections came and went, the server's
//! live heap is back at its baseline but its resident memory stays near the high-water mark.
//! Three things bring it back:
//!
//! - **`malloc_trim(0)`**, which gives back every whole free page of every arena. Every
//!   [`CHECK_EVERY`] a task reads how many freed bytes glibc holds; once that has grown by
//!   [`MIN_FREED`] and a 64th of the heap since the last trim (from the least it held since),
//!   it trims. Free bytes count what a spike left however short it was (a peak sampled every
//!   few seconds could miss it), and a spike's memory is freed in steps (connections close,
//!   their sessions expire later): each step is given back. A steady server trims rarely, and a trim of a
//!   heap of a few MB takes well under a millisecond.
//! - **No per-thread caches** (glibc's tcache: up to 7 freed blocks of each size up to 1 KiB,
//!   per thread, never given back). The blocks freed last are scattered over the pages a
//!   spike used, and each pins its page: measured after 1 000 connections, 2.5 MB of a
//!   3.9 MB residue.
//! - **Arenas that keep no free top**: glibc keeps 128 KiB free at the top of each arena
//!   when it trims one (`top_pad`), and `malloc_trim` does not give back the tops of the
//!   per-thread arenas. With `top_pad=0` a free top goes back whole when it is freed. Setting
//!   it (as setting any of glibc's thresholds) also fixes glibc's mmap threshold at 128 KiB:
//!   each block of 128 KiB or more is mapped on its own, so events that large cost fresh
//!   pages, 1.35 to 1.4 times the CPU per delivery of 200 KB events (docs/benchmarks.md);
//!   smaller events are unaffected. `--release-memory false` avoids it.
//!
//! glibc reads its tunables only when a process starts, so [`with_tunables`] starts the
//! server again with them ([`TUNABLES`]). What they and the trims cost is in
//! docs/benchmarks.md; ADR 0030 says how each was measured.
//!
//! Other allocators (musl, macOS) return memory themselves: there none of this runs.

use std::time::Duration;

/// How often the bytes in use are read.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The least freed memory worth a trim.
pub(crate) const MIN_FREED: usize = 16 << 10;

/// Whether a trim is due: glibc holds `free` bytes freed and not given back, at least `low`
/// at every check since the last trim, with `in_use` bytes in use: [`MIN_FREED`] more
/// freed since, and a 64th of the heap (a large heap's ordinary churn does not make it trim
/// every few seconds: a trim walks every free block with its arena locked).
pub(crate) fn due(low: usize, free: usize, in_use: usize) -> bool {
    let freed = free.saturating_sub(low);
    freed >= MIN_FREED && freed >= in_use / 64
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
                // It walks and locks each arena in turn.
                let started = std::time::Instant::now();
                let released = glibc::trim();
                tracing::debug!(
                    in_use,
                    free,
                    released,
                    took_us = started.elapsed().as_micros() as u64,
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

/// The glibc tunables the server runs with: no per-thread caches, and no free top kept in
/// any arena; with the environment variable glibc also reads for each, if any.
pub(crate) const TUNABLES: [(&str, &str, Option<&str>); 2] = [
    ("glibc.malloc.tcache_count", "0", None),
    ("glibc.malloc.top_pad", "0", Some("MALLOC_TOP_PAD_")),
];

/// `GLIBC_TUNABLES` with [`TUNABLES`] added, each unless the variable (`current`) or its
/// own environment variable (`is_set`) sets it already: the operator's setting wins. `None`
/// when nothing is to be added.
fn tunables(current: Option<&str>, is_set: impl Fn(&str) -> bool) -> Option<String> {
    let current = current.unwrap_or("");
    let set = |key: &str| {
        current
            .split(':')
            .any(|t| t.split_once('=').is_some_and(|(k, _)| k == key))
    };
    let missing: Vec<String> = TUNABLES
        .iter()
        .filter(|(key, _, alias)| !set(key) && !alias.is_some_and(&is_set))
        .map(|(key, value, _)| format!("{key}={value}"))
        .collect();
    match (missing.is_empty(), current.is_empty()) {
        (true, _) => None,
        (false, true) => Some(missing.join(":")),
        (false, false) => Some(format!("{current}:{}", missing.join(":"))),
    }
}

/// Set in the environment of the process started again, to the tunables it was given: it is
/// started again once at most (glibc drops tunables from the environment of a privileged
/// program, say one given `cap_net_bind_service`; without this it would start itself again
/// forever). glibc 2.36 also writes NULs over the colons of `GLIBC_TUNABLES` as it reads it
/// (`/proc/PID/environ` then shows its first tunable only): this says what was asked.
const RESTARTED: &str = "SSE_SERVER_RESTARTED";

/// Starts this process again (`exec`: the same process id, arguments and descriptors) with
/// [`TUNABLES`], unless `GLIBC_TUNABLES` already sets them all or this is the process started
/// again. Returns only when it did not: `None` when nothing was needed, the error when
/// `exec` failed (the server then runs with glibc's defaults). Call it before any thread
/// starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn with_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;

    if std::env::var_os(RESTARTED).is_some() {
        return None;
    }
    let current = match std::env::var("GLIBC_TUNABLES") {
        Ok(current) => Some(current),
        Err(std::env::VarError::NotPresent) => None,
        // Not ours to rewrite: run as the operator set it.
        Err(std::env::VarError::NotUnicode(_)) => return None,
    };
    let value = tunables(current.as_deref(), |name| std::env::var_os(name).is_some())?;
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
        .env("GLIBC_TUNABLES", &value)
        .env(RESTARTED, &value)
        .exec();
    // `exec` set SIGPIPE back to its default before it failed: ignored again, as Rust's
    // runtime has it, or a client closing its socket would end the server.
    glibc::ignore_sigpipe();
    Some(err)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn with_tunables() -> Option<std::io::Error> {
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
    fn trims_once_more_is_freed_than_a_few_blocks() {
        let kib = 1 << 10;
        let mib = 1 << 20;
        // A steady server: its free bytes move a little.
        assert!(!due(3 * mib, 3 * mib, 8 * mib));
        assert!(!due(3 * mib, 3 * mib + 15 * kib, 8 * mib));
        assert!(!due(3 * mib, 2 * mib, 8 * mib));
        // 16 KiB more free than the least since the last trim, on a small heap.
        assert!(due(3 * mib, 3 * mib + 16 * kib, mib));
        assert!(due(0, 4 * mib, 8 * mib));
        // A large heap needs a 64th of it freed: 16 MiB of 1 GiB.
        assert!(!due(0, 15 * mib, 1024 * mib));
        assert!(due(0, 16 * mib, 1024 * mib));
    }

    #[test]
    fn tunables_are_added_unless_the_operator_set_them() {
        let none = |_: &str| false;
        let ours = "glibc.malloc.tcache_count=0:glibc.malloc.top_pad=0";
        assert_eq!(tunables(None, none).as_deref(), Some(ours));
        assert_eq!(tunables(Some(""), none).as_deref(), Some(ours));
        assert_eq!(
            tunables(Some("glibc.malloc.arena_max=2"), none),
            Some(format!("glibc.malloc.arena_max=2:{ours}"))
        );
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count=3"), none).as_deref(),
            Some("glibc.malloc.tcache_count=3:glibc.malloc.top_pad=0")
        );
        // A key is matched whole, not as a prefix of another.
        assert_eq!(
            tunables(
                Some("glibc.malloc.top_pad=65536:glibc.malloc.tcache_count_x=1"),
                none
            )
            .as_deref(),
            Some(
                "glibc.malloc.top_pad=65536:glibc.malloc.tcache_count_x=1:\
                 glibc.malloc.tcache_count=0"
            )
        );
        // glibc's own variable for the top pad counts as set.
        assert_eq!(
            tunables(None, |name| name == "MALLOC_TOP_PAD_").as_deref(),
            Some("glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            tunables(Some("glibc.malloc.tcache_count=1"), |name| name
                .starts_with("MALLOC_")),
            None
        );
        // Already restarted: no loop.
        assert_eq!(tunables(Some(ours), none), None);
    }
}
