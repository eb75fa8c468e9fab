//! `#[derive(EventGroup)]` on an enum whose variants each hold one event:
//! `enum ApprovalEvents { Granted(ApprovalGranted), Rejected(ApprovalRejected) }`.
//! Implements `Payload` (decoding dispatches on the envelope's type) and `EventGroup`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, Seen};
use crate::ctxt::Ctxt;

/// The keys of `#[event_group(...)]`.
const KEYS: &[&str] = &["crate"];

const SHAPE: &str =
    "`enum ApprovalEvents { Granted(ApprovalGranted), Rejected(ApprovalRejected) }`";

/// One variant: its name and the event type it holds.
struct Variant {
    ident: Ident,
    ty: Type,
}

/// Expands `#[derive(EventGroup)]`.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input = match syn::parse2::<DeriveInput>(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let cx = Ctxt::new();
    let krate = parse_attrs(&cx, &input);
    let variants = check(&cx, &input);
    match cx.check() {
        Ok(()) => codegen(&input.ident, &attr::krate_or_default(krate), &variants),
        Err(err) => err.to_compile_error(),
    }
}

fn parse_attrs(cx: &Ctxt, input: &DeriveInput) -> Option<TokenStream> {
    let mut krate = None;
    let mut seen = Seen::default();
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("event_group"))
    {
        let list = match attr.meta.require_list() {
            Ok(list) => list,
            Err(_) => {
                cx.error_spanned_by(attr, "expected `#[event_group(crate = \"path\")]`");
                continue;
            }
        };
        let metas = match attr::parse_metas(list.tokens.clone()) {
            Ok(metas) => metas,
            Err(err) => {
                cx.syn_error(err);
                continue;
            }
        };
        for meta in &metas {
            match attr::key_of(meta).as_deref() {
                Some("crate") if seen.first(cx, meta, "crate") => {
                    krate = attr::crate_path(cx, meta)
                }
                Some("crate") => {}
                _ => attr::unknown_key(cx, meta, KEYS),
            }
        }
    }
    krate
}

fn check(cx: &Ctxt, input: &DeriveInput) -> Vec<Variant> {
    let ident = &input.ident;
    let data = match &input.data {
        Data::Enum(data) => data,
        Data::Struct(data) => {
            let token = data.struct_token;
            cx.error_spanned_by(
                quote!(#token #ident),
                format!("`EventGroup` can only be derived for an enum whose variants each hold one event type, such as {SHAPE}"),
            );
            return Vec::new();
        }
        Data::Union(data) => {
            let token = data.union_token;
            cx.error_spanned_by(
                quote!(#token #ident),
                format!("`EventGroup` can only be derived for an enum whose variants each hold one event type, such as {SHAPE}"),
            );
            return Vec::new();
        }
    };
    if !input.generics.params.is_empty() || input.generics.where_clause.is_some() {
        cx.error_spanned_by(
            &input.generics,
            "an event group cannot be generic: it lists concrete event types",
        );
    }
    if data.variants.is_empty() {
        let token = data.enum_token;
        cx.error_spanned_by(
            quote!(#token #ident),
            format!("an event group needs at least one variant, such as {SHAPE}"),
        );
    }
    let mut variants = Vec::new();
    for variant in &data.variants {
        let name = &variant.ident;
        match &variant.fields {
            Fields::Unnamed(fields) if fields.unnamed.len() == 1 => {
                if let Some(field) = fields.unnamed.first() {
                    variants.push(Variant {
                        ident: name.clone(),
                        ty: field.ty.clone(),
                    });
                }
            }
            Fields::Unnamed(fields) => cx.error_spanned_by(
                fields,
                format!(
                    "variant `{name}` holds {} fields; each variant of an event group holds \
                     exactly one event type, such as `{name}(ApprovalGranted)`",
                    fields.unnamed.len()
                ),
            ),
            Fields::Named(fields) => cx.error_spanned_by(
                fields,
                format!(
                    "variant `{name}` has named fields; each variant of an event group holds \
                     exactly one event type, such as `{name}(ApprovalGranted)`"
                ),
            ),
            Fields::Unit => cx.error_spanned_by(
                name,
                format!(
                    "variant `{name}` holds no event; each variant of an event group holds \
                     exactly one event type, such as `{name}(ApprovalGranted)`"
                ),
            ),
        }
    }
    variants
}

fn codegen(ident: &Ident, krate: &TokenStream, variants: &[Variant]) -> TokenStream {
    let names = variants.iter().map(|v| {
        let ty = &v.ty;
        quote_spanned!(ty.span()=> <#ty as #krate::Event>::NAME)
    });
    let topics = variants.iter().map(|v| {
        let ty = &v.ty;
        quote_spanned!(ty.span()=> <#ty as #krate::Event>::TOPIC)
    });
    let versions = variants.iter().map(|v| {
        let ty = &v.ty;
        quote_spanned!(ty.span()=> <#ty as #krate::Event>::VERSION)
    });
    let arms = variants.iter().map(|v| {
        let (name, ty) = (&v.ident, &v.ty);
        quote! {
            if __eventbus_event_type == <#ty as #krate::Event>::NAME {
                return ::core::result::Result::map(
                    <#ty as #krate::Payload>::decode(__eventbus_event_type, __eventbus_version, __eventbus_data),
                    Self::#name,
                );
            }
        }
    });
    // Two variants holding events of the same name would make the second unreachable.
    let mut distinct = Vec::new();
    for (j, second) in variants.iter().enumerate() {
        for first in &variants[..j] {
            let (a, b) = (&first.ty, &second.ty);
            let message = format!(
                "variants `{}` and `{}` of `{ident}` hold events with the same name; each event \
                 type can appear in a group only once",
                first.ident, second.ident
            );
            distinct.push(quote_spanned! {b.span()=>
                const _: () = ::core::assert!(
                    !#krate::__private::const_matches(<#a as #krate::Event>::NAME, <#b as #krate::Event>::NAME),
                    #message
                );
            });
        }
    }
    quote! {
        const _: () = {
            #(#distinct)*

            #[automatically_derived]
            impl #krate::Payload for #ident {
                const TYPES: &'static [&'static str] = &[#(#names),*];
                const TOPICS: &'static [&'static str] = &[#(#topics),*];
                const VERSIONS: &'static [u32] = &[#(#versions),*];

                fn decode(
                    __eventbus_event_type: &str,
                    __eventbus_version: u32,
                    __eventbus_data: &#krate::__private::RawValue,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    #(#arms)*
                    ::core::result::Result::Err(#krate::DecodeError::UnexpectedType {
                        expected: <Self as #krate::Payload>::TYPES,
                        found: ::std::borrow::ToOwned::to_owned(__eventbus_event_type),
                    })
                }
            }

            #[automatically_derived]
            impl #krate::EventGroup for #ident {}
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_errors(input: TokenStream) -> Vec<String> {
        let out = expand(input);
        let file: syn::File = syn::parse2(out).expect("output parses");
        file.items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Macro(m) => m.mac.parse_body::<syn::LitStr>().ok().map(|l| l.value()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn expands() {
        let out = expand(quote! {
            #[event_group(crate = "::re::eventbus")]
            enum ApprovalEvents { Granted(ApprovalGranted), Rejected(ApprovalRejected) }
        });
        let _: syn::File = syn::parse2(out.clone()).expect("parses");
        let text = out.to_string();
        assert!(
            text.contains("impl :: re :: eventbus :: Payload for ApprovalEvents"),
            "{text}"
        );
        assert!(
            text.contains("impl :: re :: eventbus :: EventGroup for ApprovalEvents"),
            "{text}"
        );
        assert!(
            text.contains(
                "& [< ApprovalGranted as :: re :: eventbus :: Event > :: NAME , < ApprovalRejected"
            ),
            "{text}"
        );
        assert!(text.contains("Self :: Rejected"), "{text}");
        assert_eq!(text.matches("const_matches").count(), 1, "{text}");
    }

    #[test]
    fn rejects_wrong_shapes() {
        assert!(compile_errors(quote!(
            struct S(A);
        ))[0]
            .starts_with("`EventGroup` can only be derived for an enum"));
        assert!(compile_errors(quote!(
            enum E {}
        ))[0]
            .starts_with("an event group needs at least one variant"));
        let errs = compile_errors(quote!(
            enum E {
                A(X, Y),
                B { x: X },
                C,
                D(Z),
            }
        ));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("variant `A` holds 2 fields"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("variant `B` has named fields"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("variant `C` holds no event"),
            "{errs:?}"
        );
        let errs = compile_errors(quote!(
            #[event_group(krate = "x")]
            enum E<T> {
                A(T),
            }
        ));
        assert_eq!(
            errs[0],
            "unknown attribute key `krate`, expected one of: crate"
        );
        assert!(
            errs[1].starts_with("an event group cannot be generic"),
            "{errs:?}"
        );
    }
}
