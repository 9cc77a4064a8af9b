//! Node.js running `clients/node-check/check.mjs`: clients made with the `eventsource` npm
//! package, a client this workspace did not write. It prints one JSON line per event each
//! client sees; [`Clients`] reads them into a [`Seen`] per client as they come.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{Context, Log, Result, tail};

/// How to get what these tests need, for failure messages.
pub(crate) const HOW_TO_INSTALL: &str = "install Node.js 20 or later with npm (or point NODE \
     at a `node` binary), then the client's packages from its lockfile: \
     `npm ci --prefix clients/node-check` (scripts/test does this when they are missing)";

/// `node` and the installed `clients/node-check` project; fails the test (never skips it)
/// when either is missing.
#[derive(Debug)]
pub(crate) struct Node {
    binary: OsString,
    project: PathBuf,
}

impl Node {
    pub(crate) fn locate() -> Self {
        let binary = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
        let version = Command::new(&binary).arg("--version").output();
        let version = match version {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
            Ok(out) => panic!(
                "`{} --version` failed ({}): this test needs Node.js; {HOW_TO_INSTALL}",
                binary.to_string_lossy(),
                out.status
            ),
            Err(err) => panic!(
                "this test needs Node.js but `{}` cannot be run ({err}); {HOW_TO_INSTALL}",
                binary.to_string_lossy()
            ),
        };
        let major = version
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        assert!(
            major.is_some_and(|m| m >= 20),
            "this test needs Node.js 20 or later, found {}; {HOW_TO_INSTALL}",
            version.trim()
        );
        let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/node-check");
        let installed = project.join("node_modules/eventsource/package.json");
        assert!(
            installed.is_file(),
            "the Node client's packages are not installed ({} is missing); {HOW_TO_INSTALL}",
            installed.display()
        );
        Node { binary, project }
    }

    /// `node check.mjs <args>`, run in the project's folder.
    pub(crate) fn check(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .current_dir(&self.project)
            .arg("check.mjs")
            .args(args);
        command
    }
}

/// What one client has seen so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// The data of each `connected` event, parsed.
    pub(crate) connected: Vec<Value>,
    /// The data of each `reset` event.
    pub(crate) resets: Vec<String>,
    /// The data of each `message` event, in order.
    pub(crate) messages: Vec<String>,
    /// `error` events: a failed or ended connection that the client retries.
    pub(crate) errors: usize,
    /// Why the client gave up for good (an `error` in state CLOSED), if it did.
    pub(crate) closed: Option<String>,
}

/// `node check.mjs clients …`: `count` EventSources on one URL, killed when dropped.
#[derive(Debug)]
pub(crate) struct Clients {
    child: Child,
    stdin: Option<ChildStdin>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Standard error, and any output line that is not a client's record.
    pub(crate) log: Log,
}

impl Clients {
    /// Starts `count` clients on `url`; each connection attempt waits a random time up to
    /// `latency` first.
    pub(crate) fn start(node: &Node, url: &str, count: usize, latency: Duration) -> Result<Self> {
        let (count_arg, latency_ms) = (count.to_string(), latency.as_millis().to_string());
        let mut child = node
            .check(&["clients", url, &count_arg, &latency_ms])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx("cannot start node")?;
        let seen = Arc::new(Mutex::new(vec![Seen::default(); count]));
        let log = Log::default();
        if let Some(stdout) = child.stdout.take() {
            let (seen, log) = (seen.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !record(&seen, &line)
                        && let Ok(mut log) = log.lock()
                    {
                        log.push(line);
                    }
                }
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut log) = log.lock() {
                        log.push(line);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(Clients {
            child,
            stdin,
            seen,
            log,
        })
    }

    /// What every client has seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for what the clients have seen, polling; fails when `timeout`
    /// passes first or Node exits.
    pub(crate) async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.seen()) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "node exited ({status}) before {what}; its output:\n{}",
                    tail(&self.log, 30)
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not within {timeout:?}: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // Closing its standard input ends the script; the kill is for a script that hangs.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files one output line under its client; `false` if it is not a client's record.
fn record(seen: &Mutex<Vec<Seen>>, line: &str) -> bool {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let Some(client) = value["client"]
        .as_u64()
        .and_then(|c| usize::try_from(c).ok())
    else {
        return false;
    };
    let Ok(mut seen) = seen.lock() else {
        return false;
    };
    let Some(seen) = seen.get_mut(client) else {
        return false;
    };
    let data = || value["data"].as_str().unwrap_or_default().to_owned();
    match value["type"].as_str() {
        Some("connected") => seen
            .connected
            .push(serde_json::from_str(&data()).unwrap_or(Value::String(data()))),
        Some("reset") => seen.resets.push(data()),
        Some("message") => seen.messages.push(data()),
        Some("error") => {
            seen.errors += 1;
            // EventSource.CLOSED: the client will not reconnect.
            if value["state"] == 2 {
                seen.closed = Some(value.to_string());
            }
        }
        _ => return false,
    }
    true
}
