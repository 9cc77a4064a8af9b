//! Background tasks that live as long as the value they serve.
//!
//! The hub's heartbeat ticker and session keeper and the stores' sweepers all run "every
//! interval, while the owner exists": they hold a [`Weak`] reference, so the owner is freed
//! when its last user drops it, and the task ends at its next tick.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Spawns a task that calls `tick` with a strong reference to `owner` every `period`, the first
/// time one `period` from now, and ends at the first tick after the last strong reference to
/// `owner` is gone.
///
/// A tick that runs late (a busy runtime, a slow `tick`) delays the following ones rather than
/// firing them in a burst. `tick`'s future holds its reference until it completes; drop it
/// before a long `.await` that does not need it, so the owner is not kept alive meanwhile.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let ticks = Arc::new(AtomicUsize::new(0));
/// let task = resumable_sse_core::task::spawn_periodic(
///     Arc::downgrade(&ticks),
///     Duration::from_secs(1),
///     |ticks| async move {
///         ticks.fetch_add(1, Ordering::Relaxed);
///     },
/// );
/// tokio::time::sleep(Duration::from_millis(3500)).await;
/// assert_eq!(ticks.load(Ordering::Relaxed), 3);
///
/// drop(ticks);
/// task.await.unwrap(); // ends at the next tick
/// # }
/// ```
///
/// # Panics
///
/// When called outside a tokio runtime, or with a zero `period`.
pub fn spawn_periodic<T, F, Fut>(owner: Weak<T>, period: Duration, mut tick: F) -> JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: FnMut(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::spawn(async move {
        // The first tick completes at once.
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(owner) = owner.upgrade() else { return };
            tick(owner).await;
        }
    })
}
