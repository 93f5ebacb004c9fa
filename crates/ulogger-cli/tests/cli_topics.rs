//! The topic layout as a user meets it: the default is the one the cloud
//! routes; `--legacy-topics` is an explicit opt-in that the emulator, like
//! the platform, acknowledges and then shows as unrouted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;
use ulogger_emulator::RecordKind;

#[test]
fn the_default_upload_is_routed_and_legacy_topics_are_shown_unrouted_with_a_hint() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v4_log(64));
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-TOPICS"));
    args.extend(strings(&["--no-store", "--token-timeout", "1"]));
    args.push(s(&log));

    let run = sandbox.run(&args).expect_code(0);
    assert!(
        run.stdout
            .contains(&format!("binlog/v0/{CUSTOMER}/0/{APP}")),
        "{}",
        run.stdout
    );

    let mut legacy = args.clone();
    legacy.insert(1, "--legacy-topics".to_owned());
    let run = sandbox.run(&legacy);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert!(run.stderr.contains("legacy topics"), "{}", run.stderr);
    assert!(run.stderr.contains("never routes"), "{}", run.stderr);
    let unrouted = emu
        .records()
        .into_iter()
        .find(|r| r.kind == RecordKind::Unrouted)
        .expect("the legacy boot request is recorded as unrouted");
    assert_eq!(unrouted.topic, format!("boot/v0/{CUSTOMER}/{APP}"));
    assert!(unrouted.reason.unwrap().contains("no group level"));
}

#[test]
fn legacy_topics_and_a_group_at_the_same_level_are_bad_input_and_a_flag_outranks_the_file() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v4_log(64));
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-TOPICS-2"));
    args.extend(strings(&[
        "--no-store",
        "--legacy-topics",
        "--group-id",
        "3",
    ]));
    args.push(s(&log));
    let run = sandbox.run(&args).expect_code(2);
    assert!(
        run.stderr.contains("--legacy-topics and --group-id"),
        "{}",
        run.stderr
    );

    // A config file that says legacy_topics, overruled by --group-id.
    let config = sandbox.write("client.toml", b"legacy_topics = true\n");
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-TOPICS-2"));
    args.extend(strings(&["--no-store", "--group-id", "0", "--config"]));
    args.push(s(&config));
    args.push(s(&log));
    let run = sandbox.run(&args).expect_code(0);
    assert!(
        run.stdout
            .contains(&format!("binlog/v0/{CUSTOMER}/0/{APP}")),
        "{}",
        run.stdout
    );
}
