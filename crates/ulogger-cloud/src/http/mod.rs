//! The HTTPS fallback for telemetry (PROTOCOL §8), for gateways without
//! an MQTT client certificate: `POST {base}/publish/metrics|events` with
//! a bearer API token, the MQTT payload plus the ids as the body.

mod body;
pub(crate) mod retry;
mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Phase};
use crate::wire::{
    self, Compression, DeviceEvents, DeviceMetrics, Event, Metric, Telemetry, TelemetryFamily,
};
use body::Body;
use retry::LONGEST_WAIT;
use token::ApiToken;

/// The platform's HTTP API, [`HttpTelemetryBuilder::base_url`]'s default.
pub const DEFAULT_API_URL: &str = "https://api.ulogger.ai";

/// Replies are read up to this many bytes; the rest is not needed to
/// report what went wrong.
const MAX_REPLY: usize = 64 * 1024;
/// The longest server message quoted in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// Sends metrics, events and heartbeats over HTTPS with an API token
/// (`ulg_...`), for gateways that have no MQTT client certificate.
///
/// One shared connection pool; cheap to clone (`Arc` inside). Bodies are
/// checked exactly as for MQTT ([`crate::wire`]), compressed per
/// [`HttpTelemetryBuilder::compression`] and refused locally over
/// 128 KiB. A 5xx, a 429 or a failed connection is retried with jittered
/// exponential backoff (a 429's `Retry-After` is honoured); any other
/// refusal is not. Retrying makes delivery at-least-once: a request whose
/// answer was lost may be stored twice.
///
/// The token appears in no log line, error or `Debug` output.
///
/// ```no_run
/// use ulogger_cloud::{wire::Metric, HttpTelemetry};
///
/// # async fn run() -> Result<(), ulogger_cloud::Error> {
/// let token = std::env::var("ULOGGER_API_TOKEN").unwrap_or_default();
/// let http = HttpTelemetry::builder(token).group_id(3).build()?;
/// let receipt = http
///     .publish_metrics("SN-0001", 7, &[Metric::new("temperature_c", 21.5)])
///     .await?;
/// println!("{} bytes in {} attempt(s)", receipt.size, receipt.attempts);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpTelemetry {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    token: ApiToken,
    authorization: HeaderValue,
    metrics_url: Url,
    events_url: Url,
    group_id: u32,
    compression: Compression,
    retries: u32,
    max_backoff: Duration,
    max_retry_after: Duration,
}

impl std::fmt::Debug for HttpTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTelemetry")
            .field("token", &self.inner.token)
            .field("metrics_url", &self.inner.metrics_url.as_str())
            .field("events_url", &self.inner.events_url.as_str())
            .field("group_id", &self.inner.group_id)
            .field("compression", &self.inner.compression)
            .field("retries", &self.inner.retries)
            .finish_non_exhaustive()
    }
}

/// What the HTTP API accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpReceipt {
    /// The URL posted to.
    pub url: String,
    /// The HTTP status of the accepting answer.
    pub status: u16,
    /// Bytes sent (after compression).
    pub size: usize,
    /// Whether the body was gzip-compressed.
    pub compressed: bool,
    /// Size of the JSON body before compression.
    pub json_len: usize,
    /// Requests it took (1 when the first was accepted).
    pub attempts: u32,
}

/// Builds an [`HttpTelemetry`]; see [`HttpTelemetry::builder`]. Setters
/// never fail; [`HttpTelemetryBuilder::build`] checks everything.
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpTelemetryBuilder {
    token: ApiToken,
    base_url: String,
    ca_file: Option<PathBuf>,
    group_id: Option<u32>,
    compression: Compression,
    retries: u32,
    max_backoff: Duration,
    max_retry_after: Duration,
    timeout: Duration,
}

impl HttpTelemetryBuilder {
    /// The API's base URL (default [`DEFAULT_API_URL`]); `/publish/...` is
    /// appended. `http://` is allowed for a local plaintext emulator.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Trust the CA certificate(s) in this PEM file instead of the public
    /// web roots (a local emulator, a test server, a private deployment).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// The group id every body carries (`"group_id"`); default `0`, "no
    /// groups", as over MQTT.
    pub fn group_id(mut self, group_id: u32) -> Self {
        self.group_id = Some(group_id);
        self
    }

    /// When bodies are gzip-compressed (default [`Compression::Auto`]:
    /// over 1,024 bytes of JSON).
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// How many times a request is sent again after a 5xx, a 429 or a
    /// failed connection (default 3; 0 sends once).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The longest wait between two attempts without `Retry-After`
    /// (default 10 s). The wait starts at up to 250 ms and doubles, with
    /// jitter.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// The longest `Retry-After` honoured (default 60 s); a server asking
    /// for more is retried after this long. `Retry-After` is read on the
    /// answers that are retried (429, 5xx), in seconds or as an HTTP-date.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// How long one request may take, connecting included (default 30 s).
    /// A request that runs out of time counts as failed and is retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the settings (token, URL, group id, CA file) and builds the
    /// connection pool. Needs no runtime; requests need a Tokio one.
    pub fn build(self) -> Result<HttpTelemetry, Error> {
        let authorization = self.token.header()?;
        let group_id = self.group_id.unwrap_or(crate::DEFAULT_GROUP_ID);
        let base = parse_base(&self.base_url)?;
        let endpoint = |path: &str| {
            let mut url = base.clone();
            let joined = format!("{}{path}", base.path().trim_end_matches('/'));
            url.set_path(&joined);
            url
        };
        let mut tls = crate::tls::client_config(self.ca_file.as_deref(), None)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let timeout = self.timeout.min(LONGEST_WAIT);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirected POST would become a GET elsewhere: report it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ulogger-cloud/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig {
                        field: "http",
                        reason: "cannot set up the HTTP client".into(),
                    },
                    e,
                )
            })?;
        Ok(HttpTelemetry {
            inner: Arc::new(Inner {
                client,
                token: self.token,
                authorization,
                metrics_url: endpoint("/publish/metrics"),
                events_url: endpoint("/publish/events"),
                group_id,
                compression: self.compression,
                retries: self.retries,
                max_backoff: self.max_backoff,
                max_retry_after: self.max_retry_after,
            }),
        })
    }
}

fn parse_base(text: &str) -> Result<Url, Error> {
    let bad = |reason: String| Error::config("base_url", reason);
    let url = Url::parse(text.trim()).map_err(|e| {
        bad(format!(
            "{text:?} is not a URL ({e}); expected e.g. {DEFAULT_API_URL}"
        ))
    })?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(bad(format!(
            "{text:?}: the scheme must be https (or http for a local emulator)"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("{text:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(bad(format!(
            "{text:?}: a base URL has no query, fragment or user name"
        )));
    }
    Ok(url)
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Metrics,
    Events,
}

/// One failed attempt: the error to report, and whether (and when) to
/// try again.
struct Failure {
    error: Error,
    retry: bool,
    retry_after: Option<Duration>,
}

impl HttpTelemetry {
    /// Starts building a sender that authenticates with `api_token`.
    pub fn builder(api_token: impl Into<String>) -> HttpTelemetryBuilder {
        HttpTelemetryBuilder {
            token: ApiToken::new(api_token.into()),
            base_url: DEFAULT_API_URL.to_owned(),
            ca_file: None,
            group_id: None,
            compression: Compression::Auto,
            retries: 3,
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }

    /// Posts one telemetry message for application `app_id` to
    /// `/publish/metrics` or `/publish/events` (its
    /// [`family`](Telemetry::family)) and returns once the API accepted it.
    /// The message is checked first (serials, at least one sample, finite
    /// values, size); nothing is sent when it is wrong. Failed attempts
    /// are retried as [`HttpTelemetryBuilder::retries`] says.
    ///
    /// ```no_run
    /// use ulogger_cloud::{wire::Telemetry, HttpTelemetry};
    /// # async fn run() -> Result<(), ulogger_cloud::Error> {
    /// let http = HttpTelemetry::builder("ulg_0123456789abcdef").build()?;
    /// http.post(7, &Telemetry::heartbeat("SN-1", None)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn post(&self, app_id: u32, message: &Telemetry) -> Result<HttpReceipt, Error> {
        let span = tracing::debug_span!(
            "http_post_telemetry",
            serial = message.serial(),
            app_id,
            family = message.family().as_str(),
            samples = message.samples()
        );
        async {
            let body = self.body(|c| message.payload(c), app_id)?;
            let endpoint = match message.family() {
                TelemetryFamily::Metrics => Endpoint::Metrics,
                TelemetryFamily::Events => Endpoint::Events,
            };
            self.post_body(endpoint, body).await
        }
        .instrument(span)
        .await
    }

    /// Posts `metrics` of device `serial`: shorthand for
    /// [`HttpTelemetry::post`] with [`Telemetry::metrics`].
    pub async fn publish_metrics(
        &self,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<HttpReceipt, Error> {
        self.post(app_id, &Telemetry::metrics(serial, metrics.to_vec()))
            .await
    }

    /// Posts `events` of device `serial`: shorthand for
    /// [`HttpTelemetry::post`] with [`Telemetry::events`].
    pub async fn publish_events(
        &self,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<HttpReceipt, Error> {
        self.post(app_id, &Telemetry::events(serial, events.to_vec()))
            .await
    }

    /// Says that device `serial` is alive: shorthand for
    /// [`HttpTelemetry::post`] with [`Telemetry::heartbeat`].
    pub async fn publish_heartbeat(
        &self,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<HttpReceipt, Error> {
        self.post(app_id, &Telemetry::heartbeat(serial, timestamp))
            .await
    }

    /// Posts many devices' metrics in one request (an entry's own
    /// `app_id` overrides `app_id` for that device): shorthand for
    /// [`HttpTelemetry::post`] with [`Telemetry::metrics_batch`].
    pub async fn publish_metrics_batch(
        &self,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<HttpReceipt, Error> {
        self.post(app_id, &Telemetry::metrics_batch(devices.to_vec()))
            .await
    }

    /// Posts many devices' events in one request: shorthand for
    /// [`HttpTelemetry::post`] with [`Telemetry::events_batch`].
    pub async fn publish_events_batch(
        &self,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<HttpReceipt, Error> {
        self.post(app_id, &Telemetry::events_batch(devices.to_vec()))
            .await
    }

    fn body(
        &self,
        make: impl Fn(Compression) -> Result<wire::TelemetryPayload, wire::TelemetryError>,
        app_id: u32,
    ) -> Result<Body, Error> {
        body::build(make, app_id, self.inner.group_id, self.inner.compression)
    }

    async fn post_body(&self, endpoint: Endpoint, body: Body) -> Result<HttpReceipt, Error> {
        let inner = &self.inner;
        let url = match endpoint {
            Endpoint::Metrics => &inner.metrics_url,
            Endpoint::Events => &inner.events_url,
        };
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            let failure = match self.send_once(url, &body, attempts).await {
                Ok(status) => {
                    tracing::debug!(url = url.as_str(), status, attempts, "telemetry accepted");
                    return Ok(HttpReceipt {
                        url: url.to_string(),
                        status,
                        size: body.bytes.len(),
                        compressed: body.compressed,
                        json_len: body.json_len,
                        attempts,
                    });
                }
                Err(failure) => failure,
            };
            let retries_done = attempts - 1;
            if !failure.retry || retries_done >= inner.retries {
                return Err(failure.error);
            }
            let wait = match failure.retry_after {
                Some(asked) => asked.min(inner.max_retry_after).min(LONGEST_WAIT),
                None => retry::backoff(retries_done, inner.max_backoff, rand::random::<f64>()),
            };
            tracing::debug!(
                url = url.as_str(),
                attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                error = %failure.error,
                "telemetry request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request; `Ok(status)` when the API accepted the body.
    async fn send_once(&self, url: &Url, body: &Body, attempts: u32) -> Result<u16, Failure> {
        let inner = &self.inner;
        let mut request = inner
            .client
            .post(url.clone())
            .header(AUTHORIZATION, inner.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if body.compressed {
            request = request.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let transport = |e: reqwest::Error| {
            let kind = if e.is_timeout() {
                ErrorKind::Timeout(Phase::HttpRequest)
            } else {
                ErrorKind::HttpConnect {
                    url: url.to_string(),
                    attempts,
                }
            };
            Failure {
                // A builder error (a bug, not the network) is not retried.
                retry: !e.is_builder(),
                error: Error::with_source(kind, e.without_url()),
                retry_after: None,
            }
        };
        let mut response = request
            .body(Bytes::clone(&body.bytes))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let mut reply = Vec::new();
        while reply.len() < MAX_REPLY {
            match response.chunk().await.map_err(transport)? {
                Some(chunk) => reply.extend_from_slice(&chunk),
                None => break,
            }
        }
        tracing::trace!(status = status.as_u16(), reply_len = reply.len(), "reply");
        if status.is_success() {
            return self.accepted(status, &reply, attempts);
        }
        let retry = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        Err(Failure {
            error: ErrorKind::HttpRefused {
                status: status.as_u16(),
                message: self.server_message(status, &reply),
                attempts,
            }
            .into(),
            retry,
            // Honoured on any retried answer: a 503 may carry it too.
            retry_after: retry_after.filter(|_| retry),
        })
    }

    /// A 2xx answer: the JSON reply must say `"success": true`.
    fn accepted(&self, status: StatusCode, reply: &[u8], attempts: u32) -> Result<u16, Failure> {
        let refuse = |error: Error| Failure {
            error,
            retry: false,
            retry_after: None,
        };
        let invalid = |reason: String| {
            refuse(
                ErrorKind::InvalidHttpReply {
                    status: status.as_u16(),
                    reason,
                }
                .into(),
            )
        };
        let value: Value = serde_json::from_slice(reply).map_err(|e| {
            invalid(format!(
                "not JSON ({e}): {}",
                self.quote(&String::from_utf8_lossy(reply))
            ))
        })?;
        match value.get("success") {
            Some(Value::Bool(true)) => Ok(status.as_u16()),
            Some(Value::Bool(false)) => Err(refuse(
                ErrorKind::HttpRefused {
                    status: status.as_u16(),
                    message: self.server_message(status, reply),
                    attempts,
                }
                .into(),
            )),
            _ => Err(invalid(format!(
                "no boolean \"success\" in {}",
                self.quote(&value.to_string())
            ))),
        }
    }

    /// What the server said about a refusal: its JSON `error` or
    /// `message`, else the start of its body, else the status's name.
    fn server_message(&self, status: StatusCode, reply: &[u8]) -> String {
        let from_json = serde_json::from_slice::<Value>(reply).ok().and_then(|v| {
            ["error", "message", "detail"]
                .iter()
                .find_map(|key| v.get(*key).and_then(Value::as_str).map(str::to_owned))
        });
        let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(reply).trim().to_owned());
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no message").to_owned()
        } else {
            self.quote(&text)
        }
    }

    /// Server text fit for an error: one line, bounded, and never the
    /// token, even if a server echoed it.
    fn quote(&self, text: &str) -> String {
        let token = self.inner.token.as_str().trim();
        let text = if token.is_empty() {
            text.to_owned()
        } else {
            text.replace(token, "<redacted>")
        };
        let mut out: String = text
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.chars().nth(MAX_MESSAGE_CHARS).is_some() {
            out.push_str("...");
        }
        out
    }
}
