//! `ulogger upload` of 1,000 small logs, as a user runs it: the built
//! binary (the bench profile's, under `cargo bench`) against an emulator
//! in this process over mutual TLS, directly (0 ms round trip) and
//! through a delay proxy adding 50 ms, with `--jobs 1` against the
//! default. Pacing is off (and the emulator's limits too) except in the
//! last case, where pacing is on against an emulator enforcing AWS IoT's
//! limits: it should run at the platform's 100 publishes/s without one
//! discarded publish.
//!
//! The device is registered once beforehand, so every run uses the cached
//! token (as a gateway uploading a device's logs does). Each time is the
//! whole command, process start and TLS connect included. Every run is
//! checked: exit 0 and 1,000 more verified logs in the cloud.
//!
//! `cargo bench -p ulogger-cli --bench cli_upload`
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::delay_proxy::DelayProxy;
use ulogger_bench::broker::{LocalCloud, APP, CUSTOMER};
use ulogger_bench::report::verdict;
use ulogger_bench::stats::median;
use ulogger_cloud::wire::{build_log, LogHeader};
use ulogger_emulator::{Emulator, PlatformLimits, RecordKind};
const SERIAL: &str = "SN-BENCH-CLI";
const FILES: usize = 1_000;
/// Data bytes of each log (plus its 25-byte header).
const LOG_DATA: usize = 200;
/// The round trip the proxy adds.
const RTT: Duration = Duration::from_millis(50);
/// Rounds of the fast cases (the median is reported); `--jobs 1` through
/// the proxy (~50 s) and the paced case (~10 s) run once.
const ROUNDS: usize = 3;
/// The platform's publish rate per connection (PROTOCOL §1).
const PLATFORM_RATE: f64 = 100.0;
/// What the issue asks of 1,000 files through 50 ms, pacing off.
const TARGET: Duration = Duration::from_secs(2);

/// One emulator and the ways to reach it.
struct Cloud {
    local: LocalCloud,
    proxy: DelayProxy,
    store: PathBuf,
}

struct Case {
    name: &'static str,
    rtt_ms: u64,
    jobs: Option<usize>,
    paced: bool,
    rounds: usize,
}

fn main() {
    // `cargo bench` passes `--bench`; a filter is not supported (one table).
    let work = tempfile::tempdir().expect("temporary directory");
    let files = write_logs(work.path());
    // Records in memory where we can (the fixture's): the cloud's disk
    // writes before each PUBACK are not the CLI's.
    let unlimited = cloud(work.path(), "unlimited", PlatformLimits::unlimited());
    let limited = cloud(work.path(), "aws", PlatformLimits::aws());
    let proxy_rtt = measured_proxy_rtt();

    println!("ulogger-cli upload benchmark");
    println!(
        "  binary: {} ; {FILES} files of {} bytes each, mutual TLS, one connection, token cached",
        env!("CARGO_BIN_EXE_ulogger"),
        LOG_DATA + 25
    );
    println!(
        "  delay proxy: {} ms asked, {:.1} ms measured round trip (median of 9 one-byte echoes)",
        RTT.as_millis(),
        proxy_rtt.as_secs_f64() * 1000.0
    );
    println!("  each time is the whole command (process start, TLS connect, uploads, disconnect)");
    println!();

    let cases = [
        Case {
            name: "0 ms RTT, --jobs 1",
            rtt_ms: 0,
            jobs: Some(1),
            paced: false,
            rounds: ROUNDS,
        },
        Case {
            name: "0 ms RTT, default jobs",
            rtt_ms: 0,
            jobs: None,
            paced: false,
            rounds: ROUNDS,
        },
        Case {
            name: "50 ms RTT, --jobs 1",
            rtt_ms: 50,
            jobs: Some(1),
            paced: false,
            rounds: 1,
        },
        Case {
            name: "50 ms RTT, default jobs",
            rtt_ms: 50,
            jobs: None,
            paced: false,
            rounds: ROUNDS,
        },
        Case {
            name: "50 ms RTT, default jobs, paced",
            rtt_ms: 50,
            jobs: None,
            paced: true,
            rounds: 1,
        },
    ];
    // Rounds interleave the cases, so drift hits them alike.
    let mut times: Vec<Vec<Duration>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..ROUNDS {
        for (case, times) in cases.iter().zip(&mut times) {
            if round >= case.rounds {
                continue;
            }
            let cloud = if case.paced { &limited } else { &unlimited };
            let port = if case.rtt_ms == 0 {
                cloud.local.emulator.addr().port()
            } else {
                cloud.proxy.addr().port()
            };
            times.push(upload(cloud, port, case, &files));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    let discarded = limited.local.emulator.limit_stats().discarded_publishes;

    println!(
        "{:<34} {:>10} {:>12} {:>20}",
        "case (1,000 files)", "time", "files/s", "vs --jobs 1"
    );
    for (i, (case, time)) in cases.iter().zip(&medians).enumerate() {
        let baseline = match (case.jobs, case.rtt_ms, case.paced) {
            (None, 0, false) => Some(medians[0]),
            (None, 50, false) => Some(medians[2]),
            _ => None,
        };
        let ratio = baseline
            .map(|b| format!("{:.1}x faster", b.as_secs_f64() / time.as_secs_f64()))
            .unwrap_or_else(|| {
                if i == 0 || i == 2 {
                    "1.0".into()
                } else {
                    "-".into()
                }
            });
        println!(
            "{:<34} {:>8.2} s {:>12.0} {:>20}",
            case.name,
            time.as_secs_f64(),
            FILES as f64 / time.as_secs_f64(),
            ratio
        );
    }
    let paced_rate = FILES as f64 / medians[4].as_secs_f64();
    println!();
    println!(
        "  50 ms RTT, pacing off: {:.2} s against the target of {} s: {}",
        medians[3].as_secs_f64(),
        TARGET.as_secs(),
        verdict(medians[3] < TARGET)
    );
    println!(
        "  50 ms RTT, paced: {paced_rate:.1} publishes/s = {:.2} of the platform's {PLATFORM_RATE:.0}/s; the emulator enforcing AWS IoT's limits discarded {discarded}",
        paced_rate / PLATFORM_RATE
    );
    println!();

    for (case, time) in cases.iter().zip(&medians).take(4) {
        let comparison = match (case.jobs, case.rtt_ms) {
            (None, 0) => format!(
                "{:.1}x --jobs 1",
                medians[0].as_secs_f64() / time.as_secs_f64()
            ),
            (None, _) => format!(
                "{:.1}x --jobs 1; target < {} s {}",
                medians[2].as_secs_f64() / time.as_secs_f64(),
                TARGET.as_secs(),
                verdict(*time < TARGET)
            ),
            _ => format!("{:.0} files/s", FILES as f64 / time.as_secs_f64()),
        };
        println!(
            "SUITE cli upload 1,000 files, {} | {:.2} s | {comparison}",
            case.name,
            time.as_secs_f64()
        );
    }
    println!(
        "SUITE cli upload 1,000 files, 50 ms RTT, paced | {paced_rate:.1} publishes/s | {:.2} of the platform's 100/s, {discarded} discarded",
        paced_rate / PLATFORM_RATE
    );
}

/// Writes `FILES` valid version-4 logs, each with its own data.
fn write_logs(dir: &Path) -> Vec<PathBuf> {
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).unwrap();
    (0..FILES)
        .map(|i| {
            let mut header = LogHeader::new(4).unwrap();
            header.anchor_tick = Some(i as u32);
            header.tick_rate_hz = Some(1000);
            let data: Vec<u8> = (0..LOG_DATA)
                .map(|j| ((i * 7 + j * 31) % 251) as u8)
                .collect();
            let path = logs.join(format!("log-{i:04}.bin"));
            std::fs::write(&path, build_log(header, &data).unwrap()).unwrap();
            path
        })
        .collect()
}

/// An emulator with `limits`, a delay proxy in front of it, and a token
/// store in which the bench device is registered.
fn cloud(work: &Path, name: &str, limits: PlatformLimits) -> Cloud {
    let local = LocalCloud::start(limits);
    let emulator = &local.emulator;
    let proxy = DelayProxy::start(emulator.addr(), RTT / 2).expect("delay proxy starts");
    let store = work.join(format!("tokens-{name}.json"));
    let mut args = connect_args("register", emulator, emulator.addr().port(), &store);
    args.extend(device_args());
    let out = command(work).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "register: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Cloud {
        local,
        proxy,
        store,
    }
}

/// Runs one upload of every file and checks that the cloud verified each.
fn upload(cloud: &Cloud, port: u16, case: &Case, files: &[PathBuf]) -> Duration {
    let before = binary_logs(&cloud.local.emulator);
    let mut args = connect_args("upload", &cloud.local.emulator, port, &cloud.store);
    args.extend(device_args());
    if !case.paced {
        args.push("--no-pacing".into());
    }
    if let Some(jobs) = case.jobs {
        args.extend(["--jobs".into(), jobs.to_string()]);
    }
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_owned()));
    let home = cloud.store.parent().unwrap();
    let started = Instant::now();
    let out = command(home)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    let after = binary_logs(&cloud.local.emulator);
    assert_eq!(after - before, FILES, "{}: every file verified", case.name);
    elapsed
}

/// Verified binary logs the cloud holds.
fn binary_logs(emulator: &Emulator) -> usize {
    emulator
        .records()
        .iter()
        .filter(|r| r.kind == RecordKind::BinaryLog)
        .inspect(|r| assert!(r.is_ok(), "{r:?}"))
        .count()
}

/// The binary with a clean environment: no inherited `ULOGGER_*`, homes
/// inside the bench's directory, no log output.
fn command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ULOGGER_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", home)
        .env("ULOGGER_HOME", home.join(".ulogger"))
        .env("ULOGGER_LOG", "off");
    cmd
}

fn connect_args(subcommand: &str, emulator: &Emulator, port: u16, store: &Path) -> Vec<String> {
    let certs = emulator.certs().expect("a TLS emulator");
    [
        subcommand,
        "--broker",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--customer-id",
        &CUSTOMER.to_string(),
        "--ca",
        certs.ca_cert.to_str().unwrap(),
        "--cert",
        certs.client_cert.to_str().unwrap(),
        "--key",
        certs.client_key.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn device_args() -> Vec<String> {
    [
        "--app-id",
        &APP.to_string(),
        "--serial",
        SERIAL,
        "--device-type",
        "bench-board",
        "--git-version",
        "v1.0.0",
        "--git-hash",
        "abc1234",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The round trip through a delay proxy, measured with one-byte echoes.
fn measured_proxy_rtt() -> Duration {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_addr: SocketAddr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = echo.accept().unwrap();
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).is_ok() {
            if conn.write_all(&byte).is_err() {
                return;
            }
        }
    });
    let proxy = DelayProxy::start(echo_addr, RTT / 2).unwrap();
    let mut conn = TcpStream::connect(proxy.addr()).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut times: Vec<Duration> = (0..9)
        .map(|_| {
            let started = Instant::now();
            conn.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).unwrap();
            started.elapsed()
        })
        .collect();
    let rtt = median(&mut times);
    assert!(rtt >= RTT, "the proxy delays: {rtt:?}");
    rtt
}
