//! Reports several commands print alike: a core dump's header (`decode`,
//! `inspect`) and device times in UTC.

use serde_json::{json, Value};
use ulogger_cloud::wire::CoreDumpHeader;

/// A core dump's header as `decode` and `inspect` show it (PROTOCOL §10).
pub(crate) fn core_dump_report(bytes: &[u8]) -> Value {
    let verdict = CoreDumpHeader::decode(bytes).err().map(|e| e.to_string());
    match CoreDumpHeader::read_fields(bytes) {
        Ok(h) => json!({
            "total_size": h.total_size,
            "file_size": bytes.len(),
            "checksum": h.checksum,
            "valid": verdict.is_none(),
            "error": verdict,
            "app_id": h.app_id,
            "serial": h.serial,
            "device_type": h.device_type,
            "version": h.version,
            "git_hash": h.git_hash,
            // Agents 1.2.5+ record one, but where in the dump is not public.
            "crash_cause": Value::Null,
        }),
        Err(e) => json!({"valid": false, "error": e.to_string()}),
    }
}

/// The human form of [`core_dump_report`].
pub(crate) fn core_dump_text(report: &Value) -> String {
    let field = |name: &str| report.get(name).cloned().unwrap_or(Value::Null);
    let text = |name: &str| match field(name) {
        Value::String(s) => s,
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let verdict = match field("error") {
        Value::String(e) => format!("INVALID: {e}"),
        _ => "ok".to_string(),
    };
    let mut out = format!("core dump: {verdict}\n");
    for (label, name) in [
        ("serial", "serial"),
        ("application", "app_id"),
        ("device type", "device_type"),
        ("version", "version"),
        ("git hash", "git_hash"),
        ("size", "total_size"),
        ("file size", "file_size"),
    ] {
        if !field(name).is_null() {
            out.push_str(&format!("  {label:<16}{}\n", text(name)));
        }
    }
    if let Some(sum) = field("checksum").as_u64() {
        out.push_str(&format!("  {:<16}0x{sum:08x} (byte sum)\n", "checksum"));
    }
    if !field("serial").is_null() {
        out.push_str(&format!(
            "  {:<16}unknown (its place in the dump is not public)\n",
            "crash cause"
        ));
    }
    out
}

/// `2023-11-14T22:13:20.123456Z` for Unix microseconds (proleptic
/// Gregorian calendar, UTC).
pub(crate) fn utc_from_unix_micros(us: u64) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard
/// Hinnant's days-to-civil algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
