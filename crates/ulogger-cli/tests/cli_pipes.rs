//! A reader that stops early (`ulogger make-log --count 300 | head -1`)
//! ends the command quietly, as SIGPIPE ends a Unix tool, never with a
//! panic and its backtrace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

use support::sandbox::*;

/// Runs `args`, reads one line of its output, closes the pipe, and
/// returns the exit code and what it wrote to stderr.
fn first_line_then_close(sandbox: &Sandbox, args: &[&str]) -> (String, Option<i32>, String) {
    let mut child = sandbox
        .command(&[])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // The reader is gone: the rest of the output hits a closed pipe.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (line, child.wait().unwrap().code(), stderr)
}

#[test]
fn a_closed_pipe_ends_make_log_and_inspect_quietly() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("logs");
    let (line, code, stderr) =
        first_line_then_close(&sandbox, &["make-log", "--count", "3000", "-o", &s(&dir)]);
    assert!(line.contains("log-00000.bin"), "{line}");
    assert_eq!(code, Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut args = vec!["inspect".to_owned()];
    for entry in std::fs::read_dir(&dir).unwrap().take(2000) {
        args.push(s(&entry.unwrap().path()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_, code, stderr) = first_line_then_close(&sandbox, &args);
    assert_eq!(code, Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
