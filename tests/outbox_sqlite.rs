//! The outbox and SQL inbox suite on SQLite: a temp file in WAL mode, no server needed.
//!
//! The databases use `synchronous = NORMAL` to keep the suite fast: WAL with NORMAL survives
//! a crash of the process (what these tests inject), not a power loss; the library's
//! [`sqlite::connect_options`] default is `FULL`.

#[path = "outbox_suite/mod.rs"]
#[macro_use]
mod suite;

use eventbus::outbox::sqlx::sqlite::{SqlitePoolOptions, SqliteSynchronous};
use eventbus::outbox::sqlx::{self, Sqlite};
use eventbus::outbox::{sqlite, Outbox};
use eventbus::Uuid;
use futures::future::BoxFuture;
use suite::Fresh;

impl_test_db!(Sqlite, "BEGIN IMMEDIATE");

async fn fresh(test: &str) -> Option<Fresh<Sqlite>> {
    eventbus_integration::mark_ran("outbox_sqlite");
    let path = std::env::temp_dir().join(format!("eventbus-outbox-{test}-{}.db", Uuid::now_v7()));
    let options = sqlite::connect_options(&path).synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("sqlite");
    sqlite::migrate(&pool).await.expect("migrate");
    for ddl in suite::app_schema("INTEGER PRIMARY KEY") {
        sqlx::query(&ddl).execute(&pool).await.expect("schema");
    }
    let teardown = move || -> BoxFuture<'static, ()> {
        Box::pin(async move {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
        })
    };
    Some(Fresh {
        pool,
        teardown: Box::new(teardown),
    })
}

shared_tests! {
    fresh;
    rollback_publishes_nothing_commit_publishes_once,
    exactly_once_downstream_under_redelivery,
    kill_dispatcher_while_events_flow(100, 1),
    publish_failure_backs_off_then_dead_letters,
    failed_dead_letter_publish_is_retried,
    encryption_round_trip_and_rotation,
    cleanup_removes_sent_rows_and_old_inbox_rows,
    dispatcher_runs_the_cleanup,
    backlog_reports_size_and_age,
    inbox_transaction_claims_an_event_once,
    replay_reaches_a_handler_that_uses_the_inbox_transaction,
    config_errors_name_the_setting,
    a_bus_owned_outbox_relays_and_stops_with_the_bus,
    follow_on_events_commit_with_the_handler,
    outbox_metrics_follow_the_backlog,
    concurrent_steps_of_one_saga_lose_no_update,
    completed_sagas_are_deleted_after_their_retention,
    completed_sagas_are_archived_after_their_retention,
    a_scheduled_event_waits_in_the_outbox_until_due,
}

#[test]
fn migrations_are_idempotent_and_switch_to_wal() {
    eventbus_integration::run(2, migrations_are_idempotent_and_switch_to_wal_case());
}

async fn migrations_are_idempotent_and_switch_to_wal_case() {
    let db = fresh("migrate").await.expect("db");
    sqlite::migrate(&db.pool).await.expect("again");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&db.pool)
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .expect("migrations");
    assert_eq!(applied, 4);
    db.finish().await;
}

#[test]
fn one_worker_only() {
    eventbus_integration::run(2, one_worker_only_case());
}

async fn one_worker_only_case() {
    let db = fresh("one_worker").await.expect("db");
    let err = Outbox::builder(db.pool.clone())
        .concurrency(2)
        .build()
        .expect_err("sqlite has one writer")
        .to_string();
    assert!(err.contains("outbox.concurrency"), "{err}");
    db.finish().await;
}
