//! The firmware ELF upload (PROTOCOL §11): ask for an upload URL over the
//! client's MQTT connection, then `PUT` the file there over HTTPS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use reqwest::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use super::registration::Unsubscribe;
use super::Client;
use crate::error::{Error, ErrorKind, Phase};
use crate::http::retry::{self, LONGEST_WAIT};
use crate::wire::{self, ElfSummary, ElfUploadRequest};

/// Bytes handed to the HTTP connection at a time (and progress steps).
const CHUNK: usize = 64 * 1024;
/// Answers to a refused PUT are read up to this many bytes.
const MAX_REPLY: usize = 16 * 1024;
/// The longest server message quoted in an error.
const MAX_MESSAGE_CHARS: usize = 300;

/// Called as the ELF goes out: (bytes handed to the connection, total).
pub type ElfProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// What firmware an ELF is, and how to upload it: the arguments of
/// [`Client::upload_elf`]. Setters never fail; the upload checks them.
///
/// The version string and git hash are the ones the device reports in its
/// boot registration (PROTOCOL §3): the cloud matches logs to this ELF by
/// them, so a typo uploads an ELF that nothing ever uses.
#[derive(Clone)]
#[must_use]
pub struct ElfUpload {
    application_id: u32,
    device_type: String,
    version: String,
    git_hash: String,
    branch: String,
    reply_timeout: Duration,
    put_timeout: Duration,
    retries: u32,
    max_backoff: Duration,
    progress: Option<ElfProgress>,
}

impl std::fmt::Debug for ElfUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfUpload")
            .field("application_id", &self.application_id)
            .field("device_type", &self.device_type)
            .field("version", &self.version)
            .field("git_hash", &self.git_hash)
            .field("branch", &self.branch)
            .field("reply_timeout", &self.reply_timeout)
            .field("put_timeout", &self.put_timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl ElfUpload {
    /// The firmware of `application_id` for boards of `device_type`, as
    /// built at `version` (the version string the device reports) from
    /// commit `git_hash` (the short hash it reports).
    pub fn new(
        application_id: u32,
        device_type: impl Into<String>,
        version: impl Into<String>,
        git_hash: impl Into<String>,
    ) -> ElfUpload {
        ElfUpload {
            application_id,
            device_type: device_type.into(),
            version: version.into(),
            git_hash: git_hash.into(),
            branch: String::new(),
            reply_timeout: Duration::from_secs(30),
            put_timeout: Duration::from_secs(300),
            retries: 3,
            max_backoff: Duration::from_secs(10),
            progress: None,
        }
    }

    /// The branch the firmware was built from (default: empty).
    pub fn branch(mut self, branch: impl Into<String>) -> Self {
        self.branch = branch.into();
        self
    }

    /// How long to wait for the cloud's answer with the upload URL, from
    /// the broker's acknowledgement of the request (default 30 s, as the
    /// reference tool). Running out of time is not retried: it usually
    /// means the cloud does not take requests for these ids.
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.reply_timeout = timeout;
        self
    }

    /// How long one `PUT` may take, connecting included (default 300 s).
    pub fn put_timeout(mut self, timeout: Duration) -> Self {
        self.put_timeout = timeout;
        self
    }

    /// How many times an upload that failed for a passing reason (the
    /// connection lost, the storage answering 5xx, 408 or 429, the upload
    /// URL unreachable) is started again, each time with a fresh URL
    /// (default 3; 0 tries once).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The longest wait between two attempts (default 10 s). The wait
    /// starts at up to 250 ms and doubles, with jitter; a 429's or 503's
    /// `Retry-After` is honoured up to this.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Calls `progress(sent, total)` as the file is handed to the HTTP
    /// connection (for a progress bar); `sent` starts again at 0 on a
    /// retry.
    pub fn progress(mut self, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// The application id.
    pub fn application_id(&self) -> u32 {
        self.application_id
    }

    /// The device type.
    pub fn device_type(&self) -> &str {
        &self.device_type
    }

    /// The version string the device must report.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The git hash the device must report.
    pub fn git_hash(&self) -> &str {
        &self.git_hash
    }
}

/// What the cloud stored for an uploaded ELF.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElfUploadReceipt {
    /// The id of the request that succeeded (the last attempt's).
    pub upload_id: u64,
    /// The topic the request was published to.
    pub topic: String,
    /// Scheme, host and port of the upload URL (its path and signature
    /// are a credential and are not kept).
    pub upload_host: String,
    /// The HTTP status of the accepting answer (200).
    pub status: u16,
    /// Bytes sent.
    pub size: usize,
    /// Attempts it took (1 when the first succeeded).
    pub attempts: u32,
    /// What the ELF is (class, machine, debug-module table).
    pub elf: ElfSummary,
}

/// One failed attempt: the error, and whether (and after how long) to
/// try again.
struct Failure {
    error: Error,
    retry: bool,
    retry_after: Option<Duration>,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        // The connection's own failures pass; a refusal, bad input or a
        // reply that never came does not (see `ElfUpload::reply_timeout`).
        let retry = error.is_retryable() && error.timeout_phase() != Some(Phase::UploadUrl);
        Failure {
            error,
            retry,
            retry_after: None,
        }
    }
}

impl Client {
    /// Uploads a firmware ELF to the cloud (PROTOCOL §11), so that the
    /// cloud can decode the logs of devices running that build.
    ///
    /// Checks the file first (ELF magic, class, headers; whether the
    /// `.ulogger.debug_modules` section is there is in the receipt's
    /// [`ElfSummary`](crate::wire::ElfSummary)) and the
    /// device type (it becomes a topic level); nothing is sent when they
    /// are wrong. Then subscribes to the reply topic, publishes the
    /// request on this client's connection (paced like every publish),
    /// waits for the answer with the upload URL, and `PUT`s the whole file
    /// there with `Content-Type: application/octet-stream`, over the
    /// client's TLS settings (its CA file, else the public roots; its
    /// certificate, if the server asks for one). Returns once the URL
    /// answered 200.
    ///
    /// Passing failures are retried with backoff ([`ElfUpload::retries`]),
    /// each time with a new request and URL.
    ///
    /// ```no_run
    /// use ulogger_cloud::{Client, ElfUpload, MqttConfig};
    ///
    /// # async fn run() -> Result<(), ulogger_cloud::Error> {
    /// let config = MqttConfig::new(42).client_cert("ci.pem.crt", "ci.pem.key");
    /// let client = Client::builder(config).build()?;
    /// let elf = std::fs::read("build/firmware.elf").unwrap_or_default();
    /// let upload = ElfUpload::new(7, "sensor-board", "v1.2.0", "abcdef0").branch("main");
    /// let receipt = client.upload_elf(&upload, elf).await?;
    /// println!("stored in {} attempt(s)", receipt.attempts);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidElf`] and [`ErrorKind::InvalidTopic`] before
    /// anything is sent; [`ErrorKind::Timeout`] with [`Phase::UploadUrl`]
    /// when no answer came; [`ErrorKind::InvalidUploadReply`] when it had
    /// no URL; [`ErrorKind::ElfUploadRefused`] for a non-2xx answer to the
    /// PUT (403: the certificate is another customer's);
    /// [`ErrorKind::ElfUploadConnect`] when the URL could not be reached;
    /// the connection's own errors.
    pub async fn upload_elf(
        &self,
        upload: &ElfUpload,
        elf: impl Into<Bytes>,
    ) -> Result<ElfUploadReceipt, Error> {
        let elf: Bytes = elf.into();
        let span = tracing::info_span!(
            "upload_elf",
            app_id = upload.application_id,
            device_type = %upload.device_type,
            version = %upload.version,
            size = elf.len()
        );
        async {
            let summary = wire::inspect_elf(&elf)?;
            // Not a warning of the library's: the receipt says it, and
            // the caller decides how loud to be (the CLI warns once).
            if !summary.has_debug_modules {
                tracing::info!(
                    "the ELF has no .ulogger.debug_modules section: decoded logs will name no modules"
                );
            }
            let topic = self
                .settings()
                .topics
                .firmware_upload(&upload.device_type)?;
            let http = self.elf_http_client(upload)?;
            let mut attempts = 0u32;
            loop {
                attempts = attempts.saturating_add(1);
                let failure = match self.attempt(upload, &topic, &http, &elf, attempts).await {
                    Ok((upload_id, upload_host, status)) => {
                        tracing::info!(upload_id, attempts, "ELF stored");
                        return Ok(ElfUploadReceipt {
                            upload_id,
                            topic,
                            upload_host,
                            status,
                            size: elf.len(),
                            attempts,
                            elf: summary,
                        });
                    }
                    Err(failure) => failure,
                };
                let retries_done = attempts - 1;
                if !failure.retry || retries_done >= upload.retries {
                    return Err(failure.error);
                }
                let wait = match failure.retry_after {
                    Some(asked) => asked.min(upload.max_backoff).min(LONGEST_WAIT),
                    None => retry::backoff(retries_done, upload.max_backoff, rand::random::<f64>()),
                };
                tracing::warn!(
                    attempts,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    error = %failure.error,
                    "ELF upload failed; trying again with a new upload URL"
                );
                tokio::time::sleep(wait).await;
            }
        }
        .instrument(span)
        .await
    }

    /// One request for a URL and one PUT: (upload id, URL host, status).
    async fn attempt(
        &self,
        upload: &ElfUpload,
        topic: &str,
        http: &reqwest::Client,
        elf: &Bytes,
        attempts: u32,
    ) -> Result<(u64, String, u16), Failure> {
        let upload_id = new_upload_id();
        let url = self.upload_url(upload, topic, upload_id).await?;
        let host = host_of(&url);
        tracing::debug!(upload_id, host, "upload URL received");
        let status = put(http, &url, &host, elf, upload, attempts).await?;
        Ok((upload_id, host, status))
    }

    /// Asks for an upload URL and waits for it.
    async fn upload_url(
        &self,
        upload: &ElfUpload,
        topic: &str,
        upload_id: u64,
    ) -> Result<Url, Error> {
        let settings = self.settings();
        let reply_topic = settings.topics.upload_reply(upload_id)?;
        let request = ElfUploadRequest {
            upload_id,
            customer_id: settings.topics.customer_id(),
            application_id: upload.application_id,
            device_type: upload.device_type.clone(),
            version: upload.version.clone(),
            git_hash: upload.git_hash.clone(),
            branch: upload.branch.clone(),
        };
        let transport = self.transport();
        // Listen before subscribing, so the answer cannot slip past.
        let mut replies = transport.listen(&reply_topic);
        let _unsubscribe = Unsubscribe {
            transport,
            topic: reply_topic.clone(),
        };
        transport.subscribe(reply_topic).await?;
        transport
            .publish(topic.to_owned(), Bytes::from(request.payload()))
            .await?;
        let deadline = crate::transport::deadline_after(Instant::now(), upload.reply_timeout);
        loop {
            tokio::select! {
                message = replies.recv() => {
                    let Some(message) = message else {
                        return Err(ErrorKind::Shutdown.into());
                    };
                    if message.retain {
                        continue;
                    }
                    if let Some(url) = wire::parse_elf_upload_reply(&message.payload, upload_id)? {
                        return Url::parse(&url).map_err(|e| {
                            ErrorKind::InvalidUploadReply(wire::ElfUploadReplyError::NoUrl {
                                found: format!("{} ({e})", host_of_text(&url)),
                            })
                            .into()
                        });
                    }
                    tracing::debug!("ignoring a message on the upload reply topic that is not this request's answer");
                }
                () = sleep_until(deadline) => return Err(ErrorKind::Timeout(Phase::UploadUrl).into()),
            }
        }
    }

    /// An HTTP client with this client's TLS trust and certificate.
    fn elf_http_client(&self, upload: &ElfUpload) -> Result<reqwest::Client, Error> {
        let mut tls = match &self.settings().tls {
            Some(tls) => (**tls).clone(),
            None => crate::tls::client_config(None, None)?,
        };
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let timeout = upload.put_timeout.min(LONGEST_WAIT);
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(self.settings().connect_timeout.min(timeout))
            // A redirected PUT would go elsewhere with the firmware: report it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ulogger-cloud/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::with_source(
                    ErrorKind::InvalidConfig {
                        field: "http",
                        reason: "cannot set up the HTTP client for the ELF upload".into(),
                    },
                    e,
                )
            })
    }
}

/// PUTs the ELF; `Ok(status)` on 2xx.
async fn put(
    http: &reqwest::Client,
    url: &Url,
    host: &str,
    elf: &Bytes,
    upload: &ElfUpload,
    attempts: u32,
) -> Result<u16, Failure> {
    let transport = |e: reqwest::Error| {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout(Phase::ElfPut)
        } else {
            ErrorKind::ElfUploadConnect {
                host: host.to_owned(),
                attempts,
            }
        };
        Failure {
            retry: !e.is_builder(),
            // Without the URL: its query is a signature.
            error: Error::with_source(kind, e.without_url()),
            retry_after: None,
        }
    };
    let body = ProgressBody {
        data: elf.clone(),
        sent: 0,
        progress: upload.progress.clone(),
    };
    let mut response = http
        .put(url.clone())
        .header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )
        .header(CONTENT_LENGTH, HeaderValue::from(elf.len()))
        .body(reqwest::Body::wrap(body))
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
    let mut reply = Vec::new();
    while reply.len() < MAX_REPLY {
        match response.chunk().await {
            Ok(Some(chunk)) => reply.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let retry = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    Err(Failure {
        error: ErrorKind::ElfUploadRefused {
            status: status.as_u16(),
            message: server_message(status, &reply),
            attempts,
        }
        .into(),
        retry,
        retry_after: retry_after.filter(|_| retry),
    })
}

/// What the server said: S3's XML `<Message>`, a JSON `error` or
/// `message`, else the start of the body, else the status's name.
fn server_message(status: StatusCode, reply: &[u8]) -> String {
    let text = String::from_utf8_lossy(reply);
    let from_xml = text
        .split_once("<Message>")
        .and_then(|(_, rest)| rest.split_once("</Message>"))
        .map(|(message, _)| message.to_owned());
    let from_json = || {
        serde_json::from_slice::<serde_json::Value>(reply)
            .ok()
            .and_then(|v| {
                ["error", "message", "detail"]
                    .iter()
                    .find_map(|key| v.get(*key).and_then(|m| m.as_str()).map(str::to_owned))
            })
    };
    let message = from_xml
        .or_else(from_json)
        .unwrap_or_else(|| text.trim().to_owned());
    if message.is_empty() {
        return status.canonical_reason().unwrap_or("no message").to_owned();
    }
    let mut out: String = message
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// A fresh upload id: milliseconds since the epoch times 1,000 plus a
/// random part, so ids of one customer's builds do not meet, grow with
/// time as the reference tool's do, and stay below 2^53 (a JSON number
/// every language reads exactly).
fn new_upload_id() -> u64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0);
    (millis % (1 << 43))
        .saturating_mul(1000)
        .saturating_add(rand::random::<u64>() % 1000)
}

/// `scheme://host[:port]` of a URL: what may be shown of it.
fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

fn host_of_text(url: &str) -> String {
    let end = url
        .find("://")
        .map(|at| at + 3)
        .and_then(|start| url[start..].find('/').map(|i| start + i))
        .unwrap_or(url.len());
    url[..end].to_owned()
}

/// The ELF as an HTTP body, in [`CHUNK`]s, reporting progress.
struct ProgressBody {
    data: Bytes,
    sent: usize,
    progress: Option<ElfProgress>,
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let total = self.data.len();
        if self.sent >= total {
            return Poll::Ready(None);
        }
        let end = total.min(self.sent + CHUNK);
        let chunk = self.data.slice(self.sent..end);
        self.sent = end;
        if let Some(progress) = &self.progress {
            progress(end as u64, total as u64);
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.data.len() - self.sent) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_exact_json_numbers_and_differ() {
        let a = new_upload_id();
        let b = new_upload_id();
        assert!(a < 1 << 53 && b < 1 << 53);
        assert!(a > 1_700_000_000_000_000, "{a}");
        let many: std::collections::HashSet<u64> = (0..50).map(|_| new_upload_id()).collect();
        assert!(many.len() > 40);
    }

    #[test]
    fn only_the_host_of_a_url_is_shown() {
        let url =
            Url::parse("https://bucket.s3.amazonaws.com/k/fw.elf?X-Amz-Signature=secret").unwrap();
        assert_eq!(host_of(&url), "https://bucket.s3.amazonaws.com");
        let local = Url::parse("http://127.0.0.1:8080/elf/abc").unwrap();
        assert_eq!(host_of(&local), "http://127.0.0.1:8080");
        assert_eq!(host_of_text("https://h:1/p?s=x"), "https://h:1");
        assert_eq!(host_of_text("nonsense"), "nonsense");
    }

    #[test]
    fn refusals_quote_what_the_storage_said() {
        let s3 = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
        assert_eq!(
            server_message(StatusCode::FORBIDDEN, s3),
            "Request has expired"
        );
        assert_eq!(
            server_message(
                StatusCode::FORBIDDEN,
                br#"{"error":"certificate of customer 43"}"#
            ),
            "certificate of customer 43"
        );
        assert_eq!(server_message(StatusCode::GONE, b""), "Gone");
    }

    #[test]
    fn the_body_comes_in_chunks_with_progress_and_an_exact_size() {
        use http_body::Body as _;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut body = ProgressBody {
            data: Bytes::from(vec![7u8; CHUNK * 2 + 5]),
            sent: 0,
            progress: Some(Arc::new(move |sent, total| {
                log.lock().unwrap().push((sent, total));
            })),
        };
        assert_eq!(body.size_hint().exact(), Some((CHUNK * 2 + 5) as u64));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut total = 0;
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            total += frame.into_data().map(|d| d.len()).unwrap_or(0);
        }
        assert_eq!(total, CHUNK * 2 + 5);
        assert!(body.is_end_stream());
        let total = (CHUNK * 2 + 5) as u64;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (CHUNK as u64, total),
                (2 * CHUNK as u64, total),
                (total, total)
            ]
        );
    }
}
