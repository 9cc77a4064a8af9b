//! Operations: Prometheus metrics (`/metrics`, here or on an admin listener), liveness and
//! readiness probes (`/livez`, `/readyz`), and the log format (docs/operations.md).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use resumable_sse_core::{Hub, metrics as names};

/// How often the recorder's histograms are drained and idle series looked after.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long `/readyz` waits for the store to answer before calling it not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Buckets for durations, in seconds: 0.5 ms to 10 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for counts of events (replays, batches).
const EVENTS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
];

/// The log line format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the current span's fields (`request_id`, `session`).
    Json,
}

/// Metrics, probes and logs.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Operations")]
pub(crate) struct OpsArgs {
    /// Record metrics and serve them in Prometheus text format at `/metrics`.
    #[arg(long, env = "SSE_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    metrics: bool,
    /// Serve `/metrics` on this address (an admin listener, e.g. `127.0.0.1:9100`) instead
    /// of on --listen.
    #[arg(long, value_name = "ADDR", env = "SSE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log line format: `text` or `json`.
    #[arg(long, value_enum, env = "SSE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

impl OpsArgs {
    /// Installs the log subscriber: to stderr (stdout carries the lines scripts read),
    /// filtered by `RUST_LOG` (default `info`).
    pub(crate) fn init_logging(&self) {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        let builder = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter);
        match self.log_format {
            LogFormat::Text => builder.init(),
            // The current span carries `request_id` and `session`; the list adds its parents.
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .init(),
        }
    }

    /// Installs the Prometheus recorder (unless `--metrics false`) and starts its upkeep.
    /// Call it inside the runtime, before the hub is built.
    ///
    /// # Errors
    ///
    /// When a recorder is installed already.
    pub(crate) fn install_metrics(
        &self,
    ) -> Result<Option<PrometheusHandle>, Box<dyn std::error::Error>> {
        if !self.metrics {
            return Ok(None);
        }
        let handle = PrometheusBuilder::new()
            // Histograms with buckets, never summaries: they aggregate across instances.
            .set_buckets(SECONDS)?
            .set_buckets_for_metric(Matcher::Full(names::REPLAYED_EVENTS.into()), EVENTS)?
            .set_buckets_for_metric(Matcher::Full(names::APPEND_BATCH_EVENTS.into()), EVENTS)?
            .install_recorder()?;
        names::describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(Some(handle))
    }

    /// `/livez`, `/readyz` and, unless it has its own listener, `/metrics`: the routes to merge
    /// into the main router.
    pub(crate) fn routes(&self, hub: Hub, metrics: Option<&PrometheusHandle>) -> Router {
        let probes = Router::new()
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(hub);
        match (metrics, self.metrics_listen) {
            (Some(handle), None) => probes.merge(metrics_router(handle.clone())),
            _ => probes,
        }
    }

    /// Serves `/metrics` on `--metrics-listen`, if given, and prints `metrics on http://ADDR`
    /// on stdout (port 0 picks one).
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub(crate) async fn serve_admin(
        &self,
        metrics: Option<&PrometheusHandle>,
    ) -> std::io::Result<()> {
        let (Some(addr), Some(handle)) = (self.metrics_listen, metrics) else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        println!("metrics on http://{addr}");
        tracing::info!(%addr, "serving /metrics on the admin listener");
        let router = metrics_router(handle.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(error = %err, "the metrics listener failed");
            }
        });
        Ok(())
    }
}

fn metrics_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(handle)
}

async fn render(State(handle): State<PrometheusHandle>) -> Response {
    crate::trim::record_heap();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

/// The process is alive: always 200.
async fn livez() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Ready to serve: the store circuit breaker is closed, the store answers (within
/// [`READY_TIMEOUT`]) and the hub's live feed is connected; 503 with what is wrong otherwise.
async fn readyz(State(hub): State<Hub>) -> Response {
    let store = if hub.store_failing() {
        // Requests that need the store are refused until a probe gets an answer.
        "circuit_open"
    } else {
        match tokio::time::timeout(READY_TIMEOUT, hub.buffer().ping()).await {
            Ok(Ok(())) => "ok",
            Ok(Err(_)) => "unavailable",
            Err(_) => "timeout",
        }
    };
    let feed = if hub.feed_connected() {
        "connected"
    } else {
        "disconnected"
    };
    let ready = store == "ok" && feed == "connected";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "live_feed": feed,
    });
    (status, Json(body)).into_response()
}
