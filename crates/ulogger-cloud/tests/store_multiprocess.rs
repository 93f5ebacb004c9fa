//! Several processes share one session-store file: none loses another's
//! entries, and a reader never sees a torn or invalid file.
//!
//! The worker processes are this test binary itself, re-run with
//! `--exact mp_worker` and the job in environment variables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulogger_cloud::SessionStore;

const ROLE: &str = "ULOGGER_TEST_STORE_ROLE";
const FILE: &str = "ULOGGER_TEST_STORE_FILE";
const INDEX: &str = "ULOGGER_TEST_STORE_INDEX";
const STOP: &str = "ULOGGER_TEST_STORE_STOP";

const WRITERS: u32 = 8;
const PER_WRITER: u32 = 50;

fn serial(writer: u32, n: u32) -> String {
    format!("w{writer}-sn{n:03}")
}

fn token(writer: u32, n: u32) -> u32 {
    writer * 1_000_000 + n
}

/// The worker: does nothing unless started by a test below.
#[test]
fn mp_worker() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let file = PathBuf::from(std::env::var(FILE).unwrap());
    match role.as_str() {
        "writer" => {
            let me: u32 = std::env::var(INDEX).unwrap().parse().unwrap();
            let store = SessionStore::open(&file).unwrap();
            for n in 0..PER_WRITER {
                store.set(&serial(me, n), token(me, n), "git-1").unwrap();
            }
            for n in 0..PER_WRITER {
                assert_eq!(
                    store.get(&serial(me, n), "git-1").unwrap(),
                    Some(token(me, n))
                );
            }
        }
        "setter" => {
            // Replaces `shared` and adds `w<INDEX>` (token INDEX), then exits.
            let token: u32 = std::env::var(INDEX).unwrap().parse().unwrap();
            let store = SessionStore::open(&file).unwrap();
            store.set("shared", token, "git-1").unwrap();
            store.set(&format!("w{token}"), token, "git-1").unwrap();
        }
        "reader" => {
            let stop = PathBuf::from(std::env::var(STOP).unwrap());
            let reads = read_until(&file, &stop);
            println!("reads={reads}");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Parses the file over and over until `stop` exists; panics on any file
/// that is not a complete cache file, or that has fewer entries than an
/// earlier one (writers only add).
fn read_until(file: &Path, stop: &Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reads = 0u64;
    let mut seen = 0usize;
    while !stop.exists() {
        assert!(Instant::now() < deadline, "reader never told to stop");
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read: {e}"),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("torn file ({e}): {:?}", String::from_utf8_lossy(&bytes)));
        let map = value.as_object().expect("top level is an object");
        for (serial, entry) in map {
            let token = entry["token"].as_u64().expect("token");
            assert!(u32::try_from(token).is_ok(), "{serial}: {token}");
            assert_eq!(entry["git_hash"], "git-1");
        }
        assert!(
            map.len() >= seen,
            "entries went from {seen} to {}",
            map.len()
        );
        seen = map.len();
        // Every few reads, the store's own loader too.
        if reads.is_multiple_of(16) {
            SessionStore::open(file).unwrap();
        }
        reads += 1;
    }
    reads
}

fn spawn(role: &str, file: &Path, index: u32, stop: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "mp_worker", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(FILE, file)
        .env(INDEX, index.to_string())
        .env(STOP, stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn concurrent_processes_lose_no_entry_and_never_see_a_torn_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens").join("session_tokens.json");
    let stop = dir.path().join("stop");

    let reader = spawn("reader", &file, 0, &stop);
    let writers: Vec<Child> = (0..WRITERS)
        .map(|i| spawn("writer", &file, i, &stop))
        .collect();
    for (i, writer) in writers.into_iter().enumerate() {
        assert_success(&format!("writer {i}"), &writer.wait_with_output().unwrap());
    }
    std::fs::write(&stop, "").unwrap();
    let reader = reader.wait_with_output().unwrap();
    assert_success("reader", &reader);
    let stdout = String::from_utf8_lossy(&reader.stdout);
    let reads: u64 = stdout
        .lines()
        // libtest may print `test mp_worker ... ` on the same line.
        .find_map(|l| l.split("reads=").nth(1))
        .unwrap_or_else(|| panic!("reader did not report: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    assert!(reads > 0, "the reader never read the file");
    eprintln!("the reader parsed the file {reads} times");

    let store = SessionStore::open(&file).unwrap();
    assert_eq!(store.len().unwrap(), (WRITERS * PER_WRITER) as usize);
    for w in 0..WRITERS {
        for n in 0..PER_WRITER {
            assert_eq!(
                store.get(&serial(w, n), "git-1").unwrap(),
                Some(token(w, n))
            );
        }
    }
}

#[test]
fn threads_sharing_one_store_and_separate_stores_lose_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session_tokens.json");
    let shared = Arc::new(SessionStore::open(&file).unwrap());
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let shared = Arc::clone(&shared);
            let file = file.clone();
            scope.spawn(move || {
                // Half the threads share one value, half open their own.
                let own;
                let store = if t % 2 == 0 {
                    &*shared
                } else {
                    own = SessionStore::open(&file).unwrap();
                    &own
                };
                for n in 0..25 {
                    store.set(&serial(t, n), token(t, n), "git-1").unwrap();
                }
            });
        }
    });
    let store = SessionStore::open(&file).unwrap();
    assert_eq!(store.len().unwrap(), 100);
    assert_eq!(shared.len().unwrap(), 100);
}

/// With no staleness allowed, a lookup after another process's `set`
/// returned sees it (one `fstat` of the file it last read tells it the
/// file was replaced). Each round, our copy of `shared` is cached and
/// current before the other process replaces it. (By default a hit may
/// rely on a check up to `DEFAULT_MAX_STALENESS` old; the unit tests
/// cover that bound.)
#[test]
fn a_lookup_sees_another_processs_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session_tokens.json");
    let stop = dir.path().join("stop");
    let store = SessionStore::open(&file)
        .unwrap()
        .with_max_staleness(std::time::Duration::ZERO);
    store.set("shared", 0, "git-1").unwrap();
    for round in 1..=5u32 {
        assert_eq!(store.get("shared", "git-1").unwrap(), Some(round - 1));
        let setter = spawn("setter", &file, round, &stop);
        assert_success("setter", &setter.wait_with_output().unwrap());
        // No wait, no reopen: the very next lookups.
        assert_eq!(store.get("shared", "git-1").unwrap(), Some(round));
        assert_eq!(
            store.get(&format!("w{round}"), "git-1").unwrap(),
            Some(round)
        );
    }
    assert_eq!(store.len().unwrap(), 6);
}
