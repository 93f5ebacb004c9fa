//! The inbox watched with the kernel's file notifications (inotify, on
//! Linux), so that a file is taken as soon as it is complete and an idle
//! agent sleeps (decision NN).
//!
//! Watched: the inbox itself (a device folder created or moved in; the
//! inbox deleted, moved or unmounted) and each device folder, one level
//! down, never through a link (`IN_DONT_FOLLOW | IN_ONLYDIR`), for
//! `IN_CLOSE_WRITE` (a file written in place, once its writer closed it)
//! and `IN_MOVED_TO` (a file renamed in, the writers' rule). A write to an
//! open file wakes nothing. While the inbox is gone its parent folder is
//! watched for it to come back. Every notification only says "look": the
//! scan that follows is the same listing as polling does, with the same
//! rules (hidden and `*.tmp` names left alone, links and FIFOs refused, a
//! file read only at the size it was listed), so nothing is decided from
//! an event alone and a lost event costs only time until the slow rescan.
//!
//! Where inotify is missing (not Linux), cannot start (instances used up:
//! `fs.inotify.max_user_instances`) or runs out of watches
//! (`fs.inotify.max_user_watches`), the agent polls every
//! `--scan-interval`, as it did before, after one warning saying why.

use std::path::Path;

/// What woke the watcher.
#[derive(Debug)]
pub enum Wake {
    /// Something in the inbox may be ready: scan it.
    Changed,
    /// Notifications stopped working: poll from now on, after warning with
    /// this (why, and what to do).
    Unavailable(String),
}

/// The inbox's watcher, or nothing when the agent polls.
pub struct InboxWatch {
    #[cfg(target_os = "linux")]
    imp: Option<linux::Watcher>,
}

impl InboxWatch {
    /// A watcher that never wakes: the agent polls.
    pub fn polling() -> InboxWatch {
        InboxWatch {
            #[cfg(target_os = "linux")]
            imp: None,
        }
    }

    /// Starts watching `inbox`; on failure, polling and why (to be warned
    /// about once).
    pub fn start(inbox: &Path) -> (InboxWatch, Option<String>) {
        #[cfg(target_os = "linux")]
        {
            match linux::Watcher::start(inbox) {
                Ok(watcher) => (InboxWatch { imp: Some(watcher) }, None),
                Err(why) => (InboxWatch::polling(), Some(why)),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = inbox;
            (
                InboxWatch::polling(),
                Some("file notifications are only used on Linux".to_owned()),
            )
        }
    }

    /// True while notifications work (the scan interval is then only a
    /// safety net).
    pub fn watching(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.imp.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Watches the device folders there are now (and the inbox, if it came
    /// back). Called before each scan, so that a file arriving after the
    /// scan's listing wakes the next one. `Some(why)` when it had to stop
    /// watching (the agent polls from then on).
    pub fn sync(&mut self) -> Option<String> {
        #[cfg(target_os = "linux")]
        if let Some(watcher) = &mut self.imp {
            if let Err(why) = watcher.sync() {
                self.imp = None;
                return Some(why);
            }
        }
        None
    }

    /// Waits until something in the inbox may be ready (never, when
    /// polling).
    pub async fn changed(&mut self) -> Wake {
        #[cfg(target_os = "linux")]
        if let Some(watcher) = &mut self.imp {
            let wake = watcher.changed().await;
            if matches!(wake, Wake::Unavailable(_)) {
                self.imp = None;
            }
            return wake;
        }
        std::future::pending().await
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::path::{Path, PathBuf};

    use futures_util::{FutureExt, StreamExt};
    use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};

    /// The same numbers on every Linux architecture.
    const ENOSPC: i32 = 28;
    const EMFILE: i32 = 24;

    /// What a device folder is watched for: files complete in it.
    fn device_mask() -> WatchMask {
        WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVE_SELF
            | WatchMask::DONT_FOLLOW
            | WatchMask::ONLYDIR
    }

    /// What the inbox is watched for: device folders arriving, and itself
    /// going away.
    fn inbox_mask() -> WatchMask {
        WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR
    }

    /// Why notifications cannot be used, with what to do about it.
    fn unavailable(doing: &str, e: &io::Error) -> String {
        match e.raw_os_error() {
            Some(ENOSPC) => format!(
                "inotify is out of watches ({doing}: {e}); raise fs.inotify.max_user_watches \
                 (e.g. `sysctl fs.inotify.max_user_watches=524288`, and in /etc/sysctl.d/ to keep it)"
            ),
            Some(EMFILE) => format!(
                "inotify instances are used up ({doing}: {e}); raise fs.inotify.max_user_instances \
                 (e.g. `sysctl fs.inotify.max_user_instances=1024`) or the agent's open-file limit"
            ),
            _ => format!("file notifications are unavailable ({doing}: {e})"),
        }
    }

    pub struct Watcher {
        events: EventStream<Vec<u8>>,
        watches: Watches,
        inbox: PathBuf,
        /// The inbox's watch; `None` while it is gone.
        inbox_wd: Option<WatchDescriptor>,
        /// The inbox's parent, watched while the inbox is gone.
        parent_wd: Option<WatchDescriptor>,
    }

    impl Watcher {
        pub fn start(inbox: &Path) -> Result<Watcher, String> {
            let inotify = Inotify::init().map_err(|e| unavailable("starting inotify", &e))?;
            let events = inotify
                .into_event_stream(vec![0; 16 * 1024])
                .map_err(|e| unavailable("registering inotify", &e))?;
            let watches = events.watches();
            let mut watcher = Watcher {
                events,
                watches,
                // Absolute, so that its parent can be watched.
                inbox: std::path::absolute(inbox).unwrap_or_else(|_| inbox.to_path_buf()),
                inbox_wd: None,
                parent_wd: None,
            };
            watcher.sync()?;
            Ok(watcher)
        }

        /// Adds a watch; `Ok(None)` when the folder is not there (any
        /// more) or not a folder, an error only when watches ran out.
        fn add(&mut self, path: &Path, mask: WatchMask) -> Result<Option<WatchDescriptor>, String> {
            match self.watches.add(path, mask) {
                Ok(wd) => Ok(Some(wd)),
                Err(e) if e.raw_os_error() == Some(ENOSPC) => {
                    Err(unavailable(&format!("watching {}", path.display()), &e))
                }
                Err(e) => {
                    tracing::debug!(path = ?path, error = %e, "not watched");
                    Ok(None)
                }
            }
        }

        pub fn sync(&mut self) -> Result<(), String> {
            self.watch_inbox()?;
            // Made again between the two: its parent's watch came too late.
            if self.inbox_wd.is_none() && self.inbox.is_dir() {
                self.watch_inbox()?;
            }
            if self.inbox_wd.is_none() {
                return Ok(());
            }
            let Ok(entries) = std::fs::read_dir(&self.inbox) else {
                return Ok(());
            };
            for entry in entries.filter_map(Result::ok) {
                // Links are refused by the scan; hidden folders left alone.
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && !super::super::hidden(&entry.path()) {
                    // The same folder watched again keeps its watch.
                    self.add(&entry.path(), device_mask())?;
                }
            }
            Ok(())
        }

        /// Watches the inbox if it is not watched, or, while it is gone,
        /// its parent for it to come back.
        fn watch_inbox(&mut self) -> Result<(), String> {
            if self.inbox_wd.is_none() {
                let inbox = self.inbox.clone();
                self.inbox_wd = self.add(&inbox, inbox_mask())?;
                match (&self.inbox_wd, self.parent_wd.take()) {
                    // Back: its parent need not be watched any more.
                    (Some(_), Some(parent)) => {
                        let _ = self.watches.remove(parent);
                    }
                    // Gone: its parent says when it comes back.
                    (None, parent) => {
                        self.parent_wd = match parent {
                            Some(parent) => Some(parent),
                            None => match inbox.parent() {
                                Some(dir) => self.add(
                                    dir,
                                    WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::ONLYDIR,
                                )?,
                                None => None,
                            },
                        };
                    }
                    (Some(_), None) => {}
                }
            }
            Ok(())
        }

        /// Waits for an event that may make a file ready, then takes every
        /// event already queued, so that a burst wakes one scan.
        pub async fn changed(&mut self) -> super::Wake {
            loop {
                let mut look = match self.events.next().await {
                    Some(Ok(event)) => self.relevant(&event),
                    Some(Err(e)) => {
                        return super::Wake::Unavailable(unavailable("reading events", &e))
                    }
                    None => return super::Wake::Unavailable("the inotify stream ended".to_owned()),
                };
                while let Some(Some(Ok(event))) = self.events.next().now_or_never() {
                    look |= self.relevant(&event);
                }
                if look {
                    return super::Wake::Changed;
                }
            }
        }

        fn relevant(&mut self, event: &inotify::Event<std::ffi::OsString>) -> bool {
            let mask = event.mask;
            // Events were dropped: anything may have happened.
            if mask.contains(EventMask::Q_OVERFLOW) {
                return true;
            }
            let gone = EventMask::DELETE_SELF
                | EventMask::MOVE_SELF
                | EventMask::IGNORED
                | EventMask::UNMOUNT;
            if Some(&event.wd) == self.inbox_wd.as_ref() {
                if mask.intersects(gone) {
                    // Moved away, it would still be watched: let it go.
                    if let Some(wd) = self.inbox_wd.take() {
                        let _ = self.watches.remove(wd);
                    }
                    return true;
                }
                // A device folder created or moved in.
                return mask.contains(EventMask::ISDIR);
            }
            if Some(&event.wd) == self.parent_wd.as_ref() {
                if mask.intersects(gone) {
                    self.parent_wd = None;
                    return false;
                }
                return event.name.as_deref() == self.inbox.file_name();
            }
            // A device folder's.
            if mask.contains(EventMask::MOVE_SELF) {
                let _ = self.watches.remove(event.wd.clone());
                return false;
            }
            if mask.intersects(gone) {
                return false;
            }
            match event.name.as_deref() {
                Some(name) => !super::super::hidden(Path::new(name)),
                None => false,
            }
        }
    }
}
