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
//! And one that fails instead of aborting: `outbox-disk-full` makes an
//! append fail with "no space left on device".

/// Marks a named crash point.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::crash::hit($name);
    };
}
pub(crate) use crash_point;

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
