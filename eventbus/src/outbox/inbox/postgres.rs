//! Inbox SQL for PostgreSQL.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Pool, Postgres, Transaction};
use uuid::Uuid;

use crate::outbox::driver::InboxDriver;
use crate::outbox::millis;

const INSERT: &str = "INSERT INTO inbox (consumer_group, event_id) VALUES ($1, $2) \
    ON CONFLICT DO NOTHING";

const CONTAINS: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer_group = $1 \
    AND event_id = $2)";

const CLEANUP: &str = "DELETE FROM inbox WHERE (consumer_group, event_id) IN ( \
    SELECT consumer_group, event_id FROM inbox \
    WHERE processed_at <= now() - $1 * interval '1 millisecond' \
    ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

impl InboxDriver for Postgres {
    fn inbox_begin(
        pool: &Pool<Self>,
    ) -> BoxFuture<'_, Result<Transaction<'static, Self>, sqlx::Error>> {
        Box::pin(pool.begin())
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
                .bind(millis(age))
                .bind(i64::from(limit))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
