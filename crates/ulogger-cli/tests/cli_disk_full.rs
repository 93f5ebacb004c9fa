//! A full disk under the outbox: enqueues fail with a clear error and
//! nothing already queued is harmed. The outbox sits on a 1 MiB tmpfs when
//! this runs as root; otherwise the library's `outbox-disk-full` failpoint
//! makes its writes fail with "no space left" (see cli_crash.rs for how
//! the binary gets its failpoints).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::sandbox::*;
use ulogger_cloud::wire::{build_log, LogHeader};

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_new_records_and_keeps_the_queued_ones() {
    let sandbox = Sandbox::new();
    let disk = sandbox.path("disk");
    let small = SmallDisk::mount(&disk);
    let env = match &small {
        Some(_) => Vec::new(),
        None => vec![("FAILPOINTS", "outbox-disk-full=5*off->return".to_owned())],
    };
    let outbox = disk.join("outbox");
    // 30 logs of 60 KiB: about 1.8 MB, more than the disk holds.
    let files: Vec<PathBuf> = (0..30)
        .map(|i| {
            let data = vec![i as u8; 60 * 1024];
            let log = build_log(LogHeader::new(4).unwrap(), &data).unwrap();
            sandbox.write(&format!("big-{i:02}.bin"), &log)
        })
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = strings(&["--json", "upload", "--broker", "127.0.0.1", "--plaintext"]);
    args.extend(strings(&["--timeout", "1", "--customer-id", "1", "--port"]));
    args.push(port.to_string());
    args.extend(device_args("SN-FULL"));
    args.extend(["--outbox".to_owned(), s(&outbox)]);
    args.extend(files.iter().map(|f| s(f)));

    let run = sandbox.run_with_env(&env, &args);
    assert_ne!(run.code, Some(0), "{}", run.output());
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let full: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["status"].as_str().is_some_and(|s| {
                s.contains("No space left on device") || s.contains("no storage space")
            })
        })
        .collect();
    assert!(!full.is_empty(), "{}", run.output());
    let summary = lines.last().unwrap();
    let queued = summary["queued"].as_u64().unwrap();
    assert!(queued > 0, "some files fit: {summary}");
    assert_eq!(
        summary["failed"].as_u64().unwrap() + queued,
        30,
        "{summary}"
    );

    // What was queued is intact: the outbox opens, nothing is damaged.
    let status = sandbox.run(&strings(&[
        "--json",
        "outbox",
        "status",
        "--outbox",
        &s(&outbox),
    ]));
    let status: serde_json::Value = serde_json::from_str(&status.expect_code(0).stdout).unwrap();
    assert_eq!(status["queued"].as_u64(), Some(queued), "{status}");
    assert_eq!(status["corrupt"], 0, "{status}");
    let opened = ulogger_cloud::Outbox::open(ulogger_cloud::OutboxConfig::new(&outbox)).unwrap();
    assert_eq!(opened.status().corrupt, 0);
    assert_eq!(opened.records().len() as u64, queued);
}
