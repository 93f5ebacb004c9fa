//! A filesystem for power-cut tests, in the manner of LazyFS: mounted over
//! FUSE, it keeps every file's written bytes in a page cache until that
//! file is fsynced, and every directory's new, renamed and removed entries
//! in a volatile namespace until that directory is fsynced (or, in the
//! ext4-like [`Durability::Ordered`] mode, until any fsync). A test runs
//! the programs under test on the mount, kills them, calls
//! [`PowerCutMount::power_cut`], and finds exactly what a disk would hold
//! after losing power: what the programs reported durable must be there.
//!
//! The state lives in memory (the tests' data is small): the durable state
//! is a second copy that fsyncs update, so the rules are in one place,
//! [`Model`], which is tested without FUSE.
//!
//! ```no_run
//! use ulogger_powercut::{Durability, PowerCutMount};
//!
//! let dir = tempfile::tempdir()?;
//! let mount = PowerCutMount::new(dir.path(), Durability::Strict)?;
//! std::fs::write(dir.path().join("lost"), b"never synced")?;
//! mount.power_cut();
//! assert!(!dir.path().join("lost").exists());
//! # Ok::<(), std::io::Error>(())
//! ```

mod model;
mod mount;

pub use model::{Attr, Durability, Errno, Model, ROOT};
pub use mount::PowerCutMount;

/// Mounts a power-cut filesystem on `dir` for a test, or says why not:
/// under `CI=true` a machine that cannot mount fails the test (CI must
/// run these trials; `.ci/run` sets the machine up), elsewhere the test
/// is skipped with a note on stderr (`None`).
pub fn mount_or_skip(dir: &std::path::Path, durability: Durability) -> Option<PowerCutMount> {
    match PowerCutMount::new(dir, durability) {
        Ok(mount) => Some(mount),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("cannot mount the power-cut filesystem (needs /dev/fuse and root): {e}")
        }
        Err(e) => {
            eprintln!(
                "skipped: cannot mount the power-cut filesystem (needs /dev/fuse and root): {e}"
            );
            None
        }
    }
}
