use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use async_trait::async_trait;
use futures_util::StreamExt;
use resumable_sse_core::time::unix_ms;
use resumable_sse_core::{
    Appended, Epoch, EventBuffer, Event, FeedItem, LiveFeed, NewEvent, Notification,
    Position, ReadPage, Result, Retention, StreamName,
};
use tokio::sync::broadcast;

#[derive(Debug)]
struct VecStore {
    retention: Retention,
    streams: Mutex<HashMap<StreamName, Log>>,
    feed: broadcast::Sender<Notification>,
}

#[derive(Debug)]
struct Log {
    epoch: Epoch,
    head: Position,
    events: VecDeque<Event>,
}

impl VecStore {
    fn new(retention: Retention) -> Self {
        VecStore { retention, streams: Mutex::default(), feed: broadcast::channel(1024).0 }
    }
}

impl Log {
    /// Drops the events past retention: beyond the newest `max_len`, older than `max_age`,
    /// or beyond `max_bytes` of data (the newest event stays whatever its size).
    fn trim(&mut self, retention: &Retention) {
        let max_age = retention.max_age().as_millis() as u64;
        let now = unix_ms(SystemTime::now());
        let mut bytes: usize = self.events.iter().map(|e| e.data.len()).sum();
        while self.events.len() > retention.max_len()
            || self.events.front().is_some_and(|e| now.saturating_sub(e.time_ms) > max_age)
            || (self.events.len() > 1 && bytes > retention.max_bytes())
        {
            bytes -= self.events.pop_front().map_or(0, |e| e.data.len());
        }
    }
}

#[async_trait]
impl EventBuffer for VecStore {
    async fn append(&self, stream: &StreamName, event: NewEvent) -> Result<Appended> {
        let mut streams = self.streams.lock().unwrap();
        // A new log gets a new epoch: this store's data dies with it.
        let log = streams.entry(stream.clone()).or_insert_with(|| Log {
            epoch: Epoch::random(), head: 0, events: VecDeque::new(),
        });
        log.trim(&self.retention);
        // A publisher id is an idempotency key while its event is retained.
        if let Some(id) = event.id()
            && let Some(first) = log.events.iter().find(|e| e.id.as_deref() == Some(id))
        {
            return Ok(Appended { epoch: log.epoch, position: first.position, duplicate: true });
        }
        log.head += 1;
        let event = event.into_event(stream.clone(), log.head, SystemTime::now());
        log.events.push_back(event.clone());
        log.trim(&self.retention);
        // Announce while holding the lock, so notifications leave in position order.
        let _ = self.feed.send(Notification {
            stream: stream.clone(), epoch: log.epoch, position: log.head, event: Some(event),
        });
        Ok(Appended { epoch: log.epoch, position: log.head, duplicate: false })
    }

    async fn read(&self, stream: &StreamName, after: Position, limit: usize) -> Result<ReadPage> {
        let mut streams = self.streams.lock().unwrap();
        let Some(log) = streams.get_mut(stream) else {
            return Ok(ReadPage::missing());
        };
        log.trim(&self.retention);
        let oldest = log.events.front().map_or(log.head + 1, |e| e.position);
        let skip = (after + 1).saturating_sub(oldest) as usize;
        Ok(ReadPage {
            epoch: Some(log.epoch),
            oldest,
            head: log.head,
            events: log.events.iter().skip(skip).take(limit).cloned().collect(),
        })
    }

    fn live_feed(&self) -> LiveFeed {
        let rx = self.feed.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            let item = match rx.recv().await {
                Ok(n) => FeedItem::Appended(n),
                Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((item, rx))
        })
        .boxed()
    }
}
