//! A blocking JSON client for a service's eventbus admin API.

use std::time::Duration;

use serde_json::Value;

/// What can go wrong talking to the admin API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// The admin API answered with an error.
    #[error("{message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The parameter it names.
        field: Option<String>,
    },
    /// The admin API could not be reached.
    #[error("cannot reach the admin API at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The answer was not the JSON expected.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A command-line value is invalid.
    #[error("invalid `{option}`: {message}")]
    Usage {
        /// The option, as spelled on the command line.
        option: String,
        /// Why.
        message: String,
    },
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A replay finished with an error.
    #[error("replay {id} failed: {message}")]
    ReplayFailed {
        /// The replay's id.
        id: String,
        /// The error it reported.
        message: String,
    },
}

impl CliError {
    /// A usage error naming `option`.
    pub(crate) fn usage(option: &str, message: impl Into<String>) -> Self {
        CliError::Usage {
            option: option.to_owned(),
            message: message.into(),
        }
    }
}

/// The admin API at one base URL, with an optional bearer token.
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `base` (such as `http://127.0.0.1:9090`).
    pub(crate) fn new(
        base: &str,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, CliError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::usage(
                "--url",
                format!("`{base}` is not an http:// or https:// URL"),
            ));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Client {
            base,
            token: token.filter(|t| !t.is_empty()),
            agent,
        })
    }

    /// `GET path`.
    pub(crate) fn get(&self, path: &str) -> Result<Value, CliError> {
        self.send("GET", path, None)
    }

    /// `GET path`, answering the body of an `accept` status too (such as 503 from `/ready`).
    pub(crate) fn get_accepting(&self, path: &str, accept: u16) -> Result<(u16, Value), CliError> {
        let (status, value, text) = self.exchange("GET", path, None)?;
        match value {
            Some(value) if status == accept => Ok((status, value)),
            _ => self.check(path, status, value, text).map(|v| (status, v)),
        }
    }

    /// `POST path` with a JSON body.
    pub(crate) fn post(&self, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.send("POST", path, body)
    }

    /// `DELETE path` with an optional JSON body.
    pub(crate) fn delete(&self, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        self.send("DELETE", path, body)
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let (status, value, text) = self.exchange(method, path, body)?;
        self.check(path, status, value, text)
    }

    /// Sends a request: the status, the body as JSON when it is, and as text.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Option<Value>, String), CliError> {
        let url = format!("{}{}", self.base, path);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut request = self.agent.get(&url).header("Accept", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            ("DELETE", None) => {
                let mut request = self.agent.delete(&url).header("Accept", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                request.call()
            }
            (_, body) => {
                let mut request = if method == "DELETE" {
                    self.agent.delete(&url).force_send_body()
                } else {
                    self.agent.post(&url)
                };
                request = request.header("Accept", "application/json");
                if let Some(auth) = &auth {
                    request = request.header("Authorization", auth);
                }
                match body {
                    Some(body) => request.send_json(body),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = result.map_err(|source| CliError::Connect {
            url: url.clone(),
            source: Box::new(source),
        })?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Protocol {
                url,
                message: e.to_string(),
            })?;
        Ok((status, serde_json::from_str(&text).ok(), text))
    }

    /// The JSON body of a 2xx answer, or the error the body describes.
    fn check(
        &self,
        path: &str,
        status: u16,
        value: Option<Value>,
        text: String,
    ) -> Result<Value, CliError> {
        if !(200..300).contains(&status) {
            let (message, field) = match &value {
                Some(v) => (
                    v["error"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| text.clone()),
                    v["field"].as_str().map(str::to_owned),
                ),
                None => (format!("HTTP {status}: {}", text.trim()), None),
            };
            let message = match status {
                401 if self.token.is_none() => {
                    format!("{message}; pass --token or set EVENTBUS_ADMIN_TOKEN")
                }
                _ => message,
            };
            return Err(CliError::Api {
                status,
                message,
                field,
            });
        }
        value.ok_or_else(|| CliError::Protocol {
            url: format!("{}{}", self.base, path),
            message: format!("not JSON: {}", text.chars().take(200).collect::<String>()),
        })
    }
}

/// Percent-encodes a path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_reserved_characters() {
        assert_eq!(encode("order.*"), "order.%2A");
        assert_eq!(encode("a b/c#d"), "a%20b%2Fc%23d");
        assert_eq!(encode("1700000000000-0"), "1700000000000-0");
    }

    #[test]
    fn rejects_urls_without_a_scheme() {
        let err = Client::new("localhost:9090", None, Duration::from_secs(1))
            .err()
            .expect("no scheme");
        assert!(err.to_string().contains("--url"), "{err}");
    }
}
