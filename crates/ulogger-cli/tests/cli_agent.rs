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
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind};

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
    let mut args = strings(&[
        "--json",
        "agent",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--no-store",
        "--scan-interval",
        "20",
    ]);
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
    let mut command = sandbox.command(&[]);
    command
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Running::spawn(command)
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
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

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
    let emu = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).listen(addr)).unwrap();
    drop(emu);
    let emu = Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true).listen(addr)).unwrap();
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
    drop_file(&device, "crash.core", &[0xCD; 256]);
    std::fs::write(device.join("ignored.tmp"), b"still being written").unwrap();
    let rejected = events(&running, "rejected", 1);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("checksum"),
        "{}",
        rejected[0]
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
            .filter(|r| r.kind == RecordKind::CoreDump && r.size == 256)
            .count(),
        1
    );
}
