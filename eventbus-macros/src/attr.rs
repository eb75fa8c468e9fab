//! Parsing helpers shared by the attributes: `key = value` lists, literal extraction with
//! errors that name the key, duplicate and unknown key detection, and the `crate = "..."`
//! override.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Lit, LitStr, Meta, Token};

use crate::ctxt::Ctxt;

/// Parses `a = 1, b(c = 2), d` into its items.
pub(crate) fn parse_metas(tokens: TokenStream) -> syn::Result<Punctuated<Meta, Token![,]>> {
    Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)
}

/// The key of an item (`name` for `name = "x"`, `backoff` for `backoff(...)`), if it is a single
/// identifier (keywords such as `crate` included).
pub(crate) fn key_of(meta: &Meta) -> Option<String> {
    meta.path().get_ident().map(ToString::to_string)
}

/// Keys seen so far in one list, to report duplicates.
#[derive(Default)]
pub(crate) struct Seen(Vec<String>);

impl Seen {
    /// Records `key`; reports and returns false if it was already given.
    pub(crate) fn first(&mut self, cx: &Ctxt, meta: &Meta, key: &str) -> bool {
        if self.0.iter().any(|k| k == key) {
            cx.error_spanned_by(meta.path(), format!("duplicate attribute key `{key}`"));
            false
        } else {
            self.0.push(key.to_owned());
            true
        }
    }

    /// Whether `key` was given.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.0.iter().any(|k| k == key)
    }
}

/// Reports an unknown key, listing the allowed ones.
pub(crate) fn unknown_key(cx: &Ctxt, meta: &Meta, allowed: &[&str]) {
    let path = meta.path();
    let shown = path.to_token_stream().to_string().replace(' ', "");
    cx.error_spanned_by(
        path,
        format!(
            "unknown attribute key `{shown}`, expected one of: {}",
            allowed.join(", ")
        ),
    );
}

/// The value of `key = value`, or an error saying the key needs one.
pub(crate) fn value<'a>(cx: &Ctxt, meta: &'a Meta, key: &str, example: &str) -> Option<&'a Expr> {
    match meta {
        Meta::NameValue(nv) => Some(strip_groups(&nv.value)),
        _ => {
            cx.error_spanned_by(meta, format!("expected `{key} = ...`, such as `{example}`"));
            None
        }
    }
}

/// Looks through the invisible groups `macro_rules!` wraps around captured fragments.
fn strip_groups(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => strip_groups(&group.expr),
        expr => expr,
    }
}

fn literal(expr: &Expr) -> Option<&Lit> {
    match strip_groups(expr) {
        Expr::Lit(lit) => Some(&lit.lit),
        _ => None,
    }
}

/// A string literal value.
pub(crate) fn string(cx: &Ctxt, expr: &Expr, key: &str, example: &str) -> Option<LitStr> {
    match literal(expr) {
        Some(Lit::Str(s)) => Some(s.clone()),
        _ => {
            cx.error_spanned_by(
                expr,
                format!("expected a string literal for `{key}`, such as `{example}`"),
            );
            None
        }
    }
}

/// An integer literal value that fits `N`.
pub(crate) fn integer<N>(cx: &Ctxt, expr: &Expr, key: &str, example: &str) -> Option<N>
where
    N: std::str::FromStr,
    N::Err: std::fmt::Display,
{
    match literal(expr) {
        Some(Lit::Int(int)) => match int.base10_parse::<N>() {
            Ok(n) => Some(n),
            Err(_) => {
                cx.error_spanned_by(
                    int,
                    format!(
                        "`{key}` is out of range for `{}`",
                        std::any::type_name::<N>()
                    ),
                );
                None
            }
        },
        _ => {
            cx.error_spanned_by(
                expr,
                format!("expected an integer literal for `{key}`, such as `{example}`"),
            );
            None
        }
    }
}

/// A `true`/`false` literal value.
pub(crate) fn boolean(cx: &Ctxt, expr: &Expr, key: &str) -> Option<bool> {
    match literal(expr) {
        Some(Lit::Bool(b)) => Some(b.value),
        _ => {
            cx.error_spanned_by(expr, format!("expected `true` or `false` for `{key}`"));
            None
        }
    }
}

/// A float (or integer) literal value.
pub(crate) fn float(cx: &Ctxt, expr: &Expr, key: &str, example: &str) -> Option<f64> {
    let parsed = match literal(expr) {
        Some(Lit::Float(f)) => f.base10_parse::<f64>().ok(),
        Some(Lit::Int(i)) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        cx.error_spanned_by(
            expr,
            format!("expected a number for `{key}`, such as `{example}`"),
        );
    }
    parsed
}

/// The path in `crate = "path"`, as tokens.
pub(crate) fn crate_path(cx: &Ctxt, meta: &Meta) -> Option<TokenStream> {
    let example = "crate = \"::my_crate::eventbus\"";
    let expr = value(cx, meta, "crate", example)?;
    let lit = string(cx, expr, "crate", example)?;
    match lit.parse::<syn::Path>() {
        Ok(path) => Some(path.into_token_stream()),
        Err(_) => {
            cx.error_spanned_by(
                &lit,
                format!(
                    "`{}` is not a path; expected something like `{example}`",
                    lit.value()
                ),
            );
            None
        }
    }
}

/// The path generated code uses for the runtime crate.
pub(crate) fn krate_or_default(krate: Option<TokenStream>) -> TokenStream {
    krate.unwrap_or_else(|| quote!(::eventbus))
}

/// True when `attr` is `#[event(...)]` or any path ending in `event`, such as
/// `#[eventbus::event(...)]`.
pub(crate) fn is_event_attr(attr: &syn::Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_include_keywords() {
        let metas = parse_metas(quote!(
            crate = "x",
            name = "a",
            backoff(initial = "1s"),
            flag
        ))
        .expect("parses");
        let keys: Vec<_> = metas.iter().map(key_of).collect();
        assert_eq!(
            keys,
            [
                Some("crate".to_owned()),
                Some("name".to_owned()),
                Some("backoff".to_owned()),
                Some("flag".to_owned())
            ]
        );
    }

    #[test]
    fn crate_path_is_parsed() {
        let cx = Ctxt::new();
        let metas =
            parse_metas(quote!(crate = "::re::eventbus", crate = "not a path")).expect("parses");
        let good = crate_path(&cx, &metas[0]).expect("valid path");
        assert_eq!(good.to_string(), ":: re :: eventbus");
        assert!(crate_path(&cx, &metas[1]).is_none());
        let err = cx.check().expect_err("bad path");
        assert!(err.to_string().contains("is not a path"), "{err}");
    }

    #[test]
    fn literal_errors_name_the_key() {
        let cx = Ctxt::new();
        let metas =
            parse_metas(quote!(a = 1, b = "x", c = 1.5, d = yes, e = 99999999999)).expect("parses");
        let expr = |i: usize| value(&cx, &metas[i], "k", "k = 1").expect("name = value");
        assert!(string(&cx, expr(0), "a", "a = \"x\"").is_none());
        assert_eq!(
            string(&cx, expr(1), "b", "").map(|s| s.value()).as_deref(),
            Some("x")
        );
        assert_eq!(float(&cx, expr(2), "c", ""), Some(1.5));
        assert_eq!(float(&cx, expr(0), "c", ""), Some(1.0));
        assert!(boolean(&cx, expr(3), "d").is_none());
        assert!(integer::<u32>(&cx, expr(4), "e", "").is_none());
        let messages: Vec<String> = cx
            .check()
            .expect_err("errors")
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            messages,
            [
                "expected a string literal for `a`, such as `a = \"x\"`",
                "expected `true` or `false` for `d`",
                "`e` is out of range for `u32`",
            ]
        );
    }
}
