//! A tansu broker (Kafka protocol, sqlite storage) the tests can stop and start again: the one
//! `scripts/test` started, or a private one in its own directory.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tansu broker on 127.0.0.1, started the way `scripts/lib/kafka.sh` starts it: its sqlite
/// database is `tansu.db` in `dir`, its pid is in `dir/tansu.pid`.
pub struct Tansu {
    bin: String,
    dir: PathBuf,
    port: u16,
    /// A private broker is stopped and its directory removed on drop.
    private: bool,
}

impl Tansu {
    /// The broker `scripts/test` started (`EVENTBUS_KAFKA_BROKERS`, `EVENTBUS_TANSU_DIR`,
    /// `EVENTBUS_TANSU_BIN`); it outlives this value.
    pub fn shared() -> Tansu {
        let brokers = std::env::var("EVENTBUS_KAFKA_BROKERS").expect("EVENTBUS_KAFKA_BROKERS");
        let port = brokers.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in EVENTBUS_KAFKA_BROKERS");
        let dir = std::env::var("EVENTBUS_TANSU_DIR").expect("EVENTBUS_TANSU_DIR");
        Tansu { bin: bin(), dir: dir.into(), port, private: false }
    }

    /// Starts a broker of its own on a free port with an empty database.
    pub fn private() -> Tansu {
        let dir = std::env::temp_dir().join(format!("eventbus-tansu-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("tansu directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let tansu = Tansu { bin: bin(), dir, port, private: true };
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
        let pid = std::fs::read_to_string(self.dir.join("tansu.pid")).expect("tansu.pid");
        let status = Command::new("kill").arg(pid.trim()).status().expect("kill");
        assert!(status.success(), "kill tansu {pid}");
        self.wait_port(false);
    }

    fn launch(&self) {
        let log = OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).expect("log");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start tansu");
        std::fs::write(self.dir.join("tansu.pid"), child.id().to_string()).expect("write pid");
        // The broker is stopped through its pid file (by `stop`, or by scripts/test).
        std::mem::forget(child);
        self.wait_port(true);
    }

    fn wait_port(&self, open: bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() != open {
            assert!(Instant::now() < deadline, "port {} did not {}", self.port, if open { "open" } else { "close" });
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if self.private && std::env::var_os("KEEP_TANSU").is_none() {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join("tansu.pid")) {
                let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn bin() -> String {
    std::env::var("EVENTBUS_TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}
