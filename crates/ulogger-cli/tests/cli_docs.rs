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

/// The troff source as a reader sees the words: fonts and escapes gone.
fn plain(troff: &str) -> String {
    troff
        .replace("\\fB", "")
        .replace("\\fI", "")
        .replace("\\fR", "")
        .replace("\\fP", "")
        .replace("\\-", "-")
        .replace("\\(aq", "'")
        .replace("\\(dq", "\"")
        .replace("\\\\", "\\")
        .replace("\\&", "")
}

/// The text of section `name` of a page: from its `.SH` to the next one.
fn section(page: &str, name: &str) -> String {
    let heading = if name.contains(' ') {
        format!(".SH \"{name}\"\n")
    } else {
        format!(".SH {name}\n")
    };
    let start = page
        .find(&heading)
        .unwrap_or_else(|| panic!("no {name} section in:\n{page}"));
    let rest = &page[start + heading.len()..];
    let end = rest.find("\n.SH ").map_or(rest.len(), |i| i + 1);
    plain(&rest[..end])
}

#[test]
fn the_main_page_has_environment_files_and_exit_status() {
    let run = Sandbox::new().run(&strings(&["man"])).expect_code(0);
    let page = &run.stdout;

    let environment = section(page, "ENVIRONMENT");
    // From the flags' `env` attributes: the variable, then its flag.
    for (variable, flag) in [
        ("ULOGGER_BROKER", "--broker"),
        ("ULOGGER_CUSTOMER_ID", "--customer-id"),
        ("ULOGGER_OUTBOX", "--outbox"),
        ("ULOGGER_SCAN_INTERVAL", "--scan-interval"),
        ("ULOGGER_CONFIG", "--config"),
    ] {
        let at = environment
            .find(&format!("{variable}\n"))
            .unwrap_or_else(|| panic!("no {variable} in:\n{environment}"));
        let entry = &environment[at..];
        let entry = &entry[..entry[1..].find("\n.TP").map_or(entry.len(), |i| i + 1)];
        assert!(entry.contains(&format!("As {flag}")), "{entry}");
    }
    // Read by the code rather than through a flag.
    for variable in [
        "ULOGGER_HOME",
        "ULOGGER_LOG",
        "NO_COLOR",
        "ULOGGER_CERT_DATA",
    ] {
        assert!(environment.contains(variable), "{variable}:\n{environment}");
    }

    let files = section(page, "FILES");
    for place in [
        "~/.ulogger/config.toml",
        "~/.ulogger/session_tokens.json",
        "OUTBOX/",
        "seg-N.log",
        "INBOX/DEVICE/",
    ] {
        assert!(files.contains(place), "{place}:\n{files}");
    }

    let exit_status = section(page, "EXIT STATUS");
    let codes: Vec<&str> = exit_status
        .split(".TP\n")
        .skip(1)
        .filter_map(|entry| entry.lines().next())
        .collect();
    assert_eq!(
        codes,
        ["0", "1", "2", "3", "4", "130", "141"],
        "{exit_status}"
    );
    assert!(
        exit_status.contains("Interrupted by Ctrl-C"),
        "{exit_status}"
    );
    assert!(exit_status.contains("SIGPIPE"), "{exit_status}");
}

#[test]
fn a_command_page_lists_only_its_own_variables_and_files_and_options_name_theirs() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("man");
    sandbox
        .run(&strings(&["man", "--out", &s(&dir)]))
        .expect_code(0);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();

    let upload = read("ulogger-upload.1");
    let environment = section(&upload, "ENVIRONMENT");
    assert!(environment.contains("ULOGGER_STORE"), "{environment}");
    assert!(environment.contains("ULOGGER_SERIAL"), "{environment}");
    assert!(!environment.contains("ULOGGER_INBOX"), "{environment}");
    let files = section(&upload, "FILES");
    assert!(files.contains("session_tokens.json"), "{files}");
    assert!(!files.contains("INBOX/DEVICE/"), "{files}");
    section(&upload, "EXIT STATUS");
    // The options keep the note `--help` shows.
    let options = section(&upload, "OPTIONS");
    assert!(
        options.contains("May also be specified with the ULOGGER_BROKER environment variable"),
        "{options}"
    );

    let inspect = read("ulogger-inspect.1");
    assert!(!section(&inspect, "ENVIRONMENT").contains("ULOGGER_BROKER"));
    assert!(!inspect.contains(".SH FILES"), "{inspect}");
    section(&inspect, "EXIT STATUS");

    let agent = read("ulogger-agent.1");
    let environment = section(&agent, "ENVIRONMENT");
    assert!(environment.contains("NOTIFY_SOCKET"), "{environment}");
    assert!(section(&agent, "FILES").contains("INBOX/DEVICE/"));

    let status = read("ulogger-outbox-status.1");
    assert!(section(&status, "FILES").contains("status.json"));
}
