//! Secrets kept out of `Debug` output and logs: passwords in URLs, secret-looking settings.

use std::collections::BTreeMap;

/// What a secret is shown as.
pub(crate) const REDACTED: &str = "<redacted>";

/// `url` with the password of its `user:password@` part replaced by [`REDACTED`].
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if user.len() == userinfo.len() {
        // `token@host`: a lone userinfo is a credential too.
        return format!("{scheme}://{REDACTED}{}", &rest[at..]);
    }
    format!("{scheme}://{user}:{REDACTED}{}", &rest[at..])
}

/// Whether a setting's name says it holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, `ssl.key.pem`, tokens, JAAS configs).
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) fn is_secret_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "private",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// A settings map for `Debug`, secret values replaced.
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) struct Settings<'a>(pub(crate) &'a BTreeMap<String, String>);

impl std::fmt::Debug for Settings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                (
                    k,
                    if is_secret_setting(k) {
                        REDACTED
                    } else {
                        v.as_str()
                    },
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            url("redis://:hunter2@cache:6379/0"),
            "redis://:<redacted>@cache:6379/0"
        );
        assert_eq!(
            url("rediss://app:hunter2@cache:6380"),
            "rediss://app:<redacted>@cache:6380"
        );
        assert_eq!(url("redis://hunter2@cache"), "redis://<redacted>@cache");
        assert_eq!(url("redis://cache:6379/a@b"), "redis://cache:6379/a@b");
        assert_eq!(url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn secret_settings_are_hidden() {
        let map = BTreeMap::from([
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("sasl.username".to_owned(), "app".to_owned()),
            ("ssl.key.password".to_owned(), "hunter3".to_owned()),
        ]);
        let text = format!("{:?}", Settings(&map));
        assert!(!text.contains("hunter"), "{text}");
        assert!(text.contains("\"app\""), "{text}");
    }
}
