//! Group commit for publishes: concurrent appends to one stream share store round trips.
//!
//! A publish to a stream nobody is writing to goes straight to the store. Publishes that
//! arrive while a write to their stream is in flight queue up, and are written together, in
//! one [`EventBuffer::append_many`] (one transaction on PostgreSQL, one script call on Redis),
//! as soon as that write finishes. A lone publisher thus waits for exactly one round trip, and
//! many publishers share them instead of queueing for the stream's lock (or for pooled
//! connections) one by one. See ADR 0013.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::hub::Breaker;
use crate::{Appended, Error, EventBuffer, NewEvent, Result, StreamName};

/// At most this many events, or this many bytes of data (and at least one event), per batch.
/// [`Config::page_size`](crate::Config::page_size) states both figures; a test keeps it true.
const MAX_BATCH_EVENTS: usize = 256;
const MAX_BATCH_BYTES: usize = 1 << 20;

struct Queued {
    event: NewEvent,
    reply: oneshot::Sender<Result<Appended>>,
}

pub(crate) struct Appender {
    buffer: Arc<dyn EventBuffer>,
    /// Told the outcome of every store write: once per write, however many publishes it
    /// carried, so one failed batch counts as one failure.
    breaker: Arc<Breaker>,
    /// Streams with a write in flight, and what waits for the next one. A stream without an
    /// entry has no writer: the next publish writes itself.
    pending: Mutex<HashMap<StreamName, Vec<Queued>>>,
}

impl Appender {
    pub(crate) fn new(buffer: Arc<dyn EventBuffer>, breaker: Arc<Breaker>) -> Arc<Self> {
        Arc::new(Appender {
            buffer,
            breaker,
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes waiting for a batched write, over all streams.
    pub(crate) fn queued(&self) -> usize {
        self.pending.lock().values().map(Vec::len).sum()
    }

    /// Appends `event` to `stream`: at once if nothing is being written to it, else with
    /// whatever else queued meanwhile.
    pub(crate) async fn append(
        self: &Arc<Self>,
        stream: &StreamName,
        event: NewEvent,
    ) -> Result<Appended> {
        let turn = {
            let mut pending = self.pending.lock();
            match pending.get_mut(stream) {
                Some(queue) => {
                    let (reply, answer) = oneshot::channel();
                    queue.push(Queued { event, reply });
                    Turn::Wait(answer)
                }
                None => {
                    pending.insert(stream.clone(), Vec::new());
                    Turn::Write(event)
                }
            }
        };
        match turn {
            Turn::Write(event) => {
                // Whatever happens to this future (even dropped mid-write), the next writer
                // takes over when it ends.
                let _writing = Writing {
                    appender: self,
                    stream,
                };
                let outcome = self.buffer.append(stream, event).await;
                self.breaker.record(&outcome);
                outcome
            }
            Turn::Wait(answer) => answer.await.unwrap_or_else(|_| {
                Err(Error::unavailable(
                    "the batched write was abandoned (the runtime is shutting down)",
                ))
            }),
        }
    }

    /// Called when a write to `stream` ends: writes what queued meanwhile from a task of its
    /// own (so the caller's answer does not wait for other publishers' events), or marks the
    /// stream as having no writer.
    fn hand_over(self: &Arc<Self>, stream: &StreamName) {
        {
            let mut pending = self.pending.lock();
            match pending.get(stream) {
                Some(queue) if !queue.is_empty() => {}
                _ => {
                    pending.remove(stream);
                    crate::collections::shrink_when_sparse(&mut pending);
                    return;
                }
            }
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.clone().drain(stream.clone()));
            }
            Err(_) => {
                // Dropped outside a runtime: nothing can write these; say so rather than
                // leave them waiting.
                let queue = self.pending.lock().remove(stream).unwrap_or_default();
                for queued in queue {
                    let _ = queued.reply.send(Err(Error::unavailable(
                        "no runtime left to write the batch on",
                    )));
                }
            }
        }
    }

    /// Writes the stream's queue in batches until it is empty, then marks the stream as having
    /// no writer.
    async fn drain(self: Arc<Self>, stream: StreamName) {
        loop {
            let batch = {
                let mut pending = self.pending.lock();
                let Some(queue) = pending.get_mut(&stream) else {
                    return;
                };
                if queue.is_empty() {
                    pending.remove(&stream);
                    crate::collections::shrink_when_sparse(&mut pending);
                    return;
                }
                let mut bytes = 0;
                let take = queue
                    .iter()
                    .take(MAX_BATCH_EVENTS)
                    .take_while(|q| {
                        bytes += q.event.data().len();
                        bytes <= MAX_BATCH_BYTES
                    })
                    .count()
                    .max(1);
                queue.drain(..take).collect::<Vec<_>>()
            };
            let (events, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|q| (q.event, q.reply)).unzip();
            let count = events.len();
            metrics::histogram!(crate::metrics::APPEND_BATCH_EVENTS).record(count as f64);
            let outcome = self.buffer.append_many(&stream, events).await;
            self.breaker.record(&outcome);
            match outcome {
                Ok(appended) if appended.len() == count => {
                    for (reply, appended) in replies.into_iter().zip(appended) {
                        let _ = reply.send(Ok(appended));
                    }
                }
                Ok(appended) => {
                    let message = format!(
                        "the store answered {} positions for a batch of {count} events",
                        appended.len()
                    );
                    for reply in replies {
                        let _ = reply.send(Err(Error::store(message.clone())));
                    }
                }
                Err(err) => {
                    for reply in replies {
                        let _ = reply.send(Err(copy(&err)));
                    }
                }
            }
        }
    }
}

enum Turn {
    /// Nothing is being written to the stream: write this event now.
    Write(NewEvent),
    /// A write is in flight: the answer comes with the next batch.
    Wait(oneshot::Receiver<Result<Appended>>),
}

/// The writer of a stream; hands over when dropped.
struct Writing<'a> {
    appender: &'a Arc<Appender>,
    stream: &'a StreamName,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.appender.hand_over(self.stream);
    }
}

/// The same error for each publisher of a failed batch (a store's error is not `Clone`: its
/// source chain is kept as text).
fn copy(err: &Error) -> Error {
    let chain = || {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    };
    match err {
        Error::InvalidStreamName(s) => Error::InvalidStreamName(s.clone()),
        Error::InvalidField { field, reason } => Error::InvalidField { field, reason },
        Error::TooLarge { size, limit } => Error::TooLarge {
            size: *size,
            limit: *limit,
        },
        Error::Forbidden(s) => Error::Forbidden(s.clone()),
        Error::NotFound(s) => Error::NotFound(s.clone()),
        Error::Full(s) => Error::Full(s.clone()),
        Error::Unavailable(_) => Error::unavailable(chain()),
        Error::Store(_) => Error::store(chain()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Config::page_size` states the batch limits in prose; this keeps the prose true.
    #[test]
    fn config_docs_state_the_batch_limits() {
        let docs = include_str!("config.rs");
        let figures = format!(
            "at most {MAX_BATCH_EVENTS} events or {} MiB of data",
            MAX_BATCH_BYTES >> 20
        );
        assert!(
            docs.contains(&figures),
            "Config::page_size should say {figures:?}"
        );
        assert!(docs.contains("`MAX_BATCH_EVENTS` and `MAX_BATCH_BYTES`"));
    }
}
