//! A sandboxed run of the binary against an emulator in this process:
//! a fresh `HOME`/`ULOGGER_HOME`, no inherited `ULOGGER_*` variables, and
//! the flags that reach the emulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ulogger_cloud::wire::{build_log, LogHeader};
use ulogger_emulator::{Emulator, EmulatorConfig, PortHold};

pub const CUSTOMER: u32 = 4242;
pub const APP: u32 = 7;
pub const GIT_HASH: &str = "abc1234";

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn tls_emulator() -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER)).expect("emulator starts")
}

pub fn plaintext_emulator() -> Emulator {
    Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).expect("emulator starts")
}

/// A plaintext emulator on `port`, for a broker that goes away and comes
/// back on the same address (the hold keeps the port meanwhile).
pub fn plaintext_emulator_on(port: &PortHold) -> Emulator {
    Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(port),
    )
    .expect("emulator starts")
}

/// A temporary home for one test: files it writes and the binary's runs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

/// One finished run of the binary.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }

    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `ULOGGER_HOME` of the runs (where a default config file is looked for).
    pub fn ulogger_home(&self) -> PathBuf {
        self.path(".ulogger")
    }

    /// The binary with a clean environment: only `env` of the `ULOGGER_*`
    /// variables, and homes inside the sandbox.
    pub fn command(&self, env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ulogger"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ULOGGER_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env("ULOGGER_HOME", self.ulogger_home())
            // Only the command's own report reaches stderr.
            .env("ULOGGER_LOG", "off");
        for (key, value) in env {
            cmd.env(key, value);
        }
        cmd
    }

    pub fn run_with_env(&self, env: &[(&str, String)], args: &[String]) -> Run {
        Run::from(self.command(env).args(args).output().unwrap())
    }

    pub fn run(&self, args: &[String]) -> Run {
        self.run_with_env(&[], args)
    }
}

pub fn s(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// `subcommand` with the flags that reach `emu` as it was started.
pub fn connect_args(subcommand: &str, emu: &Emulator) -> Vec<String> {
    let mut args = strings(&[subcommand, "--broker", "127.0.0.1", "--customer-id"]);
    args.push(CUSTOMER.to_string());
    args.extend(["--port".to_owned(), emu.addr().port().to_string()]);
    match emu.certs() {
        Some(certs) => args.extend([
            "--ca".to_owned(),
            s(&certs.ca_cert),
            "--cert".to_owned(),
            s(&certs.client_cert),
            "--key".to_owned(),
            s(&certs.client_key),
        ]),
        None => args.push("--plaintext".to_owned()),
    }
    args
}

/// `args` with the value after `flag` replaced.
pub fn replace(mut args: Vec<String>, flag: &str, value: String) -> Vec<String> {
    let at = args.iter().position(|a| a == flag).unwrap();
    args[at + 1] = value;
    args
}

pub fn device_args(serial: &str) -> Vec<String> {
    strings(&[
        "--app-id",
        &APP.to_string(),
        "--serial",
        serial,
        "--device-type",
        "test-board",
        "--git-version",
        "v1.0.0",
        "--git-hash",
        GIT_HASH,
    ])
}

/// A valid version-4 log with `len` data bytes.
pub fn v4_log(len: usize) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    build_log(header, &data).unwrap()
}

/// A valid version-1 log with `len` data bytes.
pub fn v1_log(len: usize) -> Vec<u8> {
    let mut header = LogHeader::new(1).unwrap();
    header.sequence_number = Some(9);
    let data: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
    build_log(header, &data).unwrap()
}

/// A port nothing listens on, held for the rest of the test binary's run
/// (so that no other test's socket takes it meanwhile; [`PortHold`]).
pub fn closed_port() -> u16 {
    Box::leak(Box::new(PortHold::new().unwrap())).addr().port()
}

/// A port free now, let go for another process to bind (which may lose
/// it to any other socket meanwhile: use [`closed_port`] or a
/// [`PortHold`] where this process is the one to listen).
pub fn released_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A valid log whose data names it: `log-{n:05}`.
pub fn numbered_log(n: usize) -> Vec<u8> {
    build_log(LogHeader::new(4).unwrap(), format!("log-{n:05}").as_bytes()).unwrap()
}

/// Writes `numbered_log(0..n)` as files `log-{n:05}.bin`.
pub fn numbered_logs(sandbox: &Sandbox, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| sandbox.write(&format!("log-{i:05}.bin"), &numbered_log(i)))
        .collect()
}

/// How many copies of each numbered log the cloud verified (every binary
/// log it holds must be a verified one).
pub fn copies(emu: &Emulator) -> std::collections::BTreeMap<usize, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in emu.records() {
        if r.kind != ulogger_emulator::RecordKind::BinaryLog {
            continue;
        }
        assert!(r.is_ok(), "{r:?}");
        let bytes = std::fs::read(emu.data_dir().join(r.file.as_ref().unwrap())).unwrap();
        let n: usize = std::str::from_utf8(&bytes[25..]).unwrap()[4..]
            .parse()
            .unwrap();
        *out.entry(n).or_default() += 1;
    }
    out
}

/// Waits (at most 30 s) until the cloud has received `n` more binary logs.
pub fn wait_for_logs(emu: &Emulator, n: usize) {
    let mut watcher = emu.watch_records();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), async {
                let mut logs = 0;
                while logs < n {
                    if watcher.next().await.kind == ulogger_emulator::RecordKind::BinaryLog {
                        logs += 1;
                    }
                }
            })
            .await
        })
        .expect("the logs arrive");
}
