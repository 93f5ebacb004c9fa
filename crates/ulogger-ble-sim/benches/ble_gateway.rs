//! Issue 19: our BLE gateway against a bleak reference gateway, side by
//! side on one simulated BlueZ.
//!
//! 20 simulated devices (the demo firmware's state machine, `Firmware`),
//! each holding one valid 16 KiB log, sit behind the fake BlueZ on a
//! private `dbus-daemon`; notifications go out as soon as an ack asks for
//! them (no delay). Each round runs, one after the other and in
//! alternating order, gateway *processes* that pull the 20 devices (so a
//! gateway's CPU time is its own, not the fake's or the bus daemon's):
//!
//! - **ours**: this binary run again with `ULOGGER_BLE_BENCH_ROLE=gateway`,
//!   calling `ulogger_cloud::ble::pull_device` for the 20 devices
//!   concurrently (one tokio runtime, default worker count) with a `Client`
//!   whose durable outbox is a fresh directory under `target/tmp`. The
//!   cloud is unreachable (a closed loopback port): what is measured is the
//!   pull and the fsynced store, not an upload.
//! - **bleak**: `benches/bleak_gateway.py` under the bleak venv, doing what
//!   the reference gateway's `bluetooth.py` does (PROTOCOL §6), 20 devices
//!   at once with asyncio; it writes each buffer to a file *without* fsync,
//!   after the final ack.
//! - **ours 1x1** (a diagnosis): ours pulling one device after the other,
//!   so one bluer `Session` reads the bus at a time; only its CPU per chunk
//!   compares.
//! - **sketch** (a diagnosis): `gateway::acquired`, the change
//!   `docs/benchmarks.md` proposes for `pull_device` (one `Session`, the
//!   transfer on AcquireNotify/AcquireWrite), measured before it is made.
//!
//! Per round and gateway: the child's CPU time (user + system, from the
//! kernel's accounting of reaped children), per chunk the devices sent
//! (1,024 per device), with and without the process's start-up (each child
//! prints its own CPU time once started, before its first D-Bus call); the
//! wall time from spawning the process to its exit, and the devices' own
//! window (first connect to last erase); and, per device, the time from
//! sending its last chunk to receiving the final ack (the device's event
//! record); beside them the bus daemon's and this process's (the fake's)
//! CPU time during the run. Every round checks that each device erased its
//! log exactly once. Medians over the rounds, ratios between figures of
//! the same run. `ULOGGER_BLE_BENCH_ONLY=<name>` runs one gateway (for a
//! profiler), without the comparison.
//!
//! `cargo bench -p ulogger-ble-sim --bench ble_gateway`
//! (`ULOGGER_BLE_BENCH_ROUNDS`, default 3). Needs `dbus-daemon` and a
//! python with bleak 3.1.0: `ULOGGER_BLEAK_PYTHON`, else
//! `target/bleak-venv/bin/python` (`.ci/run` makes it); without either it
//! fails, saying what to install.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use ulogger_ble_sim::{FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_emulator::ble::{DeviceEvent, Erased, Notify, SimDevice};

const DEVICES: usize = 20;
/// Each device's log buffer: one v4 log, header included.
const LOG_BYTES: usize = 16 * 1024;
/// The device's chunk payload (PROTOCOL §6).
const CHUNK_PAYLOAD: usize = 16;
const CUSTOMER: u32 = 4242;
const APP: u32 = 7;
const DEFAULT_ROUNDS: usize = 3;
/// Bounds one gateway's run: a hang fails the bench, never stalls it.
const GATEWAY_LIMIT: Duration = Duration::from_secs(300);
/// The environment variable that makes this binary the gateway child.
const ROLE: &str = "ULOGGER_BLE_BENCH_ROLE";
/// Set for the gateway child: pull the devices one after the other.
const ONE_BY_ONE: &str = "ULOGGER_BLE_BENCH_ONE_BY_ONE";
/// Set for the gateway child: the sketch, not `pull_device`.
const SKETCH: &str = "ULOGGER_BLE_BENCH_SKETCH";
/// The goals.
const CPU_RATIO_GOAL: f64 = 10.0;
const FINAL_ACK_P50_GOAL: Duration = Duration::from_millis(5);

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("gateway") {
        std::process::exit(gateway::run());
    }
    // `cargo bench` passes --bench; `cargo test --benches` (or
    // --all-targets) does not, and gets a smoke line, not a 1.5-minute run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ble_gateway: a benchmark; run it with `cargo bench -p ulogger-ble-sim --bench ble_gateway`");
        return;
    }
    let rounds = match std::env::var("ULOGGER_BLE_BENCH_ROUNDS") {
        Ok(n) => n.parse().expect("ULOGGER_BLE_BENCH_ROUNDS is a number"),
        Err(_) => DEFAULT_ROUNDS,
    };
    let python = bleak_python().unwrap_or_else(|why| fail(&why));
    let bus = PrivateBus::start().unwrap_or_else(|e| match e {
        ulogger_ble_sim::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => fail(
            "dbus-daemon is not installed (the simulated BlueZ runs on a private bus): \
             apt-get install -y dbus-daemon",
        ),
        other => fail(&format!("the private D-Bus daemon did not start: {other}")),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(&bus, &python, rounds));
}

/// Prints why the bench cannot run and exits non-zero.
fn fail(why: &str) -> ! {
    eprintln!("error: ble_gateway cannot run: {why}");
    std::process::exit(1)
}

/// The bleak venv's python, checked to import bleak.
fn bleak_python() -> Result<PathBuf, String> {
    let python = match std::env::var_os("ULOGGER_BLEAK_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        // CARGO_TARGET_TMPDIR is <target>/tmp.
        _ => Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bleak-venv/bin/python"),
    };
    let install = "make it with `python3 -m venv target/bleak-venv && \
                   target/bleak-venv/bin/pip install bleak==3.1.0` (or run .ci/run), \
                   or name a python with bleak in ULOGGER_BLEAK_PYTHON";
    let probe = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('bleak'))",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if version != "3.1.0" {
                eprintln!("warning: bleak {version}, not the pinned 3.1.0");
            }
            Ok(python)
        }
        Ok(out) => Err(format!(
            "{} has no bleak ({}): {install}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {}: {e}: {install}", python.display())),
    }
}

/// One device of the bench: its firmware, the log it is refilled with.
struct Bench {
    address: String,
    firmware: Firmware,
}

/// A valid v4 log of `LOG_BYTES` as the device reads it: session token 0,
/// epoch 0 (no wall clock), so our gateway stamps and patches it as it
/// would in the field.
fn device_log(n: usize) -> Vec<u8> {
    use ulogger_cloud::wire::{build_log, LogHeader};
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(1000);
    header.tick_rate_hz = Some(32_768);
    header.epoch_time_us = Some(0);
    let overhead = build_log(header, &[]).unwrap().len();
    let data: Vec<u8> = (0..LOG_BYTES - overhead)
        .map(|i| ((i * 31 + n * 7) % 251) as u8)
        .collect();
    let log = build_log(header, &data).unwrap();
    assert_eq!(log.len(), LOG_BYTES);
    log
}

/// The device's `config` value (PROTOCOL §4), with its own serial.
fn config_value(serial: &str) -> Vec<u8> {
    let mut v = APP.to_le_bytes().to_vec();
    for s in [serial, "bench", "1.2.4", "no_cache"] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gateway {
    Ours,
    /// Ours pulling one device at a time: one bluer `Session` alive at
    /// once, so no D-Bus signal reaches the process more than once.
    OursOneByOne,
    /// Not `pull_device`: a sketch of it on one shared bluer `Session`,
    /// with chunks and acks on AcquireNotify/AcquireWrite sockets instead
    /// of a D-Bus message each (`gateway::acquired`), to measure that
    /// change before it is made in `ulogger_cloud::ble`.
    Sketch,
    Bleak,
}

impl Gateway {
    fn name(self) -> &'static str {
        match self {
            Gateway::Ours => "ours",
            Gateway::OursOneByOne => "ours 1x1",
            Gateway::Sketch => "sketch",
            Gateway::Bleak => "bleak",
        }
    }
}

/// What one gateway's run measured.
struct Run {
    gateway: Gateway,
    /// The child's CPU time, user + system, whole process.
    cpu: Duration,
    /// Of which before its first D-Bus call (interpreter, imports, runtime).
    startup_cpu: Duration,
    chunks: usize,
    /// Spawn to exit.
    wall: Duration,
    /// First connect to last erase, as the devices saw it.
    window: Duration,
    /// Per device: the last chunk sent to the final ack received.
    final_ack: Vec<Duration>,
    /// Per device: connect to the first ack (services, config, subscribe).
    setup: Vec<Duration>,
    /// Per device: the first ack to the last chunk (the transfer).
    transfer: Vec<Duration>,
    /// The bus daemon's and the fake BlueZ's (this process's) CPU time
    /// during the run: what the gateway's way of using the bus costs the
    /// rest of the machine.
    bus_cpu: Duration,
    fake_cpu: Duration,
    /// Ours only: the child's own split of its time (pulls, shutdown).
    timing: Option<String>,
}

impl Run {
    fn cpu_per_chunk(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.chunks as f64
    }

    fn transfer_cpu_per_chunk(&self) -> f64 {
        self.cpu.saturating_sub(self.startup_cpu).as_secs_f64() * 1e6 / self.chunks as f64
    }
}

async fn bench(bus: &PrivateBus, python: &Path, rounds: usize) {
    let bluez = FakeBluez::start(bus.address()).await.unwrap();
    // Devices stay known to "BlueZ" between rounds, as a gateway's
    // bluetoothd keeps them: every round connects to known devices.
    bluez.set_temporary_timeout(Duration::from_secs(24 * 3600));
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        let address = format!("C0:DE:00:00:00:{n:02X}");
        let serial = address.replace(':', "");
        let firmware = Firmware::new(SimDevice::new(config_value(&serial), device_log(n), None));
        bluez
            .add_device(SimulatedDevice::new(
                address.clone(),
                "uLogger Example",
                Box::new(firmware.clone()),
            ))
            .await
            .unwrap();
        devices.push(Bench { address, firmware });
    }
    let devices = Arc::new(devices);
    discover_once(bus.address()).await;

    println!(
        "ble_gateway: {DEVICES} devices x {LOG_BYTES} bytes ({} chunks each), {rounds} round(s), \
         no notification delay; ours stores in a durable outbox (fsync), bleak writes files \
         without fsync",
        LOG_BYTES.div_ceil(CHUNK_PAYLOAD)
    );
    // ULOGGER_BLE_BENCH_ONLY=ours (or `bleak`, `ours 1x1`): one gateway,
    // for a profiler; no comparison is reported then.
    let only = std::env::var("ULOGGER_BLE_BENCH_ONLY").ok();
    let only = only.as_deref();
    let mut runs = Vec::new();
    for round in 0..rounds {
        // Alternating order, so neither always runs on a warmer machine.
        let order = if round % 2 == 0 {
            [
                Gateway::Ours,
                Gateway::Bleak,
                Gateway::OursOneByOne,
                Gateway::Sketch,
            ]
        } else {
            [
                Gateway::Sketch,
                Gateway::OursOneByOne,
                Gateway::Bleak,
                Gateway::Ours,
            ]
        };
        for gateway in order
            .into_iter()
            .filter(|g| only.is_none_or(|o| o == g.name()))
        {
            let run = run_gateway(gateway, bus.address(), python, &devices).await;
            println!(
                "round {} {:>8}: cpu {:>7.1} ms ({:>6.1} us/chunk, {:>6.1} us/chunk after start-up), \
                 wall {:>6.0} ms, devices' window {:>6.0} ms, last chunk -> final ack p50 {:.2} ms",
                round + 1,
                gateway.name(),
                ms(run.cpu),
                run.cpu_per_chunk(),
                run.transfer_cpu_per_chunk(),
                ms(run.wall),
                ms(run.window),
                ms(percentile(&run.final_ack, 0.5)),
            );
            println!(
                "         {:>8}  bus daemon {:.1} us/chunk, fake BlueZ {:.1} us/chunk; per device p50: connect -> first ack {:.1} ms, first ack -> last chunk {:.1} ms{}",
                "",
                run.bus_cpu.as_secs_f64() * 1e6 / run.chunks as f64,
                run.fake_cpu.as_secs_f64() * 1e6 / run.chunks as f64,
                ms(percentile(&run.setup, 0.5)),
                ms(percentile(&run.transfer, 0.5)),
                run.timing.as_ref().map_or(String::new(), |t| format!("; {t}"))
            );
            runs.push(run);
        }
    }
    if only.is_none() {
        report(&runs);
    }
}

/// Has the fake export the devices (BlueZ lists a device once a scan saw
/// it), then stops discovering: no gateway pays for the first discovery.
async fn discover_once(bus: &str) {
    let conn = zbus::connection::Builder::address(bus)
        .build()
        .await
        .unwrap();
    let adapter = zbus::Proxy::new(
        &conn,
        "org.bluez",
        ulogger_ble_sim::ADAPTER_PATH,
        "org.bluez.Adapter1",
    )
    .await
    .unwrap();
    let objects = zbus::fdo::ObjectManagerProxy::builder(&conn)
        .destination("org.bluez")
        .path("/")
        .build()
        .await
        .unwrap();
    adapter
        .call::<_, _, ()>("StartDiscovery", &())
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let managed = objects.get_managed_objects().await.unwrap();
            let devices = managed
                .values()
                .filter(|ifaces| ifaces.keys().any(|i| i.as_str() == "org.bluez.Device1"))
                .count();
            if devices >= DEVICES {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the fake did not list the {DEVICES} devices");
    adapter
        .call::<_, _, ()>("StopDiscovery", &())
        .await
        .unwrap();
}

/// Runs one gateway process against the devices and measures it.
async fn run_gateway(gateway: Gateway, bus: &str, python: &Path, devices: &[Bench]) -> Run {
    // Every device holds its log again, and what happens from here on is
    // this run's.
    let marks: Vec<usize> = devices
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let mut device = d.firmware.device();
            if device.logs().is_empty() {
                device.add_logs(&device_log(n));
            }
            device.events().len()
        })
        .collect();
    let out = tempfile::Builder::new()
        .prefix(&format!("ble-bench-{}-", gateway.name()))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let addresses: Vec<&str> = devices.iter().map(|d| d.address.as_str()).collect();
    let mut command = match gateway {
        Gateway::Ours | Gateway::OursOneByOne | Gateway::Sketch => {
            let mut c = tokio::process::Command::new(std::env::current_exe().unwrap());
            c.env(ROLE, "gateway");
            if gateway == Gateway::OursOneByOne {
                c.env(ONE_BY_ONE, "1");
            }
            if gateway == Gateway::Sketch {
                c.env(SKETCH, "1");
            }
            c
        }
        Gateway::Bleak => {
            let mut c = tokio::process::Command::new(python);
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bleak_gateway.py"));
            c
        }
    };
    command
        .arg(out.path())
        .args(&addresses)
        // The private bus is the system bus for both, as bluetoothd's is.
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Children reaped so far: the difference is this child's CPU time.
    // The bus daemon, our other child, is reaped only at the end.
    let before = children_cpu();
    let (bus_before, fake_before) = (bus_daemon_cpu(), own_cpu());
    let started = Instant::now();
    let child = command.spawn().unwrap();
    let output = tokio::time::timeout(GATEWAY_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {} gateway hung", gateway.name()))
        .unwrap();
    let wall = started.elapsed();
    let cpu = children_cpu().saturating_sub(before);
    let bus_cpu = bus_daemon_cpu().saturating_sub(bus_before);
    let fake_cpu = own_cpu().saturating_sub(fake_before);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {} gateway failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        gateway.name(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let startup_cpu = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ready "))
        .and_then(|us| us.trim().parse().ok())
        .map(Duration::from_micros)
        .unwrap_or_else(|| panic!("no `ready` line from the {} gateway", gateway.name()));
    let stored = stdout.lines().filter(|l| l.starts_with("stored ")).count();
    assert_eq!(stored, DEVICES, "{} stored:\n{stdout}", gateway.name());

    let mut chunks = 0;
    let mut final_ack = Vec::new();
    let (mut setup, mut transfer) = (Vec::new(), Vec::new());
    let (mut first_connect, mut last_erase): (Option<Instant>, Option<Instant>) = (None, None);
    for ((n, device), mark) in devices.iter().enumerate().zip(marks) {
        let firmware = device.firmware.device();
        let mut last_chunk = None;
        let (mut connected, mut first_ack) = (None, None);
        let mut erased = Vec::new();
        for event in &firmware.events()[mark..] {
            match event {
                DeviceEvent::Connected { at } => {
                    first_connect = Some(first_connect.map_or(*at, |t| t.min(*at)));
                    connected = Some(*at);
                }
                DeviceEvent::AckReceived { at, .. } if first_ack.is_none() => {
                    first_ack = Some(*at);
                    setup.push(at.saturating_duration_since(connected.expect("connected")));
                }
                DeviceEvent::ChunkSent {
                    notify: Notify::LogData(_),
                    dropped: false,
                    at,
                } => {
                    chunks += 1;
                    last_chunk = Some(*at);
                }
                DeviceEvent::Erased { what, at } => {
                    erased.push(what.clone());
                    last_erase = Some(last_erase.map_or(*at, |t| t.max(*at)));
                    let sent = last_chunk.expect("a chunk before the erase");
                    final_ack.push(at.saturating_duration_since(sent));
                    transfer.push(sent.saturating_duration_since(first_ack.expect("acked")));
                }
                _ => {}
            }
        }
        assert_eq!(
            erased,
            vec![Erased::Logs(device_log(n))],
            "{}: device {} erased something else than its log, once",
            gateway.name(),
            device.address
        );
    }
    let window = last_erase
        .unwrap()
        .saturating_duration_since(first_connect.unwrap());
    Run {
        gateway,
        cpu,
        startup_cpu,
        chunks,
        wall,
        window,
        final_ack,
        bus_cpu,
        fake_cpu,
        setup,
        transfer,
        timing: stdout
            .lines()
            .find_map(|l| l.strip_prefix("timing "))
            .map(str::to_owned),
    }
}

/// User + system time of this process (the fake BlueZ and its devices).
fn own_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    timeval(usage.user_time()) + timeval(usage.system_time())
}

/// User + system time of our `dbus-daemon` child so far, from /proc (in
/// clock ticks, 100 per second on Linux); zero if it cannot be read.
fn bus_daemon_cpu() -> Duration {
    let pids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "dbus-daemon" {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After "(comm)": field 3 onwards; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        return Duration::from_millis((ticks(14) + ticks(15)) * 10);
    }
    Duration::ZERO
}

/// User + system time of the children reaped so far.
fn children_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).unwrap();
    timeval(usage.user_time()) + timeval(usage.system_time())
}

fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p` quantile (nearest rank) of `values`.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// "3.0x less than" or "2.5x more than", for a ratio theirs / ours.
fn times_less(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{ratio:.1}x less than")
    } else {
        format!("{:.1}x more than", 1.0 / ratio)
    }
}

fn report(runs: &[Run]) {
    let of = |g: Gateway| runs.iter().filter(move |r| r.gateway == g);
    let med = |g: Gateway, f: fn(&Run) -> f64| median(of(g).map(f));
    let cpu = |g| med(g, Run::cpu_per_chunk);
    let transfer_cpu = |g| med(g, Run::transfer_cpu_per_chunk);
    let wall = |g| med(g, |r| r.wall.as_secs_f64());
    let window = |g| med(g, |r| r.window.as_secs_f64());
    let acks = |g| -> Vec<Duration> { of(g).flat_map(|r| r.final_ack.clone()).collect() };
    let (ours_acks, bleak_acks) = (acks(Gateway::Ours), acks(Gateway::Bleak));
    let ratio = cpu(Gateway::Bleak) / cpu(Gateway::Ours);
    let transfer_ratio = transfer_cpu(Gateway::Bleak) / transfer_cpu(Gateway::Ours);
    let p50 = percentile(&ours_acks, 0.5);
    let p99 = percentile(&ours_acks, 0.99);
    println!();
    println!("medians over {} round(s):", of(Gateway::Ours).count());
    for g in [
        Gateway::Ours,
        Gateway::OursOneByOne,
        Gateway::Sketch,
        Gateway::Bleak,
    ] {
        let a = acks(g);
        println!(
            "  {:>8}: {:>6.1} us CPU/chunk ({:>6.1} after start-up), wall {:.2} s, devices' window {:.2} s, \
             last chunk -> final ack p50 {:.2} ms, p99 {:.2} ms (n = {}); bus daemon {:.1}, fake {:.1} us/chunk",
            g.name(),
            cpu(g),
            transfer_cpu(g),
            wall(g),
            window(g),
            ms(percentile(&a, 0.5)),
            ms(percentile(&a, 0.99)),
            a.len(),
            med(g, |r| r.bus_cpu.as_secs_f64() * 1e6 / r.chunks as f64),
            med(g, |r| r.fake_cpu.as_secs_f64() * 1e6 / r.chunks as f64),
        );
    }
    let sketch = cpu(Gateway::Sketch);
    println!(
        "  sketch (one Session, AcquireNotify/AcquireWrite): {sketch:.1} us/chunk, {:.1}x less than bleak, {:.1}x less than ours",
        cpu(Gateway::Bleak) / sketch,
        cpu(Gateway::Ours) / sketch
    );
    println!(
        "  CPU per chunk: bleak / ours = {ratio:.2}x ({transfer_ratio:.1}x after start-up; goal >= {CPU_RATIO_GOAL}x: {})",
        if ratio >= CPU_RATIO_GOAL { "met" } else { "MISSED" }
    );
    println!(
        "  last chunk -> final ack (ours, fsynced store): p50 {:.2} ms, p99 {:.2} ms (goal p50 < {} ms: {})",
        ms(p50),
        ms(p99),
        ms(FINAL_ACK_P50_GOAL),
        if p50 < FINAL_ACK_P50_GOAL { "met" } else { "MISSED" }
    );
    println!();
    println!(
        "SUITE ble gateway CPU per chunk, {DEVICES} devices | {:.1} us | {} bleak's {:.1} us (goal >= {CPU_RATIO_GOAL}x less; sketch {sketch:.1} us)",
        cpu(Gateway::Ours),
        times_less(ratio),
        cpu(Gateway::Bleak)
    );
    println!(
        "SUITE ble gateway {DEVICES} x 16 KiB end to end | {:.2} s | {:.2} of bleak's {:.2} s (devices' window {:.2} s vs {:.2} s)",
        wall(Gateway::Ours),
        wall(Gateway::Ours) / wall(Gateway::Bleak),
        wall(Gateway::Bleak),
        window(Gateway::Ours),
        window(Gateway::Bleak)
    );
    println!(
        "SUITE ble last chunk to final ack p50 | {:.2} ms | p99 {:.2} ms, fsynced (bleak, no store before its ack: p50 {:.2} ms; goal p50 < 5 ms)",
        ms(p50),
        ms(p99),
        ms(percentile(&bleak_acks, 0.5))
    );
}

/// Our gateway, as the child process: pulls every device named on the
/// command line at once with `pull_device` into a durable outbox.
mod gateway {
    use std::time::Duration;

    use nix::sys::resource::{getrusage, UsageWho};
    use ulogger_cloud::ble::{pull_device, Address, PullOptions};
    use ulogger_cloud::wire::PullConfig;
    use ulogger_cloud::{Client, MqttConfig, OutboxConfig, Security};

    /// argv: the outbox directory, then the devices' addresses. Prints
    /// `ready <cpu us>` once started, `stored <address> <bytes>` per device;
    /// returns the exit code.
    pub fn run() -> i32 {
        let mut args = std::env::args().skip(1);
        let (Some(outbox), addresses) = (args.next(), args.collect::<Vec<_>>()) else {
            eprintln!("usage: {} OUTBOX ADDRESS...", super::ROLE);
            return 2;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // The cloud is unreachable: a loopback port nobody listens on.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = MqttConfig::new(super::CUSTOMER)
                .broker("127.0.0.1")
                .port(port)
                .security(Security::Plaintext)
                .connect_timeout(Duration::from_secs(60));
            let client = Client::builder(config)
                .outbox(OutboxConfig::new(&outbox))
                .build()
                .unwrap();
            println!("ready {}", self_cpu_us());
            let started = std::time::Instant::now();
            let one_by_one = std::env::var_os(super::ONE_BY_ONE).is_some();
            let session = match std::env::var_os(super::SKETCH) {
                Some(_) => Some(bluer::Session::new().await.unwrap()),
                None => None,
            };
            let mut pulls = tokio::task::JoinSet::new();
            let mut results = Vec::new();
            let mut per_device_cpu = Vec::new();
            for address in addresses {
                let client = client.clone();
                // One by one is a diagnosis of CPU time: it need not wait
                // 3 s per device for a core dump (the device has none).
                let options = if one_by_one {
                    PullOptions::new()
                        .pull(PullConfig::new().first_chunk_timeout(Duration::from_millis(300)))
                } else {
                    PullOptions::new()
                };
                let session = session.clone();
                let pull = async move {
                    let parsed: Address = address.parse().unwrap();
                    let pulled = match session {
                        Some(session) => acquired::pull(&session, &client, parsed).await,
                        None => pull_device(&client, "hci0", parsed, options)
                            .await
                            .map(|report| report.stored.iter().map(|s| s.len).collect())
                            .map_err(|e| e.to_string()),
                    };
                    (address, pulled)
                };
                if one_by_one {
                    let before = self_cpu_us();
                    results.push(pull.await);
                    per_device_cpu.push(format!("{}", (self_cpu_us() - before) / 1000));
                } else {
                    pulls.spawn(pull);
                }
            }
            results.extend(pulls.join_all().await);
            let mut code = 0;
            for result in results {
                match result {
                    (address, Ok(stored)) if stored.len() == 1 => {
                        println!("stored {address} {}", stored[0]);
                    }
                    (address, Ok(stored)) => {
                        println!("unexpected {address}: stored {stored:?}");
                        code = 1;
                    }
                    (address, Err(e)) => {
                        println!("failed {address}: {e}");
                        code = 1;
                    }
                }
            }
            let pulled = started.elapsed();
            client.shutdown().await;
            // Connections to the bus still open: one per pull_device so far
            // (bluer's Session never closes its socket).
            let sockets = std::fs::read_dir("/proc/self/fd")
                .map(|fds| {
                    fds.filter_map(Result::ok)
                        .filter(|fd| {
                            std::fs::read_link(fd.path())
                                .is_ok_and(|to| to.to_string_lossy().starts_with("socket:"))
                        })
                        .count()
                })
                .unwrap_or(0);
            println!(
                "timing pulls {} ms, shutdown {} ms, {sockets} sockets open at the end{}",
                pulled.as_millis(),
                (started.elapsed() - pulled).as_millis(),
                if per_device_cpu.is_empty() {
                    String::new()
                } else {
                    format!(", CPU ms per device in turn: {}", per_device_cpu.join(" "))
                }
            );
            code
        })
    }

    fn self_cpu_us() -> u128 {
        let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
        (super::timeval(usage.user_time()) + super::timeval(usage.system_time())).as_micros()
    }

    /// A sketch of `pull_device` as `docs/benchmarks.md` proposes it: one
    /// bluer `Session` for every device, and the transfer's chunks and acks
    /// on AcquireNotify/AcquireWrite's sockets (one datagram each) instead
    /// of a `PropertiesChanged` signal and a `WriteValue` call per chunk.
    /// Same `BlePull`, same outbox, final ack after the store. Only what
    /// this bench's devices need: no discovery, no core dump, no epoch
    /// stamp, no rejected buffers.
    pub(super) mod acquired {
        use std::time::Instant;

        use bluer::{Address, Session};
        use ulogger_cloud::ble::{CONFIG_UUID, LOG_ACK_UUID, LOG_DATA_UUID, SERVICE_UUID};
        use ulogger_cloud::wire::{
            self, BlePull, BufferKind, Characteristic, PullAction, PullConfig,
        };
        use ulogger_cloud::Client;

        /// Pulls one device; the lengths of the buffers stored.
        pub async fn pull(
            session: &Session,
            client: &Client,
            address: Address,
        ) -> Result<Vec<usize>, String> {
            let adapter = session.adapter("hci0").map_err(|e| e.to_string())?;
            let device = adapter.device(address).map_err(|e| e.to_string())?;
            if !device.is_connected().await.map_err(|e| e.to_string())? {
                device.connect().await.map_err(|e| e.to_string())?;
            }
            let outcome = transfer(client, &device).await;
            let _ = device.disconnect().await;
            outcome
        }

        async fn transfer(client: &Client, device: &bluer::Device) -> Result<Vec<usize>, String> {
            let e = |e: bluer::Error| e.to_string();
            let (mut config, mut log_data, mut log_ack) = (None, None, None);
            for service in device.services().await.map_err(e)? {
                if service.uuid().await.map_err(e)? != SERVICE_UUID {
                    continue;
                }
                for ch in service.characteristics().await.map_err(e)? {
                    match ch.uuid().await.map_err(e)? {
                        CONFIG_UUID => config = Some(ch),
                        LOG_DATA_UUID => log_data = Some(ch),
                        LOG_ACK_UUID => log_ack = Some(ch),
                        _ => {}
                    }
                }
            }
            let (Some(config), Some(log_data), Some(log_ack)) = (config, log_data, log_ack) else {
                return Err("no uLogger service".into());
            };
            let info = wire::decode_ble_config(&config.read().await.map_err(e)?)
                .map_err(|e| e.to_string())?;
            let notifications = log_data.notify_io().await.map_err(e)?;
            let acks = log_ack.write_io().await.map_err(e)?;
            let mut stored = Vec::new();
            let mut pull = BlePull::new(PullConfig::new(), Instant::now());
            let mut action = pull.poll(Instant::now());
            loop {
                match action {
                    PullAction::WriteAck(ack) => {
                        acks.send(&ack).await.map_err(|e| e.to_string())?
                    }
                    PullAction::Deliver(delivery) if delivery.kind == BufferKind::Log => {
                        client
                            .enqueue_log(&info, &delivery.data)
                            .await
                            .map_err(|e| e.to_string())?;
                        stored.push(delivery.data.len());
                        action = pull
                            .durable(delivery.id, Instant::now())
                            .map_err(|e| e.to_string())?;
                        continue;
                    }
                    PullAction::Finished(_) => return Ok(stored),
                    PullAction::GiveUp(reason) => return Err(reason.to_string()),
                    _ => {}
                }
                if pull.is_over() {
                    action = pull.poll(Instant::now());
                    continue;
                }
                let deadline = pull.deadline().map(tokio::time::Instant::from_std);
                action = tokio::select! {
                    value = notifications.recv() => {
                        let value = value.map_err(|e| e.to_string())?;
                        if value.is_empty() {
                            return Err("the link was lost".into());
                        }
                        pull.on_notification(Characteristic::LogData, &value, Instant::now())
                    }
                    () = async {
                        match deadline {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => pull.poll(Instant::now()),
                };
            }
        }
    }
}
