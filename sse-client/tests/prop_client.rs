//! Property tests of the client on what a server sends: any event the SSE encoder writes
//! arrives as the same [`Event::Message`] (its data with CR, LF, CRLF, NUL and non-ASCII,
//! line breaks as LF), and any bytes at all as a response body never panic the client,
//! which reports the end of the response and would reconnect.
//!
//! One real server on a loopback port serves, for each case, the body the case sets; each
//! case runs one client against it. Cases: 128 per property by default, `PROPTEST_CASES` for
//! a longer campaign (docs/testing.md).

// Helpers panic on what a test would: a broken server.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use resumable_sse_client::{Backoff, Client, Event, Message};
use resumable_sse_core::codec;

const WAIT: Duration = Duration::from_secs(10);

/// `cases` per property, or `PROPTEST_CASES` when set (a long campaign).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(cases),
    )
}

struct Shared {
    runtime: tokio::runtime::Runtime,
    url: String,
    body: Arc<Mutex<Bytes>>,
    /// One case at a time: the body is the server's only state.
    turn: Mutex<()>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let body = Arc::new(Mutex::new(Bytes::new()));
        let served = body.clone();
        let app = Router::new().route(
            "/events",
            get(move || {
                let body = served.lock().unwrap().clone();
                async move { ([(CONTENT_TYPE, "text/event-stream")], body) }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Shared {
            runtime,
            url,
            body,
            turn: Mutex::new(()),
        }
    })
}

/// Serves `body` once to a new client; every event it gives until the response ends.
fn receive(body: Bytes) -> Vec<Event> {
    let shared = shared();
    let _turn = shared.turn.lock().unwrap_or_else(|p| p.into_inner());
    *shared.body.lock().unwrap() = body;
    shared.runtime.block_on(async {
        let mut client = Client::builder(shared.url.as_str())
            .backoff(Backoff::new(
                Duration::from_secs(60),
                Duration::from_secs(60),
            ))
            .build()
            .unwrap();
        let mut events = Vec::new();
        loop {
            let event = tokio::time::timeout(WAIT, client.next())
                .await
                .expect("the client answers")
                .expect("the client goes on")
                .expect("the response is a 200 event stream");
            if matches!(event, Event::Disconnected(_)) {
                return events;
            }
            events.push(event);
        }
    })
}

/// Text with many line breaks, NULs and multi-byte characters.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\r".to_owned()),
        Just("\n".to_owned()),
        Just("\r\n".to_owned()),
        Just("\0".to_owned()),
        Just(" ".to_owned()),
        "[a-z]{1,4}",
        any::<char>().prop_map(String::from),
        ".{0,8}",
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn encoded_events_arrive_as_sent(
        events in proptest::collection::vec(
            ("[a-z]{1,8}".prop_filter("not a marker", |n| !["connected", "reset", "ended"].contains(&n.as_str())),
             proptest::option::of("[^\r\n\0]{1,16}"),
             text()),
            1..6,
        ),
    ) {
        let mut body = BytesMut::new();
        let mut expected = Vec::new();
        let mut id = String::new();
        for (name, event_id, data) in &events {
            if let Some(event_id) = event_id {
                codec::write_field(&mut body, "id", event_id).unwrap();
                id.clone_from(event_id);
            }
            codec::write_field(&mut body, "event", name).unwrap();
            codec::write_data(&mut body, data);
            codec::write_end(&mut body);
            expected.push(Some(Message {
                event: name.clone(),
                data: data.replace("\r\n", "\n").replace('\r', "\n"),
                id: id.clone(),
            }));
        }
        let got = receive(body.freeze());
        prop_assert!(matches!(got.first(), Some(Event::Opened)), "{got:?}");
        let messages: Vec<Option<Message>> = got[1..]
            .iter()
            .map(|e| match e {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect();
        prop_assert_eq!(messages, expected);
    }

    #[test]
    fn any_body_never_panics_the_client(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        marker in prop_oneof![Just("connected"), Just("reset"), Just("ended"), Just("refused")],
        data in text(),
    ) {
        // Marker events with data that is not what the markers hold, then anything.
        let mut body = BytesMut::new();
        codec::write_field(&mut body, "event", marker).unwrap();
        codec::write_data(&mut body, &data);
        codec::write_end(&mut body);
        body.extend_from_slice(&bytes);
        let events = receive(body.freeze());
        prop_assert!(matches!(events.first(), Some(Event::Opened)), "{events:?}");
    }
}
