//! 10,000 `upload_log` calls from Python against the emulator over mutual
//! TLS, pacing off: this package, the platform's Python SDK 1.2.3 doing
//! the same (fewer calls: it opens a connection per call), and the Rust
//! client directly. Prints `SUITE` lines (see `scripts/bench-suite`).
//!
//! Each client runs in a process of its own (the Rust client in a child
//! of this binary, `UPLOAD_LOG_RUST_CHILD`), so that the CPU time per call
//! of each is its own process's, the emulator's not included. The import
//! time of `ulogger_cloud` is the median of fresh interpreters.
//!
//! `cargo bench -p ulogger-py --bench upload_log` (maturin from
//! `$ULOGGER_MATURIN`, the SDK from `$ULOGGER_SDK_PYTHON`; without the SDK
//! its row is skipped). `UPLOAD_LOG_CALLS` and `UPLOAD_LOG_SDK_CALLS`
//! change the counts; `UPLOAD_LOG_PROFILE=dev` builds the wheel unoptimised
//! (a smoke run: `cargo test -p ulogger-py --bench upload_log`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ulogger_bench::broker::{LocalCloud, CUSTOMER};
use ulogger_bench::stats::median;
use ulogger_bench::usage::proc_cpu;
use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{blocking, MqttConfig, Pacing};
use ulogger_emulator::PlatformLimits;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `command`, panicking with its output when it fails; its stdout.
fn output(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A venv with this package's wheel, built in `profile`; its python.
fn our_python(dir: &Path, profile: &str) -> PathBuf {
    let maturin = std::env::var("ULOGGER_MATURIN").unwrap_or_else(|_| "maturin".to_owned());
    let wheels = dir.join("wheels");
    output(
        Command::new(maturin)
            .args(["build", "--quiet", "--profile", profile, "--out"])
            .arg(&wheels)
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
    );
    let wheel = std::fs::read_dir(&wheels)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .unwrap();
    let venv = dir.join("venv");
    output(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let python = venv.join("bin/python");
    output(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--no-index"])
            .arg(wheel),
    );
    python
}

/// The script's JSON line.
fn run_script(
    python: &Path,
    params: &Path,
    calls: usize,
    env: &[(&str, &Path)],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/upload_log.py");
    let mut command = Command::new(python);
    command.arg(script).arg(params).arg(calls.to_string());
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Option<serde_json::Value> = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok());
    match result {
        Some(result) if out.status.success() => {
            if result["failed"] != 0 {
                eprintln!("{stderr}");
            }
            result
        }
        _ => panic!("{command:?} failed:\n{stdout}{stderr}"),
    }
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    proc_cpu("self").unwrap().as_secs_f64()
}

/// The Rust client's side, in a child process: `calls` uploads with the
/// blocking client over the parameters' broker; one JSON line as the
/// Python script prints it.
fn rust_child(params: &Path, calls: usize) {
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(params).unwrap()).unwrap();
    let text = |key: &str| params[key].as_str().unwrap().to_owned();
    let hex = text("log_hex");
    let log: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let config = MqttConfig::new(CUSTOMER)
        .broker(text("broker"))
        .port(u16::try_from(params["port"].as_u64().unwrap()).unwrap())
        .client_cert(text("cert_file"), text("key_file"))
        .ca_file(text("ca_file"))
        .pacing(Pacing::off());
    let client = blocking::Client::builder(config).build().unwrap();
    let device = DeviceInfo::new(7, "SN-BENCH-RS", "bench_board", "v1.0.0", "abcdef0");
    client.upload_log(&device, &log).unwrap();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut failed = 0;
    for _ in 0..calls {
        if let Err(e) = client.upload_log(&device, &log) {
            eprintln!("rust upload failed: {e}");
            failed += 1;
        }
    }
    let seconds = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    client.shutdown();
    println!(
        "{}",
        serde_json::json!({
            "calls": calls,
            "failed": failed,
            "seconds": seconds,
            "calls_per_second": calls as f64 / seconds,
            "cpu_seconds_per_call": cpu / calls as f64,
        })
    );
}

/// The median import time of `ulogger_cloud` in `runs` fresh interpreters.
fn import_seconds(python: &Path, runs: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let out = output(Command::new(python).args([
                "-c",
                "import time; t = time.perf_counter(); import ulogger_cloud; \
                 print(time.perf_counter() - t)",
            ]));
            out.trim().parse().unwrap()
        })
        .collect();
    median(&mut times)
}

fn main() {
    if let Some(params) = std::env::var_os("UPLOAD_LOG_RUST_CHILD") {
        rust_child(Path::new(&params), env_number("UPLOAD_LOG_CALLS", 10_000));
        return;
    }
    let calls = env_number("UPLOAD_LOG_CALLS", 10_000);
    let sdk_calls = env_number("UPLOAD_LOG_SDK_CALLS", 20);
    let profile = std::env::var("UPLOAD_LOG_PROFILE").unwrap_or_else(|_| "release".to_owned());
    let dir = tempfile::tempdir().unwrap();
    // The emulator syncs every record before its PUBACK; on a tmpfs, where
    // that costs nothing, the benchmark measures the clients, not the disk.
    // Pacing is off, so the broker must not enforce AWS IoT's 100
    // publishes per second either (it would drop the excess unacknowledged).
    let cloud = LocalCloud::start(PlatformLimits::unlimited());
    let emulator = &cloud.emulator;
    let certs = cloud.certs().clone();
    let mut header = LogHeader::new(4).unwrap();
    header.epoch_time_us = Some(1_700_000_000_000_000);
    let log = build_log(header, &[0x5a; 1024]).unwrap();
    let hex: String = log.iter().map(|b| format!("{b:02x}")).collect();
    let params = serde_json::json!({
        "broker": "127.0.0.1",
        "port": emulator.addr().port(),
        "cert_file": certs.client_cert,
        "key_file": certs.client_key,
        "ca_file": certs.ca_cert,
        "customer_id": CUSTOMER,
        "log_hex": hex,
    });
    let params_file = dir.path().join("params.json");
    std::fs::write(&params_file, params.to_string()).unwrap();

    // The Rust client directly, the same calls, in a process of its own.
    let rust = {
        let out = output(
            Command::new(std::env::current_exe().unwrap())
                .env("UPLOAD_LOG_RUST_CHILD", &params_file)
                .env("UPLOAD_LOG_CALLS", calls.to_string()),
        );
        serde_json::from_str::<serde_json::Value>(out.lines().last().unwrap()).unwrap()
    };

    let python = our_python(dir.path(), &profile);
    let ours = run_script(&python, &params_file, calls, &[]);
    let import = import_seconds(&python, 11);

    let per_second = |v: &serde_json::Value| v["calls_per_second"].as_f64().unwrap();
    let cpu = |v: &serde_json::Value| v["cpu_seconds_per_call"].as_f64().unwrap();
    println!("ours: {ours}");
    println!("rust: {rust}");
    println!(
        "SUITE python upload_log ({profile}) | {:.0} calls/s | {} of {calls} failed",
        per_second(&ours),
        ours["failed"],
    );
    println!(
        "SUITE python upload_log CPU per call | {:.1} us | {:.2}x the Rust client's {:.1} us (each in its own process)",
        cpu(&ours) * 1e6,
        cpu(&ours) / cpu(&rust),
        cpu(&rust) * 1e6
    );
    println!(
        "SUITE rust upload_log | {:.0} calls/s | {} of {calls} failed; Python's calls/s are {:.2}x",
        per_second(&rust),
        rust["failed"],
        per_second(&ours) / per_second(&rust)
    );
    println!(
        "SUITE python import ulogger_cloud | {:.1} ms | median of 11 fresh interpreters (goal < 50 ms)",
        import * 1000.0
    );
    match std::env::var_os("ULOGGER_SDK_PYTHON") {
        None => println!("SUITE python SDK 1.2.3 upload_log | skipped | no ULOGGER_SDK_PYTHON"),
        Some(sdk) => {
            let sdk = PathBuf::from(sdk);
            let theirs = run_script(
                &sdk,
                &params_file,
                sdk_calls,
                &[("SSL_CERT_FILE", &certs.ca_cert), ("HOME", dir.path())],
            );
            println!("sdk: {theirs}");
            println!(
                "SUITE python SDK 1.2.3 upload_log | {:.1} calls/s | ours {:.0}x",
                per_second(&theirs),
                per_second(&ours) / per_second(&theirs)
            );
        }
    }
    cloud.shutdown();
}
