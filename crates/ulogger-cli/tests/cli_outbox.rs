//! `ulogger upload --outbox` and `ulogger outbox` as a user runs them: the
//! built binary, an emulator in this process, an outbox directory that
//! outlives each run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;

use support::sandbox::*;
use ulogger_emulator::{Emulator, EmulatorConfig};

/// Which numbered logs the cloud holds, and how many copies in all.
fn received(emu: &Emulator) -> (BTreeSet<usize>, usize) {
    let copies = copies(emu);
    (copies.keys().copied().collect(), copies.values().sum())
}

fn upload_args(emu_args: Vec<String>, outbox: &str, files: &[PathBuf]) -> Vec<String> {
    let mut args = emu_args;
    args.extend(device_args("SN-OUT"));
    args.extend(["--outbox".to_owned(), outbox.to_owned()]);
    args.extend(files.iter().map(|f| s(f)));
    args
}

#[test]
fn files_queued_while_the_broker_is_away_are_delivered_once_by_the_rerun() {
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 20);
    let outbox = s(&sandbox.path("outbox"));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut offline = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--timeout",
        "1",
    ]);
    offline.extend([
        "--customer-id".to_owned(),
        CUSTOMER.to_string(),
        "--port".to_owned(),
        addr.port().to_string(),
    ]);
    let run = sandbox
        .run(&upload_args(offline.clone(), &outbox, &files))
        .expect_code(3);
    assert!(run.stdout.contains("20 still queued"), "{}", run.output());
    assert!(
        run.stderr.contains("cannot reach the broker"),
        "{}",
        run.stderr
    );
    // The cause is said once, with when it started and what waits; the
    // final error only says how long it lasted.
    let cause = format!("could not connect to 127.0.0.1:{}", addr.port());
    assert_eq!(run.stderr.matches(&cause).count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|l| l.starts_with("delivery failing since ")
                && l.contains(&cause)
                && l.ends_with("(20 records wait)")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("cannot reach the broker: still failing since "),
        "{}",
        run.stderr
    );

    // Another process sees the queue.
    let status = sandbox.run(&strings(&[
        "--json", "outbox", "status", "--outbox", &outbox,
    ]));
    let status: serde_json::Value = serde_json::from_str(&status.expect_code(0).stdout).unwrap();
    assert_eq!(status["queued"], 20, "{status}");
    assert_eq!(status["owner_pid"], serde_json::Value::Null);
    // With why they wait, from the run that left them.
    assert!(
        status["last_error"].as_str().unwrap().starts_with(&cause),
        "{status}"
    );
    assert!(status["failing_since"].is_string(), "{status}");
    let list = sandbox.run(&strings(&["--json", "outbox", "list", "--outbox", &outbox]));
    let list: serde_json::Value = serde_json::from_str(&list.expect_code(0).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 20);
    assert_eq!(list[0]["serial"], "SN-OUT");

    // The broker is back, on a port of its own: the one the first run
    // tried was free only for that run, and another test may hold it now.
    let emu = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen("127.0.0.1:0".parse().unwrap()),
    )
    .unwrap();
    let mut online = offline;
    let port = online.iter().position(|a| a == "--port").unwrap() + 1;
    online[port] = emu.addr().port().to_string();
    let run = sandbox
        .run(&upload_args(online, &outbox, &files))
        .expect_code(0);
    assert!(
        run.stdout
            .contains("20 delivered, 0 delivered by an earlier run"),
        "{}",
        run.output()
    );
    let (numbers, copies) = received(&emu);
    assert_eq!(numbers, (0..20).collect());
    assert_eq!(copies, 20, "nothing was queued twice");
    let status = sandbox.run(&strings(&[
        "--json", "outbox", "status", "--outbox", &outbox,
    ]));
    let status: serde_json::Value = serde_json::from_str(&status.expect_code(0).stdout).unwrap();
    assert_eq!(status["queued"], 0, "{status}");
    assert_eq!(status["last_error"], serde_json::Value::Null, "{status}");
}

#[test]
fn a_run_killed_mid_delivery_is_finished_by_the_rerun_with_few_extra_copies() {
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 300);
    let outbox = s(&sandbox.path("outbox"));
    let emu = plaintext_emulator();
    let args = upload_args(connect_args("upload", &emu), &outbox, &files);
    let mut child = sandbox
        .command(&[])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_logs(&emu, 50);
    child.kill().unwrap();
    child.wait().unwrap();

    let run = sandbox.run(&args).expect_code(0);
    assert!(run.stdout.contains("still queued in"), "{}", run.output());
    let (numbers, copies) = received(&emu);
    assert_eq!(numbers, (0..300).collect(), "every file arrived");
    // At most the publishes in flight at the kill went twice.
    assert!(copies <= 300 + 100, "{copies} copies");
}

#[test]
fn retry_and_purge_need_the_outbox_free_and_say_who_holds_it() {
    let sandbox = Sandbox::new();
    let outbox = sandbox.path("outbox");
    let holder = ulogger_cloud::Outbox::open(ulogger_cloud::OutboxConfig::new(&outbox)).unwrap();
    let run = sandbox
        .run(&strings(&["outbox", "retry", "--outbox", &s(&outbox)]))
        .expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("process {}", std::process::id())),
        "{}",
        run.stderr
    );
    drop(holder);
    let run = sandbox
        .run(&strings(&["outbox", "purge", "--outbox", &s(&outbox)]))
        .expect_code(0);
    assert!(
        run.stdout.contains("0 dead records removed"),
        "{}",
        run.stdout
    );
    let run = sandbox
        .run(&strings(&[
            "outbox",
            "status",
            "--outbox",
            &s(&sandbox.path("nope")),
        ]))
        .expect_code(2);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
}

#[test]
fn a_pool_of_connections_delivers_and_a_bad_size_is_bad_input() {
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 30);
    let outbox = s(&sandbox.path("outbox"));
    let emu = plaintext_emulator();
    let mut args = connect_args("upload", &emu);
    args.extend(strings(&["--connections", "3"]));
    let run = sandbox
        .run(&upload_args(args.clone(), &outbox, &files))
        .expect_code(0);
    assert!(run.stdout.contains("30 delivered"), "{}", run.output());
    assert_eq!(received(&emu).0, (0..30).collect());

    let args = replace(args, "--connections", "0".to_owned());
    let run = sandbox
        .run(&upload_args(args, &outbox, &files))
        .expect_code(2);
    assert!(run.stderr.contains("connections"), "{}", run.stderr);
}

#[test]
fn a_rerun_after_a_partial_failure_sends_only_what_failed() {
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 6);
    let outbox = s(&sandbox.path("outbox"));
    let emu = plaintext_emulator();
    let args = upload_args(connect_args("upload", &emu), &outbox, &files);
    // One file is missing at the first run: it fails, the others go.
    let aside = sandbox.path("aside.bin");
    std::fs::rename(&files[5], &aside).unwrap();
    let run = sandbox.run(&args);
    assert_ne!(run.code, Some(0), "{}", run.output());
    assert!(
        run.stdout
            .contains("5 delivered, 0 delivered by an earlier run, 1 failed"),
        "{}",
        run.output()
    );
    assert_eq!(received(&emu), ((0..5).collect(), 5));
    // The queued files' lines were synced into the manifest, and the
    // delivered ones stay there for the rerun.
    let manifest = std::fs::read_to_string(sandbox.path("outbox").join("upload-manifest.jsonl"))
        .expect("the manifest keeps the delivered files");
    assert_eq!(manifest.lines().count(), 5, "{manifest}");

    std::fs::rename(&aside, &files[5]).unwrap();
    let run = sandbox.run(&args).expect_code(0);
    assert!(
        run.stdout
            .contains("1 delivered, 5 delivered by an earlier run, 0 failed"),
        "{}",
        run.output()
    );
    // Every file once: nothing delivered was sent again.
    assert_eq!(received(&emu), ((0..6).collect(), 6));
    assert!(
        !sandbox
            .path("outbox")
            .join("upload-manifest.jsonl")
            .exists(),
        "a run that settled every file forgets it"
    );
}
