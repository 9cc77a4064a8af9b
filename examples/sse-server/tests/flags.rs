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

/// `--release-memory` (the default) starts the server again once, at start, with glibc's
/// tunables (no per-thread caches, no free arena tops): the same process id, name and
/// arguments, the tunables and the marker in its environment. A tunable the operator set is
/// kept, and `--release-memory false` starts it only once.
#[test]
fn release_memory_restarts_once_with_glibc_tunables() {
    let environ = |server: &Server| -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{}/environ", server.pid())).expect("environ");
        raw.split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| v.starts_with("GLIBC_TUNABLES=") || v.starts_with("SSE_SERVER_RESTARTED="))
            // glibc 2.36 writes NULs over GLIBC_TUNABLES' colons as it reads it, so that only
            // its first tunable shows here; later glibc leaves it whole. The first is
            // compared; SSE_SERVER_RESTARTED says what the server asked for.
            .map(|v| match v.strip_prefix("GLIBC_TUNABLES=") {
                Some(tunables) => format!(
                    "GLIBC_TUNABLES={}",
                    tunables.split(':').next().unwrap_or_default()
                ),
                None => v,
            })
            .collect()
    };
    let args = ["--listen", "127.0.0.1:0", "--retry", "1s"];
    let server = Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"));
    let mut seen = environ(&server);
    seen.sort();
    assert_eq!(
        seen,
        [
            "GLIBC_TUNABLES=glibc.malloc.tcache_count=0",
            "SSE_SERVER_RESTARTED=glibc.malloc.tcache_count=0:glibc.malloc.top_pad=0"
        ]
    );
    let pid = server.pid();
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    assert_eq!(name.trim(), "sse-server");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let cmdline: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(cmdline[1..], args, "{cmdline:?}");

    // The operator's settings are kept; the server adds none when they set all three.
    let all = "glibc.malloc.tcache_count=3:glibc.malloc.top_pad=65536";
    let server = Server::start_with_env(&args, &[("GLIBC_TUNABLES", all)])
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        environ(&server),
        ["GLIBC_TUNABLES=glibc.malloc.tcache_count=3"]
    );
    let server =
        Server::start_with_env(&args, &[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3")])
            .unwrap_or_else(|err| panic!("{err}"));
    let mut seen = environ(&server);
    seen.sort();
    assert_eq!(
        seen,
        [
            "GLIBC_TUNABLES=glibc.malloc.tcache_count=3",
            "SSE_SERVER_RESTARTED=glibc.malloc.tcache_count=3:glibc.malloc.top_pad=0"
        ]
    );

    let off = ["--listen", "127.0.0.1:0", "--release-memory", "false"];
    let server = Server::start_with(&off).unwrap_or_else(|err| panic!("{err}"));
    assert!(environ(&server).is_empty(), "{:?}", environ(&server));
}
