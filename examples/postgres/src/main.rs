//! Resumable SSE on PostgreSQL: order updates that survive restarts and reach clients of every
//! instance of the app.
//!
//! Run with: `cargo run -p postgres-example` (PostgreSQL at `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`), then follow the updates in one terminal with
//! `curl -N 127.0.0.1:3002/events` and post one from another:
//! `curl -H 'Idempotency-Key: ship-17' -d shipped 127.0.0.1:3002/orders/17`. Post it twice:
//! the key makes the retry a no-op. Start a second instance on another port
//! (`PORT=3003 cargo run -p postgres-example`): both serve the same history.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use resumable_sse_axum::{ApiError, Session, SseLayer};
use resumable_sse_core::{Config, Hub, NewEvent, StreamName, TokenKeys};
use resumable_sse_store_postgres::{PostgresConfig, PostgresStore};

/// Publishes an order's new status to the `orders` stream. An `Idempotency-Key` header
/// becomes the event's publisher id, so a client that retries after a timeout does not
/// publish twice.
async fn update_order(
    session: Session,
    Path(order): Path<u64>,
    headers: HeaderMap,
    status: String,
) -> Result<String, ApiError> {
    let data = serde_json::json!({"order": order, "status": status.trim()}).to_string();
    let mut event = NewEvent::new(data).with_event("order")?;
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        event = event.with_id(key)?;
    }
    let appended = session.publish(&StreamName::new("orders")?, event).await?;
    Ok(format!(
        "{}{}\n",
        appended.position,
        if appended.duplicate {
            " (already published)"
        } else {
            ""
        }
    ))
}

/// The app over one PostgreSQL store. Every instance given the same database and the same
/// `keys` shares history and sessions with the others.
fn app(store: PostgresStore, keys: TokenKeys) -> Router {
    let store = Arc::new(store);
    let hub = Hub::builder(store.clone(), store)
        .config(Config::default())
        .keys(keys)
        .build();
    let layer = SseLayer::new(hub).with_default_stream(StreamName::new("orders").expect("valid"));
    Router::new()
        .route("/events", get(resumable_sse_axum::events))
        .route("/orders/{order}", post(update_order))
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let store = PostgresStore::connect(&url, PostgresConfig::default()).await?;
    store.migrate().await?;
    // Every instance must sign session tokens with the same key: use a real secret.
    let secret = std::env::var("SSE_SECRET")
        .unwrap_or_else(|_| "example-only-signing-key-change-me-0123456789".to_owned());
    let keys = TokenKeys::new([secret.as_bytes()])?;
    let port = std::env::var("PORT").unwrap_or_else(|_| "3002".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(store, keys)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use resumable_sse_axum::testing::{TestServer, connect};
    use resumable_sse_store_postgres::testing::temp_store;
    use std::time::Duration;

    fn keys() -> TokenKeys {
        TokenKeys::new([b"test-signing-key-0123456789abcdef0123".as_slice()]).unwrap()
    }

    async fn post(server: &TestServer, path: &str, key: &str, body: &str) -> String {
        let response = reqwest::Client::new()
            .post(server.url(path))
            .header("idempotency-key", key)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// Two instances on one database: an update posted (twice) to one reaches a client of
    /// the other once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_reach_clients_of_every_instance_once() {
        let store = temp_store(PostgresConfig::default()).await;
        let a = TestServer::start(app(store.store().clone(), keys())).await;
        let b =
            TestServer::start(app(store.another(PostgresConfig::default()).await, keys())).await;

        let mut events = connect(&b.url("/events"), &[]).await;
        let connected = events.next_event(Duration::from_secs(10)).await.unwrap();
        assert_eq!(connected.event, "connected");

        assert_eq!(post(&a, "/orders/17", "ship-17", "shipped").await, "1\n");
        assert_eq!(
            post(&a, "/orders/17", "ship-17", "shipped").await,
            "1 (already published)\n"
        );
        assert_eq!(post(&a, "/orders/18", "pack-18", "packed").await, "2\n");

        let got = events
            .collect_until(Duration::from_secs(10), |e| e.len() == 2)
            .await;
        let data: Vec<_> = got
            .iter()
            .map(|e| (e.event.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            data,
            [
                ("order", r#"{"order":17,"status":"shipped"}"#),
                ("order", r#"{"order":18,"status":"packed"}"#)
            ]
        );
    }
}
