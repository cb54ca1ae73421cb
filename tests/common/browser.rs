//! Headless Chromium driven over the DevTools protocol (the WebSocket Chromium opens with
//! `--remote-debugging-port`): navigate, evaluate JavaScript in the page, take screenshots. The
//! same protocol Puppeteer and Playwright speak, with nothing but a WebSocket client.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Ws, temp_dir, until};

/// Debian's Chromium (`./test.sh` installs it), or `SLUICE_CHROMIUM`.
pub fn chromium() -> PathBuf {
    std::env::var_os("SLUICE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// One headless browser with one page; killed on drop.
pub struct Browser {
    child: Child,
    ws: Ws,
    session: String,
    next_id: u64,
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a blank page of `width` x `height`.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = temp_dir("chromium");
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (./test.sh installs Debian's chromium)",
                    chromium().display()
                )
            });
        // Chromium says where its DevTools socket is on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let mut browser = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            profile,
        };
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        browser.call("Page.enable", json!({})).await;
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends one command (to the page, once attached) and waits for its result; events that
    /// arrive meanwhile are skipped.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(std::time::Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("chromium closed its DevTools socket")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                if let Some(e) = answer.get("error") {
                    panic!("{method} failed: {e}");
                }
                return answer["result"].clone();
            }
        }
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for("document.readyState === 'complete'").await;
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Waits (bounded) until `condition` is true in the page.
    pub async fn wait_for(&mut self, condition: &str) {
        let this = &mut *self;
        until(condition, 30, async || {
            let v = this.eval(&format!("Boolean({condition})")).await;
            if v == true { Ok(()) } else { Err(v) }
        })
        .await
    }

    /// The text of every element matching `selector`.
    pub async fn texts(&mut self, selector: &str) -> Vec<String> {
        let v = self
            .eval(&format!(
                "[...document.querySelectorAll({})].map(e => e.textContent)",
                json!(selector)
            ))
            .await;
        serde_json::from_value(v).unwrap()
    }

    /// Clicks the first element matching `selector`, as a mouse would (with `ctrl` held, if
    /// asked).
    pub async fn click(&mut self, selector: &str, ctrl: bool) {
        let sel = json!(selector);
        self.wait_for(&format!("document.querySelector({sel})"))
            .await;
        self.eval(&format!(
            "document.querySelector({sel}).dispatchEvent(new MouseEvent('click', {{bubbles: true, ctrlKey: {ctrl}}}))"
        ))
        .await;
    }

    /// Types `text` into the input matching `selector` (replacing what was there).
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let sel = json!(selector);
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.focus(); e.value = {}; e.dispatchEvent(new Event('input', {{bubbles: true}})); e.dispatchEvent(new Event('change', {{bubbles: true}})); }})()",
            json!(text)
        ))
        .await;
    }

    /// A PNG of what the page shows now, saved as `name` under `SLUICE_SCREENSHOTS` (the
    /// README's pictures: `SLUICE_SCREENSHOTS=docs/screenshots`) or a temporary directory.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = std::env::var_os("SLUICE_SCREENSHOTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| self.profile.join("screenshots"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
