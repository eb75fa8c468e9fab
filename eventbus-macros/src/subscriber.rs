//! `#[subscriber("pattern", options...)]` on an `async fn`: replaces the function with a unit
//! struct of the same name implementing `IntoSubscription` (as actix-web's `#[get]` does; the
//! function moves into the `const _` block next to the impl),
//! registers it at link time, and checks at compile time that the envelope's payload type can
//! match the pattern.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, ItemFn, LitStr, Meta, PathArguments, Token, Type,
};

use crate::attr::{self, Seen};
use crate::ctxt::{item_with_error, Ctxt};
use crate::names;

/// The keys `#[subscriber]` accepts after the pattern.
pub(crate) const KEYS: &[&str] = &[
    "group",
    "retries",
    "backoff",
    "schedule",
    "delayed",
    "concurrency",
    "dlq",
    "timeout",
    "park_keys",
    "crate",
];

/// The keys of `backoff(...)`.
const BACKOFF_KEYS: &[&str] = &["initial", "max", "multiplier", "jitter"];

/// One argument: the pattern, or a key.
enum Arg {
    Pattern(LitStr),
    Meta(Box<Meta>),
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            input.parse().map(Arg::Pattern)
        } else if input.peek(syn::Lit) {
            Err(input.error(
                "expected the pattern as a string literal, such as `#[subscriber(\"approval.*\")]`",
            ))
        } else {
            input.parse().map(|meta| Arg::Meta(Box::new(meta)))
        }
    }
}

/// The retry waits: exponential (each part optional, defaulting to the runtime's defaults) or a
/// fixed schedule. Durations are in milliseconds.
#[derive(Debug, PartialEq)]
enum BackoffArgs {
    Exponential {
        initial: Option<u64>,
        max: Option<u64>,
        multiplier: Option<f64>,
        jitter: Option<bool>,
    },
    Schedule(Vec<u64>),
}

/// The checked arguments.
struct SubscriberArgs {
    pattern: LitStr,
    group: Option<LitStr>,
    retries: Option<u32>,
    backoff: Option<BackoffArgs>,
    delayed: Option<Vec<u64>>,
    concurrency: Option<usize>,
    dlq: Option<bool>,
    timeout: Option<u64>,
    park_keys: Option<bool>,
    krate: Option<TokenStream>,
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> Option<SubscriberArgs> {
    let args = match Punctuated::<Arg, Token![,]>::parse_terminated.parse2(args) {
        Ok(args) => args,
        Err(err) => {
            cx.syn_error(err);
            return None;
        }
    };
    let mut pattern = None;
    let mut pattern_given = false;
    let mut seen = Seen::default();
    let mut out = SubscriberArgs {
        pattern: LitStr::new("", Span::call_site()),
        group: None,
        retries: None,
        backoff: None,
        delayed: None,
        concurrency: None,
        dlq: None,
        timeout: None,
        park_keys: None,
        krate: None,
    };
    // The first of `backoff(...)` / `schedule = [...]`, to report combining them.
    let mut waits_key: Option<&'static str> = None;
    // Where `park_keys = true` was written, to report it beside `dlq = false`.
    let mut park_keys_at: Option<Expr> = None;
    for arg in &args {
        let meta = match arg {
            Arg::Pattern(lit) => {
                if pattern_given {
                    cx.error_spanned_by(lit, "only one pattern is allowed; to handle several, use wildcards (`approval.*`) or one subscriber per pattern");
                    continue;
                }
                pattern_given = true;
                match names::check_pattern(&lit.value()) {
                    Ok(()) => pattern = Some(lit.clone()),
                    Err(message) => cx.error_spanned_by(lit, format!("invalid pattern: {message}")),
                }
                continue;
            }
            Arg::Meta(meta) => meta,
        };
        let Some(key) = attr::key_of(meta).filter(|k| KEYS.contains(&k.as_str())) else {
            attr::unknown_key(cx, meta, KEYS);
            continue;
        };
        if !seen.first(cx, meta, &key) {
            continue;
        }
        match key.as_str() {
            "group" => {
                let example = "group = \"billing\"";
                let Some(expr) = attr::value(cx, meta, "group", example) else {
                    continue;
                };
                let Some(lit) = attr::string(cx, expr, "group", example) else {
                    continue;
                };
                if lit.value().is_empty() {
                    cx.error_spanned_by(&lit, "`group` cannot be empty");
                } else {
                    out.group = Some(lit);
                }
            }
            "retries" => {
                let example = "retries = 3";
                let Some(expr) = attr::value(cx, meta, "retries", example) else {
                    continue;
                };
                out.retries = attr::integer::<u32>(cx, expr, "retries", example);
            }
            "concurrency" => {
                let example = "concurrency = 4";
                let Some(expr) = attr::value(cx, meta, "concurrency", example) else {
                    continue;
                };
                match attr::integer::<usize>(cx, expr, "concurrency", example) {
                    Some(0) => cx.error_spanned_by(expr, "`concurrency` must be at least 1"),
                    n => out.concurrency = n,
                }
            }
            "dlq" | "park_keys" => {
                let example = format!("{key} = true");
                let Some(expr) = attr::value(cx, meta, &key, &example) else {
                    continue;
                };
                let flag = attr::boolean(cx, expr, &key);
                if key == "dlq" {
                    out.dlq = flag;
                } else {
                    out.park_keys = flag;
                    park_keys_at = Some(expr.clone());
                }
            }
            "timeout" => {
                let example = "timeout = \"30s\"";
                let Some(expr) = attr::value(cx, meta, "timeout", example) else {
                    continue;
                };
                match duration(cx, expr, "timeout", example) {
                    Some(0) => cx.error_spanned_by(expr, "`timeout` must be greater than zero"),
                    ms => out.timeout = ms,
                }
            }
            "backoff" | "schedule" => {
                let this: &'static str = if key == "backoff" {
                    "backoff"
                } else {
                    "schedule"
                };
                if let Some(first) = waits_key {
                    cx.error_spanned_by(
                        meta.path(),
                        format!(
                            "`{this}` cannot be combined with `{first}`: use either \
                             `backoff(...)` (exponential waits) or `schedule = [...]` (fixed waits)"
                        ),
                    );
                    continue;
                }
                waits_key = Some(this);
                out.backoff = if this == "backoff" {
                    backoff(cx, meta)
                } else {
                    schedule(cx, meta)
                };
            }
            "delayed" => {
                out.delayed =
                    duration_list(cx, meta, "delayed", "delayed = [\"1m\", \"5m\", \"30m\"]");
            }
            _ => out.krate = attr::crate_path(cx, meta),
        }
    }
    if !pattern_given {
        cx.error_at(
            Span::call_site(),
            "missing pattern: pass it first, such as `#[subscriber(\"approval.*\")]`",
        );
    }
    if let (Some(false), Some(true), Some(at)) = (out.dlq, out.park_keys, &park_keys_at) {
        cx.error_spanned_by(
            at,
            "`park_keys = true` needs dead letters, but `dlq = false` discards failed events: \
             a parked key waits beside its dead letter until that is redriven",
        );
    }
    out.pattern = pattern?;
    Some(out)
}

/// A duration string, in milliseconds.
fn duration(cx: &Ctxt, expr: &Expr, key: &str, example: &str) -> Option<u64> {
    let lit = attr::string(cx, expr, key, example)?;
    match names::parse_duration(&lit.value()) {
        Ok(ms) => Some(ms),
        Err(message) => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "invalid duration \"{}\" for `{key}`: {message}",
                    lit.value()
                ),
            );
            None
        }
    }
}

fn backoff(cx: &Ctxt, meta: &Meta) -> Option<BackoffArgs> {
    let example = "backoff(initial = \"100ms\", max = \"10s\", multiplier = 2.0, jitter = true)";
    let list = match meta {
        Meta::List(list) => list,
        _ => {
            cx.error_spanned_by(meta, format!("expected `{example}`"));
            return None;
        }
    };
    let metas = match attr::parse_metas(list.tokens.clone()) {
        Ok(metas) => metas,
        Err(err) => {
            cx.syn_error(err);
            return None;
        }
    };
    let mut seen = Seen::default();
    let (mut initial, mut max, mut multiplier, mut jitter) = (None, None, None, None);
    let mut spans = (None, None);
    for meta in &metas {
        let Some(key) = attr::key_of(meta).filter(|k| BACKOFF_KEYS.contains(&k.as_str())) else {
            attr::unknown_key(cx, meta, BACKOFF_KEYS);
            continue;
        };
        if !seen.first(cx, meta, &key) {
            continue;
        }
        match key.as_str() {
            "initial" | "max" => {
                let example = if key == "initial" {
                    "initial = \"100ms\""
                } else {
                    "max = \"10s\""
                };
                let Some(expr) = attr::value(cx, meta, &key, example) else {
                    continue;
                };
                let ms = duration(cx, expr, &key, example);
                if key == "initial" {
                    initial = ms;
                    spans.0 = Some(expr.clone());
                } else {
                    max = ms;
                    spans.1 = Some(expr.clone());
                }
            }
            "multiplier" => {
                let example = "multiplier = 2.0";
                let Some(expr) = attr::value(cx, meta, "multiplier", example) else {
                    continue;
                };
                match attr::float(cx, expr, "multiplier", example) {
                    Some(m) if m.is_finite() && m >= 1.0 => multiplier = Some(m),
                    Some(_) => cx.error_spanned_by(expr, "`multiplier` must be at least 1.0"),
                    None => {}
                }
            }
            _ => {
                let Some(expr) = attr::value(cx, meta, "jitter", "jitter = true") else {
                    continue;
                };
                jitter = attr::boolean(cx, expr, "jitter");
            }
        }
    }
    if let (Some(i), Some(m), Some(max_expr)) = (initial, max, &spans.1) {
        if i > m {
            cx.error_spanned_by(max_expr, "`max` must not be shorter than `initial`");
        }
    }
    Some(BackoffArgs::Exponential {
        initial,
        max,
        multiplier,
        jitter,
    })
}

fn schedule(cx: &Ctxt, meta: &Meta) -> Option<BackoffArgs> {
    let example = "schedule = [\"1m\", \"5m\", \"30m\"]";
    duration_list(cx, meta, "schedule", example).map(BackoffArgs::Schedule)
}

/// A non-empty list of duration literals, in milliseconds.
fn duration_list(cx: &Ctxt, meta: &Meta, key: &str, example: &str) -> Option<Vec<u64>> {
    let expr = attr::value(cx, meta, key, example)?;
    let Expr::Array(array) = expr else {
        cx.error_spanned_by(
            expr,
            format!("expected a list of durations, such as `{example}`"),
        );
        return None;
    };
    if array.elems.is_empty() {
        cx.error_spanned_by(array, format!("`{key}` needs at least one duration"));
        return None;
    }
    let waits: Vec<Option<u64>> = array
        .elems
        .iter()
        .map(|e| duration(cx, e, key, example))
        .collect();
    waits.into_iter().collect::<Option<Vec<_>>>()
}

/// Attributes of the function, sorted by where they go.
struct Attrs {
    /// Docs and `deprecated`: on the struct, which is what users see and name.
    on_struct: Vec<Attribute>,
    /// `cfg`: on the struct and on the generated impls.
    cfg: Vec<Attribute>,
    /// Everything else (`instrument`, lint levels): on the function itself.
    on_fn: Vec<Attribute>,
}

fn sort_attrs(attrs: &[Attribute]) -> Attrs {
    let mut out = Attrs {
        on_struct: Vec::new(),
        cfg: Vec::new(),
        on_fn: Vec::new(),
    };
    for attr in attrs {
        let path = attr.path();
        if path.is_ident("doc") || path.is_ident("deprecated") {
            out.on_struct.push(attr.clone());
        } else if path.is_ident("cfg") {
            out.cfg.push(attr.clone());
        } else {
            out.on_fn.push(attr.clone());
        }
    }
    out
}

/// The last segment of a type path, with its generic arguments.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// `T` of a parameter typed `...::Envelope<T>`.
fn envelope_payload(ty: &Type) -> Option<&Type> {
    let segment = last_segment(ty).filter(|s| s.ident == "Envelope")?;
    let PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    match (types.next(), types.next()) {
        (Some(ty), None) if args.args.len() == 1 => Some(ty),
        _ => None,
    }
}

fn is_named(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == name)
}

/// Checks the function's shape; returns the envelope's payload type when it is spelled
/// `Envelope<T>`.
fn check_fn(cx: &Ctxt, func: &ItemFn) -> Option<Type> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "a subscriber must be an `async fn`; add `async` before `fn`",
        );
    }
    if let Some(constness) = &sig.constness {
        cx.error_spanned_by(constness, "a subscriber cannot be a `const fn`");
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(unsafety, "a subscriber cannot be an `unsafe fn`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "a subscriber cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &sig.generics,
            "a subscriber cannot be generic: the envelope's payload type decides which events it \
             decodes, so it must be concrete (use an `EventGroup` enum or `serde_json::Value` \
             to accept several event types)",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a subscriber cannot be variadic");
    }
    let usage = "a subscriber takes an optional `Context` and then the `Envelope<T>`: \
                 `async fn handle(ctx: Context, env: Envelope<T>) -> HandlerResult`";
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => cx.error_spanned_by(
                receiver,
                "a subscriber cannot take `self`; write a free function",
            ),
            FnArg::Typed(pat) => typed.push(pat),
        }
    }
    match sig.inputs.len() {
        0 => {
            cx.error_at(
                sig.paren_token.span.join(),
                format!("missing envelope parameter: {usage}"),
            );
            return None;
        }
        1 | 2 => {}
        _ => {
            let extra: Vec<&FnArg> = sig.inputs.iter().skip(2).collect();
            cx.error_spanned_by(quote!(#(#extra)*), format!("too many parameters: {usage}"));
            return None;
        }
    }
    let last = typed.last()?;
    let first_is_envelope = typed.len() == 2 && is_named(&typed[0].ty, "Envelope");
    if is_named(&last.ty, "Context") {
        if first_is_envelope {
            cx.error_spanned_by(
                &sig.inputs,
                format!("the parameters are in the wrong order, swap them: {usage}"),
            );
        } else {
            cx.error_spanned_by(
                &last.ty,
                format!("the envelope must be the last parameter: {usage}"),
            );
        }
        return None;
    }
    if first_is_envelope {
        cx.error_spanned_by(
            &typed[0].ty,
            format!("the first of two parameters is the `Context`: {usage}"),
        );
    }
    let payload = envelope_payload(&last.ty)?;
    if matches!(payload, Type::ImplTrait(_) | Type::Infer(_)) {
        cx.error_spanned_by(
            payload,
            "the envelope's payload must be a concrete type: an `#[event]` struct, an \
             `EventGroup` enum or `serde_json::Value`",
        );
        return None;
    }
    Some(payload.clone())
}

/// Expands `#[subscriber(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = parse_args(&cx, args);
    let func = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Fn(func)) => Some(func),
        Ok(other) => {
            cx.error_spanned_by(
                crate::event::item_head(&other),
                "`#[subscriber]` can only be used on an `async fn`",
            );
            None
        }
        Err(err) => {
            cx.syn_error(err);
            None
        }
    };
    let payload = func.as_ref().and_then(|f| check_fn(&cx, f));
    match (cx.check(), parsed, func) {
        (Ok(()), Some(args), Some(func)) => codegen(&args, func, payload.as_ref()),
        (Err(err), _, _) => item_with_error(item, err),
        // Unreachable: a missing pattern or function is always recorded as an error.
        (Ok(()), _, _) => item,
    }
}

fn duration_tokens(krate: &TokenStream, ms: u64) -> TokenStream {
    let ms = proc_macro2::Literal::u64_unsuffixed(ms);
    quote!(#krate::__private::Duration::from_millis(#ms))
}

fn codegen(args: &SubscriberArgs, mut func: ItemFn, payload: Option<&Type>) -> TokenStream {
    let krate = attr::krate_or_default(args.krate.clone());
    let ident = func.sig.ident.clone();
    let name = ident.to_string();
    let vis = std::mem::replace(&mut func.vis, syn::Visibility::Inherited);
    let Attrs {
        on_struct,
        cfg,
        on_fn,
    } = sort_attrs(&func.attrs);
    func.attrs = on_fn;
    let pattern = &args.pattern;

    let mut calls = Vec::new();
    if let Some(group) = &args.group {
        calls.push(quote!(.group(#group)));
    }
    if let Some(retries) = args.retries {
        let retries = proc_macro2::Literal::u32_unsuffixed(retries);
        calls.push(quote!(.retries(#retries)));
    }
    if let Some(delays) = &args.delayed {
        let delays = delays.iter().map(|ms| duration_tokens(&krate, *ms));
        calls.push(quote!(.delayed_retries([#(#delays),*])));
    }
    match &args.backoff {
        Some(BackoffArgs::Schedule(waits)) => {
            let waits = waits.iter().map(|ms| duration_tokens(&krate, *ms));
            calls.push(quote! {
                .backoff(#krate::Backoff::Schedule(::std::vec![#(#waits),*]))
            });
        }
        Some(BackoffArgs::Exponential {
            initial,
            max,
            multiplier,
            jitter,
        }) => {
            let mut bindings = Vec::new();
            let mut sets = Vec::new();
            let mut set = |field: &str, value: TokenStream| {
                let binding = format_ident!("__eventbus_{}", field);
                let field = format_ident!("{}", field);
                bindings.push(quote!(#field: #binding));
                sets.push(quote!(*#binding = #value;));
            };
            if let Some(ms) = initial {
                set("initial", duration_tokens(&krate, *ms));
            }
            if let Some(ms) = max {
                set("max", duration_tokens(&krate, *ms));
            }
            if let Some(m) = multiplier {
                let m = proc_macro2::Literal::f64_suffixed(*m);
                set("multiplier", quote!(#m));
            }
            if let Some(j) = jitter {
                set("jitter", quote!(#j));
            }
            // Start from the runtime's default exponential backoff and override what was given.
            calls.push(quote! {
                .backoff({
                    let mut __eventbus_backoff = <#krate::Backoff as ::core::default::Default>::default();
                    if let #krate::Backoff::Exponential { #(#bindings,)* .. } = &mut __eventbus_backoff {
                        #(#sets)*
                    }
                    __eventbus_backoff
                })
            });
        }
        None => {}
    }
    if let Some(concurrency) = args.concurrency {
        let concurrency = proc_macro2::Literal::usize_unsuffixed(concurrency);
        calls.push(quote!(.concurrency(#concurrency)));
    }
    if let Some(dlq) = args.dlq {
        calls.push(quote!(.dlq(#dlq)));
    }
    if let Some(ms) = args.timeout {
        let timeout = duration_tokens(&krate, ms);
        calls.push(quote!(.timeout(#timeout)));
    }
    if let Some(park) = args.park_keys {
        calls.push(quote!(.park_keys(#park)));
    }

    let type_check = payload.map(|ty| {
        let shown = ty
            .to_token_stream()
            .to_string()
            .replace(" < ", "<")
            .replace(" >", ">")
            .replace(" :: ", "::");
        let message = format!(
            "pattern \"{}\" does not match the name of `{shown}` (for an event group: of every \
             event in it), so this subscriber would never receive it; change the pattern or the \
             envelope's payload type",
            pattern.value()
        )
        .replace('{', "{{")
        .replace('}', "}}");
        quote_spanned! {ty.span()=>
            const _: () = ::core::assert!(
                #krate::__private::const_matches_all(#pattern, <#ty as #krate::Payload>::TYPES),
                #message
            );
        }
    });

    // `#ident::handle(...)` calls the function itself (the struct takes its name in the value
    // namespace): what a unit test of the handler does.
    let params: Vec<(proc_macro2::Ident, &Type)> = func
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| match input {
            FnArg::Typed(pat) => Some((format_ident!("__eventbus_arg{}", i), &*pat.ty)),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let (names, types): (Vec<_>, Vec<_>) = params.into_iter().unzip();
    let output = match &func.sig.output {
        syn::ReturnType::Default => quote!(()),
        syn::ReturnType::Type(_, ty) => quote!(#ty),
    };
    let handle_doc =
        format!("Calls `{name}` itself, outside any bus: for unit tests of the handler.");

    quote! {
        #(#cfg)*
        #(#on_struct)*
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
        #vis struct #ident;

        #(#cfg)*
        const _: () = {
            #type_check

            // The function keeps its name inside this block, where it shadows the struct in the
            // value namespace: `#ident` below is the function, `#ident {}` the struct.
            #func

            #[automatically_derived]
            #[allow(deprecated, dead_code)]
            impl #ident {
                #[doc = #handle_doc]
                #vis fn handle(#(#names: #types),*) -> impl ::core::future::Future<Output = #output> {
                    #ident(#(#names),*)
                }
            }

            #[automatically_derived]
            #[allow(deprecated)]
            impl #krate::IntoSubscription for #ident {
                fn into_subscription(self) -> #krate::Subscription {
                    #krate::Subscription::new(#pattern, #ident)
                        .with_name(::core::concat!(::core::module_path!(), "::", #name))
                        #(#calls)*
                }
            }

            #[allow(dead_code, deprecated)]
            fn __eventbus_make() -> #krate::Subscription {
                <#ident as #krate::IntoSubscription>::into_subscription(#ident {})
            }

            #krate::__register_subscriber!(__eventbus_make);
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_errors(args: TokenStream, item: TokenStream) -> Vec<String> {
        let out = expand(args, item);
        let file: syn::File = syn::parse2(out).expect("output parses");
        file.items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Macro(m)
                    if m.mac
                        .path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "compile_error") =>
                {
                    Some(
                        m.mac
                            .parse_body::<LitStr>()
                            .map(|l| l.value())
                            .unwrap_or_default(),
                    )
                }
                _ => None,
            })
            .collect()
    }

    const HANDLER: &str = "async fn on_granted(ctx: Context, env: Envelope<ApprovalGranted>) -> HandlerResult { Ok(()) }";

    fn handler() -> TokenStream {
        HANDLER.parse().expect("tokens")
    }

    #[test]
    fn parses_every_option() {
        let cx = Ctxt::new();
        let args = parse_args(
            &cx,
            quote!(
                "approval.*",
                group = "billing",
                retries = 3,
                backoff(
                    initial = "100ms",
                    max = "10s",
                    multiplier = 2.5,
                    jitter = false
                ),
                concurrency = 4,
                dlq = true,
                timeout = "30s",
                park_keys = true,
                crate = "::x"
            ),
        )
        .expect("valid");
        cx.check().expect("no errors");
        assert_eq!(args.pattern.value(), "approval.*");
        assert_eq!(args.group.map(|g| g.value()).as_deref(), Some("billing"));
        assert_eq!(args.retries, Some(3));
        assert_eq!(
            args.backoff,
            Some(BackoffArgs::Exponential {
                initial: Some(100),
                max: Some(10_000),
                multiplier: Some(2.5),
                jitter: Some(false)
            })
        );
        assert_eq!(args.concurrency, Some(4));
        assert_eq!(args.dlq, Some(true));
        assert_eq!(args.timeout, Some(30_000));
        assert_eq!(args.park_keys, Some(true));
        assert!(args.krate.is_some());

        let cx = Ctxt::new();
        let args = parse_args(&cx, quote!("a.#", schedule = ["1m", "5m", "30m"])).expect("valid");
        cx.check().expect("no errors");
        assert_eq!(
            args.backoff,
            Some(BackoffArgs::Schedule(vec![60_000, 300_000, 1_800_000]))
        );
    }

    #[test]
    fn expansion_parses_and_keeps_the_body() {
        let out = expand(
            quote!(
                "approval.*",
                group = "billing",
                retries = 3,
                backoff(initial = "1s"),
                timeout = "5s"
            ),
            quote!(
                /// Docs.
                #[tracing::instrument]
                pub async fn on_granted(
                    ctx: Context,
                    env: Envelope<ApprovalGranted>,
                ) -> HandlerResult {
                    println!("{}", env.data.id);
                    Ok(())
                }
            ),
        );
        let file: syn::File = syn::parse2(out.clone()).expect("expansion parses");
        let text = out.to_string();
        assert!(
            matches!(&file.items[0], syn::Item::Struct(s) if s.ident == "on_granted"
            && matches!(s.vis, syn::Visibility::Public(_))
            && s.attrs.iter().any(|a| a.path().is_ident("doc"))
            && !s.attrs.iter().any(|a| a.path().segments.len() == 2)),
            "{text}"
        );
        assert!(
            text.contains("# [tracing :: instrument] async fn on_granted"),
            "{text}"
        );
        assert!(
            text.contains(". group (\"billing\") . retries (3)"),
            "{text}"
        );
        assert!(
            text.contains(
                "* __eventbus_initial = :: eventbus :: __private :: Duration :: from_millis (1000)"
            ),
            "{text}"
        );
        assert!(
            text.contains(". timeout (:: eventbus :: __private :: Duration :: from_millis (5000))"),
            "{text}"
        );
        assert!(text.contains("const_matches_all (\"approval.*\" , < ApprovalGranted as :: eventbus :: Payload > :: TYPES)"), "{text}");
        assert!(
            text.contains(":: eventbus :: __register_subscriber ! (__eventbus_make)"),
            "{text}"
        );
        assert!(!text.contains("compile_error"), "{text}");
    }

    #[test]
    fn untyped_envelope_has_no_type_check() {
        let out = expand(
            quote!("#"),
            quote!(
                async fn all(env: serde_json::Value) -> HandlerResult {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(!out.contains("const_matches_all"), "{out}");
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn collects_argument_errors() {
        let errs = compile_errors(
            quote!(
                "approval.#.x",
                colour = 1,
                retries = "3",
                timeout = "5 parsecs",
                backoff(initial = "1s"),
                schedule = ["1m"],
                concurrency = 0,
                dlq = 1
            ),
            handler(),
        );
        assert_eq!(errs.len(), 7, "{errs:#?}");
        assert!(
            errs[0].starts_with("invalid pattern: `#` is segment 2 of 3"),
            "{errs:#?}"
        );
        assert!(errs[1].starts_with("unknown attribute key `colour`, expected one of: group, retries, backoff, schedule, delayed, concurrency, dlq, timeout, park_keys, crate"), "{errs:#?}");
        assert!(
            errs[2].starts_with("expected an integer literal for `retries`"),
            "{errs:#?}"
        );
        assert!(
            errs[3].starts_with("invalid duration \"5 parsecs\" for `timeout`: unknown time unit"),
            "{errs:#?}"
        );
        assert!(
            errs[4].starts_with("`schedule` cannot be combined with `backoff`"),
            "{errs:#?}"
        );
        assert_eq!(errs[5], "`concurrency` must be at least 1");
        assert_eq!(errs[6], "expected `true` or `false` for `dlq`");
    }

    #[test]
    fn backoff_checks() {
        let errs = compile_errors(
            quote!(
                "a.b",
                backoff(initial = "10s", max = "1s", multiplier = 0.5, base = 1)
            ),
            handler(),
        );
        assert_eq!(
            errs,
            [
                "`multiplier` must be at least 1.0",
                "unknown attribute key `base`, expected one of: initial, max, multiplier, jitter",
                "`max` must not be shorter than `initial`",
            ]
        );
        let errs = compile_errors(quote!("a.b", schedule = []), handler());
        assert_eq!(errs, ["`schedule` needs at least one duration"]);
    }

    #[test]
    fn missing_or_extra_pattern() {
        assert_eq!(
            compile_errors(quote!(group = "g"), handler()),
            ["missing pattern: pass it first, such as `#[subscriber(\"approval.*\")]`"]
        );
        let errs = compile_errors(quote!("a.*", "b.*"), handler());
        assert!(
            errs[0].starts_with("only one pattern is allowed"),
            "{errs:?}"
        );
        let errs = compile_errors(quote!(approval.*), handler());
        assert_eq!(errs, ["expected `,`"]);
        let errs = compile_errors(quote!(approval), handler());
        assert!(
            errs[0].starts_with("unknown attribute key `approval`"),
            "{errs:?}"
        );
        assert!(errs[1].starts_with("missing pattern"), "{errs:?}");
    }

    #[test]
    fn signature_checks() {
        let cases = [
            (
                quote!(
                    fn f(env: Envelope<A>) -> HandlerResult {
                        Ok(())
                    }
                ),
                "a subscriber must be an `async fn`",
            ),
            (
                quote!(
                    async fn f() -> HandlerResult {
                        Ok(())
                    }
                ),
                "missing envelope parameter",
            ),
            (
                quote!(
                    async fn f(a: Context, b: Envelope<A>, c: u8) {}
                ),
                "too many parameters",
            ),
            (
                quote!(
                    async fn f<T>(env: Envelope<T>) {}
                ),
                "a subscriber cannot be generic",
            ),
            (
                quote!(
                    async fn f(env: Envelope<A>, ctx: Context) {}
                ),
                "the parameters are in the wrong order, swap them",
            ),
            (
                quote!(
                    async fn f(env: Envelope<A>, other: Envelope<B>) {}
                ),
                "the first of two parameters is the `Context`",
            ),
            (
                quote!(
                    async fn f(ctx: Context) {}
                ),
                "the envelope must be the last parameter",
            ),
            (
                quote!(
                    async fn f(env: Envelope<impl Payload>) {}
                ),
                "the envelope's payload must be a concrete type",
            ),
            (
                quote!(
                    struct S;
                ),
                "`#[subscriber]` can only be used on an `async fn`",
            ),
        ];
        for (item, expected) in cases {
            let errs = compile_errors(quote!("a.b"), item.clone());
            assert!(
                errs.iter().any(|e| e.starts_with(expected)),
                "{item}: {errs:?}"
            );
        }
    }
}
