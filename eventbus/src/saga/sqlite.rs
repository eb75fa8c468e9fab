//! Saga SQL for SQLite (times in Unix milliseconds).

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Pool, Row, Sqlite};

use super::store::{SagaDriver, SagaRow};
use crate::outbox::millis;
use crate::outbox::sqlite::now_ms;

const LOAD: &str = "SELECT state, version, completed_at IS NOT NULL FROM saga \
    WHERE saga_name = ?1 AND saga_id = ?2";

const INSERT: &str = "INSERT INTO saga \
    (saga_name, saga_id, state, version, created_at, updated_at, completed_at) \
    VALUES (?1, ?2, ?3, 1, ?4, ?4, CASE WHEN ?5 THEN ?4 END) ON CONFLICT DO NOTHING";

const UPDATE: &str = "UPDATE saga SET state = ?3, version = version + 1, updated_at = ?5, \
    completed_at = CASE WHEN ?6 THEN ?5 END \
    WHERE saga_name = ?1 AND saga_id = ?2 AND version = ?4";

const COMPLETED_BEFORE: &str = "SELECT saga_name, saga_id FROM saga \
    WHERE completed_at <= ?1 ORDER BY completed_at LIMIT ?2";

const ARCHIVE_ONE: &str = "INSERT INTO saga_archive \
    (saga_name, saga_id, state, version, created_at, completed_at, archived_at) \
    SELECT saga_name, saga_id, state, version, created_at, completed_at, ?3 FROM saga \
    WHERE saga_name = ?1 AND saga_id = ?2 ON CONFLICT DO NOTHING";

const DELETE_ONE: &str = "DELETE FROM saga WHERE saga_name = ?1 AND saga_id = ?2";

fn row(row: &sqlx::sqlite::SqliteRow) -> Result<SagaRow, sqlx::Error> {
    Ok(SagaRow {
        state: row.try_get(0)?,
        version: row.try_get(1)?,
        completed: row.try_get(2)?,
    })
}

impl SagaDriver for Sqlite {
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
                .bind(now_ms())
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
                .bind(now_ms())
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
            let now = now_ms();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let done: Vec<(String, String)> = sqlx::query_as(COMPLETED_BEFORE)
                .bind(now.saturating_sub(millis(age)))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            for (saga, id) in &done {
                if archive {
                    sqlx::query(ARCHIVE_ONE)
                        .bind(saga)
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(DELETE_ONE)
                    .bind(saga)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(done.len() as u64)
        })
    }
}
