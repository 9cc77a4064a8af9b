//! The store circuit breaker's flags (docs/limits.md, "Store outages").

use std::time::Duration;

use resumable_sse_core::BreakerConfig;

/// While the store is failing, requests fail at once (503 for publishes, 200 with a `retry:`
/// and a `refused` event for event streams) instead of each waiting for the store's timeout.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Store circuit breaker")]
pub(crate) struct BreakerArgs {
    /// Consecutive store failures that open the circuit breaker (0: no breaker).
    #[arg(long, value_name = "N", env = "SSE_BREAKER_FAILURES", default_value_t = BreakerConfig::default().failures)]
    breaker_failures: u32,
    /// How often the store is probed while the breaker is open; the first answer closes it.
    #[arg(long, env = "SSE_BREAKER_PROBE", default_value = "1s", value_parser = humantime::parse_duration)]
    breaker_probe: Duration,
}

impl BreakerArgs {
    /// The breaker these flags ask for.
    pub(crate) fn breaker(&self) -> BreakerConfig {
        BreakerConfig::new(self.breaker_failures, self.breaker_probe)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        breaker: BreakerArgs,
    }

    #[test]
    fn defaults_and_flags() {
        let default = Flags::try_parse_from(["sse-server"])
            .unwrap()
            .breaker
            .breaker();
        assert_eq!(default, BreakerConfig::default());
        let set = Flags::try_parse_from([
            "sse-server",
            "--breaker-failures=2",
            "--breaker-probe=250ms",
        ])
        .unwrap()
        .breaker
        .breaker();
        assert_eq!(set, BreakerConfig::new(2, Duration::from_millis(250)));
        assert!(
            Flags::try_parse_from(["sse-server", "--breaker-failures=0"])
                .unwrap()
                .breaker
                .breaker()
                .is_off()
        );
    }
}
