//! The shared PostgreSQL test server, and a schema of it per test.

use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::TempDir;

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

/// The newest `/usr/lib/postgresql/*/bin` (or `PG_BIN`), which must hold `initdb`.
pub(crate) fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "the restart test needs PostgreSQL's initdb and pg_ctl: \
             `apt-get install -y postgresql`, or point PG_BIN at their directory"
        )
    })
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// A PostgreSQL cluster of this test's own: `initdb` in a temporary directory, on a free
/// port. Run as `postgres` when the test runs as root (initdb refuses root). Stopped
/// (immediately) and removed when dropped, also when the test panics.
pub(crate) struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    // Dropped last: the server is stopped before its files go.
    dir: TempDir,
}

impl Cluster {
    pub(crate) fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    pub(crate) fn run(&self, what: &str, mut command: Command) {
        let output = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
        assert!(
            output.status.success(),
            "{what} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
        );
    }

    pub(crate) fn init() -> Cluster {
        let bin = pg_bin();
        let dir = TempDir::new("sse-pg-cluster").unwrap_or_else(|err| panic!("{err}"));
        let as_postgres = is_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:", &dir.0.to_string_lossy()])
                .status();
            assert!(
                chown.is_ok_and(|s| s.success()),
                "cannot hand {} to the postgres user",
                dir.0.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let cluster = Cluster {
            bin,
            data: dir.0.join("data"),
            port,
            as_postgres,
            dir,
        };
        let mut initdb = cluster.command("initdb");
        initdb.args(["-D", &cluster.data.to_string_lossy()]).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]);
        cluster.run("initdb", initdb);
        cluster
    }

    pub(crate) fn start(&self) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["-D", &self.data.to_string_lossy()])
            .args(["-l", &self.dir.0.join("log").to_string_lossy()])
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.0.display()
            ))
            .arg("start");
        self.run("pg_ctl start", pg_ctl);
    }

    /// A fast shutdown, as a restart by an operator or a failover would do.
    pub(crate) fn stop(&self) {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .args(["-D", &self.data.to_string_lossy()])
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        self.run("pg_ctl stop", pg_ctl);
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` as the superuser; its output, trimmed (one value per line).
    pub(crate) fn psql(&self, sql: &str) -> String {
        let mut psql = self.command("psql");
        psql.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-tAX",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql]);
        let output = psql
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run psql: {err}"));
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data_dir().join("postmaster.pid").exists() {
            let mut pg_ctl = self.command("pg_ctl");
            let _ = pg_ctl
                .args(["-D", &self.data.to_string_lossy()])
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
