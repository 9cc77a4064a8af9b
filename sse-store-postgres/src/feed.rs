//! The live feed: LISTEN on a dedicated connection, turned into [`FeedItem`]s.
//!
//! NOTIFY is fire-and-forget: a notification sent while the listening connection is down is
//! lost. So the feed yields [`FeedItem::Resync`] after every (re)connect, and the hub reads the
//! head of every stream it serves from the table, which holds everything.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use resumable_sse_core::{
    Epoch, Event, FeedItem, LiveFeed, Notification, Position, StreamName, Text,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

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

/// The positions `next ..= last` of one notification, announced one by one, with their
/// events when the notification carried them.
struct Pending {
    stream: StreamName,
    epoch: Epoch,
    next: Position,
    last: Position,
    /// The events of `next ..= last`, front first (empty when not carried).
    events: std::collections::VecDeque<Event>,
}

struct State {
    source: Arc<FeedSource>,
    listener: Option<PgListener>,
    pending: Option<Pending>,
    /// Failed (re)connection attempts in a row, for the logs.
    failures: u32,
    /// Whether [`FeedItem::Disconnected`] was yielded for the current run of failures.
    said_lost: bool,
}

pub(crate) fn live_feed(source: Arc<FeedSource>) -> LiveFeed {
    let state = State {
        source,
        listener: None,
        pending: None,
        failures: 0,
        said_lost: false,
    };
    futures_util::stream::unfold(state, next).boxed()
}

/// Parses `<epoch> <first> <last> <stream>`, optionally followed by
/// ` <append time ms> <JSON array of [event, publisher_id, data]>` (one per position), the
/// payload the append function sends (migration 0002). Events that do not match the positions
/// one for one are dropped: the hub then reads them from the table.
fn parse(payload: &str) -> Option<Pending> {
    let mut parts = payload.splitn(6, ' ');
    let epoch = parts.next()?.parse::<i64>().ok()?;
    let first = parts.next()?.parse::<Position>().ok()?;
    let last = parts.next()?.parse::<Position>().ok()?;
    let stream = StreamName::new(parts.next()?).ok()?;
    if first < 1 || first > last {
        return None;
    }
    let events = match (parts.next(), parts.next()) {
        (None, _) => Default::default(),
        (Some(time), Some(json)) => {
            let time_ms = time.parse::<u64>().ok()?;
            let raw: Vec<(Option<String>, Option<String>, String)> =
                serde_json::from_str(json).ok()?;
            if raw.len() as u64 == last - first + 1 {
                raw.into_iter()
                    .zip(first..)
                    .map(|((event, id, data), position)| Event {
                        stream: stream.clone(),
                        position,
                        event: event.map(Text::from),
                        id: id.map(Text::from),
                        data: Text::from(data),
                        time_ms,
                    })
                    .collect()
            } else {
                Default::default()
            }
        }
        (Some(_), None) => return None,
    };
    Some(Pending {
        stream,
        epoch: Epoch::from_u64(epoch as u64),
        next: first,
        last,
        events,
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
        if st.failures > 0 && !st.said_lost {
            // Readiness probes learn that appends of other instances are not arriving.
            st.said_lost = true;
            return Some((FeedItem::Disconnected, st));
        }
        if let Some(p) = &mut st.pending {
            if p.next <= p.last {
                let item = FeedItem::Appended(Notification {
                    stream: p.stream.clone(),
                    epoch: p.epoch,
                    position: p.next,
                    event: p.events.pop_front(),
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
                    st.said_lost = false;
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
        assert!(p.events.is_empty());
        let p = parse(r#"7 1 2 s 1700000000123 [["tick","order-1","a \"b\"\n"],[null,null,"é"]]"#)
            .expect("a payload with events");
        let events: Vec<_> = p.events.iter().collect();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (
                events[0].position,
                events[0].event.as_deref(),
                events[0].id.as_deref()
            ),
            (1, Some("tick"), Some("order-1"))
        );
        assert_eq!(&*events[0].data, "a \"b\"\n");
        assert_eq!(
            (
                events[1].position,
                events[1].event.as_deref(),
                &*events[1].data
            ),
            (2, None, "é")
        );
        assert_eq!(events[1].time_ms, 1_700_000_000_123);
        // Events that do not match the positions are dropped; the positions still count.
        let p = parse(r#"7 1 3 s 1 [[null,null,"x"]]"#).expect("a payload");
        assert!(p.events.is_empty() && p.last == 3);
        for bad in [
            "",
            "1 2 3",
            "1 1 1 s 5",
            "1 1 1 s x []",
            "1 1 1 s 5 not-json",
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
