//! `ulogger check`: the path to the cloud walked a link at a time,
//! against emulators in this process over real sockets, with each link
//! broken in turn; the lines quoted are the ones a person reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::sandbox::*;
use ulogger_cloud::{Outbox, OutboxConfig};

/// The line of `step` in human output (`ok|FAIL|skip step: detail`).
fn line<'a>(run: &'a Run, step: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{step}:")))
        })
        .unwrap_or_else(|| panic!("a line for {step}:\n{}", run.stdout))
}

/// The hint printed under `step`'s line.
fn hint_of<'a>(run: &'a Run, step: &str) -> &'a str {
    let wanted = line(run, step);
    let mut lines = run.stdout.lines().skip_while(|l| *l != wanted).skip(1);
    lines
        .next()
        .and_then(|l| l.trim_start().strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("a hint under {step}:\n{}", run.stdout))
}

fn status_of(run: &Run, step: &str) -> String {
    line(run, step)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn all_links_pass_against_the_emulator_with_mutual_tls() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let outbox = sandbox.path("outbox");
    let mut args = connect_args("check", &emu);
    args.extend(strings(&["--serial", "SN-CHECK", "--app-id"]));
    args.push(APP.to_string());
    args.extend(["--outbox".to_owned(), s(&outbox)]);
    args.extend(["--api-url".to_owned(), emu.http_url()]);
    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", emu.api_token().to_owned())], &args)
        .expect_code(0);

    for step in [
        "settings",
        "certificate",
        "resolve",
        "tcp",
        "tls",
        "mqtt",
        "register",
        "api",
        "outbox",
    ] {
        assert_eq!(status_of(&run, step), "ok", "{step}:\n{}", run.stdout);
    }
    assert!(line(&run, "settings").contains("broker=127.0.0.1 (flag)"));
    assert!(line(&run, "settings").contains("api_token=(set, not shown) (environment)"));
    assert!(
        line(&run, "certificate").contains("match, valid until 4096-01-01 00:00:00 UTC"),
        "{}",
        run.stdout
    );
    assert!(line(&run, "tls").contains("TLS 1.3 with 127.0.0.1"));
    assert!(line(&run, "mqtt").contains(&format!(
        "CONNECT accepted as client id cust-{CUSTOMER}-check-"
    )));
    assert!(line(&run, "register").contains("serial SN-CHECK (app 7) got session token"));
    assert!(
        line(&run, "api").contains("the token is accepted (200 OK)"),
        "{}",
        run.stdout
    );
    assert!(line(&run, "outbox").contains("does not exist yet; it can be made in"));
    assert!(
        run.stdout.ends_with("9 ok, 0 failed, 0 skipped\n"),
        "{}",
        run.stdout
    );
    let serials: Vec<String> = emu.issued_tokens().into_iter().map(|(_, s, _)| s).collect();
    assert_eq!(serials, ["SN-CHECK"]);
}

#[test]
fn plaintext_skips_tls_and_the_optional_steps() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let run = sandbox.run(&connect_args("doctor", &emu)).expect_code(0);

    assert_eq!(line(&run, "tls"), "skip tls: plaintext: no TLS");
    assert_eq!(status_of(&run, "mqtt"), "ok");
    assert!(line(&run, "register").starts_with("skip register: no --serial"));
    assert!(line(&run, "api").starts_with("skip api: no API token"));
    assert!(line(&run, "outbox").starts_with("skip outbox: no outbox"));
}

#[test]
fn a_closed_port_fails_tcp_and_skips_what_needs_it() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = replace(
        connect_args("check", &emu),
        "--port",
        closed_port().to_string(),
    );
    let run = sandbox.run(&args).expect_code(3);

    assert!(
        line(&run, "tcp").starts_with("FAIL tcp: cannot connect to 127.0.0.1:"),
        "{}",
        run.stdout
    );
    assert!(hint_of(&run, "tcp").starts_with("nothing listens on port"));
    assert_eq!(line(&run, "tls"), "skip tls: needs tcp");
    assert_eq!(line(&run, "mqtt"), "skip mqtt: needs tcp");
    assert_eq!(line(&run, "register"), "skip register: needs mqtt");
    // The local steps still ran.
    assert_eq!(status_of(&run, "certificate"), "ok");
    assert!(
        run.stderr
            .contains("error: 1 of 9 checks failed, the first: tcp"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_host_that_does_not_resolve_fails_resolve() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = replace(
        connect_args("check", &emu),
        "--broker",
        "broker.nowhere.invalid".into(),
    );
    let run = sandbox.run(&args).expect_code(3);

    assert!(
        line(&run, "resolve").starts_with("FAIL resolve: cannot resolve broker.nowhere.invalid"),
        "{}",
        run.stdout
    );
    assert!(hint_of(&run, "resolve").starts_with("check --broker (now broker.nowhere.invalid)"));
    assert_eq!(line(&run, "tcp"), "skip tcp: needs resolve");
}

#[test]
fn a_broker_no_trusted_ca_signed_fails_tls_on_this_side() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    // No --ca: the public roots, which did not sign the emulator's CA.
    let mut args = connect_args("check", &emu);
    let at = args.iter().position(|a| a == "--ca").unwrap();
    args.drain(at..at + 2);
    let run = sandbox.run(&args).expect_code(3);

    assert_eq!(
        line(&run, "tls"),
        "FAIL tls: this gateway refused the certificate of 127.0.0.1: invalid peer certificate: UnknownIssuer"
    );
    assert_eq!(
        hint_of(&run, "tls"),
        "the broker's certificate is not signed by a CA this gateway trusts: pass the CA that signed it with --ca FILE (for the emulator, its ca.pem)"
    );
    assert_eq!(line(&run, "mqtt"), "skip mqtt: needs tls");
}

#[test]
fn a_ca_that_did_not_sign_the_broker_fails_tls_on_this_side() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let sandbox = Sandbox::new();
    let args = replace(
        connect_args("check", &emu),
        "--ca",
        s(&other.certs().unwrap().ca_cert),
    );
    let run = sandbox.run(&args).expect_code(3);

    // Both emulators' CAs have the same name: the signature gives it away.
    assert_eq!(
        line(&run, "tls"),
        "FAIL tls: this gateway refused the certificate of 127.0.0.1: invalid peer certificate: BadSignature"
    );
    assert!(hint_of(&run, "tls").contains("--ca"));
}

#[test]
fn a_client_certificate_the_broker_does_not_know_fails_tls_on_its_side() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let theirs = other.certs().unwrap();
    let sandbox = Sandbox::new();
    let args = replace(
        connect_args("check", &emu),
        "--cert",
        s(&theirs.client_cert),
    );
    let args = replace(args, "--key", s(&theirs.client_key));
    let run = sandbox.run(&args).expect_code(4);

    assert_eq!(status_of(&run, "certificate"), "ok");
    assert!(
        line(&run, "tls")
            .starts_with("FAIL tls: the broker refused the handshake: received fatal alert"),
        "{}",
        run.stdout
    );
    assert!(hint_of(&run, "tls").starts_with("the broker rejected this client certificate"));
}

#[test]
fn a_key_of_another_pair_fails_the_certificate_step() {
    let emu = tls_emulator();
    let other = tls_emulator();
    let sandbox = Sandbox::new();
    let mine = emu.certs().unwrap();
    let args = replace(
        connect_args("check", &emu),
        "--key",
        s(&other.certs().unwrap().client_key),
    );
    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        line(&run, "certificate"),
        format!(
            "FAIL certificate: private key {} does not match client certificate {}",
            other.certs().unwrap().client_key.display(),
            mine.client_cert.display()
        )
    );
    assert_eq!(line(&run, "resolve"), "skip resolve: needs certificate");
}

#[test]
fn a_wrong_customer_id_is_refused_at_connect_naming_it() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = replace(connect_args("check", &emu), "--customer-id", "9999".into());
    let run = sandbox.run(&args).expect_code(4);

    assert_eq!(status_of(&run, "tls"), "ok");
    assert!(
        line(&run, "mqtt").starts_with(
            "FAIL mqtt: the broker refused the connection: not authorized (client id cust-9999-check-"
        ),
        "{}",
        run.stdout
    );
    assert!(line(&run, "mqtt").ends_with("customer id 9999)"));
    assert!(hint_of(&run, "mqtt").contains("check --customer-id (now 9999)"));
}

#[test]
fn an_outbox_under_a_file_cannot_be_made() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let file = sandbox.write("not-a-dir", b"x");
    let mut args = connect_args("check", &emu);
    args.extend(["--outbox".to_owned(), s(&file.join("outbox"))]);
    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        line(&run, "outbox"),
        format!(
            "FAIL outbox: {} cannot be made: {} is not a directory",
            file.join("outbox").display(),
            file.display()
        )
    );
    // The network chain passed regardless.
    assert_eq!(status_of(&run, "mqtt"), "ok");
}

#[test]
fn an_outbox_in_use_names_its_owner() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let dir = sandbox.path("outbox");
    let held = Outbox::open(OutboxConfig::new(&dir)).unwrap();
    let mut args = connect_args("check", &emu);
    args.extend(["--outbox".to_owned(), s(&dir)]);
    let run = sandbox.run(&args).expect_code(0);

    let expected = format!(
        "ok   outbox: {} is writable, in use by process {} (an agent or upload delivering from it); 0 queued, 0 dead, ",
        dir.display(),
        std::process::id()
    );
    assert!(
        line(&run, "outbox").starts_with(&expected),
        "{}",
        run.stdout
    );
    assert!(line(&run, "outbox").ends_with(" MiB free"));
    drop(held);
}

#[test]
fn json_is_one_object_per_step_then_a_summary() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut args = replace(connect_args("check", &emu), "--customer-id", "9999".into());
    args.push("--json".into());
    let run = sandbox.run(&args).expect_code(4);

    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<(&str, &str)> = lines
        .iter()
        .filter_map(|l| Some((l["step"].as_str()?, l["status"].as_str()?)))
        .collect();
    assert_eq!(
        steps,
        [
            ("settings", "ok"),
            ("certificate", "ok"),
            ("resolve", "ok"),
            ("tcp", "ok"),
            ("tls", "ok"),
            ("mqtt", "fail"),
            ("register", "skip"),
            ("api", "skip"),
            ("outbox", "skip"),
        ]
    );
    let mqtt = &lines[5];
    assert!(mqtt["hint"].as_str().unwrap().contains("(now 9999)"));
    let settings = lines[0]["settings"].as_array().unwrap();
    let customer = settings.iter().find(|r| r["key"] == "customer_id").unwrap();
    assert_eq!(customer["value"], 9999);
    assert_eq!(customer["source"], "flag");
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["failed"], 1);
    assert_eq!(summary["first_failure"], "mqtt");
    let error: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["error"]["kind"], "refused");
}

#[test]
fn settings_say_where_each_came_from() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "config.toml",
        format!(
            "broker = \"127.0.0.1\"\nport = {}\nplaintext = true\n",
            emu.addr().port()
        )
        .as_bytes(),
    );
    let args = strings(&["check", "--config", &s(&config)]);
    let run = sandbox
        .run_with_env(&[("ULOGGER_CUSTOMER_ID", CUSTOMER.to_string())], &args)
        .expect_code(0);

    let settings = line(&run, "settings");
    assert!(
        settings.contains(&format!("config={} (flag)", config.display())),
        "{settings}"
    );
    assert!(
        settings.contains("broker=127.0.0.1 (config file)"),
        "{settings}"
    );
    assert!(
        settings.contains(&format!("customer_id={CUSTOMER} (environment)")),
        "{settings}"
    );
    assert!(settings.contains("group_id=0 (default)"), "{settings}");
}

#[test]
fn missing_settings_fail_first_and_skip_the_chain() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&strings(&["check"])).expect_code(2);

    assert!(
        line(&run, "settings").starts_with("FAIL settings: no customer id: pass --customer-id"),
        "{}",
        run.stdout
    );
    assert_eq!(
        line(&run, "certificate"),
        "skip certificate: needs settings"
    );
    assert_eq!(line(&run, "resolve"), "skip resolve: needs settings");
}

#[test]
fn a_setting_out_of_range_fails_the_settings_step() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let args = replace(connect_args("check", &emu), "--port", "0".into());
    let run = sandbox.run(&args).expect_code(2);

    assert_eq!(
        line(&run, "settings").split_once(": ").unwrap().1,
        "invalid --port: must not be 0"
    );
    assert_eq!(
        line(&run, "certificate"),
        "skip certificate: needs settings"
    );
}

#[cfg(all(feature = "ble", target_os = "linux"))]
mod bluez {
    use super::*;
    use ulogger_ble_sim::{FakeBluez, PrivateBus};

    /// `check --ble` against a plaintext emulator on the bus at `bus`.
    async fn check_ble(emu: &ulogger_emulator::Emulator, bus: &str, adapter: &str) -> Run {
        let sandbox = Sandbox::new();
        let mut args = connect_args("check", emu);
        args.extend(strings(&["--ble", "--adapter", adapter]));
        let mut command = sandbox.command(&[("DBUS_SYSTEM_BUS_ADDRESS", bus.to_owned())]);
        command.args(&args);
        // The fake BlueZ runs on this test's runtime: wait for the binary off it.
        let output = tokio::task::spawn_blocking(move || command.output().unwrap());
        let output = tokio::time::timeout(PATIENCE * 6, output)
            .await
            .expect("check finished in time")
            .unwrap();
        Run::from(output)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bluez_is_found_with_its_adapter_powered() {
        let emu = plaintext_emulator();
        let bus = PrivateBus::start().unwrap();

        let run = check_ble(&emu, bus.address(), "hci0").await.expect_code(1);
        assert!(
            line(&run, "bluez").starts_with(&format!(
                "FAIL bluez: BlueZ (org.bluez) does not answer on the bus at {}",
                bus.address()
            )),
            "{}",
            run.stdout
        );
        assert!(hint_of(&run, "bluez").starts_with("start bluetoothd"));

        let _bluez = FakeBluez::start(bus.address()).await.unwrap();
        let run = check_ble(&emu, bus.address(), "hci0").await.expect_code(0);
        assert_eq!(
            line(&run, "bluez"),
            format!(
                "ok   bluez: adapter hci0 is present and powered (the bus at {})",
                bus.address()
            )
        );

        let run = check_ble(&emu, bus.address(), "hci9").await.expect_code(2);
        assert_eq!(
            line(&run, "bluez"),
            "FAIL bluez: BlueZ has no adapter hci9 (it has: hci0)"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bus_that_is_not_there_is_named() {
        let emu = plaintext_emulator();
        let sandbox = Sandbox::new();
        let bus = format!("unix:path={}", s(&sandbox.path("no-bus")));

        let run = check_ble(&emu, &bus, "hci0").await.expect_code(1);
        assert!(
            line(&run, "bluez").starts_with(&format!("FAIL bluez: cannot reach the bus at {bus}")),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn a_wrong_api_token_is_refused_and_an_api_that_is_not_there_named() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let mut args = connect_args("check", &emu);
    args.extend(["--api-url".to_owned(), emu.http_url()]);
    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", "ulg_wrong".to_owned())], &args)
        .expect_code(4);
    assert_eq!(
        line(&run, "api"),
        format!(
            "FAIL api: {}/events answered 401 Unauthorized",
            emu.http_url()
        )
    );
    assert!(hint_of(&run, "api").starts_with("check --api-token (or ULOGGER_API_TOKEN)"));
    // The MQTT chain has its own path and passed.
    assert_eq!(status_of(&run, "mqtt"), "ok");

    let closed = format!("https://127.0.0.1:{}", closed_port());
    let args = replace(args, "--api-url", closed.clone());
    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", emu.api_token().to_owned())], &args)
        .expect_code(3);
    assert!(
        line(&run, "api").starts_with(&format!("FAIL api: no answer from {closed}/events")),
        "{}",
        run.stdout
    );
}

#[test]
fn tls_and_plaintext_crossed_are_named() {
    let tls = tls_emulator();
    let plain = plaintext_emulator();
    let sandbox = Sandbox::new();

    // TLS to a plaintext broker: it hangs up on the ClientHello.
    let args = replace(
        connect_args("check", &tls),
        "--port",
        plain.addr().port().to_string(),
    );
    let run = sandbox.run(&args).expect_code(3);
    assert!(
        line(&run, "tls").starts_with("FAIL tls: "),
        "{}",
        run.stdout
    );
    assert!(
        hint_of(&run, "tls").contains("pass --plaintext"),
        "{}",
        run.stdout
    );

    // Plaintext to a TLS broker.
    let args = replace(
        connect_args("check", &plain),
        "--port",
        tls.addr().port().to_string(),
    );
    let run = sandbox.run(&args).expect_code(3);
    assert!(
        line(&run, "mqtt").starts_with("FAIL mqtt: "),
        "{}",
        run.stdout
    );
    assert!(
        hint_of(&run, "mqtt").contains("drop --plaintext"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_outbox_whose_delivery_fails_says_why() {
    let emu = plaintext_emulator();
    let sandbox = Sandbox::new();
    let dir = sandbox.path("outbox");
    let log = sandbox.write("log.bin", &v1_log(10));
    // An upload through the outbox to a port nothing listens on leaves the
    // record queued and the cause in the outbox.
    let port = closed_port();
    let mut upload = replace(connect_args("upload", &emu), "--port", port.to_string());
    upload.extend(device_args("SN-OB"));
    upload.extend(strings(&["--no-store", "--timeout", "1", "--outbox"]));
    upload.extend([s(&dir), s(&log)]);
    sandbox.run(&upload).expect_code(3);

    let mut args = connect_args("check", &emu);
    args.extend(["--outbox".to_owned(), s(&dir)]);
    let run = sandbox.run(&args).expect_code(3);

    let outbox = line(&run, "outbox");
    assert!(
        outbox.starts_with(&format!(
            "FAIL outbox: {} is writable, not in use; 1 queued, 0 dead, ",
            dir.display()
        )),
        "{outbox}"
    );
    assert!(outbox.contains("; delivery is failing since 2"), "{outbox}");
    assert!(
        outbox.ends_with(&format!(
            "UTC: could not connect to 127.0.0.1:{port}: Connection refused (os error 111)"
        )),
        "{outbox}"
    );
    // The broker of the check itself is up.
    assert_eq!(status_of(&run, "mqtt"), "ok");
}

#[test]
fn a_broker_name_its_certificate_does_not_carry_fails_tls_on_this_side() {
    use std::net::ToSocketAddrs;
    // This machine's own name, when it leads to the loopback address the
    // emulator listens on (its certificate names only 127.0.0.1, ::1 and
    // localhost); elsewhere there is no such name to try.
    let Some(name) = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty() && n != "localhost")
        .filter(|n| {
            (n.as_str(), 1)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.any(|a| a.ip().is_loopback() && a.is_ipv4()))
        })
    else {
        eprintln!("skipped: this machine's name does not lead to 127.0.0.1");
        return;
    };
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let args = replace(connect_args("check", &emu), "--broker", name.clone());
    let run = sandbox.run(&args).expect_code(3);

    let tls = line(&run, "tls");
    assert!(
        tls.starts_with(&format!(
            "FAIL tls: this gateway refused the certificate of {name}: "
        )),
        "{tls}"
    );
    assert!(tls.contains("not valid for name"), "{tls}");
    assert_eq!(
        hint_of(&run, "tls"),
        "the broker's certificate was rejected: check --broker (the name it is issued for) and --ca"
    );
}
