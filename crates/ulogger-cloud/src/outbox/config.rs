//! What an outbox may hold, validated once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;

/// What to do when an enqueue would take the outbox over a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Make room by removing the oldest records that are not in flight
    /// (counted in [`OutboxStatus::evicted`](crate::OutboxStatus) and
    /// logged as a warning). The default: a gateway's newest logs are
    /// usually the ones that matter.
    #[default]
    EvictOldest,
    /// Refuse the new record with [`ErrorKind::OutboxFull`](crate::ErrorKind::OutboxFull).
    Reject,
}

/// Where an outbox lives and what it may hold.
///
/// ```
/// use std::time::Duration;
/// use ulogger_cloud::{OutboxConfig, WhenFull};
///
/// let config = OutboxConfig::new("/var/lib/ulogger/outbox")
///     .max_bytes(64 * 1024 * 1024)
///     .max_age(Duration::from_secs(3 * 24 * 3600))
///     .when_full(WhenFull::Reject)
///     .ack_sync_interval(Duration::from_millis(200));
/// assert_eq!(config.dir().to_str(), Some("/var/lib/ulogger/outbox"));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct OutboxConfig {
    pub(crate) dir: PathBuf,
    pub(crate) max_bytes: u64,
    pub(crate) max_records: usize,
    pub(crate) max_age: Duration,
    pub(crate) when_full: WhenFull,
    pub(crate) durable: bool,
    pub(crate) ack_sync_interval: Duration,
    pub(crate) ack_sync_every: usize,
}

impl OutboxConfig {
    /// An outbox in `dir` with the defaults: at most 1 GiB of payload,
    /// 1,000,000 records, records at most 30 days old, the oldest evicted
    /// when full, acknowledgements synced within 1 s or every 1,000.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        OutboxConfig {
            dir: dir.as_ref().to_path_buf(),
            max_bytes: 1 << 30,
            max_records: 1_000_000,
            max_age: Duration::from_secs(30 * 24 * 3600),
            when_full: WhenFull::EvictOldest,
            durable: true,
            ack_sync_interval: Duration::from_secs(1),
            ack_sync_every: 1000,
        }
    }

    /// The most payload bytes held (queued, in flight and dead).
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The most records held (queued, in flight and dead).
    pub fn max_records(mut self, records: usize) -> Self {
        self.max_records = records;
        self
    }

    /// Records older than this are evicted, delivered or not.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// What an enqueue does at a bound.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Skip every fsync (tests and benchmarks on throwaway directories
    /// only: a power cut can then lose or tear what was enqueued).
    /// Default: durable.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The longest an acknowledgement waits before it is synced to disk.
    ///
    /// What became of each record is written at once (a crash of the
    /// process loses none) but synced in groups, since an fsync per
    /// acknowledged record would cost more than the upload. A power cut
    /// can therefore make the outbox send again the records delivered in
    /// the last interval (besides those in flight): at least once, as
    /// promised. Shorter bounds those duplicates; zero syncs after every
    /// batch of acknowledgements. Whichever comes first of this and
    /// [`ack_sync_every`](Self::ack_sync_every) triggers a sync. Dead
    /// letters are synced at once. Default: 1 s.
    pub fn ack_sync_interval(mut self, interval: Duration) -> Self {
        self.ack_sync_interval = interval;
        self
    }

    /// Sync acknowledgements once this many wait, even before
    /// [`ack_sync_interval`](Self::ack_sync_interval) has passed: a burst
    /// of deliveries then costs one fsync per this many records, and a
    /// power cut re-sends at most this many of them. Default: 1,000.
    pub fn ack_sync_every(mut self, acks: usize) -> Self {
        self.ack_sync_every = acks;
        self
    }

    /// The outbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.dir.as_os_str().is_empty() {
            return Err(Error::config("outbox.dir", "is empty"));
        }
        if self.max_bytes == 0 {
            return Err(Error::config("outbox.max_bytes", "must be at least 1"));
        }
        if self.max_records == 0 {
            return Err(Error::config("outbox.max_records", "must be at least 1"));
        }
        if self.ack_sync_every == 0 {
            return Err(Error::config("outbox.ack_sync_every", "must be at least 1"));
        }
        if self.max_age.is_zero() {
            return Err(Error::config("outbox.max_age", "must be longer than zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_syncs_need_a_count_of_at_least_one() {
        let config = OutboxConfig::new("/tmp/outbox").ack_sync_every(0);
        let err = config.validate().err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("ack_sync_every")));
        assert!(OutboxConfig::new("/tmp/outbox")
            .ack_sync_every(1)
            .ack_sync_interval(Duration::ZERO)
            .validate()
            .is_ok());
    }
}
