//! One source of truth for settings: every command that touches the
//! token store finds the same file; the config file takes every setting a
//! flag sets; `config show` says where each came from.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;

/// A config file reaching `emu`, with `extra` lines.
fn config_for(
    sandbox: &Sandbox,
    emu: &ulogger_emulator::Emulator,
    extra: &str,
) -> std::path::PathBuf {
    let text = format!(
        "customer_id = {CUSTOMER}\nbroker = \"127.0.0.1\"\nport = {}\nplaintext = true\n{extra}",
        emu.addr().port()
    );
    sandbox.write("config.toml", text.as_bytes())
}

const DEVICE_KEYS: &str =
    "app_id = 7\nserial = \"SN-FROM-FILE\"\ndevice_type = \"board\"\ngit_version = \"v1\"\ngit_hash = \"abc1234\"\n";

#[test]
fn tokens_and_upload_use_the_same_store_from_environment_or_config_file() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let from_env = sandbox.path("env-tokens.json");
    let mut register = connect_args("register", &emu);
    register.extend(device_args("SN-ENV-STORE"));
    let env = [("ULOGGER_STORE", s(&from_env))];

    sandbox.run_with_env(&env, &register).expect_code(0);
    let listed = sandbox
        .run_with_env(&env, &strings(&["tokens", "list"]))
        .expect_code(0);
    assert!(listed.stdout.contains("SN-ENV-STORE"), "{}", listed.stdout);

    // The config file's `store`, for `tokens` as for `register`.
    let from_file = sandbox.path("file-tokens.json");
    let config = config_for(&sandbox, &emu, &format!("store = {:?}\n", s(&from_file)));
    let mut register = strings(&["register", "--config", &s(&config)]);
    register.extend(device_args("SN-FILE-STORE"));
    sandbox.run(&register).expect_code(0);
    let listed = sandbox
        .run(&strings(&["tokens", "list", "--config", &s(&config)]))
        .expect_code(0);
    assert!(listed.stdout.contains("SN-FILE-STORE"), "{}", listed.stdout);
    assert!(!listed.stdout.contains("SN-ENV-STORE"), "{}", listed.stdout);
    let got = sandbox
        .run_with_env(
            &[("ULOGGER_CONFIG", s(&config))],
            &strings(&["tokens", "get", "SN-FILE-STORE"]),
        )
        .expect_code(0);
    assert!(got.stdout.contains("SN-FILE-STORE"), "{}", got.stdout);
}

#[test]
fn the_device_identity_comes_from_the_config_file() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let config = config_for(&sandbox, &emu, DEVICE_KEYS);

    let run = sandbox
        .run(&strings(&[
            "register",
            "--no-store",
            "--config",
            &s(&config),
        ]))
        .expect_code(0);

    assert!(
        run.stdout.starts_with("SN-FROM-FILE: token "),
        "{}",
        run.stdout
    );
    let issued = emu.issued_tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!((issued[0].0, issued[0].1.as_str()), (7, "SN-FROM-FILE"));
}

#[test]
fn an_unknown_key_is_named_before_anything_else_is_checked() {
    let sandbox = Sandbox::new();
    let config = sandbox.write("config.toml", b"app_idd = 7\n");

    // No device, no customer id: the file is still the first complaint.
    let run = sandbox
        .run(&strings(&["register", "--config", &s(&config)]))
        .expect_code(2);

    assert_eq!(
        run.stderr,
        format!(
            "error: unknown key `app_idd` in the config file {}, line 1: did you mean `app_id`?\n",
            s(&config)
        )
    );
    sandbox
        .run(&strings(&["tokens", "list", "--config", &s(&config)]))
        .expect_code(2);
}

#[test]
fn a_key_like_no_setting_gets_the_rule_for_keys_instead_of_a_guess() {
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "config.toml",
        b"customer_id = 42\n\n[mqtt]\nbroker = \"x\"\n",
    );

    let run = sandbox
        .run(&strings(&[
            "--json",
            "upload",
            "--config",
            &s(&config),
            "x.bin",
        ]))
        .expect_code(2);

    let report: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(
        report["error"]["message"],
        format!(
            "unknown key `mqtt` in the config file {}, line 3",
            s(&config)
        )
    );
    assert_eq!(
        report["error"]["hint"],
        "a key is a flag's name with _ for - (customer_id, token_timeout); `ulogger config show` lists every setting"
    );
}

#[test]
fn a_wrong_value_in_the_config_file_is_said_in_words_with_its_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.write("config.toml", b"customer_id = 42\nport = 70000\n");

    let run = sandbox
        .run(&strings(&["config", "show", "--config", &s(&config)]))
        .expect_code(2);

    assert_eq!(
        run.stderr,
        format!(
            "error: invalid config file {}, line 2: invalid value: integer `70000`, expected a whole number from 0 to 65535\n",
            s(&config)
        )
    );
}

#[test]
fn a_misspelt_variable_gets_a_warning_naming_the_one_meant() {
    let sandbox = Sandbox::new();
    let env = [
        ("ULOGGER_CUSTOMERID", "42".to_owned()),
        // Not a slip of any setting's name: somebody else's, left alone.
        ("ULOGGER_WRAPPER_STATE", "x".to_owned()),
    ];

    let run = sandbox
        .run_with_env(&env, &strings(&["config", "show"]))
        .expect_code(0);

    assert_eq!(
        run.stderr,
        "warning: ULOGGER_CUSTOMERID is set but ulogger reads no such variable; did you mean ULOGGER_CUSTOMER_ID?\n"
    );
    // The setting it was meant for is indeed unset: that is why it matters.
    assert!(run.stdout.contains("customer_id"), "{}", run.stdout);

    let quiet = sandbox
        .run_with_env(&env, &strings(&["-q", "config", "show"]))
        .expect_code(0);
    assert_eq!(quiet.stderr, "");
}

#[test]
fn a_missing_explicit_config_file_is_reported_as_such() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path("nowhere.toml");

    for run in [
        sandbox.run(&strings(&["register", "--config", &s(&missing)])),
        sandbox.run_with_env(&[("ULOGGER_CONFIG", s(&missing))], &strings(&["register"])),
        sandbox.run(&strings(&["tokens", "list", "--config", &s(&missing)])),
    ] {
        let run = run.expect_code(2);
        assert!(
            run.stderr
                .contains(&format!("the config file {} does not exist", s(&missing))),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn config_show_says_where_each_setting_came_from() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let config = config_for(&sandbox, &emu, "serial = \"SN-SHOWN\"\n");

    let run = sandbox
        .run_with_env(
            &[
                ("ULOGGER_PORT", "1234".to_owned()),
                ("ULOGGER_PLAINTEXT", "off".to_owned()),
            ],
            &strings(&[
                "--json",
                "config",
                "show",
                "--config",
                &s(&config),
                "--broker",
                "example.org",
            ]),
        )
        .expect_code(0);

    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let entry = |key: &str| (shown[key]["value"].clone(), shown[key]["source"].clone());
    use serde_json::json;
    assert_eq!(
        entry("config"),
        (json!(s(&config)), json!("flag")),
        "{shown}"
    );
    assert_eq!(entry("broker"), (json!("example.org"), json!("flag")));
    // Values typed as in the config file: numbers, booleans, strings.
    assert_eq!(entry("port"), (json!(1234), json!("environment")));
    // An environment "off" beats the file's `plaintext = true`.
    assert_eq!(entry("plaintext"), (json!(false), json!("environment")));
    assert_eq!(entry("customer_id"), (json!(CUSTOMER), json!("file")));
    assert_eq!(entry("serial"), (json!("SN-SHOWN"), json!("file")));
    assert_eq!(entry("token_timeout"), (json!(15), json!("default")));
    assert_eq!(entry("app_id"), (json!(null), json!("default")));
    // A default said in words is a note, not a value of another type.
    assert_eq!(entry("jobs"), (json!(null), json!("default")));
    assert_eq!(shown["jobs"]["note"], "100 per connection", "{shown}");
    assert_eq!(entry("ca"), (json!(null), json!("default")));

    let run = sandbox
        .run(&strings(&["config", "show", "--config", &s(&config)]))
        .expect_code(0);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("serial"))
        .unwrap();
    assert!(
        line.contains("SN-SHOWN") && line.ends_with("(file)"),
        "{line}"
    );
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let mut args = connect_args("register", &emu);
    args.retain(|a| a != "--plaintext");
    args.push("--no-store".to_owned());

    for (n, yes) in ["1", "true", "YES", "On"].into_iter().enumerate() {
        let mut args = args.clone();
        args.extend(device_args(&format!("SN-BOOL-{n}")));
        sandbox
            .run_with_env(&[("ULOGGER_PLAINTEXT", yes.to_owned())], &args)
            .expect_code(0);
    }
    let mut with_device = args.clone();
    with_device.extend(device_args("SN-BOOL-BAD"));
    let run = sandbox
        .run_with_env(&[("ULOGGER_PLAINTEXT", "maybe".to_owned())], &with_device)
        .expect_code(2);
    assert!(run.stderr.contains("'maybe'"), "{}", run.stderr);
    assert!(run.stderr.contains("yes"), "{}", run.stderr);
    assert_eq!(emu.issued_tokens().len(), 4);
}

#[test]
fn the_outbox_and_stamp_time_come_from_the_config_file_too() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let outbox = sandbox.path("outbox");
    let config = config_for(
        &sandbox,
        &emu,
        &format!(
            "{DEVICE_KEYS}no_pacing = true\nstamp_time = true\noutbox = {:?}\n",
            s(&outbox)
        ),
    );
    let log = sandbox.write("log.bin", &v4_log(20));

    let run = sandbox
        .run(&strings(&[
            "upload",
            "--no-store",
            "--config",
            &s(&config),
            &s(&log),
        ]))
        .expect_code(0);
    assert!(
        run.stdout.contains(&format!("in {}", s(&outbox))),
        "{}",
        run.stdout
    );

    let status = sandbox
        .run(&strings(&["outbox", "status", "--config", &s(&config)]))
        .expect_code(0);
    assert!(status.stdout.contains(&s(&outbox)), "{}", status.stdout);
    let shown = sandbox
        .run(&strings(&[
            "--json",
            "config",
            "show",
            "--config",
            &s(&config),
        ]))
        .expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["stamp_time"]["value"], true, "{shown}");
    assert_eq!(shown["outbox"]["source"], "file", "{shown}");
}

#[test]
fn no_store_with_a_store_on_the_command_line_is_refused_but_not_with_the_variable() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let store = sandbox.path("tokens.json");
    let mut register = connect_args("register", &emu);
    register.extend(device_args("SN-NO-STORE"));
    register.push("--no-store".to_owned());

    let mut both = register.clone();
    both.extend(["--store".to_owned(), s(&store)]);
    let run = sandbox.run(&both).expect_code(2);
    assert_eq!(
        run.stderr,
        format!(
            "error: --no-store keeps tokens in memory only, and --store {} names a file for them: give one of the two\n",
            s(&store)
        )
    );
    assert!(emu.issued_tokens().is_empty(), "refused before connecting");

    // ULOGGER_STORE is a default, which the flag overrides.
    sandbox
        .run_with_env(&[("ULOGGER_STORE", s(&store))], &register)
        .expect_code(0);
    assert!(!store.exists(), "--no-store wrote no file");
}
