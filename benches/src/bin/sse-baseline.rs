//! The baseline: the SSE server a Rust developer writes without this library — axum's `Sse`
//! over a `tokio::sync::broadcast` channel per stream, no ids, no replay, no sessions.
//!
//! Run with: `cargo run --release -p sse-benches --bin sse-baseline -- --listen 127.0.0.1:3100`
//!
//! It speaks the same `GET /events?stream=…` and `POST /publish {"stream", "data"}` as
//! `sse-server`, so the load tool drives both the same way.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3100")]
    listen: SocketAddr,
    /// Capacity of each stream's broadcast channel (receivers further behind lose events).
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
}

#[derive(Clone)]
struct AppState {
    streams: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
    capacity: usize,
}

impl AppState {
    fn sender(&self, stream: &str) -> broadcast::Sender<Arc<str>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .entry(stream.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .clone()
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    stream: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state
        .sender(query.stream.as_deref().unwrap_or("broadcast"))
        .subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(data) => return Some((Ok(Event::default().data(&*data)), rx)),
                // The usual code: skip what was lost and carry on.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

#[derive(Deserialize)]
struct Publish {
    stream: Option<String>,
    data: String,
}

async fn publish(
    State(state): State<AppState>,
    Json(body): Json<Publish>,
) -> Json<serde_json::Value> {
    let sender = state.sender(body.stream.as_deref().unwrap_or("broadcast"));
    let receivers = sender.send(Arc::from(body.data)).unwrap_or(0);
    Json(serde_json::json!({ "receivers": receivers }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    let state = AppState {
        streams: Arc::default(),
        capacity: args.capacity,
    };
    let app = Router::new()
        .route("/events", get(events))
        .route("/publish", post(publish))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
