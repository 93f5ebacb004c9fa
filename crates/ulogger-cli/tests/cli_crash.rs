//! Crash tests: `ulogger upload --outbox` is aborted at each named crash
//! point of the outbox and its delivery (as a power cut or SIGKILL would
//! stop it), then run again until it succeeds. Pass: every file reaches
//! the cloud, and the extra copies are at most what was in flight.
//!
//! The binary built for these tests has the library's `failpoints`
//! feature (see this crate's dev-dependencies), so `FAILPOINTS` arms a
//! point; `cli_outbox.rs` also kills a run with SIGKILL mid-delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits};

const FILES: usize = 200;
/// The most records the outbox has in flight at once (taken for delivery,
/// their fate not yet on disk): the client's `max_inflight`.
const IN_FLIGHT: usize = 100;
/// The most enqueues `ulogger upload --outbox` has under way at once: a
/// crash before they return leaves their files to be queued again.
const ENQUEUING: usize = 64;

/// Crashes a run at `point` after it was passed `skip` times, reruns
/// until the command succeeds, and checks what the cloud got: nothing
/// lost, and at most `max_extra` copies too many. Enqueueing may still
/// be under way when delivery crashes, so every point allows both the
/// records in flight and the enqueues not yet answered.
fn crash_and_recover(point: &str, skip: usize, max_extra: usize) {
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, FILES);
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap();
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-CRASH"));
    args.extend(strings(&["--no-pacing", "--outbox"]));
    args.push(s(&sandbox.path("outbox")));
    args.extend(files.iter().map(|f| s(f)));

    let crashed = sandbox.run_with_env(
        &[("FAILPOINTS", format!("{point}={skip}*off->return"))],
        &args,
    );
    assert_ne!(crashed.code, Some(0), "{point}: the run was not stopped");
    assert!(
        crashed.stderr.contains(&format!("crash point {point}")),
        "{point}: {}",
        crashed.output()
    );
    let mut reruns = 0;
    loop {
        reruns += 1;
        let run = sandbox.run(&args);
        if run.code == Some(0) {
            break;
        }
        assert!(reruns < 3, "{point}: reruns keep failing: {}", run.output());
    }
    let copies = copies(&emu);
    let missing: Vec<usize> = (0..FILES).filter(|n| !copies.contains_key(n)).collect();
    assert!(missing.is_empty(), "{point}: lost {missing:?}");
    let extra: usize = copies.values().map(|c| c - 1).sum();
    assert!(extra <= max_extra, "{point}: {extra} extra copies");
    eprintln!("{point} after {skip}: 0 lost, {extra} extra copies");
}

#[test]
fn a_crash_after_writing_a_batch_before_its_fsync_loses_nothing() {
    crash_and_recover("outbox-before-sync", 3, IN_FLIGHT + ENQUEUING);
}

#[test]
fn a_crash_after_the_fsync_before_answering_loses_nothing() {
    crash_and_recover("outbox-after-sync", 3, IN_FLIGHT + ENQUEUING);
}

#[test]
fn a_crash_after_a_puback_before_its_ack_is_written_loses_nothing() {
    crash_and_recover("delivery-after-puback", 40, IN_FLIGHT + ENQUEUING);
}

#[test]
fn a_crash_after_an_ack_is_written_loses_nothing() {
    // Acks are written once per acks file per writer batch, so this point
    // is passed far fewer times than there are records.
    crash_and_recover("outbox-after-ack", 1, IN_FLIGHT + ENQUEUING);
}
