//! Test support: a private `redis-server` per test, which a test may kill and restart, and a
//! small blocking RESP client for looking at it. Used by this workspace's tests; usable by
//! yours.
//!
//! [`PrivateRedis`] runs the binary [`SERVER_VAR`] names, by default `redis-server` from the
//! `PATH`, on a free port with a temp directory of its own. When it cannot be started the
//! helpers panic with a message saying how to install it: a test against Redis fails, it
//! never skips silently.
//!
//! ```
//! use resumable_sse_store_redis::testing::{PrivateRedis, answers, command};
//!
//! let mut redis = PrivateRedis::start(false);
//! assert_eq!(command(redis.port(), &["SET", "greeting", "hello"])?.text(), "OK");
//! assert_eq!(command(redis.port(), &["GET", "greeting"])?.text(), "hello");
//!
//! // A crash and a restart without persistence: Redis comes back empty.
//! redis.kill();
//! assert!(!answers(redis.port()));
//! redis.restart();
//! assert_eq!(command(redis.port(), &["EXISTS", "greeting"])?.int(), 0);
//! # Ok::<(), std::io::Error>(())
//! ```

#![allow(clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the `redis-server` binary [`PrivateRedis`] runs.
pub const SERVER_VAR: &str = "REDIS_SERVER";

/// How to get the shared test server on `127.0.0.1:6379`, for failure messages.
pub const HOW_TO_START: &str = "start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 \
     --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log";

/// How long a private server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple string (`+OK`).
    Status(String),
    /// An error (`-ERR …`).
    Error(String),
    /// An integer (`:1`).
    Int(i64),
    /// A bulk string; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// An array; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The integer of an integer reply.
    ///
    /// # Panics
    ///
    /// When the reply is not an integer.
    pub fn int(&self) -> i64 {
        match self {
            Reply::Int(i) => *i,
            other => panic!("expected an integer, got {other:?}"),
        }
    }

    /// The text of a bulk string or status reply (bytes that are not UTF-8 replaced).
    ///
    /// # Panics
    ///
    /// When the reply is neither.
    pub fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Reply::Status(s) => s.clone(),
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Sends one command to the Redis on `127.0.0.1:port`, on a connection of its own, and reads
/// the reply (waiting at most 5 s for it).
///
/// # Errors
///
/// When Redis cannot be reached, does not answer in time, or answers something that is not
/// RESP. An error reply is `Ok(Reply::Error(_))`.
pub fn command(port: u16, args: &[&str]) -> std::io::Result<Reply> {
    let mut socket = TcpStream::connect(("127.0.0.1", port))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    socket.write_all(request.as_bytes())?;
    read_reply(&mut BufReader::new(socket))
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| invalid("empty reply"))?;
    let number = || rest.parse::<i64>().map_err(|_| invalid(line));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match number()? {
            -1 => Reply::Bulk(None),
            len => {
                let mut bytes = vec![0; usize::try_from(len).map_err(|_| invalid(line))? + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(bytes.len() - 2);
                Reply::Bulk(Some(bytes))
            }
        },
        "*" => match number()? {
            -1 => Reply::Array(None),
            len => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<Result<_, _>>()?,
            )),
        },
        _ => return Err(invalid(line)),
    })
}

/// Whether the Redis on `127.0.0.1:port` answers `PING` with `PONG` (not `LOADING`, not an
/// error, not silence).
pub fn answers(port: u16) -> bool {
    matches!(command(port, &["PING"]), Ok(Reply::Status(s)) if s == "PONG")
}

/// A `redis-server` of one test, on a free port, in a temp directory of its own; killed, and
/// its directory removed, when dropped (also when the test panics).
#[derive(Debug)]
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    aof: bool,
}

impl PrivateRedis {
    /// Starts one and waits until it answers. With `aof`, every write is fsynced to an
    /// append-only file before it is acknowledged, so a crash loses nothing; without, a
    /// restart starts empty.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be run or does not answer within 15 s.
    pub fn start(aof: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "sse-store-redis-{}-{port}-{}",
            std::process::id(),
            resumable_sse_core::SessionId::random()
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|err| panic!("cannot create {}: {err}", dir.display()));
        let mut server = PrivateRedis {
            child: None,
            port,
            dir,
            aof,
        };
        server.restart();
        server
    }

    /// Its port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again after [`kill`](Self::kill), on the same port and directory, and waits
    /// until it answers.
    ///
    /// # Panics
    ///
    /// When it is running, or as [`start`](Self::start).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let binary = std::env::var_os(SERVER_VAR)
            .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
        let persistence: &[&str] = if self.aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot run {} ({err}): install Redis (apt-get install redis-server) or \
                     point {SERVER_VAR} at the binary",
                    binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash, nothing flushed beyond what `appendfsync` already wrote. Does
    /// nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
