//! Helpers shared by the real-server integration tests.
//!
//! A real-server suite asks for its server with [`require_server`]. Under `scripts/test` the
//! server is running and its URL is in the environment; the suite leaves a marker so the script
//! can prove it ran. Under a plain `cargo test` without servers the suite is skipped, unless
//! `EVENTBUS_REQUIRE_SERVERS` is set, in which case a missing server is a failure.

use std::path::PathBuf;
use std::time::Duration;

mod executor;
pub mod logs;
mod tansu;
mod wait;
pub use executor::{
    block_in_place, executor, run, serve_admin, sleep, spawn, timeout, unblock, Executor, Task,
};
pub use tansu::{BrokerFault, Tansu};
pub use wait::{scaled, time_factor, wait_for_progress, Progress};

/// The value of `var` (a server URL), or `None` when the suite must be skipped.
///
/// Panics when `EVENTBUS_REQUIRE_SERVERS` is set and `var` is missing.
pub fn require_server(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            mark_ran(suite);
            Some(url)
        }
        _ if std::env::var_os("EVENTBUS_REQUIRE_SERVERS").is_some() => {
            panic!("{var} is not set but EVENTBUS_REQUIRE_SERVERS is: the {suite} suite must run")
        }
        _ => {
            eprintln!("skipping the {suite} suite: {var} is not set (run scripts/test)");
            None
        }
    }
}

/// Leaves the marker `suite` (with the executor's [`Executor::marker_suffix`]) for
/// `scripts/test`, which fails when a suite it requires left none.
pub fn mark_ran(suite: &str) {
    if let Ok(dir) = std::env::var("EVENTBUS_TEST_MARKERS") {
        let marker = PathBuf::from(dir).join(format!("{suite}{}", executor().marker_suffix()));
        if let Err(error) = std::fs::write(&marker, b"ran") {
            panic!("cannot write marker {}: {error}", marker.display());
        }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` (scaled by [`time_factor`])
/// passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let timeout = scaled(timeout);
    let start = std::time::Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a value with `read` every 10 ms until `done` holds for it or `timeout` (scaled by
/// [`time_factor`]) passes. Returns the last value read: `Ok` when `done` held for it, `Err`
/// when the wait gave up, for the failure message.
pub async fn eventually_reads<T, F, Fut>(
    timeout: Duration,
    mut read: F,
    done: impl Fn(&T) -> bool,
) -> Result<T, T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let timeout = scaled(timeout);
    let start = std::time::Instant::now();
    loop {
        let value = read().await;
        if done(&value) {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            return Err(value);
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// A new, empty database named `{prefix}_{uuid}` on the PostgreSQL server of `admin_url`;
/// returns its URL (same server, user and parameters).
pub async fn fresh_postgres_database(admin_url: &str, prefix: &str) -> String {
    use eventbus::outbox::sqlx::{self, PgPool};
    let name = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let admin = PgPool::connect(admin_url).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    format!("{server}/{name}{query}")
}

/// The binary of example `name` beside the test binaries (`target/debug/examples/{name}`);
/// panics, saying how to build it, when it is missing.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("examples")
        .join(name);
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --workspace --examples`",
        binary.display()
    );
    binary
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("t-{name}-{}", uuid::Uuid::now_v7().simple())
}

/// Restarts the test Redis server (`EVENTBUS_REDIS_URL`) with its data directory
/// (`EVENTBUS_REDIS_DIR`, AOF on), waiting until it serves again.
pub fn restart_redis() {
    let url = std::env::var("EVENTBUS_REDIS_URL").expect("EVENTBUS_REDIS_URL");
    restart_redis_at(&url);
}

/// Stops the server at `url` (flushing its AOF) and starts it again with the same data
/// directory, the way `scripts/test` started it.
pub fn restart_redis_at(url: &str) {
    use std::time::{Duration, Instant};
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port in url");
    let dir = std::env::var("EVENTBUS_REDIS_DIR").expect("EVENTBUS_REDIS_DIR");
    let server = std::env::var("EVENTBUS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let client = redis::Client::open(url).expect("url");
    if let Ok(mut conn) = client.get_connection() {
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut conn);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "redis did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new(server)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
        ])
        .args([
            "--appendfsync",
            "everysec",
            "--dir",
            &dir,
            "--daemonize",
            "yes",
        ])
        .args([
            "--pidfile",
            &format!("{dir}/redis.pid"),
            "--logfile",
            &format!("{dir}/redis.log"),
        ])
        .status()
        .expect("start redis-server");
    assert!(status.success(), "redis-server did not start");
    loop {
        let ping = client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if ping.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "redis did not load its data");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The text of a caught panic (`panic!`, `assert!`, `expect`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `case`; when it panics, panics again with `diagnose()` (what the server was doing)
/// added to its message.
pub async fn with_diagnosis<F: std::future::Future<Output = ()>>(
    case: F,
    diagnose: impl FnOnce() -> String,
) {
    use futures::FutureExt;
    if let Err(panic) = std::panic::AssertUnwindSafe(case).catch_unwind().await {
        panic!("{}\n  server: {}", panic_message(&*panic), diagnose());
    }
}

/// Every message of `topic`, read page by page through the backend's admin tools.
pub async fn read_all(
    admin: &dyn eventbus::backend::BackendAdmin,
    topic: &str,
) -> Vec<eventbus::backend::StoredMessage> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = admin
            .read_page(topic, cursor, eventbus::backend::MAX_PAGE)
            .await
            .unwrap_or_else(|e| panic!("reading `{topic}` back: {e}"));
        all.extend(page.messages);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

/// Sends the library's logs to the test output when `RUST_LOG` is set (once per process; see
/// [`logs::install`]).
pub fn trace() {
    logs::install();
}

/// Stops the Redis Cluster master on `port` (flushing its AOF) and starts it again with its
/// data directory and cluster state (`EVENTBUS_REDIS_CLUSTER_DIR/{port}`, as `scripts/test`
/// started it), waiting until the cluster is whole again.
pub fn restart_redis_cluster_node(port: u16) {
    use std::time::{Duration, Instant};
    let dir = format!(
        "{}/{port}",
        std::env::var("EVENTBUS_REDIS_CLUSTER_DIR").expect("EVENTBUS_REDIS_CLUSTER_DIR")
    );
    let server = std::env::var("EVENTBUS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).expect("url");
    if let Ok(mut conn) = client.get_connection() {
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut conn);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "redis node {port} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new(server)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
        .args(["--cluster-config-file", &format!("{dir}/nodes.conf")])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ])
        .args(["--dir", &dir, "--daemonize", "yes"])
        .args(["--pidfile", &format!("{dir}/redis.pid")])
        .args(["--logfile", &format!("{dir}/redis.log")])
        .status()
        .expect("start redis-server");
    assert!(status.success(), "redis node {port} did not start");
    loop {
        let info = client
            .get_connection()
            .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c));
        if info.is_ok_and(|i| i.contains("cluster_state:ok")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not become whole after restarting {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The events of one key in the order their first run finished: a run that a crash cut short
/// may have recorded its event before being aborted, and its rerun then counts for nothing.
pub fn first_runs(runs: &[u32]) -> Vec<u32> {
    let mut first = Vec::new();
    for n in runs {
        if !first.contains(n) {
            first.push(*n);
        }
    }
    first
}
