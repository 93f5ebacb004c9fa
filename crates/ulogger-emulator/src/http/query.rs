//! The data API's queries (PROTOCOL §13): `GET /metrics`, `GET /events`
//! and `GET /logs` with the bearer API token, answered from the record
//! database as `{"count": N, "<route>": [...]}`, newest first.
//!
//! Parameters, all optional: `application_id`, `device_serial`,
//! `metric_name` (metrics only), `start` and `end` (a window relative to
//! now such as `30s`, `5m`, `1h`, `7d`, `2w`, or epoch seconds), `limit`
//! (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]). A parameter that is
//! unknown, repeated or malformed is answered 400 naming it, so that a
//! typo is not mistaken for an empty result.
//!
//! `/logs` answers binary logs (their header fields and decoding state),
//! their decoded records and text-log lines, told apart by `type`
//! (docs/protocol.md §13 describes the items).

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::{authorised, refuse, reply, HttpState};
use crate::store::{epoch_seconds, Query, Table};

/// Items per answer unless `limit` says otherwise.
pub(crate) const DEFAULT_LIMIT: u32 = 100;
/// The largest `limit` taken: one answer stays a few megabytes at most.
pub(crate) const MAX_LIMIT: u32 = 10_000;

/// The table a query path reads, if it is one.
pub(super) fn table(path: &str) -> Option<Table> {
    match path.trim_end_matches('/') {
        "/metrics" => Some(Table::Metrics),
        "/events" => Some(Table::Events),
        "/logs" => Some(Table::Logs),
        _ => None,
    }
}

/// Answers a query request on `table`'s path.
pub(super) async fn answer(
    state: &HttpState,
    table: Table,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let key = list_key(table);
    if request.method() != Method::GET {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, format!("/{key} takes GET"));
    }
    if let Err(reason) = authorised(state, request) {
        return refuse(StatusCode::UNAUTHORIZED, reason);
    }
    let query = match parse(
        table,
        request.uri().query().unwrap_or(""),
        SystemTime::now(),
    ) {
        Ok(query) => query,
        // The parameter at fault is named for programs as well as people.
        Err(bad) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({ "success": false, "error": bad.message, "parameter": bad.parameter }),
            )
        }
    };
    match state.cloud.records.query(table, &query) {
        Ok(items) => reply(StatusCode::OK, json!({ "count": items.len(), key: items })),
        Err(e) => {
            tracing::error!(error = %e, "data API query failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "the query failed")
        }
    }
}

fn list_key(table: Table) -> &'static str {
    match table {
        Table::Metrics => "metrics",
        Table::Events => "events",
        Table::Logs => "logs",
    }
}

/// A parameter the query cannot take.
#[derive(Debug, PartialEq)]
pub(crate) struct BadParameter {
    pub(crate) parameter: String,
    /// `parameter: reason`.
    pub(crate) message: String,
}

fn bad(parameter: &str, reason: impl Into<String>) -> BadParameter {
    BadParameter {
        parameter: parameter.to_owned(),
        message: format!("{parameter}: {}", reason.into()),
    }
}

/// Reads a query string; relative times count back from `now`.
pub(crate) fn parse(table: Table, text: &str, now: SystemTime) -> Result<Query, BadParameter> {
    let mut query = Query {
        app_id: None,
        serial: None,
        name: None,
        start: None,
        end: None,
        limit: DEFAULT_LIMIT,
    };
    let mut seen: Vec<String> = Vec::new();
    let now = epoch_seconds(now);
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(name).map_err(|e| bad(name, e))?;
        let value = decode(value).map_err(|e| bad(&name, e))?;
        if seen.contains(&name) {
            return Err(bad(&name, "given more than once"));
        }
        seen.push(name.clone());
        match name.as_str() {
            "application_id" => {
                let id = value
                    .parse::<u32>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()));
                query.app_id =
                    Some(id.ok_or_else(|| {
                        bad(&name, format!("{value:?} is not an application id"))
                    })?);
            }
            "device_serial" if value.is_empty() => return Err(bad(&name, "empty")),
            "device_serial" => query.serial = Some(value),
            "metric_name" if table == Table::Metrics => {
                if value.is_empty() {
                    return Err(bad(&name, "empty"));
                }
                query.name = Some(value);
            }
            "start" => query.start = Some(time(&value, now).map_err(|e| bad(&name, e))?),
            "end" => query.end = Some(time(&value, now).map_err(|e| bad(&name, e))?),
            "limit" => {
                query.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(
                            &name,
                            format!("{value:?} is not a number from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            _ => {
                let known = match table {
                    Table::Metrics => {
                        "application_id, device_serial, metric_name, start, end, limit"
                    }
                    Table::Events | Table::Logs => {
                        "application_id, device_serial, start, end, limit"
                    }
                };
                return Err(bad(&name, format!("unknown parameter (known: {known})")));
            }
        }
    }
    if let (Some(start), Some(end)) = (query.start, query.end) {
        if start > end {
            return Err(bad("start", "after end"));
        }
    }
    Ok(query)
}

/// `30s`, `5m`, `1h`, `7d`, `2w` back from `now`, or epoch seconds.
fn time(text: &str, now: i64) -> Result<i64, String> {
    let expected = || format!("{text:?} is neither epoch seconds nor a window such as 5m, 1h, 7d");
    let unit = match text.as_bytes().last() {
        Some(b's') => 1,
        Some(b'm') => 60,
        Some(b'h') => 3600,
        Some(b'd') => 86_400,
        Some(b'w') => 7 * 86_400,
        Some(b'0'..=b'9') => {
            return text
                .parse::<i64>()
                .ok()
                .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(expected);
        }
        _ => return Err(expected()),
    };
    let count = &text[..text.len() - 1];
    count
        .parse::<i64>()
        .ok()
        .filter(|_| !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.checked_mul(unit))
        .map(|back| now.saturating_sub(back))
        .ok_or_else(expected)
}

/// Percent-decodes a query component (`+` is a space, as forms send it).
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a % not followed by two hex digits")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const NOW: u64 = 1_700_000_000;

    fn at(text: &str) -> Result<Query, BadParameter> {
        parse(Table::Metrics, text, UNIX_EPOCH + Duration::from_secs(NOW))
    }

    #[test]
    fn the_platform_s_own_query_reads() {
        let q =
            at("application_id=7&device_serial=SN%201&metric_name=t+c&start=5m&limit=10").unwrap();
        assert_eq!(q.app_id, Some(7));
        assert_eq!(q.serial.as_deref(), Some("SN 1"));
        assert_eq!(q.name.as_deref(), Some("t c"));
        assert_eq!(q.start, Some(NOW as i64 - 300));
        assert_eq!(q.end, None);
        assert_eq!(q.limit, 10);
        assert_eq!(at("").unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn windows_and_epoch_bounds() {
        for (text, back) in [
            ("30s", 30),
            ("1h", 3600),
            ("7d", 7 * 86_400),
            ("2w", 14 * 86_400),
        ] {
            assert_eq!(time(text, NOW as i64), Ok(NOW as i64 - back), "{text}");
        }
        let q = at("start=1600000000&end=1600000100").unwrap();
        assert_eq!((q.start, q.end), (Some(1_600_000_000), Some(1_600_000_100)));
    }

    #[test]
    fn each_bad_parameter_is_named() {
        for (text, parameter) in [
            ("start=5x", "start"),
            ("start=m", "start"),
            ("start=-5m", "start"),
            ("end=soon", "end"),
            ("limit=0", "limit"),
            ("limit=10001", "limit"),
            ("limit=ten", "limit"),
            ("application_id=x", "application_id"),
            ("application_id=+7", "application_id"),
            ("device_serial=", "device_serial"),
            ("serial=A", "serial"),
            ("limit=1&limit=2", "limit"),
            ("start=200&end=100", "start"),
            ("device_serial=%zz", "device_serial"),
        ] {
            assert_eq!(at(text).unwrap_err().parameter, parameter, "{text}");
        }
        let events = parse(Table::Events, "metric_name=t", SystemTime::now());
        assert_eq!(events.unwrap_err().parameter, "metric_name");
    }
}
