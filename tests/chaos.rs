//! Runs the chaos harness's short version (CI): processes killed with SIGKILL and a Redis
//! restart while events flow; the harness exits non-zero when anything was lost, duplicated
//! or misplaced.

use std::process::Command;

use eventbus_integration::require_server;

#[test]
fn nothing_is_lost_or_applied_twice_while_processes_die_and_redis_restarts() {
    let Some(_) = require_server("DATABASE_URL", "chaos") else { return };
    let Some(_) = require_server("EVENTBUS_REDIS_URL", "chaos") else { return };
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["--events", "1500", "--kills", "10", "--redis-restarts", "1", "--timeout-secs", "400"])
        .output()
        .expect("run the chaos harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    let summary = stdout.lines().find(|l| l.starts_with("chaos:")).expect("a summary line");
    for field in ["lost=0 ", "duplicated=0 ", "orphans=0 ", "poison_applied=0 ", "poison_missing=0 ", "misplaced=0 ", "kills=10 "] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    assert!(output.status.success(), "{summary}");
}
