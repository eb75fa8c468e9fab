//! Handlers: the error a handler returns, the [`Handler`] trait implemented for `async fn`s,
//! and its type-erased form the pipeline calls.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::context::{Context, ContextParts};
use crate::envelope::{Envelope, RawEnvelope};
use crate::error::DecodeError;
use crate::event::Payload;

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Might succeed later (timeouts, unavailable dependencies, panics): retried with backoff.
    Transient,
    /// Will never succeed (bad data, decode errors, business rule violations): dead-lettered at
    /// once.
    Permanent,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        })
    }
}

/// The error a handler returns.
///
/// Any `std::error::Error` converts into a transient `HandlerError` with `?`; use
/// [`HandlerError::permanent`] for failures that retrying cannot fix.
pub struct HandlerError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl HandlerError {
    /// A failure worth retrying.
    pub fn transient(message: impl fmt::Display) -> Self {
        HandlerError {
            kind: ErrorKind::Transient,
            message: message.to_string(),
            source: None,
        }
    }

    /// A failure that goes straight to the dead-letter queue.
    pub fn permanent(message: impl fmt::Display) -> Self {
        HandlerError {
            kind: ErrorKind::Permanent,
            message: message.to_string(),
            source: None,
        }
    }

    /// Whether it is retried.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, including the source chain for converted errors.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The wrapped error, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        let message = crate::error::chain(&error);
        HandlerError {
            kind: ErrorKind::Transient,
            message,
            source: Some(Box::new(error)),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.kind, self.message)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// An async function usable as an event handler.
///
/// Implemented for `async fn(Envelope<T>) -> HandlerResult` and
/// `async fn(Context, Envelope<T>) -> HandlerResult` (and closures of those shapes), where `T`
/// is a [`Payload`]. `Args` is a marker that tells the two shapes apart.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an eventbus handler",
    label = "not a handler",
    note = "a handler is an `async fn` taking an optional `Context` and then an `Envelope<T>`, \
            returning `Result<(), HandlerError>`, where `T` is an `#[event]` type, a \
            `#[derive(EventGroup)]` enum or `serde_json::Value`"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// The payload type the envelope is decoded into.
    type Payload: Payload;

    /// Runs the handler.
    fn call(
        &self,
        ctx: Context,
        envelope: Envelope<Self::Payload>,
    ) -> BoxFuture<'static, HandlerResult>;

    /// Runs the handler, building its [`Context`] from the envelope only if it takes one: the
    /// pipeline calls this, so a handler of `Envelope<T>` alone costs no context per event.
    fn call_with(
        &self,
        ctx: impl FnOnce(&Envelope<Self::Payload>) -> Context,
        envelope: Envelope<Self::Payload>,
    ) -> BoxFuture<'static, HandlerResult> {
        self.call(ctx(&envelope), envelope)
    }
}

impl<F, Fut, T> Handler<(Envelope<T>,)> for F
where
    F: Fn(Envelope<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
    T: Payload,
{
    type Payload = T;

    fn call(&self, _ctx: Context, envelope: Envelope<T>) -> BoxFuture<'static, HandlerResult> {
        (self)(envelope).boxed()
    }

    fn call_with(
        &self,
        _ctx: impl FnOnce(&Envelope<T>) -> Context,
        envelope: Envelope<T>,
    ) -> BoxFuture<'static, HandlerResult> {
        (self)(envelope).boxed()
    }
}

impl<F, Fut, T> Handler<(Context, Envelope<T>)> for F
where
    F: Fn(Context, Envelope<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
    T: Payload,
{
    type Payload = T;

    fn call(&self, ctx: Context, envelope: Envelope<T>) -> BoxFuture<'static, HandlerResult> {
        (self)(ctx, envelope).boxed()
    }
}

/// A handler with its payload type erased: decodes a raw envelope, then calls the handler.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    /// The event names the payload accepts; empty means any.
    fn types(&self) -> &'static [&'static str];

    /// The topics of those event types; empty means any.
    fn topics(&self) -> &'static [&'static str];

    /// The schema version this build knows of `event_type`, when the payload names it.
    fn known_version(&self, event_type: &str) -> Option<u32>;

    /// Decodes the data and calls; `ctx` builds the handler's context if it takes one. With
    /// `lend`, the envelope's metadata moves into the handler's (see
    /// [`Envelope::lend_with_data`]) instead of being copied, once the data decoded.
    fn call(
        &self,
        ctx: &ContextParts<'_>,
        raw: &mut RawEnvelope,
        lend: bool,
    ) -> Result<BoxFuture<'static, HandlerResult>, DecodeError>;
}

struct Erased<H, Args> {
    handler: H,
    _args: std::marker::PhantomData<fn() -> Args>,
}

impl<H, Args> ErasedHandler for Erased<H, Args>
where
    H: Handler<Args>,
    Args: 'static,
{
    fn types(&self) -> &'static [&'static str] {
        <H::Payload as Payload>::TYPES
    }

    fn topics(&self) -> &'static [&'static str] {
        <H::Payload as Payload>::TOPICS
    }

    fn known_version(&self, event_type: &str) -> Option<u32> {
        let types = <H::Payload as Payload>::TYPES;
        let at = types.iter().position(|t| *t == event_type)?;
        <H::Payload as Payload>::VERSIONS.get(at).copied()
    }

    fn call(
        &self,
        ctx: &ContextParts<'_>,
        raw: &mut RawEnvelope,
        lend: bool,
    ) -> Result<BoxFuture<'static, HandlerResult>, DecodeError> {
        let data = <H::Payload as Payload>::decode(&raw.event_type, raw.version, &raw.data)?;
        let envelope = if lend {
            raw.lend_with_data(data)
        } else {
            raw.with_data(data)
        };
        Ok(self.handler.call_with(|e| ctx.build(e), envelope))
    }
}

pub(crate) fn erase<H, Args>(handler: H) -> Arc<dyn ErasedHandler>
where
    H: Handler<Args>,
    Args: 'static,
{
    Arc::new(Erased {
        handler,
        _args: std::marker::PhantomData,
    })
}
