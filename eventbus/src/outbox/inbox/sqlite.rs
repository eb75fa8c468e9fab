//! Inbox SQL for SQLite (`processed_at` in Unix milliseconds).

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Pool, Sqlite, Transaction};
use uuid::Uuid;

use crate::outbox::driver::InboxDriver;
use crate::outbox::millis;
use crate::outbox::sqlite::now_ms;

const INSERT: &str = "INSERT INTO inbox (consumer_group, event_id, processed_at) \
    VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING";

const CONTAINS: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer_group = ?1 \
    AND event_id = ?2)";

const CLEANUP: &str = "DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox \
    WHERE processed_at <= ?1 ORDER BY processed_at LIMIT ?2)";

impl InboxDriver for Sqlite {
    fn inbox_begin(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        // IMMEDIATE: take the write lock up front, so a later write in the handler's
        // transaction cannot fail on a lock upgrade.
        Box::pin(pool.begin_with("BEGIN IMMEDIATE"))
    }

    fn inbox_insert<'c>(
        conn: &'c mut Self::Connection,
        group: &'c str,
        id: Uuid,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(INSERT)
                .bind(group)
                .bind(id)
                .bind(now_ms())
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn inbox_record<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(INSERT)
                .bind(group)
                .bind(id)
                .bind(now_ms())
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    fn inbox_contains<'a>(
        pool: &'a Pool<Self>,
        group: &'a str,
        id: Uuid,
    ) -> BoxFuture<'a, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            sqlx::query_scalar(CONTAINS)
                .bind(group)
                .bind(id)
                .fetch_one(pool)
                .await
        })
    }

    fn inbox_cleanup(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(CLEANUP)
                .bind(now_ms().saturating_sub(millis(age)))
                .bind(i64::from(limit))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
