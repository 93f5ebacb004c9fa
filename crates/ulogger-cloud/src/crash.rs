//! Named crash points for crash tests. With the `failpoints` feature, a
//! point configured in the `FAILPOINTS` environment variable (the `fail`
//! crate's syntax, e.g. `outbox-after-sync=3*off->return`) aborts the
//! process there, as a power cut or SIGKILL would; without the feature a
//! point compiles to nothing.
//!
//! The points, in the order a record meets them:
//!
//! | point | where |
//! |---|---|
//! | `outbox-before-sync` | a batch is written to its segment, not yet synced |
//! | `outbox-after-sync` | the batch is synced, its callers not yet answered |
//! | `delivery-after-puback` | the broker acknowledged a record, its ack not yet written |
//! | `outbox-after-ack` | an ack is written, the segment not yet removed |
//!
//! And points that fail instead of aborting: `outbox-disk-full` makes an
//! append fail with "no space left on device", and each of these makes one
//! write or fsync fail with the error its argument names (`return(eio)`,
//! the default, or `return(enospc)`; see [`fault`]):
//!
//! | point | where |
//! |---|---|
//! | `sync-dir` | any directory fsync (a new file, directory or rename made durable) |
//! | `outbox-write-segment` | a batch's write to its segment |
//! | `outbox-sync-segment` | a batch's fdatasync |
//! | `outbox-write-acks` | an acks file's write |
//! | `outbox-sync-acks` | an acks file's fdatasync |
//! | `write-file` | a file replaced whole (the outbox's repairs, `corrupt/` and status; the BLE gateway's records) |
//! | `sync-file` | that file's fsync |

/// Marks a named crash point.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::crash::hit($name);
    };
}
pub(crate) use crash_point;

/// Fails with the error named by the argument of fault point `name` when
/// it is configured to fire (`eio`, the default, or `enospc`), as the
/// kernel would; without the `failpoints` feature it never fails.
pub(crate) fn fault(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    {
        setup();
        fail::fail_point!(name, |arg: Option<String>| {
            // The same numbers on Linux, the BSDs and macOS.
            let errno = match arg.as_deref() {
                Some("enospc") => 28,
                _ => 5,
            };
            Err(std::io::Error::from_raw_os_error(errno))
        });
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    Ok(())
}

/// Reads `FAILPOINTS` once, for the life of the process; every failpoint
/// calls this first.
#[cfg(feature = "failpoints")]
pub(crate) fn setup() {
    static SCENARIO: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    SCENARIO.get_or_init(|| std::mem::forget(fail::FailScenario::setup()));
}

/// Aborts the process if `name` is configured to fire now.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    setup();
    fail::fail_point!(name, |_| {
        eprintln!("crash point {name}: aborting");
        std::process::abort()
    });
}
