// Shared by several test binaries, each using a part of it.
#![allow(dead_code)]

//! Processes for the tests: the real `sse-server` binary, chromedriver, Node's `eventsource`
//! clients (`node`), and a scratch directory. Each is a guard that cleans up when dropped, also
//! when the test panics.

pub(crate) mod breaker;
pub(crate) mod browser;
pub(crate) mod node;
pub(crate) mod postgres;
pub(crate) mod proxy;
pub(crate) mod webdriver;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Errors carry a readable message; the test prints it with its diagnostics.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// `.ctx("what")` turns any error into `what: error`.
pub(crate) trait Context<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|err| format!("{what}: {err}"))
    }
}

const INSTALL: &str = "install them with `apt-get install -y chromium chromium-driver` \
     (Debian/Ubuntu), or point CHROMIUM and CHROMEDRIVER at the binaries";

/// The browser and its driver; fails the test (never skips it) when either is missing.
#[derive(Debug)]
pub(crate) struct Tools {
    pub(crate) chromium: PathBuf,
    pub(crate) chromedriver: PathBuf,
}

impl Tools {
    pub(crate) fn locate() -> Self {
        let find = |var: &str, default: &str| {
            let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
            assert!(
                path.is_file(),
                "the browser test needs {} but {} does not exist: {INSTALL}",
                Path::new(default)
                    .file_name()
                    .map_or(default.into(), |n| n.to_string_lossy()),
                path.display(),
            );
            path
        };
        Tools {
            chromium: find("CHROMIUM", "/usr/bin/chromium"),
            chromedriver: find("CHROMEDRIVER", "/usr/bin/chromedriver"),
        }
    }
}

/// Output lines of a child process, kept for the failure report.
pub(crate) type Log = Arc<Mutex<Vec<String>>>;

/// Reads `stream` line by line on a thread until it ends: every line goes to `log`, and the
/// first line for which `pick` returns something is sent on `found`. The thread ends when the
/// stream does.
fn drain<R, T>(
    stream: R,
    log: Log,
    pick: fn(&str) -> Option<T>,
    found: Option<mpsc::Sender<T>>,
) -> std::thread::JoinHandle<()>
where
    R: Read + Send + 'static,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        let mut found = found;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(value) = pick(&line)
                && let Some(sender) = found.take()
            {
                let _ = sender.send(value);
            }
            if let Ok(mut log) = log.lock() {
                log.push(line);
            }
        }
    })
}

/// The last `n` lines of `log`, for the failure report.
pub(crate) fn tail(log: &Log, n: usize) -> String {
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let start = log.len().saturating_sub(n);
    log[start..].join("\n")
}

/// Spawns `command` with piped output and waits (up to `timeout`) for the first output line
/// that `pick` accepts.
fn spawn_and_wait<T: Send + 'static>(
    mut command: Command,
    what: &str,
    pick: fn(&str) -> Option<T>,
    timeout: Duration,
) -> Result<(Child, T, Log, Vec<std::thread::JoinHandle<()>>)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(&format!("cannot start {what}"))?;
    let log = Log::default();
    let mut readers = Vec::new();
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        readers.push(drain(stdout, log.clone(), pick, Some(sender.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(drain(stderr, log.clone(), pick, Some(sender)));
    }
    match receiver.recv_timeout(timeout) {
        Ok(value) => Ok((child, value, log, readers)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{what} did not report its address within {timeout:?}; its output:\n{}",
                tail(&log, 50)
            ))
        }
    }
}

/// The real `sse-server` binary on a free port, killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
    pub(crate) log: Log,
    /// The threads reading its output.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    pub(crate) fn start(heartbeat: &str) -> Result<Self> {
        Self::start_with(&["--listen", "127.0.0.1:0", "--heartbeat", heartbeat])
    }

    /// Starts the binary with these arguments (give `--listen`; port 0 picks one). Settings
    /// not given take their defaults, whatever the environment says.
    pub(crate) fn start_with(args: &[&str]) -> Result<Self> {
        Self::start_with_env(args, &[])
    }

    /// [`start_with`](Self::start_with), with these environment variables set last
    /// (`RUST_LOG` among them, for example).
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut command = Self::command();
        command.args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let pick = |line: &str| {
            line.trim()
                .strip_prefix("listening on http://")
                .map(str::to_owned)
        };
        let (child, addr, log, readers) =
            spawn_and_wait(command, "sse-server", pick, Duration::from_secs(30))?;
        Ok(Server {
            child,
            addr,
            log,
            readers,
        })
    }

    /// [`start_with`](Self::start_with) under a limit of `nofile` open files (through
    /// `prlimit`, which runs the binary in its own process: the pid is the server's).
    pub(crate) fn start_with_nofile(args: &[&str], nofile: u64) -> Result<Self> {
        let server = Self::command();
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(server.get_program())
            .args(args);
        for (name, value) in server.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let pick = |line: &str| {
            line.trim()
                .strip_prefix("listening on http://")
                .map(str::to_owned)
        };
        let (child, addr, log, readers) =
            spawn_and_wait(command, "sse-server", pick, Duration::from_secs(30))?;
        Ok(Server {
            child,
            addr,
            log,
            readers,
        })
    }

    /// The binary, its settings cleared from the environment (they take their defaults),
    /// logging at `info` without colours.
    pub(crate) fn command() -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sse-server"));
        command
            .env_remove("SSE_LISTEN")
            .env_remove("SSE_STORE")
            .env_remove("SSE_MAX_LEN")
            .env_remove("SSE_MAX_AGE")
            .env_remove("SSE_MAX_PENDING")
            .env_remove("SSE_MAX_BYTES")
            .env_remove("SSE_MAX_EVENT_BYTES")
            .env_remove("SSE_MEMORY_BUDGET")
            .env_remove("SSE_MEMORY_MAX_STREAMS")
            .env_remove("SSE_SESSION_TTL")
            .env_remove("SSE_HEARTBEAT")
            .env_remove("SSE_RETRY")
            .env_remove("SSE_SECRET")
            .env_remove("SSE_JWT_KEYS")
            .env_remove("SSE_JWT_PUBLIC_KEYS")
            .env_remove("SSE_JWT_ISSUER")
            .env_remove("SSE_JWT_AUDIENCE")
            .env_remove("SSE_PUBLIC_STREAMS")
            .env_remove("SSE_INSECURE")
            .env_remove("SSE_CORS_ORIGINS")
            .env_remove("SSE_COOKIE_SAME_SITE")
            .env_remove("SSE_COOKIE_SECURE")
            .env_remove("SSE_MAX_CONNECTIONS")
            .env_remove("SSE_MAX_CONNECTIONS_PER_IP")
            .env_remove("SSE_MAX_CONNECTIONS_PER_SESSION")
            .env_remove("SSE_MAX_CONNECTIONS_PER_PRINCIPAL")
            .env_remove("SSE_CONNECT_RATE_PER_IP")
            .env_remove("SSE_CONNECT_RATE_PER_SESSION")
            .env_remove("SSE_PUBLISH_RATE")
            .env_remove("SSE_TRUSTED_PROXIES")
            .env_remove("SSE_REFUSAL_RETRY")
            .env_remove("SSE_REFUSAL_RETRY_MAX")
            .env_remove("SSE_RELOAD_WAIT")
            .env_remove("SSE_SHUTDOWN_GRACE")
            .env_remove("SSE_HEAD_TIMEOUT")
            .env_remove("SSE_KEEP_ALIVE_TIMEOUT")
            .env_remove("SSE_BODY_TIMEOUT")
            .env_remove("SSE_MAX_PENDING_HEADS")
            .env_remove("SSE_DESCRIPTOR_RESERVE")
            .env_remove("SSE_FAST_PATH")
            .env_remove("SSE_METRICS")
            .env_remove("SSE_METRICS_LISTEN")
            .env_remove("SSE_LOG_FORMAT")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        command
    }

    /// Stops the server now (SIGKILL: a crash, not a graceful shutdown). Returns once its
    /// output was read to the end: `log` then holds every line it wrote.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for reader in std::mem::take(&mut self.readers) {
            let _ = reader.join();
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends SIGTERM (a graceful shutdown) and waits, at most `within`, for the process to
    /// exit; its exit status. Returns once its output was read to the end: `log` then holds
    /// every line it wrote (its last lines could otherwise still be in the pipe).
    pub(crate) fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .ctx("cannot run kill")?;
        if !sent.success() {
            return Err(format!("kill -TERM failed: {sent}"));
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().ctx("cannot wait for sse-server")? {
                for reader in std::mem::take(&mut self.readers) {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "sse-server did not exit within {within:?} of SIGTERM; its output:\n{}",
                    tail(&self.log, 50)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver on a port it picks itself; when dropped it is killed together with every
/// process it started (the browser), found by parent id.
#[derive(Debug)]
pub(crate) struct ChromeDriver {
    child: Child,
    pub(crate) url: String,
    pub(crate) log: Log,
}

impl ChromeDriver {
    pub(crate) fn start(binary: &Path) -> Result<Self> {
        // With `--port=0` chromedriver picks a port it saw free and then binds it: another
        // process (a server of another test) can take it in between, and chromedriver exits
        // with "bind() failed: Address already in use". Only that is tried again.
        let mut attempt = 1;
        loop {
            match Self::start_once(binary) {
                Err(err) if attempt < 3 && err.to_string().contains("Address already in use") => {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    fn start_once(binary: &Path) -> Result<Self> {
        let mut command = Command::new(binary);
        command.arg("--port=0");
        // "ChromeDriver was started successfully on port 35645."
        let pick = |line: &str| {
            let rest = line.split("started successfully on port ").nth(1)?;
            rest.trim_end_matches('.').trim().parse::<u16>().ok()
        };
        let (child, port, log, _) =
            spawn_and_wait(command, "chromedriver", pick, Duration::from_secs(30))?;
        Ok(ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        })
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // Descendants first, while they can still be found by their parent.
        let pids = descendants(self.child.id());
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every process below `root`, from `/proc` (empty where there is none).
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parents = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// A fresh directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).ctx("cannot create a temp dir")?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
