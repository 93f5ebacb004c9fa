//! The Python package for real: builds the wheel with maturin, installs it
//! into a fresh virtual environment, and runs the Python tests
//! (`tests/python/`, unittest cases run by pytest) against an emulator
//! over mutual TLS on real sockets.
//!
//! maturin comes from `$ULOGGER_MATURIN` (`.ci/run` installs the pinned
//! version into a venv under `target/` and sets it), else `maturin` on
//! the PATH. Under `CI=true` a missing maturin or python fails the test;
//! elsewhere it is skipped with a notice, as the SDK test does.
//!
//! The Python tests reach the emulator through a line protocol on their
//! stdin/stdout: a line `@ctl COMMAND ARGS...` on stdout is answered with
//! one JSON line on stdin (`records`, `clients`, `push APP SERIAL LEVEL
//! FLAGS TIMEOUT`, `disconnect`, `tokens`, `http_requests`, `elf APP TYPE
//! VERSION`, `withhold_puback FILTER|none`, and `mosquitto_records` and `mosquitto_wait SERIAL SIZE`: the
//! records of the second emulator, attached to a mosquitto with mutual
//! TLS, for the bridge-mode tests).
//!
//! pytest runs the suite, the bridge-mode tests run a real paho-mqtt
//! client, and the stubs are checked with mypy: their wheels come from
//! the directory
//! `$ULOGGER_PY_TEST_WHEELS` (`.ci/run` downloads the pinned versions
//! there), installed without network. Under `CI=true` a missing wheel or
//! mosquitto fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ulogger_cloud::wire::{LogConfig, LogLevel};
use ulogger_emulator::testing::Mosquitto;
use ulogger_emulator::{AttachTo, CertPaths, Emulator, EmulatorConfig, RecordKind, WithholdPuback};

const CUSTOMER: u32 = 4242;
/// Building the wheel (a dev-profile build of this crate; its
/// dependencies are normally built already by the workspace's tests).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// The whole Python suite.
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails under CI, else prints a notice: the test then passes as skipped.
fn unavailable(what: &str) {
    assert!(
        !in_ci(),
        "{what}: required under CI=true (.ci/run installs maturin into a venv and sets \
         ULOGGER_MATURIN)"
    );
    eprintln!("skipping the Python package tests: {what}");
}

/// Runs `command` to completion within `timeout`, killing it after; its
/// combined output on failure.
fn run(mut command: Command, timeout: Duration) -> Result<String, String> {
    let shown = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (done_tx, done_rx) = mpsc::channel();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(timeout).is_err() {
            // Still running: kill it (our own child, by its pid).
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let status = child.wait().map_err(|e| e.to_string())?;
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    if status.success() {
        Ok(text)
    } else {
        Err(format!("{shown} failed ({status}):\n{text}"))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the wheel into `out`; `None` (after [`unavailable`]) without
/// maturin.
fn build_wheel(out: &Path) -> Option<PathBuf> {
    let maturin = std::env::var("ULOGGER_MATURIN").unwrap_or_else(|_| "maturin".to_owned());
    if let Err(e) = run(
        {
            let mut c = Command::new(&maturin);
            c.arg("--version");
            c
        },
        Duration::from_secs(60),
    ) {
        unavailable(&format!("no maturin ({e})"));
        return None;
    }
    let mut build = Command::new(&maturin);
    build
        .args(["build", "--profile", "dev", "--quiet", "--out"])
        .arg(out)
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_INCREMENTAL", "0")
        .current_dir(workspace_root());
    if let Err(e) = run(build, BUILD_TIMEOUT) {
        panic!("maturin could not build the wheel: {e}");
    }
    let wheel = std::fs::read_dir(out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("maturin wrote a wheel");
    Some(wheel)
}

/// Installs pytest, paho-mqtt and mypy from `$ULOGGER_PY_TEST_WHEELS`
/// into the venv of `python`; false (after a notice, or failing under CI)
/// without them.
fn install_test_wheels(python: &Path) -> bool {
    let Some(wheels) = std::env::var_os("ULOGGER_PY_TEST_WHEELS") else {
        assert!(
            !in_ci(),
            "ULOGGER_PY_TEST_WHEELS is required under CI=true (.ci/run downloads pytest, \
             paho-mqtt and mypy there)"
        );
        eprintln!(
            "skipping the bridge-mode and mypy tests, and running the suite with unittest: \
             ULOGGER_PY_TEST_WHEELS is not set"
        );
        return false;
    };
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
    ])
    .arg(&wheels)
    .arg(format!("paho-mqtt=={PAHO_VERSION}"))
    .arg(format!("mypy=={MYPY_VERSION}"))
    .arg(format!("pytest=={PYTEST_VERSION}"));
    if let Err(e) = run(pip, Duration::from_secs(120)) {
        panic!(
            "paho-mqtt {PAHO_VERSION}, mypy {MYPY_VERSION} and pytest {PYTEST_VERSION} are not \
             installable from {wheels:?}: {e}"
        );
    }
    true
}

/// The paho-mqtt version the bridge-mode tests run (pinned in `.ci/run`).
const PAHO_VERSION: &str = "2.1.0";
/// The pytest version that runs the suite (pinned in `.ci/run`).
const PYTEST_VERSION: &str = "8.3.5";
/// The mypy version that checks the stubs (pinned in `.ci/run`).
const MYPY_VERSION: &str = "1.19.1";

/// A mosquitto with mutual TLS and a second emulator's cloud attached to
/// it; `None` when mosquitto is missing outside CI.
struct MosquittoSetup {
    emulator: Emulator,
    certs: CertPaths,
    port: u16,
    _mosquitto: Mosquitto,
}

fn mosquitto_setup(dir: &Path) -> Option<MosquittoSetup> {
    let certs = CertPaths::generate(dir, CUSTOMER).unwrap();
    let mosquitto = Mosquitto::mutual_tls(&certs)?;
    let port = mosquitto.addr().port();
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER).attach(
        AttachTo::new("127.0.0.1", port).mutual_tls(
            &certs.ca_cert,
            &certs.client_cert,
            &certs.client_key,
        ),
    ))
    .expect("the cloud side attaches to mosquitto");
    Some(MosquittoSetup {
        emulator,
        certs,
        port,
        _mosquitto: mosquitto,
    })
}

/// A fresh venv at `dir` with the wheel installed (nothing else, and
/// nothing from the network); its python.
fn venv_with(wheel: &Path, dir: &Path) -> Option<PathBuf> {
    let base = std::env::var("ULOGGER_PY_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut venv = Command::new(&base);
    venv.args(["-m", "venv"]).arg(dir);
    if let Err(e) = run(venv, Duration::from_secs(120)) {
        unavailable(&format!("no python3 with venv ({e})"));
        return None;
    }
    let python = dir.join("bin/python");
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-index",
    ])
    .arg(wheel);
    run(pip, Duration::from_secs(120)).unwrap();
    Some(python)
}

/// The answer to one `@ctl` line.
fn control(emulator: &Emulator, mosquitto: Option<&Emulator>, line: &str) -> serde_json::Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["records"] => serde_json::to_value(emulator.records()).unwrap(),
        ["withhold_puback", filter] => {
            emulator.faults().set_withhold_puback(match *filter {
                "none" => WithholdPuback::None,
                filter => WithholdPuback::Topic((*filter).to_owned()),
            });
            serde_json::json!("ok")
        }
        ["mosquitto_wait", serial, size] => {
            // mosquitto acknowledges a publish before the attached cloud
            // has it: wait for the record of that very log (by its size).
            let size: usize = size.parse().unwrap();
            let found = mosquitto.expect("a mosquitto setup").wait_for_blocking(
                |r| {
                    r.kind == RecordKind::BinaryLog
                        && r.serial.as_deref() == Some(*serial)
                        && r.size == size
                },
                Duration::from_secs(30),
            );
            serde_json::to_value(found).unwrap()
        }
        ["mosquitto_records"] => {
            serde_json::to_value(mosquitto.expect("a mosquitto setup").records()).unwrap()
        }
        ["elf", app, device_type, version] => {
            match emulator.find_elf(app.parse().unwrap(), device_type, version) {
                None => serde_json::Value::Null,
                Some(stored) => serde_json::json!({
                    "size": stored.size,
                    "git_hash": stored.git_hash,
                    "branch": stored.branch,
                    "upload_id": stored.upload_id,
                    "bytes_read": emulator.read_elf(&stored).unwrap().len(),
                }),
            }
        }
        ["clients"] => serde_json::to_value(emulator.connected_clients()).unwrap(),
        ["disconnect"] => serde_json::json!(emulator.disconnect_all()),
        ["tokens"] => serde_json::to_value(emulator.issued_tokens()).unwrap(),
        ["http_requests"] => serde_json::json!(emulator.http_requests()),
        ["push", app, serial, level, flags, timeout] => {
            let config = LogConfig::new(
                LogLevel::from(level.parse::<u8>().unwrap()),
                flags.parse().unwrap(),
                timeout.parse().unwrap(),
            )
            .with_module_names(vec!["net".to_owned(), "ble".to_owned()]);
            emulator
                .push_config_blocking(app.parse().unwrap(), serial, &config)
                .unwrap();
            serde_json::json!("ok")
        }
        _ => panic!("unknown control line from the Python tests: {line}"),
    }
}

/// Runs the suite with the control protocol, with pytest when the test
/// wheels are installed (`pytest`), else with unittest (its tests are
/// unittest cases, which pytest runs as they are); panics with its output
/// when it fails.
fn run_suite(
    python: &Path,
    pytest: bool,
    emulator: &Emulator,
    mosquitto: Option<&Emulator>,
    params: &Path,
    home: &Path,
) {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    // `-s`: the control protocol is the suite's standard input and output,
    // which pytest would otherwise capture.
    let runner: &[&str] = if pytest {
        &["-m", "pytest", "-v", "-s", "-p", "no:cacheprovider"]
    } else {
        &["-m", "unittest", "-v"]
    };
    let mut child = Command::new(python)
        .args(runner)
        .current_dir(&tests)
        .env("ULOGGER_TEST_PARAMS", params)
        .env("HOME", home)
        .env_remove("SSL_CERT_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let timed_out = done_rx.recv_timeout(SUITE_TIMEOUT).is_err();
        if timed_out {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        timed_out
    });
    let mut output = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        // pytest -v writes a test's name before the test runs and ends the
        // line after it: a request may follow it on the same line.
        if let Some((before, command)) = line.split_once("@ctl ") {
            output.push_str(before);
            let answer = control(emulator, mosquitto, command);
            // The suite may have died meanwhile: its output tells why.
            let _ = writeln!(stdin, "{answer}");
            let _ = stdin.flush();
        } else {
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().unwrap();
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        !timed_out,
        "the Python suite did not finish within {SUITE_TIMEOUT:?}:\n{output}{stderr}"
    );
    assert!(
        status.success(),
        "the Python suite failed ({status}):\n{output}{stderr}"
    );
    eprintln!("{stderr}");
}

#[test]
fn the_python_package_against_the_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let Some(wheel) = build_wheel(&dir.path().join("wheels")) else {
        return;
    };
    let Some(python) = venv_with(&wheel, &dir.path().join("venv")) else {
        return;
    };
    let paho = install_test_wheels(&python);
    let mosquitto = if paho {
        mosquitto_setup(&dir.path().join("mosquitto"))
    } else {
        None
    };
    let emulator = Emulator::start(EmulatorConfig::new(CUSTOMER)).unwrap();
    let certs = emulator.certs().expect("TLS by default").clone();
    let sdk_python = std::env::var("ULOGGER_SDK_PYTHON").ok();
    assert!(
        sdk_python.is_some() || !in_ci(),
        "ULOGGER_SDK_PYTHON is required under CI=true (the token-file compatibility test)"
    );
    let params = serde_json::json!({
        "broker": "127.0.0.1",
        "port": emulator.addr().port(),
        "cert_file": certs.client_cert,
        "key_file": certs.client_key,
        "ca_file": certs.ca_cert,
        "http_url": emulator.http_url(),
        "api_token": emulator.api_token(),
        "customer_id": CUSTOMER,
        "work_dir": dir.path(),
        "sdk_python": sdk_python,
        "paho": paho,
        "mosquitto": mosquitto.as_ref().map(|m| serde_json::json!({
            "port": m.port,
            "ca_file": m.certs.ca_cert,
            "cert_file": m.certs.client_cert,
            "key_file": m.certs.client_key,
        })),
    });
    let params_file = dir.path().join("params.json");
    std::fs::write(&params_file, params.to_string()).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    run_suite(
        &python,
        paho,
        &emulator,
        mosquitto.as_ref().map(|m| &m.emulator),
        &params_file,
        &home,
    );
    emulator.shutdown().unwrap();
}

/// Every exception class the native module raises by name exists in
/// `ulogger_cloud.errors` (a missing one would degrade to RuntimeError).
#[test]
fn every_error_class_the_native_module_names_is_defined() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rust = std::fs::read_to_string(root.join("src/errors.rs")).unwrap();
    let python = std::fs::read_to_string(root.join("python/ulogger_cloud/errors.py")).unwrap();
    let named: Vec<&str> = rust
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.ends_with("Error") && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect();
    assert!(named.len() > 25, "{named:?}");
    for class in named {
        assert!(
            python.contains(&format!("\nclass {class}(")),
            "ulogger_cloud.errors has no class {class}"
        );
    }
}
