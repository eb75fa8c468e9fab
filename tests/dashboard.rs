//! The dashboard end to end in headless Chromium: loads the page against a running bus, checks
//! the numbers it shows, inspects a dead letter, clicks retry and sees it gone; and against
//! `examples/dashboard` (a live stream with failures) on memory and on Redis, checks the charts
//! move, the dead-letter panel lists the failures with their reasons, and a retry from the
//! page removes one and gets it handled.
//!
//! Drives Chromium through chromedriver's WebDriver HTTP API. Gated on `EVENTBUS_CHROMEDRIVER`
//! (the chromedriver binary; `scripts/lib/browser.sh` installs Debian's `chromium` and
//! `chromium-driver` and sets it). `EVENTBUS_CHROMIUM` overrides the browser binary, and
//! `EVENTBUS_DASHBOARD_SCREENSHOT` names a PNG file to save the final page to, and
//! `EVENTBUS_DASHBOARD_DOCS_SCREENSHOT=docs/dashboard.png` has the example's case save the
//! README's screenshot there once its charts span their window.

mod admin_support;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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

    /// Saves the page to `EVENTBUS_DASHBOARD_SCREENSHOT`, when set (for a failure's report).
    fn screenshot(&self) {
        if let Ok(path) = std::env::var("EVENTBUS_DASHBOARD_SCREENSHOT") {
            if let Some(png) = self.png() {
                let _ = std::fs::write(&path, png);
                eprintln!("dashboard screenshot: {path}");
            }
        }
    }

    /// The visible page as PNG bytes.
    fn png(&self) -> Option<Vec<u8>> {
        let (status, value) = self.call("GET", "/screenshot", None);
        (status == 200).then_some(())?;
        value.as_str().and_then(decode_base64)
    }

    /// Polls `script` (a `return` expression) until `done` accepts its value (40 s at most).
    fn wait_for(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_within(what, script, Duration::from_secs(40), done)
    }

    fn wait_for_within(
        &self,
        what: &str,
        script: &str,
        deadline: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let value = self.script(script);
            if done(&value) {
                return value;
            }
            if start.elapsed() > deadline {
                self.screenshot();
                panic!("{what}: the page shows {value}");
            }
            std::thread::sleep(Duration::from_millis(200));
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

/// `examples/dashboard` running, and what it printed.
struct Example {
    child: Child,
    page: String,
    token: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Example {
    /// Starts the example (`redis`: on that server, else on memory) with a short series
    /// window and gateway outages every `outages` (`0`: none), and waits for its address.
    fn start(redis: Option<&str>, window: &str, outages: &str) -> Example {
        let mut command = Command::new(eventbus_integration::example_binary("dashboard"));
        command
            .env("EVENTBUS_ADMIN_BIND", "127.0.0.1:0")
            .env("DASHBOARD_SERIES_INTERVAL", "1s")
            .env("DASHBOARD_SERIES_WINDOW", window)
            .env("DASHBOARD_OUTAGE_EVERY", outages)
            .env_remove("EVENTBUS_ADMIN_TOKEN")
            .env_remove("EVENTBUS_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = redis {
            command.env("EVENTBUS_REDIS_URL", url);
        }
        let mut child = command.spawn().expect("start examples/dashboard");
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let stdout = child.stdout.take().expect("stdout");
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("example: {line}");
                lines.lock().expect("lock").push(line);
            }
        });
        let mut example = Example {
            child,
            page: String::new(),
            token: String::new(),
            output,
        };
        let start = Instant::now();
        loop {
            let lines = example.output.lock().expect("lock").clone();
            for line in &lines {
                if let Some(url) = line.strip_prefix("dashboard: ") {
                    example.page = url.trim().to_owned();
                }
                if let Some(rest) = line.strip_prefix("admin token: ") {
                    example.token = rest.split_whitespace().next().unwrap_or("").to_owned();
                }
            }
            if !example.page.is_empty() && !example.token.is_empty() {
                return example;
            }
            if let Ok(Some(status)) = example.child.try_wait() {
                panic!("examples/dashboard exited with {status}: {lines:?}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "examples/dashboard printed no address: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn printed(&self, text: &str) -> bool {
        self.output
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(text))
    }
}

/// The number in `css`'s text (0 when it holds none).
fn number(browser: &Session<'_>, css: &str) -> u64 {
    browser
        .text(css)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The example's live stream in the page: charts that move between refreshes, the
/// dead-letter panel listing the declined cards with their reason, a retry from the page that
/// removes the letter and gets the order handled.
fn the_example_in_the_browser(redis: Option<&str>, docs_screenshot: Option<String>) {
    let Some(chromedriver) =
        eventbus_integration::require_server("EVENTBUS_CHROMEDRIVER", "dashboard")
    else {
        return;
    };
    // The README's picture shows the dead-letter rate rising in gateway outages; the checks
    // run before the first one.
    let (window, outages) = if docs_screenshot.is_some() {
        ("90s", "30s")
    } else {
        ("30s", "0")
    };
    let example = Example::start(redis, window, outages);
    let driver = Driver::start(&chromedriver);
    let browser = driver.session();
    browser.goto(&format!("{}?refresh=2000", example.page));
    browser.type_into("#token", &example.token);
    browser.click("#save-token");

    // The charts: points that move between two refreshes.
    let chart = "figure.chart[data-chart=\"published\"] svg";
    let line = format!("{chart} polyline[data-series=\"order.created\"]");
    let state = format!(
        "const svg = document.querySelector('{chart}'); \
         const line = document.querySelector('{line}'); \
         return svg && line ? [Number(svg.dataset.points), svg.dataset.last, line.getAttribute('points')] : null"
    );
    let first = browser.wait_for("a published line with points", &state, |v| {
        v[0].as_u64().is_some_and(|n| n >= 2)
    });
    let second = browser.wait_for("the published line after a refresh", &state, |v| {
        v.is_array() && v[1] != first[1]
    });
    assert_ne!(first[2], second[2], "the line moved: {first} then {second}");
    let rate: f64 = browser
        .script(&format!(
            "return document.querySelector('{line}').dataset.values.split(',').map(Number).pop()"
        ))
        .as_f64()
        .expect("latest rate");
    assert!(
        rate > 5.0 && rate < 60.0,
        "about 20 orders a second: {rate}"
    );
    browser.wait_for(
        "a dead-lettered line for order.created",
        "return document.querySelectorAll('figure.chart[data-chart=\"dead_lettered\"] polyline[data-series=\"order.created\"]').length",
        |v| v == &json!(1),
    );
    browser.wait_for(
        "lines per group in the lag chart",
        "return Array.from(document.querySelectorAll('figure.chart[data-chart=\"lag\"] polyline')).map(l => l.dataset.series).sort().join(',')",
        |v| v == &json!("billing,ledger,shipping"),
    );

    // The dead letters, with their reason; the panel agrees with the throughput table on the
    // topic.
    browser.wait_for(
        "dead letters listed",
        "return document.querySelectorAll('#dlq tbody tr[data-dlq-id]').length",
        |v| v.as_u64().is_some_and(|n| n >= 1),
    );
    let errors = browser.script(
        "return Array.from(document.querySelectorAll('#dlq tbody tr[data-dlq-id] td.error')).map(td => td.textContent)",
    );
    let errors: Vec<String> = serde_json::from_value(errors).expect("error texts");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("card declined for order o-")),
        "{errors:?}"
    );
    browser.wait_for(
        "the topic's dead-letter size",
        "return document.querySelector('#dlq-sizes span[data-topic=\"order.created\"]') !== null \
         && Number(document.querySelector('#throughput tr[data-topic=\"order.created\"] td.dead-lettered').textContent) > 0",
        |v| v == &json!(true),
    );

    // Retry the oldest: gone from the panel, and the order goes through.
    let row = browser.script(
        "const tr = document.querySelector('#dlq tbody tr[data-dlq-id]'); \
         return [tr.dataset.dlqId, tr.querySelector('td.error').textContent]",
    );
    let id = row[0].as_str().expect("id").to_owned();
    let order = row[1]
        .as_str()
        .and_then(|e| e.rsplit(' ').next())
        .expect("order id")
        .to_owned();
    let handled_css = "#throughput tr[data-topic=\"order.created\"] td.handled";
    let before = number(&browser, handled_css);
    let selector = format!("#dlq tr[data-dlq-id=\"{id}\"]");
    browser.click(&format!("{selector} button.retry"));
    browser.wait_gone(&selector);
    let paid = format!("billing: order {order} paid after a retry");
    let start = Instant::now();
    while !example.printed(&paid) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the example never printed `{paid}`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        browser
            .text("#message")
            .unwrap_or_default()
            .contains("redriven"),
        "{:?}",
        browser.text("#message")
    );
    browser.wait_for(
        "handled to grow after the retry",
        &format!("return Number(document.querySelector('{handled_css}').textContent)"),
        |v| v.as_u64().is_some_and(|n| n > before),
    );

    let png = browser.png().expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a PNG of the page ({} bytes)",
        png.len()
    );
    if let Some(path) = docs_screenshot {
        // For the README: the charts across their window, a dead-letter panel with rows.
        browser.wait_for_within(
            "charts spanning their window",
            &format!("return Number(document.querySelector('{chart}').dataset.points)"),
            Duration::from_secs(180),
            |v| v.as_u64().is_some_and(|n| n >= 85),
        );
        browser.script("window.scrollTo(0, 0); return null");
        let png = browser.png().expect("a screenshot");
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {path}: {e}"));
        eprintln!("README screenshot: {path}");
    }
}

#[test]
fn the_example_charts_a_live_stream_and_retries_from_the_page_on_memory() {
    let docs = std::env::var("EVENTBUS_DASHBOARD_DOCS_SCREENSHOT")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| {
            // Relative to the workspace, where scripts run.
            let path = std::path::Path::new(&p);
            if path.is_absolute() {
                p
            } else {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(path)
                    .display()
                    .to_string()
            }
        });
    the_example_in_the_browser(None, docs);
}

#[test]
fn the_example_charts_a_live_stream_and_retries_from_the_page_on_redis() {
    let Some(url) = eventbus_integration::require_server("EVENTBUS_REDIS_URL", "dashboard_redis")
    else {
        return;
    };
    the_example_in_the_browser(Some(&url), None);
}
