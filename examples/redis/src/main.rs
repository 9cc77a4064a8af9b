//! Resumable SSE inside your own axum app, on Redis: run it twice and the two instances
//! share streams and sessions, so a client can move between them and lose nothing.
//!
//! Run with: `cargo run -p redis-example` (Redis at `REDIS_URL`, default
//! `redis://127.0.0.1:6379`; port from `PORT`, default 3002). A second instance:
//! `PORT=3003 cargo run -p redis-example`. Then listen on one and post to the other:
//!
//! ```text
//! curl -N -H 'x-sse-session: <token>' 127.0.0.1:3002/events   # the token is in the response headers
//! curl -H 'x-sse-session: <token>' -d hello 127.0.0.1:3003/say
//! ```
//!
//! Both instances must sign session tokens with the same key (`SSE_SECRET`, at least 32
//! bytes; a fixed development key is used when it is unset).

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use resumable_sse_axum::{ApiError, Session, SseLayer};
use resumable_sse_core::{Config, Hub, NewEvent, StreamName, TokenKeys};
use resumable_sse_store_redis::{RedisConfig, RedisStore};

/// Development only: set `SSE_SECRET` in production.
const DEV_SECRET: &str = "redis-example-development-key-change-me!";

/// Posts the body to the `chat` stream, and a receipt to the sender's own session only.
async fn say(session: Session, text: String) -> Result<String, ApiError> {
    let chat = StreamName::new("chat")?;
    let appended = session
        .publish(&chat, NewEvent::new(text).with_event("chat")?)
        .await?;
    session
        .send(NewEvent::new(format!("delivered as #{}", appended.position)).with_event("receipt")?)
        .await?;
    Ok(format!("{}\n", appended.position))
}

/// The app over one Redis store: the store is both the event log and the session store.
fn app(store: RedisStore, keys: TokenKeys) -> Router {
    let store = Arc::new(store);
    let hub = Hub::builder(store.clone(), store)
        .config(Config::default())
        .keys(keys)
        .build();
    let layer = SseLayer::new(hub).with_default_stream(StreamName::new("chat").expect("valid"));
    Router::new()
        .route("/events", get(resumable_sse_axum::events))
        .route("/say", post(say))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secret = std::env::var("SSE_SECRET").unwrap_or_else(|_| DEV_SECRET.into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3002".into());
    let store =
        RedisStore::connect(&url, RedisConfig::default().with_key_prefix("example:")).await?;
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(store, TokenKeys::new([secret])?)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use resumable_sse_axum::testing::{TestServer, connect};
    use resumable_sse_store_redis::testing::HOW_TO_START;
    use std::time::Duration;

    /// Two instances on one Redis (with a key prefix of this test's own): a client listens on
    /// the first and posts to the second with its session token; it gets the chat message
    /// and the receipt sent to its session, both through the first.
    #[tokio::test]
    async fn two_instances_share_the_chat_and_the_session() {
        let prefix = format!("example-test:{}:", resumable_sse_core::SessionId::random());
        let instance = || async {
            let config = RedisConfig::default().with_key_prefix(prefix.clone());
            let store = RedisStore::connect("redis://127.0.0.1:6379", config)
                .await
                .unwrap_or_else(|err| {
                    panic!("this test needs Redis on 127.0.0.1:6379 ({err}); {HOW_TO_START}")
                });
            TestServer::start(app(store, TokenKeys::new([DEV_SECRET]).unwrap())).await
        };
        let (first, second) = (instance().await, instance().await);

        let mut events = connect(&first.url("/events"), &[]).await;
        let token = events.token().unwrap();
        events.next_event(Duration::from_secs(5)).await.unwrap(); // connected
        let response = reqwest::Client::new()
            .post(second.url("/say"))
            .header("x-sse-session", &token)
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let got = events
            .collect_until(Duration::from_secs(5), |e| e.len() == 2)
            .await;
        let mut kinds: Vec<_> = got
            .iter()
            .map(|e| (e.event.as_str(), e.data.as_str()))
            .collect();
        kinds.sort();
        assert_eq!(kinds, [("chat", "hello"), ("receipt", "delivered as #1")]);
    }
}
