//! The dashboard end to end in headless Chromium: loads the page against a running bus, checks
//! the numbers it shows, inspects a dead letter, clicks retry and sees it gone.
//!
//! Drives Chromium through chromedriver's WebDriver HTTP API. Gated on `EVENTBUS_CHROMEDRIVER`
//! (the chromedriver binary; `scripts/lib/browser.sh` installs Debian's `chromium` and
//! `chromium-driver` and sets it). `EVENTBUS_CHROMIUM` overrides the browser binary, and
//! `EVENTBUS_DASHBOARD_SCREENSHOT` names a PNG file to save the final page to.

mod admin_support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use admin_support::{Fixture, OrderCreated, UserSignedUp, TOKEN};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, killed on drop.
struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    _profile: TempDir,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Driver {
    fn start(binary: &str) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver `{binary}`: {e}"));
        let profile = std::env::temp_dir().join(format!(
            "eventbus-chromium-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
            _profile: TempDir(profile),
        };
        let start = Instant::now();
        loop {
            if let Ok(mut response) = driver.agent.get(&format!("{}/status", driver.base)).call() {
                let status: Value = response.body_mut().read_json().unwrap_or_default();
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .send_json(body.unwrap_or_else(|| json!({}))),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let value: Value = response.body_mut().read_json().unwrap_or_default();
        (status, value["value"].clone())
    }

    fn session(&self) -> Session<'_> {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--window-size=1400,1000".to_owned(),
        ];
        args.push(format!("--user-data-dir={}", self._profile.0.display()));
        let mut options = json!({ "args": args });
        if let Some(binary) = std::env::var("EVENTBUS_CHROMIUM")
            .ok()
            .filter(|b| !b.is_empty())
            .or_else(|| {
                std::path::Path::new("/usr/bin/chromium")
                    .exists()
                    .then(|| "/usr/bin/chromium".to_owned())
            })
        {
            options["binary"] = json!(binary);
        }
        let (status, value) = self.call(
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": options } } })),
        );
        assert_eq!(status, 200, "new session: {value}");
        let id = value["sessionId"].as_str().expect("session id").to_owned();
        Session { driver: self, id }
    }
}

/// A browser session, closed on drop.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.driver
            .call(method, &format!("/session/{}{}", self.id, path), body)
    }

    fn goto(&self, url: &str) {
        let (status, value) = self.call("POST", "/url", Some(json!({ "url": url })));
        assert_eq!(status, 200, "navigate: {value}");
    }

    /// The element matching `css`, if there is one now.
    fn find(&self, css: &str) -> Option<String> {
        let (status, value) = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        (status == 200).then(|| value[ELEMENT].as_str().expect("element id").to_owned())
    }

    fn text(&self, css: &str) -> Option<String> {
        let element = self.find(css)?;
        let (status, value) = self.call("GET", &format!("/element/{element}/text"), None);
        (status == 200).then(|| value.as_str().unwrap_or_default().to_owned())
    }

    /// Clicks `css`, finding it again if a refresh replaced it in between.
    fn click(&self, css: &str) {
        for _ in 0..5 {
            let element = self
                .find(css)
                .unwrap_or_else(|| panic!("no element `{css}`"));
            let (status, value) = self.call(
                "POST",
                &format!("/element/{element}/click"),
                Some(json!({})),
            );
            if status == 200 {
                return;
            }
            assert_eq!(
                value["error"], "stale element reference",
                "click `{css}`: {value}"
            );
        }
        panic!("`{css}` went stale five times in a row");
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("no element `{css}`"));
        let (status, value) = self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        );
        assert_eq!(status, 200, "type into `{css}`: {value}");
    }

    fn script(&self, script: &str) -> Value {
        let (status, value) = self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        );
        assert_eq!(status, 200, "script: {value}");
        value
    }

    /// Waits until `css`'s text is `expected`.
    fn wait_text(&self, css: &str, expected: &str) {
        let start = Instant::now();
        loop {
            let text = self.text(css);
            if text.as_deref() == Some(expected) {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.screenshot();
                panic!("`{css}` shows {text:?}, expected {expected:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_gone(&self, css: &str) {
        let start = Instant::now();
        while self.find(css).is_some() {
            if start.elapsed() > Duration::from_secs(20) {
                self.screenshot();
                panic!("`{css}` is still there");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self) {
        let Ok(path) = std::env::var("EVENTBUS_DASHBOARD_SCREENSHOT") else {
            return;
        };
        let (status, value) = self.call("GET", "/screenshot", None);
        if status != 200 {
            return;
        }
        if let Some(png) = value.as_str().and_then(decode_base64) {
            let _ = std::fs::write(&path, png);
            eprintln!("dashboard screenshot: {path}");
        }
    }
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'=')
    {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[test]
fn dashboard_shows_the_bus_and_retries_a_dead_letter() {
    let Some(chromedriver) =
        eventbus_integration::require_server("EVENTBUS_CHROMEDRIVER", "dashboard")
    else {
        return;
    };
    // Mounted under a prefix, as behind a path-routing proxy: the page finds its API there.
    let f = Fixture::start_with(|c| c.token(Some(TOKEN)).prefix("/ops"));
    f.dead_orders(3);
    f.publish(UserSignedUp {
        email: "c@example.com".into(),
        referrer: None,
    });
    f.settle();

    let driver = Driver::start(&chromedriver);
    let browser = driver.session();
    browser.goto(&format!("{}/dashboard", f.base));
    browser.click("#interval option[value=\"2000\"]");

    // Dead letters hold user data: without the token the page shows everything else and asks
    // for it.
    browser.wait_text("#status", "ready");
    let start = Instant::now();
    while !browser
        .text("#message")
        .unwrap_or_default()
        .contains("token")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no token message"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(browser.text("#dlq-total").as_deref(), Some("–"));
    browser.type_into("#token", TOKEN);
    browser.click("#save-token");

    // The numbers.
    browser.wait_text("#dlq-total", "3");
    browser.wait_text("#identity", "admin-test · memory");
    browser.wait_text("#throughput tr[data-topic=\"orders\"] td.published", "3");
    browser.wait_text("#throughput tr[data-topic=\"orders\"] td.handled", "3");
    browser.wait_text(
        "#throughput tr[data-topic=\"orders\"] td.dead-lettered",
        "3",
    );
    browser.wait_text("#throughput tr[data-topic=\"users\"] td.published", "1");
    browser.wait_text("#lag tr[data-group=\"billing\"] td.lag", "0");
    browser.wait_text("#lag tr[data-group=\"audit\"] td.stream", "order.*");
    browser.wait_text("#circuits tr[data-channel=\"orders\"] td.state", "closed");
    browser.wait_text("#dlq-sizes span[data-topic=\"orders\"]", "orders: 3");
    let rows =
        browser.script("return document.querySelectorAll('#dlq tbody tr[data-dlq-id]').length");
    assert_eq!(rows, json!(3));

    // Throughput rates come from successive refreshes.
    for i in 0..4 {
        f.publish(OrderCreated {
            order_id: format!("more-{i}"),
        });
    }
    browser.wait_text("#throughput tr[data-topic=\"orders\"] td.published", "7");
    let rate = browser.script(
        "return document.querySelector('#throughput tr[data-topic=\"orders\"] td.published-rate').textContent",
    );
    let rate: f64 = rate
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("rate {rate}"));
    assert!(rate >= 0.0, "{rate}");
    f.settle();
    browser.wait_text("#dlq-total", "7");

    // Inspect the oldest dead letter.
    let (_, page) = f.get("/dlq?topic=orders");
    let id = page["items"][0]["id"].as_str().expect("id").to_owned();
    let row = format!("#dlq tr[data-dlq-id=\"{id}\"]");
    browser.click(&format!("{row} button.inspect"));
    let start = Instant::now();
    loop {
        let shown = browser.text("#inspect-body").unwrap_or_default();
        if shown.contains("\"order_id\": \"o-0\"") && shown.contains("card declined") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "inspect shows {shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // After fixing the handler: retry and see it gone.
    f.broken.store(false, Ordering::SeqCst);
    let before = f.billing.lock().expect("lock").len();
    browser.click(&format!("{row} button.retry"));
    browser.wait_gone(&row);
    browser.wait_text("#dlq-total", "6");
    f.settle();
    assert_eq!(f.get("/dlq").1["total"], 6);
    assert_eq!(
        f.billing.lock().expect("lock").len(),
        before + 1,
        "billing handled the retried event"
    );
    assert!(browser
        .text("#message")
        .unwrap_or_default()
        .contains("redriven"));
    browser.wait_text("#dlq-sizes span[data-topic=\"orders\"]", "orders: 6");
    browser.screenshot();
}
