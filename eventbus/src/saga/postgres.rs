//! Saga SQL for PostgreSQL.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Pool, Postgres, Row};

use super::store::{SagaDriver, SagaRow};
use crate::outbox::millis;

const LOAD: &str = "SELECT state::text, version, completed_at IS NOT NULL FROM saga \
    WHERE saga_name = $1 AND saga_id = $2";

const INSERT: &str = "INSERT INTO saga (saga_name, saga_id, state, version, completed_at) \
    VALUES ($1, $2, $3::jsonb, 1, CASE WHEN $4 THEN now() END) ON CONFLICT DO NOTHING";

const UPDATE: &str = "UPDATE saga SET state = $3::jsonb, version = version + 1, \
    updated_at = now(), completed_at = CASE WHEN $5 THEN now() END \
    WHERE saga_name = $1 AND saga_id = $2 AND version = $4";

const DELETE_COMPLETED: &str = "DELETE FROM saga WHERE (saga_name, saga_id) IN ( \
    SELECT saga_name, saga_id FROM saga \
    WHERE completed_at <= now() - $1 * interval '1 millisecond' \
    ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

const ARCHIVE_COMPLETED: &str = "WITH moved AS ( \
    DELETE FROM saga WHERE (saga_name, saga_id) IN ( \
        SELECT saga_name, saga_id FROM saga \
        WHERE completed_at <= now() - $1 * interval '1 millisecond' \
        ORDER BY completed_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
    RETURNING saga_name, saga_id, state, version, created_at, completed_at) \
    INSERT INTO saga_archive (saga_name, saga_id, state, version, created_at, completed_at) \
    SELECT * FROM moved ON CONFLICT DO NOTHING";

fn row(row: &sqlx::postgres::PgRow) -> Result<SagaRow, sqlx::Error> {
    Ok(SagaRow {
        state: row.try_get(0)?,
        version: row.try_get(1)?,
        completed: row.try_get(2)?,
    })
}

impl SagaDriver for Postgres {
    fn saga_load<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
    ) -> BoxFuture<'c, Result<Option<SagaRow>, sqlx::Error>> {
        Box::pin(async move {
            let found = sqlx::query(LOAD)
                .bind(saga)
                .bind(id)
                .fetch_optional(conn)
                .await?;
            found.as_ref().map(row).transpose()
        })
    }

    fn saga_insert<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
        state: &'c str,
        completed: bool,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(INSERT)
                .bind(saga)
                .bind(id)
                .bind(state)
                .bind(completed)
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn saga_update<'c>(
        conn: &'c mut Self::Connection,
        saga: &'c str,
        id: &'c str,
        state: &'c str,
        version: i64,
        completed: bool,
    ) -> BoxFuture<'c, Result<bool, sqlx::Error>> {
        Box::pin(async move {
            let done = sqlx::query(UPDATE)
                .bind(saga)
                .bind(id)
                .bind(state)
                .bind(version)
                .bind(completed)
                .execute(conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn saga_cleanup(
        pool: &Pool<Self>,
        age: Duration,
        limit: u32,
        archive: bool,
    ) -> BoxFuture<'_, Result<u64, sqlx::Error>> {
        Box::pin(async move {
            let sql = if archive {
                ARCHIVE_COMPLETED
            } else {
                DELETE_COMPLETED
            };
            let done = sqlx::query(sql)
                .bind(millis(age))
                .bind(i64::from(limit))
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
