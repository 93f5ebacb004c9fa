//! What a person reads when something goes wrong: one line per error
//! (causes said once), a hint for the common mistakes, each caused for
//! real against an emulator in this process, and `--json` errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;

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
}
