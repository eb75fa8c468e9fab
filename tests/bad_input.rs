//! Bad input against a real Redis: every malformed or hostile delivery ends in the dead-letter
//! queue with a clear reason, the consumer keeps running, and the good events around them are
//! all handled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventbus::backend::redis::{RedisBackend, RedisConfig, StartFrom};
use eventbus::backend::{Backend, Message};
use eventbus::{event, Bus, Context, Envelope, ErrorKind, HandlerError, Subscription};
use eventbus_integration::{eventually, eventually_reads, require_server, unique_prefix};
use serde::{Deserialize, Serialize};

#[event(name = "payment.captured", version = 2, key = payment_id)]
#[derive(Serialize, Deserialize, Debug, Clone)]
struct PaymentCaptured {
    payment_id: String,
    cents: i64,
}

fn raw(payload: &[u8], headers: &[(&str, &str)]) -> Message {
    Message {
        topic: "payment.captured".into(),
        key: None,
        event_type: "payment.captured".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        payload: payload.to_vec().into(),
    }
}

fn envelope_json(id: &str, version: u32, data: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"payment.captured","source":"evil","time":"2026-11-23T10:00:00Z","version":{version},"data":{data}{extra}}}"#
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_delivery_is_dead_lettered_with_its_reason_and_nothing_else_is_lost() {
    let Some(url) = require_server("EVENTBUS_REDIS_URL", "bad_input") else {
        return;
    };
    let mut config = RedisConfig::new(&url);
    config.prefix = unique_prefix("bad");
    config.start_from = StartFrom::Earliest;
    config.block = Duration::from_millis(200);
    let backend = RedisBackend::connect(config).await.unwrap();
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let (h, c) = (handled.clone(), calls.clone());
    let bus = Bus::builder()
        .backend(backend.clone())
        .inbox(Arc::new(backend.inbox()))
        .max_payload(4096)
        .subscribe(
            Subscription::new(
                "payment.*",
                move |_ctx: Context, env: Envelope<PaymentCaptured>| {
                    c.fetch_add(1, Ordering::SeqCst);
                    let h = h.clone();
                    async move {
                        match env.data.payment_id.as_str() {
                            "panic" => panic!("handler bug on {}", env.data.payment_id),
                            "hang" => futures::future::pending::<()>().await,
                            "refused" => {
                                return Err(HandlerError::permanent(
                                    "card network refused the capture",
                                ))
                            }
                            _ => {}
                        }
                        h.lock().unwrap().push(env.data.payment_id);
                        Ok(())
                    }
                },
            )
            .group("ledger")
            .retries(1)
            .backoff(eventbus::Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_millis(20),
            ))
            .timeout(Duration::from_millis(300)),
        )
        .start()
        .await
        .unwrap();
    let publisher = bus.publisher();
    let good = |id: &str| PaymentCaptured {
        payment_id: id.to_owned(),
        cents: 100,
    };
    publisher.publish(good("before")).await.unwrap();
    let big = "x".repeat(5000);
    let bad = vec![
        raw(b"{this is not json", &[]),
        raw(&[0xff, 0xfe, 0x00, 0x7b], &[]),
        raw(br#"{"type":"payment.captured","data":{}}"#, &[]),
        raw(&envelope_json("0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d01", 2, r#"{"payment_id":7}"#, ""), &[]),
        // A newer version whose change is not additive (`cents` became a string).
        raw(&envelope_json("0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d02", 3, r#"{"payment_id":"p","cents":"one"}"#, ""), &[]),
        raw(&envelope_json("0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d03", 2, &format!(r#"{{"payment_id":"{big}","cents":1}}"#), ""), &[]),
        raw(&envelope_json("0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d04", 2, r#"{"payment_id":"p","cents":1}"#, r#","headers":{"a":[1,2]}"#), &[]),
        raw(br#"{"id":"0190b5a4-6c1e-7cc2-9d4e-3f1a2b3c4d05","type":42,"source":"s","time":"2026-11-23T10:00:00Z","version":1,"data":{}}"#, &[]),
    ];
    backend.publish(bad).await.unwrap();
    // Garbage transport headers are ignored, the event itself is fine.
    let fine_despite_headers = publisher
        .prepare(Envelope::new(good("odd-headers")))
        .unwrap();
    let mut odd = fine_despite_headers.clone();
    odd.headers
        .insert("eventbus-attempt".into(), "not a number".into());
    odd.headers.insert("eventbus-round".into(), "-1".into());
    backend.publish(vec![odd]).await.unwrap();
    for id in ["panic", "hang", "refused"] {
        publisher.publish(good(id)).await.unwrap();
    }
    publisher.publish(good("after")).await.unwrap();

    let dlq = bus.dead_letters();
    let mut letters = Vec::new();
    let all_there = eventually(Duration::from_secs(30), || {
        letters = futures::executor::block_on(dlq.list("payment.captured")).unwrap();
        letters.len() == 11
    })
    .await;
    let reasons: Vec<(ErrorKind, String)> = letters
        .iter()
        .map(|l| (l.failure.kind, l.failure.message.clone()))
        .collect();
    assert!(all_there, "{reasons:#?}");
    let expect = [
        (ErrorKind::Permanent, "malformed envelope"),
        (ErrorKind::Permanent, "payload is not valid utf-8"),
        (ErrorKind::Permanent, "malformed envelope: missing field"),
        (ErrorKind::Permanent, "invalid data for `payment.captured`"),
        (
            ErrorKind::Permanent,
            "version 3 of `payment.captured` does not decode as version 2",
        ),
        (ErrorKind::Permanent, "payload of "),
        (ErrorKind::Permanent, "malformed envelope"),
        (ErrorKind::Permanent, "malformed envelope"),
        (
            ErrorKind::Transient,
            "handler panicked: handler bug on panic",
        ),
        (ErrorKind::Transient, "handler timed out after 300ms"),
        (ErrorKind::Permanent, "card network refused the capture"),
    ];
    for ((kind, reason), (want_kind, want)) in reasons.iter().zip(expect) {
        assert_eq!(*kind, want_kind, "{reason}");
        assert!(
            reason.starts_with(want),
            "`{reason}` should start with `{want}`"
        );
    }
    assert!(
        reasons[5].1.contains("exceeds the limit of 4096 bytes"),
        "{}",
        reasons[5].1
    );
    assert!(
        eventually(Duration::from_secs(10), || handled.lock().unwrap().len()
            == 3)
        .await
    );
    let mut ok = handled.lock().unwrap().clone();
    ok.sort();
    assert_eq!(
        ok,
        vec!["after", "before", "odd-headers"],
        "the consumer kept running"
    );
    // Acknowledgements are sent in batches after the handlers return: wait for the last.
    let pending = eventually_reads(
        Duration::from_secs(10),
        || backend.pending("payment.captured", "ledger"),
        |pending| matches!(pending, Ok(0)),
    )
    .await;
    assert!(pending.is_ok(), "everything settled: {pending:?}");
    bus.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_configuration_fails_at_startup_naming_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("EVENTBUS_REDIS_URL", "localhost:6379")], "redis.url"),
        (
            &[
                ("EVENTBUS_REDIS_URL", "redis://h"),
                ("EVENTBUS_REDIS_BLOCK_MS", "-5"),
            ],
            "EVENTBUS_REDIS_BLOCK_MS",
        ),
        (
            &[
                ("EVENTBUS_REDIS_URL", "redis://h"),
                ("EVENTBUS_REDIS_CLAIM_IDLE_MS", "0"),
            ],
            "redis.claim_idle",
        ),
        (
            &[
                ("EVENTBUS_REDIS_URL", "redis://h"),
                ("EVENTBUS_REDIS_PER_TENANT_STREAMS", "maybe"),
            ],
            "EVENTBUS_REDIS_PER_TENANT_STREAMS",
        ),
    ];
    for (vars, setting) in cases {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let err = RedisConfig::from_lookup(lookup).expect_err(setting);
        assert!(
            err.to_string().contains(setting),
            "{err} does not name {setting}"
        );
    }
    let err = Bus::builder()
        .backend(eventbus::backend::memory::MemoryBackend::new())
        .max_payload(0)
        .start()
        .await
        .err()
        .expect("zero limit");
    assert!(err.to_string().contains("`max_payload`"), "{err}");
}
