//! `ulogger agent` watches its inbox with file notifications: with scans
//! an hour apart, a file renamed in, a file written in place (once its
//! writer closed it), a new device folder and a re-created inbox are all
//! taken at once; where inotify runs out (limits lowered in a user
//! namespace of its own) the agent says why, once, and polls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::sandbox::*;
use support::Running;
use ulogger_emulator::Emulator;

const DEVICE_TOML: &str = r#"app_id = 7
serial = "SN-WATCH"
device_type = "board"
git_version = "v1.0.0"
git_hash = "abc1234"
"#;

/// What a notification must beat: the scans are an hour apart, so a file
/// taken within this came from a notification.
const QUICK: Duration = Duration::from_secs(5);

fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn device(inbox: &Path, name: &str) -> std::path::PathBuf {
    let dir = inbox.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("device.toml"), DEVICE_TOML).unwrap();
    dir
}

/// `ulogger --json agent` against `emu` with `flags`, run by `wrapper`
/// (e.g. `unshare`) when given.
fn agent(sandbox: &Sandbox, emu: &Emulator, flags: &[&str], wrapper: &[&str]) -> Running {
    let mut args = strings(&["--json"]);
    args.extend(connect_args("agent", emu));
    args.extend(strings(&["--no-store", "--inbox"]));
    args.push(s(&sandbox.path("inbox")));
    args.push("--outbox".to_owned());
    args.push(s(&sandbox.path("outbox")));
    args.extend(strings(flags));
    let plain = sandbox.command(&[]);
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(plain.get_program());
            command.env_clear().envs(
                plain
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            );
            command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
            command
        }
        None => plain,
    };
    command
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Running::spawn(command)
}

/// Binary logs the cloud receives, counted from when it was made.
struct LogCount(ulogger_emulator::RecordWatcher);

impl LogCount {
    fn watch(emu: &Emulator) -> LogCount {
        LogCount(emu.watch_records())
    }

    /// Waits (at most 30 s) until `n` logs have arrived since.
    fn wait(mut self, n: usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), async {
                    let mut logs = 0;
                    while logs < n {
                        if self.0.next().await.kind == ulogger_emulator::RecordKind::BinaryLog {
                            logs += 1;
                        }
                    }
                })
                .await
            })
            .expect("the logs arrive");
    }
}

/// The next event of `kind` for `file`, skipping others; how long it took.
fn wait_event(running: &Running, kind: &str, file: &str) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    loop {
        let line = running.json_line();
        if line["event"] == kind && line["file"] == file {
            return (line, start.elapsed());
        }
        assert_ne!(line["event"], "rejected", "{line}");
    }
}

#[test]
fn files_are_taken_at_once_though_scans_are_an_hour_apart() {
    let sandbox = Sandbox::new();
    let inbox = sandbox.path("inbox");
    let dev = device(&inbox, "SN-WATCH");
    // Taken by the first scan: once queued, the agent is watching.
    drop_file(&dev, "log-00000.bin", &numbered_log(0));
    let emu = plaintext_emulator();
    let logs = LogCount::watch(&emu);
    let running = agent(
        &sandbox,
        &emu,
        &["--scan-interval", "1h", "--rescan-interval", "1d"],
        &[],
    );
    wait_event(&running, "queued", "SN-WATCH/log-00000.bin");

    // Renamed in, the writers' rule.
    drop_file(&dev, "log-00001.bin", &numbered_log(1));
    let (_, took) = wait_event(&running, "queued", "SN-WATCH/log-00001.bin");
    assert!(took < QUICK, "a moved-in file took {took:?}");
    wait_event(&running, "delivered", "SN-WATCH/log-00001.bin");

    // Written in place: taken once its writer closed it, whole.
    let bytes = numbered_log(2);
    let mut file = std::fs::File::create(dev.join("log-00002.bin")).unwrap();
    file.write_all(&bytes[..10]).unwrap();
    file.flush().unwrap();
    file.write_all(&bytes[10..]).unwrap();
    drop(file);
    let (queued, took) = wait_event(&running, "queued", "SN-WATCH/log-00002.bin");
    assert!(
        took < QUICK,
        "a file written in place took {took:?}: {queued}"
    );

    // A device folder made after the agent started.
    let other = device(&inbox, "SN-LATER");
    drop_file(&other, "log-00003.bin", &numbered_log(3));
    let (_, took) = wait_event(&running, "queued", "SN-LATER/log-00003.bin");
    assert!(took < QUICK, "a new folder's file took {took:?}");

    // The inbox deleted and made again.
    std::fs::remove_dir_all(&inbox).unwrap();
    let staging = sandbox.path("staging");
    let dev = device(&staging, "SN-WATCH");
    drop_file(&dev, "log-00004.bin", &numbered_log(4));
    std::fs::rename(&staging, &inbox).unwrap();
    let (_, took) = wait_event(&running, "queued", "SN-WATCH/log-00004.bin");
    assert!(took < QUICK, "a file in a re-created inbox took {took:?}");
    let dev = inbox.join("SN-WATCH");
    drop_file(&dev, "log-00005.bin", &numbered_log(5));
    let (_, took) = wait_event(&running, "queued", "SN-WATCH/log-00005.bin");
    assert!(
        took < QUICK,
        "a file after the inbox came back took {took:?}"
    );

    logs.wait(6);
    // Every log arrived whole and verified (copies() checks each).
    assert_eq!(
        copies(&emu).into_keys().collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
}

/// `unshare`, which the fallback test runs the agent under; a CI run
/// without it fails.
fn have_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["-U", "-r", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs `unshare -U -r` (util-linux, user namespaces)"
        );
        eprintln!("skipped: `unshare -U -r` does not work here");
    }
    ok
}

#[test]
fn out_of_inotify_watches_or_instances_the_agent_says_why_once_and_polls() {
    if !have_unshare() {
        return;
    }
    for (limit, value, says) in [
        ("max_inotify_watches", "1", "fs.inotify.max_user_watches"),
        (
            "max_inotify_instances",
            "0",
            "fs.inotify.max_user_instances",
        ),
    ] {
        let sandbox = Sandbox::new();
        let inbox = sandbox.path("inbox");
        let dev = device(&inbox, "SN-WATCH");
        let emu = plaintext_emulator();
        let logs = LogCount::watch(&emu);
        // The limits of a user namespace of its own: lowered for the agent
        // only, never for the machine.
        let script = format!("echo {value} > /proc/sys/user/{limit} && exec \"$@\"");
        let running = agent(
            &sandbox,
            &emu,
            &["--scan-interval", "20ms"],
            &["unshare", "-U", "-r", "sh", "-c", &script, "sh"],
        );
        let mut polling = Vec::new();
        drop_file(&dev, "log-00000.bin", &numbered_log(0));
        drop_file(&dev, "log-00001.bin", &numbered_log(1));
        let mut delivered = 0;
        while delivered < 2 {
            let line = running.json_line();
            match line["event"].as_str() {
                Some("polling") => polling.push(line),
                Some("delivered") => delivered += 1,
                _ => {}
            }
        }
        logs.wait(2);
        assert_eq!(polling.len(), 1, "{limit}: said once: {polling:?}");
        let reason = polling[0]["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{limit}: {reason}");
        assert_eq!(polling[0]["every_ms"], 20, "{limit}");
        assert_eq!(copies(&emu).len(), 2);
    }
}

#[test]
fn poll_polls_without_a_warning() {
    let sandbox = Sandbox::new();
    let dev = device(&sandbox.path("inbox"), "SN-WATCH");
    let emu = plaintext_emulator();
    let running = agent(&sandbox, &emu, &["--poll", "--scan-interval", "20ms"], &[]);
    drop_file(&dev, "log-00000.bin", &numbered_log(0));
    loop {
        let line = running.json_line();
        assert_ne!(line["event"], "polling", "--poll is no failure: {line}");
        if line["event"] == "delivered" {
            break;
        }
    }
}
