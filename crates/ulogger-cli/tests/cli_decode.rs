//! `ulogger decode` (and `inspect` of a core dump) through the built
//! binary, on logs written by the C firmware stand-in of ulogger-wire's
//! tests (`../ulogger-wire/tests/fixtures/agent.c`), compiled here with
//! the machine's C compiler; under CI a missing compiler fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use support::{assert_code, stderr, stdout};
use ulogger_cloud::wire::{CoreDumpHeader, DeviceInfo};

struct Agent {
    elf: PathBuf,
    logs: PathBuf,
    oracle: Vec<String>,
}

fn agent() -> Option<&'static Agent> {
    static AGENT: OnceLock<Option<Agent>> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("cli-decode-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("logs")).unwrap();
            let source = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../ulogger-wire/tests/fixtures/agent.c");
            let elf = dir.join("agent.elf");
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            // -no-pie: the addresses the program captures are the ELF's.
            let built = Command::new(&cc)
                .args(["-std=gnu11", "-O1", "-w", "-no-pie", "-fno-pie"])
                .arg(&source)
                .arg("-o")
                .arg(&elf)
                .output();
            match built {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    assert_ne!(
                        std::env::var("CI").as_deref(),
                        Ok("true"),
                        "no C compiler ({cc}): CI must run the decode tests"
                    );
                    eprintln!("skipped: no C compiler ({cc})");
                    return None;
                }
                Err(e) => panic!("cannot run {cc}: {e}"),
                Ok(out) => assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
            let run = Command::new(&elf).arg(dir.join("logs")).output().unwrap();
            assert!(run.status.success());
            let oracle = String::from_utf8(run.stdout)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect();
            Some(Agent {
                elf,
                logs: dir.join("logs"),
                oracle,
            })
        })
        .as_ref()
}

fn ulogger(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(args)
        .env("ULOGGER_LOG", "off")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn records_print_one_line_each_as_the_firmware_printed_them() {
    let Some(agent) = agent() else { return };
    let log = agent.logs.join("v4.bin");
    let out = ulogger(&["decode", "--elf", s(&agent.elf), s(&log)]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let oracle: Vec<&str> = agent
        .oracle
        .iter()
        .filter_map(|l| l.strip_prefix("M "))
        .take(lines.len())
        .collect();
    assert_eq!(lines.len(), 20, "{text}");
    for (line, want) in lines.iter().zip(&oracle) {
        let (level, rest) = want.split_once(' ').unwrap();
        let (module, message) = rest.split_once(' ').unwrap();
        assert!(line.starts_with("2023-11-14T22:1"), "{line}");
        assert!(
            line.contains(level) && line.ends_with(message),
            "{line} vs {want}"
        );
        if module != "-" {
            assert!(line.contains(module), "{line}");
        }
    }
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn json_lines_carry_typed_values_and_problems_by_kind() {
    let Some(agent) = agent() else { return };
    let out = ulogger(&[
        "--json",
        "decode",
        "--elf",
        s(&agent.elf),
        "--level",
        "metric",
        s(&agent.logs.join("v4.bin")),
    ]);
    assert_code(&out, 0);
    let records: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let metrics: Vec<(String, serde_json::Value)> = records
        .iter()
        .map(|r| {
            (
                r["metric"]["name"].as_str().unwrap().to_string(),
                r["metric"]["value"].clone(),
            )
        })
        .collect();
    assert_eq!(metrics.len(), 5);
    assert_eq!(metrics[0], ("temperature".into(), serde_json::json!(-12)));
    assert_eq!(metrics[2], ("voltage".into(), serde_json::json!(3.3)));
    assert!(
        metrics[3].1.is_f64(),
        "a double stays a float: {:?}",
        metrics[3]
    );
    assert_eq!(metrics[4], ("heartbeat".into(), serde_json::json!(1)));
    assert_eq!(records[0]["time"]["kind"], "wall");
    assert_eq!(records[0]["level"], "METRIC");

    let out = ulogger(&[
        "--json",
        "decode",
        "--elf",
        s(&agent.elf),
        s(&agent.logs.join("errors.bin")),
    ]);
    assert_code(&out, 0);
    let kinds: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .flat_map(|r| {
            r["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["kind"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for kind in [
        "unknown_format_address",
        "too_few_arguments",
        "type_mismatch",
        "frame_truncated",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} not in {kinds:?}");
    }
    assert!(stderr(&out).contains("records have problems"));
}

#[test]
fn level_and_module_filters() {
    let Some(agent) = agent() else { return };
    let log = agent.logs.join("v4.bin");
    let out = ulogger(&[
        "decode",
        "--elf",
        s(&agent.elf),
        "--level",
        "warning",
        s(&log),
    ]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.lines().all(|l| ["WARNING", "ERROR", "CRITICAL"]
        .iter()
        .any(|w| l.contains(w))));
    let out = ulogger(&[
        "decode",
        "--elf",
        s(&agent.elf),
        "--module",
        "sensor",
        "--module",
        "7",
        s(&log),
    ]);
    let text = stdout(&out);
    assert!(text.lines().count() >= 8);
    assert!(
        text.lines()
            .all(|l| l.contains("SENSOR") || l.contains("RADIO")),
        "{text}"
    );
    let out = ulogger(&["decode", "--elf", s(&agent.elf), "--level", "loud", s(&log)]);
    assert_code(&out, 2);
}

#[test]
fn v1_logs_and_a_forced_frame_format() {
    let Some(agent) = agent() else { return };
    let log = agent.logs.join("v1.bin");
    let out = ulogger(&["decode", "--elf", s(&agent.elf), s(&log)]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().starts_with("#0 "), "{text}");
    assert!(text.contains("old agent two"));
    // Read as 1.1+ frames the same bytes make no sense, and say so.
    let out = ulogger(&[
        "decode",
        "--elf",
        s(&agent.elf),
        "--frame-format",
        "1.1",
        s(&log),
    ]);
    assert!(!stdout(&out).contains("old agent two"));
}

fn core_dump(dir: &Path, damaged: bool) -> PathBuf {
    let info = DeviceInfo::new(42, "SER-1", "sensor_board", "1.2.3-test", "abc1234");
    let mut package = CoreDumpHeader::encode_package(&info, b"cC\x01\x02\x03\x04");
    if damaged {
        *package.last_mut().unwrap() ^= 0xff;
    }
    let path = dir.join(if damaged { "bad.core" } else { "good.core" });
    std::fs::write(&path, package).unwrap();
    path
}

#[test]
fn a_core_dump_shows_its_header_in_decode_and_inspect() {
    let Some(agent) = agent() else { return };
    let good = core_dump(&agent.logs, false);
    let bad = core_dump(&agent.logs, true);
    let out = ulogger(&["decode", "--elf", s(&agent.elf), s(&good)]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("core dump: ok"), "{text}");
    for field in [
        "SER-1",
        "sensor_board",
        "1.2.3-test",
        "abc1234",
        "42",
        "270",
    ] {
        assert!(text.contains(field), "{field} in {text}");
    }
    let out = ulogger(&["--json", "decode", "--elf", s(&agent.elf), s(&bad)]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["core_dump"]["valid"], false);
    assert_eq!(report["core_dump"]["serial"], "SER-1");
    assert!(report["core_dump"]["error"]
        .as_str()
        .unwrap()
        .contains("checksum"));

    let out = ulogger(&["inspect", s(&good)]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("SER-1"), "{}", stdout(&out));
    let out = ulogger(&["--json", "inspect", s(&bad)]);
    assert_code(&out, 2);
    let reports: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reports[0]["core_dump"]["device_type"], "sensor_board");
}

#[test]
fn bad_inputs_are_named_and_other_files_still_decode() {
    let Some(agent) = agent() else { return };
    let not_elf = agent.logs.join("v4.bin");
    let out = ulogger(&["decode", "--elf", s(&not_elf), s(&not_elf)]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("not an ELF"), "{}", stderr(&out));

    let junk = agent.logs.join("junk.bin");
    std::fs::write(&junk, [9u8; 40]).unwrap();
    let out = ulogger(&[
        "decode",
        "--elf",
        s(&agent.elf),
        s(&junk),
        s(&agent.logs.join("v3.bin")),
    ]);
    assert_code(&out, 2);
    assert!(stderr(&out).contains("junk.bin"), "{}", stderr(&out));
    assert!(stdout(&out).contains("metric_heartbeat=1"));
}

#[test]
fn a_closed_pipe_ends_decode_quietly() {
    let Some(agent) = agent() else { return };
    let log = agent.logs.join("v4.bin");
    let mut args = vec!["decode".to_string(), "--elf".into(), s(&agent.elf).into()];
    // 20 records a copy: far more than a pipe holds.
    args.extend(std::iter::repeat_n(s(&log).to_string(), 1000));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ulogger"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
