//! `ulogger completions` and `ulogger man` produce what shells and `man` read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::sandbox::*;

#[test]
fn bash_completion_knows_the_commands_and_their_flags() {
    let run = Sandbox::new()
        .run(&strings(&["completions", "bash"]))
        .expect_code(0);
    assert!(run.stdout.contains("upload"), "{}", run.stdout);
    assert!(run.stdout.contains("--outbox"));
    assert!(run.stdout.contains("make-log"));
}

#[test]
fn every_shell_gets_a_script() {
    let sandbox = Sandbox::new();
    for shell in ["zsh", "fish", "powershell"] {
        let run = sandbox
            .run(&strings(&["completions", shell]))
            .expect_code(0);
        assert!(run.stdout.contains("ulogger"), "{shell}");
    }
    sandbox
        .run(&strings(&["completions", "tcsh"]))
        .expect_code(2);
}

#[test]
fn the_man_page_is_troff_and_out_writes_one_page_per_command() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&strings(&["man"])).expect_code(0);
    assert!(run.stdout.contains(".TH"), "{}", run.stdout);
    assert!(run.stdout.contains("upload"));

    let dir = sandbox.path("man");
    sandbox
        .run(&strings(&["man", "--out", &s(&dir)]))
        .expect_code(0);
    let page = std::fs::read_to_string(dir.join("ulogger-upload.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("outbox"), "{page}");
    assert!(dir.join("ulogger.1").is_file());
}
