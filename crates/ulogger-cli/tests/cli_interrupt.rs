//! Ctrl-C (SIGINT) ends every command with status 130 once it has
//! stopped cleanly; SIGTERM, the way services are stopped, ends the
//! long-running ones with 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
// The benchmarks' delay proxy: acknowledgements still in the air when
// Ctrl-C comes.
#[path = "../benches/support/delay_proxy.rs"]
mod delay_proxy;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::sandbox::*;
use support::Running;

/// Sends `signal` (`INT`, `TERM`) to `child`.
fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Interrupts `running` and returns its exit code and what it said on
/// stderr.
fn interrupt(mut running: Running) -> (Option<i32>, String) {
    let started = Instant::now();
    signal(&running.child, "INT");
    let mut stderr = String::new();
    if let Some(mut pipe) = running.child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    }
    let status = running.child.wait().unwrap();
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    (status.code(), stderr)
}

fn spawn(sandbox: &Sandbox, args: &[String]) -> Running {
    let mut command = sandbox.command(&[]);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running::spawn(command)
}

#[test]
fn ctrl_c_ends_the_emulator_with_130_and_sigterm_with_0() {
    let sandbox = Sandbox::new();
    let args = strings(&[
        "--json",
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--data",
        &s(&sandbox.path("data")),
    ]);
    let running = spawn(&sandbox, &args);
    assert_eq!(running.json_line()["event"], "ready");
    let (code, stderr) = interrupt(running);
    assert_eq!(code, Some(130), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(report["error"]["kind"], "interrupted", "{report}");

    let mut running = spawn(&sandbox, &args);
    assert_eq!(running.json_line()["event"], "ready");
    assert_eq!(running.terminate().code(), Some(0));
}

#[test]
fn ctrl_c_ends_the_agent_and_a_config_watch_with_130() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("inbox")).unwrap();
    let mut agent = vec!["--json".to_owned()];
    agent.extend(connect_args("agent", &emu));
    agent.extend(strings(&[
        "--no-store",
        "--inbox",
        &s(&sandbox.path("inbox")),
        "--outbox",
        &s(&sandbox.path("outbox")),
    ]));
    let running = spawn(&sandbox, &agent);
    while running.json_line()["event"] != "connected" {}
    let (code, stderr) = interrupt(running);
    assert_eq!(code, Some(130), "{stderr}");

    let mut watch = connect_args("config", &emu);
    watch.insert(1, "watch".to_owned());
    watch.push("--no-store".to_owned());
    watch.extend(device_args("SN-INTERRUPT"));
    watch.insert(0, "--json".to_owned());
    let running = spawn(&sandbox, &watch);
    while running.json_line()["event"] != "connected" {}
    let (code, stderr) = interrupt(running);
    assert_eq!(code, Some(130), "{stderr}");
}

/// `upload --outbox` waiting for a broker that does not answer: Ctrl-C
/// ends it with 130 (it was 3, a network failure), the files kept queued.
#[test]
fn ctrl_c_ends_an_upload_through_the_outbox_with_130() {
    // Accepts the connection, never answers the CONNECT.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--customer-id",
        "1",
        "--no-store",
        "--timeout",
        "60",
    ]);
    args.extend([
        "--port".to_owned(),
        listener.local_addr().unwrap().port().to_string(),
        "--outbox".to_owned(),
        s(&sandbox.path("outbox")),
    ]);
    args.extend(device_args("SN-INTERRUPT-OUTBOX"));
    args.push(s(&log));
    let running = spawn(&sandbox, &args);
    let _connection = listener.accept().unwrap();
    let (code, stderr) = interrupt(running);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    // The file stays queued for the next run.
    let status = sandbox
        .run(&strings(&[
            "--json",
            "outbox",
            "status",
            "--outbox",
            &s(&sandbox.path("outbox")),
        ]))
        .expect_code(0);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(status["queued"], 1, "{status}");
}

/// `upload --outbox` interrupted while acknowledgements are in the air
/// (a 300 ms round trip): those that arrive during the shutdown are
/// counted as delivered, and the summary's "still queued" is what the
/// outbox holds afterwards (it used to count them as queued).
#[test]
fn an_interrupted_upload_through_the_outbox_counts_from_the_outbox_after_it_stopped() {
    let emu = plaintext_emulator();
    let proxy = delay_proxy::DelayProxy::start(emu.addr(), Duration::from_millis(150)).unwrap();
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 200);
    let mut args = vec!["--json".to_owned()];
    args.extend(replace(
        connect_args("upload", &emu),
        "--port",
        proxy.addr().port().to_string(),
    ));
    args.extend(strings(&["--no-store", "--outbox"]));
    args.push(s(&sandbox.path("outbox")));
    args.extend(device_args("SN-GRACE"));
    args.extend(files.iter().map(|f| s(f)));
    let mut running = spawn(&sandbox, &args);
    // Deliveries are under way, more publishes in the air.
    running.line_containing("\"status\":\"delivered\"");
    signal(&running.child, "INT");
    let mut last = String::new();
    while let Ok(line) = running.lines.recv_timeout(PATIENCE) {
        last = line;
    }
    let code = running.child.wait().unwrap().code();
    assert_eq!(code, Some(130), "{last}");
    let summary: serde_json::Value = serde_json::from_str(&last).unwrap();

    let status = sandbox
        .run(&strings(&[
            "--json",
            "outbox",
            "status",
            "--outbox",
            &s(&sandbox.path("outbox")),
        ]))
        .expect_code(0);
    let status: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(
        summary["queued"], status["queued"],
        "{summary} against {status}"
    );
    assert_eq!(summary["failed"], 0, "{summary}");
    let delivered = summary["delivered"].as_u64().unwrap();
    assert_eq!(
        delivered + status["queued"].as_u64().unwrap(),
        200,
        "{summary}"
    );
    assert!(delivered as usize <= copies(&emu).len(), "{summary}");
}
