//! The reference server: the HTTP contract of resumable SSE over any backend, usable from any
//! language, with a demo page.
//!
//! Run with: `cargo run -p resumable-sse-server` and open <http://127.0.0.1:3000>.
//!
//! ```text
//! GET  /          demo page
//! GET  /events    ?stream=A&stream=B[&lastEventId=…]   the SSE endpoint
//! POST /publish   {"stream": "A", "event"?: "type", "id"?: "key", "data": …}
//!                 or {"session": "<id>", …}
//! GET  /healthz   200 when the store answers
//! GET  /livez     200 while the process runs; /readyz: 200 when the store answers and the
//!                 live feed is connected, else 503
//! GET  /metrics   Prometheus text format (`--metrics false`: off; `--metrics-listen ADDR`:
//!                 on an admin listener instead)
//! GET  /resumable-sse.js, /htmx, /vendor/…   the browser helper, the htmx example (assets.rs)
//! ```
//!
//! Pages on other origins: `--cors-origin https://app.example.com` (repeatable; `*` for any
//! origin without credentials), and `--cookie-same-site none` when that page is on another
//! site and should keep its session cookie (docs/protocol.md, "Pages on other origins").
//!
//! Authentication (docs/authentication.md): `--jwt-key SECRET` (HS256) and
//! `--jwt-public-key FILE.pem` (RS256, ES256) verify JWTs from `Authorization: Bearer …` or
//! the `sse_token` cookie; `--public-streams PATTERN` are readable without one. Without any
//! key the server is in development mode: every stream public, publishing from loopback only,
//! and it refuses to listen beyond loopback unless `--insecure`.
//!
//! Memory in bytes (docs/limits.md, "Memory"): `--max-pending`, `--max-bytes`,
//! `--max-event-bytes`, `--memory-budget`, `--memory-max-streams` (memory.rs); freed memory
//! goes back to the system after a spike unless `--release-memory false` (trim.rs).
//!
//! Limits (docs/limits.md): `--max-connections`, `--max-connections-per-ip`,
//! `--max-connections-per-session`, `--max-connections-per-principal`,
//! `--connect-rate-per-ip`, `--connect-rate-per-session`, `--publish-rate`, and
//! `--trusted-proxy CIDR` behind a proxy. Off on loopback unless given; on by default beyond.
//! Slow and hostile connections: `--head-timeout`, `--keep-alive-timeout`, `--body-timeout`,
//! `--max-pending-heads`, `--descriptor-reserve` (connections.rs).
//! While the store is failing, `--breaker-failures N` consecutive failures open the circuit
//! breaker (requests refused at once), probed every `--breaker-probe`.

mod assets;
mod auth;
mod breaker;
mod connections;
mod lifecycle;
mod memory;
mod ops;
mod pattern;
mod trim;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use clap::Parser;
use resumable_sse_axum::{CorsOrigins, IpNet, Limits, SameSite, SseLayer};
use resumable_sse_core::{Config, Hub, TokenKeys};

use crate::auth::{Development, Secret, Settings, Tokens};
use crate::lifecycle::LifecycleArgs;
use crate::pattern::Pattern;

/// Resumable Server-Sent Events: the reference server.
#[derive(Parser, Debug)]
#[command(name = "sse-server", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, env = "SSE_LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Backend: `memory`, `redis://…` or `postgres://…`.
    #[arg(long, env = "SSE_STORE", default_value = "memory")]
    store: String,
    /// Events kept per stream.
    #[arg(long, env = "SSE_MAX_LEN", default_value_t = 1000)]
    max_len: usize,
    /// Age after which events are dropped (e.g. `90s`, `1h`).
    #[arg(long, env = "SSE_MAX_AGE", default_value = "1h", value_parser = humantime::parse_duration)]
    max_age: Duration,
    /// How long a session is kept after its last connection ends.
    #[arg(long, env = "SSE_SESSION_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Interval of heartbeat comments on idle connections.
    #[arg(long, env = "SSE_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How long clients wait before reconnecting after a cut (the `retry:` field; server
    /// refusals ask for at least 5 s).
    #[arg(long, env = "SSE_RETRY", default_value = "2s", value_parser = humantime::parse_duration)]
    retry: Duration,
    /// Session token signing keys, comma-separated, each at least 32 bytes: the first signs,
    /// all verify. Without it a random key is used, and sessions do not survive a restart
    /// nor move between instances.
    #[arg(long, env = "SSE_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// An origin (`https://app.example.com`) whose pages may open event streams and publish
    /// cross-origin, with credentials; repeatable. `*` lets any other page in, without
    /// credentials.
    #[arg(long = "cors-origin", env = "SSE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<CorsOrigins>,
    /// The session cookie's `SameSite`: `strict`, `lax` or `none` (`none` is needed for a page
    /// on another site to keep its session with `withCredentials`; it implies `Secure`).
    #[arg(long, env = "SSE_COOKIE_SAME_SITE", default_value = "strict")]
    cookie_same_site: SameSite,
    /// Whether the session cookie is `Secure` (browsers accept it from `http://localhost` and
    /// `http://127.0.0.1`; only plain HTTP on other hosts needs `false`).
    #[arg(long, env = "SSE_COOKIE_SECURE", default_value_t = true, action = clap::ArgAction::Set)]
    cookie_secure: bool,
    /// An HS256 secret (at least 32 bytes) that verifies JWTs; repeatable (several: rotation,
    /// a token verified by any of them is accepted). A comma separates secrets, here as in
    /// the environment variable: a secret cannot contain one.
    #[arg(
        long = "jwt-key",
        value_name = "SECRET",
        env = "SSE_JWT_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    jwt_keys: Vec<Secret>,
    /// A PEM public key that verifies JWTs: RSA (RS256) or EC P-256 (ES256), the algorithm
    /// taken from the key, never from the token; repeatable.
    #[arg(
        long = "jwt-public-key",
        value_name = "FILE.pem",
        env = "SSE_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    jwt_public_keys: Vec<PathBuf>,
    /// The issuer (`iss`) tokens must name; not checked when not given.
    #[arg(long, value_name = "ISS", env = "SSE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience (`aud`) tokens must name; not checked when not given.
    #[arg(long, value_name = "AUD", env = "SSE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Streams anonymous subscribers may read: a name, or a prefix ending in `*` (`news:*`);
    /// repeatable. Without any key every stream is public.
    #[arg(
        long = "public-streams",
        value_name = "PATTERN",
        env = "SSE_PUBLIC_STREAMS",
        value_delimiter = ','
    )]
    public_streams: Vec<Pattern>,
    /// Listen beyond loopback without any key (development mode: every stream public).
    #[arg(long, env = "SSE_INSECURE")]
    insecure: bool,
    #[command(flatten)]
    memory: memory::MemoryArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    lifecycle: LifecycleArgs,
    #[command(flatten)]
    connections: connections::ConnectionArgs,
    #[command(flatten)]
    breaker: breaker::BreakerArgs,
    #[command(flatten)]
    ops: ops::OpsArgs,
}

/// Connection caps and rate limits (docs/limits.md). Each is off with `0`. Unset, they are
/// off when listening on loopback (the clients are local: development, tests, benchmarks)
/// and [`PUBLIC_DEFAULTS`] beyond it.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Limits (0: off; unset: off on loopback, a default beyond it)")]
struct LimitArgs {
    /// Open event streams in total [beyond loopback: off].
    #[arg(long, value_name = "N", env = "SSE_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Open event streams per client address [beyond loopback: 256].
    #[arg(long, value_name = "N", env = "SSE_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<u32>,
    /// Open event streams per session [beyond loopback: 16].
    #[arg(long, value_name = "N", env = "SSE_MAX_CONNECTIONS_PER_SESSION")]
    max_connections_per_session: Option<u32>,
    /// Open event streams per authenticated principal (JWT `sub`) [beyond loopback: off].
    #[arg(long, value_name = "N", env = "SSE_MAX_CONNECTIONS_PER_PRINCIPAL")]
    max_connections_per_principal: Option<u32>,
    /// Event-stream connects per second per client address (bursts of as many)
    /// [beyond loopback: 20].
    #[arg(long, value_name = "N", env = "SSE_CONNECT_RATE_PER_IP")]
    connect_rate_per_ip: Option<u32>,
    /// Event-stream connects per second per session [beyond loopback: off].
    #[arg(long, value_name = "N", env = "SSE_CONNECT_RATE_PER_SESSION")]
    connect_rate_per_session: Option<u32>,
    /// Publishes per second per principal, or per client address for anonymous publishers
    /// [beyond loopback: 100].
    #[arg(long, value_name = "N", env = "SSE_PUBLISH_RATE")]
    publish_rate: Option<u32>,
    /// A proxy network (`10.0.0.0/8`, `::1/128`) trusted to name the client in
    /// `X-Forwarded-For` (else `Forwarded`); repeatable. Behind a proxy, set it: otherwise
    /// every client has the proxy's address, and shares its limits.
    #[arg(
        long = "trusted-proxy",
        value_name = "CIDR",
        env = "SSE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<IpNet>,
    /// The delay a refused event stream is first asked to wait (`retry:`); it doubles with
    /// each refusal of the same address, up to --refusal-retry-max, jittered.
    #[arg(long, env = "SSE_REFUSAL_RETRY", default_value = "5s", value_parser = humantime::parse_duration)]
    refusal_retry: Duration,
    /// The longest delay a refused event stream is asked to wait.
    #[arg(long, env = "SSE_REFUSAL_RETRY_MAX", default_value = "60s", value_parser = humantime::parse_duration)]
    refusal_retry_max: Duration,
}

/// The limits of a server listening beyond loopback, unless set otherwise: in order,
/// total, per address, per session, per principal, connects per second per address and per
/// session, publishes per second. Generous for one person's browsers and scripts; an address
/// shared by many people (a NAT, a proxy not declared with --trusted-proxy) needs more.
const PUBLIC_DEFAULTS: [u32; 7] = [0, 256, 16, 0, 20, 0, 100];

impl LimitArgs {
    /// The limits these flags ask for on a server listening on `listen`.
    fn limits(&self, listen: SocketAddr) -> Limits {
        let local = listen.ip().to_canonical().is_loopback();
        let pick = |set: Option<u32>, i: usize| {
            let n = set.unwrap_or(if local { 0 } else { PUBLIC_DEFAULTS[i] });
            (n > 0).then_some(n)
        };
        let mut limits = Limits::new().refusal_retry(self.refusal_retry, self.refusal_retry_max);
        if let Some(n) = pick(self.max_connections, 0) {
            limits = limits.max_connections(n);
        }
        if let Some(n) = pick(self.max_connections_per_ip, 1) {
            limits = limits.max_connections_per_ip(n);
        }
        if let Some(n) = pick(self.max_connections_per_session, 2) {
            limits = limits.max_connections_per_session(n);
        }
        if let Some(n) = pick(self.max_connections_per_principal, 3) {
            limits = limits.max_connections_per_principal(n);
        }
        if let Some(n) = pick(self.connect_rate_per_ip, 4).and_then(NonZeroU32::new) {
            limits = limits.connect_rate_per_ip(n);
        }
        if let Some(n) = pick(self.connect_rate_per_session, 5).and_then(NonZeroU32::new) {
            limits = limits.connect_rate_per_session(n);
        }
        if let Some(n) = pick(self.publish_rate, 6).and_then(NonZeroU32::new) {
            limits = limits.publish_rate(n);
        }
        for network in &self.trusted_proxies {
            limits = limits.trusted_proxy(*network);
        }
        limits
    }
}

/// The authorization the arguments ask for: [`Tokens`] with a key, else development mode,
/// which only listens on loopback unless `--insecure`.
fn authorization(args: &Args) -> Result<Option<Tokens>, String> {
    let settings = Settings {
        secrets: args.jwt_keys.clone(),
        public_keys: args.jwt_public_keys.clone(),
        issuer: args.jwt_issuer.clone(),
        audience: args.jwt_audience.clone(),
        public_streams: args.public_streams.clone(),
    };
    if settings.has_keys() {
        return Tokens::new(&settings).map(Some);
    }
    if !args.listen.ip().to_canonical().is_loopback() && !args.insecure {
        return Err(format!(
            "refusing to listen on {} without --jwt-key or --jwt-public-key: in development \
             mode every stream is public, so anyone who can reach the server could read them \
             all. Give a key (docs/authentication.md), listen on loopback, or pass --insecure",
            args.listen
        ));
    }
    Ok(None)
}

const DEMO: &str = include_str!("../static/index.html");

/// The whole application: the reference contract, the demo page and its assets, behind CORS
/// for `origins` (outermost, so a preflight is answered before anything else runs).
fn app(layer: SseLayer, origins: CorsOrigins) -> Router {
    let cors = (!origins.is_empty()).then(|| layer.cors(origins));
    let router = resumable_sse_axum::router(layer)
        .route("/", get(|| async { Html(DEMO) }))
        .merge(assets::router());
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost: every request, preflights included, has an id in its logs and response.
    router.layer(resumable_sse_axum::RequestIdLayer::new())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Before any thread starts: it may start the process again (same id, same arguments).
    let restart = args.memory.prepare_release();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, restart))
}

async fn run(
    args: Args,
    restart: Option<std::io::Error>,
) -> Result<(), Box<dyn std::error::Error>> {
    args.ops.init_logging();
    if let Some(err) = restart {
        tracing::warn!(error = %err, "could not start again with glibc's tunables (no per-thread caches nor free arena tops): memory freed after a spike stays partly resident");
    }
    let metrics = args.ops.install_metrics()?;
    // Before anything is opened: a configuration that is refused changes nothing.
    let tokens = match authorization(&args) {
        Ok(tokens) => tokens,
        Err(message) => {
            eprintln!("sse-server: {message}");
            std::process::exit(2);
        }
    };
    let retention = args.memory.retention(args.max_len, args.max_age);
    let stores = args.memory.open_store(&args.store, retention).await?;
    args.memory.spawn_release();
    let config = args
        .memory
        .config(Config::default())
        .with_session_ttl(args.session_ttl)
        .with_heartbeat(args.heartbeat)
        .with_retry(args.retry)
        .with_breaker(args.breaker.breaker());
    let config = args.lifecycle.config(config);
    let mut builder = Hub::builder(stores.buffer, stores.sessions).config(config);
    if let Some(secret) = &args.secret {
        builder = builder.keys(TokenKeys::new(secret.split(',').map(str::trim))?);
    } else {
        tracing::warn!("no --secret: sessions will not survive a restart");
    }
    // The fan-out (the hub's feed task waking connections, and the SSE responses) runs on its
    // own runtime: a burst of thousands of woken connections never queues the requests the
    // main runtime serves (publishing, health checks) behind it.
    let streams = Streams(Some(
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("sse-streams")
            .enable_all()
            .build()?,
    ));
    let hub = {
        let _on_streams = streams.enter();
        builder.build()
    };

    let ops_routes = args.ops.routes(hub.clone(), metrics.as_ref());
    let listener = connections::listen(args.listen)
        .map_err(|err| format!("cannot listen on {}: {err}", args.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("listening on http://{addr}");
    args.ops.serve_admin(metrics.as_ref()).await?;
    tracing::info!(%addr, store = %store_kind(&args.store), "sse-server started");

    let shutdown_hub = hub.clone();
    let origins: CorsOrigins = args.cors_origins.into_iter().collect();
    if !origins.is_empty() && args.cookie_same_site != SameSite::None {
        tracing::info!(
            same_site = %args.cookie_same_site,
            "CORS on: pages on other sites connect without their session cookie (they still \
             resume exactly); --cookie-same-site none keeps it for --cors-origin pages"
        );
    }
    let limits = args.limits.limits(addr);
    tracing::info!(
        max_connections = ?limits.get_max_connections(),
        per_ip = ?limits.get_max_connections_per_ip(),
        per_session = ?limits.get_max_connections_per_session(),
        per_principal = ?limits.get_max_connections_per_principal(),
        connect_rate_per_ip = ?limits.get_connect_rate_per_ip(),
        connect_rate_per_session = ?limits.get_connect_rate_per_session(),
        publish_rate = ?limits.get_publish_rate(),
        trusted_proxies = ?limits.get_trusted_proxies(),
        "limits (None: off)"
    );
    let layer = SseLayer::new(hub)
        .with_same_site(args.cookie_same_site)
        .with_secure_cookie(args.cookie_secure)
        .with_limits(limits);
    let layer = match tokens {
        Some(tokens) => {
            tracing::info!(
                algorithms = ?tokens.algorithms(),
                issuer = args.jwt_issuer.as_deref().unwrap_or("(not checked)"),
                audience = args.jwt_audience.as_deref().unwrap_or("(not checked)"),
                public_streams = ?args.public_streams,
                "JWT authentication: streams not matching --public-streams need a token"
            );
            layer.with_authorization(tokens)
        }
        None => {
            tracing::warn!(
                "development mode (no --jwt-key nor --jwt-public-key): every stream is public \
                 and only loopback clients may publish"
            );
            if !addr.ip().to_canonical().is_loopback() {
                tracing::warn!(%addr, "--insecure: listening beyond loopback without any key");
            }
            layer.with_authorization(Development)
        }
    };
    // `resumable_sse_axum::serve` writes event streams outside hyper (a fraction of the memory
    // per idle connection); the router answers every request, as with `axum::serve`.
    let serve = resumable_sse_axum::serve(listener, app(layer, origins).merge(ops_routes));
    args.connections
        .apply(serve)
        .streams_on(streams.handle().clone())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // SSE responses never finish by themselves: end them with a retry hint so clients
    // reconnect (elsewhere, or here once we are back), and wait until they are written.
    args.lifecycle.drain(&shutdown_hub).await;
    Ok(())
}

/// The runtime event streams run on, shut down without waiting for its tasks when `main`
/// returns, whether it ends or fails (a port in use): dropping a runtime within another one
/// panics.
struct Streams(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for Streams {
    type Target = tokio::runtime::Runtime;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only on drop")
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The backend's kind without credentials from the URL.
fn store_kind(url: &str) -> &str {
    url.split("://").next().unwrap_or(url)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resumable_sse_axum::testing::{TestServer, connect, publish};

    #[test]
    fn limits_are_off_on_loopback_and_on_beyond_unless_set() {
        let args = |extra: &[&str]| {
            let mut argv = vec!["sse-server"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap().limits
        };
        let loopback: SocketAddr = "127.0.0.1:3000".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:3000".parse().unwrap();
        let local = args(&[]).limits(loopback);
        assert_eq!(local.get_max_connections_per_ip(), None);
        assert_eq!(local.get_publish_rate(), None);
        let beyond = args(&[]).limits(public);
        assert_eq!(beyond.get_max_connections_per_ip(), Some(256));
        assert_eq!(beyond.get_max_connections_per_session(), Some(16));
        assert_eq!(beyond.get_connect_rate_per_ip(), NonZeroU32::new(20));
        assert_eq!(beyond.get_publish_rate(), NonZeroU32::new(100));
        assert_eq!(beyond.get_max_connections(), None);
        let set = args(&[
            "--max-connections-per-ip=0",
            "--max-connections=5",
            "--trusted-proxy=10.0.0.0/8,::1/128",
            "--refusal-retry=1s",
        ])
        .limits(public);
        assert_eq!(set.get_max_connections_per_ip(), None);
        assert_eq!(set.get_max_connections(), Some(5));
        assert_eq!(set.get_trusted_proxies().len(), 2);
        assert_eq!(set.get_refusal_retry().0, Duration::from_secs(1));
        assert!(Args::try_parse_from(["sse-server", "--trusted-proxy=10.0.0.0/33"]).is_err());
    }

    #[tokio::test]
    async fn serves_the_demo_and_the_contract() {
        let layer = SseLayer::new(resumable_sse_axum::memory_hub(Config::default()));
        let server = TestServer::start_fast(app(layer, CorsOrigins::new())).await;
        let page = reqwest::get(server.url("/"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("EventSource"));
        let mut events = connect(&server.url("/events"), &[]).await;
        assert_eq!(
            events
                .next_event(Duration::from_secs(5))
                .await
                .unwrap()
                .event,
            "connected"
        );
        let (status, _) = publish(&server, serde_json::json!({"data": "hi"})).await;
        assert_eq!(status, 200);
        assert_eq!(
            events
                .next_event(Duration::from_secs(5))
                .await
                .unwrap()
                .data,
            "hi"
        );
    }
}
