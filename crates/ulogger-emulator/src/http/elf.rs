//! The firmware ELF upload URLs (PROTOCOL §11): `PUT /elf-upload/{secret}`
//! with the whole ELF as the body, `Content-Type: application/octet-stream`.
//!
//! The URL is the credential, as the platform's presigned URLs are; it
//! takes one upload and expires. A client certificate presented on the
//! connection must be the URL's customer's (its common name
//! `cust-{customer}-...`): another customer's is answered 403. Answers:
//! 200 stored, 400 a wrong content type or an empty body, 403 another
//! customer's certificate, 404 an unknown URL, 410 a used or expired one,
//! 413 a body over [`MAX_ELF`], 503 an outage (a fault) or a failed write.
//!
//! Once stored, the ELF decodes the logs of its firmware that waited for
//! it, or were decoded with an ELF it replaces (`Cloud::decode_for_elf`),
//! before the 200 goes out, whose JSON says
//! how many (`decoded_logs`).

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{refuse, reply, HttpState, Peer};
use crate::certs::customer_of;
use crate::elf_store::UrlRefusal;
use crate::records::{Record, RecordKind};

/// The largest ELF taken: firmware images with full debug information
/// stay far below it.
pub(crate) const MAX_ELF: usize = 256 * 1024 * 1024;

/// Answers a request on an upload URL (`secret` is the path after
/// `/elf-upload/`).
pub(super) async fn put(
    state: &HttpState,
    secret: &str,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::PUT {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "an upload URL takes PUT with the ELF as the body",
        );
    }
    let faults = &state.cloud.faults;
    if faults.take_elf_put_outage() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable (an injected outage); the upload URL stays valid",
        );
    }
    let elfs = &state.cloud.elfs;
    let pending = match elfs.take(secret) {
        Ok(pending) => pending,
        Err(refusal) => {
            let (status, why) = match refusal {
                UrlRefusal::Unknown => (StatusCode::NOT_FOUND, "no such upload URL"),
                UrlRefusal::Used => (StatusCode::GONE, "this upload URL was used already"),
                UrlRefusal::Expired => (StatusCode::GONE, "this upload URL expired"),
            };
            reject(state, None, format!("HTTP {}: {why}", status.as_u16()));
            return refuse(status, format!("{why}: ask for a new one"));
        }
    };
    let app_id = Some(pending.request.application_id);
    if let Peer::Certificate(name) = peer {
        let customer = name.as_deref().and_then(customer_of);
        if customer != Some(pending.customer_id) {
            let whose = match (customer, name) {
                (Some(other), _) => format!("customer {other}"),
                (None, Some(name)) => format!("no customer (common name {name:?})"),
                (None, None) => "no customer (no common name)".into(),
            };
            let why = format!(
                "the client certificate belongs to {whose}, not to customer {} whose upload URL this is",
                pending.customer_id
            );
            reject(state, app_id, format!("HTTP 403: {why}"));
            elfs.give_back(secret, pending);
            return refuse(StatusCode::FORBIDDEN, why);
        }
    }
    let octets = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/octet-stream"));
    if !octets {
        elfs.give_back(secret, pending);
        return refuse(
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/octet-stream",
        );
    }
    let body = match Limited::new(request.into_body(), MAX_ELF).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            elfs.give_back(secret, pending);
            if e.is::<http_body_util::LengthLimitError>() {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the ELF is over {MAX_ELF} bytes"),
                );
            }
            return refuse(StatusCode::BAD_REQUEST, "the body was not received whole");
        }
    };
    if body.is_empty() {
        elfs.give_back(secret, pending);
        return refuse(StatusCode::BAD_REQUEST, "the body is empty: PUT the ELF");
    }
    let stored = match elfs.store(secret, &pending, &body) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "cannot store an uploaded ELF");
            elfs.give_back(secret, pending);
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "not stored: the ELF could not be written",
            );
        }
    };
    let mut record = Record::new(RecordKind::ElfUpload, "PUT /elf-upload", body.len());
    record.app_id = app_id;
    record.file = Some(stored.file.clone());
    // Stored already: a record the database refuses is only missing from
    // the book.
    let _ = state.cloud.records.append(record);
    tracing::info!(
        app_id = stored.app_id,
        device_type = %stored.device_type,
        version = %stored.version,
        size = stored.size,
        "firmware ELF stored"
    );
    // The logs that waited for this firmware's ELF are decoded before the
    // answer (off the runtime's thread): when the uploader hears 200, the
    // data API serves them decoded.
    let cloud = state.cloud.clone();
    let elf = stored.clone();
    let decoded = match tokio::task::spawn_blocking(move || cloud.decode_for_elf(&elf)).await {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot decode the logs that waited for this ELF");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "decoding the logs that waited for this ELF failed");
            0
        }
    };
    if decoded > 0 {
        tracing::info!(
            decoded,
            device_type = %stored.device_type,
            version = %stored.version,
            "decoded the logs that waited for this ELF"
        );
    }
    reply(
        StatusCode::OK,
        json!({
            "success": true,
            "stored": stored.file,
            "size": stored.size,
            "decoded_logs": decoded,
        }),
    )
}

fn reject(state: &HttpState, app_id: Option<u32>, reason: String) {
    let mut record = Record::new(RecordKind::ElfUpload, "PUT /elf-upload", 0).rejected(reason);
    record.app_id = app_id;
    let _ = state.cloud.records.append(record);
}
