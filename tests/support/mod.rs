//! Helpers shared by the real-server integration tests.
//!
//! A real-server suite asks for its server with [`require_server`]. Under `scripts/test` the
//! server is running and its URL is in the environment; the suite leaves a marker so the script
//! can prove it ran. Under a plain `cargo test` without servers the suite is skipped, unless
//! `EVENTBUS_REQUIRE_SERVERS` is set, in which case a missing server is a failure.

use std::path::PathBuf;

/// The value of `var` (a server URL), or `None` when the suite must be skipped.
///
/// Panics when `EVENTBUS_REQUIRE_SERVERS` is set and `var` is missing.
pub fn require_server(var: &str, suite: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => {
            if let Ok(dir) = std::env::var("EVENTBUS_TEST_MARKERS") {
                let marker = PathBuf::from(dir).join(suite);
                if let Err(error) = std::fs::write(&marker, b"ran") {
                    panic!("cannot write marker {}: {error}", marker.display());
                }
            }
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

/// Polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A key prefix no other test uses.
pub fn unique_prefix(name: &str) -> String {
    format!("t-{name}-{}", uuid::Uuid::now_v7().simple())
}
