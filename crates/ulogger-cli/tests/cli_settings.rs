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

/// Every key a config file takes, with a value of its type, one a line.
const EVERY_KEY: &[(&str, &str)] = &[
    ("broker", "\"b.example\""),
    ("port", "1884"),
    ("cert", "\"c.pem\""),
    ("key", "\"k.pem\""),
    ("ca", "\"ca.pem\""),
    ("customer_id", "42"),
    ("group_id", "3"),
    ("legacy_topics", "false"),
    ("prefix", "\"p/\""),
    ("plaintext", "true"),
    ("no_pacing", "true"),
    ("connections", "2"),
    ("token_timeout", "\"20s\""),
    ("timeout", "9"),
    ("store", "\"t.json\""),
    ("device_info", "\"d.bin\""),
    ("app_id", "7"),
    ("serial", "\"SN-EVERY\""),
    ("device_type", "\"board\""),
    ("git_version", "\"v1\""),
    ("git_hash", "\"abc1234\""),
    ("stamp_time", "true"),
    ("outbox", "\"out\""),
    ("jobs", "5"),
    ("api_token", "\"ulg_do_not_show_this_token\""),
    ("api_url", "\"https://api.example\""),
    ("inbox", "\"in\""),
    ("rejected", "\"rej\""),
    ("scan_interval", "\"2s\""),
    ("rescan_interval", "\"5m\""),
    ("poll", "true"),
    ("summary_interval", "\"1m\""),
    ("ack_sync_interval", "200"),
    ("metrics_listen", "\"127.0.0.1:9464\""),
    ("ble", "true"),
    ("ble_names", "[\"a\", \"b\"]"),
    ("ble_addresses", "[\"AA:BB:CC:DD:EE:FF\"]"),
    ("ble_max_connections", "2"),
    ("ble_min_interval", "\"2m\""),
    ("adapter", "\"hci1\""),
];

#[test]
fn every_config_file_key_is_shown_from_the_file_with_its_line_and_type() {
    let sandbox = Sandbox::new();
    let text: String = EVERY_KEY
        .iter()
        .map(|(key, value)| format!("{key} = {value}\n"))
        .collect();
    let config = sandbox.write("config.toml", text.as_bytes());

    let run = sandbox
        .run(&strings(&[
            "--json",
            "config",
            "show",
            "--config",
            &s(&config),
        ]))
        .expect_code(0);

    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let shown = shown.as_object().unwrap();
    // Exactly the file's keys, and the config file itself.
    let mut keys: Vec<&str> = shown.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = EVERY_KEY.iter().map(|(key, _)| *key).collect();
    expected.push("config");
    keys.sort_unstable();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for (n, (key, _)) in EVERY_KEY.iter().enumerate() {
        let row = &shown[*key];
        assert_eq!(row["source"], "file", "{key}: {row}");
        assert_eq!(row["file"], s(&config), "{key}: {row}");
        assert_eq!(row["line"], n + 1, "{key}: {row}");
    }
    use serde_json::json;
    let value = |key: &str| shown[key]["value"].clone();
    // Typed: numbers, durations in the unit the flag names, booleans,
    // lists; the secret only as set.
    assert_eq!(value("port"), json!(1884));
    assert_eq!(value("token_timeout"), json!(20));
    assert_eq!(value("scan_interval"), json!(2000));
    assert_eq!(value("rescan_interval"), json!(300));
    assert_eq!(value("poll"), json!(true));
    assert_eq!(value("summary_interval"), json!(60));
    assert_eq!(value("ble_min_interval"), json!(120));
    assert_eq!(value("ble_max_connections"), json!(2));
    assert_eq!(value("plaintext"), json!(true));
    assert_eq!(value("legacy_topics"), json!(false));
    assert_eq!(value("ble"), json!(true));
    assert_eq!(value("ble_names"), json!(["a", "b"]));
    assert_eq!(value("ble_addresses"), json!(["AA:BB:CC:DD:EE:FF"]));
    assert_eq!(value("metrics_listen"), json!("127.0.0.1:9464"));
    assert_eq!(value("cert"), json!("c.pem"));
    assert_eq!(value("api_token"), json!("(set, not shown)"));
    assert!(!run.stdout.contains("ulg_do_not_show_this_token"));

    // The text says the line, and ends with the source.
    let run = sandbox
        .run(&strings(&["config", "show", "--config", &s(&config)]))
        .expect_code(0);
    assert!(!run.stdout.contains("ulg_do_not_show_this_token"));
    let line = |key: &str| {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{}", run.stdout))
            .to_owned()
    };
    assert!(
        line("scan_interval").ends_with("  2000ms  line 29 (file)"),
        "{}",
        line("scan_interval")
    );
    assert!(
        line("ble_names").contains(r#"["a","b"]"#),
        "{}",
        line("ble_names")
    );
}

#[test]
fn config_show_names_each_source_flag_variable_file_line_and_default() {
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "config.toml",
        b"# the gateway's settings\ncustomer_id = 42\n\nble_max_connections = 2\ntimeout = 3\n",
    );

    let run = sandbox
        .run_with_env(
            &[
                ("ULOGGER_TIMEOUT", "7".to_owned()),
                ("ULOGGER_CONFIG", s(&config)),
            ],
            &strings(&["--json", "config", "show", "--summary-interval", "2m"]),
        )
        .expect_code(0);

    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    use serde_json::json;
    assert_eq!(
        shown["summary_interval"],
        json!({"value": 120, "source": "flag", "flag": "--summary-interval"})
    );
    // The variable outranks the file's `timeout = 3`.
    assert_eq!(
        shown["timeout"],
        json!({"value": 7, "source": "environment", "variable": "ULOGGER_TIMEOUT"})
    );
    assert_eq!(
        shown["customer_id"],
        json!({"value": 42, "source": "file", "file": s(&config), "line": 2})
    );
    assert_eq!(
        shown["ble_max_connections"],
        json!({"value": 2, "source": "file", "file": s(&config), "line": 4})
    );
    assert_eq!(
        shown["config"],
        json!({"value": s(&config), "source": "environment", "variable": "ULOGGER_CONFIG"})
    );
    // Defaults: values typed, or a note when said in words.
    assert_eq!(
        shown["adapter"],
        json!({"value": "hci0", "source": "default"})
    );
    assert_eq!(shown["ble"], json!({"value": false, "source": "default"}));
    assert_eq!(
        shown["ble_names"],
        json!({"value": [], "source": "default"})
    );
    assert_eq!(
        shown["scan_interval"],
        json!({"value": 500, "source": "default"})
    );
    assert_eq!(
        shown["rejected"],
        json!({"value": null, "source": "default", "note": "a rejected folder beside the inbox"})
    );
    assert_eq!(shown["serial"], json!({"value": null, "source": "default"}));

    let run = sandbox
        .run_with_env(
            &[("ULOGGER_TIMEOUT", "7".to_owned())],
            &strings(&[
                "config",
                "show",
                "--config",
                &s(&config),
                "--broker",
                "b.example",
            ]),
        )
        .expect_code(0);
    let line = |key: &str| {
        run.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{}", run.stdout))
            .to_owned()
    };
    assert!(
        line("broker").ends_with("  b.example  --broker (flag)"),
        "{}",
        line("broker")
    );
    assert!(
        line("timeout").ends_with("  7s  ULOGGER_TIMEOUT (environment)"),
        "{}",
        line("timeout")
    );
    assert!(
        line("customer_id").ends_with("  42  line 2 (file)"),
        "{}",
        line("customer_id")
    );
    assert!(
        line("adapter").ends_with("  hci0  (default)"),
        "{}",
        line("adapter")
    );
}
