//! The live feed: LISTEN on a dedicated connection, turned into [`FeedItem`]s.
//!
//! NOTIFY is fire-and-forget: a notification sent while the listening connection is down is
//! lost. So the feed yields [`FeedItem::Resync`] after every (re)connect, and the hub reads the
//! head of every stream it serves from the table, which holds everything.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sse_core::{Epoch, FeedItem, LiveFeed, Notification, Position, StreamName};

/// After this long without a notification the feed checks that its connection is alive: a
/// half-open TCP connection (a peer gone without a FIN) would otherwise wait forever.
const PROBE_AFTER: Duration = Duration::from_secs(30);

/// What a feed needs to (re)connect.
#[derive(Debug)]
pub(crate) struct FeedSource {
    pub(crate) options: PgConnectOptions,
    pub(crate) channel: String,
    pub(crate) acquire_timeout: Duration,
    pub(crate) retry: Duration,
}

/// The positions `next ..= last` of one notification, announced one by one.
struct Pending {
    stream: StreamName,
    epoch: Epoch,
    next: Position,
    last: Position,
}

struct State {
    source: Arc<FeedSource>,
    listener: Option<PgListener>,
    pending: Option<Pending>,
    /// Failed (re)connection attempts in a row, for the logs.
    failures: u32,
}

pub(crate) fn live_feed(source: Arc<FeedSource>) -> LiveFeed {
    let state = State {
        source,
        listener: None,
        pending: None,
        failures: 0,
    };
    futures_util::stream::unfold(state, next).boxed()
}

/// Parses `<epoch> <first> <last> <stream>`, the payload the append function sends.
fn parse(payload: &str) -> Option<Pending> {
    let mut parts = payload.splitn(4, ' ');
    let epoch = parts.next()?.parse::<i64>().ok()?;
    let first = parts.next()?.parse::<Position>().ok()?;
    let last = parts.next()?.parse::<Position>().ok()?;
    let stream = StreamName::new(parts.next()?).ok()?;
    (first >= 1 && first <= last).then_some(Pending {
        stream,
        epoch: Epoch::from_u64(epoch as u64),
        next: first,
        last,
    })
}

impl State {
    async fn connect(&self) -> Result<PgListener, sqlx::Error> {
        // A pool of its own per connection: dropping the listener closes the connection, so
        // no LISTEN outlives the feed and no other query ever shares it.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.source.acquire_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.source.options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(&self.source.channel).await?;
        Ok(listener)
    }

    fn lost(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.listener = None;
        self.failures += 1;
        if self.failures == 1 {
            tracing::warn!(channel = %self.source.channel, %error, "{what}; the live feed reconnects");
        } else {
            tracing::debug!(channel = %self.source.channel, %error, attempts = self.failures, "{what}");
        }
    }
}

async fn next(mut st: State) -> Option<(FeedItem, State)> {
    loop {
        if let Some(p) = &mut st.pending {
            if p.next <= p.last {
                let item = FeedItem::Appended(Notification {
                    stream: p.stream.clone(),
                    epoch: p.epoch,
                    position: p.next,
                    event: None,
                });
                p.next += 1;
                return Some((item, st));
            }
            st.pending = None;
        }
        let Some(listener) = st.listener.as_mut() else {
            match st.connect().await {
                Ok(listener) => {
                    if st.failures > 0 {
                        tracing::info!(channel = %st.source.channel, attempts = st.failures, "the live feed is listening again");
                    }
                    st.failures = 0;
                    st.listener = Some(listener);
                    // Whatever was appended while nobody listened is only in the tables.
                    return Some((FeedItem::Resync, st));
                }
                Err(err) => {
                    st.lost("cannot LISTEN", &err);
                    tokio::time::sleep(st.source.retry).await;
                    continue;
                }
            }
        };
        match tokio::time::timeout(PROBE_AFTER, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => match parse(notification.payload()) {
                Some(pending) => st.pending = Some(pending),
                None => {
                    tracing::warn!(payload = notification.payload(), "unreadable notification");
                    return Some((FeedItem::Resync, st));
                }
            },
            // The connection was lost and sqlx has connected and listened again.
            Ok(Ok(None)) => {
                tracing::info!(channel = %st.source.channel, "the live feed reconnected");
                return Some((FeedItem::Resync, st));
            }
            Ok(Err(err)) => {
                st.lost("the LISTEN connection failed", &err);
                tokio::time::sleep(st.source.retry).await;
            }
            Err(_quiet) => {
                let probe = tokio::time::timeout(
                    st.source.acquire_timeout,
                    sqlx::query("SELECT 1").execute(&mut *listener),
                )
                .await;
                match probe {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => st.lost("the LISTEN connection does not answer", &err),
                    Err(elapsed) => st.lost("the LISTEN connection does not answer", &elapsed),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let p = parse("-5 3 7 room:42").expect("a payload");
        assert_eq!(
            (p.epoch.as_u64(), p.next, p.last, p.stream.as_str()),
            ((-5i64) as u64, 3, 7, "room:42")
        );
        for bad in [
            "",
            "1 2 3",
            "x 1 1 s",
            "1 0 0 s",
            "1 5 4 s",
            "1 1 1 bad name",
            "1 1 1 ",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
