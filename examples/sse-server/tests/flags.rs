//! Flags of the real binary that shape what clients see.

mod support;

use std::time::Duration;

use resumable_sse_axum::testing::connect;
use resumable_sse_core::codec::Item;
use support::Server;

/// `--retry` is the `retry:` every event stream starts with.
#[tokio::test]
async fn retry_sets_the_reconnection_delay_clients_are_told() {
    for (flag, expected) in [(None, 2000), (Some("300ms"), 300)] {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if let Some(retry) = flag {
            args.extend(["--retry", retry]);
        }
        let server = Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"));
        let mut events = connect(&server.url("/events"), &[]).await;
        assert_eq!(events.status, 200);
        let first = events.next_item(Duration::from_secs(10)).await;
        assert!(
            matches!(first, Some(Item::Retry(ms)) if ms == expected),
            "--retry {flag:?}: {first:?}"
        );
    }
}
