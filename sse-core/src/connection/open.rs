//! Where each stream of a new connection starts: resumed from its cursor, reset, or at the
//! head; and the first frames that say so.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use serde::Serialize;

use super::log::ConnectionLog;
use super::state::{Opened, State};
use super::{ConnectRequest, ConnectedInfo, Connection, ResetReason};
use crate::cursor::{Cursor, SessionRef, fingerprint};
use crate::hub::{Hub, SessionStatus, Watch};
use crate::signal::Signal;
use crate::transport::Frame;
use crate::{Epoch, Error, Position, ReadPage, ResetPolicy, Result, StreamName};

enum Start {
    Resume(Cursor),
    Reset(ResetReason),
    Fresh,
}

#[derive(Serialize)]
struct ResetData<'a> {
    reason: &'static str,
    streams: Vec<&'a str>,
}

fn compatible(epoch: Option<Epoch>, position: Position, store: Option<Epoch>) -> bool {
    epoch == store || (epoch.is_none() && position == 0)
}

fn restart(page: &ReadPage, policy: ResetPolicy) -> (Option<Epoch>, Position) {
    match policy {
        ResetPolicy::SkipToHead => (page.epoch, page.head),
        _ => (page.epoch, page.oldest.saturating_sub(1).min(page.head)),
    }
}

/// Where one stream of a connection continues, given its cursor entry and a fresh page:
/// the entry to use and the reason for a reset, if one is needed.
pub(super) fn check(
    (epoch, position): (Option<Epoch>, Position),
    page: &ReadPage,
    policy: ResetPolicy,
) -> ((Option<Epoch>, Position), Option<ResetReason>) {
    if !compatible(epoch, position, page.epoch) {
        (restart(page, policy), Some(ResetReason::EpochChanged))
    } else if position > page.head {
        // A cursor from the future in this epoch: not one we issued.
        (restart(page, policy), Some(ResetReason::InvalidId))
    } else if page.oldest > position + 1 {
        (restart(page, policy), Some(ResetReason::Retention))
    } else {
        ((page.epoch.or(epoch), position), None)
    }
}

/// Whether cursor `a` is at or after `b` in every stream (same epochs, positions no lower).
/// A cursor recorded by another instance of a multi-instance deployment can be further than
/// the one a connection here reached.
fn covers(a: &Cursor, b: &Cursor) -> bool {
    a.entries().len() == b.entries().len()
        && a.entries()
            .iter()
            .zip(b.entries())
            .all(|((ea, pa), (eb, pb))| ea == eb && pa >= pb)
}

/// Whether the session `old` was sent private messages after `entry`, the position its
/// client's cursor reached in that session's stream, or whether that cannot be ruled out.
/// Only the stream's head is read (and, when the stream does not exist, whether the session
/// does): its messages are never delivered to a client that cannot prove it owns the session.
///
/// Nothing was missed when the stream is where the cursor left it, or when the cursor had read
/// nothing from it, it does not exist, and the session still lives (a live session's stream
/// exists once anything is sent to it). Anything else (another epoch, the stream gone after
/// the cursor read from it, the session gone with its stream) cannot be shown complete.
async fn missed_private(
    hub: &Hub,
    old: &crate::SessionId,
    (epoch, position): (Option<Epoch>, Position),
) -> Result<bool> {
    let page = hub.buffer().read(&old.stream(), 0, 0).await?;
    if page.epoch.is_some() || page.head > 0 {
        return Ok(!(compatible(epoch, position, page.epoch) && page.head == position));
    }
    if epoch.is_some() || position > 0 {
        return Ok(true);
    }
    Ok(hub.sessions().load(old).await?.is_none())
}

/// Opens a connection (see [`Hub::connect`]).
pub(super) async fn open(hub: Hub, request: ConnectRequest) -> Result<Connection> {
    let config = hub.config();
    if request.streams.is_empty() {
        return Err(Error::InvalidStreamName("no stream was requested".into()));
    }
    if request.streams.len() > config.max_streams {
        return Err(Error::InvalidStreamName(format!(
            "{} streams requested, at most {} are allowed",
            request.streams.len(),
            config.max_streams
        )));
    }
    let own = request.session.as_ref().map(|s| s.id.stream());
    if let Some(bad) = request
        .streams
        .iter()
        .find(|s| s.is_reserved() && Some(*s) != own.as_ref())
    {
        return Err(Error::Forbidden(format!("stream {bad} is private")));
    }
    // The requested streams, sorted, then the session's private stream last: the cursor's
    // fingerprint covers the requested streams only, so a client that comes back without its
    // session still resumes them (see ADR 0003).
    let mut names: Vec<StreamName> = request
        .streams
        .iter()
        .filter(|s| Some(*s) != own.as_ref())
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    let fp = fingerprint(&names);
    let public = names.len();
    names.extend(own);
    let session = request.session.as_ref();
    let own_id = session.map(|s| s.id);

    // Subscribe first: anything appended from here on wakes this connection, so the replay
    // read below and live delivery cannot miss an event between them.
    let signal = Arc::new(Signal::default());
    let subs: Vec<Watch> = names.iter().map(|n| hub.watch(n, &signal)).collect();
    let start = match (&request.last_event_id, session) {
        (Some(id), _) => match Cursor::decode(id, &names[..public]) {
            Ok(cursor) => Start::Resume(cursor),
            Err(_) => Start::Reset(ResetReason::InvalidId),
        },
        // A plain reload: the session's cursor, once its other connections here are closed
        // (`Hub::settle`), whichever of the stored one and the one they reached is further.
        (None, Some(s)) => {
            let reached = hub.settle(&s.id).await;
            let usable = |c: Option<&str>| {
                c.and_then(|c| Cursor::decode(c, &names[..public]).ok())
                    .filter(|cursor| cursor.session().is_some_and(|r| r.is(&s.id)))
            };
            match (usable(reached.as_deref()), usable(s.cursor.as_deref())) {
                (Some(reached), Some(stored)) if !covers(&reached, &stored) => {
                    Start::Resume(stored)
                }
                (Some(cursor), _) | (None, Some(cursor)) => Start::Resume(cursor),
                (None, None) => Start::Fresh,
            }
        }
        (None, None) => Start::Fresh,
    };

    let mut entries = Vec::with_capacity(names.len());
    let mut resets: Vec<(ResetReason, Vec<&str>)> = Vec::new();
    let mut replay = 0;
    for (i, name) in names.iter().enumerate() {
        // A resume whose cursor the hot window holds continues from the window: the store
        // is not asked (a reconnect storm would otherwise read it once per client). A fresh
        // start asks it, for its head: the window may lag behind appends already
        // acknowledged, which a client connecting after them must not receive.
        let held = match &start {
            Start::Resume(cursor) if i < public => {
                let (epoch, position) = cursor.entries()[i];
                subs[i]
                    .holds_up_to(epoch, position)
                    .map(|head| ((epoch, position), head))
            }
            _ => None,
        };
        if let Some((entry, head)) = held {
            replay += head - entry.1;
            entries.push(entry);
            continue;
        }
        let page = hub.buffer().read(name, 0, 0).await?;
        hub.seed(&subs[i], &page);
        let (entry, reason) = match &start {
            Start::Fresh => ((page.epoch, page.head), None),
            Start::Reset(reason) => (restart(&page, config.reset_policy), Some(*reason)),
            Start::Resume(cursor) if i < public => {
                check(cursor.entries()[i], &page, config.reset_policy)
            }
            // The session's private stream.
            Start::Resume(cursor) => match (cursor.session(), session) {
                (Some(r), Some(s)) if r.is(&s.id) => {
                    check(cursor.entries()[public], &page, config.reset_policy)
                }
                // The cursor came from another session (the client came back without its
                // token, or with an expired one): that session's private messages are not
                // this client's. Whatever it was sent after the cursor is lost to the client,
                // so say so; if it was sent nothing, nothing is lost, and the new session's
                // stream starts at its head without a reset.
                (Some(old), Some(s)) => {
                    let missed = match old {
                        SessionRef::Id(old) => {
                            missed_private(&hub, &old, cursor.entries()[public]).await?
                        }
                        // An older cursor names its session by a tag only: the stream
                        // cannot be looked up, so nothing can be shown to be complete.
                        SessionRef::Tag(_) => true,
                    };
                    if missed {
                        let reason = if s.status == SessionStatus::Expired {
                            ResetReason::SessionExpired
                        } else {
                            ResetReason::SessionChanged
                        };
                        (restart(&page, config.reset_policy), Some(reason))
                    } else {
                        ((page.epoch, page.head), None)
                    }
                }
                // A cursor made without a session (an embedding without one): nothing was
                // read from this stream before.
                _ => ((page.epoch, page.head), None),
            },
        };
        replay += page.head.saturating_sub(entry.1);
        if let Some(reason) = reason {
            match resets.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, streams)) => streams.push(name.as_str()),
                None => resets.push((reason, vec![name.as_str()])),
            }
        }
        entries.push(entry);
    }
    let cursor = match own_id {
        Some(id) => Cursor::with_session(entries, id),
        None => Cursor::new(entries),
    };
    let info = ConnectedInfo {
        session: session.map(|s| s.id.to_string()),
        resumed: matches!(start, Start::Resume(_)),
        replay,
        reset: !resets.is_empty(),
    };

    let outcome = if info.reset {
        "reset"
    } else if info.resumed {
        "resumed"
    } else {
        "fresh"
    };
    metrics::counter!(crate::metrics::CONNECTIONS_TOTAL, "outcome" => outcome).increment(1);
    for (reason, _) in &resets {
        metrics::counter!(crate::metrics::RESETS_TOTAL, "reason" => reason.as_str()).increment(1);
    }
    if !matches!(start, Start::Fresh) {
        metrics::histogram!(crate::metrics::REPLAYED_EVENTS).record(replay as f64);
    }

    // The lines go under the request's span, made afresh for each when the server gave a way
    // to (`ConnectRequest::log_span`), and, with debug spans on, a `sse.connection` span in
    // it; they carry the session id themselves. The token is never logged.
    let log = ConnectionLog::new(request.log_span.clone(), session.map(|s| s.id), names.len());
    let session_field = log.session();
    tracing::info!(
        parent: &log.span(),
        session = %session_field,
        resumed = info.resumed,
        replay,
        reset = info.reset,
        "connected"
    );
    for (reason, streams) in &resets {
        tracing::info!(parent: &log.span(), session = %session_field, reason = reason.as_str(), ?streams, "reset");
    }

    let mut pending = BytesMut::new();
    let mut id = String::new();
    cursor.encode_into(fp, &mut id);
    let transport = hub.transport();
    transport.write_frame(&mut pending, &Frame::Retry(config.retry));
    let data = serde_json::to_string(&info).map_err(Error::store)?;
    transport.write_frame(
        &mut pending,
        &Frame::Connected {
            id: &id,
            data: &data,
        },
    );
    for (reason, streams) in resets {
        let data = serde_json::to_string(&ResetData {
            reason: reason.as_str(),
            streams,
        })
        .map_err(Error::store)?;
        transport.write_frame(
            &mut pending,
            &Frame::Reset {
                id: &id,
                data: &data,
            },
        );
    }

    if let Some(s) = session {
        let expires = SystemTime::now() + config.session_ttl;
        if let Err(err) = hub.sessions().touch(&s.id, expires).await {
            tracing::warn!(parent: &log.span(), session = %session_field, error = %err, "could not extend the session");
        }
    }

    let session = session.map(|s| s.id);
    let state = State::new(Opened {
        hub,
        names,
        subs,
        cursor,
        fp,
        first_frames: pending,
        session,
        signal,
        log: log.clone(),
        expires_at: request.expires_at,
    });
    Ok(Connection {
        info,
        log,
        inner: Box::pin(state),
    })
}
