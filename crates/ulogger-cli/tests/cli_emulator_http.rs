//! `ulogger emulator` tells where its HTTP telemetry endpoints are and
//! which API token they take, and what it prints works: a heartbeat sent
//! with exactly that URL, token and CA lands in its records.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::Running;

fn heartbeat(url: &str, token: &str, ca: Option<&str>) -> ulogger_cloud::HttpReceipt {
    let mut builder = ulogger_cloud::blocking::HttpTelemetry::builder(token)
        .base_url(url)
        .group_id(3);
    if let Some(ca) = ca {
        builder = builder.ca_file(ca);
    }
    builder
        .build()
        .unwrap()
        .publish_heartbeat("SN-CLI", 7, None)
        .unwrap()
}

#[test]
fn the_human_banner_prints_a_working_https_url_and_token() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator(&["--group-id", "3", "--data", data.path().to_str().unwrap()]);
    let ca = running.field("CA:");
    let http = running.field("HTTP API:");
    let url = http.split_whitespace().next().unwrap().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{http}");
    let token = running.field("API token:");
    assert!(token.starts_with("ulg_"), "{token}");

    let receipt = heartbeat(&url, &token, Some(&ca));
    assert_eq!(receipt.status, 200);
    let line = running.line_containing("POST /publish/metrics");
    assert!(
        line.contains(" ok ") && line.contains("serial=SN-CLI"),
        "{line}"
    );

    // client.toml says the same, commented out (no `ulogger` key reads it yet).
    let text = std::fs::read_to_string(data.path().join("client.toml")).unwrap();
    assert!(text.contains(&format!("# api_url = \"{url}\"")), "{text}");
    assert!(
        text.contains(&format!("# api_token = \"{token}\"")),
        "{text}"
    );
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert!(!parsed.contains_key("api_token"));
}

#[test]
fn the_json_ready_line_carries_the_http_url_and_token() {
    let data = tempfile::tempdir().unwrap();
    let running = Running::emulator_json(&[
        "--plaintext",
        "--group-id",
        "3",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    let ready = running.json_line();
    let url = ready["http_url"].as_str().unwrap();
    let token = ready["api_token"].as_str().unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{ready}");
    assert_eq!(heartbeat(url, token, None).attempts, 1);
    let record = running.json_line();
    assert_eq!(record["topic"], "POST /publish/metrics");
    assert_eq!(record["verdict"], "ok");
}
