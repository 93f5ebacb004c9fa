//! `ulogger upload --jobs N`: many files in flight at once over one
//! connection, run as a user runs it (the built binary against an
//! emulator started in this process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::sandbox::*;
use ulogger_emulator::{
    Emulator, EmulatorConfig, PlatformLimits, RecordKind, Verdict, WithholdPuback,
};

/// A TLS emulator without the platform's rate limits (these tests are
/// about concurrency, not pacing; the CLI runs with `--no-pacing`).
fn unlimited_emulator() -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER).limits(PlatformLimits::unlimited()))
        .expect("emulator starts")
}

fn upload_args(emu: &Emulator, serial: &str, extra: &[&str]) -> Vec<String> {
    let mut args = connect_args("upload", emu);
    args.extend(device_args(serial));
    args.extend(strings(&["--no-store", "--no-pacing"]));
    args.extend(strings(extra));
    args
}

/// The lines (on stderr) of the files that failed.
fn failed_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("FAILED")).collect()
}

/// Waits until the cloud holds `n` binary logs in all.
fn wait_for_stored_logs(emu: &Emulator, n: usize) {
    let count = || {
        emu.records()
            .iter()
            .filter(|r| r.kind == RecordKind::BinaryLog)
            .count()
    };
    let mut watcher = emu.watch_records();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                while count() < n {
                    watcher.next().await;
                }
            })
            .await
        })
        .unwrap_or_else(|_| panic!("{n} logs reach the cloud (it has {})", count()));
}

#[test]
fn many_files_in_flight_at_once_are_each_verified_exactly_once() {
    let emu = unlimited_emulator();
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 300);
    let mut args = upload_args(&emu, "SN-JOBS", &["--jobs", "32"]);
    args.extend(files.iter().map(|f| s(f)));

    let run = sandbox.run(&args).expect_code(0);

    let uploaded: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(": uploaded "))
        .collect();
    assert_eq!(uploaded.len(), 300, "{}", run.stdout);
    for file in &files {
        assert_eq!(
            uploaded.iter().filter(|l| l.starts_with(&s(file))).count(),
            1,
            "{} is reported once",
            file.display()
        );
    }
    let summary = run.stdout.lines().last().unwrap();
    let bytes: usize = (0..300).map(|n| numbered_log(n).len()).sum();
    assert!(
        summary.starts_with(&format!("300 uploaded, 0 failed, {bytes} bytes in ")),
        "{summary}"
    );
    // The PUBACK came after the cloud stored each: nothing is left to arrive.
    let expected: BTreeMap<usize, usize> = (0..300).map(|n| (n, 1)).collect();
    assert_eq!(copies(&emu), expected);
    assert_eq!(emu.issued_tokens().len(), 1, "one registration for all");
    // In flight together, yet they reached the cloud in command-line order.
    assert_eq!(arrival_order(&emu), (0..300).collect::<Vec<_>>());
}

/// The numbers of the numbered logs in the order the cloud received them.
fn arrival_order(emu: &Emulator) -> Vec<usize> {
    emu.records()
        .iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .map(|r| {
            let bytes = std::fs::read(emu.data_dir().join(r.file.as_ref().unwrap())).unwrap();
            std::str::from_utf8(&bytes[25..]).unwrap()[4..]
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_bad_file_among_good_ones_fails_alone_and_is_counted() {
    let emu = unlimited_emulator();
    let sandbox = Sandbox::new();
    let mut files = numbered_logs(&sandbox, 40);
    let mut corrupt = numbered_log(99);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF; // the checksum no longer matches
    files.insert(17, sandbox.write("corrupt.bin", &corrupt));
    files.insert(30, sandbox.path("missing.bin"));
    let mut args = upload_args(&emu, "SN-JOBS-BAD", &["--jobs", "8"]);
    args.extend(files.iter().map(|f| s(f)));

    let run = sandbox.run(&args).expect_code(2);

    let failed = failed_lines(&run.stderr);
    assert_eq!(failed.len(), 2, "{}", run.stdout);
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&s(&files[17])) && l.contains("checksum")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.starts_with(&s(&files[30])) && l.contains("cannot read")),
        "{failed:?}"
    );
    let bytes: usize = (0..40).map(|n| numbered_log(n).len()).sum();
    let summary = run.stdout.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!("40 uploaded, 2 failed, {bytes} bytes in ")),
        "{summary}"
    );
    assert!(
        run.stderr.contains("2 of 42 files failed"),
        "{}",
        run.stderr
    );
    let expected: BTreeMap<usize, usize> = (0..40).map(|n| (n, 1)).collect();
    assert_eq!(copies(&emu), expected);
}

#[test]
fn json_reports_keep_the_command_line_order() {
    let emu = unlimited_emulator();
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 50);
    let mut args = upload_args(&emu, "SN-JOBS-JSON", &["--jobs", "16", "--json"]);
    args.extend(files.iter().map(|f| s(f)));

    let run = sandbox.run(&args).expect_code(0);

    let reports: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is JSON ({e}):\n{}", run.stdout));
    let reports = reports.as_array().expect("a JSON array");
    assert_eq!(reports.len(), 50);
    for (report, file) in reports.iter().zip(&files) {
        assert_eq!(report["file"], s(file), "{report}");
        assert_eq!(report["ok"], true, "{report}");
    }
    assert_eq!(copies(&emu).len(), 50);
}

#[test]
fn zero_or_more_jobs_than_the_connections_keep_in_flight_is_bad_input() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    // Nothing listens there: had the command gone on to connect, it would
    // exit 3, not 2.
    let base = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--port",
        &closed_port().to_string(),
        "--customer-id",
        "1",
        "--plaintext",
        "--no-store",
        "--timeout",
        "2",
    ]);
    for (jobs, connections, expected) in [
        ("0", "1", "at least 1"),
        ("101", "1", "at most 100"),
        ("201", "2", "at most 200"),
        ("18446744073709551615", "1", "at most 100"),
        ("99999999999999999999999", "1", "--jobs"),
        ("-1", "1", "--jobs"),
    ] {
        let mut args = base.clone();
        args.extend(device_args("SN-JOBS-ARG"));
        args.extend(["--connections".to_owned(), connections.to_owned()]);
        args.push(format!("--jobs={jobs}"));
        args.push(s(&log));

        let run = sandbox.run(&args).expect_code(2);
        assert!(run.stderr.contains(expected), "{jobs}: {}", run.stderr);
    }
    // The environment is checked the same way.
    let mut args = base.clone();
    args.extend(device_args("SN-JOBS-ENV"));
    args.push(s(&log));
    let run = sandbox
        .run_with_env(&[("ULOGGER_JOBS", "0".to_owned())], &args)
        .expect_code(2);
    assert!(run.stderr.contains("--jobs"), "{}", run.stderr);
    // And the config file's `jobs`.
    let config = sandbox.write("jobs.toml", b"jobs = 500\n");
    let mut args = base;
    args.extend(device_args("SN-JOBS-FILE"));
    args.extend(["--config".to_owned(), s(&config), s(&log)]);
    let run = sandbox.run(&args).expect_code(2);
    assert!(run.stderr.contains("--jobs 500"), "{}", run.stderr);
}

#[test]
fn ctrl_c_with_uploads_in_flight_accounts_for_every_file() {
    let emu = unlimited_emulator();
    // The cloud stores every log but acknowledges none (registrations as
    // usual): the uploads stay in flight until the command is stopped.
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic("binlog/#".to_owned()));
    let sandbox = Sandbox::new();
    let good = numbered_logs(&sandbox, 40);
    let mut corrupt = numbered_log(99);
    corrupt[30] ^= 0xFF;
    let bad = [
        sandbox.write("bad-1.bin", &corrupt),
        sandbox.write("bad-2.bin", &corrupt),
    ];
    // The bad files first: they fail locally before the good ones start.
    let mut args = upload_args(&emu, "SN-JOBS-CTRLC", &["--jobs", "4", "--timeout", "60"]);
    args.extend(bad.iter().chain(&good).map(|f| s(f)));
    let mut command = sandbox.command(&[]);
    command
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    // Four uploads at once: the cloud has four logs none of which was
    // acknowledged.
    wait_for_stored_logs(&emu, 4);

    let started = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = Run::from(child.wait_with_output().unwrap()).expect_code(130);

    assert!(
        started.elapsed() < PATIENCE,
        "the stop waits for no acknowledgement: {:?}",
        started.elapsed()
    );
    // Only the bad files failed; nothing unacknowledged is called failed
    // or uploaded.
    let failed = failed_lines(&run.stderr);
    assert_eq!(failed.len(), 2, "{}", run.stdout);
    assert!(!run.stdout.contains(": uploaded "), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("0 uploaded, 2 failed, 40 not uploaded, 0 bytes in "),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(
            "interrupted: 40 of 42 files not uploaded (4 in flight, unacknowledged; 36 not started)"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    // The cloud got exactly the four that were in flight, once each.
    let held = copies(&emu);
    assert_eq!(held.len(), 4, "{held:?}");
    assert!(held.values().all(|&n| n == 1), "{held:?}");
    assert!(emu
        .records()
        .iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .all(|r| r.verdict == Verdict::Ok));
}

/// A path to something far larger than a message (a disk image, say) is
/// refused from its size: the command does not read a terabyte into
/// memory before finding out, and the other files still go.
#[test]
fn a_file_larger_than_a_message_is_refused_unread_and_the_rest_go() {
    let emu = unlimited_emulator();
    let sandbox = Sandbox::new();
    let mut files = numbered_logs(&sandbox, 3);
    let huge = sandbox.path("disk.img");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    files.insert(1, huge.clone());
    let mut args = upload_args(&emu, "SN-JOBS-HUGE", &["--jobs", "4"]);
    args.extend(files.iter().map(|f| s(f)));

    let run = sandbox.run(&args).expect_code(2);

    let failed = failed_lines(&run.stderr);
    assert_eq!(failed.len(), 1, "{}", run.stdout);
    assert!(
        failed[0].starts_with(&s(&huge))
            && failed[0].contains(&format!(
                "the file is {} bytes, more than one message may be (131072 bytes)",
                1u64 << 40
            )),
        "{failed:?}"
    );
    let expected: BTreeMap<usize, usize> = (0..3).map(|n| (n, 1)).collect();
    assert_eq!(copies(&emu), expected);

    // The same for a core dump, before connecting.
    let mut args = connect_args("core-dump", &emu);
    args.push(s(&huge));
    let run = sandbox.run(&args).expect_code(2);
    assert!(
        run.stderr
            .contains("more than one message may be (131072 bytes)"),
        "{}",
        run.stderr
    );
}

/// Runs the binary with `args` on a pseudo-terminal (util-linux
/// `script`), as a person at a terminal does: stdout and stderr are the
/// terminal. Returns the exit code and what the terminal showed.
fn on_a_terminal(sandbox: &Sandbox, args: &[String]) -> (Option<i32>, String) {
    let binary = sandbox.command(&[]);
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let line: Vec<String> = std::iter::once(binary.get_program().to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .map(|a| quote(&a))
        .collect();
    let mut script = std::process::Command::new("script");
    script
        .args([
            "--quiet",
            "--return",
            "--command",
            &line.join(" "),
            "/dev/null",
        ])
        .stdin(Stdio::null());
    for (key, value) in binary.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let output = script.output().expect("util-linux script runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn on_a_terminal_a_bar_stands_for_the_per_file_lines_unless_v() {
    let emu = unlimited_emulator();
    let sandbox = Sandbox::new();
    let files = numbered_logs(&sandbox, 5);
    let mut args = upload_args(&emu, "SN-BAR", &[]);
    args.extend(files.iter().map(|f| s(f)));

    let (code, shown) = on_a_terminal(&sandbox, &args);
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("uploaded 1"), "no per-file lines:\n{shown}");
    assert!(shown.contains("5 uploaded, 0 failed"), "{shown}");

    let mut verbose = vec!["-v".to_owned()];
    verbose.extend(args.clone());
    let (code, shown) = on_a_terminal(&sandbox, &verbose);
    assert_eq!(code, Some(0), "{shown}");
    for file in &files {
        assert!(shown.contains(&format!("{}: uploaded", s(file))), "{shown}");
    }

    // Piped (as every other test runs it), each file has its line.
    let run = sandbox.run(&args).expect_code(0);
    assert_eq!(
        run.stdout
            .lines()
            .filter(|l| l.contains(": uploaded "))
            .count(),
        5,
        "{}",
        run.stdout
    );
}
