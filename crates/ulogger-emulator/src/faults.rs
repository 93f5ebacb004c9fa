//! Fault switches: ways to make the emulator misbehave on purpose, so that
//! a client's handling of lost acknowledgements, slow or broken replies and
//! dropped connections can be tested.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::broker::topic_matches;

/// Which client publishes get no PUBACK (the message is still delivered
/// and processed, as when an acknowledgement is lost on the way back).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum WithholdPuback {
    /// Acknowledge every QoS 1 publish (normal behaviour).
    #[default]
    None,
    /// Acknowledge no publish.
    All,
    /// Acknowledge no publish whose topic matches this MQTT topic filter
    /// (`+` and `#` allowed; an exact topic is a filter matching itself).
    Topic(String),
}

impl WithholdPuback {
    pub(crate) fn withholds(&self, topic: &str) -> bool {
        match self {
            WithholdPuback::None => false,
            WithholdPuback::All => true,
            WithholdPuback::Topic(filter) => topic_matches(filter, topic),
        }
    }
}

/// How the cloud answers a boot registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootReplyMode {
    /// A fresh token as `{"token": N}` on the device's reply topic.
    #[default]
    Normal,
    /// Replies that are not the answer: `{"tok": 1}`, then bytes that are
    /// not JSON. No token is issued; a client must keep waiting.
    Malformed,
    /// No reply at all. No token is issued.
    None,
}

/// A set of faults, given at start ([`crate::EmulatorConfig::faults`]) or
/// read back with [`FaultSwitches::snapshot`]. `Faults::default()` is a
/// well-behaved cloud.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Faults {
    /// Publishes that get no PUBACK.
    pub withhold_puback: WithholdPuback,
    /// How long the cloud waits before answering a boot registration.
    pub boot_reply_delay: Duration,
    /// What the cloud answers to a boot registration.
    pub boot_reply: BootReplyMode,
    /// Close each client connection accepted from now on once it has
    /// received this many MQTT bytes from the client (bytes past the limit
    /// are discarded unread; packets wholly inside it are processed).
    pub drop_after_bytes: Option<u64>,
}

/// Faults of the HTTP telemetry endpoints, each a count of the next
/// requests (with a valid token) that get it instead of the normal
/// answer; every such request uses one up. The first non-zero count in
/// field order applies. Set with [`FaultSwitches::fail_http_requests`]
/// and its siblings; read with [`FaultSwitches::http_snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HttpFaults {
    /// Requests answered `500 Internal Server Error` (JSON error body).
    pub server_errors: u32,
    /// Requests answered `429 Too Many Requests` with `Retry-After`.
    pub throttled: u32,
    /// The `Retry-After` of those 429 answers, in seconds.
    pub retry_after_secs: u64,
    /// Requests answered `200 OK` with a body that is not JSON.
    pub garbage_replies: u32,
}

/// One injected HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpFault {
    ServerError,
    Throttled { retry_after_secs: u64 },
    Garbage,
}

/// The live fault switches of a running emulator
/// ([`crate::Emulator::faults`]). Changes apply to the next message or
/// connection they concern.
#[derive(Debug, Default)]
pub struct FaultSwitches {
    current: Mutex<Faults>,
    http: Mutex<HttpFaults>,
}

impl FaultSwitches {
    pub(crate) fn new(faults: Faults) -> FaultSwitches {
        FaultSwitches {
            current: Mutex::new(faults),
            http: Mutex::default(),
        }
    }

    fn lock_http(&self) -> MutexGuard<'_, HttpFaults> {
        self.http.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the next `count` HTTP telemetry requests with 500.
    pub fn fail_http_requests(&self, count: u32) {
        self.lock_http().server_errors = count;
    }

    /// Answers the next `count` HTTP telemetry requests with 429 and
    /// `Retry-After` of `retry_after` (whole seconds, rounded down).
    pub fn throttle_http_requests(&self, count: u32, retry_after: Duration) {
        let mut http = self.lock_http();
        http.throttled = count;
        http.retry_after_secs = retry_after.as_secs();
    }

    /// Answers the next `count` HTTP telemetry requests with 200 and a
    /// body that is not JSON (nothing is stored).
    pub fn garble_http_replies(&self, count: u32) {
        self.lock_http().garbage_replies = count;
    }

    /// The HTTP fault counts as they are now.
    pub fn http_snapshot(&self) -> HttpFaults {
        *self.lock_http()
    }

    /// Uses up one injected HTTP answer, if any is pending.
    pub(crate) fn take_http_fault(&self) -> Option<HttpFault> {
        let mut http = self.lock_http();
        if http.server_errors > 0 {
            http.server_errors -= 1;
            Some(HttpFault::ServerError)
        } else if http.throttled > 0 {
            http.throttled -= 1;
            Some(HttpFault::Throttled {
                retry_after_secs: http.retry_after_secs,
            })
        } else if http.garbage_replies > 0 {
            http.garbage_replies -= 1;
            Some(HttpFault::Garbage)
        } else {
            None
        }
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        // A panic elsewhere cannot leave a `Faults` half-updated: every
        // update is a single assignment.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets which publishes get no PUBACK.
    pub fn set_withhold_puback(&self, which: WithholdPuback) {
        self.lock().withhold_puback = which;
    }

    /// Sets the delay before boot replies.
    pub fn set_boot_reply_delay(&self, delay: Duration) {
        self.lock().boot_reply_delay = delay;
    }

    /// Sets how boot registrations are answered.
    pub fn set_boot_reply(&self, mode: BootReplyMode) {
        self.lock().boot_reply = mode;
    }

    /// Sets the byte budget of connections accepted from now on (`None`:
    /// unlimited).
    pub fn set_drop_after_bytes(&self, bytes: Option<u64>) {
        self.lock().drop_after_bytes = bytes;
    }

    /// Replaces all switches at once.
    pub fn set(&self, faults: Faults) {
        *self.lock() = faults;
    }

    /// Turns every fault off, the HTTP ones too.
    pub fn clear(&self) {
        self.set(Faults::default());
        *self.lock_http() = HttpFaults::default();
    }

    /// The switches as they are now.
    pub fn snapshot(&self) -> Faults {
        self.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_withholding_uses_filter_matching() {
        let w = WithholdPuback::Topic("binlog/v0/+/#".into());
        assert!(w.withholds("binlog/v0/1/2"));
        assert!(!w.withholds("boot/v0/1/2"));
        assert!(WithholdPuback::All.withholds("x"));
        assert!(!WithholdPuback::None.withholds("x"));
    }

    #[test]
    fn switches_change_the_snapshot() {
        let s = FaultSwitches::new(Faults::default());
        s.set_boot_reply(BootReplyMode::None);
        s.set_drop_after_bytes(Some(10));
        let f = s.snapshot();
        assert_eq!(f.boot_reply, BootReplyMode::None);
        assert_eq!(f.drop_after_bytes, Some(10));
        s.clear();
        assert_eq!(s.snapshot(), Faults::default());
    }

    #[test]
    fn http_faults_count_down_in_order() {
        let s = FaultSwitches::new(Faults::default());
        s.fail_http_requests(1);
        s.throttle_http_requests(2, Duration::from_millis(2500));
        s.garble_http_replies(1);
        assert_eq!(s.take_http_fault(), Some(HttpFault::ServerError));
        let throttled = Some(HttpFault::Throttled {
            retry_after_secs: 2,
        });
        assert_eq!(s.take_http_fault(), throttled);
        assert_eq!(s.take_http_fault(), throttled);
        assert_eq!(s.take_http_fault(), Some(HttpFault::Garbage));
        assert_eq!(s.take_http_fault(), None);
        s.fail_http_requests(5);
        s.clear();
        assert_eq!(s.http_snapshot(), HttpFaults::default());
    }
}
