//! Aggregate snapshots in SQL (table `aggregate_snapshot`, created by the outbox migrations):
//! a [`Folded`] stored with the positions its read ended at, so the next rebuild reads only
//! the events after them.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn run<A>(bus: eventbus::Bus, pool: eventbus::outbox::sqlx::SqlitePool) -> Result<(), eventbus::Error>
//! # where A: eventbus::aggregate::Aggregate + serde::Serialize + serde::de::DeserializeOwned {
//! use eventbus::aggregate::snapshot::Snapshots;
//!
//! let snapshots = Snapshots::new(pool);
//! let admin = bus.backend().admin().expect("a backend that reads back");
//! // The stored fold plus what came after it, stored again.
//! let account = snapshots.fold::<A>(admin, "acc-1").await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Pool;

use super::{Aggregate, Fold, Folded};
use crate::backend::{BackendAdmin, Cursor};
use crate::error::Error;

/// A stored snapshot as text: state JSON, events applied, positions JSON, last event time.
type Row = (String, i64, String, Option<String>);

/// The SQL of the snapshot table on one database; sealed.
pub trait SnapshotDb: sqlx::Database + private::Sealed {
    #[doc(hidden)]
    fn snapshot_load<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Row>, sqlx::Error>>;

    #[doc(hidden)]
    fn snapshot_save<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
        row: Row,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

mod private {
    /// Only this crate's databases store snapshots.
    pub trait Sealed {}
    #[cfg(feature = "postgres")]
    impl Sealed for sqlx::Postgres {}
    #[cfg(feature = "sqlite")]
    impl Sealed for sqlx::Sqlite {}
}

#[cfg(feature = "postgres")]
impl SnapshotDb for sqlx::Postgres {
    fn snapshot_load<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Row>, sqlx::Error>> {
        Box::pin(
            sqlx::query_as(
                "SELECT state::text, applied, positions::text, last_time FROM aggregate_snapshot \
                 WHERE aggregate = $1 AND aggregate_key = $2",
            )
            .bind(aggregate)
            .bind(key)
            .fetch_optional(pool),
        )
    }

    fn snapshot_save<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
        (state, applied, positions, last_time): Row,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO aggregate_snapshot \
                 (aggregate, aggregate_key, state, applied, positions, last_time) \
                 VALUES ($1, $2, $3::jsonb, $4, $5::jsonb, $6) \
                 ON CONFLICT (aggregate, aggregate_key) DO UPDATE SET state = excluded.state, \
                 applied = excluded.applied, positions = excluded.positions, \
                 last_time = excluded.last_time, taken_at = now() \
                 WHERE excluded.applied >= aggregate_snapshot.applied",
            )
            .bind(aggregate)
            .bind(key)
            .bind(state)
            .bind(applied)
            .bind(positions)
            .bind(last_time)
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}

#[cfg(feature = "sqlite")]
impl SnapshotDb for sqlx::Sqlite {
    fn snapshot_load<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Row>, sqlx::Error>> {
        Box::pin(
            sqlx::query_as(
                "SELECT state, applied, positions, last_time FROM aggregate_snapshot \
                 WHERE aggregate = ?1 AND aggregate_key = ?2",
            )
            .bind(aggregate)
            .bind(key)
            .fetch_optional(pool),
        )
    }

    fn snapshot_save<'a>(
        pool: &'a Pool<Self>,
        aggregate: &'a str,
        key: &'a str,
        (state, applied, positions, last_time): Row,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO aggregate_snapshot \
                 (aggregate, aggregate_key, state, applied, positions, last_time, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (aggregate, aggregate_key) DO UPDATE SET state = excluded.state, \
                 applied = excluded.applied, positions = excluded.positions, \
                 last_time = excluded.last_time, taken_at = excluded.taken_at \
                 WHERE excluded.applied >= aggregate_snapshot.applied",
            )
            .bind(aggregate)
            .bind(key)
            .bind(state)
            .bind(applied)
            .bind(positions)
            .bind(last_time)
            .bind(Utc::now().timestamp_millis())
            .execute(pool)
            .await?;
            Ok(())
        })
    }
}

/// Snapshots of aggregates in the database of `pool`.
#[derive(Debug, Clone)]
pub struct Snapshots<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: SnapshotDb> Snapshots<DB> {
    /// Snapshots in `pool`'s database (migrated with the outbox's `migrate`).
    pub fn new(pool: Pool<DB>) -> Self {
        Snapshots { pool }
    }

    /// Stores `folded` as the snapshot of `A` for `key`, unless a snapshot with more events
    /// is stored already. A fold that stopped at a time (`as_of`) has no position to resume
    /// from and is refused.
    pub async fn save<A: Aggregate + Serialize>(
        &self,
        key: &str,
        folded: &Folded<A>,
    ) -> Result<(), Error> {
        let refuse = |reason: String| Error::Aggregate {
            aggregate: A::NAME,
            key: key.to_owned(),
            reason,
        };
        if folded.positions.is_empty() && folded.applied > 0 {
            return Err(refuse(
                "the fold has no positions to resume from (an `as_of` fold cannot be a \
                 snapshot)"
                    .into(),
            ));
        }
        let state = serde_json::to_string(&folded.state)
            .map_err(|e| refuse(format!("state does not encode: {e}")))?;
        let positions: BTreeMap<&str, &str> = folded
            .positions
            .iter()
            .map(|(topic, cursor)| (topic.as_str(), cursor.0.as_str()))
            .collect();
        let positions = serde_json::to_string(&positions)
            .map_err(|e| refuse(format!("positions do not encode: {e}")))?;
        let applied = i64::try_from(folded.applied).unwrap_or(i64::MAX);
        let last_time = folded.last_time.map(|t| t.to_rfc3339());
        DB::snapshot_save(
            &self.pool,
            A::NAME,
            key,
            (state, applied, positions, last_time),
        )
        .await
        .map_err(|e| Error::backend("snapshot", "save", e))
    }

    /// The stored snapshot of `A` for `key` (`read` is 0), if any.
    pub async fn load<A: Aggregate + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Folded<A>>, Error> {
        let row = DB::snapshot_load(&self.pool, A::NAME, key)
            .await
            .map_err(|e| Error::backend("snapshot", "load", e))?;
        let Some((state, applied, positions, last_time)) = row else {
            return Ok(None);
        };
        let bad = |reason: String| Error::Aggregate {
            aggregate: A::NAME,
            key: key.to_owned(),
            reason,
        };
        let state: A = serde_json::from_str(&state)
            .map_err(|e| bad(format!("stored state does not decode: {e}")))?;
        let positions: BTreeMap<String, String> = serde_json::from_str(&positions)
            .map_err(|e| bad(format!("stored positions do not decode: {e}")))?;
        let last_time = last_time
            .map(|t| DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)))
            .transpose()
            .map_err(|e| bad(format!("stored time does not parse: {e}")))?;
        Ok(Some(Folded {
            state,
            applied: u64::try_from(applied).unwrap_or(0),
            read: 0,
            last_time,
            positions: positions
                .into_iter()
                .map(|(topic, cursor)| (topic, Cursor(cursor)))
                .collect(),
        }))
    }

    /// The state of `A` for `key`: the stored snapshot plus the events after it, stored back
    /// as the new snapshot when events were read.
    pub async fn fold<A: Aggregate + Serialize + DeserializeOwned>(
        &self,
        admin: &dyn BackendAdmin,
        key: &str,
    ) -> Result<Folded<A>, Error> {
        let mut fold = Fold::<A>::new(key);
        if let Some(snapshot) = self.load::<A>(key).await? {
            fold = fold.resume(snapshot);
        }
        let folded = fold.run(admin).await?;
        if folded.read > 0 {
            self.save(key, &folded).await?;
        }
        Ok(folded)
    }
}
