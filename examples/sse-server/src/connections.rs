//! Slow and hostile connections: the timeouts and bounds of the server's connections
//! (docs/limits.md, "Slow and hostile connections"), and the listening socket.

use std::net::SocketAddr;
use std::time::Duration;

use resumable_sse_axum::Serve;
use tokio::net::{TcpListener, TcpSocket};

/// Connections waiting in the kernel for the server to accept them: room for a burst of
/// connects (a reconnect storm) without refusing any.
const BACKLOG: u32 = 4096;

/// The connection flags.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Connections")]
pub(crate) struct ConnectionArgs {
    /// How long a client may take to send a request head (a new connection's first, or a
    /// kept-alive connection's next from its first byte); then the connection is closed.
    #[arg(long, env = "SSE_HEAD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    head_timeout: Duration,
    /// How long a connection is kept alive after a response, waiting for the next request.
    #[arg(long, env = "SSE_KEEP_ALIVE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    keep_alive_timeout: Duration,
    /// How long a request body (a publish) may take to arrive; then `408`.
    #[arg(long, env = "SSE_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    body_timeout: Duration,
    /// Connections waiting for a request head at once; one more drops the one waiting
    /// longest.
    #[arg(
        long,
        value_name = "N",
        env = "SSE_MAX_PENDING_HEADS",
        default_value_t = 4096
    )]
    max_pending_heads: usize,
    /// File descriptors kept for health checks and publishes: within this many of the
    /// process's limit, the connections waiting longest for a request head are dropped.
    #[arg(
        long,
        value_name = "N",
        env = "SSE_DESCRIPTOR_RESERVE",
        default_value_t = 16
    )]
    descriptor_reserve: usize,
    /// Write event streams outside hyper (`false`: every request through hyper, for
    /// comparison).
    #[arg(long, env = "SSE_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    fast_path: bool,
}

impl ConnectionArgs {
    /// `serve` with these timeouts and bounds.
    pub(crate) fn apply<F>(&self, serve: Serve<F>) -> Serve<F> {
        serve
            .head_timeout(self.head_timeout)
            .keep_alive_timeout(self.keep_alive_timeout)
            .body_timeout(Some(self.body_timeout))
            .max_pending_heads(self.max_pending_heads)
            .descriptor_reserve(self.descriptor_reserve)
            .fast_path(self.fast_path)
    }
}

/// A listener on `addr` with a [`BACKLOG`]-deep accept queue.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        connections: ConnectionArgs,
    }

    #[test]
    fn defaults_and_flags() {
        // The flags' defaults are the library's.
        type S = Serve<()>;
        let args = Args::try_parse_from(["x"]).unwrap().connections;
        assert_eq!(args.head_timeout, S::DEFAULT_HEAD_TIMEOUT);
        assert_eq!(args.keep_alive_timeout, S::DEFAULT_KEEP_ALIVE_TIMEOUT);
        assert_eq!(args.body_timeout, S::DEFAULT_BODY_TIMEOUT);
        assert_eq!(args.max_pending_heads, S::DEFAULT_MAX_PENDING_HEADS);
        assert_eq!(args.descriptor_reserve, S::DEFAULT_DESCRIPTOR_RESERVE);
        assert!(args.fast_path);
        let args = Args::try_parse_from(["x", "--head-timeout=2s", "--fast-path=false"])
            .unwrap()
            .connections;
        assert_eq!(args.head_timeout, Duration::from_secs(2));
        assert!(!args.fast_path);
    }

    #[tokio::test]
    async fn listens_on_a_free_port() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
