//! `#[event(name = "...", version = N, topic = "...", key = field, upcast(from = N, with = f),
//! crate = "...")]` on a struct: re-emits the struct and implements `Event` and `Payload` for
//! it.
//!
//! The argument parser is shared with `#[catalog]`, which reads the same attribute on every
//! struct of its module.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Expr, Fields, Ident, Item, ItemStruct, LitInt, LitStr, Meta, Path};

use crate::attr::{self, Seen};
use crate::ctxt::{item_with_error, Ctxt};
use crate::names;

/// The keys `#[event]` accepts.
pub(crate) const KEYS: &[&str] = &["name", "version", "topic", "key", "upcast", "crate"];

/// The keys of one `upcast(...)`.
const UPCAST_KEYS: &[&str] = &["from", "with"];

/// One `upcast(from = N, with = path)`: the function turning a version-`from` payload into a
/// version-`from + 1` one.
pub(crate) struct Upcast {
    /// The version it reads.
    pub(crate) from: u32,
    /// Where `from` was written, for errors.
    pub(crate) from_lit: LitInt,
    /// The function.
    pub(crate) with: Path,
}

/// The arguments of one `#[event(...)]`, checked on their own (the `key` field is checked
/// against the struct separately).
pub(crate) struct EventArgs {
    /// The event name, when given and valid.
    pub(crate) name: Option<LitStr>,
    /// The schema version, at least 1.
    pub(crate) version: u32,
    /// The topic, if not the name; valid.
    pub(crate) topic: Option<LitStr>,
    /// The partition key field.
    pub(crate) key: Option<Ident>,
    /// The upcasters, one per version step, in the order written.
    pub(crate) upcasts: Vec<Upcast>,
    /// The `crate = "..."` override.
    pub(crate) krate: Option<TokenStream>,
}

impl EventArgs {
    /// The topic in effect (empty only without a valid name, which is an error).
    pub(crate) fn topic_value(&self) -> String {
        match (&self.topic, &self.name) {
            (Some(topic), _) | (None, Some(topic)) => topic.value(),
            (None, None) => String::new(),
        }
    }
}

/// Parses and checks the arguments of `#[event(...)]`, recording every problem in `cx`.
/// Returns `None` when the arguments do not parse at all. `missing` is where a missing name is
/// reported (the attribute).
pub(crate) fn parse_args(cx: &Ctxt, args: TokenStream, missing: Span) -> Option<EventArgs> {
    let metas = match attr::parse_metas(args) {
        Ok(metas) => metas,
        Err(err) => {
            cx.syn_error(err);
            return None;
        }
    };
    let mut seen = Seen::default();
    let mut name = None;
    let mut name_given = false;
    let mut version = 1;
    let mut topic = None;
    let mut key = None;
    let mut upcasts = Vec::new();
    let mut krate = None;
    for meta in &metas {
        let Some(k) = attr::key_of(meta).filter(|k| KEYS.contains(&k.as_str())) else {
            attr::unknown_key(cx, meta, KEYS);
            continue;
        };
        // One `upcast(...)` per version step: the key repeats.
        if k == "upcast" {
            upcasts.extend(parse_upcast(cx, meta));
            continue;
        }
        if !seen.first(cx, meta, &k) {
            continue;
        }
        match k.as_str() {
            "name" => {
                name_given = true;
                let example = "name = \"approval.granted\"";
                let Some(expr) = attr::value(cx, meta, "name", example) else {
                    continue;
                };
                let Some(lit) = attr::string(cx, expr, "name", example) else {
                    continue;
                };
                match names::check_name(&lit.value()) {
                    Ok(()) => name = Some(lit),
                    Err(message) => {
                        cx.error_spanned_by(&lit, format!("invalid event name: {message}"))
                    }
                }
            }
            "version" => {
                let example = "version = 1";
                let Some(expr) = attr::value(cx, meta, "version", example) else {
                    continue;
                };
                match attr::integer::<u32>(cx, expr, "version", example) {
                    Some(0) => cx.error_spanned_by(expr, "`version` starts at 1"),
                    Some(v) => version = v,
                    None => {}
                }
            }
            "topic" => {
                let example = "topic = \"approvals\"";
                let Some(expr) = attr::value(cx, meta, "topic", example) else {
                    continue;
                };
                let Some(lit) = attr::string(cx, expr, "topic", example) else {
                    continue;
                };
                match names::check_topic(&lit.value()) {
                    Ok(()) => topic = Some(lit),
                    Err(message) => cx.error_spanned_by(&lit, format!("invalid topic: {message}")),
                }
            }
            "key" => {
                let Some(expr) = attr::value(cx, meta, "key", "key = approval_id") else {
                    continue;
                };
                key = key_field(cx, expr);
            }
            _ => krate = attr::crate_path(cx, meta),
        }
    }
    if !name_given {
        cx.error_at(
            missing,
            "missing event name: add `name = \"domain.action\"`, such as \
             `#[event(name = \"approval.granted\")]`",
        );
    }
    check_upcasts(cx, &upcasts, version);
    Some(EventArgs {
        name,
        version,
        topic,
        key,
        upcasts,
        krate,
    })
}

/// Parses `upcast(from = 1, with = path::to::function)`.
fn parse_upcast(cx: &Ctxt, meta: &Meta) -> Option<Upcast> {
    let example = "upcast(from = 1, with = order_created_v1_to_v2)";
    let Meta::List(list) = meta else {
        cx.error_spanned_by(meta, format!("expected `{example}`"));
        return None;
    };
    let metas = match attr::parse_metas(list.tokens.clone()) {
        Ok(metas) => metas,
        Err(err) => {
            cx.syn_error(err);
            return None;
        }
    };
    let mut seen = Seen::default();
    let mut from = None;
    let mut with = None;
    for inner in &metas {
        let Some(k) = attr::key_of(inner).filter(|k| UPCAST_KEYS.contains(&k.as_str())) else {
            attr::unknown_key(cx, inner, UPCAST_KEYS);
            continue;
        };
        if !seen.first(cx, inner, &k) {
            continue;
        }
        let Some(expr) = attr::value(cx, inner, &k, example) else {
            continue;
        };
        if k == "from" {
            match expr {
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(lit),
                    ..
                }) => match lit.base10_parse::<u32>() {
                    Ok(0) => cx.error_spanned_by(lit, "versions start at 1"),
                    Ok(v) => from = Some((v, lit.clone())),
                    Err(err) => cx.syn_error(err),
                },
                other => cx.error_spanned_by(
                    other,
                    "expected the version the upcaster reads, such as `from = 1`",
                ),
            }
        } else {
            match expr {
                Expr::Path(path) => with = Some(path.path.clone()),
                other => cx.error_spanned_by(
                    other,
                    "expected the path of a function `fn(Old) -> New`, such as \
                     `with = order_created_v1_to_v2`",
                ),
            }
        }
    }
    match (from, with) {
        (Some((from, from_lit)), Some(with)) => Some(Upcast {
            from,
            from_lit,
            with,
        }),
        (None, _) if !seen.has("from") => {
            cx.error_spanned_by(meta, format!("missing `from = N` in `{example}`"));
            None
        }
        (_, None) if !seen.has("with") => {
            cx.error_spanned_by(meta, format!("missing `with = function` in `{example}`"));
            None
        }
        _ => None,
    }
}

/// Each step is claimed once, and only steps below the event's own version exist.
fn check_upcasts(cx: &Ctxt, upcasts: &[Upcast], version: u32) {
    for (i, upcast) in upcasts.iter().enumerate() {
        if upcast.from >= version {
            cx.error_spanned_by(
                &upcast.from_lit,
                format!(
                    "an upcaster reads an older version: `from = {}` is not below the event's \
                     `version = {version}`",
                    upcast.from
                ),
            );
        }
        if let Some(first) = upcasts[..i].iter().find(|u| u.from == upcast.from) {
            cx.error_spanned_by(
                &upcast.from_lit,
                format!(
                    "two upcasters claim the step from version {} to {}: `{}` and `{}`",
                    upcast.from,
                    upcast.from + 1,
                    first.with.to_token_stream().to_string().replace(' ', ""),
                    upcast.with.to_token_stream().to_string().replace(' ', ""),
                ),
            );
        }
    }
}

/// The field named by `key = field`.
fn key_field(cx: &Ctxt, expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => {
            if let Some(ident) = path.path.get_ident() {
                return Some(ident.clone());
            }
        }
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => {
            cx.error_spanned_by(
                s,
                format!(
                    "`key` takes the field name without quotes: `key = {}`",
                    s.value()
                ),
            );
            return None;
        }
        _ => {}
    }
    cx.error_spanned_by(
        expr,
        "expected a field name for `key`, such as `key = approval_id`",
    );
    None
}

/// Expands `#[event(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let parsed = parse_args(&cx, args, Span::call_site());
    let strukt = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Struct(strukt)) => Some(strukt),
        Ok(other) => {
            cx.error_spanned_by(item_head(&other), not_a_struct(&other));
            None
        }
        Err(err) => {
            cx.syn_error(err);
            None
        }
    };
    let model = strukt
        .as_ref()
        .and_then(|s| check_struct(&cx, s, parsed.as_ref()));
    match (cx.check(), parsed, model) {
        (Ok(()), Some(args), Some(model)) => {
            let generated = codegen(&args, &model);
            quote!(#item #generated)
        }
        (Err(err), _, _) => item_with_error(item, err),
        // Unreachable: unparsable arguments or a missing struct are always recorded as errors.
        (Ok(()), _, _) => item,
    }
}

/// The tokens naming an item's kind and name, where "not a struct" is reported.
pub(crate) fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Enum(e) => pair(&e.enum_token, &e.ident),
        Item::Union(u) => pair(&u.union_token, &u.ident),
        Item::Fn(f) => pair(&f.sig.fn_token, &f.sig.ident),
        Item::Trait(t) => pair(&t.trait_token, &t.ident),
        Item::Type(t) => pair(&t.type_token, &t.ident),
        Item::Mod(m) => pair(&m.mod_token, &m.ident),
        Item::Const(c) => pair(&c.const_token, &c.ident),
        Item::Static(s) => pair(&s.static_token, &s.ident),
        other => other.to_token_stream(),
    }
}

fn pair(a: &impl ToTokens, b: &impl ToTokens) -> TokenStream {
    quote!(#a #b)
}

fn not_a_struct(item: &Item) -> &'static str {
    match item {
        Item::Enum(_) => {
            "`#[event]` can only be used on a struct; to handle several event types in one \
             subscriber, `#[derive(EventGroup)]` on an enum whose variants each hold an event \
             struct"
        }
        _ => "`#[event]` can only be used on a struct",
    }
}

/// What the code generation needs from the struct.
struct Model {
    ident: Ident,
    /// Field name and type text.
    fields: Vec<(String, String)>,
}

fn check_struct(cx: &Ctxt, strukt: &ItemStruct, args: Option<&EventArgs>) -> Option<Model> {
    let generics = &strukt.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        cx.error_spanned_by(
            generics,
            "an event struct cannot be generic: its name identifies one concrete payload",
        );
    }
    let fields = strukt
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = f
                .ident
                .as_ref()
                .map_or_else(|| i.to_string(), ToString::to_string);
            let ty = &f.ty;
            (name, quote!(#ty).to_string())
        })
        .collect();
    if let Some(key) = args.and_then(|a| a.key.as_ref()) {
        match &strukt.fields {
            Fields::Named(named) => {
                let names: Vec<&Ident> = named.named.iter().filter_map(|f| f.ident.as_ref()).collect();
                if !names.contains(&key) {
                    let available = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>();
                    cx.error_spanned_by(
                        key,
                        format!(
                            "`{}` has no field `{key}` to use as partition key; its fields are {}",
                            strukt.ident,
                            if available.is_empty() { "none".to_owned() } else { available.join(", ") }
                        ),
                    );
                }
            }
            _ => cx.error_spanned_by(
                key,
                format!(
                    "`key` names a field, so `{}` needs named fields (`struct {} {{ {key}: ... }}`)",
                    strukt.ident, strukt.ident
                ),
            ),
        }
    }
    Some(Model {
        ident: strukt.ident.clone(),
        fields,
    })
}

fn codegen(args: &EventArgs, model: &Model) -> TokenStream {
    let krate = attr::krate_or_default(args.krate.clone());
    let ident = &model.ident;
    let name = args.name.as_ref().map(LitStr::value).unwrap_or_default();
    let version = proc_macro2::Literal::u32_unsuffixed(args.version);
    let topic = args.topic_value();
    let key_field = match &args.key {
        Some(key) => {
            let key = key.to_string();
            quote!(::core::option::Option::Some(#key))
        }
        None => quote!(::core::option::Option::None),
    };
    let partition_key = match &args.key {
        Some(key) => quote! {
            ::core::option::Option::Some(::std::string::ToString::to_string(&self.#key))
        },
        None => quote!(::core::option::Option::None),
    };
    let fields = model
        .fields
        .iter()
        .map(|(name, ty)| quote!(#krate::FieldInfo { name: #name, ty: #ty }));
    // Spanned at the struct's name so a missing `Serialize`/`Deserialize` derive is reported
    // there rather than on the attribute.
    let span = ident.span();
    let event_impl = quote_spanned! {span=>
        #[automatically_derived]
        impl #krate::Event for #ident
    };
    let decode_call = quote_spanned! {span=>
        #krate::__private::decode_event::<Self>
    };
    // Each step is a plain function over JSON that calls the user's typed function; a
    // function of the wrong shape is reported at its path.
    let upcasts = args.upcasts.iter().map(|upcast| {
        let from = proc_macro2::Literal::u32_unsuffixed(upcast.from);
        let with = &upcast.with;
        let call = quote_spanned! {with.span()=>
            #krate::__private::upcast_with(__eventbus_data, #with)
        };
        quote! {
            #krate::Upcaster {
                from: #from,
                step: {
                    fn __eventbus_step(
                        __eventbus_data: #krate::__private::serde_json::Value,
                    ) -> ::core::result::Result<
                        #krate::__private::serde_json::Value,
                        #krate::__private::serde_json::Error,
                    > {
                        #call
                    }
                    __eventbus_step
                },
            }
        }
    });
    quote! {
        const _: () = {
            #event_impl {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                const TOPIC: &'static str = #topic;
                const KEY_FIELD: ::core::option::Option<&'static str> = #key_field;
                const FIELDS: &'static [#krate::FieldInfo] = &[#(#fields),*];
                const UPCASTERS: &'static [#krate::Upcaster] = &[#(#upcasts),*];

                fn partition_key(&self) -> ::core::option::Option<::std::string::String> {
                    #partition_key
                }
            }

            #[automatically_derived]
            impl #krate::Payload for #ident {
                const TYPES: &'static [&'static str] = &[#name];
                const TOPICS: &'static [&'static str] = &[#topic];
                const VERSIONS: &'static [u32] = &[#version];

                fn decode(
                    __eventbus_event_type: &str,
                    __eventbus_version: u32,
                    __eventbus_data: &#krate::__private::RawValue,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    #decode_call(__eventbus_event_type, __eventbus_version, __eventbus_data)
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(args: TokenStream, item: TokenStream) -> Vec<String> {
        let file: syn::File = syn::parse2(expand(args, item)).expect("output parses");
        file.items
            .iter()
            .filter_map(|i| match i {
                Item::Macro(m) => m.mac.parse_body::<LitStr>().ok().map(|l| l.value()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn expands_to_item_and_impls() {
        let out = expand(
            quote!(
                name = "approval.granted",
                version = 2,
                topic = "approvals",
                key = approval_id
            ),
            quote!(
                struct ApprovalGranted {
                    approval_id: String,
                    amount: Option<u64>,
                }
            ),
        );
        let file: syn::File = syn::parse2(out.clone()).expect("expansion parses");
        assert_eq!(file.items.len(), 2, "{out}");
        let text = out.to_string();
        assert!(
            text.contains("impl :: eventbus :: Event for ApprovalGranted"),
            "{text}"
        );
        assert!(text.contains("const VERSION : u32 = 2"), "{text}");
        assert!(
            text.contains("const TOPIC : & 'static str = \"approvals\""),
            "{text}"
        );
        assert!(
            text.contains("name : \"amount\" , ty : \"Option < u64 >\""),
            "{text}"
        );
        assert!(text.contains("to_string (& self . approval_id)"), "{text}");
        assert!(!text.contains("compile_error"), "{text}");
    }

    #[test]
    fn defaults_and_crate_override() {
        let out = expand(
            quote!(name = "user.invited", crate = "::re::eventbus"),
            quote!(
                pub struct UserInvited;
            ),
        )
        .to_string();
        assert!(
            out.contains("impl :: re :: eventbus :: Event for UserInvited"),
            "{out}"
        );
        assert!(out.contains("const VERSION : u32 = 1"), "{out}");
        assert!(
            out.contains("const TOPIC : & 'static str = \"user.invited\""),
            "{out}"
        );
        assert!(out.contains("KEY_FIELD : :: core :: option :: Option < & 'static str > = :: core :: option :: Option :: None"), "{out}");
    }

    #[test]
    fn collects_every_error_and_keeps_the_item() {
        let item = quote!(
            struct S {
                a: u8,
            }
        );
        let out = expand(
            quote!(
                name = "a..b",
                version = 0,
                topic = "a/b",
                key = missing,
                colour = "red",
                name = "x"
            ),
            item,
        );
        let text = out.to_string();
        assert!(text.starts_with("struct S"), "{text}");
        let errors = errors(
            quote!(
                name = "a..b",
                version = 0,
                topic = "a/b",
                key = missing,
                colour = "red",
                name = "x"
            ),
            quote!(
                struct S {
                    a: u8,
                }
            ),
        );
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(
            errors[0].contains("segment 2 of event name `a..b` is empty"),
            "{errors:#?}"
        );
        assert!(errors[1].contains("`version` starts at 1"), "{errors:#?}");
        assert!(errors[2].contains("character '/' in topic"), "{errors:#?}");
        assert!(
            errors[3].contains(
                "unknown attribute key `colour`, expected one of: name, version, topic, key, upcast, crate"
            ),
            "{errors:#?}"
        );
        assert!(
            errors[4].contains("duplicate attribute key `name`"),
            "{errors:#?}"
        );
        assert!(
            errors[5].contains("`S` has no field `missing`"),
            "{errors:#?}"
        );
    }

    #[test]
    fn key_must_name_a_field() {
        let errs = errors(
            quote!(name = "a.b", key = nope),
            quote!(
                struct S {
                    a: u8,
                    b: u8,
                }
            ),
        );
        assert_eq!(
            errs,
            ["`S` has no field `nope` to use as partition key; its fields are `a`, `b`"]
        );
        let errs = errors(
            quote!(name = "a.b", key = "a"),
            quote!(
                struct S {
                    a: u8,
                }
            ),
        );
        assert_eq!(
            errs,
            ["`key` takes the field name without quotes: `key = a`"]
        );
        let errs = errors(
            quote!(name = "a.b", key = a),
            quote!(
                struct S(u8);
            ),
        );
        assert!(errs[0].contains("needs named fields"), "{errs:?}");
    }

    #[test]
    fn missing_name_and_wrong_items() {
        assert_eq!(
            errors(quote!(version = 1), quote!(struct S;)),
            ["missing event name: add `name = \"domain.action\"`, such as `#[event(name = \"approval.granted\")]`"]
        );
        let errs = errors(
            quote!(name = "a.b"),
            quote!(
                enum E {
                    A,
                }
            ),
        );
        assert!(
            errs[0].starts_with("`#[event]` can only be used on a struct; to handle"),
            "{errs:?}"
        );
        let errs = errors(
            quote!(name = "a.b"),
            quote!(
                struct S<T>(T);
            ),
        );
        assert!(errs[0].contains("cannot be generic"), "{errs:?}");
    }
}
