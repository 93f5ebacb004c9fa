//! `ulogger query metrics|events|logs` as a user runs it: the built binary
//! against the data API of an emulator (HTTPS with its CA, or plain HTTP
//! from `ulogger emulator --http-listen`), as a table and as JSON, and
//! each failure with its exit code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use support::sandbox::*;
use support::Running;
use ulogger_cloud::wire::{Event, Metric};
use ulogger_emulator::Emulator;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sender(
    url: &str,
    token: &str,
    ca: Option<&std::path::Path>,
) -> ulogger_cloud::blocking::HttpTelemetry {
    let mut builder = ulogger_cloud::blocking::HttpTelemetry::builder(token)
        .base_url(url)
        .group_id(0);
    if let Some(ca) = ca {
        builder = builder.ca_file(ca);
    }
    builder.build().unwrap()
}

/// `ulogger query KIND` with the emulator's URL and CA; the token in the
/// environment, as the help advises.
fn query(sandbox: &Sandbox, emu: &Emulator, args: &[&str]) -> Run {
    let mut all = strings(&["query"]);
    all.extend(strings(args));
    all.extend(strings(&["--api-url", &emu.http_url()]));
    if let Some(certs) = emu.certs() {
        all.extend(["--ca".to_owned(), s(&certs.ca_cert)]);
    }
    sandbox.run_with_env(&[("ULOGGER_API_TOKEN", emu.api_token().to_owned())], &all)
}

#[test]
fn metrics_events_and_logs_come_back_as_a_table_and_as_json() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    let t = now() - 30;
    let http = sender(
        &emu.http_url(),
        emu.api_token(),
        Some(&emu.certs().unwrap().ca_cert),
    );
    http.publish_metrics(
        "SN-Q",
        APP,
        &[
            Metric::new("temp", 21.5).at(t),
            Metric::new("temp", 22.25).at(t + 1),
            Metric::new("rssi", -70.0).at(t + 2),
        ],
    )
    .unwrap();
    http.publish_events("SN-Q", APP, &[Event::new("door").at(t)])
        .unwrap();

    let run = query(
        &sandbox,
        &emu,
        &[
            "metrics",
            "--app-id",
            &APP.to_string(),
            "--serial",
            "SN-Q",
            "--name",
            "temp",
            "--start",
            "5m",
        ],
    )
    .expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("TIME"), "{}", run.stdout);
    assert!(
        lines[1].contains("SN-Q") && lines[1].ends_with("temp  22.25"),
        "{}",
        run.stdout
    );
    assert!(lines[2].ends_with("temp  21.5"), "{}", run.stdout);

    let run = query(&sandbox, &emu, &["--json", "metrics", "--limit", "1"]).expect_code(0);
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["count"], 1);
    assert_eq!(body["metrics"][0]["name"], "rssi");
    assert_eq!(body["metrics"][0]["value"], -70.0);
    assert_eq!(body["metrics"][0]["timestamp"], t + 2);

    let run = query(&sandbox, &emu, &["events", "--serial", "SN-Q"]).expect_code(0);
    assert!(
        run.stdout.lines().nth(1).unwrap().ends_with("door"),
        "{}",
        run.stdout
    );

    // Nothing in the window: said on stderr, stdout stays empty.
    let run = query(
        &sandbox,
        &emu,
        &["logs", "--start", &(t + 1000).to_string()],
    )
    .expect_code(0);
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("no logs"), "{}", run.stderr);
}

#[test]
fn each_failure_has_its_exit_code_and_says_what_to_fix() {
    let emu = tls_emulator();
    let sandbox = Sandbox::new();
    // A parameter the API refuses: bad input, naming the flag.
    let run = query(&sandbox, &emu, &["metrics", "--start", "yesterday"]).expect_code(2);
    assert!(run.stderr.contains("start"), "{}", run.stderr);
    assert!(run.stderr.contains("--start"), "{}", run.stderr);
    // --name belongs to metrics.
    let run = query(&sandbox, &emu, &["events", "--name", "x"]).expect_code(2);
    assert!(run.stderr.contains("--name"), "{}", run.stderr);
    // A wrong token: the cloud refuses.
    let mut args = strings(&["query", "metrics", "--api-url", &emu.http_url()]);
    args.extend(["--ca".to_owned(), s(&emu.certs().unwrap().ca_cert)]);
    let run = sandbox
        .run_with_env(&[("ULOGGER_API_TOKEN", "ulg_wrong".to_owned())], &args)
        .expect_code(4);
    assert!(run.stderr.contains("401"), "{}", run.stderr);
    assert!(run.stderr.contains("--api-token"), "{}", run.stderr);
    // No token at all: bad input before anything is sent.
    let run = sandbox.run(&args).expect_code(2);
    assert!(run.stderr.contains("no API token"), "{}", run.stderr);
    // Nobody listening: a network failure.
    let port = closed_port();
    let run = sandbox
        .run_with_env(
            &[("ULOGGER_API_TOKEN", "ulg_x".to_owned())],
            &strings(&[
                "query",
                "events",
                "--api-url",
                &format!("http://127.0.0.1:{port}"),
            ]),
        )
        .expect_code(3);
    assert!(run.stderr.contains("no answer"), "{}", run.stderr);
}

#[test]
fn an_emulator_on_a_fixed_http_address_answers_the_query_it_prints() {
    let data = tempfile::tempdir().unwrap();
    let port = released_port();
    let listen = format!("127.0.0.1:{port}");
    let running = Running::emulator_json(&[
        "--plaintext",
        "--http-listen",
        &listen,
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let ready = running.json_line();
    let url = ready["http_url"].as_str().unwrap();
    assert_eq!(url, format!("http://{listen}"));
    let token = ready["api_token"].as_str().unwrap();
    let command = ready["query_command"].as_str().unwrap();
    assert!(
        command.contains(&format!("ulogger query metrics --api-url {url}")),
        "{command}"
    );
    sender(url, token, None)
        .publish_metrics("SN-F", APP, &[Metric::new("n", 3.0)])
        .unwrap();

    let sandbox = Sandbox::new();
    let run = sandbox
        .run_with_env(
            &[("ULOGGER_API_TOKEN", token.to_owned())],
            &strings(&[
                "--json",
                "query",
                "metrics",
                "--api-url",
                url,
                "--start",
                "1h",
            ]),
        )
        .expect_code(0);
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["metrics"][0]["device_serial"], "SN-F");
}
