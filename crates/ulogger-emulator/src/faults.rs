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

/// Faults of the firmware ELF upload (PROTOCOL §11), each a count of the
/// next requests that get it; every such request uses one up. Set with
/// [`FaultSwitches::fail_elf_puts`] and
/// [`FaultSwitches::ignore_elf_upload_requests`]; read with
/// [`FaultSwitches::elf_snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ElfUploadFaults {
    /// PUTs to an upload URL answered `503 Service Unavailable`, as by a
    /// storage outage; the URL stays unused.
    pub put_outages: u32,
    /// Upload requests the cloud does not answer at all (no URL comes).
    pub unanswered_requests: u32,
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
    elf: Mutex<ElfUploadFaults>,
}

impl FaultSwitches {
    pub(crate) fn new(faults: Faults) -> FaultSwitches {
        FaultSwitches {
            current: Mutex::new(faults),
            http: Mutex::default(),
            elf: Mutex::default(),
        }
    }

    fn lock_elf(&self) -> MutexGuard<'_, ElfUploadFaults> {
        self.elf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the next `count` PUTs to ELF upload URLs with 503 (an
    /// outage of the storage); their URLs stay valid.
    pub fn fail_elf_puts(&self, count: u32) {
        self.lock_elf().put_outages = count;
    }

    /// Leaves the next `count` ELF upload requests unanswered.
    pub fn ignore_elf_upload_requests(&self, count: u32) {
        self.lock_elf().unanswered_requests = count;
    }

    /// The ELF upload fault counts as they are now.
    pub fn elf_snapshot(&self) -> ElfUploadFaults {
        *self.lock_elf()
    }

    /// Uses up one injected PUT outage, if any is pending.
    pub(crate) fn take_elf_put_outage(&self) -> bool {
        let mut elf = self.lock_elf();
        let take = elf.put_outages > 0;
        elf.put_outages = elf.put_outages.saturating_sub(1);
        take
    }

    /// Uses up one unanswered upload request, if any is pending.
    pub(crate) fn take_unanswered_request(&self) -> bool {
        let mut elf = self.lock_elf();
        let take = elf.unanswered_requests > 0;
        elf.unanswered_requests = elf.unanswered_requests.saturating_sub(1);
        take
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

    /// Turns every fault off, the HTTP and ELF upload ones too.
    pub fn clear(&self) {
        self.set(Faults::default());
        *self.lock_http() = HttpFaults::default();
        *self.lock_elf() = ElfUploadFaults::default();
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
    fn elf_upload_faults_count_down_and_clear() {
        let s = FaultSwitches::new(Faults::default());
        s.fail_elf_puts(2);
        s.ignore_elf_upload_requests(1);
        assert_eq!(s.elf_snapshot().put_outages, 2);
        assert!(s.take_elf_put_outage() && s.take_elf_put_outage());
        assert!(!s.take_elf_put_outage());
        assert!(s.take_unanswered_request() && !s.take_unanswered_request());
        s.fail_elf_puts(3);
        s.clear();
        assert_eq!(s.elf_snapshot(), ElfUploadFaults::default());
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
