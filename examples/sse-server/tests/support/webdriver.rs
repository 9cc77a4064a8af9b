//! The few W3C WebDriver commands the browser test needs, over plain HTTP (reqwest): the
//! driver is on localhost, so no TLS stack is needed.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Context, Result};

/// One browser session.
#[derive(Debug)]
pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    /// Starts headless `chromium` through the driver at `driver` (`http://host:port`).
    pub(crate) async fn start(driver: &str, chromium: &Path, user_data_dir: &Path) -> Result<Self> {
        Self::start_with(driver, chromium, user_data_dir, &[]).await
    }

    /// [`Session::start`] with more command-line arguments for Chromium.
    pub(crate) async fn start_with(
        driver: &str,
        chromium: &Path,
        user_data_dir: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .ctx("webdriver: http client")?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-proxy-server",
            &format!("--user-data-dir={}", user_data_dir.display()),
        ];
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": chromium.to_string_lossy(),
                        "args": args,
                        // As a browser's default settings (third-party cookies allowed outside
                        // private windows), not the automation profile's.
                        "prefs": { "profile.cookie_controls_mode": 0 },
                    },
                },
            },
        });
        let value = command(
            &http,
            reqwest::Method::POST,
            &format!("{driver}/session"),
            Some(capabilities),
        )
        .await
        .ctx("webdriver: new session")?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| format!("webdriver: new session: no sessionId in {value}"))?;
        Ok(Session {
            http,
            url: format!("{driver}/session/{id}"),
        })
    }

    /// Navigates to `url` and waits for the page to load.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// Goes back in the history, like the browser's back button.
    pub(crate) async fn back(&self) -> Result<()> {
        self.post("/back", json!({})).await.map(drop)
    }

    /// Reloads the page and waits for it to load.
    pub(crate) async fn refresh(&self) -> Result<()> {
        self.post("/refresh", json!({})).await.map(drop)
    }

    /// Runs `script` (a function body; `return` gives the result) in the page. A promise
    /// returned is awaited.
    pub(crate) async fn execute(&self, script: &str) -> Result<Value> {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// Ends the session; the driver closes the browser.
    pub(crate) async fn close(self) -> Result<()> {
        command(&self.http, reqwest::Method::DELETE, &self.url, None)
            .await
            .map(drop)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        command(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.url),
            Some(body),
        )
        .await
    }
}

/// One WebDriver command: its `value`, or the driver's error and message.
async fn command(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.ctx(&format!("{method} {url}"))?;
    let status = response.status();
    let mut reply: Value = response
        .json()
        .await
        .ctx(&format!("{method} {url}: reply"))?;
    let value = reply["value"].take();
    if status.is_success() {
        Ok(value)
    } else {
        Err(format!(
            "{method} {url}: {status}: {} {}",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or("")
        ))
    }
}
