//! The `eventbus` binary against a running admin server (a bus on the in-memory backend whose
//! `billing` group dead-letters orders while `broken` is set, and whose `audit` group records
//! deliveries with their replay flag).

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::admin::{AdminConfig, AdminServer};
use eventbus::backend::memory::MemoryBackend;
use eventbus::{event, Bus, CatalogEntry, Context, Envelope, HandlerError, Subscription};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const TOKEN: &str = "cli-test-token-0123456789";

#[event(name = "order.created", version = 1, topic = "orders", key = order_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCreated {
    order_id: String,
}

#[event(name = "order.cancelled", version = 1, topic = "orders")]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct OrderCancelled {
    order_id: String,
}

const CATALOG: &[CatalogEntry] = &[
    CatalogEntry::of::<OrderCreated>(),
    CatalogEntry::of::<OrderCancelled>(),
];

struct Service {
    rt: tokio::runtime::Runtime,
    bus: Arc<Bus>,
    backend: MemoryBackend,
    server: Option<AdminServer>,
    url: String,
    broken: Arc<AtomicBool>,
    audit: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Service {
    fn start() -> Service {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let backend = MemoryBackend::new();
        let broken = Arc::new(AtomicBool::new(true));
        let audit: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let bus = rt
            .block_on({
                let (backend, broken, audit) = (backend.clone(), broken.clone(), audit.clone());
                Bus::builder()
                    .backend(backend)
                    .source("cli-test")
                    .catalog(CATALOG)
                    .subscribe(
                        Subscription::new("order.*", move |_: Envelope<Value>| {
                            let broken = broken.load(Ordering::SeqCst);
                            async move {
                                if broken {
                                    Err(HandlerError::permanent("warehouse rejected the order"))
                                } else {
                                    Ok(())
                                }
                            }
                        })
                        .group("billing")
                        .with_name("billing"),
                    )
                    .subscribe(
                        Subscription::new("order.*", move |ctx: Context, _: Envelope<Value>| {
                            audit
                                .lock()
                                .expect("lock")
                                .push((ctx.event_id().to_string(), ctx.is_replay()));
                            async { Ok(()) }
                        })
                        .group("audit")
                        .with_name("audit"),
                    )
                    .start()
            })
            .expect("bus");
        let bus = Arc::new(bus);
        let config = AdminConfig::new("127.0.0.1:0".parse().expect("addr"))
            .token(Some(TOKEN))
            .version("1.2.3");
        let server = rt
            .block_on(eventbus::admin::serve(bus.clone(), config))
            .expect("admin server");
        let url = format!("http://{}", server.local_addr());
        Service {
            rt,
            bus,
            backend,
            server: Some(server),
            url,
            broken,
            audit,
        }
    }

    fn settle(&self) {
        let start = Instant::now();
        for _ in 0..2 {
            while self.backend.outstanding() > 0 {
                assert!(start.elapsed() < Duration::from_secs(10), "not settled");
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn dead_orders(&self, n: usize) {
        for i in 0..n {
            self.rt
                .block_on(self.bus.publish(OrderCreated {
                    order_id: format!("o-{i}"),
                }))
                .expect("publish");
        }
        self.settle();
    }

    fn dlq_total(&self) -> usize {
        self.rt
            .block_on(self.bus.dead_letters().list("orders"))
            .expect("list")
            .len()
    }

    fn dlq_ids(&self) -> Vec<String> {
        self.rt
            .block_on(self.bus.dead_letters().list("orders"))
            .expect("list")
            .into_iter()
            .map(|d| d.id)
            .collect()
    }

    /// Runs `eventbus --url <this service> args...` with stdin closed and no admin env.
    fn run(&self, args: &[&str]) -> Output {
        eventbus(&[&["--url", &self.url], args].concat())
    }

    fn run_with_token(&self, args: &[&str]) -> Output {
        self.run(&[&["--token", TOKEN], args].concat())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
        self.rt.block_on(self.bus.shutdown(Duration::from_secs(2)));
    }
}

fn eventbus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(args)
        .env_remove("EVENTBUS_ADMIN_URL")
        .env_remove("EVENTBUS_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run eventbus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

#[track_caller]
fn fails(output: Output, code: i32, message: &str) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    let err = stderr(&output);
    assert!(err.contains(message), "stderr lacks {message:?}: {err}");
    err
}

#[test]
fn dlq_list_and_show() {
    let s = Service::start();
    s.dead_orders(3);
    // Dead letters hold user data: with a token configured, reading them needs it.
    let err = fails(
        s.run(&["dlq", "list"]),
        1,
        "missing `Authorization: Bearer <token>` header",
    );
    assert!(
        err.contains("pass --token or set EVENTBUS_ADMIN_TOKEN"),
        "{err}"
    );
    let table = ok(s.run_with_token(&["dlq", "list"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TOPIC") && lines[0].contains("ERROR"),
        "{table}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("orders")).count(),
        3,
        "{table}"
    );
    assert!(
        table.contains("permanent: warehouse rejected the order"),
        "{table}"
    );
    assert!(
        table.contains("3 of 3 matching, from offset 0 (queue sizes: orders: 3)"),
        "{table}"
    );

    let page: Value = serde_json::from_str(&ok(s.run_with_token(&[
        "--json", "dlq", "list", "--topic", "orders", "--limit", "2", "--offset", "1",
    ])))
    .expect("json");
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let filtered: Value = serde_json::from_str(&ok(s.run_with_token(&[
        "--json",
        "dlq",
        "list",
        "--type",
        "order.cancelled",
    ])))
    .expect("json");
    assert_eq!(filtered["total"], 0);
    let filtered: Value = serde_json::from_str(&ok(s.run_with_token(&[
        "--json",
        "dlq",
        "list",
        "--error",
        "WAREHOUSE",
        "--group",
        "billing",
    ])))
    .expect("json");
    assert_eq!(filtered["total"], 3);

    let id = s.dlq_ids().remove(0);
    let shown = ok(s.run_with_token(&["dlq", "show", "orders", &id]));
    assert!(shown.contains("group:         billing"), "{shown}");
    assert!(
        shown.contains("failure:       permanent after 1 attempt(s): warehouse rejected the order"),
        "{shown}"
    );
    assert!(shown.contains("\"order_id\": \"o-0\""), "{shown}");
    let json: Value = serde_json::from_str(&ok(
        s.run_with_token(&["--json", "dlq", "show", "orders", &id])
    ))
    .expect("json");
    assert_eq!(json["envelope"]["type"], "order.created");

    fails(
        s.run_with_token(&["dlq", "show", "orders", "424242"]),
        1,
        "no dead letter `424242` on topic `orders.dlq` (field `id`)",
    );
    fails(
        s.run_with_token(&["dlq", "list", "--limit", "900"]),
        1,
        "(field `limit`)",
    );
    fails(
        s.run_with_token(&["dlq", "list", "--type", "order..x"]),
        1,
        "(field `type`)",
    );
}

#[test]
fn dlq_redrive_by_id_and_all() {
    let s = Service::start();
    s.dead_orders(5);
    s.broken.store(false, Ordering::SeqCst);
    let ids = s.dlq_ids();

    let err = fails(
        s.run(&["dlq", "redrive", "orders", &ids[0]]),
        1,
        "missing `Authorization: Bearer <token>` header",
    );
    assert!(
        err.contains("pass --token or set EVENTBUS_ADMIN_TOKEN"),
        "{err}"
    );
    assert_eq!(s.dlq_total(), 5);

    let out = ok(s.run_with_token(&["dlq", "redrive", "orders", &ids[0], &ids[1]]));
    assert!(
        out.contains("redriven 2 of 2 dead letter(s) of orders"),
        "{out}"
    );
    s.settle();
    assert_eq!(s.dlq_ids(), ids[2..].to_vec());

    // --all pages through the queue and redrives in batches.
    let out = ok(s.run_with_token(&[
        "--json", "dlq", "redrive", "orders", "--all", "--batch", "2",
    ]));
    let summary: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(summary["redriven"], 3);
    s.settle();
    assert_eq!(s.dlq_total(), 0);

    fails(
        s.run_with_token(&["dlq", "redrive", "orders"]),
        2,
        "give dead-letter ids, or --all",
    );
    fails(
        s.run_with_token(&["dlq", "redrive", "orders", "7", "--type", "x"]),
        2,
        "filters apply with --all",
    );
    fails(
        s.run_with_token(&["dlq", "redrive", "orders", "missing-id"]),
        1,
        "no dead letter `missing-id`",
    );
}

#[test]
fn dlq_purge_needs_confirmation() {
    let s = Service::start();
    s.dead_orders(4);
    fails(
        s.run_with_token(&["dlq", "purge", "orders", "--all"]),
        2,
        "confirm with --yes",
    );
    assert_eq!(s.dlq_total(), 4);
    let ids = s.dlq_ids();
    let out = ok(s.run_with_token(&["dlq", "purge", "orders", &ids[3], "--yes"]));
    assert!(out.contains("purged 1 of 1"), "{out}");
    let out = ok(s.run_with_token(&[
        "dlq",
        "purge",
        "orders",
        "--all",
        "--error",
        "warehouse",
        "-y",
    ]));
    assert!(out.contains("purged 3 of 3"), "{out}");
    assert_eq!(s.dlq_total(), 0);
}

#[test]
fn replay_follows_progress_until_done() {
    let s = Service::start();
    s.broken.store(false, Ordering::SeqCst);
    let publish_created = |id: &str| {
        s.rt.block_on(s.bus.publish(OrderCreated {
            order_id: id.into(),
        }))
        .expect("publish")
    };
    publish_created("old");
    std::thread::sleep(Duration::from_millis(30));
    let from = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(30));
    let a = publish_created("a");
    s.rt.block_on(s.bus.publish(OrderCancelled {
        order_id: "b".into(),
    }))
    .expect("publish");
    let c = publish_created("c");
    s.settle();
    let before = s.audit.lock().expect("lock").len();

    let out = ok(s.run_with_token(&[
        "replay",
        "--topic",
        "orders",
        "--from",
        &from.to_rfc3339(),
        "--to",
        "now",
        "--type",
        "order.created",
        "--group",
        "audit",
    ]));
    assert!(
        out.contains("replayed 2 of 2 matching event(s) (3 in the window) from orders"),
        "{out}"
    );
    s.settle();
    let audit = s.audit.lock().expect("lock").clone();
    let replayed: Vec<String> = audit[before..]
        .iter()
        .map(|(id, replay)| {
            assert!(replay);
            id.clone()
        })
        .collect();
    assert_eq!(replayed, [a.to_string(), c.to_string()]);

    // An age works as --from; --no-wait returns the id at once.
    let out = ok(s.run_with_token(&[
        "--json",
        "replay",
        "--topic",
        "orders",
        "--from",
        "1h",
        "--group",
        "audit",
        "--no-wait",
    ]));
    let started: Value = serde_json::from_str(&out).expect("json");
    assert!(started["id"].is_string(), "{out}");

    fails(
        s.run_with_token(&["replay", "--topic", "orders", "--from", "yesterday"]),
        2,
        "invalid `--from`",
    );
    fails(
        s.run_with_token(&["replay", "--topic", "orders", "--from", "now", "--to", "2h"]),
        1,
        "(field `from`)",
    );
    fails(
        s.run_with_token(&[
            "replay", "--topic", "orders", "--from", "1h", "--group", "nobody",
        ]),
        1,
        "(field `group`)",
    );
}

#[test]
fn catalog_export_as_json_and_asyncapi() {
    let s = Service::start();
    let catalog: Value = serde_json::from_str(&ok(s.run(&["catalog", "export"]))).expect("json");
    assert_eq!(catalog["topics"], serde_json::json!(["orders"]));
    assert_eq!(catalog["events"].as_array().map(Vec::len), Some(2));

    let file = std::env::temp_dir().join(format!("eventbus-asyncapi-{}.json", std::process::id()));
    let path = file.to_string_lossy().into_owned();
    let out = s.run(&[
        "catalog", "export", "--format", "asyncapi", "--output", &path,
    ]);
    assert!(stderr(&out).contains("wrote"), "{}", stderr(&out));
    ok(out);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("json");
    let _ = std::fs::remove_file(&file);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], "1.2.3");
    assert!(doc["channels"]["orders"]["messages"]["order.created"].is_object());

    let out = s.run(&["catalog", "export", "--format", "yaml"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects the format");
}

#[test]
fn topics_provision_reports_an_unsupported_backend() {
    let s = Service::start();
    fails(
        s.run_with_token(&[
            "topics",
            "provision",
            "--partitions",
            "6",
            "--retention",
            "7d",
            "--compression",
            "lz4",
        ]),
        1,
        "not supported by this backend: topic provisioning is not supported by the memory backend",
    );
    let plan = ok(s.run_with_token(&[
        "topics",
        "provision",
        "--partitions",
        "6",
        "--retention",
        "7d",
        "--dry-run",
    ]));
    assert!(
        plan.contains("orders  orders.dlq    order.created, order.cancelled"),
        "{plan}"
    );
    assert!(
        plan.contains("partitions 6, replication -, retention 604800000 ms, compression -"),
        "{plan}"
    );
    assert!(
        plan.contains("dry run; provisioning is not supported by the memory backend"),
        "{plan}"
    );
    fails(
        s.run_with_token(&[
            "topics",
            "provision",
            "--compression",
            "brotli",
            "--dry-run",
        ]),
        1,
        "(field `compression`)",
    );
    fails(
        s.run_with_token(&["topics", "provision", "--topic", "payments", "--dry-run"]),
        1,
        "(field `topics`)",
    );
}

#[test]
fn lag_and_status() {
    let s = Service::start();
    s.dead_orders(1);
    let lag = ok(s.run(&["lag"]));
    assert!(
        lag.lines().next().is_some_and(|l| l.starts_with("GROUP")),
        "{lag}"
    );
    assert!(lag.contains("audit") && lag.contains("billing"), "{lag}");
    assert!(lag.contains("total lag 0, pending 0"), "{lag}");
    let status = ok(s.run(&["status"]));
    assert!(status.starts_with("cli-test 1.2.3 (eventbus "), "{status}");
    assert!(status.contains("on memory: ready"), "{status}");
    assert!(status.contains("  backend: ok"), "{status}");
}

#[test]
fn url_and_token_come_from_the_environment() {
    let s = Service::start();
    s.dead_orders(1);
    let id = s.dlq_ids().remove(0);
    let out = Command::new(env!("CARGO_BIN_EXE_eventbus"))
        .args(["dlq", "purge", "orders", &id, "--yes"])
        .env("EVENTBUS_ADMIN_URL", &s.url)
        .env("EVENTBUS_ADMIN_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(ok(out).contains("purged 1 of 1"));
    let help = ok(eventbus(&["--help"]));
    assert!(!help.contains(TOKEN));
}

#[test]
fn connection_and_usage_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    fails(
        eventbus(&["--url", &format!("http://127.0.0.1:{port}"), "lag"]),
        1,
        "cannot reach the admin API",
    );
    fails(
        eventbus(&["--url", "localhost:9090", "lag"]),
        2,
        "invalid `--url`",
    );
    let out = eventbus(&["dlq"]);
    assert_eq!(out.status.code(), Some(2));
    let version = ok(eventbus(&["--version"]));
    assert!(version.starts_with("eventbus "), "{version}");
}
