//! One headless Chromium session per test function, through the cut proxy to the real
//! `sse-server`, with the waits and the failure report the browser tests share.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::proxy::Proxy;
use super::webdriver::Session;
use super::{ChromeDriver, Context, Result, Server, TempDir, Tools, tail};

/// How long any one step may take. The server asks for `retry: 2000`, so the browser tries
/// again about every 2 s.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// Chromium's argument that turns its back/forward cache off: a page navigated away from is
/// unloaded (its connections closed) instead of kept frozen, as in browsers or on pages where
/// the cache does not apply.
pub(crate) const NO_BFCACHE: &str = "--disable-features=BackForwardCache";

/// `ensure!(condition, "format", args…)`: an `Err` with the message when the condition fails.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

/// What a scenario works with.
#[derive(Debug)]
pub(crate) struct Env {
    pub(crate) server: Server,
    pub(crate) proxy: Proxy,
    pub(crate) browser: Session,
    pub(crate) http: reqwest::Client,
}

/// Starts `sse-server` with `server_args` (plus `--listen 127.0.0.1:0`), chromedriver,
/// Chromium and the proxy; runs `scenario`; panics with the page, the proxy's requests and
/// both processes' output when it fails. `page` is a script whose result is shown on failure.
pub(crate) fn run<F>(name: &str, server_args: &[&str], page: &str, scenario: F)
where
    F: for<'a> AsyncFnOnce(&'a Env) -> Result<()>,
{
    run_with(name, server_args, &[], page, scenario);
}

/// [`run`] with more arguments for Chromium.
pub(crate) fn run_with<F>(
    name: &str,
    server_args: &[&str],
    chromium_args: &[&str],
    page: &str,
    scenario: F,
) where
    F: for<'a> AsyncFnOnce(&'a Env) -> Result<()>,
{
    let started = Instant::now();
    let tools = Tools::locate();
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(server_args);
    let server = Server::start_with(&args).unwrap_or_else(|err| panic!("{err}"));
    // Declared before the driver, so removed after the browser is gone.
    let profile = TempDir::new(name).unwrap_or_else(|err| panic!("{err}"));
    let driver = ChromeDriver::start(&tools.chromedriver).unwrap_or_else(|err| panic!("{err}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (outcome, server) = runtime.block_on(async {
        let env = match start(server, &driver, &tools, &profile, chromium_args).await {
            Ok(env) => env,
            Err((err, server)) => return (Err(err), server),
        };
        let result = scenario(&env).await;
        let result = match result {
            Ok(()) => Ok(()),
            Err(err) => Err(format!(
                "{err}\n\npage now: {:?}\nproxy: {} refused, {} answered, {} open; \
                 GET /events requests relayed:\n{:#?}",
                env.browser.execute(page).await,
                env.proxy.refused(),
                env.proxy.answered(),
                env.proxy.open(),
                env.proxy.event_requests(),
            )),
        };
        let Env {
            server, browser, ..
        } = env;
        if let Err(err) = browser.close().await {
            eprintln!("warning: could not close the browser session: {err}");
        }
        (result, server)
    });
    drop(runtime);
    if let Err(err) = outcome {
        panic!(
            "{err}\n\n--- sse-server output ---\n{}\n--- chromedriver output ---\n{}",
            tail(&server.log, 60),
            tail(&driver.log, 30),
        );
    }
    eprintln!("{name} passed in {:.1?}", started.elapsed());
}

async fn start(
    server: Server,
    driver: &ChromeDriver,
    tools: &Tools,
    profile: &TempDir,
    chromium_args: &[&str],
) -> std::result::Result<Env, (String, Server)> {
    let setup = async {
        let upstream = server.addr.parse().ctx("server address")?;
        let proxy = Proxy::start(upstream).await?;
        let browser =
            Session::start_with(&driver.url, &tools.chromium, &profile.0, chromium_args).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .ctx("http client")?;
        Ok::<_, String>((proxy, browser, http))
    };
    match setup.await {
        Ok((proxy, browser, http)) => Ok(Env {
            server,
            proxy,
            browser,
            http,
        }),
        Err(err) => Err((err, server)),
    }
}

impl Env {
    /// `path` on the proxy: 127.0.0.1 throughout, so the session cookie always goes back to
    /// the same origin.
    pub(crate) fn page_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.proxy.addr.port())
    }

    /// Publishes `body` straight to the server (not through the proxy); its JSON answer.
    pub(crate) async fn publish(&self, body: Value) -> Result<Value> {
        let response = self
            .http
            .post(self.server.url("/publish"))
            .json(&body)
            .send()
            .await
            .ctx("POST /publish")?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        ensure!(status == 200, "POST /publish {body}: {status} {text}");
        serde_json::from_str(&text).ctx("POST /publish: answer")
    }

    /// Publishes `data` on `stream`.
    pub(crate) async fn publish_data(&self, stream: &str, data: &str) -> Result<()> {
        self.publish(json!({ "stream": stream, "data": data }))
            .await
            .map(drop)
    }

    /// Runs `script` in the page until its result satisfies `done`, for at most [`DEADLINE`].
    pub(crate) async fn wait(
        &self,
        what: &str,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.browser.execute(script).await?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {DEADLINE:?} waiting for {what}; the page: {value}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `done` holds of the proxy, for at most [`DEADLINE`].
    pub(crate) async fn wait_proxy(&self, what: &str, done: impl Fn(&Proxy) -> bool) -> Result<()> {
        until(what, || done(&self.proxy)).await
    }
}

/// Polls `done` every 20 ms for at most [`DEADLINE`].
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        ensure!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Runs `future` to completion, or fails after [`DEADLINE`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, future)
        .await
        .map_err(|_| format!("timed out after {DEADLINE:?}: {what}"))
}

/// The header `name` of a request head, if any.
pub(crate) fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then_some(value.trim())
    })
}

/// The request line of a request head.
pub(crate) fn request_line(head: &str) -> &str {
    head.lines().next().unwrap_or("")
}

/// Publishes `r1`, `r2`, … on a stream every `every` until stopped.
pub(crate) struct Publisher {
    published: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Publisher {
    pub(crate) fn start(env: &Env, stream: &str, every: Duration) -> Self {
        let published = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (published.clone(), stop.clone());
        let http = env.http.clone();
        let url = env.server.url("/publish");
        let stream = stream.to_owned();
        let task = tokio::spawn(async move {
            let mut n = 0;
            while !stopped.load(SeqCst) {
                n += 1;
                let body = json!({ "stream": stream, "data": format!("r{n}") });
                let ok = http
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                ensure!(ok, "publishing r{n} failed");
                count.store(n, SeqCst);
                tokio::time::sleep(every).await;
            }
            Ok(())
        });
        Publisher {
            published,
            stop,
            task,
        }
    }

    /// Stops publishing; how many events were published.
    pub(crate) async fn stop(self) -> Result<usize> {
        self.stop.store(true, SeqCst);
        within("the publisher to stop", self.task)
            .await?
            .map_err(|e| format!("publisher: {e}"))??;
        Ok(self.published.load(SeqCst))
    }
}
