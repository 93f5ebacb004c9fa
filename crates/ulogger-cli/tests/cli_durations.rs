//! Durations take units (`500ms`, `2s`, `10m`) in flags, environment
//! variables and the config file; a bare number keeps the unit its flag
//! names; anything else is refused with the flag named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;

#[test]
fn flags_variables_and_the_config_file_take_units() {
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "config.toml",
        b"summary_interval = \"2m\"\nack_sync_interval = 250\ntoken_timeout = \"1m\"\n",
    );
    let run = sandbox
        .run_with_env(
            &[("ULOGGER_TIMEOUT", "2m".to_owned())],
            &strings(&[
                "--json",
                "config",
                "show",
                "--config",
                &s(&config),
                "--scan-interval",
                "2s",
            ]),
        )
        .expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let value = |key: &str| shown[key]["value"].clone();
    // Each in the unit its flag names: milliseconds or seconds.
    assert_eq!(value("scan_interval"), 2000, "{shown}");
    assert_eq!(value("summary_interval"), 120, "{shown}");
    assert_eq!(value("ack_sync_interval"), 250, "{shown}");
    assert_eq!(value("token_timeout"), 60, "{shown}");
    assert_eq!(value("timeout"), 120, "{shown}");
}

#[test]
fn a_duration_with_units_runs_the_agent() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    std::fs::create_dir_all(sandbox.path("inbox")).unwrap();
    let mut args = vec!["--json".to_owned()];
    args.extend(connect_args("agent", &emu));
    args.extend(strings(&[
        "--no-store",
        "--scan-interval",
        "20ms",
        "--summary-interval",
        "1s",
        "--inbox",
        &s(&sandbox.path("inbox")),
        "--outbox",
        &s(&sandbox.path("outbox")),
    ]));
    let mut command = sandbox.command(&[]);
    command.args(&args).stdout(std::process::Stdio::piped());
    let mut running = support::Running::spawn(command);
    // A summary a second: two arrive.
    for _ in 0..2 {
        while running.json_line()["event"] != "summary" {}
    }
    assert!(running.terminate().success());
}

#[test]
fn what_is_not_a_duration_is_refused_with_the_flag_and_the_forms() {
    let sandbox = Sandbox::new();
    let run = sandbox
        .run(&strings(&["config", "show", "--timeout", "5x"]))
        .expect_code(2);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
    assert!(
        run.stderr.contains("'5x' is not a duration"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("500ms, 2s, 10m"), "{}", run.stderr);

    let run = sandbox
        .run(&strings(&["config", "show", "--timeout", "1500ms"]))
        .expect_code(2);
    assert!(
        run.stderr.contains("not a whole number of seconds"),
        "{}",
        run.stderr
    );

    let config = sandbox.write("config.toml", b"timeout = \"soon\"\n");
    let run = sandbox
        .run(&strings(&["config", "show", "--config", &s(&config)]))
        .expect_code(2);
    assert!(
        run.stderr.contains("'soon' is not a duration"),
        "{}",
        run.stderr
    );
}

#[test]
fn logs_flush_interval_takes_units_and_fractions_within_an_hour() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let run_with = |interval: &str| {
        let mut args = connect_args("logs", &emu);
        args.extend(device_args("SN-FLUSH"));
        args.extend(strings(&["--flush-interval", interval]));
        // No input: nothing to send, the command ends at once.
        Run::from(
            sandbox
                .command(&[])
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap(),
        )
    };

    run_with("500ms").expect_code(0);
    run_with("0.25").expect_code(0);
    for (interval, said) in [
        ("2h", "'2h' is too long: at most 1h"),
        // Made Duration::from_secs_f64 panic before.
        ("1e300", "'1e300' is too long a duration"),
        ("0", "it must be more than zero"),
        ("soon", "'soon' is not a duration"),
    ] {
        let run = run_with(interval).expect_code(2);
        assert!(
            run.stderr.contains(&format!(
                "invalid value '{interval}' for '--flush-interval <SECS>': {said}"
            )),
            "{interval}: {}",
            run.stderr
        );
    }
}
