//! How connections begin and end around page reloads and shutdown: `--reload-wait` and
//! `--shutdown-grace` (docs/protocol.md, "Page reloads" and "Graceful shutdown").

use std::time::Duration;

use resumable_sse_core::{Config, Hub};

/// Page reloads and graceful shutdown.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Reloads and shutdown")]
pub(crate) struct LifecycleArgs {
    /// How long an event stream opened without `Last-Event-ID` (a plain page reload) waits for
    /// its session's other connections to close, so it resumes where they got (`0s`: off).
    #[arg(long, env = "SSE_RELOAD_WAIT", default_value = "500ms", value_parser = humantime::parse_duration)]
    reload_wait: Duration,
    /// On SIGTERM or Ctrl-C, how long to wait for every event stream to be written its
    /// closing `retry:` and ended before the process exits.
    #[arg(long, env = "SSE_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

impl LifecycleArgs {
    /// `config` with these settings.
    pub(crate) fn config(&self, config: Config) -> Config {
        config.with_reload_wait(self.reload_wait)
    }

    /// Ends every event stream with a retry hint and waits, at most `--shutdown-grace`, until
    /// each was written to its end.
    pub(crate) async fn drain(&self, hub: &Hub) {
        let left = hub.drain(self.shutdown_grace).await;
        if left == 0 {
            tracing::info!("every event stream was ended with a retry hint");
        } else {
            tracing::warn!(
                left,
                grace = ?self.shutdown_grace,
                "event streams still open at the end of the shutdown grace"
            );
        }
    }
}
