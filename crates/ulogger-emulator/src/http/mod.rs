//! The cloud's HTTP telemetry endpoints (PROTOCOL §8, "HTTP fallback"):
//! `POST /publish/metrics` and `POST /publish/events` with a bearer API
//! token the emulator issued, answered in JSON, over HTTPS with the
//! emulator's CA (no client certificate) or plain HTTP.
//!
//! Bodies go through the same verifier as MQTT telemetry and are
//! recorded with the same records (topic `POST /publish/...`).
//!
//! The data API's queries (`GET /metrics`, `/events`, `/logs`, PROTOCOL
//! §13) are answered by [`query`] with the same token, and the firmware
//! ELF upload URLs (`PUT /elf-upload/...`, PROTOCOL §11) by [`elf`].

mod elf;
mod query;

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::Rng as _;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use ulogger_wire::MAX_MESSAGE_SIZE;

use crate::certs::{read_certs, read_key, CertPaths};
use crate::cloud::Cloud;
use crate::durable::{write_atomic, Access};
use crate::faults::HttpFault;
use crate::records::{NotStored, Record, RecordKind};
use crate::supervise::{Failures, Task};
use crate::EmulatorError;

/// How long a TLS handshake, or a request's headers, may take.
const STALL: Duration = Duration::from_secs(10);

/// The file of a kept data directory that holds its API token.
pub(crate) const TOKEN_FILE: &str = "api_token";

/// The API token: for a kept data directory the one in its
/// [`TOKEN_FILE`] (issued there on first start, owner-only), so that it
/// stays valid across restarts like the session tokens; else a new one.
fn api_token(kept_dir: Option<&Path>) -> Result<String, EmulatorError> {
    let Some(dir) = kept_dir else {
        return Ok(new_token());
    };
    let path = dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_token(text.trim()) => return Ok(text.trim().to_owned()),
        // Missing or not a token (damaged, edited): issue a new one.
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(EmulatorError::io("read", &path, e)),
    }
    let token = new_token();
    write_atomic(&path, format!("{token}\n").as_bytes(), Access::OwnerOnly)
        .map_err(|e| EmulatorError::io("write", &path, e))?;
    Ok(token)
}

fn is_token(text: &str) -> bool {
    text.len() > 4 && text.starts_with("ulg_") && text.bytes().all(|b| b.is_ascii_graphic())
}

/// A fresh API token: `ulg_` and 32 random letters and digits.
fn new_token() -> String {
    let random: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("ulg_{random}")
}

/// A TLS acceptor presenting the emulator's server certificate, HTTP/1.1.
/// A client certificate is asked for but not required (the API token, or
/// an upload URL, authenticates); one that is presented must chain to the
/// emulator's CA, and an upload URL checks whose it is.
pub(crate) fn acceptor(certs: &CertPaths) -> Result<TlsAcceptor, EmulatorError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(&certs.ca_cert)? {
        roots.add(cert).map_err(EmulatorError::Tls)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(EmulatorError::ClientVerifier)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EmulatorError::Tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            read_certs(&certs.server_cert)?,
            read_key(&certs.server_key)?,
        )
        .map_err(EmulatorError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Who is at the other end of an HTTP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Plain HTTP, or TLS without a client certificate.
    Anonymous,
    /// TLS with a client certificate (verified against the CA): its
    /// common name, if it has one.
    Certificate(Option<String>),
}

/// What the endpoints share.
pub(crate) struct HttpState {
    pub(crate) cloud: Cloud,
    pub(crate) token: String,
    /// Requests received (any path, any token), for tests.
    pub(crate) requests: AtomicU64,
}

/// The base URL of the HTTP port at `addr` (`https://` with TLS).
pub(crate) fn base_url(tls: bool, addr: std::net::SocketAddr) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Prepares the endpoints on `listener` for `cloud`: their state (the API
/// token of `kept_dir`, or a new one) and the accept loop as a task.
pub(crate) fn start(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    cloud: Cloud,
    kept_dir: Option<&Path>,
    failures: &Arc<Failures>,
) -> Result<(Arc<HttpState>, Task), EmulatorError> {
    let state = Arc::new(HttpState {
        cloud,
        token: api_token(kept_dir)?,
        requests: Default::default(),
    });
    let task = Box::pin(run(listener, tls, state.clone(), failures.clone()));
    Ok((state, task))
}

/// Accepts connections until cancelled; connection tasks end with it.
async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<HttpState>,
    failures: Arc<Failures>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, most likely: let connections
                        // finish rather than spin on the backlog.
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let state = state.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    match tls {
                        None => serve(socket, state, Peer::Anonymous).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(STALL, acceptor.accept(socket)).await {
                                Ok(Ok(stream)) => {
                                    let peer = match stream.get_ref().1.peer_certificates() {
                                        Some([first, ..]) => {
                                            Peer::Certificate(crate::certs::common_name(first))
                                        }
                                        _ => Peer::Anonymous,
                                    };
                                    serve(stream, state, peer).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "HTTPS handshake refused");
                                }
                                Err(_) => tracing::info!(%peer, "HTTPS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Some(done) = connections.join_next() => failures.note("http connection", done),
        }
    }
}

async fn serve<S>(stream: S, state: Arc<HttpState>, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(handle(&state, &peer, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(STALL)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "success": false, "error": error.into() }))
}

/// Whether the request carries `Authorization: Bearer <our token>`. The
/// token itself is never logged or recorded.
fn authorised(state: &HttpState, request: &Request<Incoming>) -> Result<(), &'static str> {
    let Some(value) = request.headers().get(AUTHORIZATION) else {
        return Err("missing Authorization header: send Authorization: Bearer <API token>");
    };
    let value = value.to_str().map_err(|_| "invalid API token")?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or("the Authorization header is not a Bearer token")?;
    if token == state.token {
        Ok(())
    } else {
        Err("invalid API token")
    }
}

async fn handle(
    state: &HttpState,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let path = request.uri().path().to_owned();
    if let Some(secret) = path.strip_prefix(crate::elf_store::UPLOAD_PATH) {
        return elf::put(state, secret, peer, request).await;
    }
    let kind = match path.as_str() {
        "/publish/metrics" => RecordKind::Metrics,
        "/publish/events" => RecordKind::Events,
        _ => match query::table(&path) {
            Some(table) => return query::answer(state, table, &request).await,
            None => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no endpoint {path}: use /publish/metrics, /publish/events, \
                         /metrics, /events, /logs, or an upload URL (/elf-upload/...)"
                    ),
                )
            }
        },
    };
    if request.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes POST"));
    }
    if let Err(reason) = authorised(state, &request) {
        let record = Record::new(RecordKind::Rejected, format!("POST {path}"), 0)
            .rejected(format!("HTTP 401: {reason}"));
        // Refused either way: a record the database refuses is only
        // missing from the book.
        let _ = state.cloud.records.append(record);
        return refuse(StatusCode::UNAUTHORIZED, reason);
    }
    match state.cloud.faults.take_http_fault() {
        Some(HttpFault::ServerError) => {
            return refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal server error (an injected fault)",
            )
        }
        Some(HttpFault::Throttled { retry_after_secs }) => {
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests (an injected fault)",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return response;
        }
        Some(HttpFault::Garbage) => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"<html><body>Service temporarily unavailable</body></html>",
            )));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return response;
        }
        None => {}
    }
    let json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().starts_with("application/json"));
    if !json {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/json",
        );
    }
    let gzip_header = match request.headers().get(CONTENT_ENCODING) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unsupported Content-Encoding (only gzip)",
            )
        }
    };
    let body = match Limited::new(request.into_body(), MAX_MESSAGE_SIZE)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_MESSAGE_SIZE} bytes"),
            )
        }
        Err(e) => {
            tracing::debug!(error = %e, "HTTP body not received whole");
            return refuse(StatusCode::BAD_REQUEST, "the body was not received whole");
        }
    };
    let size = body.len();
    match state.cloud.http_telemetry(kind, &path, &body, gzip_header) {
        Ok(Ok(())) => reply(
            StatusCode::OK,
            json!({ "success": true, "message": "stored", "size": size }),
        ),
        Ok(Err(reason)) => refuse(StatusCode::BAD_REQUEST, reason),
        // HTTP's way of withholding the PUBACK: the sender retries a 5xx.
        Err(NotStored) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "not stored: the record database refused the write",
        ),
    }
}
