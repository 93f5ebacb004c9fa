use std::fs;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use super::*;

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn serials(store: &SessionStore) -> Vec<String> {
    store
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.serial)
        .collect()
}

/// The serials in the file, in file order.
fn file_serials(path: &Path) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    value.as_object().unwrap().keys().cloned().collect()
}

/// A file-backed store whose every lookup checks the file (no staleness),
/// for tests of how other writers are noticed.
fn strict(path: &Path) -> SessionStore {
    SessionStore::open(path)
        .unwrap()
        .with_max_staleness(std::time::Duration::ZERO)
}

fn temp_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session_tokens.json");
    (dir, path)
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SessionStore>();
    assert_send_sync::<StoreError>();
};

#[test]
fn lru_order_and_eviction() {
    let store = SessionStore::in_memory().with_capacity(cap(3));
    for (i, s) in ["a", "b", "c", "d"].into_iter().enumerate() {
        store.set(s, i as u32, "g").unwrap();
    }
    assert_eq!(serials(&store), ["b", "c", "d"]);
    assert_eq!(store.get("a", "g").unwrap(), None);
    assert_eq!(store.capacity(), Some(cap(3)));
}

#[test]
fn hit_refreshes_recency() {
    let store = SessionStore::in_memory().with_capacity(cap(3));
    for s in ["a", "b", "c"] {
        store.set(s, 1, "g").unwrap();
    }
    assert_eq!(store.get("a", "g").unwrap(), Some(1));
    store.set("d", 4, "g").unwrap();
    assert_eq!(serials(&store), ["c", "a", "d"]);
}

#[test]
fn replacing_an_entry_at_capacity_evicts_nothing() {
    let store = SessionStore::in_memory().with_capacity(cap(2));
    store.set("a", 1, "g").unwrap();
    store.set("b", 2, "g").unwrap();
    store.set("a", 3, "h").unwrap();
    assert_eq!(serials(&store), ["b", "a"]);
}

#[test]
fn get_entry_does_not_refresh() {
    let store = SessionStore::in_memory();
    store.set("a", 1, "g").unwrap();
    store.set("b", 2, "g").unwrap();
    let entry = store.get_entry("a").unwrap().unwrap();
    assert_eq!(
        entry,
        TokenEntry {
            serial: "a".into(),
            token: 1,
            git_hash: "g".into()
        }
    );
    assert_eq!(serials(&store), ["a", "b"]);
    assert_eq!(store.get_entry("zz").unwrap(), None);
}

#[test]
fn git_hash_miss_keeps_the_entry() {
    let store = SessionStore::default();
    store.set("a", 7, "old").unwrap();
    assert_eq!(store.get("a", "new").unwrap(), None);
    assert_eq!(store.get_entry("a").unwrap().unwrap().git_hash, "old");
    assert_eq!(store.get("a", "old").unwrap(), Some(7));
}

#[test]
fn set_replaces_whatever_the_hash() {
    let store = SessionStore::in_memory();
    store.set("a", 1, "old").unwrap();
    store.set("a", 2, "new").unwrap();
    assert_eq!(store.len().unwrap(), 1);
    assert_eq!(store.get("a", "old").unwrap(), None);
    assert_eq!(store.get("a", "new").unwrap(), Some(2));
}

#[test]
fn remove_clear_len() {
    let store = SessionStore::in_memory();
    assert!(store.is_empty().unwrap());
    store.set("a", 1, "g").unwrap();
    store.set("b", 2, "g").unwrap();
    assert_eq!(store.len().unwrap(), 2);
    assert!(store.remove("a").unwrap());
    assert!(!store.remove("a").unwrap());
    assert_eq!(serials(&store), ["b"]);
    store.clear().unwrap();
    assert!(store.is_empty().unwrap());
}

#[test]
fn with_capacity_trims_existing_entries() {
    let store = SessionStore::in_memory();
    for s in ["a", "b", "c"] {
        store.set(s, 1, "g").unwrap();
    }
    let store = store.with_capacity(cap(1));
    assert_eq!(serials(&store), ["c"]);
}

#[test]
fn debug_never_shows_tokens() {
    let (_dir, path) = temp_store();
    let store = SessionStore::open(&path).unwrap().with_capacity(cap(5));
    store.set("dev", 0xDEAD_BEEF, "g").unwrap();
    let text = format!("{store:?}");
    assert!(
        text.contains("session_tokens.json") && text.contains("len: 1"),
        "{text}"
    );
    let entry = format!("{:?}", store.get_entry("dev").unwrap().unwrap());
    for shown in [&text, &entry] {
        assert!(!shown.contains("3735928559") && !shown.to_lowercase().contains("deadbeef"));
    }
    assert!(entry.contains("redacted"), "{entry}");
}

#[test]
fn default_path_prefers_ulogger_home() {
    let p = default_path_from(Some("/u".into()), Some("/h".into())).unwrap();
    assert_eq!(p, Path::new("/u/session_tokens.json"));
    let p = default_path_from(Some("".into()), Some("/h".into())).unwrap();
    assert_eq!(p, Path::new("/h/.ulogger/session_tokens.json"));
    assert!(matches!(
        default_path_from(None, Some("".into())),
        Err(StoreError::NoHomeDir)
    ));
}

// ---- file-backed ----

#[test]
fn missing_file_opens_empty_and_is_created_on_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/session_tokens.json");
    let store = strict(&path);
    assert!(store.is_empty().unwrap());
    assert!(!path.exists());
    store.set("a", 1, "g").unwrap();
    assert!(path.exists());
    assert_eq!(store.path().as_deref(), Some(path.as_path()));
}

#[test]
fn entries_persist_across_reopen() {
    let (_dir, path) = temp_store();
    {
        let store = strict(&path);
        store.set("a", 1, "g1").unwrap();
        store.set("b", u32::MAX, "g2").unwrap();
        store.set("c", 3, "g3").unwrap();
        assert!(store.remove("c").unwrap());
    }
    let store = strict(&path);
    assert_eq!(store.get("a", "g1").unwrap(), Some(1));
    assert_eq!(store.get("b", "g2").unwrap(), Some(u32::MAX));
    assert_eq!(store.get("c", "g3").unwrap(), None);
    store.clear().unwrap();
    assert!(SessionStore::open(&path).unwrap().is_empty().unwrap());
    assert_eq!(fs::read_to_string(&path).unwrap(), "{}");
}

#[test]
fn file_key_order_is_lru_order() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    for s in ["a", "b", "c"] {
        store.set(s, 1, "g").unwrap();
    }
    assert_eq!(file_serials(&path), ["a", "b", "c"]);
    // The refresh is lazy: not written by the get...
    store.get("a", "g").unwrap();
    assert_eq!(file_serials(&path), ["a", "b", "c"]);
    // ...but with the next mutation.
    store.set("d", 1, "g").unwrap();
    assert_eq!(file_serials(&path), ["b", "c", "a", "d"]);
    // Or by flush.
    store.get("b", "g").unwrap();
    store.flush().unwrap();
    assert_eq!(file_serials(&path), ["c", "a", "d", "b"]);
    assert_eq!(
        serials(&SessionStore::open(&path).unwrap()),
        ["c", "a", "d", "b"]
    );
}

#[test]
fn flush_without_pending_refresh_does_not_write() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    store.set("b", 1, "g").unwrap();
    let before = fs::metadata(&path).unwrap().modified().unwrap();
    store.get("b", "g").unwrap(); // already the most recent
    store.flush().unwrap();
    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ino = fs::metadata(&path).unwrap().ino();
        store.flush().unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
    }
}

#[test]
fn capacity_eviction_persists() {
    let (_dir, path) = temp_store();
    let store = SessionStore::open(&path).unwrap().with_capacity(cap(2));
    for s in ["a", "b", "c"] {
        store.set(s, 1, "g").unwrap();
    }
    assert_eq!(file_serials(&path), ["b", "c"]);
    let reopened = strict(&path);
    assert_eq!(serials(&reopened), ["b", "c"]);
}

#[test]
fn two_stores_on_one_file_see_each_other() {
    let (_dir, path) = temp_store();
    let one = strict(&path);
    let two = strict(&path);
    one.set("a", 1, "g").unwrap();
    assert_eq!(two.get("a", "g").unwrap(), Some(1));
    two.set("b", 2, "g").unwrap();
    one.set("c", 3, "g").unwrap();
    assert_eq!(file_serials(&path), ["a", "b", "c"]);
    assert!(two.remove("a").unwrap());
    assert_eq!(one.get("a", "g").unwrap(), None);
    assert_eq!(serials(&one), ["b", "c"]);
}

#[test]
fn lazy_refresh_is_replayed_over_another_writers_file() {
    let (_dir, path) = temp_store();
    let one = strict(&path);
    let two = strict(&path);
    for s in ["a", "b", "c"] {
        one.set(s, 1, "g").unwrap();
    }
    assert_eq!(one.get("a", "g").unwrap(), Some(1)); // refresh pending in `one`
    two.set("x", 9, "g").unwrap(); // another writer replaces the file
    one.set("y", 2, "g").unwrap();
    assert_eq!(file_serials(&path), ["b", "c", "x", "a", "y"]);
}

#[test]
fn a_file_deleted_behind_our_back_means_empty() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(store.get("a", "g").unwrap(), None);
    store.set("b", 1, "g").unwrap();
    assert_eq!(file_serials(&path), ["b"]);
}

#[test]
fn an_in_place_edit_is_noticed() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    // Same inode, different length.
    fs::write(&path, r#"{"a": {"token": 22, "git_hash": "g"}}"#).unwrap();
    assert_eq!(store.get("a", "g").unwrap(), Some(22));
}

#[test]
fn a_failed_write_leaves_the_store_as_the_file() {
    let (dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    // A directory where the temporary file goes makes the write fail.
    let tmp = dir.path().join("session_tokens.json.tmp-rs");
    fs::create_dir(&tmp).unwrap();
    let err = store.set("b", 2, "g").unwrap_err();
    assert!(
        matches!(&err, StoreError::Io { op: StoreOp::Write, path, .. } if *path == tmp),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("session_tokens.json.tmp-rs"),
        "{err}"
    );
    assert_eq!(serials(&store), ["a"]);
    fs::remove_dir(&tmp).unwrap();
    store.set("b", 2, "g").unwrap();
    assert_eq!(file_serials(&path), ["a", "b"]);
}

// ---- corrupt files ----

const CORRUPT: &[(&str, &str)] = &[
    ("not json", "not JSON"),
    ("[1, 2]", "wrong shape"),
    ("{\"a\": {\"token\": -1, \"git_hash\": \"g\"}}", "token -1"),
    (
        "{\"a\": {\"token\": 4294967296, \"git_hash\": \"g\"}}",
        "token 2^32",
    ),
    (
        "{\"a\": {\"token\": 1, \"git_hash\": \"g\"}, \"b\": {\"tok",
        "truncated",
    ),
    ("{\"a\": {\"git_hash\": \"g\"}}", "missing token"),
    ("", "empty"),
];

#[test]
fn corrupt_files_fail_to_open_and_are_left_untouched() {
    for (text, what) in CORRUPT {
        let (_dir, path) = temp_store();
        fs::write(&path, text).unwrap();
        let err = SessionStore::open(&path).unwrap_err();
        match &err {
            StoreError::Corrupt { path: p, reason } => {
                assert_eq!(p, &path, "{what}");
                assert!(!reason.is_empty(), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        assert!(err.is_corrupt());
        assert!(
            err.to_string().contains("session_tokens.json"),
            "{what}: {err}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), *text, "{what}");
    }
}

#[test]
fn a_file_corrupted_later_is_never_overwritten() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    fs::write(&path, "garbage").unwrap();
    assert!(store.set("b", 2, "g").unwrap_err().is_corrupt());
    assert!(store.get("a", "g").unwrap_err().is_corrupt());
    assert_eq!(fs::read_to_string(&path).unwrap(), "garbage");
}

#[test]
fn open_or_reset_moves_a_corrupt_file_aside() {
    let (dir, path) = temp_store();
    fs::write(&path, "{\"a\": {\"token\": -1, \"git_hash\": \"g\"}}").unwrap();
    let (store, moved) = SessionStore::open_or_reset(&path).unwrap();
    let moved = moved.expect("a file was moved aside");
    assert_eq!(moved.parent(), Some(dir.path()));
    let name = moved.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("session_tokens.json.corrupt-"), "{name}");
    assert_eq!(
        fs::read_to_string(&moved).unwrap(),
        "{\"a\": {\"token\": -1, \"git_hash\": \"g\"}}"
    );
    assert!(!path.exists());
    assert!(store.is_empty().unwrap());
    store.set("a", 1, "g").unwrap();

    // Again in the same second: a second, distinct name.
    fs::write(&path, "nope").unwrap();
    let (_, again) = SessionStore::open_or_reset(&path).unwrap();
    let again = again.unwrap();
    assert_ne!(again, moved);
    assert_eq!(fs::read_to_string(&again).unwrap(), "nope");

    // A valid file is kept.
    let (store, none) = SessionStore::open_or_reset(&path).unwrap();
    assert_eq!(none, None);
    store.set("b", 1, "g").unwrap();
    let (store, none) = SessionStore::open_or_reset(&path).unwrap();
    assert_eq!(none, None);
    assert_eq!(serials(&store), ["b"]);
}

#[cfg(unix)]
#[test]
fn file_is_0600_and_created_directory_0700() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join(".ulogger");
    let path = home.join("session_tokens.json");
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&home.join("session_tokens.json.lock")), 0o600);
    // Still 0600 after a rewrite that reuses a stale, permissive temp file.
    let tmp = home.join("session_tokens.json.tmp-rs");
    fs::write(&tmp, "").unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
    store.set("b", 1, "g").unwrap();
    assert_eq!(mode(&path), 0o600);
    assert!(!tmp.exists());
}

// ---- compatibility with the Python SDK ----

/// What `json.dump(OrderedDict(...), fh, indent=2)` in the Python SDK's
/// `SessionStore._save_locked` writes (no trailing newline).
const PYTHON_FILE: &str = r#"{
  "SN-0003": {
    "token": 305419896,
    "git_hash": "1a2b3c4"
  },
  "SN-0001": {
    "token": 4294967295,
    "git_hash": "deadbee"
  },
  "caf\u00e9-2": {
    "token": 0,
    "git_hash": ""
  }
}"#;

#[test]
fn loads_a_python_sdk_file_in_order() {
    let (_dir, path) = temp_store();
    fs::write(&path, PYTHON_FILE).unwrap();
    let store = strict(&path);
    let entries = store.entries().unwrap();
    let got: Vec<(&str, u32, &str)> = entries
        .iter()
        .map(|e| (e.serial.as_str(), e.token, e.git_hash.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("SN-0003", 305_419_896, "1a2b3c4"),
            ("SN-0001", u32::MAX, "deadbee"),
            ("café-2", 0, ""),
        ]
    );
}

#[test]
fn writes_what_the_python_sdk_writes() {
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("SN-0003", 305_419_896, "1a2b3c4").unwrap();
    store.set("SN-0001", u32::MAX, "deadbee").unwrap();
    store.set("café-2", 0, "").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), PYTHON_FILE);
    // And it has the documented shape.
    let value: serde_json::Value = serde_json::from_str(PYTHON_FILE).unwrap();
    for (_, entry) in value.as_object().unwrap() {
        let entry = entry.as_object().unwrap();
        assert_eq!(entry.len(), 2);
        assert!(entry["token"].as_u64().is_some());
        assert!(entry["git_hash"].is_string());
    }
}

#[test]
fn unknown_fields_are_tolerated() {
    let (_dir, path) = temp_store();
    fs::write(
        &path,
        r#"{"a": {"token": 5, "git_hash": "g", "issued_at": 1700000000, "meta": {"x": [1]}}}"#,
    )
    .unwrap();
    let store = strict(&path);
    assert_eq!(store.get("a", "g").unwrap(), Some(5));
}

// ---- the incremental write ----

/// What a full serialisation of the store's current map gives.
fn full_serialisation(store: &SessionStore) -> String {
    let mut out = Vec::new();
    format::write(&mut out, &store.lock_state().map);
    String::from_utf8(out).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Set(u8, u32),
    Get(u8),
    Remove(u8),
    Clear,
    Flush,
    OtherWriter(u8),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        6 => (0u8..12, any::<u32>()).prop_map(|(s, t)| Op::Set(s, t)),
        2 => (0u8..12).prop_map(Op::Get),
        1 => (0u8..12).prop_map(Op::Remove),
        1 => Just(Op::Clear),
        1 => Just(Op::Flush),
        1 => (0u8..12).prop_map(Op::OtherWriter),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Appending to the last written bytes must always equal writing the
    /// whole map, whatever came before (touches, removals, evictions,
    /// another writer's file).
    #[test]
    fn the_file_always_equals_a_full_serialisation(
        ops in proptest::collection::vec(op(), 1..40),
        capacity in proptest::option::of(1usize..8),
    ) {
        let (_dir, path) = temp_store();
        let mut store = strict(&path);
        if let Some(c) = capacity {
            store = store.with_capacity(cap(c));
        }
        let other = strict(&path);
        for op in ops {
            let serial = |s: u8| format!("S{s}");
            match op {
                Op::Set(s, t) => store.set(&serial(s), t, "g").unwrap(),
                Op::Get(s) => drop(store.get(&serial(s), "g").unwrap()),
                Op::Remove(s) => drop(store.remove(&serial(s)).unwrap()),
                Op::Clear => store.clear().unwrap(),
                Op::Flush => store.flush().unwrap(),
                Op::OtherWriter(s) => other.set(&serial(s), 7, "h").unwrap(),
            }
            store.len().unwrap(); // picks up the other writer's file
            // Dirty: refreshes or a capacity trim not written yet, by design.
            if path.exists() && !store.lock_state().backing.as_ref().unwrap().dirty {
                let on_disk = fs::read_to_string(&path).unwrap();
                proptest::prop_assert_eq!(on_disk, full_serialisation(&store));
            }
        }
    }
}

// ---- group commit ----

/// Blocks until `n` changes wait in the queue (spinning on the queue's
/// state, not sleeping).
fn wait_for_queued(store: &SessionStore, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.lock_queue().waiting.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} changes never queued"
        );
        std::thread::yield_now();
    }
}

fn writes(store: &SessionStore) -> u64 {
    store.lock_state().backing.as_ref().unwrap().writes
}

/// The token of `serial` in the file as it is on disk now, read through a
/// handle of its own.
fn token_on_disk(path: &Path, serial: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    value
        .get(serial)
        .map(|entry| entry["token"].as_u64().unwrap())
}

#[test]
fn concurrent_sets_share_one_durable_write() {
    const SETTERS: u32 = 64;
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("existing", 1, "g").unwrap();
    let before = writes(&store);
    std::thread::scope(|scope| {
        // Hold the store while the setters arrive, as a slow disk would:
        // every one of them must end up in the same write.
        let held = store.lock_state();
        let setters: Vec<_> = (0..SETTERS)
            .map(|n| {
                let (store, path) = (&store, &path);
                scope.spawn(move || {
                    let serial = format!("SN-{n:03}");
                    store.set(&serial, 1000 + n, "g").unwrap();
                    // Durable when `set` returns: on disk for any reader.
                    assert_eq!(
                        token_on_disk(path, &serial),
                        Some(u64::from(1000 + n)),
                        "{serial} returned before it was on disk"
                    );
                })
            })
            .collect();
        wait_for_queued(&store, SETTERS as usize);
        drop(held);
        for setter in setters {
            setter.join().unwrap();
        }
    });
    assert_eq!(writes(&store), before + 1, "the setters were not grouped");
    let bytes = fs::read(&path).unwrap();
    let parsed = format::parse(&bytes).unwrap();
    assert_eq!(parsed.len(), 1 + SETTERS as usize);
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        full_serialisation(&store),
        "not the Python SDK's bytes"
    );
    for n in 0..SETTERS {
        assert_eq!(
            token_on_disk(&path, &format!("SN-{n:03}")),
            Some(u64::from(1000 + n))
        );
    }
}

#[test]
fn many_concurrent_setters_lose_nothing_and_keep_the_python_file() {
    const SETTERS: u32 = 32;
    const EACH: u32 = 20;
    let (_dir, path) = temp_store();
    let store = SessionStore::open(&path)
        .unwrap()
        .with_capacity(cap(10_000));
    std::thread::scope(|scope| {
        for t in 0..SETTERS {
            let (store, path) = (&store, &path);
            scope.spawn(move || {
                for n in 0..EACH {
                    let serial = format!("T{t:02}-{n:03}");
                    if n % 3 == 0 {
                        // Lookups and removals mixed in.
                        assert_eq!(store.get(&serial, "g").unwrap(), None);
                        assert!(!store.remove(&serial).unwrap());
                    }
                    store.set(&serial, t * 1000 + n, "g").unwrap();
                    assert_eq!(token_on_disk(path, &serial), Some(u64::from(t * 1000 + n)));
                }
            });
        }
    });
    let all = SETTERS * EACH;
    assert!(writes(&store) <= u64::from(all));
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text, full_serialisation(&store));
    let reopened = strict(&path);
    assert_eq!(reopened.len().unwrap(), all as usize);
    for t in 0..SETTERS {
        for n in 0..EACH {
            assert_eq!(
                reopened.get(&format!("T{t:02}-{n:03}"), "g").unwrap(),
                Some(t * 1000 + n)
            );
        }
    }
}

#[test]
fn a_failed_group_write_fails_every_setter_in_it() {
    const SETTERS: u32 = 8;
    let (dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    let tmp = dir.path().join("session_tokens.json.tmp-rs");
    fs::create_dir(&tmp).unwrap();
    std::thread::scope(|scope| {
        let held = store.lock_state();
        let setters: Vec<_> = (0..SETTERS)
            .map(|n| {
                let store = &store;
                scope.spawn(move || store.set(&format!("SN-{n}"), n, "g"))
            })
            .collect();
        wait_for_queued(&store, SETTERS as usize);
        drop(held);
        for setter in setters {
            let err = setter.join().unwrap().unwrap_err();
            assert!(
                matches!(&err, StoreError::Io { op: StoreOp::Write, path, .. } if *path == tmp),
                "{err:?}"
            );
            assert!(err.to_string().contains("tmp-rs"), "{err}");
        }
    });
    assert_eq!(serials(&store), ["a"]);
    assert_eq!(file_serials(&path), ["a"]);
    fs::remove_dir(&tmp).unwrap();
    store.set("b", 2, "g").unwrap();
    assert_eq!(file_serials(&path), ["a", "b"]);
}

#[test]
fn in_memory_sets_from_many_threads() {
    let store = SessionStore::in_memory();
    std::thread::scope(|scope| {
        for t in 0..8u32 {
            let store = &store;
            scope.spawn(move || {
                for n in 0..100 {
                    store.set(&format!("{t}-{n}"), n, "g").unwrap();
                }
            });
        }
    });
    assert_eq!(store.len().unwrap(), 800);
    assert!(store.remove("0-0").unwrap());
    assert!(!store.remove("0-0").unwrap());
}

// ---- noticing other writers, and what a lookup remembers ----

#[test]
fn a_replaced_entry_is_seen_by_the_next_lookup() {
    let (_dir, path) = temp_store();
    let one = strict(&path);
    let two = strict(&path);
    one.set("a", 1, "g").unwrap();
    assert_eq!(two.get("a", "g").unwrap(), Some(1));
    one.set("a", 2, "g").unwrap();
    assert_eq!(two.get("a", "g").unwrap(), Some(2));
    // The Python SDK's way: write `<file>.tmp`, then `os.replace`.
    let python_tmp = path.with_file_name("session_tokens.json.tmp");
    fs::write(&python_tmp, r#"{"a": {"token": 3, "git_hash": "g"}}"#).unwrap();
    fs::rename(&python_tmp, &path).unwrap();
    assert_eq!(two.get("a", "g").unwrap(), Some(3));
}

#[cfg(unix)]
#[test]
fn a_file_with_another_hard_link_is_still_checked() {
    let (dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    let other = strict(&path);
    assert_eq!(other.get("a", "g").unwrap(), Some(1));
    // A backup tool's hard link: replacing the file no longer unlinks the
    // inode `other` holds.
    fs::hard_link(&path, dir.path().join("backup.json")).unwrap();
    store.set("a", 2, "g").unwrap();
    fs::hard_link(&path, dir.path().join("backup2.json")).unwrap();
    assert_eq!(other.get("a", "g").unwrap(), Some(2));
    store.set("a", 3, "g").unwrap();
    assert_eq!(other.get("a", "g").unwrap(), Some(3));
}

/// A file of `n` entries `SN-000000`... written in one go.
fn populated(path: &Path, n: u32) {
    let mut map = LruMap::default();
    for i in 0..n {
        map.insert(
            format!("SN-{i:06}"),
            Record {
                token: i,
                git_hash: "g".into(),
            },
        );
    }
    let mut bytes = Vec::new();
    format::write(&mut bytes, &map);
    fs::write(path, bytes).unwrap();
}

fn touched(store: &SessionStore) -> usize {
    store.lock_state().backing.as_ref().unwrap().touched.len()
}

#[test]
fn lookups_remember_a_bounded_number_of_refreshes() {
    const ENTRIES: u32 = 3 * TOUCHED_MAX as u32;
    let (_dir, path) = temp_store();
    populated(&path, ENTRIES);
    let store = strict(&path);
    // Every serial looked up once, from the oldest: each is a refresh.
    for i in 0..ENTRIES {
        assert_eq!(store.get(&format!("SN-{i:06}"), "g").unwrap(), Some(i));
        assert!(touched(&store) <= TOUCHED_MAX);
    }
    assert_eq!(touched(&store), TOUCHED_MAX);
    // Looking a remembered serial up again adds nothing.
    store.get(&format!("SN-{:06}", ENTRIES - 10), "g").unwrap();
    assert_eq!(touched(&store), TOUCHED_MAX);

    // Another process replaces the file: the remembered (most recent)
    // refreshes are replayed onto it, in order, before our next write.
    let other = strict(&path);
    other.set("NEW", 1, "g").unwrap();
    store.set("MINE", 2, "g").unwrap();
    let on_disk = file_serials(&path);
    assert_eq!(on_disk.len(), ENTRIES as usize + 2);
    let mut expected: Vec<String> = (ENTRIES - TOUCHED_MAX as u32..ENTRIES)
        .filter(|&i| i != ENTRIES - 10)
        .map(|i| format!("SN-{i:06}"))
        .collect();
    expected.push(format!("SN-{:06}", ENTRIES - 10));
    expected.push("MINE".into());
    assert_eq!(on_disk[on_disk.len() - expected.len()..], expected[..]);
    assert_eq!(touched(&store), 0, "a write forgets the refreshes");
}

#[test]
fn with_a_capacity_lookups_remember_at_most_that_many() {
    let (_dir, path) = temp_store();
    populated(&path, 500);
    let store = SessionStore::open(&path).unwrap().with_capacity(cap(100));
    for i in 400..500 {
        store.get(&format!("SN-{i:06}"), "g").unwrap();
    }
    for i in (400..500).rev() {
        store.get(&format!("SN-{i:06}"), "g").unwrap();
    }
    assert!(touched(&store) <= 100, "{}", touched(&store));
}

#[test]
fn with_max_staleness_a_hit_may_be_stale_for_that_long_and_no_longer() {
    const WINDOW: std::time::Duration = std::time::Duration::from_millis(30);
    let (_dir, path) = temp_store();
    let writer = strict(&path);
    writer.set("a", 1, "g").unwrap();
    let reader = SessionStore::open(&path)
        .unwrap()
        .with_max_staleness(WINDOW);
    assert_eq!(reader.get("a", "g").unwrap(), Some(1));
    let checked = std::time::Instant::now();
    writer.set("a", 2, "g").unwrap();
    writer.set("b", 3, "g").unwrap();
    // The reader's next check of the file is after this...
    let before_check = std::time::Instant::now();
    // A miss always checks the file.
    assert_eq!(reader.get("b", "g").unwrap(), Some(3));
    // So did that miss: `a` is current again.
    assert_eq!(reader.get("a", "g").unwrap(), Some(2));
    // ... and before this.
    let checked_again = std::time::Instant::now();
    writer.set("a", 4, "g").unwrap();
    let seen = reader.get("a", "g").unwrap();
    if before_check.elapsed() < WINDOW {
        assert_eq!(seen, Some(2), "a hit inside the window checked the file");
    }
    // Once the window has passed, the next hit checks.
    while checked_again.elapsed() < WINDOW {
        std::thread::yield_now();
    }
    assert_eq!(reader.get("a", "g").unwrap(), Some(4));
    // Its own writes are always seen; other methods always check.
    reader.set("a", 5, "g").unwrap();
    assert_eq!(reader.get("a", "g").unwrap(), Some(5));
    writer.set("c", 6, "g").unwrap();
    assert_eq!(reader.len().unwrap(), 3);
    assert!(checked.elapsed() >= WINDOW);
}

#[test]
fn by_default_a_hit_may_be_stale_for_a_millisecond_and_a_miss_never() {
    let (_dir, path) = temp_store();
    let writer = SessionStore::open(&path).unwrap();
    writer.set("a", 1, "g").unwrap();
    let reader = SessionStore::open(&path).unwrap();
    assert_eq!(reader.get("a", "g").unwrap(), Some(1));
    writer.set("a", 2, "g").unwrap();
    writer.set("b", 3, "g").unwrap();
    // Before the reader's last check of the file, which the miss below
    // makes: the bound runs from that check, so from after this.
    let checked = std::time::Instant::now();
    // A miss checks the file whatever the bound, and finds both writes.
    assert_eq!(reader.get("b", "g").unwrap(), Some(3));
    assert_eq!(reader.get("a", "g").unwrap(), Some(2));
    // After it: once the bound has passed from here, it has passed from
    // the reader's last check too.
    let after = std::time::Instant::now();
    // The Python SDK's way (no sync, so well inside the bound): write
    // `<file>.tmp`, then `os.replace`.
    let python_tmp = path.with_file_name("session_tokens.json.tmp");
    fs::write(&python_tmp, r#"{"a": {"token": 4, "git_hash": "g"}}"#).unwrap();
    fs::rename(&python_tmp, &path).unwrap();
    let seen = reader.get("a", "g").unwrap();
    if checked.elapsed() < DEFAULT_MAX_STALENESS {
        // The reader checked after `checked`: its bound has not passed.
        assert_eq!(seen, Some(2), "a hit inside the bound checked the file");
    }
    while after.elapsed() < DEFAULT_MAX_STALENESS {
        std::thread::yield_now();
    }
    assert_eq!(reader.get("a", "g").unwrap(), Some(4));
}

#[test]
fn max_staleness_extremes_do_not_panic() {
    let (_dir, path) = temp_store();
    let writer = strict(&path);
    writer.set("a", 1, "g").unwrap();
    let never = SessionStore::open(&path)
        .unwrap()
        .with_max_staleness(std::time::Duration::MAX);
    assert_eq!(never.get("a", "g").unwrap(), Some(1));
    writer.set("a", 2, "g").unwrap();
    assert_eq!(
        never.get("a", "g").unwrap(),
        Some(1),
        "Duration::MAX: hits never check"
    );
    assert_eq!(never.get("a", "other").unwrap(), None);
    // The mismatch checked the file.
    assert_eq!(never.get("a", "g").unwrap(), Some(2));
    let exact = SessionStore::open(&path)
        .unwrap()
        .with_max_staleness(std::time::Duration::ZERO);
    writer.set("a", 3, "g").unwrap();
    assert_eq!(exact.get("a", "g").unwrap(), Some(3));
    assert_eq!(
        SessionStore::in_memory()
            .with_max_staleness(std::time::Duration::MAX)
            .get("a", "g")
            .unwrap(),
        None
    );
}

#[test]
fn a_writer_that_panics_strands_no_caller() {
    const SETTERS: u32 = 6;
    let (_dir, path) = temp_store();
    let store = strict(&path);
    store.set("a", 1, "g").unwrap();
    std::thread::scope(|scope| {
        let mut held = store.lock_state();
        held.backing.as_mut().unwrap().panic_on_write = true;
        let setters: Vec<_> = (0..SETTERS)
            .map(|n| {
                let store = &store;
                scope.spawn(move || store.set(&format!("SN-{n}"), n, "g"))
            })
            .collect();
        wait_for_queued(&store, SETTERS as usize);
        drop(held);
        let mut panicked = 0;
        for setter in setters {
            match setter.join() {
                Err(_) => panicked += 1,
                Ok(result) => {
                    let err = result.unwrap_err();
                    assert!(err.to_string().contains("panicked"), "{err}");
                }
            }
        }
        assert_eq!(panicked, 1, "only the writer panics");
    });
    // The store goes on: it reloads the file and writes again.
    assert_eq!(serials(&store), ["a"]);
    store.set("b", 2, "g").unwrap();
    assert_eq!(file_serials(&path), ["a", "b"]);
}
