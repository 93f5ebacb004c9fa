//! Running the `ulogger` binary and reading what it printed.
#![allow(dead_code, clippy::unwrap_used)]

// The same tiny firmware the library's ELF upload tests compile: one copy.
#[path = "../../../ulogger-cloud/tests/support/firmware.rs"]
pub mod firmware;
pub mod sandbox;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use std::sync::mpsc;
use std::time::Duration;

/// How long a test waits for the binary to say something.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// Asserts the exit code, showing both streams when it differs.
pub fn assert_code(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// The running binary; killed on drop. Its stdout lines arrive on a
/// channel.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// `ulogger emulator` on a free loopback port, with `flags`.
    pub fn emulator(flags: &[&str]) -> Running {
        Running::start(&[&["emulator", "--listen", "127.0.0.1:0"], flags].concat())
    }

    /// [`Running::emulator`] with `--json` output.
    pub fn emulator_json(flags: &[&str]) -> Running {
        Running::start(&[&["--json", "emulator", "--listen", "127.0.0.1:0"], flags].concat())
    }

    pub fn start(args: &[&str]) -> Running {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Running::spawn(command)
    }

    /// Runs `command` (whose stdout must be piped).
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The value after `label` on the first line that has it.
    pub fn field(&self, label: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(WAIT).expect("emulator output");
            if let Some(rest) = line.trim_start().strip_prefix(label) {
                return rest.trim().to_string();
            }
        }
    }

    /// Sends SIGTERM (as `kill` and service managers do) and waits for the
    /// process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        self.child.wait().unwrap()
    }

    /// The next line of output, parsed as JSON (for `--json` runs).
    pub fn json_line(&self) -> serde_json::Value {
        let line = self.lines.recv_timeout(WAIT).expect("a line of output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    pub fn line_containing(&self, needle: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(WAIT).expect("a record line");
            if line.contains(needle) {
                return line;
            }
        }
    }
}
