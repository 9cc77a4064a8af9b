//! Admission bookkeeping for [`serve`](crate::serve()): which connections are waiting for a
//! request head (a new connection's first, or a keep-alive connection's next), their
//! deadlines, the bound on how many may wait, the file-descriptor reserve, and a log of
//! accept failures that does not flood.
//!
//! A connection waiting for a head costs the server a descriptor and a task while it has
//! asked for nothing yet: it is the cheapest thing to drop. So when too many wait, or
//! descriptors run short, the one that has waited longest is dropped, and health checks and
//! publishes — which send their head at once — still get in.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often at most a repeated accept failure, or shedding for want of descriptors, is
/// logged (each line says how many happened since the last).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The timeouts and bounds of [`Admission`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Settings {
    pub(super) head_timeout: Duration,
    pub(super) keep_alive_timeout: Duration,
    pub(super) max_pending_heads: usize,
    pub(super) descriptor_reserve: usize,
}

/// The connections waiting for a head, oldest first, and what to do when they are too many.
#[derive(Debug)]
pub(super) struct Admission {
    settings: Settings,
    /// The soft `RLIMIT_NOFILE` when it could be read (Linux: `/proc/self/limits`).
    descriptor_limit: Option<u64>,
    waiting: Mutex<Waiting>,
    accept_errors: Mutex<RateLog>,
    shed_log: Mutex<RateLog>,
}

#[derive(Debug, Default)]
struct Waiting {
    next: u64,
    /// By the order they started waiting: the first is the oldest.
    entries: BTreeMap<u64, Arc<Entry>>,
}

/// What a connection is doing, as far as admission cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Sending a request head, which must be complete by the deadline.
    Head(Instant),
    /// Kept alive between requests: the next head must start by the deadline.
    Idle(Instant),
    /// A request is being answered: no deadline here (the body timeout covers request bodies,
    /// and responses such as event streams last as long as they last).
    Busy,
    /// Served to its end (or upgraded): never waiting again.
    Done,
}

#[derive(Debug)]
struct Entry {
    phase: Mutex<(Phase, Option<u64>)>,
    /// Answering with an event stream: the client has nothing more to send.
    streaming: AtomicBool,
    changed: Notify,
    shed: AtomicBool,
    kill: Notify,
}

/// Why a connection was dropped before its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dropped {
    /// Its head (or the next head of a kept-alive connection) did not come in time.
    TimedOut,
    /// It was the oldest waiting one when room was needed.
    Shed,
}

impl Dropped {
    /// Counts it in `sse_connections_dropped_total{reason}` (`head_timeout`, `shed`).
    pub(super) fn count(self) -> Self {
        let reason = match self {
            Dropped::TimedOut => "head_timeout",
            Dropped::Shed => "shed",
        };
        crate::metrics::count_dropped(reason);
        self
    }
}

impl Admission {
    pub(super) fn new(settings: Settings) -> Self {
        Admission {
            settings,
            descriptor_limit: descriptor_limit(),
            waiting: Mutex::new(Waiting::default()),
            accept_errors: Mutex::new(RateLog::default()),
            shed_log: Mutex::new(RateLog::default()),
        }
    }

    /// A connection just accepted, whose socket has descriptor number `fd` (when known): it
    /// waits for its first head from now. When `fd` is within the reserve of the descriptor
    /// limit, the oldest waiting connections are dropped to make room.
    pub(super) fn admit(self: &Arc<Self>, fd: Option<u64>) -> Conn {
        let entry = Arc::new(Entry {
            phase: Mutex::new((Phase::Busy, None)),
            streaming: AtomicBool::new(false),
            changed: Notify::new(),
            shed: AtomicBool::new(false),
            kill: Notify::new(),
        });
        let conn = Conn {
            admission: self.clone(),
            entry,
        };
        conn.wait(Phase::Head(Instant::now() + self.settings.head_timeout));
        // Linux hands out the lowest free descriptor, so a new socket's number is (about) how
        // many are open: near the limit, the next accept would fail.
        if let (Some(fd), Some(limit)) = (fd, self.descriptor_limit)
            && fd.saturating_add(self.settings.descriptor_reserve as u64) >= limit
        {
            let shed = self.shed_oldest(2, Some(&conn.entry));
            self.shed_log.lock().record(|count| {
                tracing::warn!(
                    count,
                    fd,
                    limit,
                    shed,
                    "file descriptors within the reserve: dropping the connections waiting \
                     longest for a request head"
                );
            });
        }
        conn
    }

    /// An accept failed: logs it (at most once per interval, with a count), and when it is
    /// for want of descriptors, drops the oldest waiting connections to make room. Returns how
    /// long to wait before accepting again.
    pub(super) fn accept_failed(&self, err: &io::Error) -> Duration {
        let out_of_descriptors = is_out_of_descriptors(err);
        let shed = if out_of_descriptors {
            self.shed_oldest(self.settings.descriptor_reserve.max(1), None)
        } else {
            0
        };
        self.accept_errors.lock().record(|count| {
            tracing::warn!(error = %err, count, shed, "accept failed");
        });
        // Out of descriptors: the dropped connections' tasks close their sockets on their
        // next poll, so a short pause lets them go before trying again.
        if out_of_descriptors {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(1)
        }
    }

    /// How many connections are waiting for a head.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.lock().entries.len()
    }

    /// Drops up to `n` of the connections waiting longest (never `except`); how many.
    fn shed_oldest(&self, n: usize, except: Option<&Arc<Entry>>) -> usize {
        let mut waiting = self.waiting.lock();
        let mut shed = 0;
        let keys: Vec<u64> = waiting
            .entries
            .iter()
            .filter(|(_, e)| except.is_none_or(|x| !Arc::ptr_eq(x, e)))
            .map(|(k, _)| *k)
            .take(n)
            .collect();
        for key in keys {
            if let Some(entry) = waiting.entries.remove(&key) {
                entry.phase.lock().1 = None;
                entry.shed.store(true, Ordering::Release);
                entry.kill.notify_one();
                shed += 1;
            }
        }
        shed
    }
}

/// One connection's place in [`Admission`]; it leaves it when dropped.
#[derive(Debug)]
pub(super) struct Conn {
    admission: Arc<Admission>,
    entry: Arc<Entry>,
}

impl Conn {
    /// A request head is complete: no deadline until the response is written.
    pub(super) fn busy(&self) {
        self.set(Phase::Busy);
    }

    /// A response was written and the connection is kept alive for the next request.
    pub(super) fn idle(&self) {
        let deadline = Instant::now() + self.admission.settings.keep_alive_timeout;
        self.wait(Phase::Idle(deadline));
    }

    /// The request is answered with an event stream, which lasts as long as the connection:
    /// any byte the client sends from now on is a protocol violation.
    pub(super) fn streaming(&self) {
        self.busy();
        self.entry.streaming.store(true, Ordering::Release);
    }

    /// Whether the connection carries an event stream (see [`streaming`](Self::streaming)).
    pub(super) fn is_streaming(&self) -> bool {
        self.entry.streaming.load(Ordering::Acquire)
    }

    /// The connection is served to its end (or upgraded to another protocol).
    pub(super) fn done(&self) {
        self.set(Phase::Done);
    }

    /// Bytes arrived: a kept-alive connection has started its next head, which must now be
    /// complete within the head timeout.
    pub(super) fn bytes_arrived(&self) {
        let mut phase = self.entry.phase.lock();
        if let Phase::Idle(_) = phase.0 {
            phase.0 = Phase::Head(Instant::now() + self.admission.settings.head_timeout);
            drop(phase);
            self.entry.changed.notify_one();
        }
    }

    /// Completes when the connection must be dropped: its deadline passed, or it was shed.
    pub(super) async fn dropped(&self) -> Dropped {
        self.wait_dropped().await.count()
    }

    async fn wait_dropped(&self) -> Dropped {
        loop {
            if self.entry.shed.load(Ordering::Acquire) {
                return Dropped::Shed;
            }
            let deadline = match self.entry.phase.lock().0 {
                Phase::Head(at) | Phase::Idle(at) => Some(at),
                Phase::Busy | Phase::Done => None,
            };
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = expired => {
                    let still = matches!(
                        self.entry.phase.lock().0,
                        Phase::Head(at) | Phase::Idle(at) if at <= Instant::now()
                    );
                    if still {
                        return Dropped::TimedOut;
                    }
                }
                () = self.entry.changed.notified() => {}
                () = self.entry.kill.notified() => {}
            }
        }
    }

    fn wait(&self, phase: Phase) {
        let admission = &self.admission;
        let mut waiting = admission.waiting.lock();
        {
            let mut current = self.entry.phase.lock();
            if current.0 == Phase::Done || self.entry.shed.load(Ordering::Acquire) {
                return;
            }
            if let Some(key) = current.1.take() {
                waiting.entries.remove(&key);
            }
            let key = waiting.next;
            waiting.next += 1;
            waiting.entries.insert(key, self.entry.clone());
            *current = (phase, Some(key));
        }
        self.entry.changed.notify_one();
        // Over the bound: the one waiting longest goes (this one, only if it is alone).
        while waiting.entries.len() > admission.settings.max_pending_heads.max(1) {
            let Some((_, oldest)) = waiting.entries.pop_first() else {
                break;
            };
            oldest.phase.lock().1 = None;
            oldest.shed.store(true, Ordering::Release);
            oldest.kill.notify_one();
        }
    }

    fn set(&self, phase: Phase) {
        let mut waiting = self.admission.waiting.lock();
        let mut current = self.entry.phase.lock();
        if current.0 == Phase::Done {
            return;
        }
        if let Some(key) = current.1.take() {
            waiting.entries.remove(&key);
        }
        current.0 = phase;
        drop(current);
        drop(waiting);
        self.entry.changed.notify_one();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let key = self.entry.phase.lock().1.take();
        if let Some(key) = key {
            self.admission.waiting.lock().entries.remove(&key);
        }
    }
}

/// A log line at most once per [`LOG_EVERY`], counting what happened in between.
#[derive(Debug, Default)]
struct RateLog {
    last: Option<Instant>,
    count: u64,
}

impl RateLog {
    fn record(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= LOG_EVERY)
        {
            log(self.count);
            self.last = Some(now);
            self.count = 0;
        }
    }
}

fn is_out_of_descriptors(err: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's), on Linux and the BSDs alike.
    matches!(err.raw_os_error(), Some(23 | 24))
}

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` elsewhere.
fn descriptor_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_pending_heads: usize) -> Arc<Admission> {
        Arc::new(Admission::new(Settings {
            head_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            max_pending_heads,
            descriptor_reserve: 16,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_not_complete_in_time_is_dropped() {
        let admission = admission(10);
        let conn = admission.admit(None);
        let started = Instant::now();
        assert_eq!(conn.dropped().await, Dropped::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_have_no_deadline_and_idle_ones_the_keep_alive_one() {
        let admission = admission(10);
        let conn = admission.admit(None);
        conn.busy();
        assert_eq!(admission.waiting(), 0);
        let no_deadline = tokio::time::timeout(Duration::from_secs(3600), conn.dropped()).await;
        assert!(no_deadline.is_err());
        conn.idle();
        assert_eq!(admission.waiting(), 1);
        let started = Instant::now();
        // The next head starting 20 s in: from then on, the head timeout.
        let dropped = conn.dropped();
        tokio::pin!(dropped);
        assert!(
            tokio::time::timeout(Duration::from_secs(20), &mut dropped)
                .await
                .is_err()
        );
        conn.bytes_arrived();
        assert_eq!(dropped.await, Dropped::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        conn.done();
        conn.idle();
        assert_eq!(
            admission.waiting(),
            0,
            "a finished connection never waits again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_bound_the_oldest_waiting_connection_is_dropped() {
        let admission = admission(2);
        let busy = admission.admit(None);
        busy.busy();
        let first = admission.admit(None);
        let second = admission.admit(None);
        assert_eq!(admission.waiting(), 2);
        let third = admission.admit(None);
        assert_eq!(admission.waiting(), 2);
        assert_eq!(first.dropped().await, Dropped::Shed);
        // The others keep their deadline.
        tokio::time::advance(Duration::from_secs(1)).await;
        let still = tokio::time::timeout(Duration::from_millis(1), second.dropped()).await;
        assert!(still.is_err());
        drop(third);
        assert_eq!(admission.waiting(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_sheds_the_oldest_waiting_and_backs_off() {
        let admission = admission(100);
        let conns: Vec<Conn> = (0..20).map(|_| admission.admit(None)).collect();
        let emfile = io::Error::from_raw_os_error(24);
        let pause = admission.accept_failed(&emfile);
        assert!(pause > Duration::ZERO);
        assert_eq!(admission.waiting(), 4, "the reserve's worth (16) shed");
        assert_eq!(conns[15].dropped().await, Dropped::Shed);
        let other = io::Error::from(io::ErrorKind::ConnectionAborted);
        admission.accept_failed(&other);
        assert_eq!(admission.waiting(), 4);
    }

    #[test]
    fn the_descriptor_limit_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(descriptor_limit().is_some_and(|n| n > 0));
        }
    }
}
