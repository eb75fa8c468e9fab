//! Runs the chaos harness's short version (CI) on Redis and on Kafka (librdkafka's mock cluster,
//! hosted by the harness): processes killed with SIGKILL and a broker restart or outage while
//! events flow; the harness exits non-zero when anything was lost, duplicated or misplaced.

use std::process::Command;
use std::sync::Mutex;

use eventbus_integration::require_server;

/// The two runs share the machine's cores: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_chaos(args: &[&str]) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .expect("run the chaos harness");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}{stderr}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("chaos:"))
        .expect("a summary line");
    let kills = format!(
        "kills={} ",
        args[args.iter().position(|a| *a == "--kills").expect("--kills") + 1]
    );
    for field in [
        "lost=0 ",
        "duplicated=0 ",
        "inversions=0 ",
        "consumers=2 ",
        "orphans=0 ",
        "poison_applied=0 ",
        "poison_missing=0 ",
        "misplaced=0 ",
        "broker_restarts=1 ",
        &kills,
    ] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    assert!(output.status.success(), "{summary}");
}

#[test]
fn redis_nothing_is_lost_or_applied_twice_while_processes_die_and_the_server_restarts() {
    let Some(_) = require_server("DATABASE_URL", "chaos") else {
        return;
    };
    let Some(_) = require_server("EVENTBUS_REDIS_URL", "chaos") else {
        return;
    };
    run_chaos(&[
        "--backend",
        "redis",
        "--events",
        "1500",
        "--kills",
        "10",
        "--broker-restarts",
        "1",
        "--timeout-secs",
        "400",
    ]);
}

#[test]
fn kafka_nothing_is_lost_or_applied_twice_while_processes_die_and_the_broker_restarts() {
    let Some(_) = require_server("DATABASE_URL", "chaos_kafka") else {
        return;
    };
    run_chaos(&[
        "--backend",
        "kafka",
        "--events",
        "1500",
        "--kills",
        "8",
        "--broker-restarts",
        "1",
        "--timeout-secs",
        "400",
    ]);
}
