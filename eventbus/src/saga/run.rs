//! One saga step as a subscription: in one transaction, record the delivery in the inbox,
//! load the instance, run the step, save the instance under its version, write what the step
//! sent into the outbox; on a version conflict, roll back and run again.

use std::sync::Arc;

use sqlx::Transaction;

use super::context::SagaContext;
use super::{saga_error, Saga};
use crate::context::Context;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;
use crate::handler::{HandlerError, HandlerResult};
use crate::observability::Metrics;
use crate::outbox::inbox::ContextExt;
use crate::outbox::{Outbox, SqlDatabase};
use crate::subscription::Subscription;

/// Times in a row a step runs again after finding its instance saved by another step, before
/// the delivery is handed back to be retried with the subscription's backoff.
pub const MAX_CONFLICT_RETRIES: u32 = 16;

/// Whether a step may create its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `#[start]`: creates the instance when none exists.
    Starts,
    /// `#[handle]`: needs an existing instance.
    Continues,
}

/// The step of saga `S` for event `E`: `correlate` reads the instance id from the event, `run`
/// is the method. Called by the code `#[saga]` generates.
pub fn step<S, E, DB>(
    entry: Entry,
    correlate: fn(&E) -> String,
    run: fn(&mut S, &Envelope<E>, &mut SagaContext<'_>) -> HandlerResult,
) -> Subscription
where
    S: Saga,
    E: Event + serde::de::DeserializeOwned,
    DB: SqlDatabase,
{
    let handler = move |ctx: Context, envelope: Envelope<E>| async move {
        run_step::<S, E, DB>(&ctx, &envelope, entry, correlate, run).await
    };
    Subscription::new(E::NAME, handler)
        .group(format!("{}.{}", S::NAME, E::NAME))
        .with_name(format!("{}.{}", S::NAME, E::NAME))
}

/// How one attempt at a step ended.
enum Attempt {
    /// Committed.
    Applied,
    /// The instance completed before; nothing ran (the inbox row committed).
    Completed,
    /// Another step saved the instance first: rolled back, run again.
    Conflict,
}

async fn run_step<S, E, DB>(
    ctx: &Context,
    envelope: &Envelope<E>,
    entry: Entry,
    correlate: fn(&E) -> String,
    run: fn(&mut S, &Envelope<E>, &mut SagaContext<'_>) -> HandlerResult,
) -> HandlerResult
where
    S: Saga,
    E: Event,
    DB: SqlDatabase,
{
    let metrics = ctx.extension::<Arc<Metrics>>().cloned();
    let count = |outcome| {
        if let Some(metrics) = &metrics {
            metrics.saga_step(S::NAME, outcome);
        }
    };
    let outbox = ctx.extension::<Outbox<DB>>().cloned().ok_or_else(|| {
        HandlerError::permanent(format!(
            "saga `{}` needs the bus's outbox: give the bus one with `BusBuilder::outbox`",
            S::NAME
        ))
    })?;
    let id = correlate(&envelope.data);
    for _ in 0..MAX_CONFLICT_RETRIES {
        // `None`: this delivery was recorded by an earlier run of the step.
        let Some(mut tx) = ctx.transaction::<DB>().await? else {
            return Ok(());
        };
        match attempt::<S, E, DB>(ctx, envelope, entry, &id, run, &outbox, &mut tx).await? {
            Attempt::Applied => {
                tx.commit().await.map_err(|e| saga_error("commit", e))?;
                outbox.wake();
                count("applied");
                return Ok(());
            }
            Attempt::Completed => {
                tx.commit().await.map_err(|e| saga_error("commit", e))?;
                tracing::info!(
                    saga = S::NAME,
                    id = %id,
                    event_type = E::NAME,
                    event_id = %envelope.id,
                    "saga instance already completed: event acknowledged without a step"
                );
                count("completed");
                return Ok(());
            }
            Attempt::Conflict => {
                drop(tx);
                count("conflict");
            }
        }
    }
    Err(HandlerError::transient(format!(
        "saga `{}` instance `{id}` was saved by other steps {MAX_CONFLICT_RETRIES} times in a \
         row",
        S::NAME
    )))
}

#[allow(clippy::too_many_arguments)]
async fn attempt<S, E, DB>(
    ctx: &Context,
    envelope: &Envelope<E>,
    entry: Entry,
    id: &str,
    run: fn(&mut S, &Envelope<E>, &mut SagaContext<'_>) -> HandlerResult,
    outbox: &Outbox<DB>,
    tx: &mut Transaction<'static, DB>,
) -> Result<Attempt, HandlerError>
where
    S: Saga,
    E: Event,
    DB: SqlDatabase,
{
    let loaded = DB::saga_load(&mut **tx, S::NAME, id)
        .await
        .map_err(|e| saga_error("load", e))?;
    let (mut state, version) = match loaded {
        Some(row) if row.completed => return Ok(Attempt::Completed),
        Some(row) => {
            let state: S = serde_json::from_str(&row.state).map_err(|e| {
                HandlerError::permanent(Error::Saga {
                    saga: S::NAME,
                    id: id.to_owned(),
                    reason: format!("stored state does not decode: {e}"),
                })
            })?;
            (state, row.version)
        }
        None if entry == Entry::Starts => (S::default(), 0),
        None => {
            if let Some(metrics) = ctx.extension::<Arc<Metrics>>() {
                metrics.saga_step(S::NAME, "missing");
            }
            return Err(HandlerError::transient(format!(
                "saga `{}` has no instance `{id}` yet (`{}` does not start it)",
                S::NAME,
                E::NAME
            )));
        }
    };
    let mut saga = SagaContext::new(ctx, id);
    run(&mut state, envelope, &mut saga)?;
    let (emitted, completed) = saga.finish()?;
    let json = serde_json::to_string(&state).map_err(|e| {
        HandlerError::permanent(Error::Saga {
            saga: S::NAME,
            id: id.to_owned(),
            reason: format!("state does not encode: {e}"),
        })
    })?;
    let saved = if version == 0 {
        DB::saga_insert(&mut **tx, S::NAME, id, &json, completed).await
    } else {
        DB::saga_update(&mut **tx, S::NAME, id, &json, version, completed).await
    }
    .map_err(|e| saga_error("save", e))?;
    if !saved {
        return Ok(Attempt::Conflict);
    }
    for emitted in emitted {
        outbox
            .enqueue_message_at(&mut **tx, emitted.message, emitted.due)
            .await?;
    }
    Ok(Attempt::Applied)
}
