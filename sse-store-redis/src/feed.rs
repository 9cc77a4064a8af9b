//! The live feed: one dedicated pub/sub connection per store, fanned out to every
//! [`live_feed`](resumable_sse_core::EventBuffer::live_feed) through a broadcast channel.
//!
//! The connection is subscribed before [`RedisStore::connect`](crate::RedisStore::connect)
//! returns, so every append made after a feed is created is announced on it. When the
//! connection drops (Redis restarted, a network cut, a failed `PING`) the task reconnects
//! with backoff until Redis is back and, once subscribed again, sends
//! [`FeedItem::Resync`]: notifications published meanwhile are lost, and the hub repairs the
//! gap by reading the streams.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use resumable_sse_core::{Epoch, Event, FeedItem, Notification, Position, StreamName, Text};
use tokio::sync::{broadcast, oneshot};

use crate::{RedisConfig, RedisStoreError};

/// First wait before resubscribing; doubles up to `RedisConfig::reconnect_max_delay`.
const MIN_DELAY: Duration = Duration::from_millis(50);

/// The running feed: dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) tx: broadcast::Sender<FeedItem>,
    _stop: oneshot::Sender<()>,
}

struct Settings {
    client: redis::Client,
    channel: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    ping_interval: Duration,
    max_delay: Duration,
}

type Subscription = (PubSubSink, PubSubStream);

impl Feed {
    /// Subscribes, then spawns the task that forwards notifications and reconnects.
    pub(crate) async fn start(
        client: redis::Client,
        config: &RedisConfig,
    ) -> Result<Feed, RedisStoreError> {
        let settings = Settings {
            client,
            channel: config.key_layout().channel(),
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
            ping_interval: config.feed_ping_interval.max(Duration::from_millis(100)),
            max_delay: config.reconnect_max_delay.max(MIN_DELAY),
        };
        let first = subscribe(&settings).await?;
        let (tx, _) = broadcast::channel(config.feed_capacity.max(16));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(run(settings, tx.clone(), first, stop_rx));
        Ok(Feed { tx, _stop: stop_tx })
    }
}

/// A fresh pub/sub connection, subscribed to the channel.
async fn subscribe(settings: &Settings) -> Result<Subscription, RedisStoreError> {
    let attempt = async {
        let pubsub = settings.client.get_async_pubsub().await?;
        let (mut sink, stream) = pubsub.split();
        sink.subscribe(&settings.channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    let limit = settings.connect_timeout + settings.response_timeout;
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RedisStoreError::Timeout(limit)),
    }
}

async fn run(
    settings: Settings,
    tx: broadcast::Sender<FeedItem>,
    first: Subscription,
    mut stop: oneshot::Receiver<()>,
) {
    let mut current = Some(first);
    loop {
        let (mut sink, mut stream) = match current.take() {
            Some(subscription) => subscription,
            None => {
                let mut delay = MIN_DELAY;
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        result = subscribe(&settings) => match result {
                            Ok(subscription) => {
                                tracing::info!("Redis pub/sub subscribed again; resyncing");
                                // Anything published while we were away is lost: readers
                                // repair from the streams.
                                let _ = tx.send(FeedItem::Resync);
                                break subscription;
                            }
                            Err(err) => {
                                tracing::debug!(error = %err, ?delay, "Redis pub/sub: reconnecting");
                            }
                        },
                    }
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(settings.max_delay);
                }
            }
        };
        let mut ping = tokio::time::interval(settings.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                message = stream.next() => {
                    let Some(message) = message else {
                        tracing::warn!("Redis pub/sub connection lost; reconnecting");
                        let _ = tx.send(FeedItem::Disconnected);
                        break;
                    };
                    match decode(message.get_payload_bytes()) {
                        Some(notifications) => {
                            for n in notifications {
                                let _ = tx.send(FeedItem::Appended(n));
                            }
                        }
                        None => {
                            // Not ours, or damaged: a notification may be lost.
                            tracing::warn!("unreadable message on the Redis notification channel");
                            let _ = tx.send(FeedItem::Resync);
                        }
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(
                        settings.response_timeout,
                        sink.ping::<redis::Value>(),
                    )
                    .await;
                    if !matches!(pong, Ok(Ok(_))) {
                        tracing::warn!("Redis pub/sub connection does not answer PING; reconnecting");
                        let _ = tx.send(FeedItem::Disconnected);
                        break;
                    }
                }
            }
        }
    }
}

/// A live feed over the broadcast channel; a lagging receiver gets [`FeedItem::Resync`].
pub(crate) fn subscribe_local(tx: &broadcast::Sender<FeedItem>) -> resumable_sse_core::LiveFeed {
    let rx = tx.subscribe();
    futures_util::stream::unfold(rx, |mut rx| async move {
        let item = match rx.recv().await {
            Ok(item) => item,
            Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((item, rx))
    })
    .boxed()
}

/// Reads one notification message, as the append script writes it:
///
/// ```text
/// sse1 <stream> <epoch> <time ms> <count>\n
/// then <count> records: <position> <name len> <id len> <data len>\n<name><id><data>
/// ```
///
/// A length of -1 means "absent" for the name and the id, and "not carried" for the data
/// (the event is then read from the stream).
pub(crate) fn decode(payload: &[u8]) -> Option<Vec<Notification>> {
    let (header, mut rest) = line(payload)?;
    let mut fields = header.split(' ');
    if fields.next()? != "sse1" {
        return None;
    }
    let stream = StreamName::new(fields.next()?).ok()?;
    let epoch: Epoch = fields.next()?.parse().ok()?;
    let time_ms: u64 = fields.next()?.parse().ok()?;
    let count: usize = fields.next()?.parse().ok()?;
    if fields.next().is_some() {
        return None;
    }
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let (record, after) = line(rest)?;
        rest = after;
        let mut fields = record.split(' ');
        let position: Position = fields.next()?.parse().ok()?;
        let name_len: i64 = fields.next()?.parse().ok()?;
        let id_len: i64 = fields.next()?.parse().ok()?;
        let data_len: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() {
            return None;
        }
        let event = if data_len < 0 {
            None
        } else {
            let name = take(&mut rest, name_len)?;
            let id = take(&mut rest, id_len)?;
            let data = take(&mut rest, data_len)??;
            Some(Event {
                stream: stream.clone(),
                position,
                event: name.map(Text::from),
                id: id.map(Text::from),
                data: Text::from(data),
                time_ms,
            })
        };
        out.push(Notification {
            stream: stream.clone(),
            epoch,
            position,
            event,
        });
    }
    rest.is_empty().then_some(out)
}

/// The text up to the next newline, and what follows it.
fn line(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 1..]))
}

/// Takes `len` bytes of UTF-8 from the front of `rest`; `Some(None)` for a length of -1.
fn take<'a>(rest: &mut &'a [u8], len: i64) -> Option<Option<&'a str>> {
    if len < 0 {
        return Some(None);
    }
    let len = usize::try_from(len).ok()?;
    if rest.len() < len {
        return None;
    }
    let (value, after) = rest.split_at(len);
    *rest = after;
    Some(Some(std::str::from_utf8(value).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(position: u64, name: Option<&str>, id: Option<&str>, data: &str) -> Vec<u8> {
        let len = |s: Option<&str>| s.map_or(-1, |s| s.len() as i64);
        let mut out = format!("{position} {} {} {}\n", len(name), len(id), data.len()).into_bytes();
        out.extend(name.unwrap_or("").bytes());
        out.extend(id.unwrap_or("").bytes());
        out.extend(data.bytes());
        out
    }

    #[test]
    fn decodes_what_the_script_writes() {
        let epoch = Epoch::from_u64(0x0123_4567_89ab_cdef);
        let mut payload = format!("sse1 room:42 {epoch} 1700000000123 3\n").into_bytes();
        payload.extend(record(
            7,
            Some("tick"),
            Some("order-1"),
            "a\nb\r\n 5 -1 -1\n",
        ));
        payload.extend(b"8 -1 -1 -1\n");
        payload.extend(record(9, None, None, "\u{e9}\u{1f30d}"));
        let out = decode(&payload).expect("a valid message");
        assert_eq!(out.len(), 3);
        let stream = StreamName::new("room:42").unwrap();
        assert!(out.iter().all(|n| n.stream == stream && n.epoch == epoch));
        let first = out[0].event.as_ref().expect("carried");
        assert_eq!(
            (first.position, first.event.as_deref(), first.id.as_deref()),
            (7, Some("tick"), Some("order-1"))
        );
        assert_eq!(&*first.data, "a\nb\r\n 5 -1 -1\n");
        assert_eq!(first.time_ms, 1_700_000_000_123);
        assert_eq!((out[1].position, out[1].event.is_none()), (8, true));
        let third = out[2].event.as_ref().expect("carried");
        assert_eq!(
            (third.event.as_deref(), &*third.data),
            (None, "\u{e9}\u{1f30d}")
        );
    }

    #[test]
    fn rejects_damaged_messages() {
        let epoch = Epoch::from_u64(1);
        let good = {
            let mut p = format!("sse1 news {epoch} 1 1\n").into_bytes();
            p.extend(record(1, None, None, "hello"));
            p
        };
        assert!(decode(&good).is_some());
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(b'x');
        assert!(decode(&trailing).is_none());
        for bad in [
            "sse2 news 0000000000000001 1 0\n",
            "sse1 bad{name} 0000000000000001 1 0\n",
            "sse1 news nothex 1 0\n",
            "hello",
            "",
        ] {
            assert!(decode(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }
}
