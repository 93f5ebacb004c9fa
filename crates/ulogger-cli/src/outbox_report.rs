//! How a durable outbox's state and delivery failures are reported, the
//! same way by every command that owns or reads one (`agent`,
//! `upload --outbox`, `outbox status`).

use std::time::SystemTime;

use serde_json::json;
use ulogger_cloud::{Outbox, OutboxStatus};

use crate::exit;

pub(crate) fn status_json(status: &OutboxStatus) -> serde_json::Value {
    json!({
        "dir": status.dir,
        "owner_pid": status.owner_pid,
        "queued": status.queued,
        "queued_bytes": status.queued_bytes,
        "oldest_age_secs": status.oldest_age.map(|a| a.as_secs_f64()),
        "in_flight": status.in_flight,
        "dead": status.dead,
        "delivered": status.delivered,
        "evicted": status.evicted,
        "corrupt": status.corrupt,
        "last_error": status.last_error,
        "failing_since": status.failing_since.map(rfc3339),
        "failed_attempts": status.failed_attempts,
        "delivery_rate": status.delivery_rate,
    })
}

/// A moment as the time of day in UTC, for lines a person reads next to
/// others of the same day.
pub(crate) fn clock(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at);
    format!("{:02}:{:02}:{:02} UTC", at.hour(), at.minute(), at.second())
}

/// How many attempts, in words.
pub(crate) fn attempts(n: u64) -> String {
    match n {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    }
}

/// A moment as RFC 3339 (UTC), for JSON.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What changed about the outbox's delivery failure since it was last
/// reported.
pub(crate) enum FailureChange {
    /// A failure started, or its cause changed.
    Failing {
        /// The error and its causes, on one line.
        cause: String,
        /// What to do about it, as `upload` would say for the same error.
        hint: Option<String>,
        since: SystemTime,
        /// Records waiting for delivery.
        queued: usize,
    },
    /// Delivery works again.
    Recovered { since: SystemTime, attempts: u64 },
}

impl FailureChange {
    /// The change as a line (and a hint line) for a person.
    pub(crate) fn text(&self) -> String {
        match self {
            FailureChange::Failing {
                cause,
                hint,
                since,
                queued,
            } => {
                let waiting = match queued {
                    1 => "1 record waits".to_owned(),
                    n => format!("{n} records wait"),
                };
                let mut text = format!(
                    "delivery failing since {}: {cause} ({waiting})",
                    clock(*since)
                );
                if let Some(hint) = hint {
                    text.push_str("\nhint: ");
                    text.push_str(hint);
                }
                text
            }
            FailureChange::Recovered { since, attempts: n } => format!(
                "delivery works again (it had failed since {}, {})",
                clock(*since),
                attempts(*n)
            ),
        }
    }

    /// The change as fields of a JSON event.
    pub(crate) fn json(&self) -> serde_json::Value {
        match self {
            FailureChange::Failing {
                cause,
                hint,
                since,
                queued,
            } => {
                json!({"error": cause, "hint": hint, "failing_since": rfc3339(*since), "queued": queued})
            }
            FailureChange::Recovered { since, attempts } => {
                json!({"failing_since": rfc3339(*since), "failed_attempts": attempts})
            }
        }
    }
}

/// Says each delivery failure of an outbox once, and its end: a failure
/// that repeats with the same cause is not said again (the periodic
/// summary counts its attempts instead).
#[derive(Default)]
pub(crate) struct FailureReport {
    /// The failure last said: its cause, when it started, and how many
    /// attempts it had when last seen.
    shown: Option<(String, SystemTime, u64)>,
}

impl FailureReport {
    /// True while a failure was said and its end not yet.
    pub(crate) fn is_failing(&self) -> bool {
        self.shown.is_some()
    }

    /// What changed since the last call, if anything worth a line.
    pub(crate) fn check(&mut self, outbox: &Outbox) -> Option<FailureChange> {
        match (outbox.failure(), &mut self.shown) {
            (Some(failure), Some((cause, _, attempts))) if *cause == failure.text => {
                *attempts = failure.attempts;
                None
            }
            (Some(failure), _) => {
                self.shown = Some((failure.text.clone(), failure.since, failure.attempts));
                Some(FailureChange::Failing {
                    hint: exit::hint(&failure.error),
                    cause: failure.text,
                    since: failure.since,
                    queued: outbox.status().queued,
                })
            }
            (None, shown) => shown
                .take()
                .map(|(_, since, attempts)| FailureChange::Recovered { since, attempts }),
        }
    }
}
