//! The power-cut filesystem mounted for real: what the kernel sends
//! through FUSE follows the model's rules.
#![allow(clippy::unwrap_used)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use ulogger_powercut::{mount_or_skip, Durability};

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn only_synced_bytes_and_synced_entries_survive_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_or_skip(dir.path(), Durability::Strict) else {
        return;
    };
    let root = mount.path();

    // Durable: a directory made the way decision 18 says, a file synced
    // in it, the directory synced.
    fs::create_dir(root.join("kept")).unwrap();
    sync_dir(root);
    let mut file = File::create(root.join("kept/a")).unwrap();
    file.write_all(b"synced").unwrap();
    file.sync_all().unwrap();
    file.write_all(b" and not").unwrap();
    sync_dir(&root.join("kept"));
    drop(file);
    assert_eq!(fs::read(root.join("kept/a")).unwrap(), b"synced and not");

    // Not durable: a synced file in a directory whose entry was never
    // synced, and a file never synced at all.
    fs::create_dir(root.join("lost")).unwrap();
    let mut lost = File::create(root.join("lost/b")).unwrap();
    lost.write_all(b"x").unwrap();
    lost.sync_all().unwrap();
    sync_dir(&root.join("lost"));
    drop(lost);
    fs::write(root.join("kept/c"), b"unsynced").unwrap();

    // Renamed over, without the directory sync: the old name stays.
    fs::write(root.join("kept/tmp"), b"new").unwrap();
    File::open(root.join("kept/tmp"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs::rename(root.join("kept/tmp"), root.join("kept/a")).unwrap();

    // A handle opened before the cut is dead after it.
    let mut stale = OpenOptions::new()
        .append(true)
        .open(root.join("kept/a"))
        .unwrap();

    mount.power_cut();
    assert_eq!(names(root), ["kept"]);
    // `c` and `tmp` were made after `kept` was last synced.
    assert_eq!(names(&root.join("kept")), ["a"]);
    let mut text = String::new();
    File::open(root.join("kept/a"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "synced");
    assert!(stale.write_all(b"late").is_err() || stale.sync_all().is_err());
    drop(stale);
    assert_eq!(fs::read(root.join("kept/a")).unwrap(), b"synced");

    mount.unmount().unwrap();
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn ordered_mode_keeps_entries_made_before_any_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_or_skip(dir.path(), Durability::Ordered) else {
        return;
    };
    let root = mount.path();
    fs::create_dir(root.join("d")).unwrap();
    let mut file = File::create(root.join("d/a")).unwrap();
    file.write_all(b"one").unwrap();
    file.sync_data().unwrap();
    fs::write(root.join("d/b"), b"two").unwrap();
    drop(file);
    mount.power_cut();
    assert_eq!(names(&root.join("d")), ["a"]);
    assert_eq!(fs::read(root.join("d/a")).unwrap(), b"one");

    // Other processes' requests are counted: the programs under test.
    // (This one's are not, except those the kernel sends from its own
    // threads, such as a release after close.)
    let before = mount.operations();
    assert!(before < 5, "{before}");
    let cat = std::process::Command::new("cat")
        .arg(root.join("d/a"))
        .output()
        .unwrap();
    assert_eq!(cat.stdout, b"one");
    assert!(mount.operations() > before);
}
