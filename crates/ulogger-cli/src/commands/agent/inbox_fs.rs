//! Inbox files reached only through the inbox's own directory handles.
//!
//! A device folder is opened once per scan, relative to the inbox's
//! handle, without following a link (`openat(O_DIRECTORY|O_NOFOLLOW)`),
//! and each of its files is opened, removed or moved relative to that
//! handle (`openat`, `unlinkat`, `renameat`). So a folder swapped for a
//! link to somewhere else after it was listed leads nowhere: a path is
//! never resolved again from the top, and the agent (often root) never
//! reads or deletes outside the inbox.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::path::{Path, PathBuf};

/// An open device folder of the inbox.
#[derive(Debug)]
pub struct DeviceDir {
    /// Where it was found, for messages only: never opened again by path.
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
}

/// Why an entry is not opened: a link, or not what was asked for.
pub fn not_regular(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_owned())
}

#[cfg(unix)]
mod imp {
    use super::*;
    use rustix::fs::{AtFlags, Mode, OFlags};
    use rustix::io::Errno;

    /// Opens the inbox itself (the operator's path, links allowed).
    pub fn open_inbox(inbox: &Path) -> io::Result<std::os::fd::OwnedFd> {
        Ok(rustix::fs::open(
            inbox,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    impl DeviceDir {
        /// Opens the folder `name` of the inbox open as `inbox`, refusing a
        /// link ([`io::ErrorKind::InvalidInput`]) or anything not a folder.
        pub fn open(
            inbox: &std::os::fd::OwnedFd,
            inbox_path: &Path,
            name: &OsStr,
        ) -> io::Result<DeviceDir> {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(inbox, name, flags, Mode::empty()) {
                Ok(fd) => Ok(DeviceDir {
                    path: inbox_path.join(name),
                    fd,
                }),
                Err(Errno::LOOP) => Err(not_regular("a symbolic link, not a device folder")),
                Err(Errno::NOTDIR) => Err(not_regular("not a device folder")),
                Err(e) => Err(e.into()),
            }
        }

        /// Opens the file `name` for reading if it is a regular file: never
        /// through a link (`O_NOFOLLOW`), never waiting for a FIFO's writer
        /// (`O_NONBLOCK`, which regular files ignore), and checked with
        /// `fstat` on the handle. Anything else fails with
        /// [`io::ErrorKind::InvalidInput`] saying what it is.
        pub fn open_regular(&self, name: &OsStr) -> io::Result<(File, Metadata)> {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::LOOP) => return Err(not_regular("a symbolic link")),
                Err(e) => return Err(e.into()),
            };
            let file = File::from(fd);
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(not_regular(crate::commands::agent::describe(
                    meta.file_type(),
                )));
            }
            Ok((file, meta))
        }

        /// Removes the file `name` from the folder.
        pub fn remove(&self, name: &OsStr) -> io::Result<()> {
            Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
        }

        /// Makes the removals from the folder durable (decision 18: a
        /// removal is durable once its folder is fsynced).
        pub fn sync(&self) -> io::Result<()> {
            Ok(rustix::fs::fsync(&self.fd)?)
        }

        /// Moves the file `name` into the folder `to` (created if need
        /// be) under the same name, durably: the new entry and `to` are
        /// synced before the old entry goes, and its removal is synced
        /// too. Across filesystems it is copied, synced, then removed.
        pub fn move_to(&self, name: &OsStr, to: &Path) -> io::Result<PathBuf> {
            ulogger_cloud::durable::create_dir_all(to)?;
            let target = to.join(name);
            let to_dir = File::open(to)?;
            match rustix::fs::renameat(&self.fd, name, &to_dir, name) {
                Ok(()) => {}
                Err(Errno::XDEV) => {
                    let (mut from, _) = self.open_regular(name)?;
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&target)?;
                    io::copy(&mut from, &mut out)?;
                    out.sync_all()?;
                    to_dir.sync_all()?;
                    self.remove(name)?;
                }
                Err(e) => return Err(e.into()),
            }
            to_dir.sync_all()?;
            rustix::fs::fsync(&self.fd)?;
            Ok(target)
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use super::*;

    /// Opens the inbox itself (a no-op handle where `openat` is missing).
    pub fn open_inbox(inbox: &Path) -> io::Result<PathBuf> {
        Ok(inbox.to_path_buf())
    }

    impl DeviceDir {
        /// Opens the folder `name` of the inbox (by path on this platform).
        pub fn open(_inbox: &PathBuf, inbox_path: &Path, name: &OsStr) -> io::Result<DeviceDir> {
            let path = inbox_path.join(name);
            let meta = std::fs::symlink_metadata(&path)?;
            if !meta.is_dir() {
                return Err(not_regular("not a device folder"));
            }
            Ok(DeviceDir { path })
        }

        /// Opens the regular file `name` (by path on this platform).
        pub fn open_regular(&self, name: &OsStr) -> io::Result<(File, Metadata)> {
            let path = self.path.join(name);
            if std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
                return Err(not_regular("a symbolic link"));
            }
            let file = File::open(&path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(not_regular(crate::commands::agent::describe(
                    meta.file_type(),
                )));
            }
            Ok((file, meta))
        }

        /// Removes the file `name`.
        pub fn remove(&self, name: &OsStr) -> io::Result<()> {
            std::fs::remove_file(self.path.join(name))
        }

        /// Folders cannot be synced on this platform: a removal is as
        /// durable as the platform makes it.
        pub fn sync(&self) -> io::Result<()> {
            Ok(())
        }

        /// Moves the file `name` into the folder `to`.
        pub fn move_to(&self, name: &OsStr, to: &Path) -> io::Result<PathBuf> {
            std::fs::create_dir_all(to)?;
            let target = to.join(name);
            if std::fs::rename(self.path.join(name), &target).is_err() {
                std::fs::copy(self.path.join(name), &target)?;
                self.remove(name)?;
            }
            Ok(target)
        }
    }
}

pub use imp::open_inbox;

impl DeviceDir {
    /// The path of `name` in the folder (for messages).
    pub fn display(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }
}

/// The file name of `path` (empty when it has none).
pub fn name_of(path: &Path) -> OsString {
    path.file_name().unwrap_or_default().to_os_string()
}

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_device_folder_swapped_for_a_link_leads_nowhere() {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(inbox.join("dev")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.bin"), b"secret").unwrap();
        std::fs::write(inbox.join("dev/log.bin"), b"log").unwrap();
        let handle = open_inbox(&inbox).unwrap();

        // A linked folder is refused outright.
        std::os::unix::fs::symlink(&outside, inbox.join("linked")).unwrap();
        let refused = DeviceDir::open(&handle, &inbox, OsStr::new("linked")).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::InvalidInput);

        // Opened, then swapped for a link to the outside: what is opened
        // and removed is still inside.
        let dev = DeviceDir::open(&handle, &inbox, OsStr::new("dev")).unwrap();
        std::fs::rename(inbox.join("dev"), root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, inbox.join("dev")).unwrap();
        assert!(dev.open_regular(OsStr::new("secret.bin")).is_err());
        assert!(dev.remove(OsStr::new("secret.bin")).is_err());
        assert!(outside.join("secret.bin").exists());
        let (file, meta) = dev.open_regular(OsStr::new("log.bin")).unwrap();
        drop(file);
        assert_eq!(meta.len(), 3);
        dev.remove(OsStr::new("log.bin")).unwrap();
        assert!(!root.path().join("moved/log.bin").exists());
    }

    #[test]
    fn a_moved_file_is_in_its_new_folder_and_gone_from_the_old() {
        let root = tempfile::tempdir().unwrap();
        let inbox = root.path().join("inbox");
        std::fs::create_dir_all(inbox.join("dev")).unwrap();
        std::fs::write(inbox.join("dev/bad.bin"), b"bad").unwrap();
        let handle = open_inbox(&inbox).unwrap();
        let dev = DeviceDir::open(&handle, &inbox, OsStr::new("dev")).unwrap();
        let to = root.path().join("rejected/dev");
        let moved = dev.move_to(OsStr::new("bad.bin"), &to).unwrap();
        assert_eq!(moved, to.join("bad.bin"));
        assert_eq!(std::fs::read(&moved).unwrap(), b"bad");
        assert!(!inbox.join("dev/bad.bin").exists());
    }
}
