//! `ulogger tokens` on temporary store files, through the built binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod support;
use support::{assert_code, stderr, stdout};

/// A store as the Python SDK writes it (`json.dump(..., indent=2)`).
const STORE: &str = r#"{
  "SN-0003": {
    "token": 305419896,
    "git_hash": "1a2b3c4"
  },
  "SN-0001": {
    "token": 4294967295,
    "git_hash": "deadbee"
  }
}"#;

fn ulogger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(args)
        .env_remove("ULOGGER_HOME")
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap()
}

fn with_store(args: &[&str], store: &Path) -> Output {
    let mut all = args.to_vec();
    all.extend(["--store", store.to_str().unwrap()]);
    ulogger(&all)
}

fn store_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("session_tokens.json");
    fs::write(&path, STORE).unwrap();
    path
}

#[test]
fn list_prints_a_table_in_lru_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(&dir);
    let out = with_store(&["tokens", "list"], &path);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("SERIAL") && lines[0].contains("GIT HASH"));
    assert!(lines[1].starts_with("SN-0003"), "{text}");
    assert!(lines[1].contains("305419896") && lines[1].contains("0x12345678"));
    assert!(lines[1].ends_with("1a2b3c4"));
    assert!(lines[2].starts_with("SN-0001") && lines[2].contains("4294967295"));
    // Listing does not rewrite the file.
    assert_eq!(fs::read_to_string(&path).unwrap(), STORE);
}

#[test]
fn list_json_is_an_array_of_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(&dir);
    let out = with_store(&["--json", "tokens", "list"], &path);
    assert_code(&out, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        value,
        serde_json::json!([
            {"serial": "SN-0003", "token": 305419896u32, "git_hash": "1a2b3c4"},
            {"serial": "SN-0001", "token": 4294967295u32, "git_hash": "deadbee"},
        ])
    );
}

#[test]
fn list_of_a_missing_store_is_empty_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing/session_tokens.json");
    let out = with_store(&["tokens", "list"], &path);
    assert_code(&out, 0);
    assert!(
        stdout(&out).contains("no cached tokens"),
        "{}",
        stdout(&out)
    );
    let out = with_store(&["--json", "tokens", "list"], &path);
    assert_eq!(stdout(&out).trim(), "[]");
    let out = with_store(&["tokens", "clear"], &path);
    assert_code(&out, 0);
    assert!(!dir.path().join("nothing").exists());
}

#[test]
fn get_prints_one_entry_or_fails_with_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(&dir);
    let out = with_store(&["--json", "tokens", "get", "SN-0001"], &path);
    assert_code(&out, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(value["token"], 4294967295u32);
    assert_eq!(value["git_hash"], "deadbee");

    let out = with_store(&["tokens", "get", "SN-0003"], &path);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("0x12345678"));

    let out = with_store(&["tokens", "get", "SN-9999"], &path);
    assert_code(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("SN-9999") && err.contains("session_tokens.json"),
        "{err}"
    );
    // A lookup does not reorder the file.
    assert_eq!(fs::read_to_string(&path).unwrap(), STORE);
}

#[test]
fn rm_removes_one_entry_then_reports_it_missing() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(&dir);
    let out = with_store(&["tokens", "rm", "SN-0003"], &path);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("SN-0003"));
    let file: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let keys: Vec<&String> = file.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["SN-0001"]);

    let out = with_store(&["tokens", "rm", "SN-0003"], &path);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("no token cached for serial \"SN-0003\""));
}

#[test]
fn clear_empties_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_file(&dir);
    let out = with_store(&["--json", "tokens", "clear"], &path);
    assert_code(&out, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"removed": 2, "moved_aside": null})
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
    let out = with_store(&["tokens", "list"], &path);
    assert!(stdout(&out).contains("no cached tokens"));
}

#[test]
fn a_corrupt_store_is_bad_input_and_clear_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    let corrupt = r#"{"SN-1": {"token": -1, "git_hash": "x"}}"#;
    fs::write(&path, corrupt).unwrap();
    for args in [
        &["tokens", "list"][..],
        &["tokens", "get", "SN-1"],
        &["tokens", "rm", "SN-1"],
    ] {
        let out = with_store(args, &path);
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains("corrupt"), "{args:?}: {err}");
        assert!(err.contains(path.to_str().unwrap()), "{args:?}: {err}");
        assert!(err.contains("token -1"), "{args:?}: {err}");
        // The way out names this very file, not the default store.
        assert!(
            err.contains(&format!("ulogger tokens clear --store {}", path.display())),
            "{args:?}: {err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), corrupt);
    }

    let out = with_store(&["--json", "tokens", "clear"], &path);
    assert_code(&out, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let moved = PathBuf::from(value["moved_aside"].as_str().unwrap());
    assert_eq!(fs::read_to_string(&moved).unwrap(), corrupt);
    assert!(moved
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("session_tokens.json.corrupt-"));
    assert_code(&with_store(&["tokens", "list"], &path), 0);
}

#[test]
fn the_default_store_is_under_ulogger_home() {
    let dir = tempfile::tempdir().unwrap();
    store_file(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["--json", "tokens", "get", "SN-0003"])
        .env("ULOGGER_HOME", dir.path())
        .output()
        .unwrap();
    assert_code(&out, 0);
    assert!(stdout(&out).contains("305419896"));

    let out = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(["tokens", "list"])
        .env_remove("ULOGGER_HOME")
        .env_remove("HOME")
        .output()
        .unwrap();
    assert_code(&out, 2);
    assert!(stderr(&out).contains("HOME"), "{}", stderr(&out));
}
