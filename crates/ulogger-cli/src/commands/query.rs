//! `ulogger query metrics|events|logs`: read back what devices sent,
//! through the data API (PROTOCOL §13) of the platform or of a local
//! emulator, as a table or (`--json`) the API's own answer.
//!
//! Settings as for the HTTPS telemetry sender: `--api-url`, `--api-token`
//! (`ULOGGER_API_TOKEN`), `--ca`, `--timeout`, each also from the config
//! file. Exit codes as everywhere (see exit.rs): a parameter the API
//! refuses is bad input (2), no answer a network failure (3), a refused
//! token or any other error status the cloud refusing (4).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::Value;
use ulogger_cloud::DEFAULT_API_URL;

use crate::connection::ConfigArg;
use crate::connection::DEFAULT_TIMEOUT_SECS;
use crate::exit::{Exit, Failure};
use crate::Global;

/// What to read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Metric samples (`GET /metrics`).
    Metrics,
    /// Events (`GET /events`).
    Events,
    /// Binary logs (their headers and decoding state), their decoded
    /// records, and text-log entries (`GET /logs`).
    Logs,
}

impl Kind {
    fn route(self) -> &'static str {
        match self {
            Kind::Metrics => "metrics",
            Kind::Events => "events",
            Kind::Logs => "logs",
        }
    }
}

/// Arguments of `ulogger query`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to read: metrics, events or logs.
    #[arg(value_enum)]
    kind: Kind,
    #[command(flatten)]
    config: ConfigArg,
    /// The API's base URL [default: `https://api.ulogger.ai`; also
    /// `api_url` in the config file]; an emulator prints its own.
    #[arg(long, env = "ULOGGER_API_URL", value_name = "URL")]
    api_url: Option<String>,
    /// API token (`ulg_...`) [also `api_token` in the config file]. Prefer
    /// the variable or the file: a flag's value is visible to other users
    /// in the process list.
    #[arg(
        long,
        env = "ULOGGER_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    api_token: Option<String>,
    /// CA certificate(s) to trust instead of the public roots, e.g. the
    /// emulator's ca.pem for its HTTPS [also `ca` in the config file].
    #[arg(long, env = "ULOGGER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Seconds to wait for the answer [default: 10; also `timeout` in the
    /// config file].
    #[arg(long, env = "ULOGGER_TIMEOUT", value_name = "SECS", value_parser = crate::duration::secs)]
    timeout: Option<u64>,
    /// Only this application.
    #[arg(long, visible_alias = "app", value_name = "ID")]
    app_id: Option<u32>,
    /// Only this device.
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// Only the metric of this name (metrics only).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// From: a window back from now (30s, 5m, 1h, 7d) or epoch seconds.
    #[arg(long, value_name = "WHEN")]
    start: Option<String>,
    /// Until: as --start.
    #[arg(long, value_name = "WHEN")]
    end: Option<String>,
    /// At most this many items, newest first [the API's default: 100].
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
}

/// Runs `ulogger query`.
pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    if args.name.is_some() && args.kind != Kind::Metrics {
        return Err(bad_input(anyhow!(
            "--name selects a metric: it goes with `ulogger query metrics`"
        )));
    }
    let file = args.config.file()?;
    let token = args
        .api_token
        .clone()
        .or_else(|| file.api_token.clone())
        .ok_or_else(|| {
            bad_input(anyhow!(
                "no API token: pass --api-token, set ULOGGER_API_TOKEN or api_token in the config file"
            ))
        })?;
    let base = args
        .api_url
        .clone()
        .or_else(|| file.api_url.clone())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let url = query_url(&base, &args)?;
    let ca = args.ca.clone().or_else(|| file.ca.clone());
    let timeout = Duration::from_secs(
        args.timeout
            .or(file.timeout)
            .unwrap_or(DEFAULT_TIMEOUT_SECS),
    );
    let client = crate::https::client(ca.as_deref(), timeout)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, text) = runtime.block_on(async {
        let response = client
            .get(url.clone())
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| network(&url, e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| network(&url, e))?;
        Ok::<_, Exit>((status, text))
    })?;
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        return Err(refusal(status, body.as_ref(), &text));
    }
    let body = body.ok_or_else(|| {
        Exit::new(
            Failure::Refused,
            anyhow!("{status} from {url}, but the body is not JSON"),
        )
    })?;
    let items = body
        .get(args.kind.route())
        .and_then(Value::as_array)
        .ok_or_else(|| {
            Exit::new(
                Failure::Refused,
                anyhow!("the answer has no \"{}\" list: {body}", args.kind.route()),
            )
        })?;
    if global.json {
        outln!("{body}");
    } else if items.is_empty() {
        eprintln!("no {} in this window", args.kind.route());
    } else {
        out!("{}", table(args.kind, items));
    }
    Ok(())
}

/// `{base}/{route}?...` with the filters given.
fn query_url(base: &str, args: &Args) -> Result<reqwest::Url, Exit> {
    let mut url = reqwest::Url::parse(base.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .ok_or_else(|| {
            bad_input(anyhow!(
                "--api-url {base:?} is not an http(s) URL; expected e.g. {DEFAULT_API_URL}"
            ))
        })?;
    let path = format!("{}/{}", url.path().trim_end_matches('/'), args.kind.route());
    url.set_path(&path);
    {
        let mut pairs = url.query_pairs_mut();
        let app_id = args.app_id.map(|id| id.to_string());
        let limit = args.limit.map(|n| n.to_string());
        let filters = [
            ("application_id", app_id.as_deref()),
            ("device_serial", args.serial.as_deref()),
            ("metric_name", args.name.as_deref()),
            ("start", args.start.as_deref()),
            ("end", args.end.as_deref()),
            ("limit", limit.as_deref()),
        ];
        for (key, value) in filters {
            if let Some(value) = value {
                pairs.append_pair(key, value);
            }
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    Ok(url)
}

fn bad_input(error: anyhow::Error) -> Exit {
    Exit::new(Failure::BadInput, error)
}

fn network(url: &reqwest::Url, error: reqwest::Error) -> Exit {
    // The URL without its query: the filters are the user's own input.
    let mut shown = url.clone();
    shown.set_query(None);
    Exit::new(
        Failure::Network,
        anyhow!(error).context(format!("no answer from {shown}")),
    )
}

/// A non-2xx answer: its error text, and the exit code it means.
fn refusal(status: reqwest::StatusCode, body: Option<&Value>, text: &str) -> Exit {
    let error = body
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .map_or_else(|| text.trim().chars().take(200).collect(), str::to_owned);
    let parameter = body
        .and_then(|b| b.get("parameter"))
        .and_then(Value::as_str);
    if status == reqwest::StatusCode::BAD_REQUEST {
        let flag = match parameter {
            Some("application_id") => Some("--app-id"),
            Some("device_serial") => Some("--serial"),
            Some("metric_name") => Some("--name"),
            Some("start") => Some("--start"),
            Some("end") => Some("--end"),
            Some("limit") => Some("--limit"),
            _ => None,
        };
        let hint =
            flag.map(|flag| format!("check {flag}; times are 30s, 5m, 1h, 7d or epoch seconds"));
        return Exit::new(
            Failure::BadInput,
            anyhow!("the API refused the query: {error}"),
        )
        .with_hint(hint);
    }
    let hint = (status == reqwest::StatusCode::UNAUTHORIZED)
        .then(|| crate::https::API_TOKEN_HINT.to_owned());
    Exit::new(Failure::Refused, anyhow!("{status}: {error}")).with_hint(hint)
}

/// The items as aligned columns, a header first.
fn table(kind: Kind, items: &[Value]) -> String {
    let header: &[&str] = match kind {
        Kind::Metrics => &["TIME", "SERIAL", "APP", "NAME", "VALUE"],
        Kind::Events => &["TIME", "SERIAL", "APP", "TYPE"],
        Kind::Logs => &["TIME", "SERIAL", "APP", "KIND", "ENTRY"],
    };
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for item in items {
        let text = |key: &str| match item.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => "-".to_owned(),
            Some(other) => other.to_string(),
        };
        let time = wall_time(item).unwrap_or_else(|| time_of(item.get("timestamp")));
        let serial = match kind {
            Kind::Logs => text("serial"),
            _ => text("device_serial"),
        };
        let mut row = vec![time, serial, text("application_id")];
        match kind {
            Kind::Metrics => row.extend([text("name"), text("value")]),
            Kind::Events => row.push(text("type")),
            Kind::Logs => {
                row.push(text("type"));
                row.push(log_entry(item));
            }
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len() - 1;
        for (c, cell) in row.iter().enumerate() {
            if c == last {
                let _ = writeln!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<width$}  ", width = widths[c]);
            }
        }
    }
    out
}

/// A text entry's level and message, a decoded record as `ulogger
/// decode` prints it (its problems on lines of their own), or a binary
/// log's header fields and how far its decoding got.
fn log_entry(item: &Value) -> String {
    if item.get("type").and_then(Value::as_str) == Some("record") {
        return record_entry(item);
    }
    if item.get("type").and_then(Value::as_str) == Some("text") {
        let level = match item.get("lv").and_then(Value::as_u64) {
            Some(1) => "DEBUG",
            Some(2) => "INFO",
            Some(3) => "WARNING",
            Some(4) => "ERROR",
            Some(5) => "CRITICAL",
            _ => "?",
        };
        let message = item.get("m").and_then(Value::as_str).unwrap_or_default();
        return format!("{level} {message}");
    }
    let fields = [
        "version",
        "session_token",
        "sequence",
        "anchor_tick",
        "tick_rate_hz",
        "epoch_time_us",
        "used_bytes",
        "size",
    ];
    let header = fields
        .iter()
        .filter_map(|key| item.get(*key).map(|v| format!("{key}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let Some(decoding) = item.get("decoding") else {
        return header;
    };
    let count = |key: &str| decoding.get(key).and_then(Value::as_u64).unwrap_or(0);
    let state = match decoding.get("state").and_then(Value::as_str) {
        Some("decoded") => {
            let mut text = format!("decoded: {} records", count("records"));
            if count("with_problems") > 0 {
                text.push_str(&format!(", {} with problems", count("with_problems")));
            }
            text
        }
        _ => {
            let reason = decoding.get("reason").and_then(Value::as_str);
            format!("not decoded: {}", reason.unwrap_or("no reason given"))
        }
    };
    format!("{header}; {state}")
}

/// `[+uptime ]LEVEL MODULE message`, then `    ! problem` per problem.
fn record_entry(item: &Value) -> String {
    let text = |key: &str| item.get(key).and_then(Value::as_str).unwrap_or_default();
    let time = item.get("time");
    let kind = time.and_then(|t| t.get("kind")).and_then(Value::as_str);
    let field = |key: &str| time.and_then(|t| t.get(key)).and_then(Value::as_u64);
    // The wall clock is the TIME column; other times are the device's own.
    let when = match (kind, field("micros"), field("ticks"), field("frame_seq")) {
        (Some("uptime"), Some(us), _, _) => {
            format!("+{}.{:06}s ", us / 1_000_000, us % 1_000_000)
        }
        (Some("uptime"), None, Some(ticks), _) => format!("+{ticks}ticks "),
        (Some("sequence"), _, _, Some(seq)) => format!("#{seq} "),
        _ => String::new(),
    };
    let module = match (
        item.get("module").and_then(Value::as_str),
        item.get("module_index").and_then(Value::as_u64),
    ) {
        (Some(name), _) => name.to_owned(),
        (None, Some(31)) => "ALWAYS".to_owned(),
        (None, Some(index)) if index < 32 => format!("{:#x}", 1u32 << index),
        (None, _) => "?".to_owned(),
    };
    let mut line = format!(
        "{when}{:<8} {module:<10} {}",
        text("level"),
        text("message")
    )
    .trim_end()
    .to_owned();
    for problem in item
        .get("problems")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let message = problem.get("message").and_then(Value::as_str);
        line.push_str(&format!("\n    ! {}", message.unwrap_or("?")));
    }
    line
}

/// A decoded record's wall-clock time, to the microsecond (its
/// `timestamp` is the same as a float, which may be a little off).
fn wall_time(item: &Value) -> Option<String> {
    let time = item.get("time")?;
    if time.get("kind")?.as_str()? != "wall" {
        return None;
    }
    let micros = time.get("unix_us")?.as_i64()?;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Epoch seconds as RFC 3339 (UTC), or the value as it came.
fn time_of(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "-".to_owned();
    };
    let nanos = value.as_f64().map(|s| (s * 1e9) as i128);
    nanos
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .and_then(|t| {
            // Whole seconds unless the entry has a fraction.
            let t = if value.is_f64() {
                t
            } else {
                t.replace_nanosecond(0).ok()?
            };
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_show_each_kind_s_fields() {
        let items = [
            json!({"name": "temp", "value": 21, "timestamp": 1700000000, "device_serial": "SN1", "application_id": 7}),
            json!({"name": "humidity", "value": 0.5, "timestamp": 1700000001, "device_serial": "SN-22", "application_id": 7}),
        ];
        let text = table(Kind::Metrics, &items);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME "), "{text}");
        assert!(
            lines[1].starts_with("2023-11-14T22:13:20Z  SN1  "),
            "{text}"
        );
        assert!(lines[1].ends_with("temp      21"), "{text}");
        assert!(lines[2].ends_with("humidity  0.5"), "{text}");

        let logs = [
            json!({"type": "text", "t": 1.5, "timestamp": 1.5, "lv": 4, "m": "oops", "serial": "S", "application_id": 1}),
            json!({"type": "binary", "timestamp": 2, "version": 3, "session_token": 9, "anchor_tick": 1,
                   "tick_rate_hz": 1000, "used_bytes": 10, "size": 27, "serial": "S", "application_id": 1}),
        ];
        let text = table(Kind::Logs, &logs);
        assert!(text.contains("1970-01-01T00:00:01.5Z"), "{text}");
        assert!(text.contains("ERROR oops"), "{text}");
        assert!(
            text.contains(
                "version=3 session_token=9 anchor_tick=1 tick_rate_hz=1000 used_bytes=10 size=27"
            ),
            "{text}"
        );
    }

    #[test]
    fn decoded_records_read_as_decode_prints_them() {
        let logs = [
            json!({"type": "record", "timestamp": 1699999900.25, "serial": "S", "application_id": 1,
                   "time": {"kind": "wall", "unix_us": 1699999900250000i64},
                   "level": "INFO", "module": "MAIN", "module_index": 0, "message": "boot: 3",
                   "problems": []}),
            json!({"type": "record", "timestamp": 2, "serial": "S", "application_id": 1,
                   "time": {"kind": "uptime", "ticks": 1500, "micros": 1500000},
                   "level": "ERROR", "module": null, "module_index": 20, "message": "",
                   "problems": [{"kind": "unknown_format_address", "message": "format address 0xfffffff0 is in no allocated section"}]}),
            json!({"type": "binary", "timestamp": 2, "version": 4, "serial": "S", "application_id": 1,
                   "decoding": {"state": "no_elf", "reason": "no ELF for board 1.0"}}),
            json!({"type": "binary", "timestamp": 2, "version": 4, "serial": "S", "application_id": 1,
                   "decoding": {"state": "decoded", "records": 5, "with_problems": 1}}),
        ];
        let text = table(Kind::Logs, &logs);
        assert!(text.contains("2023-11-14T22:11:40.25Z"), "{text}");
        assert!(
            text.contains("record  INFO     MAIN       boot: 3"),
            "{text}"
        );
        assert!(text.contains("+1.500000s ERROR    0x100000\n"), "{text}");
        assert!(text.contains("\n    ! format address 0xfffffff0"), "{text}");
        assert!(
            text.contains("version=4; not decoded: no ELF for board 1.0"),
            "{text}"
        );
        assert!(
            text.contains("decoded: 5 records, 1 with problems"),
            "{text}"
        );
    }
}
