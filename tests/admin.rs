//! The admin HTTP API against a running bus on the in-memory backend: every endpoint, the
//! bearer-token rules, and the JSON errors for bad input.

mod admin_support;

use std::time::{Duration, Instant};

use admin_support::{Fixture, OrderCancelled, OrderCreated, UserSignedUp, TOKEN};
use eventbus::backend::memory::Faults;
use serde_json::{json, Value};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

fn assert_error(response: (u16, Value), status: u16, field: Option<&str>) -> Value {
    let (code, body) = response;
    assert_eq!(code, status, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error message: {body}"
    );
    assert_eq!(body["field"].as_str(), field, "{body}");
    body
}

#[test]
fn live_version_and_not_found() {
    let f = Fixture::start();
    assert_eq!(f.get("/live"), (200, json!({ "status": "live" })));

    let (status, version) = f.get("/version");
    assert_eq!(status, 200);
    assert_eq!(version["version"], "9.9.9-test");
    assert_eq!(version["service"], "admin-test");
    assert_eq!(version["backend"], "memory");
    assert_eq!(version["eventbus"], env!("CARGO_PKG_VERSION"));
    assert!(version["uptime_seconds"].as_f64().is_some());

    let body = assert_error(f.get("/no/such/thing"), 404, None);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("/no/such/thing"),
        "{body}"
    );
    assert_error(
        f.request("PUT", "/dlq", Some(TOKEN), Some(json!({}))),
        405,
        None,
    );
}

#[test]
fn metrics_are_prometheus_text_with_fresh_gauges() {
    let f = Fixture::start();
    f.dead_orders(2);
    let content_type = f.header("/metrics", "content-type").expect("content type");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let (status, text) = f.raw("GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        text.contains("event_published_total{service=\"admin-test\",topic=\"orders\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("event_dlq_size{service=\"admin-test\",topic=\"orders\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("event_consumer_lag_messages{"),
        "lag gauge refreshed on scrape: {text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[test]
fn catalog_as_json_and_asyncapi() {
    let f = Fixture::start();
    let (status, catalog) = f.get("/catalog");
    assert_eq!(status, 200);
    assert_eq!(catalog["service"], "admin-test");
    assert_eq!(catalog["topics"], json!(["orders", "users"]));
    let events = catalog["events"].as_array().expect("events");
    assert_eq!(events.len(), 3);
    let user = events
        .iter()
        .find(|e| e["name"] == "user.signed_up")
        .expect("user event");
    assert_eq!(user["version"], 2);
    assert_eq!(user["topic"], "users");
    assert_eq!(user["schema"]["properties"]["email"]["type"], "string");
    assert_eq!(user["schema"]["required"], json!(["email"]));

    let (status, doc) = f.get("/catalog/asyncapi");
    assert_eq!(status, 200);
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["version"], "9.9.9-test");
    assert_eq!(doc["channels"]["orders"]["address"], "orders");
    assert!(doc["channels"]["orders"]["messages"]["order.cancelled"].is_object());
    assert_eq!(doc["operations"]["users.send"]["action"], "send");
    assert_eq!(f.get("/catalog?format=asyncapi"), (200, doc));

    assert_error(f.get("/catalog?format=xml"), 400, Some("format"));
    assert_error(f.get("/catalog?fromat=json"), 400, Some("fromat"));
}

#[test]
fn ready_reports_backend_checks_and_circuits() {
    let f = Fixture::start_with(|c| {
        c.token(Some(TOKEN))
            .readiness_check("database", || Box::pin(async { Ok(()) }))
    });
    f.publish(OrderCreated {
        order_id: "o-1".into(),
    });
    f.settle();
    let (status, ready) = f.get("/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["backend"]["status"], "ok");
    assert_eq!(ready["checks"]["backend"]["backend"], "memory");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert_eq!(
        ready["circuits"],
        json!([{ "channel": "orders", "state": "closed", "failures": 0 }])
    );
    assert_eq!(ready["subscriptions"], json!(["billing", "audit"]));

    // Five failed publishes open the orders circuit: degraded, still ready.
    f.backend.inject(Faults {
        fail_publishes: 5,
        ..Faults::default()
    });
    for i in 0..5 {
        let result = f.rt.block_on(f.bus.publish(OrderCreated {
            order_id: format!("x-{i}"),
        }));
        assert!(result.is_err());
    }
    let (status, ready) = f.get("/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["circuits"][0]["state"], "open");
    assert!(ready["circuits"][0]["until"].is_string());
}

#[test]
fn ready_is_503_when_a_check_fails_or_hangs() {
    let f = Fixture::start_with(|c| {
        c.readiness_check("database", || {
            Box::pin(async { Err("connection refused".to_owned()) })
        })
        .readiness_check("cache", || Box::pin(futures::future::pending()))
        .ready_timeout(Duration::from_millis(200))
    });
    let (status, ready) = f.get("/ready");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "not_ready");
    assert_eq!(ready["checks"]["backend"]["status"], "ok");
    assert_eq!(ready["checks"]["database"]["status"], "error");
    assert_eq!(ready["checks"]["database"]["error"], "connection refused");
    assert_eq!(ready["checks"]["cache"]["status"], "error");
    assert!(
        ready["checks"]["cache"]["error"]
            .as_str()
            .expect("error")
            .contains("200 ms"),
        "{ready}"
    );
}

#[test]
fn dlq_lists_filters_and_pages() {
    let f = Fixture::start();
    f.dead_orders(5);
    f.publish(OrderCancelled {
        order_id: "c-1".into(),
    });
    f.settle();

    let (status, page) = f.get("/dlq");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 6);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["limit"], 50);
    assert_eq!(
        page["topics"],
        json!([
            { "topic": "orders", "dlq_topic": "orders.dlq", "size": 6 },
            { "topic": "users", "dlq_topic": "users.dlq", "size": 0 },
        ])
    );
    let first = &page["items"][0];
    assert_eq!(first["original_topic"], "orders");
    assert_eq!(first["dlq_topic"], "orders.dlq");
    assert_eq!(first["group"], "billing");
    assert_eq!(first["event_type"], "order.created");
    assert_eq!(first["key"], "o-0");
    assert_eq!(first["failure"]["kind"], "permanent");
    assert_eq!(
        first["failure"]["message"],
        "card declined by the payment provider"
    );
    assert_eq!(first["failure"]["attempts"], 1);
    assert!(first["event_id"].is_string());

    let count = |query: &str| {
        let (status, page) = f.get(&format!("/dlq?{query}"));
        assert_eq!(status, 200, "{query}: {page}");
        page["total"].as_u64().expect("total")
    };
    assert_eq!(count("type=order.cancelled"), 1);
    assert_eq!(count("type=order.*"), 6);
    assert_eq!(count("type=user.%23"), 0);
    assert_eq!(
        count("error=DECLINED"),
        6,
        "error filter is a case-insensitive substring"
    );
    assert_eq!(count("error=timeout"), 0);
    assert_eq!(count("group=billing"), 6);
    assert_eq!(count("group=audit"), 0);
    assert_eq!(count("topic=users"), 0);
    assert_eq!(
        count("topic=orders.dlq&type=order.created"),
        5,
        "the .dlq suffix is accepted"
    );

    // Paging: stable order, oldest first.
    let all = ids(&f.get("/dlq?topic=orders&limit=500").1);
    let (_, page1) = f.get("/dlq?topic=orders&limit=4");
    let (_, page2) = f.get("/dlq?topic=orders&limit=4&offset=4");
    assert_eq!(page1["total"], 6);
    assert_eq!([ids(&page1), ids(&page2)].concat(), all);
    assert_eq!(ids(&f.get("/dlq?offset=100").1).len(), 0);
    let (_, one_topic) = f.get("/dlq/orders?limit=4&type=order.created");
    assert_eq!(one_topic["total"], 5);
    assert_eq!(ids(&one_topic).len(), 4);

    assert_error(f.get("/dlq?limit=501"), 400, Some("limit"));
    assert_error(f.get("/dlq?limit=ten"), 400, Some("limit"));
    assert_error(f.get("/dlq?offset=-1"), 400, Some("offset"));
    assert_error(f.get("/dlq?type=order..created"), 400, Some("type"));
    assert_error(f.get("/dlq?sort=desc"), 400, Some("sort"));
    assert_error(f.get("/dlq?limit=1&limit=2"), 400, Some("limit"));
    assert_error(f.get("/dlq/orders?topic=users"), 400, Some("topic"));
}

#[test]
fn dlq_inspect_shows_metadata_and_envelope() {
    let f = Fixture::start();
    let event_ids = f.dead_orders(1);
    let (_, page) = f.get("/dlq?topic=orders");
    let id = ids(&page).remove(0);
    let (status, letter) = f.get(&format!("/dlq/orders/{id}"));
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter["id"], id.as_str());
    assert_eq!(letter["event_id"], event_ids[0].to_string());
    assert_eq!(letter["group"], "billing");
    assert_eq!(letter["failure"]["kind"], "permanent");
    assert_eq!(letter["envelope"]["type"], "order.created");
    assert_eq!(letter["envelope"]["source"], "admin-test");
    assert_eq!(letter["envelope"]["data"], json!({ "order_id": "o-0" }));
    assert_eq!(letter["envelope"]["id"], event_ids[0].to_string());
    assert_eq!(letter["decode_error"], Value::Null);
    assert!(letter["payload_size"].as_u64().expect("size") > 0);

    assert_error(f.get("/dlq/orders/999999"), 404, Some("id"));
    assert_error(f.get("/dlq/users/0"), 404, Some("id"));
}

#[test]
fn dlq_redrive_one_many_and_all() {
    let f = Fixture::start();
    let events = f.dead_orders(6);
    let letters = ids(&f.get("/dlq?topic=orders").1);
    assert_eq!(letters.len(), 6);
    f.broken.store(false, std::sync::atomic::Ordering::SeqCst);

    // One.
    let (status, body) = f.request(
        "POST",
        &format!("/dlq/orders/{}/redrive", letters[0]),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "topic": "orders", "requested": 1, "redriven": 1 })
    );
    f.settle();
    assert_eq!(f.get("/dlq?topic=orders").1["total"], 5);
    let handled_again = f
        .billing
        .lock()
        .expect("lock")
        .iter()
        .filter(|(id, _, _)| *id == events[0].to_string())
        .count();
    assert_eq!(handled_again, 2, "billing got the redriven event once more");

    // Many, by id.
    let (status, body) = f.request(
        "POST",
        "/dlq/orders/redrive",
        Some(TOKEN),
        Some(json!({ "ids": [letters[1], letters[2]] })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], 2);
    f.settle();
    assert_eq!(ids(&f.get("/dlq?topic=orders").1), letters[3..].to_vec());

    // All matching a filter, then all.
    let (status, body) = f.request(
        "POST",
        "/dlq/orders/redrive",
        Some(TOKEN),
        Some(json!({ "all": true, "type": "order.cancelled" })),
    );
    assert_eq!((status, &body["redriven"]), (200, &json!(0)), "{body}");
    let (status, body) = f.request(
        "POST",
        "/dlq/orders/redrive",
        Some(TOKEN),
        Some(json!({ "all": true, "error": "declined" })),
    );
    assert_eq!((status, &body["redriven"]), (200, &json!(3)), "{body}");
    f.settle();
    assert_eq!(f.get("/dlq?topic=orders").1["total"], 0);

    // Unknown ids are 404 and redrive nothing.
    assert_error(
        f.request("POST", "/dlq/orders/12345/redrive", Some(TOKEN), None),
        404,
        Some("id"),
    );
    assert_error(
        f.request(
            "POST",
            "/dlq/orders/redrive",
            Some(TOKEN),
            Some(json!({ "ids": ["12345"] })),
        ),
        404,
        Some("ids"),
    );
}

#[test]
fn dlq_bulk_bodies_are_checked() {
    let f = Fixture::start();
    f.dead_orders(2);
    let post = |body: Option<Value>| f.request("POST", "/dlq/orders/redrive", Some(TOKEN), body);
    assert_error(post(None), 400, Some("ids"));
    assert_error(post(Some(json!({}))), 400, Some("ids"));
    assert_error(post(Some(json!({ "ids": [] }))), 400, Some("ids"));
    assert_error(post(Some(json!({ "ids": "0" }))), 400, Some("ids"));
    assert_error(
        post(Some(json!({ "ids": ["0"], "all": true }))),
        400,
        Some("all"),
    );
    assert_error(
        post(Some(json!({ "ids": ["0"], "error": "x" }))),
        400,
        Some("error"),
    );
    assert_error(post(Some(json!({ "all": "yes" }))), 400, Some("all"));
    assert_error(
        post(Some(json!({ "all": true, "type": "a..b" }))),
        400,
        Some("type"),
    );
    assert_error(post(Some(json!({ "every": true }))), 400, Some("every"));
    assert_error(post(Some(json!([1, 2]))), 400, Some("body"));
    let (status, text) = f.raw("POST", "/dlq/orders/redrive", Some(TOKEN), None);
    assert_eq!(status, 400, "{text}");
    // Not JSON at all.
    let response = ureq::post(&format!("{}/dlq/orders/redrive", f.base))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send("{not json")
        .expect("request");
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(f.get("/dlq").1["total"], 2, "nothing was redriven");
}

#[test]
fn dlq_purge_one_many_and_all() {
    let f = Fixture::start();
    f.dead_orders(5);
    let letters = ids(&f.get("/dlq?topic=orders").1);

    let (status, body) = f.request(
        "DELETE",
        &format!("/dlq/orders/{}", letters[0]),
        Some(TOKEN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["purged"], 1);
    assert_error(
        f.request(
            "DELETE",
            &format!("/dlq/orders/{}", letters[0]),
            Some(TOKEN),
            None,
        ),
        404,
        Some("id"),
    );

    let (status, body) = f.request(
        "DELETE",
        "/dlq/orders",
        Some(TOKEN),
        Some(json!({ "ids": [letters[1], letters[2]] })),
    );
    assert_eq!((status, &body["purged"]), (200, &json!(2)), "{body}");
    assert_eq!(ids(&f.get("/dlq?topic=orders").1), letters[3..].to_vec());

    assert_error(
        f.request("DELETE", "/dlq/orders", Some(TOKEN), None),
        400,
        Some("ids"),
    );
    let (status, body) = f.request(
        "DELETE",
        "/dlq/orders",
        Some(TOKEN),
        Some(json!({ "all": true })),
    );
    assert_eq!((status, &body["purged"]), (200, &json!(2)), "{body}");
    assert_eq!(f.get("/dlq").1["total"], 0);
    assert!(
        f.billing.lock().expect("lock").len() == 5,
        "purged letters were not redelivered"
    );
}

/// Every mutating endpoint with an empty body where one is needed.
fn mutating(f: &Fixture) -> Vec<(&'static str, String, Option<Value>)> {
    let id = ids(&f.get("/dlq?topic=orders").1).remove(0);
    let now = chrono::Utc::now().to_rfc3339();
    vec![
        ("POST", format!("/dlq/orders/{id}/redrive"), None),
        (
            "POST",
            "/dlq/orders/redrive".to_owned(),
            Some(json!({ "all": true })),
        ),
        ("DELETE", format!("/dlq/orders/{id}"), None),
        (
            "DELETE",
            "/dlq/orders".to_owned(),
            Some(json!({ "all": true })),
        ),
        (
            "POST",
            "/replay".to_owned(),
            Some(json!({ "topic": "orders", "from": now, "to": now })),
        ),
        (
            "POST",
            "/topics/provision".to_owned(),
            Some(json!({ "dry_run": true })),
        ),
    ]
}

#[test]
fn mutating_endpoints_need_the_token() {
    let f = Fixture::start();
    f.dead_orders(1);
    for (method, path, body) in mutating(&f) {
        let (status, text) = f.raw(method, &path, None, body.clone());
        assert_eq!(status, 401, "{method} {path} without a token: {text}");
        let error: Value = serde_json::from_str(&text).expect("json error");
        assert_eq!(error["field"], "authorization", "{text}");
        assert_error(
            f.request(method, &path, Some("wrong-token-0123456789"), body.clone()),
            401,
            Some("authorization"),
        );
        let response = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .post(&format!("{}{path}", f.base))
            .header("Authorization", "Basic dXNlcjpwYXNz")
            .send_empty()
            .expect("request");
        if method == "POST" {
            assert_eq!(response.status().as_u16(), 401);
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok());
            assert_eq!(challenge, Some("Bearer realm=\"eventbus-admin\""));
        }
    }
    assert_eq!(f.get("/dlq").1["total"], 1, "nothing changed");
    // Dead letters hold user data: with a token configured, reading them needs it too.
    for path in ["/dlq", "/dlq/orders", "/dlq/orders/0"] {
        assert_error(
            f.request("GET", path, None, None),
            401,
            Some("authorization"),
        );
    }
    // Other reads stay open by default.
    for path in ["/lag", "/metrics", "/catalog", "/api/stats", "/replay"] {
        assert_eq!(f.raw("GET", path, None, None).0, 200, "{path}");
    }
}

#[test]
fn without_a_token_mutating_endpoints_are_off() {
    let f = Fixture::start_with(|c| c);
    f.dead_orders(1);
    for (method, path, body) in mutating(&f) {
        assert_error(
            f.request(method, &path, None, body.clone()),
            403,
            Some("admin.token"),
        );
        assert_error(
            f.request(method, &path, Some(TOKEN), body),
            403,
            Some("admin.token"),
        );
    }
    assert_eq!(f.get("/dlq").1["total"], 1);
}

#[test]
fn protected_reads_need_the_token_but_probes_do_not() {
    let f = Fixture::start_with(|c| c.token(Some(TOKEN)).protect_reads(true));
    for path in [
        "/dlq",
        "/dlq/orders",
        "/dlq/orders/0",
        "/lag",
        "/metrics",
        "/catalog",
        "/catalog/asyncapi",
        "/api/stats",
        "/replay",
        "/replay/x",
    ] {
        assert_error(
            f.request("GET", path, None, None),
            401,
            Some("authorization"),
        );
    }
    assert_eq!(f.request("GET", "/dlq", Some(TOKEN), None).0, 200);
    for path in ["/live", "/ready", "/version", "/", "/dashboard"] {
        assert_eq!(f.raw("GET", path, None, None).0, 200, "{path}");
    }
}

#[test]
fn invalid_admin_config_is_rejected_naming_the_setting() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bus = std::sync::Arc::new(
        rt.block_on(
            eventbus::Bus::builder()
                .backend(eventbus::backend::memory::MemoryBackend::new())
                .start(),
        )
        .expect("bus"),
    );
    let config = eventbus::admin::AdminConfig::new("127.0.0.1:0".parse().expect("addr"))
        .token(Some("short"));
    let err = rt
        .block_on(eventbus::admin::serve(bus.clone(), config))
        .expect_err("short token");
    assert!(err.to_string().contains("admin.token"), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let config = eventbus::admin::AdminConfig::new(taken.local_addr().expect("addr"));
    let err = rt
        .block_on(eventbus::admin::serve(bus, config))
        .expect_err("address in use");
    assert!(err.to_string().contains("admin.bind"), "{err}");
    for (config, setting) in [
        (
            eventbus::admin::AdminConfig::default().series_interval(Duration::from_millis(10)),
            "admin.series_interval",
        ),
        (
            eventbus::admin::AdminConfig::default().series_window(Duration::from_secs(1)),
            "admin.series_window",
        ),
        (
            eventbus::admin::AdminConfig::default()
                .series_interval(Duration::from_millis(100))
                .series_window(Duration::from_secs(3600)),
            "admin.series_window",
        ),
    ] {
        let err = config.validate().expect_err(setting);
        assert!(err.to_string().contains(setting), "{err}");
    }
}

fn wait_replay(f: &Fixture, id: &str) -> Value {
    let start = Instant::now();
    loop {
        let (status, replay) = f.get(&format!("/replay/{id}"));
        assert_eq!(status, 200, "{replay}");
        if replay["status"]["done"] == true {
            return replay;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replay did not finish: {replay}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn replay_redelivers_exactly_the_window_filtered_by_type_to_one_group() {
    let f = Fixture::start();
    f.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let pause = || std::thread::sleep(Duration::from_millis(30));
    let _before = f.publish(OrderCreated {
        order_id: "before".into(),
    });
    pause();
    let from = chrono::Utc::now();
    pause();
    let inside_1 = f.publish(OrderCreated {
        order_id: "in-1".into(),
    });
    let _cancelled = f.publish(OrderCancelled {
        order_id: "in-2".into(),
    });
    f.publish(UserSignedUp {
        email: "a@example.com".into(),
        referrer: None,
    });
    let inside_3 = f.publish(OrderCreated {
        order_id: "in-3".into(),
    });
    pause();
    let to = chrono::Utc::now();
    pause();
    let _after = f.publish(OrderCreated {
        order_id: "after".into(),
    });
    f.settle();
    let audit_before = f.audit.lock().expect("lock").len();
    let billing_before = f.billing.lock().expect("lock").len();
    assert_eq!(audit_before, 5);

    let request = json!({
        "topic": "orders",
        "from": from.to_rfc3339(),
        "to": to.to_rfc3339(),
        "type": "order.cr*",
        "group": "audit",
    });
    // `order.cr*` is not a pattern (`*` is a whole segment): rejected naming `type`.
    assert_error(
        f.request("POST", "/replay", Some(TOKEN), Some(request.clone())),
        400,
        Some("type"),
    );
    let mut request = request;
    request["type"] = json!("order.created");
    let (status, started) = f.request("POST", "/replay", Some(TOKEN), Some(request.clone()));
    assert_eq!(status, 202, "{started}");
    let id = started["id"].as_str().expect("id").to_owned();
    assert_eq!(started["request"]["type"], "order.created");
    assert_eq!(started["request"]["group"], "audit");

    let done = wait_replay(&f, &id);
    assert_eq!(done["status"]["scanned"], 3, "{done}");
    assert_eq!(done["status"]["matched"], 2, "{done}");
    assert_eq!(done["status"]["replayed"], 2, "{done}");
    assert_eq!(done["status"]["error"], Value::Null);
    f.settle();

    let audit = f.audit.lock().expect("lock").clone();
    let replayed: Vec<&str> = audit[audit_before..]
        .iter()
        .map(|(id, _, replay)| {
            assert!(replay, "replayed deliveries carry the replay flag");
            id.as_str()
        })
        .collect();
    let expected = [inside_1.to_string(), inside_3.to_string()];
    assert_eq!(
        replayed, expected,
        "exactly the order.created events of the window, in order"
    );
    assert_eq!(
        f.billing.lock().expect("lock").len(),
        billing_before,
        "other groups see nothing"
    );

    let (status, list) = f.get("/replay");
    assert_eq!(status, 200);
    assert_eq!(list["replays"][0]["id"], id.as_str());

    // A replay names its group.
    request.as_object_mut().expect("object").remove("group");
    assert_error(
        f.request("POST", "/replay", Some(TOKEN), Some(request.clone())),
        400,
        Some("group"),
    );
    // Wildcards: every order event of the window, to the billing group.
    request["type"] = json!("order.*");
    request["group"] = json!("billing");
    let (status, started) = f.request("POST", "/replay", Some(TOKEN), Some(request));
    assert_eq!(status, 202, "{started}");
    let done = wait_replay(&f, started["id"].as_str().expect("id"));
    assert_eq!(done["status"]["matched"], 3, "{done}");
    f.settle();
    assert_eq!(f.billing.lock().expect("lock").len(), billing_before + 3);
}

#[test]
fn replay_requests_are_checked() {
    let f = Fixture::start();
    let now = chrono::Utc::now();
    let earlier = (now - chrono::Duration::minutes(5)).to_rfc3339();
    let now = now.to_rfc3339();
    let post = |body: Value| f.request("POST", "/replay", Some(TOKEN), Some(body));
    assert_error(
        post(json!({ "from": earlier, "to": now })),
        400,
        Some("topic"),
    );
    assert_error(
        post(json!({ "topic": "orders", "to": now })),
        400,
        Some("from"),
    );
    assert_error(
        post(json!({ "topic": "orders", "from": "yesterday", "to": now })),
        400,
        Some("from"),
    );
    assert_error(
        post(json!({ "topic": "orders", "from": earlier, "to": 5 })),
        400,
        Some("to"),
    );
    assert_error(
        post(json!({ "topic": "orders", "from": now, "to": earlier })),
        400,
        Some("from"),
    );
    assert_error(
        post(json!({ "topic": "", "from": earlier, "to": now })),
        400,
        Some("topic"),
    );
    assert_error(
        post(json!({ "topic": "orders.dlq", "from": earlier, "to": now })),
        400,
        Some("topic"),
    );
    assert_error(
        post(json!({ "topic": "orders", "from": earlier, "to": now, "type": "#.x" })),
        400,
        Some("type"),
    );
    let body = assert_error(
        post(json!({ "topic": "orders", "from": earlier, "to": now, "group": "biling" })),
        400,
        Some("group"),
    );
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("audit, billing"),
        "{body}"
    );
    assert_error(
        post(json!({ "topic": "orders", "from": earlier, "to": now, "groups": ["a"] })),
        400,
        Some("groups"),
    );
    // Only the catalog's topics: a request never makes the server read a made-up topic.
    assert_error(
        post(json!({ "topic": "made-up", "from": earlier, "to": now, "group": "audit" })),
        400,
        Some("topic"),
    );
    assert_error(f.get("/dlq/made-up"), 400, Some("topic"));
    assert_error(f.get("/dlq?topic=made-up"), 400, Some("topic"));
    assert_error(
        f.get("/replay/0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d5e"),
        404,
        Some("id"),
    );
}

#[test]
fn lag_lists_every_group() {
    let f = Fixture::start();
    f.dead_orders(2);
    let (status, lag) = f.get("/lag");
    assert_eq!(status, 200, "{lag}");
    assert_eq!(lag["backend"], "memory");
    let groups: Vec<&str> = lag["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["group"].as_str().expect("group"))
        .collect();
    assert_eq!(groups, ["audit", "billing"]);
    assert_eq!(lag["groups"][0]["stream"], "order.*");
    assert_eq!(lag["groups"][0]["lag"], 0);
    assert_eq!(lag["groups"][0]["pending"], 0);
    assert_eq!(lag["total_lag"], 0);
}

#[test]
fn stats_count_per_topic() {
    let f = Fixture::start();
    f.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    for i in 0..3 {
        f.publish(OrderCreated {
            order_id: format!("o-{i}"),
        });
    }
    f.publish(UserSignedUp {
        email: "b@example.com".into(),
        referrer: Some("ad".into()),
    });
    f.settle();
    let (status, stats) = f.get("/api/stats");
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["service"], "admin-test");
    let topics = stats["topics"].as_array().expect("topics");
    let orders = topics
        .iter()
        .find(|t| t["topic"] == "orders")
        .expect("orders");
    assert_eq!(orders["published"], 3);
    assert_eq!(orders["handled"], 6, "two groups handled three each");
    assert_eq!(orders["dead_lettered"], 0);
    let users = topics
        .iter()
        .find(|t| t["topic"] == "users")
        .expect("users");
    assert_eq!(users["published"], 1);
    assert_eq!(stats["bus"]["handled"], 6);
    assert!(topics
        .iter()
        .all(|t| !t["topic"].as_str().expect("topic").ends_with(".dlq")));
}

/// The time series: readings every interval, per-second rates of each topic's counters and
/// the lag of each group, over a window that forgets older readings.
#[test]
fn series_hold_rates_per_topic_and_lag_per_group() {
    let f = Fixture::start_with(|c| {
        c.series_interval(Duration::from_millis(200))
            .series_window(Duration::from_secs(2))
    });
    let series = |f: &Fixture| {
        let (status, body) = f.get("/api/series");
        assert_eq!(status, 200, "{body}");
        body
    };
    // Waits for the readings after the events to include them.
    let wait = |f: &Fixture, what: &str, ok: &dyn Fn(&Value) -> bool| -> Value {
        let start = Instant::now();
        loop {
            let body = series(f);
            if ok(&body) {
                return body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: never seen in {body}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Each rate times its interval, summed: how many events the points hold.
    let total = |body: &Value, topic: &str, field: &str| -> f64 {
        let mut start = body["since"].as_f64().unwrap_or(0.0);
        let mut sum = 0.0;
        let Some(rates) = body["topics"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["topic"] == topic))
            .and_then(|t| t[field].as_array())
        else {
            return 0.0;
        };
        for (rate, time) in rates.iter().zip(body["times"].as_array().expect("times")) {
            let time = time.as_f64().expect("time");
            sum += rate.as_f64().expect("rate") * (time - start) / 1000.0;
            start = time;
        }
        sum
    };
    // A first point exists before the events, so every event lands in some interval.
    wait(&f, "a first point", &|b| {
        b["times"].as_array().is_some_and(|t| !t.is_empty())
    });
    f.dead_orders(3);
    let body = wait(&f, "3 published and dead-lettered orders", &|b| {
        total(b, "orders", "published") > 2.9 && total(b, "orders", "dead_lettered") > 2.9
    });
    assert_eq!(body["interval_seconds"], 0.2, "{body}");
    assert_eq!(body["window_seconds"], 2.0, "{body}");
    let times = body["times"].as_array().expect("times");
    assert!(
        times.windows(2).all(|w| w[0].as_i64() < w[1].as_i64()),
        "{body}"
    );
    for topic in body["topics"].as_array().expect("topics") {
        for field in ["published", "handled", "failed", "dead_lettered"] {
            assert_eq!(
                topic[field].as_array().map(Vec::len),
                Some(times.len()),
                "one value per time: {topic}"
            );
        }
        assert!(
            !topic["topic"].as_str().expect("topic").ends_with(".dlq"),
            "{body}"
        );
    }
    for (field, events) in [("published", 3.0), ("dead_lettered", 3.0)] {
        let sum = total(&body, "orders", field);
        assert!(
            (sum - events).abs() < 0.05,
            "{field}: rates add up to {sum}, not {events}: {body}"
        );
    }
    let groups: Vec<&str> = body["lag"]
        .as_array()
        .expect("lag")
        .iter()
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert!(
        groups.contains(&"billing") && groups.contains(&"audit"),
        "{body}"
    );
    // After the window, the events are forgotten: every rate is back to zero.
    wait(&f, "the window forgetting the events", &|b| {
        total(b, "orders", "published") == 0.0
            && b["times"].as_array().is_some_and(|t| t.len() >= 5)
    });
}

#[test]
fn provision_shows_the_plan_and_needs_a_backend_hook() {
    let f = Fixture::start();
    let post = |body: Value| f.request("POST", "/topics/provision", Some(TOKEN), Some(body));
    let (status, plan) =
        post(json!({ "dry_run": true, "partitions": 6, "retention": "7d", "compression": "lz4" }));
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["backend"], "memory");
    assert_eq!(plan["supported"], false);
    assert_eq!(plan["settings"]["partitions"], 6);
    assert_eq!(plan["settings"]["retention"], 7 * 24 * 3600 * 1000u64);
    assert_eq!(
        plan["plan"][0],
        json!({ "topic": "orders", "dlq_topic": "orders.dlq", "events": ["order.created", "order.cancelled"] })
    );
    assert_eq!(plan["plan"][1]["topic"], "users");

    let body = assert_error(post(json!({ "partitions": 6 })), 501, None);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("not supported by the memory backend"),
        "{body}"
    );

    assert_error(post(json!({ "partitions": 0 })), 400, Some("partitions"));
    assert_error(
        post(json!({ "partitions": "six" })),
        400,
        Some("partitions"),
    );
    assert_error(post(json!({ "replication": 0 })), 400, Some("replication"));
    assert_error(
        post(json!({ "retention": "seven days" })),
        400,
        Some("retention"),
    );
    assert_error(
        post(json!({ "compression": "brotli" })),
        400,
        Some("compression"),
    );
    assert_error(post(json!({ "topics": ["payments"] })), 400, Some("topics"));
}

#[test]
fn provision_calls_the_configured_hook() {
    let f = Fixture::start_with(|c| {
        c.token(Some(TOKEN)).provisioner(
            |catalog: Vec<eventbus::CatalogEntry>, request: eventbus::admin::ProvisionRequest| -> futures::future::BoxFuture<'static, Result<Value, eventbus::Error>> {
                Box::pin(async move {
                    Ok(json!({ "created": request.topics, "events": catalog.len(), "partitions": request.partitions }))
                })
            },
        )
    });
    let (status, body) = f.request(
        "POST",
        "/topics/provision",
        Some(TOKEN),
        Some(json!({ "topics": ["users"], "partitions": 3 })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["supported"], true);
    assert_eq!(
        body["result"],
        json!({ "created": ["users"], "events": 3, "partitions": 3 })
    );
}

#[test]
fn dashboard_page_is_served_self_contained() {
    let f = Fixture::start();
    let (status, page) = f.raw("GET", "/", None, None);
    assert_eq!(status, 200);
    assert!(page.contains("<title>eventbus dashboard</title>"));
    // The SVG namespace names the charts' element type; it is never fetched.
    let fetchable = page.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !fetchable.contains("http://") && !fetchable.contains("https://"),
        "no external resources"
    );
    let csp = f
        .header("/dashboard", "content-security-policy")
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert_eq!(
        f.header("/dashboard", "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
}

#[test]
fn ready_pings_the_database() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = rt
        .block_on(
            eventbus::outbox::sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect("sqlite::memory:"),
        )
        .expect("sqlite pool");
    let closed = pool.clone();
    let f = Fixture::start_with(move |c| c.database(pool));
    let (status, ready) = f.get("/ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    rt.block_on(closed.close());
    let (status, ready) = f.get("/ready");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["checks"]["database"]["status"], "error");
    assert!(
        ready["checks"]["database"]["error"]
            .as_str()
            .expect("error")
            .contains("closed"),
        "{ready}"
    );
}

/// While reads are open, a request addressed to a foreign host name (DNS rebinding: another
/// site's name pointed at this server) is refused; IP addresses, `localhost` and configured
/// names are served.
#[test]
fn foreign_host_names_are_refused_while_reads_are_open() {
    let f = Fixture::start_with(|c| c.token(Some(TOKEN)).allow_host("events.internal"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = |host: &str| {
        agent
            .get(&format!("{}/lag", f.base))
            .header("Host", host)
            .call()
            .expect("request")
            .status()
            .as_u16()
    };
    assert_eq!(status("attacker.example"), 421);
    assert_eq!(status("attacker.example:9090"), 421);
    assert_eq!(status("localhost:9090"), 200);
    assert_eq!(status("events.internal"), 200);
    assert_eq!(status("127.0.0.1"), 200);
    // With reads protected, the token is the guard and any name is served.
    let protected = Fixture::start_with(|c| c.token(Some(TOKEN)).protect_reads(true));
    let response = agent
        .get(&format!("{}/lag", protected.base))
        .header("Host", "attacker.example")
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
}

#[test]
fn the_api_serves_under_a_prefix() {
    let f = Fixture::start_with(|c| c.token(Some(TOKEN)).prefix("/ops"));
    assert_eq!(f.get("/live"), (200, json!({ "status": "live" })));
    let (status, page) = f.raw("GET", "/dashboard", None, None);
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    let outside = format!("{}/live", f.base.trim_end_matches("/ops"));
    let response = ureq::get(&outside).call();
    assert!(
        matches!(response, Err(ureq::Error::StatusCode(404))),
        "nothing outside the prefix: {response:?}"
    );
}

#[test]
fn a_prefix_that_is_not_a_path_is_rejected() {
    for bad in ["ops", "/", "/ops/", "//ops", "/o ps"] {
        let config =
            eventbus::admin::AdminConfig::new("127.0.0.1:0".parse().expect("addr")).prefix(bad);
        let error = config.validate().expect_err(bad).to_string();
        assert!(error.contains("admin.prefix"), "{bad}: {error}");
    }
}

/// `run_until`: once told to stop, `/ready` answers 503 `draining` while the handler in
/// flight finishes and `/live` still answers; the handler's delivery is acknowledged, and the
/// admin server closes last.
#[test]
fn run_until_drains_with_ready_down_and_live_up() {
    use eventbus::{Bus, Envelope, Subscription};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let backend = eventbus::backend::memory::MemoryBackend::new();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let began = started.clone();
    let bus = rt
        .block_on(
            Bus::builder()
                .backend(backend.clone())
                .subscribe(
                    Subscription::new("order.created", move |_: Envelope<OrderCreated>| {
                        let (gate, began) = (gate.clone(), began.clone());
                        async move {
                            began.notify_one();
                            gate.acquire().await.map(|p| p.forget()).ok();
                            Ok(())
                        }
                    })
                    .group("slow"),
                )
                .start(),
        )
        .expect("bus");
    let bus = Arc::new(bus);
    let server = rt
        .block_on(eventbus::admin::serve(
            bus.clone(),
            eventbus::admin::AdminConfig::new("127.0.0.1:0".parse().expect("addr")),
        ))
        .expect("admin");
    let base = format!("http://{}", server.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let get = |path: &str| -> Result<(u16, Value), ureq::Error> {
        let mut response = agent.get(&format!("{base}{path}")).call()?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_json().unwrap_or(Value::Null);
        Ok((status, body))
    };
    assert_eq!(get("/ready").expect("ready").0, 200);
    rt.block_on(async {
        bus.publish(OrderCreated {
            order_id: "o-1".into(),
        })
        .await
        .expect("publish");
        started.notified().await;
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = rt.spawn({
        let bus = bus.clone();
        async move {
            eventbus::admin::run_until(
                &bus,
                Some(server),
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(20),
            )
            .await
        }
    });
    stop.send(()).expect("stop");
    let start = Instant::now();
    loop {
        let (status, body) = get("/ready").expect("ready during the drain");
        if status == 503 {
            assert_eq!(body["status"], "draining", "{body}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "ready stayed {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        get("/live").expect("live during the drain"),
        (200, json!({ "status": "live" }))
    );
    assert!(
        !running.is_finished(),
        "the handler in flight holds the drain"
    );
    release.add_permits(1);
    let report = rt.block_on(running).expect("run_until");
    assert!(report.drained, "{report:?}");
    assert_eq!(
        backend.outstanding(),
        0,
        "the delivery in flight was acknowledged"
    );
    assert!(get("/live").is_err(), "the admin server is closed");
}
