//! What a person reads when something goes wrong: one line per error
//! (causes said once), a hint for the common mistakes, each caused for
//! real against an emulator in this process, and `--json` errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Instant;

use support::sandbox::*;
use ulogger_emulator::{BootReplyMode, RecordKind};

/// The run's `hint:` line.
fn hint(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("a hint:\n{}", run.stderr))
        .to_owned()
}

fn upload_args(args: Vec<String>, serial: &str, log: &std::path::Path) -> Vec<String> {
    let mut args = args;
    args.extend(device_args(serial));
    args.extend(strings(&["--no-store", "--timeout", "5"]));
    args.push(s(log));
    args
}

#[test]
fn plaintext_against_a_tls_port_suggests_tls() {
    let tls = tls_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--customer-id",
    ]);
    args.extend([
        CUSTOMER.to_string(),
        "--port".into(),
        tls.addr().port().to_string(),
    ]);

    let run = sandbox
        .run(&upload_args(args, "SN-P2T", &log))
        .expect_code(3);

    assert!(hint(&run).contains("--plaintext"), "{}", run.stderr);
    assert!(hint(&run).contains("TLS"), "{}", run.stderr);
}

#[test]
fn tls_against_a_plaintext_port_suggests_plaintext() {
    let plain = plaintext_emulator();
    let tls = tls_emulator(); // for its certificates
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let args = replace(
        connect_args("upload", &tls),
        "--port",
        plain.addr().port().to_string(),
    );

    let run = sandbox
        .run(&upload_args(args, "SN-T2P", &log))
        .expect_code(3);

    assert!(hint(&run).contains("--plaintext"), "{}", run.stderr);
}

#[test]
fn an_unknown_server_ca_suggests_ca() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let args = replace(
        connect_args("upload", &emu),
        "--ca",
        s(&other.certs().unwrap().ca_cert),
    );

    let run = sandbox
        .run(&upload_args(args, "SN-CA", &log))
        .expect_code(3);

    assert!(hint(&run).contains("--ca"), "{}", run.stderr);
}

#[test]
fn a_client_certificate_the_broker_rejects_says_so() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let theirs = other.certs().unwrap();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let args = replace(
        connect_args("upload", &emu),
        "--cert",
        s(&theirs.client_cert),
    );
    let args = replace(args, "--key", s(&theirs.client_key));

    let run = sandbox.run(&upload_args(args, "SN-CERT", &log));

    assert!(
        hint(&run).starts_with("the broker rejected this client certificate"),
        "{}",
        run.stderr
    );
}

#[test]
fn not_authorized_suggests_checking_the_customer_id() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let args = replace(connect_args("upload", &emu), "--customer-id", "999".into());

    let run = sandbox
        .run(&upload_args(args, "SN-AUTH", &log))
        .expect_code(4);

    assert!(run.stderr.contains("not authorized"), "{}", run.stderr);
    let hint = hint(&run);
    assert!(hint.contains("cust-{customer id}-"), "{hint}");
    assert!(hint.contains("--customer-id (now 999)"), "{hint}");
}

#[test]
fn a_boot_reply_timeout_names_the_topic_and_fails_the_other_files_at_once() {
    let emu = plaintext_emulator();
    emu.faults().set_boot_reply(BootReplyMode::None);
    let sandbox = Sandbox::new();
    let logs = numbered_logs(&sandbox, 3);
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-NOREPLY"));
    args.extend(strings(&["--no-store", "--token-timeout", "1"]));
    args.extend(logs.iter().map(|l| s(l)));

    let started = Instant::now();
    let run = sandbox.run(&args).expect_code(3);

    // One registration, one wait: the other files fail with its reason.
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert_eq!(
        emu.records()
            .iter()
            .filter(|r| r.kind == RecordKind::Boot)
            .count(),
        1
    );
    // Each failed file is one line on stderr.
    for log in &logs {
        let line = run
            .stderr
            .lines()
            .find(|l| l.starts_with(&s(log)))
            .unwrap_or_else(|| panic!("{}", run.stderr));
        assert!(line.contains("boot reply"), "{line}");
    }
    let hint = hint(&run);
    assert!(
        hint.contains(&format!("boot/v0/{CUSTOMER}/0/{APP}/SN-NOREPLY")),
        "{hint}"
    );
    assert!(hint.contains("--token-timeout"), "{hint}");
    assert!(
        run.stdout.contains("0 uploaded, 3 failed"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_corrupt_token_store_suggests_tokens_clear_wherever_it_is_hit() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let store = sandbox.write("tokens.json", b"not json");
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut upload = connect_args("upload", &emu);
    upload.extend(device_args("SN-CORRUPT"));
    upload.extend(["--store".to_owned(), s(&store), s(&log)]);
    let env = [("ULOGGER_STORE", s(&store))];

    for args in [
        upload,
        strings(&["tokens", "list"]),
        strings(&["tokens", "get", "SN"]),
    ] {
        let run = sandbox.run_with_env(&env, &args).expect_code(2);
        assert!(run.stderr.contains("corrupt"), "{args:?}: {}", run.stderr);
        assert!(hint(&run).contains("ulogger tokens clear"), "{args:?}");
    }
}

#[test]
fn an_error_is_one_line_with_each_cause_once_and_no_warning_repeating_it() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = strings(&["upload", "--broker", "127.0.0.1", "--customer-id", "1"]);
    args.extend(["--port".to_owned(), closed_port().to_string()]);
    args.extend(strings(&["--cert", "missing.pem", "--key", "missing.key"]));
    let args = upload_args(args, "SN-ONCE", &log);
    let mut command = sandbox.command(&[]);
    command.env_remove("ULOGGER_LOG").args(&args);

    let run = Run::from(command.output().unwrap()).expect_code(2);

    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("os error 2").count(),
        1,
        "{}",
        run.stderr
    );

    // A broker out of reach: the library's warning about the failed
    // attempt does not repeat the error, nor show its Debug form.
    let plain = strings(&[
        "upload",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--customer-id",
        "1",
    ]);
    let mut args = plain.clone();
    args.extend(["--port".to_owned(), closed_port().to_string()]);
    let args = upload_args(args, "SN-ONCE", &log);
    let mut command = sandbox.command(&[]);
    command.env_remove("ULOGGER_LOG").args(&args);
    let run = Run::from(command.output().unwrap()).expect_code(3);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains("WITHOUT TLS"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].starts_with("error: could not connect"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Some("), "{}", run.stderr);

    // --quiet: nothing but the report.
    let mut command = sandbox.command(&[]);
    command.env_remove("ULOGGER_LOG").arg("--quiet").args(&args);
    let run = Run::from(command.output().unwrap()).expect_code(3);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn json_errors_are_one_object_on_stderr() {
    let sandbox = Sandbox::new();
    let store = sandbox.write("tokens.json", b"[");

    let run = sandbox
        .run(&strings(&[
            "--json",
            "tokens",
            "list",
            "--store",
            &s(&store),
        ]))
        .expect_code(2);

    assert_eq!(run.stdout, "");
    let report: serde_json::Value =
        serde_json::from_str(run.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
    let error = &report["error"];
    assert_eq!(error["kind"], "bad_input", "{report}");
    assert_eq!(error["exit_code"], 2, "{report}");
    assert!(
        error["message"].as_str().unwrap().contains("corrupt"),
        "{report}"
    );
    assert!(
        error["hint"].as_str().unwrap().contains("tokens clear"),
        "{report}"
    );

    // Bad arguments too.
    let run = sandbox
        .run_with_env(
            &[("ULOGGER_PLAINTEXT", "maybe".to_owned())],
            &strings(&["--json", "config", "show"]),
        )
        .expect_code(2);
    let report: serde_json::Value =
        serde_json::from_str(run.stderr.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stderr));
    assert_eq!(report["error"]["kind"], "bad_input", "{report}");
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'maybe'"),
        "{report}"
    );
}

#[test]
fn a_multi_file_upload_ends_with_a_summary() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let logs = numbered_logs(&sandbox, 3);
    let missing = sandbox.path("missing.bin");
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-SUMMARY"));
    args.push("--no-store".to_owned());
    args.extend(logs.iter().map(|l| s(l)));
    args.push(s(&missing));

    let run = sandbox.run(&args).expect_code(2);

    let bytes: usize = (0..3).map(|n| numbered_log(n).len()).sum();
    let last = run.stdout.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("3 uploaded, 1 failed, {bytes} bytes in ")),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("1 of 4 files failed"), "{}", run.stderr);
}

#[test]
fn ctrl_c_stops_an_upload_with_the_summary() {
    let emu = plaintext_emulator();
    emu.faults().set_boot_reply(BootReplyMode::None);
    let sandbox = Sandbox::new();
    let logs = numbered_logs(&sandbox, 2);
    let mut args = connect_args("upload", &emu);
    args.extend(device_args("SN-CTRLC"));
    args.extend(strings(&["--no-store", "--token-timeout", "60"]));
    args.extend(logs.iter().map(|l| s(l)));
    let mut command = sandbox.command(&[]);
    command
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    // The upload is waiting for its boot reply once the cloud has the
    // registration.
    emu.wait_for_blocking(|r| r.kind == RecordKind::Boot, PATIENCE)
        .expect("a registration");

    let started = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = Run::from(child.wait_with_output().unwrap()).expect_code(130);

    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert!(
        run.stdout
            .contains("0 uploaded, 0 failed, 2 not uploaded, 0 bytes in "),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
}

#[test]
fn ctrl_c_stops_the_wait_for_a_broker_that_does_not_answer() {
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
    ]);
    args.extend([
        "--port".to_owned(),
        listener.local_addr().unwrap().port().to_string(),
    ]);
    args.extend(device_args("SN-CTRLC-CONNECT"));
    args.extend(strings(&["--no-store", "--timeout", "60", &s(&log)]));
    let mut command = sandbox.command(&[]);
    command
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command.spawn().unwrap();
    let _connection = listener.accept().unwrap();

    let started = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let run = Run::from(child.wait_with_output().unwrap()).expect_code(130);

    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    assert!(
        run.stderr
            .contains("interrupted: 1 of 1 files not uploaded"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_boot_reply_that_is_not_an_answer_is_said_when_the_wait_ends() {
    let emu = plaintext_emulator();
    emu.faults().set_boot_reply(BootReplyMode::Malformed);
    let sandbox = Sandbox::new();
    let log = sandbox.write("one.bin", &numbered_log(1));
    let mut args = upload_args(connect_args("upload", &emu), "SN-MALFORMED", &log);
    args.extend(strings(&["--token-timeout", "1"]));
    let run = sandbox.run(&args).expect_code(3);
    // PROTOCOL §3: not an answer, so the wait goes on; but the error says
    // what came instead of a token.
    assert!(
        run.output().contains("not an answer") && run.output().contains("JSON without a token"),
        "{}",
        run.output()
    );
}

#[test]
fn an_invalid_setting_is_named_by_its_flag_not_the_librarys_field() {
    let sandbox = Sandbox::new();
    let log = sandbox.write("log.bin", &v1_log(10));
    let mut args = strings(&["upload", "--customer-id", "1", "--port", "1"]);
    args.extend(device_args("SN-ZERO"));
    args.extend(strings(&["--no-store", "--timeout", "0", &s(&log)]));

    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        run.stderr,
        "error: invalid --timeout: must be longer than zero\n"
    );
}
