//! The API token: kept out of every log line, error and `Debug` output.

use std::fmt;

use reqwest::header::HeaderValue;

use crate::error::Error;

/// A bearer token for the HTTP API (`ulg_...`). Its `Debug` says only
/// that it is there; it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    pub(crate) fn new(token: String) -> ApiToken {
        ApiToken(token)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Authorization: Bearer ...` value, marked sensitive so that
    /// reqwest and hyper never print it. The reason of a refusal never
    /// quotes the token.
    pub(crate) fn header(&self) -> Result<HeaderValue, Error> {
        let token = self.0.trim();
        if token.is_empty() {
            return Err(Error::config(
                "api_token",
                "is empty: set ULOGGER_API_TOKEN (or pass the token to HttpTelemetry::builder)",
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                "api_token",
                "holds spaces, control or non-ASCII characters, which a token never has: \
                 check that ULOGGER_API_TOKEN holds just the token",
            ));
        }
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Error::config("api_token", "cannot be sent in an HTTP header"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_never_show_the_token() {
        let token = ApiToken::new("ulg_secret123".into());
        assert!(!format!("{token:?}").contains("secret"));
        let header = token.header().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("secret"));
        for bad in ["ulg_ secret", "ulg_s\u{e9}cret", "ulg_\nsecret"] {
            let e = ApiToken::new(bad.into()).header().unwrap_err();
            assert!(!format!("{e} {e:?}").contains("secret"), "{e:?}");
        }
        assert!(ApiToken::new("  ".into()).header().is_err());
    }
}
