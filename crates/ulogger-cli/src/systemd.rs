//! Telling systemd how the agent is (`Type=notify`, sd_notify(3)): ready
//! once its outbox and inbox are open, a status line for `systemctl
//! status`, a watchdog ping from the service loop, and stopping. Without
//! `NOTIFY_SOCKET` (not under systemd) all of it does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The service manager, as the agent talks to it.
pub struct Systemd {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// `WATCHDOG_USEC` for this process, if the unit has `WatchdogSec=`.
    watchdog: Option<Duration>,
    /// A failed notification was said already (said once, not at every
    /// ping).
    warned: AtomicBool,
    /// When the watchdog was last pinged.
    pinged: Mutex<Instant>,
}

impl Systemd {
    /// What the environment systemd gave this process says.
    pub fn from_env() -> Systemd {
        #[cfg(unix)]
        let (enabled, watchdog) = (
            std::env::var_os("NOTIFY_SOCKET").is_some(),
            sd_notify::watchdog_enabled(),
        );
        #[cfg(not(unix))]
        let (enabled, watchdog) = (false, None);
        Systemd {
            enabled,
            watchdog: watchdog.filter(|_| enabled),
            warned: AtomicBool::new(false),
            pinged: Mutex::new(Instant::now()),
        }
    }

    /// How often to ping the watchdog: half its timeout, as sd_watchdog_enabled(3)
    /// advises, so that one late ping is not yet a restart.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
            .map(|timeout| (timeout / 2).max(Duration::from_millis(1)))
    }

    /// The service is up (`READY=1`), with its first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[Note::Ready, Note::Status(status)]);
    }

    /// The line `systemctl status` shows (`STATUS=`).
    pub fn status(&self, status: &str) {
        self.send(&[Note::Status(status)]);
    }

    /// The service loop is alive (`WATCHDOG=1`).
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            *self.pinged.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            self.send(&[Note::Watchdog]);
        }
    }

    /// Work inside one turn of the loop moved on (a file of a long scan
    /// was queued): pings the watchdog if a period has passed since the
    /// last ping, so a scan of a huge inbox is not taken for a stuck loop.
    pub fn progress(&self) {
        let Some(period) = self.watchdog_period() else {
            return;
        };
        let due = self
            .pinged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed()
            >= period;
        if due {
            self.watchdog();
        }
    }

    /// The service is stopping (`STOPPING=1`), and why it takes a moment.
    pub fn stopping(&self, status: &str) {
        self.send(&[Note::Stopping, Note::Status(status)]);
    }

    fn send(&self, notes: &[Note<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = notify(notes) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET): a Type=notify unit will time out or restart the agent");
            }
        }
    }
}

/// One assignment of a notification.
enum Note<'a> {
    Ready,
    Status(&'a str),
    Watchdog,
    Stopping,
}

#[cfg(unix)]
fn notify(notes: &[Note<'_>]) -> std::io::Result<()> {
    use sd_notify::NotifyState;
    // A status is one line of the message: a newline in it would start
    // another assignment.
    let statuses: Vec<String> = notes
        .iter()
        .filter_map(|n| match n {
            Note::Status(s) => Some(s.replace('\n', " ")),
            _ => None,
        })
        .collect();
    let mut states = Vec::with_capacity(notes.len());
    let mut status = statuses.iter();
    for note in notes {
        states.push(match note {
            Note::Ready => NotifyState::Ready,
            Note::Watchdog => NotifyState::Watchdog,
            Note::Stopping => NotifyState::Stopping,
            Note::Status(_) => match status.next() {
                Some(s) => NotifyState::Status(s),
                None => continue,
            },
        });
    }
    sd_notify::notify(&states)
}

#[cfg(not(unix))]
fn notify(_notes: &[Note<'_>]) -> std::io::Result<()> {
    Ok(())
}
