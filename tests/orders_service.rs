//! `examples/orders_service.rs` run as a user runs it: a separate process against PostgreSQL
//! and a Kafka broker (librdkafka's mock cluster, then tansu). Orders are posted over HTTP,
//! the service is stopped with SIGTERM while orders arrive, started again, and then every
//! order taken (HTTP 201) must have exactly one `order.confirmed` follow-on in the outbox and
//! exactly one confirmation recorded by its consumer; no order may be confirmed twice or lost.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventbus::backend::kafka::rdkafka::mocking::MockCluster;
use eventbus::outbox::sqlx::{self, PgPool};
use eventbus_integration::{fresh_postgres_database, require_server, scaled, Tansu};

/// A running service process and the addresses it printed.
struct Service {
    child: Child,
    api: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(database_url: &str, brokers: &str) -> Service {
        let mut child = Command::new(eventbus_integration::example_binary("orders_service"))
            .env("DATABASE_URL", database_url)
            .env("EVENTBUS_KAFKA_BROKERS", brokers)
            .env("ORDERS_HTTP_BIND", "127.0.0.1:0")
            .env("EVENTBUS_ADMIN_BIND", "127.0.0.1:0")
            .env("ORDERS_DRAIN_SECS", "30")
            // A restarted member is assigned the partitions within seconds, not after the
            // default 45 s session of the member that left.
            .env("EVENTBUS_KAFKA_OPTION_SESSION_TIMEOUT_MS", "6000")
            .env("EVENTBUS_KAFKA_OPTION_HEARTBEAT_INTERVAL_MS", "1000")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start orders_service");
        let stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (ready, addresses) = std::sync::mpsc::channel();
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("orders-service: api http://") {
                    let api = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = ready.send(api);
                }
                lines.lock().expect("lock").push(line);
            }
        });
        let api = addresses
            .recv_timeout(scaled(Duration::from_secs(60)))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the service printed no address; output: {:?}",
                    output.lock().expect("lock")
                )
            });
        Service { child, api, output }
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                let output = self.output.lock().expect("lock").clone();
                assert!(
                    exit.success(),
                    "the service exited with {exit} after SIGTERM; output: {output:?}"
                );
                assert!(
                    output.iter().any(|l| l.contains("stopped (drained: true")),
                    "no clean drain reported: {output:?}"
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the service did not stop within the drain after SIGTERM; output: {:?}",
                    self.output.lock().expect("lock")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts orders from two threads into `taken` until `limit` are taken, or until a request
/// fails once `stop` is set (the service is going away).
fn post_orders(api: &str, stop: &AtomicBool, limit: usize, taken: &Mutex<Vec<String>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let agent = &agent;
            scope.spawn(move || {
                let mut n = worker;
                while taken.lock().expect("lock").len() < limit {
                    match order(agent, api, n) {
                        Some(id) => taken.lock().expect("lock").push(id),
                        None if stop.load(Ordering::SeqCst) => return,
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                    n += 2;
                }
            });
        }
    });
}

/// Posts an order; its id when the service took it (201).
fn order(agent: &ureq::Agent, api: &str, n: usize) -> Option<String> {
    let mut response = agent
        .post(&format!("http://{api}/orders"))
        .send_json(serde_json::json!({ "customer": format!("c-{}", n % 7), "total_cents": n }))
        .ok()?;
    if response.status().as_u16() != 201 {
        return None;
    }
    let body: serde_json::Value = response.body_mut().read_json().ok()?;
    body["order_id"].as_str().map(str::to_owned)
}

async fn counts(pool: &PgPool) -> (i64, i64, i64) {
    let one = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .expect(sql)
    };
    (
        one("SELECT count(*) FROM orders").await,
        one("SELECT count(*) FROM confirmations").await,
        one("SELECT count(*) FROM outbox WHERE event_type = 'order.confirmed'").await,
    )
}

async fn run(database_url: &str, brokers: &str) {
    let pool = PgPool::connect(database_url).await.expect("connect");

    // First run: orders keep arriving while SIGTERM stops the service.
    let service = Service::start(database_url, brokers);
    let api = service.api.clone();
    let stop = AtomicBool::new(false);
    let first = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| post_orders(&api, &stop, usize::MAX, &first));
        let deadline = Instant::now() + scaled(Duration::from_secs(60));
        while first.lock().expect("lock").len() < 20 {
            assert!(Instant::now() < deadline, "the service took no orders");
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::SeqCst);
        service.terminate();
    });
    let first = first.into_inner().expect("lock");
    assert!(first.len() >= 20, "only {} orders taken", first.len());

    // Second run: the rest is relayed and handled, and more orders come.
    let service = Service::start(database_url, brokers);
    let second = Mutex::new(Vec::new());
    post_orders(&service.api, &AtomicBool::new(false), 20, &second);
    let second = second.into_inner().expect("lock");
    let first_taken = first.len();
    let taken = first.len() + second.len();
    let deadline = Instant::now() + scaled(Duration::from_secs(90));
    loop {
        let (orders, confirmations, follow_ons) = counts(&pool).await;
        if confirmations >= taken as i64 {
            assert_eq!(orders, taken as i64, "every order taken, none other");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{taken} orders taken: {orders} orders, {follow_ons} follow-ons, {confirmations} \
             confirmations after 90 s; service output: {:?}",
            service.output.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.terminate();
    let (orders, confirmations, follow_ons) = counts(&pool).await;
    eprintln!(
        "orders_service: {} orders taken before the SIGTERM, {} after the restart; {orders} \
         orders, {follow_ons} follow-ons, {confirmations} confirmations",
        first_taken,
        taken - first_taken
    );

    let duplicated: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FROM confirmations GROUP BY order_id HAVING count(*) <> 1",
    )
    .fetch_all(&pool)
    .await
    .expect("duplicates");
    assert!(
        duplicated.is_empty(),
        "confirmed more than once: {duplicated:?}"
    );
    let follow_ons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT o.id, (SELECT count(*) FROM outbox x WHERE x.event_type = 'order.confirmed' \
         AND x.partition_key = o.id) FROM orders o",
    )
    .fetch_all(&pool)
    .await
    .expect("follow-ons");
    let wrong: Vec<&(String, i64)> = follow_ons.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        wrong.is_empty(),
        "orders without exactly one follow-on: {wrong:?}"
    );
    let unconfirmed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE state <> 'confirmed'")
            .fetch_one(&pool)
            .await
            .expect("states");
    assert_eq!(unconfirmed, 0);
    let mut all: Vec<String> = first.into_iter().chain(second).collect();
    all.sort();
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&pool)
        .await
        .expect("ids");
    stored.sort();
    assert_eq!(stored, all, "the orders stored are exactly the ones taken");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_gets_one_follow_on_through_a_sigterm_on_the_mock_cluster() {
    let Some(admin_url) = require_server("DATABASE_URL", "orders_service_mock") else {
        return;
    };
    let database_url = fresh_postgres_database(&admin_url, "orders").await;
    let mock = MockCluster::new(1).expect("mock cluster");
    run(&database_url, &mock.bootstrap_servers()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_gets_one_follow_on_through_a_sigterm_on_tansu() {
    let Some(admin_url) = require_server("DATABASE_URL", "orders_service_tansu") else {
        return;
    };
    if require_server("EVENTBUS_TANSU_BIN", "orders_service_tansu").is_none() {
        return;
    }
    let database_url = fresh_postgres_database(&admin_url, "orders").await;
    let tansu = tokio::task::spawn_blocking(Tansu::private)
        .await
        .expect("start tansu");
    run(&database_url, &tansu.brokers()).await;
}
