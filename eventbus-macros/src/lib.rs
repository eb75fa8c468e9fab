//! Procedural macros for [`eventbus`](https://docs.rs/eventbus): `#[event]`, `#[subscriber]`,
//! `#[catalog]` and `#[derive(EventGroup)]`.
//!
//! Use them through the `eventbus` crate, which re-exports them; the generated code refers to
//! `::eventbus`, or to the path given with `crate = "..."` when eventbus is re-exported under
//! another name.
//!
//! Every macro checks its input at compile time (event names, patterns, durations, the shape
//! of the annotated item) and reports every mistake it finds, each pointing at the offending
//! token. The functions here are thin shims; the logic lives in one module per macro, working on
//! `proc_macro2` so it can be unit-tested.

use proc_macro::TokenStream;

mod attr;
mod catalog;
mod ctxt;
mod event;
mod group;
mod names;
mod saga;
mod subscriber;

/// Declares a struct as an event: implements `eventbus::Event` and `eventbus::Payload`.
///
/// ```
/// use eventbus::{event, Event};
///
/// #[event(name = "approval.granted", version = 2, topic = "approvals", key = approval_id)]
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ApprovalGranted {
///     approval_id: String,
///     amount: u64,
/// }
///
/// assert_eq!(ApprovalGranted::NAME, "approval.granted");
/// assert_eq!(ApprovalGranted::TOPIC, "approvals");
/// let event = ApprovalGranted { approval_id: "a-1".into(), amount: 5 };
/// assert_eq!(event.partition_key().as_deref(), Some("a-1"));
/// ```
///
/// | key | value | default |
/// |---|---|---|
/// | `name` | string: `.`-separated segments of ASCII letters, digits, `_`, `-` | required |
/// | `version` | integer ≥ 1 | `1` |
/// | `topic` | string of ASCII letters, digits, `.`, `_`, `-` (1–249) | the name |
/// | `key` | a field of the struct, the partition key | none |
/// | `upcast(from = N, with = f)` | repeatable: `f: fn(Old) -> New` turns a version-`N` payload into version `N + 1` (schema evolution, `eventbus::upcast`) | none |
/// | `crate` | string: path of the eventbus crate | `"::eventbus"` |
///
/// The struct must derive `Serialize` and `Deserialize` itself and cannot be generic.
#[proc_macro_attribute]
pub fn event(args: TokenStream, item: TokenStream) -> TokenStream {
    event::expand(args.into(), item.into()).into()
}

/// Declares a saga (process manager) on the `impl` block of its state type: methods marked
/// `#[start]` (may create the instance) and `#[handle]` (needs one) are its steps, one per
/// event type; `eventbus::saga` documents the runtime.
///
/// | key | value | default |
/// |---|---|---|
/// | `name` | string: `.`-separated segments of ASCII letters, digits, `_`, `-` | required |
/// | `correlate` | a field every handled event has; its value names the instance | required |
/// | `crate` | string: path of the eventbus crate | `"::eventbus"` |
///
/// A step is `fn name(&mut self, event: &Envelope<E>, saga: &mut SagaContext) ->
/// HandlerResult`; `#[handle(correlate = other_field)]` reads the instance id from another
/// field of that event. An event without the correlation field is a compile error at the
/// step's parameter.
#[proc_macro_attribute]
pub fn saga(args: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(args.into(), item.into()).into()
}

/// Turns an `async fn` into a subscriber: the function is replaced by a unit struct of the same
/// name implementing `eventbus::IntoSubscription`, registered at link time (with the default
/// `inventory` feature) and usable with `BusBuilder::subscribe`.
///
/// ```
/// use eventbus::{event, subscriber, Context, Envelope, HandlerResult, IntoSubscription};
///
/// #[event(name = "approval.granted")]
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ApprovalGranted { approval_id: String }
///
/// /// Bills granted approvals.
/// #[subscriber("approval.*", group = "billing", retries = 5, backoff(initial = "100ms", max = "10s"),
///     concurrency = 4, timeout = "30s")]
/// async fn bill(ctx: Context, env: Envelope<ApprovalGranted>) -> HandlerResult {
///     let _ = (ctx, env.data.approval_id);
///     Ok(())
/// }
///
/// let sub = bill.into_subscription();
/// assert_eq!(sub.pattern(), "approval.*");
/// assert_eq!(sub.group_name(), "billing");
/// ```
///
/// The first argument is the pattern: `.`-separated segments, each a literal, `*` (exactly one
/// segment) or, as the last segment only, `#`/`**` (one or more segments). Options:
///
/// | key | value |
/// |---|---|
/// | `group` | consumer group name |
/// | `retries` | retries after the first attempt |
/// | `backoff(initial = "100ms", max = "10s", multiplier = 2.0, jitter = true)` | exponential waits; each part optional |
/// | `schedule = ["1m", "5m", "30m"]` | fixed waits (not with `backoff`) |
/// | `delayed = ["1m", "5m", "30m"]` | after the in-process attempts, rounds that come back after each delay without blocking the stream |
/// | `concurrency` | handlers running at once (≥ 1) |
/// | `dlq` | dead-letter exhausted deliveries (`true`) or drop them |
/// | `timeout` | bound on one handler call |
/// | `park_keys` | park later events of a dead-lettered key |
/// | `crate` | path of the eventbus crate |
///
/// Durations are an integer and a unit: `ms`, `s`, `m` or `h`. When the envelope is written
/// `Envelope<T>`, the build fails if an event name of `T` cannot match the pattern.
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    subscriber::expand(args.into(), item.into()).into()
}

/// Collects the `#[event]` structs of an inline module: checks their names are unique and adds
/// `CATALOG` and a typed `Publisher` (one method per event, named after the event) to it.
///
/// ```
/// #[eventbus::catalog]
/// pub mod events {
///     use eventbus::event;
///
///     /// An approval was granted.
///     #[event(name = "approval.granted")]
///     #[derive(serde::Serialize, serde::Deserialize)]
///     pub struct ApprovalGranted { pub approval_id: String }
/// }
///
/// assert_eq!(events::CATALOG[0].name, "approval.granted");
///
/// async fn grant(publisher: &events::Publisher) -> Result<eventbus::Uuid, eventbus::Error> {
///     publisher.approval_granted(events::ApprovalGranted { approval_id: "a-1".into() }).await
/// }
/// ```
///
/// The generated items are `pub` in a `pub` module and `pub(crate)` otherwise; a method is
/// never more visible than its event type. Accepts `crate = "path"`.
#[proc_macro_attribute]
pub fn catalog(args: TokenStream, item: TokenStream) -> TokenStream {
    catalog::expand(args.into(), item.into()).into()
}

/// Implements `eventbus::Payload` and `eventbus::EventGroup` for an enum whose variants each
/// hold one `#[event]` type, so one subscriber can receive several event types.
///
/// ```
/// use eventbus::{event, EventGroup, Payload};
///
/// #[event(name = "approval.granted")]
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ApprovalGranted { approval_id: String }
///
/// #[event(name = "approval.rejected")]
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct ApprovalRejected { approval_id: String }
///
/// #[derive(EventGroup)]
/// enum ApprovalEvents {
///     Granted(ApprovalGranted),
///     Rejected(ApprovalRejected),
/// }
///
/// assert_eq!(ApprovalEvents::TYPES, ["approval.granted", "approval.rejected"]);
/// ```
///
/// `#[event_group(crate = "path")]` overrides the eventbus path.
#[proc_macro_derive(EventGroup, attributes(event_group))]
pub fn derive_event_group(input: TokenStream) -> TokenStream {
    group::expand(input.into()).into()
}

#[cfg(test)]
mod tests {
    /// The documentation of this file, with each attribute's table of keys.
    const DOCS: &str = include_str!("lib.rs");

    /// The keys in the first table after `after`.
    fn table_keys(after: &str) -> Vec<String> {
        let start = DOCS.find(after).expect("the macro's documentation");
        DOCS[start..]
            .lines()
            .skip_while(|l| !l.starts_with("/// | key"))
            .skip(2)
            .take_while(|l| l.starts_with("/// | `"))
            .map(|l| {
                let key = &l["/// | `".len()..];
                key.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    fn assert_documented(after: &str, keys: &[&str]) {
        let documented = table_keys(after);
        for key in keys {
            assert!(
                documented.iter().any(|d| d == key),
                "`{key}` is accepted but missing from the table after `{after}`: {documented:?}"
            );
        }
        for key in &documented {
            assert!(
                keys.contains(&key.as_str()),
                "`{key}` is documented but not accepted"
            );
        }
    }

    #[test]
    fn every_key_of_every_attribute_is_documented() {
        assert_documented("/// Declares a struct as an event", crate::event::KEYS);
        assert_documented("/// Declares a saga", crate::saga::KEYS);
        assert_documented(
            "/// Turns an `async fn` into a subscriber",
            crate::subscriber::KEYS,
        );
    }
}
