//! resumable-sse with its `tracing` spans exported through OpenTelemetry.
//!
//! Run with: `cargo run --manifest-path examples/opentelemetry/Cargo.toml`, then
//! `curl -N -H 'x-request-id: demo-1' 'http://127.0.0.1:3000/events?stream=news'` and
//! `curl -XPOST -H 'content-type: application/json' -d '{"stream":"news","data":"hi"}'
//! http://127.0.0.1:3000/publish`. Each request's `request` span (with `request_id` and
//! `session`) is printed as an OpenTelemetry span on stdout when it ends; swap the stdout
//! exporter for `opentelemetry-otlp` to send them to a collector.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use resumable_sse_axum::{RequestIdLayer, SseLayer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The exporter: stdout here; an OTLP exporter in production.
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let tracer = provider.tracer("resumable-sse-example");
    // Logs as usual on stderr, and every span (and the events in it) to OpenTelemetry.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .init();

    let hub = resumable_sse_axum::memory_hub(Default::default());
    // The reference routes (`/events`, `/publish`, `/healthz`), each request in a span
    // carrying its request id and session id.
    let app = resumable_sse_axum::router(SseLayer::new(hub.clone())).layer(RequestIdLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    resumable_sse_axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            hub.close_connections();
        })
        .await?;
    // Flushes what is left.
    provider.shutdown()?;
    Ok(())
}
