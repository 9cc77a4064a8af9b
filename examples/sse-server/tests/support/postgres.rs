//! The shared PostgreSQL test server, and a schema of it per test.

use std::hash::{BuildHasher, RandomState};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const HOW_TO_START: &str = "start the local cluster with \
    `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
    (trust authentication, a database `test`), or set SSE_TEST_POSTGRES_URL";

pub(crate) fn shared_url() -> String {
    std::env::var("SSE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Fails the test, with how to start it, when nothing listens where the shared server
/// should be.
pub(crate) fn require_shared_server(url: &str) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = authority.split(['/', '?']).next().unwrap_or("127.0.0.1");
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&host)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok()
        });
    assert!(
        reachable,
        "PostgreSQL is not reachable at {host}: these tests need a real PostgreSQL; {HOW_TO_START}"
    );
}

pub(crate) fn random_u64() -> u64 {
    RandomState::new().hash_one(SystemTime::now())
}

/// A schema of the shared server for one test, dropped (with `psql`) when the test ends.
pub(crate) struct Schema {
    pub(crate) url: String,
    pub(crate) name: String,
}

impl Schema {
    pub(crate) fn new() -> Schema {
        let url = shared_url();
        require_shared_server(&url);
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Schema {
            url,
            name: format!("sse_test_{secs}_{:016x}", random_u64()),
        }
    }

    /// The store URL naming this schema.
    pub(crate) fn store_url(&self) -> String {
        let separator = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{separator}sse_schema={}", self.url, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let dropped = Command::new("psql")
            .args([
                self.url.as_str(),
                "-qc",
                &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !dropped.is_ok_and(|s| s.success()) {
            eprintln!("could not drop the test schema {} with psql", self.name);
        }
    }
}
