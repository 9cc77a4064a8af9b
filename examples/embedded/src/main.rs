//! Resumable SSE inside your own axum app: a tiny chat.
//!
//! Run with: `cargo run -p embedded`, then open <http://127.0.0.1:3001/events> in one terminal
//! (`curl -N`) and post from another: `curl -d hello 127.0.0.1:3001/say`.

use axum::Router;
use axum::routing::{get, post};
use resumable_sse::axum::{ApiError, Session, SseLayer};
use resumable_sse::{Config, NewEvent, StreamName};

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

fn app() -> Router {
    let hub = resumable_sse::axum::memory_hub(Config::default());
    let layer = SseLayer::new(hub).with_default_stream(StreamName::new("chat").expect("valid"));
    Router::new()
        .route("/events", get(resumable_sse::axum::events))
        .route("/say", post(say))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use resumable_sse_axum::testing::{TestServer, connect};
    use std::time::Duration;

    #[tokio::test]
    async fn chat_and_receipt_reach_the_sender() {
        let server = TestServer::start(app()).await;
        let mut events = connect(&server.url("/events"), &[]).await;
        let token = events.token().unwrap();
        events.next_event(Duration::from_secs(5)).await.unwrap(); // connected
        let response = reqwest::Client::new()
            .post(server.url("/say"))
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
