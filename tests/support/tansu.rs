//! tansu brokers (Kafka protocol) for the tests: one of a test's own in a fresh directory, or
//! the one `scripts/test` started; stopped, started again, and examined when a case fails.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The index tansu 0.6's sqlite schema lacks. Its fetch runs one query per record for that
/// record's headers, `header` has no key or index, so each such query scans every header of
/// the database and a fetch costs the square of what the broker holds: the 10 000-event case
/// kept the broker at 100 % of a core for 50-110 s (`perf`: 96 % of its samples in
/// `Storage::fetch`, `sqlite3BtreeNext`), its group heartbeats queued behind fetches of 7-21 s,
/// the session timed out and the case failed 5 runs in 9; with this index it passes in 5-7 s.
/// `scripts/lib/kafka.sh` adds the same index to the brokers it starts.
const HEADER_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS eventbus_header_by_record ON header (topition, offset_id)";

/// A tansu broker on 127.0.0.1, started the way `scripts/lib/kafka.sh` starts it: its storage
/// is `tansu.db` (sqlite) in `dir` unless `EVENTBUS_TANSU_STORAGE` names another engine URL,
/// its pid is in `dir/tansu.pid` and its output in `dir/tansu.log`.
pub struct Tansu {
    bin: String,
    dir: PathBuf,
    port: u16,
    storage: String,
    /// A private broker is stopped and its directory removed on drop.
    private: bool,
}

/// A fault of the broker itself, found by [`Tansu::fault`]: a failing test names it instead of
/// blaming the code under test.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerFault {
    /// The broker's log holds a Rust panic (its first line).
    Panicked(String),
    /// The broker process is gone.
    Exited,
    /// The broker used most of a core while the test waited on it.
    Saturated {
        /// CPU use over a one-second sample, in percent of one core.
        cpu_percent: f64,
    },
}

impl std::fmt::Display for BrokerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerFault::Panicked(line) => write!(f, "tansu panicked: {line}"),
            BrokerFault::Exited => write!(f, "the tansu process exited"),
            BrokerFault::Saturated { cpu_percent } => {
                write!(f, "tansu at {cpu_percent:.0} % CPU (saturated broker)")
            }
        }
    }
}

impl Tansu {
    /// The broker `scripts/test` started (`EVENTBUS_KAFKA_BROKERS`, `EVENTBUS_TANSU_DIR`,
    /// `EVENTBUS_TANSU_BIN`); it outlives this value.
    pub fn shared() -> Tansu {
        let brokers = std::env::var("EVENTBUS_KAFKA_BROKERS").expect("EVENTBUS_KAFKA_BROKERS");
        let port = brokers
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in EVENTBUS_KAFKA_BROKERS");
        let dir = std::env::var("EVENTBUS_TANSU_DIR").expect("EVENTBUS_TANSU_DIR");
        Tansu {
            bin: bin(),
            dir: dir.into(),
            port,
            storage: storage(),
            private: false,
        }
    }

    /// Starts a broker of its own on a free port with an empty sqlite database in a fresh
    /// directory; it is killed and its directory removed on drop (`KEEP_TANSU=1` keeps both).
    pub fn private() -> Tansu {
        let dir =
            std::env::temp_dir().join(format!("eventbus-tansu-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("tansu directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let tansu = Tansu {
            bin: bin(),
            dir,
            port,
            storage: "sqlite://tansu.db".into(),
            private: true,
        };
        tansu.launch();
        tansu
    }

    /// `host:port`, as `bootstrap.servers` wants it.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the broker (SIGTERM) and starts it again on the same port and database, waiting
    /// until it accepts connections.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// Stops the broker (SIGTERM) and waits until its port is closed.
    pub fn stop(&self) {
        let pid = self.pid().expect("tansu.pid");
        let status = Command::new("kill")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill tansu {pid}");
        self.wait_port(false);
    }

    /// The broker's own fault, if it shows one now: a panic in its log, its process gone, or
    /// more than 80 % of a core used over a one-second sample.
    pub fn fault(&self) -> Option<BrokerFault> {
        if let Some(line) = self
            .log_lines()
            .into_iter()
            .find(|l| l.contains("panicked at"))
        {
            return Some(BrokerFault::Panicked(line));
        }
        let Some(pid) = self.pid() else {
            return Some(BrokerFault::Exited);
        };
        match cpu_percent(pid) {
            None => Some(BrokerFault::Exited),
            Some(cpu_percent) if cpu_percent > 80.0 => Some(BrokerFault::Saturated { cpu_percent }),
            Some(_) => None,
        }
    }

    /// What the broker is doing, for a failure message: its fault if any, CPU over a
    /// one-second sample, resident memory, database size and the last lines of its log.
    pub fn diagnose(&self) -> String {
        let pid = self.pid();
        let cpu = pid.and_then(cpu_percent);
        let rss = pid
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
            })
            .unwrap_or_else(|| "?".into());
        let db: u64 = ["tansu.db", "tansu.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let fault = match self.fault() {
            Some(fault) => format!("BROKER FAULT: {fault}; "),
            None => String::new(),
        };
        let lines = self.log_lines();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
        format!(
            "{fault}tansu on {} (pid {}, storage {}): cpu {} over 1 s, rss {rss} kB, database {} kB; last log lines:\n    {tail}",
            self.brokers(),
            pid.map_or_else(|| "?".into(), |p| p.to_string()),
            self.storage,
            cpu.map_or_else(|| "? (not running)".into(), |c| format!("{c:.0} %")),
            db / 1024,
        )
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("tansu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn log_lines(&self) -> Vec<String> {
        let log = std::fs::read(self.dir.join("tansu.log")).unwrap_or_default();
        String::from_utf8_lossy(&log)
            .lines()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn launch(&self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", &self.storage])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        std::fs::write(self.dir.join("tansu.pid"), child.id().to_string()).expect("write pid");
        // The broker is stopped through its pid file (by `stop`, `Drop` or scripts/test).
        std::mem::forget(child);
        self.wait_port(true);
        self.index_headers();
    }

    /// Gives tansu's sqlite `header` table the index its schema lacks (see
    /// `HEADER_INDEX`); a no-op for other storage engines and with
    /// `EVENTBUS_TANSU_AS_SHIPPED=1`. The broker creates its tables as it starts, so this is
    /// retried until they exist; it panics with sqlite's answer if they never do.
    fn index_headers(&self) {
        let Some(db) = self.storage.strip_prefix("sqlite://") else {
            return;
        };
        if std::env::var_os("EVENTBUS_TANSU_AS_SHIPPED").is_some_and(|v| !v.is_empty() && v != "0")
        {
            return;
        }
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(30));
        loop {
            let out = Command::new("sqlite3")
                .current_dir(&self.dir)
                .args(["-cmd", ".timeout 5000", db, HEADER_INDEX])
                .output()
                .expect("run sqlite3 (the Debian package `sqlite3`; scripts/test installs it)");
            if out.status.success() {
                return;
            }
            let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            assert!(
                Instant::now() < deadline,
                "indexing tansu's header table in {}: {said}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_port(&self, open: bool) {
        let deadline = Instant::now() + crate::scaled(Duration::from_secs(30));
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() != open {
            assert!(
                Instant::now() < deadline,
                "port {} did not {}: {}",
                self.port,
                if open { "open" } else { "close" },
                self.diagnose()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if self.private && std::env::var_os("KEEP_TANSU").is_none() {
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn bin() -> String {
    std::env::var("EVENTBUS_TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}

/// The storage engine URL of the shared broker: `EVENTBUS_TANSU_STORAGE`, default the sqlite
/// database `tansu.db` in its directory.
fn storage() -> String {
    std::env::var("EVENTBUS_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".into())
}

/// CPU time of `pid` (user + system) over a one-second sample, in percent of one core; `None`
/// when the process is gone.
fn cpu_percent(pid: u32) -> Option<f64> {
    fn ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start at the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // A killed broker stays a zombie (state `Z`) until the test process exits.
        if fields.first() == Some(&"Z") {
            return None;
        }
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }
    let before = ticks(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let after = ticks(pid)?;
    // Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every architecture.
    Some((after - before) as f64 / started.elapsed().as_secs_f64())
}
