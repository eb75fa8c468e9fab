//! `#[saga(name = "...", correlate = field, crate = "...")]` on the `impl` block of a saga's
//! state type: methods marked `#[start]` or `#[handle]` are its steps, one per event type.
//! Re-emits the block without the markers and implements `Saga` for the type.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Meta, PathArguments,
    Type,
};

use crate::attr::{self, Seen};
use crate::ctxt::{item_with_error, Ctxt};
use crate::names;

/// The keys `#[saga]` accepts.
pub(crate) const KEYS: &[&str] = &["name", "correlate", "crate"];

/// The keys of `#[start(...)]` / `#[handle(...)]`.
const STEP_KEYS: &[&str] = &["correlate"];

/// The checked arguments of `#[saga(...)]`.
struct SagaArgs {
    name: Option<LitStr>,
    correlate: Option<Ident>,
    krate: Option<TokenStream>,
}

/// One step: the method, the event type it handles, whether it starts the saga, and the
/// field it correlates by.
struct Step {
    method: Ident,
    event: Type,
    starts: bool,
    correlate: Option<Ident>,
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> SagaArgs {
    let mut out = SagaArgs {
        name: None,
        correlate: None,
        krate: None,
    };
    let metas = match attr::parse_metas(args) {
        Ok(metas) => metas,
        Err(err) => {
            cx.syn_error(err);
            return out;
        }
    };
    let mut seen = Seen::default();
    for meta in &metas {
        let Some(k) = attr::key_of(meta).filter(|k| KEYS.contains(&k.as_str())) else {
            attr::unknown_key(cx, meta, KEYS);
            continue;
        };
        if !seen.first(cx, meta, &k) {
            continue;
        }
        match k.as_str() {
            "name" => {
                let example = "name = \"order-fulfilment\"";
                let Some(expr) = attr::value(cx, meta, "name", example) else {
                    continue;
                };
                let Some(lit) = attr::string(cx, expr, "name", example) else {
                    continue;
                };
                match names::check_name(&lit.value()) {
                    Ok(()) => out.name = Some(lit),
                    Err(message) => {
                        cx.error_spanned_by(&lit, format!("invalid saga name: {message}"))
                    }
                }
            }
            "correlate" => out.correlate = correlate_field(cx, meta),
            _ => out.krate = attr::crate_path(cx, meta),
        }
    }
    if !seen.has("name") {
        cx.error_at(
            Span::call_site(),
            "missing saga name: add `name = \"...\"`, such as `#[saga(name = \"checkout\", \
             correlate = order_id)]`",
        );
    }
    if !seen.has("correlate") {
        cx.error_at(
            Span::call_site(),
            "missing correlation field: add `correlate = field`, the field of every handled \
             event that names the saga instance, such as `correlate = order_id`",
        );
    }
    out
}

/// The field of `correlate = field`.
fn correlate_field(cx: &Ctxt, meta: &Meta) -> Option<Ident> {
    let expr = attr::value(cx, meta, "correlate", "correlate = order_id")?;
    match expr {
        syn::Expr::Path(path) if path.path.get_ident().is_some() => path.path.get_ident().cloned(),
        other => {
            cx.error_spanned_by(
                other,
                "expected a field name of the events, such as `correlate = order_id`",
            );
            None
        }
    }
}

/// The step markers of `method`: `Some((starts, correlate override))` when it is a step.
/// Removes them from the method.
fn take_marker(cx: &Ctxt, method: &mut ImplItemFn) -> Option<(bool, Option<Ident>)> {
    let mut found: Option<(bool, Option<Ident>)> = None;
    let mut kept = Vec::with_capacity(method.attrs.len());
    for attr in method.attrs.drain(..) {
        let starts = if attr.path().is_ident("start") {
            true
        } else if attr.path().is_ident("handle") {
            false
        } else {
            kept.push(attr);
            continue;
        };
        if found.is_some() {
            cx.error_spanned_by(&attr, "a step is either `#[start]` or `#[handle]`, once");
            continue;
        }
        let mut correlate = None;
        if let Meta::List(list) = &attr.meta {
            match attr::parse_metas(list.tokens.clone()) {
                Ok(metas) => {
                    let mut seen = Seen::default();
                    for meta in &metas {
                        let Some(k) =
                            attr::key_of(meta).filter(|k| STEP_KEYS.contains(&k.as_str()))
                        else {
                            attr::unknown_key(cx, meta, STEP_KEYS);
                            continue;
                        };
                        if seen.first(cx, meta, &k) {
                            correlate = correlate_field(cx, meta);
                        }
                    }
                }
                Err(err) => cx.syn_error(err),
            }
        }
        found = Some((starts, correlate));
    }
    method.attrs = kept;
    found
}

/// The `E` of a step's `&Envelope<E>` parameter, after checking the method's shape:
/// `fn name(&mut self, event: &Envelope<E>, saga: &mut SagaContext) -> HandlerResult`.
fn step_event(cx: &Ctxt, method: &ImplItemFn) -> Option<Type> {
    let sig = &method.sig;
    let shape = "a saga step is `fn name(&mut self, event: &Envelope<E>, saga: &mut \
                 SagaContext) -> HandlerResult`";
    if let Some(asyncness) = &sig.asyncness {
        cx.error_spanned_by(
            asyncness,
            format!(
                "saga steps are not `async`: they change the state and say what to send, and \
                 the saga commits it; {shape}"
            ),
        );
    }
    if !sig.generics.params.is_empty() {
        cx.error_spanned_by(
            &sig.generics,
            format!("a saga step cannot be generic; {shape}"),
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_some() => {}
        Some(other) => {
            cx.error_spanned_by(
                other,
                format!("the first parameter is `&mut self`; {shape}"),
            );
            return None;
        }
        None => {
            cx.error_spanned_by(&sig.ident, format!("missing parameters; {shape}"));
            return None;
        }
    }
    let event = match inputs.next() {
        Some(FnArg::Typed(typed)) => envelope_payload(&typed.ty),
        _ => None,
    };
    let Some(event) = event else {
        cx.error_spanned_by(
            &sig.inputs,
            format!("the second parameter is the event, `&Envelope<E>`; {shape}"),
        );
        return None;
    };
    if inputs.next().is_none() || inputs.next().is_some() {
        cx.error_spanned_by(
            &sig.inputs,
            format!("a step takes the event and the saga context; {shape}"),
        );
        return None;
    }
    Some(event)
}

/// `E` in `&Envelope<E>` (any path ending in `Envelope`).
fn envelope_payload(ty: &Type) -> Option<Type> {
    let Type::Reference(reference) = ty else {
        return None;
    };
    if reference.mutability.is_some() {
        return None;
    }
    let Type::Path(path) = &*reference.elem else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Envelope" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first() {
        Some(GenericArgument::Type(event)) if args.args.len() == 1 => Some(event.clone()),
        _ => None,
    }
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = parse_args(&cx, args);
    let mut block = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Impl(block)) => block,
        Ok(other) => {
            cx.error_spanned_by(
                crate::event::item_head(&other),
                "`#[saga]` goes on the `impl` block of the saga's state type, whose methods \
                 marked `#[start]` and `#[handle]` are its steps",
            );
            return match cx.check() {
                Err(err) => item_with_error(item, err),
                Ok(()) => item,
            };
        }
        Err(err) => return item_with_error(item, err),
    };
    let steps = check_block(&cx, &mut block);
    match cx.check() {
        Ok(()) => codegen(&args, &block, &steps),
        // The block with its markers removed, so they add no "unknown attribute" errors.
        Err(err) => item_with_error(block.into_token_stream(), err),
    }
}

fn check_block(cx: &Ctxt, block: &mut ItemImpl) -> Vec<Step> {
    if let Some((_, path, _)) = &block.trait_ {
        cx.error_spanned_by(
            path,
            "`#[saga]` goes on an inherent `impl` block (`impl State { ... }`), not a trait impl",
        );
    }
    if !block.generics.params.is_empty() {
        cx.error_spanned_by(&block.generics, "a saga's state type cannot be generic");
    }
    let mut steps: Vec<Step> = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let Some((starts, correlate)) = take_marker(cx, method) else {
            continue;
        };
        let Some(event) = step_event(cx, method) else {
            continue;
        };
        let key = event.to_token_stream().to_string();
        if let Some(first) = steps
            .iter()
            .find(|s| s.event.to_token_stream().to_string() == key)
        {
            cx.error_spanned_by(
                &event,
                format!(
                    "`{}` already handles `{}`: one step per event type",
                    first.method,
                    key.replace(' ', "")
                ),
            );
            continue;
        }
        steps.push(Step {
            method: method.sig.ident.clone(),
            event,
            starts,
            correlate,
        });
    }
    if !steps.iter().any(|s| s.starts) {
        cx.error_spanned_by(
            &block.self_ty,
            "a saga needs a `#[start]` step: the event that creates an instance",
        );
    }
    steps
}

fn codegen(args: &SagaArgs, block: &ItemImpl, steps: &[Step]) -> TokenStream {
    let krate = attr::krate_or_default(args.krate.clone());
    let self_ty = &block.self_ty;
    let name = args.name.as_ref().map(LitStr::value).unwrap_or_default();
    let steps = steps.iter().map(|step| {
        let event = &step.event;
        let method = &step.method;
        let entry = if step.starts {
            quote!(#krate::saga::Entry::Starts)
        } else {
            quote!(#krate::saga::Entry::Continues)
        };
        // The field access carries the event type's span: an event without the field is
        // reported at the step's parameter.
        let field = step
            .correlate
            .as_ref()
            .or(args.correlate.as_ref())
            .map(|f| Ident::new(&f.to_string(), event.span()));
        let correlate = quote_spanned! {event.span()=>
            {
                fn __eventbus_correlate(__eventbus_event: &#event) -> ::std::string::String {
                    ::std::string::ToString::to_string(&__eventbus_event.#field)
                }
                __eventbus_correlate
            }
        };
        quote! {
            #krate::saga::step::<Self, #event, __EventbusDb>(#entry, #correlate, Self::#method)
        }
    });
    quote! {
        #block

        const _: () = {
            #[automatically_derived]
            impl #krate::saga::Saga for #self_ty {
                const NAME: &'static str = #name;

                fn subscriptions<__EventbusDb: #krate::outbox::SqlDatabase>(
                ) -> ::std::vec::Vec<#krate::Subscription> {
                    ::std::vec![#(#steps),*]
                }
            }
        };
    }
}
