//! `ulogger agent` as a gateway runs it: files dropped in an inbox reach
//! the cloud through the durable outbox, across an outage, a SIGKILL of
//! the agent and a restart of the cloud; invalid files are set aside.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use support::sandbox::*;
use support::Running;
use ulogger_cloud::wire::{CoreDumpHeader, DeviceInfo};
use ulogger_emulator::{Emulator, PortHold, RecordKind};

const DEVICE_TOML: &str = r#"app_id = 7
serial = "SN-AGENT"
device_type = "board"
git_version = "v1.0.0"
git_hash = "abc1234"
"#;

/// Writes a file the way writers must: under a temporary name, then renamed.
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn received(emu: &Emulator) -> BTreeSet<usize> {
    copies(emu).into_keys().collect()
}

fn agent(sandbox: &Sandbox, addr: SocketAddr) -> Running {
    agent_with(sandbox, addr, true, None)
}

/// The agent, printing JSON or text; with `log`, its warnings go there.
fn agent_with(
    sandbox: &Sandbox,
    addr: SocketAddr,
    json: bool,
    log: Option<std::fs::File>,
) -> Running {
    Running::spawn(agent_command(sandbox, addr, json, log))
}

/// The command [`agent_with`] runs.
fn agent_command(
    sandbox: &Sandbox,
    addr: SocketAddr,
    json: bool,
    log: Option<std::fs::File>,
) -> std::process::Command {
    let mut args = strings(if json { &["--json"] } else { &[] });
    args.extend(strings(&[
        "agent",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--no-store",
        "--scan-interval",
        "20",
    ]));
    args.extend([
        "--customer-id".to_owned(),
        CUSTOMER.to_string(),
        "--port".to_owned(),
        addr.port().to_string(),
        "--inbox".to_owned(),
        s(&sandbox.path("inbox")),
        "--outbox".to_owned(),
        s(&sandbox.path("outbox")),
    ]);
    let (env, stderr) = match log {
        Some(file) => (vec![("ULOGGER_LOG", "warn".to_owned())], Stdio::from(file)),
        None => (Vec::new(), Stdio::inherit()),
    };
    let mut command = sandbox.command(&env);
    command.args(&args).stdout(Stdio::piped()).stderr(stderr);
    command
}

/// Waits for `n` agent events of `kind`.
fn events(running: &Running, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let line = running.json_line();
        if line["event"] == kind {
            out.push(line);
        }
    }
    out
}

#[test]
fn files_dropped_during_an_outage_arrive_after_an_agent_kill_and_a_cloud_restart() {
    let sandbox = Sandbox::new();
    let inbox = sandbox.path("inbox");
    let device = inbox.join("SN-AGENT");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    let port = PortHold::new().unwrap();
    let addr = port.addr();

    // The cloud is away: files are queued durably and leave the inbox.
    let mut running = agent(&sandbox, addr);
    for n in 0..10 {
        drop_file(&device, &format!("log-{n:05}.bin"), &numbered_log(n));
    }
    events(&running, "queued", 10);
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(&device).unwrap().collect();
    assert_eq!(left.len(), 1, "only device.toml stays in the inbox");

    // The cloud comes up, goes down and comes back; the agent restarts.
    let emu = plaintext_emulator_on(&port);
    drop(emu);
    let emu = plaintext_emulator_on(&port);
    let running = agent(&sandbox, addr);
    for n in 10..15 {
        drop_file(&device, &format!("log-{n:05}.bin"), &numbered_log(n));
    }
    let delivered = events(&running, "delivered", 5);
    assert!(delivered
        .iter()
        .all(|e| e["file"].as_str().unwrap().starts_with("SN-AGENT/")));
    // The ten queued before the kill go out too (they have no file name
    // any more: the outbox delivers them by itself).
    wait_for_logs(&emu, 15);
    assert_eq!(received(&emu), (0..15).collect());

    let mut running = running;
    assert!(
        running.terminate().success(),
        "SIGTERM ends the agent cleanly"
    );
    let status = sandbox.run(&strings(&[
        "--json",
        "outbox",
        "status",
        "--outbox",
        &s(&sandbox.path("outbox")),
    ]));
    let status: serde_json::Value = serde_json::from_str(&status.expect_code(0).stdout).unwrap();
    assert_eq!(status["queued"], 0, "{status}");
}

#[test]
fn invalid_files_move_to_rejected_with_the_reason_and_core_dumps_go_out() {
    let sandbox = Sandbox::new();
    let emu = plaintext_emulator();
    let inbox = sandbox.path("inbox");
    let device = inbox.join("board-1");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    let running = agent(&sandbox, emu.addr());

    let mut bad = numbered_log(1);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    drop_file(&device, "broken.bin", &bad);
    let info = DeviceInfo::new(APP, "SN-CORE", "board", "v1", GIT_HASH);
    let mut body = b"cC".to_vec();
    body.resize(300, 0xCD);
    let package = CoreDumpHeader::encode_package(&info, &body);
    drop_file(&device, "crash.core", &package);
    // Bytes without a §10 header are no core dump the cloud can read.
    drop_file(&device, "garbage.core", &[0xCD; 256]);
    std::fs::write(device.join("ignored.tmp"), b"still being written").unwrap();
    let rejected = events(&running, "rejected", 2);
    let reasons: Vec<&str> = rejected
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("checksum")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("not a valid core dump: core dump of 256 bytes is shorter")),
        "{reasons:?}"
    );
    events(&running, "delivered", 1);
    let reason =
        std::fs::read_to_string(sandbox.path("rejected/board-1/broken.bin.reason")).unwrap();
    assert!(reason.contains("checksum"), "{reason}");
    assert!(sandbox.path("rejected/board-1/broken.bin").is_file());
    assert!(
        device.join("ignored.tmp").is_file(),
        "temporary files are left alone"
    );
    assert_eq!(
        emu.records()
            .iter()
            .filter(|r| r.kind == RecordKind::CoreDump && r.size == package.len())
            .count(),
        1
    );
    assert!(sandbox
        .path("rejected/board-1/garbage.core.reason")
        .is_file());
}

/// Only real device folders and regular files are taken: a symbolic link
/// to a file (or a folder) outside the inbox is never read nor deleted, a
/// FIFO blocks nothing, each is warned about once; an invalid
/// `device.toml` is reported without its contents; a name with a newline
/// is printed escaped.
#[cfg(unix)]
#[test]
fn links_fifos_and_odd_names_are_refused_or_escaped_never_followed() {
    use std::os::unix::fs::symlink;

    let sandbox = Sandbox::new();
    let emu = plaintext_emulator();
    let inbox = sandbox.path("inbox");
    let device = inbox.join("board-1");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();

    // Outside the inbox: a valid log and a device folder with one.
    let outside = sandbox.path("outside");
    std::fs::create_dir_all(outside.join("dev")).unwrap();
    let secret = outside.join("secret.bin");
    std::fs::write(&secret, numbered_log(99)).unwrap();
    std::fs::write(outside.join("dev/device.toml"), DEVICE_TOML).unwrap();
    std::fs::write(outside.join("dev/log-00098.bin"), numbered_log(98)).unwrap();
    symlink(&secret, device.join("linked.bin")).unwrap();
    symlink(outside.join("dev"), inbox.join("linked-device")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(device.join("pipe.bin"))
        .status()
        .unwrap();
    assert!(made.success());
    let mut bad = numbered_log(3);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    drop_file(&device, "bad\nname.bin", &bad);
    // A device whose identity would leak a secret if errors quoted it.
    let leaky = inbox.join("board-2");
    std::fs::create_dir_all(&leaky).unwrap();
    std::fs::write(leaky.join("device.toml"), "app_id = \"TOPSECRET-42\"\n").unwrap();
    drop_file(&leaky, "log-00004.bin", &numbered_log(4));

    let log = sandbox.path("agent.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let mut running = agent_with(&sandbox, emu.addr(), false, Some(stderr));
    drop_file(&device, "log-00001.bin", &numbered_log(1));
    let rejected = running.line_containing("rejected board-1/bad");
    assert!(
        rejected.contains("board-1/bad\\nname.bin"),
        "the newline is escaped: {rejected}"
    );
    running.line_containing("delivered board-1/log-00001.bin");
    // Scans go on: the FIFO blocked nothing.
    drop_file(&device, "log-00002.bin", &numbered_log(2));
    running.line_containing("delivered board-1/log-00002.bin");
    assert!(running.terminate().success());

    assert_eq!(received(&emu), [1, 2].into_iter().collect());
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        numbered_log(99),
        "never touched"
    );
    assert!(
        device.join("linked.bin").symlink_metadata().is_ok(),
        "left in place"
    );
    assert!(outside.join("dev/log-00098.bin").is_file(), "never taken");
    assert!(device.join("pipe.bin").symlink_metadata().is_ok());
    assert!(
        leaky.join("log-00004.bin").is_file(),
        "waits for an identity"
    );

    let log = std::fs::read_to_string(&log).unwrap();
    for refused in ["linked.bin", "linked-device", "pipe.bin"] {
        let warnings = log
            .lines()
            .filter(|l| l.contains("not taken from the inbox") && l.contains(refused))
            .count();
        assert_eq!(warnings, 1, "{refused} warned about once:\n{log}");
    }
    assert!(log.contains("a FIFO"), "{log}");
    assert!(log.contains("a symbolic link"), "{log}");
    assert!(log.contains("device.toml (at line 1"), "{log}");
    assert!(
        !log.contains("TOPSECRET"),
        "an error quoted the file: {log}"
    );
}

/// A folder the agent may read but not change: each file is queued and
/// delivered once, however many scans see it, and the folder is reported
/// once. Tests run as root, where permissions stop no removal (and an
/// immutable attribute, a read-only mount or a bind mount need
/// privileges or filesystems CI may lack): as root the agent runs as
/// `nobody` (`Command::uid`), so the folder's mode 0555 makes its real
/// `unlink` fail with EACCES, through the agent's own code path.
#[cfg(unix)]
#[test]
fn a_read_only_inbox_folder_sends_each_file_once_and_is_reported_once() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let sandbox = Sandbox::new();
    let emu = plaintext_emulator();
    let root = std::fs::metadata(sandbox.dir.path()).unwrap().uid() == 0;
    let open = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let inbox = sandbox.path("inbox");
    let stuck = inbox.join("stuck");
    let fresh = inbox.join("fresh");
    for dir in [&stuck, &fresh] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("device.toml"), DEVICE_TOML).unwrap();
    }
    for n in 0..3 {
        drop_file(&stuck, &format!("log-{n}.bin"), &numbered_log(n));
    }
    open(&stuck, 0o555);
    if root {
        // `nobody` makes its outbox in the sandbox and takes from `fresh`.
        open(sandbox.dir.path(), 0o777);
        open(&fresh, 0o777);
    }
    let log_path = sandbox.path("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = agent_command(&sandbox, emu.addr(), true, Some(log));
    if root {
        // `nobody` may not reach the binary where cargo built it (a clone
        // in a 0700 directory from `mktemp -d`): run a copy kept in the
        // sandbox, with the same arguments and environment.
        let copy = sandbox.path("ulogger-as-nobody");
        std::fs::copy(env!("CARGO_BIN_EXE_ulogger"), &copy).unwrap();
        open(&copy, 0o755);
        let mut as_nobody = std::process::Command::new(&copy);
        as_nobody.args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => as_nobody.env(key, value),
                None => as_nobody.env_remove(key),
            };
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .unwrap();
        as_nobody
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .uid(65534)
            .gid(65534);
        command = as_nobody;
    }
    let running = Running::spawn(command);

    // Reads events until `done` says enough; returns what was read.
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut read_until = |done: &dyn Fn(&[serde_json::Value]) -> bool| {
        while !done(&seen) {
            seen.push(running.json_line());
        }
    };
    let count = |seen: &[serde_json::Value], event: &str, file: &str| {
        seen.iter()
            .filter(|e| e["event"] == event && e["file"].as_str().unwrap_or("").starts_with(file))
            .count()
    };
    read_until(&|seen| count(seen, "delivered", "stuck/") == 3);
    // Five more files, each in the writable folder after the last was
    // queued: each is taken by a later scan, so at least five scans
    // pass over the files that stay in `stuck`.
    for n in 100..105 {
        drop_file(&fresh, &format!("log-{n}.bin"), &numbered_log(n));
        let name = format!("fresh/log-{n}.bin");
        read_until(&|seen| count(seen, "queued", &name) == 1);
    }
    read_until(&|seen| count(seen, "delivered", "fresh/") == 5);

    assert_eq!(count(&seen, "queued", "stuck/"), 3, "{seen:#?}");
    let copies = copies(&emu);
    let expected: std::collections::BTreeMap<usize, usize> =
        (0..3).chain(100..105).map(|n| (n, 1)).collect();
    assert_eq!(copies, expected, "one copy of each file");
    let reports: Vec<_> = seen
        .iter()
        .filter(|e| e["event"] == "inbox-not-writable")
        .collect();
    assert_eq!(reports.len(), 1, "{seen:#?}");
    assert_eq!(reports[0]["folder"], s(&stuck), "{}", reports[0]);
    assert!(
        reports[0]["hint"]
            .as_str()
            .unwrap()
            .contains("write access"),
        "{}",
        reports[0]
    );
    // The files stay; the writable folder was emptied.
    assert_eq!(std::fs::read_dir(&stuck).unwrap().count(), 4);
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 1);
    drop(running);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(
        log.matches("the inbox folder is not writable").count(),
        1,
        "{log}"
    );
    open(&stuck, 0o755);
}

/// `outbox status --json` of the sandbox's outbox, once `done` accepts it
/// (the owner rewrites its status file about once a second).
fn outbox_status_until(
    sandbox: &Sandbox,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let run = sandbox
            .run(&strings(&[
                "--json",
                "outbox",
                "status",
                "--outbox",
                &s(&sandbox.path("outbox")),
            ]))
            .expect_code(0);
        let status: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "outbox status never matched: {status}"
        );
        // A poll interval, not a synchronisation: the loop waits on the
        // status itself, bounded by the deadline.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_broker_out_of_reach_is_said_once_summarised_in_status_and_cleared_when_it_is_back() {
    let sandbox = Sandbox::new();
    let device = sandbox.path("inbox").join("SN-AGENT");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    drop_file(&device, "log-00000.bin", &numbered_log(0));
    let port = PortHold::new().unwrap();
    let addr = port.addr();

    // Default verbosity (the sandbox turns tracing off): only what the
    // agent says itself.
    let mut command = agent_command(&sandbox, addr, false, None);
    command.args(["--summary-interval", "1"]);
    let running = Running::spawn(command);
    let failing = running.line_containing("delivery failing since");
    assert!(
        failing.contains(&format!("could not connect to 127.0.0.1:{}", addr.port())),
        "{failing}"
    );
    assert!(failing.contains("refused"), "{failing}");

    // Several attempts later, the failure is summarised, not repeated.
    loop {
        let line = running.lines.recv_timeout(support::WAIT).unwrap();
        assert!(!line.contains("delivery failing"), "said again: {line}");
        if let Some(rest) = line.split("; still failing since ").nth(1) {
            let attempts: u64 = rest
                .split(" (")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            assert!(rest.contains("could not connect"), "{line}");
            if attempts >= 3 {
                break;
            }
        }
    }
    let status = outbox_status_until(&sandbox, |s| s["failed_attempts"].as_u64() >= Some(3));
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .starts_with("could not connect to 127.0.0.1"),
        "{status}"
    );
    assert!(
        status["failing_since"].as_str().unwrap().ends_with('Z'),
        "{status}"
    );
    assert_eq!(status["queued"], 1, "{status}");

    // The broker comes back: the record goes out and the failure clears.
    let emu = plaintext_emulator_on(&port);
    let recovered = running.line_containing("delivery works again");
    assert!(recovered.contains("attempts"), "{recovered}");
    wait_for_logs(&emu, 1);
    let status = outbox_status_until(&sandbox, |s| s["delivered"] == 1);
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
    assert_eq!(status["failing_since"], serde_json::Value::Null, "{status}");
}

#[test]
fn an_untrusted_broker_certificate_is_said_at_default_verbosity_with_the_hint_upload_gives() {
    let sandbox = Sandbox::new();
    let device = sandbox.path("inbox").join("SN-AGENT");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    drop_file(&device, "log-00000.bin", &numbered_log(0));
    let emu = tls_emulator();
    let stranger = tls_emulator();
    let mut args = replace(
        connect_args("agent", &emu),
        "--ca",
        s(&stranger.certs().unwrap().ca_cert),
    );
    args.extend(strings(&["--no-store", "--scan-interval", "20", "--inbox"]));
    args.push(s(&sandbox.path("inbox")));
    args.push("--outbox".to_owned());
    args.push(s(&sandbox.path("outbox")));
    let mut command = sandbox.command(&[]);
    command.args(&args).stdout(Stdio::piped());
    let running = Running::spawn(command);

    let failing = running.line_containing("delivery failing since");
    assert!(failing.contains("could not connect to"), "{failing}");
    let hint = running.lines.recv_timeout(support::WAIT).unwrap();
    assert!(hint.starts_with("hint: the broker's certificate"), "{hint}");
    // The same words `upload` has for the same settings.
    let log = sandbox.write("one.bin", &numbered_log(1));
    let mut upload = replace(
        connect_args("upload", &emu),
        "--ca",
        s(&stranger.certs().unwrap().ca_cert),
    );
    upload.extend(device_args("SN-AGENT"));
    upload.extend(strings(&["--no-store", &s(&log)]));
    let run = sandbox.run(&upload);
    assert!(run.stderr.contains(&hint), "{}", run.stderr);
    let status = outbox_status_until(&sandbox, |s| !s["last_error"].is_null());
    assert!(status["failing_since"].is_string(), "{status}");
}

#[test]
fn a_wrong_customer_id_is_said_with_the_hint_and_shown_by_outbox_status() {
    let sandbox = Sandbox::new();
    let device = sandbox.path("inbox").join("SN-AGENT");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    let emu = plaintext_emulator();
    let mut args = replace(
        connect_args("agent", &emu),
        "--customer-id",
        (CUSTOMER + 1).to_string(),
    );
    args.extend(strings(&["--no-store", "--scan-interval", "20", "--inbox"]));
    args.push(s(&sandbox.path("inbox")));
    args.push("--outbox".to_owned());
    args.push(s(&sandbox.path("outbox")));
    let mut command = sandbox.command(&[]);
    command.args(&args).stdout(Stdio::piped());
    let running = Running::spawn(command);

    let failing = running.line_containing("delivery failing since");
    assert!(failing.contains("not authorized"), "{failing}");
    let hint = running.lines.recv_timeout(support::WAIT).unwrap();
    assert!(
        hint.starts_with(
            "hint: the broker accepts only client ids that start with cust-{customer id}-"
        ) && hint.contains(&format!("(now {})", CUSTOMER + 1)),
        "{hint}"
    );

    outbox_status_until(&sandbox, |s| !s["last_error"].is_null());
    let text = sandbox
        .run(&strings(&[
            "outbox",
            "status",
            "--outbox",
            &s(&sandbox.path("outbox")),
        ]))
        .expect_code(0);
    let line = text
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("last error: "))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(line.contains("not authorized"), "{line}");
    assert!(line.contains("(failing since "), "{line}");
}

#[test]
fn a_broker_stopped_under_a_running_agent_is_said_and_its_return_too() {
    let sandbox = Sandbox::new();
    let device = sandbox.path("inbox").join("SN-AGENT");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    let port = PortHold::new().unwrap();
    let emu = plaintext_emulator_on(&port);
    let addr = emu.addr();
    let running = agent_with(&sandbox, addr, false, None);
    drop_file(&device, "log-00000.bin", &numbered_log(0));
    running.line_containing("delivered SN-AGENT/log-00000.bin");

    drop(emu);
    let failing = running.line_containing("delivery failing since");
    assert!(
        failing.contains("lost") || failing.contains("could not connect"),
        "{failing}"
    );
    drop_file(&device, "log-00001.bin", &numbered_log(1));
    let emu = plaintext_emulator_on(&port);
    running.line_containing("delivery works again");
    running.line_containing("delivered SN-AGENT/log-00001.bin");
    wait_for_logs(&emu, 1);
}

#[test]
fn the_ack_sync_interval_is_bounded_and_comes_from_flag_or_file() {
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("inbox")).unwrap();
    let mut args = strings(&[
        "agent",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--no-store",
    ]);
    args.extend([
        "--customer-id".to_owned(),
        CUSTOMER.to_string(),
        "--inbox".to_owned(),
        s(&sandbox.path("inbox")),
        "--outbox".to_owned(),
        s(&sandbox.path("outbox")),
        "--ack-sync-interval".to_owned(),
        "3600000".to_owned(),
    ]);
    let run = sandbox.run(&args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--ack-sync-interval 3600000 is more than 60000 ms"),
        "{}",
        run.stderr
    );
    // The other intervals too: no value may mean "never".
    args.truncate(args.len() - 2);
    args.extend(["--scan-interval".to_owned(), "2h".to_owned()]);
    let run = sandbox.run(&args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--scan-interval 7200000 is more than 3600000 ms"),
        "{}",
        run.stderr
    );
    // And beyond any setting's bound, refused as it is read.
    args.truncate(args.len() - 2);
    args.extend(["--scan-interval".to_owned(), u64::MAX.to_string()]);
    let run = sandbox.run(&args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("'18446744073709551615' is too long a duration: at most 7d (a week)"),
        "{}",
        run.stderr
    );
    // Shown with where it came from, like every setting.
    let config = sandbox.write("config.toml", b"ack_sync_interval = 200\n");
    let shown = sandbox.run(&strings(&["config", "show", "--config", &s(&config)]));
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.contains("ack_sync_interval"))
        .unwrap_or_else(|| panic!("not shown:\n{}", shown.stdout));
    assert!(line.contains("200"), "{line}");
}
