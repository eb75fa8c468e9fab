//! `#[catalog]` on an inline module: collects the module's `#[event]` structs, rejects
//! duplicate event names at compile time, and adds `CATALOG` (one `CatalogEntry` per event)
//! and a typed `Publisher` with one method per event to the module.

use std::collections::HashMap;

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemMod, LitStr, UseTree, Visibility};

use crate::attr::{self, Seen};
use crate::ctxt::{item_with_error, Ctxt};
use crate::event;
use crate::names;

/// The keys `#[catalog]` accepts.
const KEYS: &[&str] = &["crate"];

/// The names the macro adds to the module.
const GENERATED: &[&str] = &["CATALOG", "Publisher"];

/// Publisher methods that exist whatever the events.
const RESERVED_METHODS: &[&str] = &["new", "inner"];

/// One event of the module.
struct Entry {
    ident: Ident,
    vis: Visibility,
    name: LitStr,
    version: u32,
    topic: String,
    method: Ident,
}

/// Expands `#[catalog(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let krate = parse_args(&cx, args);
    let module = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Mod(module)) => Some(module),
        Ok(other) => {
            cx.error_spanned_by(
                event::item_head(&other),
                "`#[catalog]` can only be used on an inline module: `mod events { ... }`",
            );
            None
        }
        Err(err) => {
            cx.syn_error(err);
            None
        }
    };
    let Some(module) = module else {
        return item_with_error(item, cx.check().err().unwrap_or_else(unexpected));
    };
    let Some((_, items)) = &module.content else {
        let (token, ident, semi) = (&module.mod_token, &module.ident, &module.semi);
        cx.error_spanned_by(
            quote!(#token #ident #semi),
            format!(
                "`#[catalog]` needs the module's items inline, to find its events: write \
                 `mod {ident} {{ ... }}` instead of `mod {ident};`"
            ),
        );
        return item_with_error(item, cx.check().err().unwrap_or_else(unexpected));
    };
    check_generated_names(&cx, items);
    let entries = collect(&cx, items);
    // Code is generated for the entries that are valid even when others are not, so that one
    // mistake does not cascade into "no method named ..." errors at every call site.
    let generated = codegen(&module, &attr::krate_or_default(krate), &entries);
    let module = with_items(module, generated);
    match cx.check() {
        Ok(()) => module,
        Err(err) => item_with_error(module, err),
    }
}

/// The error of a state the checks above rule out; never shown in practice.
fn unexpected() -> syn::Error {
    syn::Error::new(Span::call_site(), "`#[catalog]` failed without a reason")
}

fn parse_args(cx: &Ctxt, args: TokenStream) -> Option<TokenStream> {
    let metas = match attr::parse_metas(args) {
        Ok(metas) => metas,
        Err(err) => {
            cx.syn_error(err);
            return None;
        }
    };
    let mut krate = None;
    let mut seen = Seen::default();
    for meta in &metas {
        match attr::key_of(meta).as_deref() {
            Some("crate") if seen.first(cx, meta, "crate") => krate = attr::crate_path(cx, meta),
            Some("crate") => {}
            _ => attr::unknown_key(cx, meta, KEYS),
        }
    }
    krate
}

/// Reports items of the module that would clash with `CATALOG` or `Publisher`.
fn check_generated_names(cx: &Ctxt, items: &[Item]) {
    for item in items {
        let idents: Vec<&Ident> = match item {
            Item::Struct(i) => vec![&i.ident],
            Item::Enum(i) => vec![&i.ident],
            Item::Union(i) => vec![&i.ident],
            Item::Type(i) => vec![&i.ident],
            Item::Trait(i) => vec![&i.ident],
            Item::Const(i) => vec![&i.ident],
            Item::Static(i) => vec![&i.ident],
            Item::Fn(i) => vec![&i.sig.ident],
            Item::Mod(i) => vec![&i.ident],
            Item::Use(i) => {
                let mut out = Vec::new();
                use_names(&i.tree, &mut out);
                out
            }
            _ => Vec::new(),
        };
        for ident in idents {
            if GENERATED.iter().any(|g| ident == g) {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "`#[catalog]` adds `{ident}` to this module, so this name clashes with it; \
                         rename this one (for an import: `use ...::{ident} as Other{ident};`)"
                    ),
                );
            }
        }
    }
}

/// The names a `use` tree brings into scope (globs bring none that could clash).
fn use_names<'a>(tree: &'a UseTree, out: &mut Vec<&'a Ident>) {
    match tree {
        UseTree::Path(path) => use_names(&path.tree, out),
        UseTree::Name(name) => out.push(&name.ident),
        UseTree::Rename(rename) => out.push(&rename.rename),
        UseTree::Group(group) => group.items.iter().for_each(|t| use_names(t, out)),
        UseTree::Glob(_) => {}
    }
}

/// Reads the `#[event(...)]` structs of the module, in order.
fn collect(cx: &Ctxt, items: &[Item]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut by_name: HashMap<String, Ident> = HashMap::new();
    let mut by_method: HashMap<String, (String, Ident)> = HashMap::new();
    for item in items {
        let Item::Struct(strukt) = item else { continue };
        for attribute in strukt.attrs.iter().filter(|a| attr::is_event_attr(a)) {
            let Ok(list) = attribute.meta.require_list() else {
                continue;
            };
            // `#[event]` reports its own mistakes when it expands; reporting them here as well
            // would show each twice, so they are dropped and the struct is left out.
            let scratch = Ctxt::new();
            let parsed = event::parse_args(&scratch, list.tokens.clone(), attribute.span());
            let Some(args) = parsed else { continue };
            let Some(lit) = args.name.clone() else {
                continue;
            };
            let name = lit.value();
            if let Some(first) = by_name.get(&name) {
                cx.error_spanned_by(
                    &lit,
                    format!("event name `{name}` is already defined by `{first}`"),
                );
                continue;
            }
            by_name.insert(name.clone(), strukt.ident.clone());
            let Some(method) = method_ident(cx, &lit) else {
                continue;
            };
            let method_text = method.to_string();
            if let Some((other, ident)) = by_method.get(&method_text) {
                cx.error_spanned_by(
                    &lit,
                    format!(
                        "the publisher method for `{name}` would be `{method_text}`, the same as \
                         for `{other}` (`{ident}`); rename one of the events"
                    ),
                );
                continue;
            }
            by_method.insert(method_text, (name, strukt.ident.clone()));
            entries.push(Entry {
                ident: strukt.ident.clone(),
                vis: strukt.vis.clone(),
                topic: args.topic_value(),
                version: args.version,
                name: lit,
                method,
            });
        }
    }
    entries
}

/// The publisher method for an event name.
fn method_ident(cx: &Ctxt, name: &LitStr) -> Option<Ident> {
    let method = names::method_name(&name.value());
    let span = name.span();
    if RESERVED_METHODS.contains(&method.as_str()) {
        cx.error_spanned_by(
            name,
            format!(
                "the publisher method for `{}` would be `{method}`, which `Publisher` already \
                 has; rename the event",
                name.value()
            ),
        );
        return None;
    }
    let starts_ok = method
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_ok || ["_", "self", "super", "crate", "Self"].contains(&method.as_str()) {
        cx.error_spanned_by(
            name,
            format!(
                "cannot name a publisher method after `{}`: `{method}` is not an identifier; \
                 start the event name with a letter",
                name.value()
            ),
        );
        return None;
    }
    if syn::parse_str::<Ident>(&method).is_ok() {
        Some(Ident::new(&method, span))
    } else {
        // A keyword such as `type` or `match`.
        Some(Ident::new_raw(&method, span))
    }
}

/// The visibility of the generated items: `pub` in a public module, `pub(crate)` otherwise
/// (so `unreachable_pub` stays quiet).
fn outer_vis(module: &ItemMod) -> TokenStream {
    match module.vis {
        Visibility::Public(_) => quote!(pub),
        _ => quote!(pub(crate)),
    }
}

fn codegen(module: &ItemMod, krate: &TokenStream, entries: &[Entry]) -> Vec<Item> {
    let vis = outer_vis(module);
    let catalog = entries.iter().map(|e| {
        let ident = &e.ident;
        quote!(#krate::CatalogEntry::of::<#ident>())
    });
    let methods = entries.iter().map(|e| {
        let Entry {
            ident,
            name,
            method,
            ..
        } = e;
        // Never more visible than the event type, so the signature is always nameable.
        let method_vis = match &e.vis {
            Visibility::Public(_) => vis.clone(),
            other => other.to_token_stream(),
        };
        let doc = format!(
            " Publishes `{}` (`{ident}`, version {}) to topic `{}`; returns the event's id.",
            name.value(),
            e.version,
            e.topic
        );
        quote! {
            #[doc = #doc]
            #method_vis async fn #method(
                &self,
                event: #ident,
            ) -> ::core::result::Result<#krate::Uuid, #krate::Error> {
                self.inner.publish(event).await
            }
        }
    });
    let generated = quote! {
        /// Every event defined in this module, for documentation, schema export and registries.
        #[allow(dead_code)]
        #vis const CATALOG: &[#krate::CatalogEntry] = &[#(#catalog),*];

        /// A publisher with one method per event of this module.
        #[allow(dead_code)]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct Publisher {
            inner: #krate::Publisher,
        }

        #[allow(dead_code)]
        impl Publisher {
            /// Wraps a publisher.
            #vis fn new(inner: #krate::Publisher) -> Self {
                Publisher { inner }
            }

            /// The untyped publisher inside.
            #vis fn inner(&self) -> &#krate::Publisher {
                &self.inner
            }

            #(#methods)*
        }
    };
    match syn::parse2::<syn::File>(generated) {
        Ok(file) => file.items,
        // The tokens above always parse; nothing is added if they somehow do not.
        Err(_) => Vec::new(),
    }
}

fn with_items(mut module: ItemMod, generated: Vec<Item>) -> TokenStream {
    if let Some((_, items)) = &mut module.content {
        items.extend(generated);
    }
    module.into_token_stream()
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
                syn::Item::Macro(m) => m.mac.parse_body::<LitStr>().ok().map(|l| l.value()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn expands_with_catalog_and_publisher() {
        let out = expand(
            quote!(),
            quote! {
                pub mod events {
                    use eventbus::event;
                    #[event(name = "approval.granted", key = id)]
                    #[derive(serde::Serialize)]
                    pub struct ApprovalGranted { id: String }
                    #[eventbus::event(name = "approval.rejected", version = 2, topic = "approvals")]
                    pub(crate) struct ApprovalRejected;
                    #[event(name = "type")]
                    struct Typed;
                    struct NotAnEvent;
                }
            },
        );
        let file: syn::File = syn::parse2(out.clone()).expect("parses");
        let text = out.to_string();
        let Some(Item::Mod(module)) = file.items.first() else {
            panic!("{text}")
        };
        let items = &module.content.as_ref().expect("inline").1;
        assert_eq!(items.len(), 5 + 3, "{text}");
        assert!(text.contains("pub const CATALOG : & [:: eventbus :: CatalogEntry] = & [:: eventbus :: CatalogEntry :: of :: < ApprovalGranted > () , :: eventbus :: CatalogEntry :: of :: < ApprovalRejected > () , :: eventbus :: CatalogEntry :: of :: < Typed > ()]"), "{text}");
        assert!(
            text.contains("pub async fn approval_granted (& self , event : ApprovalGranted ,)"),
            "{text}"
        );
        assert!(
            text.contains("pub (crate) async fn approval_rejected"),
            "{text}"
        );
        assert!(
            text.contains("async fn r#type (& self , event : Typed ,)"),
            "{text}"
        );
        assert!(text.contains("version 2) to topic `approvals`"), "{text}");
        assert!(!text.contains("compile_error"), "{text}");
    }

    #[test]
    fn private_module_gets_crate_visibility() {
        let out = expand(
            quote!(crate = "::re::eventbus"),
            quote!(
                mod events {}
            ),
        )
        .to_string();
        assert!(
            out.contains(
                "pub (crate) const CATALOG : & [:: re :: eventbus :: CatalogEntry] = & []"
            ),
            "{out}"
        );
        assert!(out.contains("pub (crate) struct Publisher"), "{out}");
    }

    #[test]
    fn duplicate_names_and_method_clashes() {
        let errs = compile_errors(
            quote!(),
            quote! {
                mod events {
                    #[event(name = "a.b")] struct First;
                    #[event(name = "a.b")] struct Second;
                    #[event(name = "a-b")] struct Third;
                    #[event(name = "new")] struct Fourth;
                    #[event(name = "2fa.on")] struct Fifth;
                    #[event(name = "bad..name")] struct Sixth;
                    use eventbus::Publisher;
                }
            },
        );
        assert_eq!(
            errs,
            [
                "`#[catalog]` adds `Publisher` to this module, so this name clashes with it; rename this one (for an import: `use ...::Publisher as OtherPublisher;`)",
                "event name `a.b` is already defined by `First`",
                "the publisher method for `a-b` would be `a_b`, the same as for `a.b` (`First`); rename one of the events",
                "the publisher method for `new` would be `new`, which `Publisher` already has; rename the event",
                "cannot name a publisher method after `2fa.on`: `2fa_on` is not an identifier; start the event name with a letter",
            ]
        );
    }

    #[test]
    fn wrong_items() {
        let errs = compile_errors(
            quote!(),
            quote!(
                mod events;
            ),
        );
        assert!(
            errs[0].starts_with("`#[catalog]` needs the module's items inline"),
            "{errs:?}"
        );
        let errs = compile_errors(
            quote!(),
            quote!(
                struct S;
            ),
        );
        assert!(
            errs[0].starts_with("`#[catalog]` can only be used on an inline module"),
            "{errs:?}"
        );
        let errs = compile_errors(
            quote!(krate = "x"),
            quote!(
                mod m {}
            ),
        );
        assert_eq!(
            errs,
            ["unknown attribute key `krate`, expected one of: crate"]
        );
    }
}
