//! 10,000 `upload_log` calls from Python against the emulator over mutual
//! TLS, pacing off: this package, the platform's Python SDK 1.2.3 doing
//! the same (fewer calls: it opens a connection per call), and the Rust
//! client directly. Prints `SUITE` lines (see `scripts/bench-suite`).
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

use ulogger_cloud::wire::{build_log, DeviceInfo, LogHeader};
use ulogger_cloud::{blocking, MqttConfig, Pacing};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits};

const CUSTOMER: u32 = 4242;

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
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn main() {
    let calls = env_number("UPLOAD_LOG_CALLS", 10_000);
    let sdk_calls = env_number("UPLOAD_LOG_SDK_CALLS", 20);
    let profile = std::env::var("UPLOAD_LOG_PROFILE").unwrap_or_else(|_| "release".to_owned());
    let dir = tempfile::tempdir().unwrap();
    // The emulator syncs every record before its PUBACK; on a tmpfs, where
    // that costs nothing, the benchmark measures the clients, not the disk.
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    // Pacing is off, so the broker must not enforce AWS IoT's 100
    // publishes per second either (it would drop the excess unacknowledged).
    let emulator = Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .data_dir(data.path())
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap();
    let certs = emulator.certs().unwrap().clone();
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

    // The Rust client directly, the same calls.
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(emulator.addr().port())
        .client_cert(&certs.client_cert, &certs.client_key)
        .ca_file(&certs.ca_cert)
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

    let rust_seconds = wall0.elapsed().as_secs_f64();
    let rust_cpu = (cpu_seconds() - cpu0) / calls as f64;
    client.shutdown();

    let python = our_python(dir.path(), &profile);
    let ours = run_script(&python, &params_file, calls, &[]);

    let per_second = |v: &serde_json::Value| v["calls_per_second"].as_f64().unwrap();
    let cpu = |v: &serde_json::Value| v["cpu_seconds_per_call"].as_f64().unwrap();
    println!("ours: {ours}");
    println!(
        "SUITE python upload_log ({profile}) | {:.0} calls/s | {} of {calls} failed; import {:.1} ms",
        per_second(&ours),
        ours["failed"],
        ours["import_seconds"].as_f64().unwrap() * 1000.0
    );
    println!(
        "SUITE python upload_log CPU per call | {:.1} us | {:.2}x the Rust client's {:.1} us (its emulator in the same process)",
        cpu(&ours) * 1e6,
        cpu(&ours) / rust_cpu,
        rust_cpu * 1e6
    );
    println!(
        "SUITE rust upload_log | {:.0} calls/s | {failed} of {calls} failed",
        calls as f64 / rust_seconds
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
    emulator.shutdown().unwrap();
}
