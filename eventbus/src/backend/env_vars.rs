//! A backend's settings from `EVENTBUS_<BACKEND>_*` variables: the shared reader of the
//! Redis and Kafka configurations. Every bad value is an error naming its variable.

use std::time::Duration;

use crate::error::Error;

/// How variables are looked up: the process environment, or a map in tests.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Variables under one prefix, read through a lookup function.
pub(crate) struct EnvVars<'a> {
    prefix: &'static str,
    lookup: Lookup<'a>,
}

impl<'a> EnvVars<'a> {
    /// The variables `{prefix}{name}` as `lookup` finds them.
    pub(crate) fn new(prefix: &'static str, lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        EnvVars {
            prefix,
            lookup: Box::new(lookup),
        }
    }

    /// The full name of variable `name`.
    pub(crate) fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The value of `name`, if set.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(&self.name(name))
    }

    /// The value of `name`, which must be set.
    pub(crate) fn required(&self, name: &str) -> Result<String, Error> {
        self.get(name)
            .ok_or_else(|| Error::config(self.name(name), "is not set"))
    }

    /// A whole number.
    pub(crate) fn number(&self, name: &str) -> Result<Option<u64>, Error> {
        self.get(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    Error::config(self.name(name), format!("`{v}` is not a whole number"))
                })
            })
            .transpose()
    }

    /// A duration given in milliseconds.
    pub(crate) fn millis(&self, name: &str) -> Result<Option<Duration>, Error> {
        Ok(self.number(name)?.map(Duration::from_millis))
    }

    /// `true`/`1` or `false`/`0`.
    pub(crate) fn flag(&self, name: &str) -> Result<Option<bool>, Error> {
        self.choice(
            name,
            &[("true", true), ("1", true), ("false", false), ("0", false)],
        )
        .map_err(|_| {
            let v = self.get(name).unwrap_or_default();
            Error::config(self.name(name), format!("`{v}` is not true or false"))
        })
    }

    /// One of `choices` (case-insensitive), named in the error.
    pub(crate) fn choice<T: Copy>(
        &self,
        name: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, Error> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        let wanted = v.trim().to_ascii_lowercase();
        if let Some((_, value)) = choices.iter().find(|(text, _)| *text == wanted) {
            return Ok(Some(*value));
        }
        let names: Vec<&str> = choices.iter().map(|(text, _)| *text).collect();
        let listed = match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        Err(Error::config(
            self.name(name),
            format!("`{v}` is not {listed}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_variable() {
        let vars = EnvVars::new("EVENTBUS_X_", |name| match name {
            "EVENTBUS_X_N" => Some("12".into()),
            "EVENTBUS_X_BAD" => Some("twelve".into()),
            "EVENTBUS_X_MODE" => Some("Binary".into()),
            _ => None,
        });
        assert_eq!(vars.number("N").unwrap(), Some(12));
        assert_eq!(vars.millis("N").unwrap(), Some(Duration::from_millis(12)));
        assert_eq!(vars.number("MISSING").unwrap(), None);
        let error = vars.number("BAD").unwrap_err().to_string();
        assert!(
            error.contains("EVENTBUS_X_BAD") && error.contains("`twelve` is not a whole number"),
            "{error}"
        );
        assert_eq!(
            vars.choice("MODE", &[("structured", 1), ("binary", 2)])
                .unwrap(),
            Some(2)
        );
        let error = vars
            .choice("BAD", &[("a", 1), ("b", 2), ("c", 3)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("`twelve` is not a, b or c"), "{error}");
        let error = vars.flag("BAD").unwrap_err().to_string();
        assert!(error.contains("`twelve` is not true or false"), "{error}");
        assert!(vars
            .required("MISSING")
            .unwrap_err()
            .to_string()
            .contains("EVENTBUS_X_MISSING"));
    }
}
