//! The protocol engine, end to end without HTTP: a [`Hub`] over the memory store, its
//! connections read as a client would, through the one SSE parser.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use resumable_sse_core::codec::{Item, ParsedEvent, Parser};
use resumable_sse_core::cursor::Cursor;
use resumable_sse_core::{
    Config, ConnectRequest, Connection, Error, EventBuffer, Hub, NewEvent, ResetPolicy,
    SessionStatus, SessionStore, StreamName, TokenClaims, TokenKeys,
};
use resumable_sse_store_memory::{MemoryConfig, MemoryStore};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};

/// Longest wait for anything a test expects; reaching it fails the test.
const WAIT: Duration = Duration::from_secs(10);

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn hub_over(store: &MemoryStore, config: Config) -> Hub {
    let store = Arc::new(store.clone());
    Hub::builder(store.clone(), store).config(config).build()
}

fn new_hub() -> (MemoryStore, Hub) {
    let store = MemoryStore::default();
    let hub = hub_over(&store, Config::default());
    (store, hub)
}

async fn publish(hub: &Hub, stream: &StreamName, data: &str) -> resumable_sse_core::Appended {
    hub.publish(stream, NewEvent::new(data))
        .await
        .expect("publish succeeds")
}

/// A client reading a connection: parses chunks with the one parser and waits at most
/// [`WAIT`] for each item.
struct Client {
    connection: Connection,
    parser: Parser,
    items: VecDeque<Item>,
    ended: bool,
}

impl Client {
    async fn connect(hub: &Hub, request: ConnectRequest) -> Client {
        let connection = hub.connect(request).await.expect("connect succeeds");
        Client {
            connection,
            parser: Parser::new(),
            items: VecDeque::new(),
            ended: false,
        }
    }

    /// The next parsed item (event, retry hint or comment); `None` once the connection ended.
    async fn item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.ended {
                return None;
            }
            match timeout(WAIT, self.connection.next()).await {
                Err(_) => panic!("nothing arrived within {WAIT:?}"),
                Ok(None) => self.ended = true,
                Ok(Some(chunk)) => self.items.extend(self.parser.feed(&chunk)),
            }
        }
    }

    /// The next event, skipping retry hints and comments.
    async fn event(&mut self) -> ParsedEvent {
        loop {
            match self.item().await {
                Some(Item::Event(event)) => return event,
                Some(_) => {}
                None => panic!("the connection ended while an event was expected"),
            }
        }
    }

    /// The data of the next `n` events.
    async fn data(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.event().await.data);
        }
        out
    }

    /// The `connected` event (which must come first) and its JSON data.
    async fn connected(&mut self) -> (ParsedEvent, Value) {
        let event = self.event().await;
        assert_eq!(event.event, "connected", "the first event is `connected`");
        assert!(!event.last_event_id.is_empty(), "`connected` carries an id");
        let info = serde_json::from_str(&event.data).expect("`connected` data is JSON");
        (event, info)
    }

    /// The next event, which must be a `reset`, and its JSON data.
    async fn reset(&mut self) -> Value {
        let event = self.event().await;
        assert_eq!(
            event.event, "reset",
            "a `reset` event was expected, got {event:?}"
        );
        serde_json::from_str(&event.data).expect("`reset` data is JSON")
    }

    /// What a browser would send back as `Last-Event-ID`.
    fn last_event_id(&self) -> String {
        self.parser.last_event_id().to_owned()
    }
}

fn info(resumed: bool, replay: u64, reset: bool) -> (Value, Value, Value) {
    (json!(resumed), json!(replay), json!(reset))
}

fn info_of(value: &Value) -> (Value, Value, Value) {
    (
        value["resumed"].clone(),
        value["replay"].clone(),
        value["reset"].clone(),
    )
}

#[tokio::test]
async fn resume_after_k_events_replays_exactly_those_then_live() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    publish(&hub, &news, "before").await;

    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(false, 0, false), "{data}");
    hub.publish(
        &news,
        NewEvent::new("one").with_event("tick").expect("valid name"),
    )
    .await
    .expect("publish succeeds");
    let one = client.event().await;
    assert_eq!((one.event.as_str(), one.data.as_str()), ("tick", "one"));
    let id = client.last_event_id();
    drop(client);

    for k in 0..5 {
        publish(&hub, &news, &format!("k{k}")).await;
    }
    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id.clone()));
    let mut client = Client::connect(&hub, request).await;
    let (connected, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 5, false), "{data}");
    assert_eq!(
        connected.last_event_id, id,
        "`connected` carries the cursor the client resumed from"
    );
    let mut ids = vec![id];
    for k in 0..5 {
        let event = client.event().await;
        assert_eq!(event.data, format!("k{k}"));
        assert_eq!(event.event, "message", "unnamed events arrive as `message`");
        assert!(
            !ids.contains(&event.last_event_id),
            "every event has a new id"
        );
        ids.push(event.last_event_id);
    }
    publish(&hub, &news, "live").await;
    assert_eq!(client.data(1).await, ["live"]);
}

#[tokio::test]
async fn connected_id_resumes_without_loss() {
    let (_store, hub) = new_hub();
    let (alpha, beta) = (stream("alpha"), stream("beta"));
    for data in ["a1", "a2", "a3"] {
        publish(&hub, &alpha, data).await;
    }
    // `beta` does not exist yet: its cursor entry has no epoch.
    let request = ConnectRequest::new(vec![beta.clone(), alpha.clone()]);
    let mut client = Client::connect(&hub, request).await;
    let (connected, _) = client.connected().await;
    drop(client);

    publish(&hub, &alpha, "a4").await;
    publish(&hub, &beta, "b1").await;
    publish(&hub, &beta, "b2").await;
    let request = ConnectRequest::new(vec![alpha.clone(), beta.clone()])
        .last_event_id(Some(connected.last_event_id));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 3, false), "{data}");
    let mut got = client.data(3).await;
    got.sort();
    assert_eq!(
        got,
        ["a4", "b1", "b2"],
        "exactly what was published while away"
    );
    publish(&hub, &beta, "b3").await;
    assert_eq!(client.data(1).await, ["b3"]);
}

#[tokio::test]
async fn each_event_id_resumes_right_after_that_event() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    for i in 0..5 {
        publish(&hub, &news, &i.to_string()).await;
    }
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(client.event().await.last_event_id);
    }
    drop(client);
    for (i, id) in ids.into_iter().enumerate() {
        let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id));
        let mut client = Client::connect(&hub, request).await;
        let (_, data) = client.connected().await;
        assert_eq!(info_of(&data), info(true, 4 - i as u64, false), "{data}");
        let expected: Vec<String> = (i + 1..5).map(|j| j.to_string()).collect();
        assert_eq!(client.data(expected.len()).await, expected);
    }
}

#[tokio::test]
async fn event_data_reaches_the_client_exactly() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    let payloads = [
        "a\r\nb\rc\nd",
        "",
        "data: x\n\nevent: y",
        "\u{e9}\u{1f30d}",
        "{\"k\":1}",
    ];
    for data in payloads {
        let event = NewEvent::new(data).with_event("t:1").expect("valid name");
        hub.publish(&news, event).await.expect("publish succeeds");
    }
    for data in payloads {
        let event = client.event().await;
        // The wire has no CR or CRLF inside data: clients reassemble lines with LF.
        assert_eq!(event.data, data.replace("\r\n", "\n").replace('\r', "\n"));
        assert_eq!(event.event, "t:1");
    }
}

#[tokio::test]
async fn reset_when_the_cursor_is_behind_retention() {
    let store = MemoryStore::new(MemoryConfig::default().with_retention(
        resumable_sse_core::Retention::new(3, Duration::from_secs(3600)),
    ));
    let hub = hub_over(&store, Config::default());
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    publish(&hub, &news, "e1").await;
    assert_eq!(client.data(1).await, ["e1"]);
    let id = client.last_event_id();
    drop(client);

    for i in 2..=11 {
        publish(&hub, &news, &format!("e{i}")).await;
    }
    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 3, true), "{data}");
    assert_eq!(
        client.reset().await,
        json!({"reason": "retention", "streams": ["news"]})
    );
    assert_eq!(
        client.data(3).await,
        ["e9", "e10", "e11"],
        "every retained event follows"
    );
    publish(&hub, &news, "e12").await;
    assert_eq!(client.data(1).await, ["e12"]);
}

#[tokio::test]
async fn reset_for_ids_that_are_not_cursors_for_the_streams() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let mut appended = None;
    for data in ["1", "2", "3"] {
        appended = Some(publish(&hub, &news, data).await);
    }
    let epoch = appended.expect("published").epoch;

    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    let (connected, _) = client.connected().await;
    drop(client);
    let mut raw = URL_SAFE_NO_PAD
        .decode(&connected.last_event_id)
        .expect("a cursor is base64");
    raw[0] = 2;
    let wrong_version = URL_SAFE_NO_PAD.encode(&raw);
    let other_streams = Cursor::new(vec![(Some(epoch), 3)]).encode(&[stream("other")]);
    let two_streams =
        Cursor::new(vec![(Some(epoch), 3), (None, 0)]).encode(&[news.clone(), stream("other")]);
    let from_the_future = Cursor::new(vec![(Some(epoch), 99)]).encode(std::slice::from_ref(&news));

    for bad in [
        "garbage!!".to_owned(),
        "A".repeat(4096),
        "AQ".to_owned(),
        "\u{e9}\u{1f30d}".to_owned(),
        " ".to_owned(),
        wrong_version,
        other_streams,
        two_streams,
        from_the_future,
    ] {
        let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(bad.clone()));
        let mut client = Client::connect(&hub, request).await;
        let (_, data) = client.connected().await;
        assert_eq!(
            (&data["replay"], &data["reset"]),
            (&json!(3), &json!(true)),
            "{bad:.40}: {data}"
        );
        assert_eq!(
            client.reset().await,
            json!({"reason": "invalid_id", "streams": ["news"]}),
            "{bad:.40}"
        );
        assert_eq!(client.data(3).await, ["1", "2", "3"], "{bad:.40}");
    }

    // An empty Last-Event-ID is no Last-Event-ID: a fresh start, no reset.
    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(String::new()));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(false, 0, false), "{data}");
}

#[tokio::test]
async fn reset_when_the_epoch_changed() {
    let news = stream("news");
    let (_old_store, old_hub) = new_hub();
    let mut client = Client::connect(&old_hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    publish(&old_hub, &news, "old").await;
    assert_eq!(client.data(1).await, ["old"]);
    let id = client.last_event_id();
    drop(client);

    // A restarted memory store: the same stream in a new epoch.
    let (_store, hub) = new_hub();
    publish(&hub, &news, "new 1").await;
    publish(&hub, &news, "new 2").await;
    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id.clone()));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 2, true), "{data}");
    assert_eq!(
        client.reset().await,
        json!({"reason": "epoch_changed", "streams": ["news"]})
    );
    assert_eq!(
        client.data(2).await,
        ["new 1", "new 2"],
        "the whole new epoch follows"
    );

    // Restarted and nothing appended yet: a reset, then live events.
    let (_store, hub) = new_hub();
    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 0, true), "{data}");
    assert_eq!(client.reset().await["reason"], "epoch_changed");
    publish(&hub, &news, "first").await;
    assert_eq!(client.data(1).await, ["first"]);
}

#[tokio::test]
async fn reset_when_the_epoch_changes_while_connected() {
    let store = MemoryStore::new(
        MemoryConfig::default()
            .with_retention(resumable_sse_core::Retention::new(
                1000,
                Duration::from_millis(100),
            ))
            .with_sweep_interval(Duration::from_secs(3600)),
    );
    let hub = hub_over(&store, Config::default());
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    let old = publish(&hub, &news, "old").await;
    assert_eq!(client.data(1).await, ["old"]);

    // The event expires and the sweeper drops the emptied log: the stream's next append
    // starts a new epoch.
    let deadline = Instant::now() + WAIT;
    loop {
        store.sweep();
        let page = store.read(&news, 0, 10).await.expect("read succeeds");
        if page.epoch.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the event never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = publish(&hub, &news, "new").await;
    assert_ne!(
        new.epoch, old.epoch,
        "the dropped log came back in a new epoch"
    );
    assert_eq!(new.position, 1);

    assert_eq!(
        client.reset().await,
        json!({"reason": "epoch_changed", "streams": ["news"]})
    );
    assert_eq!(client.data(1).await, ["new"]);
}

#[tokio::test]
async fn reset_when_the_session_expired() {
    let (store, hub) = new_hub();
    let news = stream("news");
    let first = hub
        .resolve_session(None, None)
        .await
        .expect("a new session");
    assert_eq!(first.status, SessionStatus::New);
    let request = ConnectRequest::new(vec![news.clone()]).session(first.context());
    let mut client = Client::connect(&hub, request).await;
    client.connected().await;
    publish(&hub, &news, "seen").await;
    assert_eq!(client.data(1).await, ["seen"]);
    let id = client.last_event_id();
    drop(client);

    publish(&hub, &news, "missed 1").await;
    publish(&hub, &news, "missed 2").await;
    // A private message the client will never get: that is what makes the reset a loss.
    hub.send_to_session(&first.record.id, NewEvent::new("private"))
        .await
        .expect("the session is alive");
    // The store forgets the session, as it does once its TTL has passed.
    store
        .delete(&first.record.id)
        .await
        .expect("delete succeeds");

    let second = hub
        .resolve_session(Some(&first.token), None)
        .await
        .expect("a replacement session");
    assert_eq!(second.status, SessionStatus::Expired);
    assert_ne!(second.record.id, first.record.id);
    let request = ConnectRequest::new(vec![news.clone()])
        .session(second.context())
        .last_event_id(Some(id));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(data["session"], json!(second.record.id.to_string()));
    assert_eq!(data["reset"], json!(true), "{data}");
    let reset = client.reset().await;
    assert_eq!(reset["reason"], "session_expired");
    // Only the private stream is reset: the public one resumes exactly.
    let private = second.record.id.stream();
    assert_eq!(reset["streams"], json!([private.as_str()]));
    assert_eq!(
        client.data(2).await,
        ["missed 1", "missed 2"],
        "the public stream resumes where the cursor says"
    );
}

#[tokio::test]
async fn skip_to_head_policy_continues_live_after_the_reset() {
    let store = MemoryStore::new(MemoryConfig::default().with_retention(
        resumable_sse_core::Retention::new(2, Duration::from_secs(3600)),
    ));
    let hub = hub_over(
        &store,
        Config::default().with_reset_policy(ResetPolicy::SkipToHead),
    );
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    publish(&hub, &news, "1").await;
    assert_eq!(client.data(1).await, ["1"]);
    let id = client.last_event_id();
    drop(client);
    for data in ["2", "3", "4"] {
        publish(&hub, &news, data).await;
    }

    for (last_event_id, reason) in [(id, "retention"), ("garbage".to_owned(), "invalid_id")] {
        let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(last_event_id));
        let mut client = Client::connect(&hub, request).await;
        let (_, data) = client.connected().await;
        assert_eq!(
            (&data["replay"], &data["reset"]),
            (&json!(0), &json!(true)),
            "{data}"
        );
        assert_eq!(client.reset().await["reason"], reason);
        let live = format!("live after {reason}");
        publish(&hub, &news, &live).await;
        assert_eq!(client.data(1).await, [live], "nothing retained is replayed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_while_clients_connect_loses_and_duplicates_nothing() {
    const EVENTS: usize = 1000;
    const CLIENTS: usize = 6;
    let (_store, hub) = new_hub();
    let news = stream("news");
    // A cursor from before the stream existed: resuming from it must yield every event.
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    let (connected, _) = client.connected().await;
    let from_start = connected.last_event_id;
    drop(client);

    let (progress, watch) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let hub = hub.clone();
        let news = news.clone();
        tokio::spawn(async move {
            for i in 0..EVENTS {
                publish(&hub, &news, &i.to_string()).await;
                progress.send_replace(i + 1);
                tokio::task::yield_now().await;
            }
        })
    };
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(CLIENTS);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let hub = hub.clone();
        let news = news.clone();
        let from_start = from_start.clone();
        let mut watch = watch.clone();
        let connected_tx = connected_tx.clone();
        clients.push(tokio::spawn(async move {
            // Connect at staggered points of the publishing run, half of the clients
            // resuming from the start, half starting fresh.
            let at = c * EVENTS / CLIENTS;
            watch
                .wait_for(|n| *n >= at)
                .await
                .expect("the publisher runs");
            let resume = c % 2 == 0;
            let mut request = ConnectRequest::new(vec![news]);
            if resume {
                request = request.last_event_id(Some(from_start));
            }
            let mut client = Client::connect(&hub, request).await;
            client.connected().await;
            connected_tx.send(()).await.expect("the test waits");
            let mut got = Vec::new();
            loop {
                let data = client.event().await.data;
                if data == "sentinel" {
                    break;
                }
                got.push(data.parse::<usize>().expect("a number"));
            }
            let first = if resume {
                0
            } else {
                got.first().copied().unwrap_or(EVENTS)
            };
            assert_eq!(
                got,
                (first..EVENTS).collect::<Vec<_>>(),
                "client {c} (resume: {resume}) lost, duplicated or reordered events"
            );
        }));
    }
    drop(connected_tx);
    publisher.await.expect("the publisher completes");
    for _ in 0..CLIENTS {
        if connected_rx.recv().await.is_none() {
            break; // A client failed before connecting: joining it below says why.
        }
    }
    publish(&hub, &news, "sentinel").await;
    for client in clients {
        client
            .await
            .expect("a client saw every event once, in order");
    }
}

#[tokio::test]
async fn slow_reader_behind_the_hot_window_gets_everything_in_pages() {
    let store = MemoryStore::default();
    let hub = hub_over(
        &store,
        Config::default().with_hot_window(4).with_page_size(3),
    );
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    // The client reads nothing while 50 events are published: it falls behind the window.
    for i in 0..50 {
        publish(&hub, &news, &i.to_string()).await;
    }
    let expected: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(client.data(50).await, expected);
    publish(&hub, &news, "live").await;
    assert_eq!(client.data(1).await, ["live"]);
    assert!(hub.window_events() <= 4, "the hot window stays bounded");
}

#[tokio::test]
async fn a_connection_reads_two_streams() {
    let (_store, hub) = new_hub();
    let (a, b) = (stream("a"), stream("b"));
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![a.clone(), b.clone()])).await;
    client.connected().await;
    for (s, data) in [(&a, "a1"), (&b, "b1"), (&a, "a2"), (&b, "b2"), (&a, "a3")] {
        publish(&hub, s, data).await;
    }
    let got = client.data(5).await;
    let of = |prefix: &str| {
        got.iter()
            .filter(|d| d.starts_with(prefix))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(of("a"), ["a1", "a2", "a3"]);
    assert_eq!(of("b"), ["b1", "b2"]);
    let id = client.last_event_id();
    drop(client);

    publish(&hub, &b, "b3").await;
    publish(&hub, &a, "a4").await;
    // The stream order of the request does not matter.
    let request = ConnectRequest::new(vec![b.clone(), a.clone()]).last_event_id(Some(id.clone()));
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 2, false), "{data}");
    let mut got = client.data(2).await;
    got.sort();
    assert_eq!(got, ["a4", "b3"]);

    // The same id on one of the two streams is not a cursor for it.
    let request = ConnectRequest::new(vec![a.clone()]).last_event_id(Some(id));
    let mut client = Client::connect(&hub, request).await;
    client.connected().await;
    assert_eq!(client.reset().await["reason"], "invalid_id");
}

#[tokio::test]
async fn another_sessions_private_stream_is_forbidden() {
    let (_store, hub) = new_hub();
    let mine = hub.resolve_session(None, None).await.expect("a session");
    let theirs = hub.resolve_session(None, None).await.expect("a session");
    let request = ConnectRequest::new(vec![theirs.record.id.stream()]).session(mine.context());
    assert!(matches!(
        hub.connect(request).await,
        Err(Error::Forbidden(_))
    ));
    let request = ConnectRequest::new(vec![theirs.record.id.stream()]);
    assert!(matches!(
        hub.connect(request).await,
        Err(Error::Forbidden(_))
    ));
    let request = ConnectRequest::new(vec![stream("@other")]).session(mine.context());
    assert!(matches!(
        hub.connect(request).await,
        Err(Error::Forbidden(_))
    ));

    // Its own private stream, named explicitly, is fine.
    let request = ConnectRequest::new(vec![mine.record.id.stream()]).session(mine.context());
    let mut client = Client::connect(&hub, request).await;
    client.connected().await;
    // Nobody publishes into a private stream by name.
    let err = hub
        .publish(&theirs.record.id.stream(), NewEvent::new("x"))
        .await
        .expect_err("reserved streams are refused");
    assert!(matches!(err, Error::InvalidStreamName(_)), "{err}");
}

#[tokio::test]
async fn connect_refuses_bad_requests_and_publish_refuses_large_events() {
    let store = MemoryStore::default();
    let hub = hub_over(
        &store,
        Config::default()
            .with_max_streams(2)
            .with_max_event_bytes(10),
    );
    let err = hub
        .connect(ConnectRequest::new(vec![]))
        .await
        .expect_err("no stream");
    assert!(matches!(err, Error::InvalidStreamName(_)), "{err}");
    let three = vec![stream("a"), stream("b"), stream("c")];
    let err = hub
        .connect(ConnectRequest::new(three))
        .await
        .expect_err("too many");
    assert!(matches!(err, Error::InvalidStreamName(_)), "{err}");
    let err = hub
        .publish(&stream("a"), NewEvent::new("x".repeat(11)))
        .await
        .expect_err("too large");
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 11,
                limit: 10
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn send_to_session_while_away_arrives_on_reconnect() {
    let (store, hub) = new_hub();
    let news = stream("news");
    let session = hub.resolve_session(None, None).await.expect("a session");
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(data["session"], json!(session.record.id.to_string()));
    hub.send_to_session(&session.record.id, NewEvent::new("while here"))
        .await
        .expect("send succeeds");
    assert_eq!(client.data(1).await, ["while here"]);
    drop(client);

    // The connection records its cursor in the session when it ends.
    let deadline = Instant::now() + WAIT;
    loop {
        let record = store.load(&session.record.id).await.expect("load succeeds");
        if record.and_then(|r| r.cursor).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the cursor was never recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let event = NewEvent::new("while away")
        .with_event("private")
        .expect("valid name");
    hub.send_to_session(&session.record.id, event)
        .await
        .expect("send succeeds");

    // A page reload: the token comes back, no Last-Event-ID.
    let again = hub
        .resolve_session(Some(&session.token), None)
        .await
        .expect("the session resolves");
    assert_eq!(again.status, SessionStatus::Resumed);
    assert_eq!(again.record.id, session.record.id);
    let request = ConnectRequest::new(vec![news.clone()]).session(again.context());
    let mut client = Client::connect(&hub, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 1, false), "{data}");
    let event = client.event().await;
    assert_eq!(
        (event.event.as_str(), event.data.as_str()),
        ("private", "while away")
    );

    let err = hub
        .send_to_session(&resumable_sse_core::SessionId::random(), NewEvent::new("x"))
        .await
        .expect_err("unknown session");
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test]
async fn untrusted_tokens_give_a_new_session() {
    let keys = TokenKeys::new([b"a test key of at least thirty-two bytes".to_vec()]).expect("keys");
    let store = MemoryStore::default();
    let hub = {
        let store = Arc::new(store.clone());
        Hub::builder(store.clone(), store)
            .keys(keys.clone())
            .build()
    };
    let alice = hub
        .resolve_session(None, Some("alice"))
        .await
        .expect("a session");
    assert_eq!(alice.status, SessionStatus::New);

    let mut tampered = alice.token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    let other_hub = {
        let store = Arc::new(store.clone());
        Hub::builder(store.clone(), store).build()
    };
    let foreign = other_hub
        .resolve_session(None, Some("alice"))
        .await
        .expect("a session")
        .token;
    let (payload, _) = alice.token.split_once('.').expect("a token has two parts");
    let unsigned = format!("{payload}.");
    for bad in [
        "",
        "garbage",
        "a.b",
        unsigned.as_str(),
        tampered.as_str(),
        foreign.as_str(),
    ] {
        let resolved = hub
            .resolve_session(Some(bad), Some("alice"))
            .await
            .expect("an untrusted token is not an error");
        assert_eq!(resolved.status, SessionStatus::New, "{bad}");
        assert_ne!(resolved.record.id, alice.record.id, "{bad}");
    }

    // A genuine token past its expiry: a new session, marked so cursors get a reset.
    let expired = keys.sign(&TokenClaims {
        session: alice.record.id,
        expires_at: SystemTime::now() - Duration::from_secs(1),
        principal: Some("alice".into()),
    });
    let resolved = hub
        .resolve_session(Some(&expired), Some("alice"))
        .await
        .expect("an expired token is not an error");
    assert_eq!(resolved.status, SessionStatus::Expired);
    assert_ne!(resolved.record.id, alice.record.id);

    // The genuine token resolves to the same session, for the same principal only.
    let resolved = hub
        .resolve_session(Some(&alice.token), Some("alice"))
        .await
        .expect("the session resolves");
    assert_eq!(
        (resolved.status, resolved.record.id),
        (SessionStatus::Resumed, alice.record.id)
    );
    for principal in [Some("bob"), None] {
        let err = hub
            .resolve_session(Some(&alice.token), principal)
            .await
            .expect_err("another principal is refused");
        assert!(matches!(err, Error::Forbidden(_)), "{principal:?}: {err}");
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeats_arrive_at_the_configured_interval() {
    let interval = Duration::from_secs(5);
    let store = MemoryStore::default();
    let hub = hub_over(&store, Config::default().with_heartbeat(interval));
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;

    let next_heartbeat = async |client: &mut Client| {
        let start = Instant::now();
        match client.item().await {
            Some(Item::Comment(_)) => {}
            other => panic!("a heartbeat comment was expected, got {other:?}"),
        }
        start.elapsed()
    };
    let close_to = |elapsed: Duration, expected: Duration| {
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
            "a heartbeat after {elapsed:?}, expected {expected:?}"
        );
    };
    for _ in 0..3 {
        close_to(next_heartbeat(&mut client).await, interval);
    }

    // An event postpones the next heartbeat: it comes within half to one interval after the
    // event (the hub's timer ticks twice per interval), never later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&hub, &news, "event").await;
    assert_eq!(client.data(1).await, ["event"]);
    let after_event = next_heartbeat(&mut client).await;
    assert!(
        after_event >= interval / 2 && after_event <= interval,
        "a heartbeat {after_event:?} after an event, expected within [{:?}, {interval:?}]",
        interval / 2
    );
    // Then idle again: exactly every interval.
    close_to(next_heartbeat(&mut client).await, interval);
}

#[tokio::test]
async fn close_connections_ends_every_connection() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let mut open = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    open.connected().await;

    hub.close_connections();
    assert_eq!(
        open.item().await,
        Some(Item::Retry(2000)),
        "a retry hint before the end"
    );
    assert_eq!(open.item().await, None, "the connection ends");

    // A connection opened afterwards says where it is, then ends at once.
    let mut late = Client::connect(&hub, ConnectRequest::new(vec![news])).await;
    assert_eq!(late.item().await, Some(Item::Retry(2000)));
    late.connected().await;
    assert_eq!(late.item().await, Some(Item::Retry(2000)));
    assert_eq!(late.item().await, None);
}

/// Two hub instances over one store, as behind a load balancer: a client moves from one to
/// the other with a cursor the second one's hot window has not reached yet.
#[tokio::test]
async fn a_cursor_ahead_of_the_hot_window_resumes() {
    let store = MemoryStore::default();
    let (first, second) = (
        hub_over(&store, Config::default()),
        hub_over(&store, Config::default()),
    );
    let news = stream("news");
    // Another client keeps a hot window for `news` open on the second instance. Publish
    // until the window holds events (its feed task runs whenever this task yields).
    let mut watcher = Client::connect(&second, ConnectRequest::new(vec![news.clone()])).await;
    watcher.connected().await;
    let mut published = Vec::new();
    while second.window_events() == 0 {
        assert!(published.len() < 10, "the hot window never filled");
        let data = (published.len() + 1).to_string();
        publish(&first, &news, &data).await;
        published.push(data);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(watcher.data(published.len()).await, published);
    let k = published.len();

    // On this single-threaded runtime nothing else runs until the test awaits something
    // that is not ready: the first instance serves event 3 from the store at once, while
    // the second instance's feed task has not seen event 3 yet.
    let mut client = Client::connect(
        &first,
        ConnectRequest::new(vec![news.clone()]).last_event_id(Some(watcher.last_event_id())),
    )
    .await;
    publish(&first, &news, &(k + 1).to_string()).await;
    client.connected().await;
    assert_eq!(client.data(1).await, [(k + 1).to_string()]);
    let id = client.last_event_id();
    drop(client);

    let request = ConnectRequest::new(vec![news.clone()]).last_event_id(Some(id));
    let mut client = Client::connect(&second, request).await;
    let (_, data) = client.connected().await;
    assert_eq!(info_of(&data), info(true, 0, false), "{data}");
    publish(&second, &news, "next").await;
    assert_eq!(
        client.data(1).await,
        ["next"],
        "the next event, once, with nothing lost"
    );
    assert_eq!(
        watcher.data(2).await,
        [(k + 1).to_string(), "next".to_owned()]
    );
}

/// A store whose first live feed ends at once (a pub/sub connection that dropped and a backend
/// that does not reconnect by itself): the hub subscribes again, resyncs, and delivers.
#[derive(Debug, Default)]
struct FeedEndsOnce {
    ended: std::sync::atomic::AtomicBool,
}

impl Hooks for FeedEndsOnce {
    fn live_feed(&self, store: &MemoryStore) -> resumable_sse_core::LiveFeed {
        if self.ended.swap(true, std::sync::atomic::Ordering::AcqRel) {
            store.live_feed()
        } else {
            futures_util::stream::empty().boxed()
        }
    }
}

#[tokio::test]
async fn a_feed_that_ends_is_subscribed_again() {
    let store = MemoryStore::default();
    let buffer = Arc::new(Hooked::new(&store, FeedEndsOnce::default()));
    let hub = Hub::builder(buffer, Arc::new(store)).build();
    let news = stream("news");
    let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    client.connected().await;
    // Published while the hub has no feed: the connection's own store read or the resync
    // after resubscribing finds it; nothing is lost either way, and the ended feed does not
    // hold up the window's initialisation.
    publish(&hub, &news, "during the gap").await;
    assert_eq!(client.data(1).await, ["during the gap"]);
    publish(&hub, &news, "after").await;
    assert_eq!(client.data(1).await, ["after"]);
}

/// Live delivery comes from the hot windows, not from a store read per connection: over a
/// store whose reads take a while (as a networked one's do), clients that connected before
/// their stream's first event, each with its session's private stream, read nothing from
/// the store while events arrive, and each private stream is read once, at connect, however
/// many wake-ups its connection has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_delivery_does_not_read_the_store_per_connection() {
    const CLIENTS: usize = 40;
    const EVENTS: usize = 30;
    let store = MemoryStore::default();
    let counted = Arc::new(Hooked::new(&store, SlowReads::default()));
    let hub = Hub::builder(counted.clone(), Arc::new(store)).build();
    let fresh = stream("fresh");
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let session = hub.resolve_session(None, None).await.expect("a session");
        let request = ConnectRequest::new(vec![fresh.clone()]).session(session.context());
        let mut client = Client::connect(&hub, request).await;
        client.connected().await;
        clients.push(client);
    }
    let before = counted.reads_of(&fresh);
    let expected: Vec<String> = (0..EVENTS).map(|i| i.to_string()).collect();
    // Spread over several store reads' time, so that events keep arriving while the hub
    // reads the stream's first events into its window (whatever the timing, the bound below
    // holds; spread out, a window that moved to the head first sends every client to the
    // store).
    for data in &expected {
        publish(&hub, &fresh, data).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for client in &mut clients {
        assert_eq!(client.data(EVENTS).await, expected);
    }
    let during = counted.reads_of(&fresh) - before;
    assert!(
        during <= 4,
        "{during} reads of the stream while {CLIENTS} clients received {EVENTS} events: \
         the hub's own (initialisation, first epoch) and no more"
    );
    let reads = counted.reads.lock().clone();
    for (name, n) in reads.iter().filter(|(name, _)| name.is_reserved()) {
        assert_eq!(
            *n, 1,
            "{name} was read {n} times: once at connect (which also starts its window)"
        );
    }
    assert_eq!(
        reads.keys().filter(|name| name.is_reserved()).count(),
        CLIENTS,
        "every session's private stream was read"
    );
}

/// Reads that take 5 ms, counted per stream.
#[derive(Debug, Default)]
struct SlowReads {
    reads: parking_lot::Mutex<std::collections::HashMap<StreamName, usize>>,
}

impl SlowReads {
    fn reads_of(&self, name: &StreamName) -> usize {
        self.reads.lock().get(name).copied().unwrap_or(0)
    }
}

#[async_trait::async_trait]
impl Hooks for SlowReads {
    async fn before_read(&self, stream: &StreamName) {
        *self.reads.lock().entry(stream.clone()).or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes that arrive while a write to their stream is in flight are written together:
/// 64 concurrent publishes cost two store writes (the first, then the rest in one batch), each
/// gets its own position, and a reader gets every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_store_writes() {
    const PUBLISHES: usize = 64;
    let store = MemoryStore::default();
    let gated = Arc::new(Hooked::new(&store, GatedAppends::new()));
    let hub = Hub::builder(gated.clone(), Arc::new(store)).build();
    let news = stream("news");
    let mut reader = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
    reader.connected().await;
    gated.close();
    let publishes: Vec<_> = (0..PUBLISHES)
        .map(|i| {
            let (hub, news) = (hub.clone(), news.clone());
            tokio::spawn(async move { hub.publish(&news, NewEvent::new(i.to_string())).await })
        })
        .collect();
    gated.wait_for_writes(1).await;
    wait_for_queued(&hub, PUBLISHES - 1).await;
    gated.open();
    let mut positions: Vec<u64> = futures_util::future::join_all(publishes)
        .await
        .into_iter()
        .map(|joined| {
            joined
                .expect("no panic")
                .expect("publish succeeds")
                .position
        })
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=PUBLISHES as u64).collect::<Vec<_>>());
    assert_eq!(gated.writes(), 2, "one write, then one batch of the rest");
    assert_eq!(hub.queued_publishes(), 0);
    let mut received = reader.data(PUBLISHES).await;
    received.sort_unstable_by_key(|d| d.parse::<usize>().expect("a number"));
    let expected: Vec<String> = (0..PUBLISHES).map(|i| i.to_string()).collect();
    assert_eq!(received, expected, "every event once");
}

/// A publish dropped while it writes (its HTTP client went away) does not leave the stream
/// without a writer: a publish queued behind it and later ones complete. A batch the store
/// refuses fails each of its publishes with the store's error, and the next write succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_publishes_survive_a_dropped_writer_and_a_failed_batch() {
    let store = MemoryStore::default();
    let gated = Arc::new(Hooked::new(&store, GatedAppends::new()));
    let hub = Hub::builder(gated.clone(), Arc::new(store.clone())).build();
    let news = stream("news");
    let spawn_publish = |data: &'static str| {
        let (hub, news) = (hub.clone(), news.clone());
        tokio::spawn(async move { hub.publish(&news, NewEvent::new(data)).await })
    };

    // The writer is dropped mid-write; the one queued behind it still gets an answer.
    gated.close();
    let writer = spawn_publish("dropped");
    gated.wait_for_writes(1).await;
    let queued = spawn_publish("queued");
    wait_for_queued(&hub, 1).await;
    writer.abort();
    assert!(writer.await.is_err_and(|e| e.is_cancelled()));
    gated.open();
    let queued = timeout(WAIT, queued)
        .await
        .expect("the queued publish is answered")
        .expect("no panic")
        .expect("the queued publish succeeds");
    let after = timeout(WAIT, hub.publish(&news, NewEvent::new("after")))
        .await
        .expect("a later publish is answered")
        .expect("a later publish succeeds");
    assert_eq!((queued.position, after.position), (1, 2));

    // A refused batch: both publishes queued behind a write get the store's error.
    gated.close();
    // Counted before the spawn: the lone write may start before this task reads the count.
    let earlier = gated.writes();
    let lone = spawn_publish("lone");
    gated.wait_for_writes(earlier + 1).await;
    let batch = [spawn_publish("a"), spawn_publish("b")];
    wait_for_queued(&hub, 2).await;
    gated
        .fail_batches
        .store(true, std::sync::atomic::Ordering::SeqCst);
    gated.open();
    lone.await
        .expect("no panic")
        .expect("a lone write is not a batch");
    for publish in batch {
        let err = publish
            .await
            .expect("no panic")
            .expect_err("the batch was refused");
        assert!(
            matches!(err, Error::Unavailable(_)),
            "the store's error, got {err:?}"
        );
        assert!(
            std::error::Error::source(&err)
                .is_some_and(|s| s.to_string().contains("refused the batch")),
            "with its cause: {err:?}"
        );
    }
    gated
        .fail_batches
        .store(false, std::sync::atomic::Ordering::SeqCst);
    hub.publish(&news, NewEvent::new("then"))
        .await
        .expect("the next write succeeds");
    let page = store.read(&news, 0, 100).await.expect("read");
    let data: Vec<&str> = page.events.iter().map(|e| e.data.as_ref()).collect();
    assert_eq!(data, ["queued", "after", "lone", "then"]);
}

/// Until `n` publishes wait for a batched write.
async fn wait_for_queued(hub: &Hub, n: usize) {
    let deadline = Instant::now() + WAIT;
    while hub.queued_publishes() < n {
        assert!(Instant::now() < deadline, "{n} publishes were not queued");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Writes that wait while a gate is closed, counted; batches can be made to fail.
#[derive(Debug)]
struct GatedAppends {
    gate: tokio::sync::watch::Sender<bool>,
    writes: std::sync::atomic::AtomicUsize,
    fail_batches: std::sync::atomic::AtomicBool,
}

impl GatedAppends {
    fn new() -> Self {
        GatedAppends {
            gate: tokio::sync::watch::Sender::new(true),
            writes: Default::default(),
            fail_batches: Default::default(),
        }
    }

    fn close(&self) {
        self.gate.send_replace(false);
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn writes(&self) -> usize {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn wait_for_writes(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.writes() < n {
            assert!(Instant::now() < deadline, "{n} writes did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[async_trait::async_trait]
impl Hooks for GatedAppends {
    async fn before_write(&self, batch: bool) -> resumable_sse_core::Result<()> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        if batch && self.fail_batches.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::unavailable("the test store refused the batch"));
        }
        Ok(())
    }
}

/// What a test store changes about the memory store; by default, nothing.
#[async_trait::async_trait]
trait Hooks: std::fmt::Debug + Send + Sync + 'static {
    /// Runs before each store write (`batch` for `append_many`); an error refuses the write.
    async fn before_write(&self, _batch: bool) -> resumable_sse_core::Result<()> {
        Ok(())
    }

    /// Runs before each store read.
    async fn before_read(&self, _stream: &StreamName) {}

    /// A new subscription to the live feed.
    fn live_feed(&self, store: &MemoryStore) -> resumable_sse_core::LiveFeed {
        store.live_feed()
    }
}

/// The memory store behind a test store's [`Hooks`]; derefs to the hooks so that a test can
/// ask them what they saw.
#[derive(Debug)]
struct Hooked<H> {
    store: MemoryStore,
    hooks: H,
}

impl<H> Hooked<H> {
    fn new(store: &MemoryStore, hooks: H) -> Self {
        Hooked {
            store: store.clone(),
            hooks,
        }
    }
}

impl<H> std::ops::Deref for Hooked<H> {
    type Target = H;

    fn deref(&self) -> &H {
        &self.hooks
    }
}

// `ping` keeps the trait's default, which reads through the hooks as the test stores did.
#[async_trait::async_trait]
impl<H: Hooks> EventBuffer for Hooked<H> {
    async fn append(
        &self,
        stream: &StreamName,
        event: NewEvent,
    ) -> resumable_sse_core::Result<resumable_sse_core::Appended> {
        self.hooks.before_write(false).await?;
        self.store.append(stream, event).await
    }
    async fn append_many(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
    ) -> resumable_sse_core::Result<Vec<resumable_sse_core::Appended>> {
        self.hooks.before_write(true).await?;
        self.store.append_many(stream, events).await
    }
    async fn read(
        &self,
        stream: &StreamName,
        after: u64,
        limit: usize,
    ) -> resumable_sse_core::Result<resumable_sse_core::ReadPage> {
        self.hooks.before_read(stream).await;
        self.store.read(stream, after, limit).await
    }
    fn live_feed(&self) -> resumable_sse_core::LiveFeed {
        self.hooks.live_feed(&self.store)
    }
}

/// A plain reload (the session's token, no `Last-Event-ID`) that arrives while the session's
/// previous connection is still open waits for it to close and resumes from where it got,
/// not from an older recorded cursor nor the head (`Config::reload_wait`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_before_the_old_connection_closes_resumes_where_it_got() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let session = hub.resolve_session(None, None).await.expect("a session");
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    let mut old = Client::connect(&hub, request).await;
    old.connected().await;
    for n in 1..=3 {
        publish(&hub, &news, &format!("e{n}")).await;
    }
    assert_eq!(old.data(3).await, ["e1", "e2", "e3"]);
    // Published, but never written to the old page: the new one must get them.
    publish(&hub, &news, "e4").await;
    publish(&hub, &news, "e5").await;

    let again = hub
        .resolve_session(Some(&session.token), None)
        .await
        .expect("the session resolves");
    assert!(again.record.cursor.is_none(), "nothing recorded yet");
    let request = ConnectRequest::new(vec![news.clone()]).session(again.context());
    let reload = tokio::spawn({
        let hub = hub.clone();
        async move { Client::connect(&hub, request).await }
    });
    // The old connection goes while the new one waits (or before it asks: either way).
    tokio::task::yield_now().await;
    drop(old);
    let mut new = timeout(WAIT, reload)
        .await
        .expect("the reload connects")
        .expect("the task ends");
    let (_, data) = new.connected().await;
    assert_eq!(info_of(&data), info(true, 2, false), "{data}");
    assert_eq!(new.data(2).await, ["e4", "e5"]);
}

/// A session with another connection that stays open (a second tab) waits
/// `Config::reload_wait` at most, then starts from what it knows.
#[tokio::test(start_paused = true)]
async fn a_reload_waits_at_most_reload_wait() {
    let store = MemoryStore::default();
    let wait = Duration::from_millis(300);
    let hub = hub_over(&store, Config::default().with_reload_wait(wait));
    let news = stream("news");
    let session = hub.resolve_session(None, None).await.expect("a session");
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    let mut first = Client::connect(&hub, request).await;
    first.connected().await;
    let started = Instant::now();
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    let mut second = Client::connect(&hub, request).await;
    assert_eq!(started.elapsed(), wait, "paused time: exactly the bound");
    let (_, data) = second.connected().await;
    assert_eq!(info_of(&data), info(false, 0, false), "{data}");

    // With the wait off, no wait at all.
    let hub = hub_over(&store, Config::default().with_reload_wait(Duration::ZERO));
    let session = hub.resolve_session(None, None).await.expect("a session");
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    let _first = Client::connect(&hub, request).await;
    let started = Instant::now();
    let request = ConnectRequest::new(vec![news.clone()]).session(session.context());
    Client::connect(&hub, request).await;
    assert_eq!(started.elapsed(), Duration::ZERO);
}

/// `Hub::drain` ends every connection with the retry hint and returns once each response
/// was read to its end and dropped; one that nobody reads is counted at the bound.
#[tokio::test(start_paused = true)]
async fn drain_waits_for_every_connection_to_end() {
    let (_store, hub) = new_hub();
    let news = stream("news");
    let mut readers = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&hub, ConnectRequest::new(vec![news.clone()])).await;
        client.connected().await;
        readers.push(tokio::spawn(async move {
            let mut items = Vec::new();
            while let Some(item) = client.item().await {
                items.push(item);
            }
            items
        }));
    }
    let stuck = hub
        .connect(ConnectRequest::new(vec![news.clone()]))
        .await
        .expect("connect succeeds");
    let bound = Duration::from_secs(5);
    let started = Instant::now();
    assert_eq!(hub.drain(bound).await, 1, "the unread connection is left");
    assert_eq!(started.elapsed(), bound);
    for reader in readers {
        let items = reader.await.expect("the reader ends");
        assert!(
            matches!(items.last(), Some(Item::Retry(_))),
            "the response ends with the retry hint: {items:?}"
        );
    }
    drop(stuck);
    assert_eq!(hub.drain(bound).await, 0);
}
