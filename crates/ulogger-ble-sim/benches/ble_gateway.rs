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
//!   pulling the 20 devices concurrently through one `BleSession` (as the
//!   agent's `Gateway` does; one tokio runtime, default worker count) with a `Client`
//!   whose durable outbox is a fresh directory under `target/tmp`. The
//!   cloud is unreachable (a closed loopback port): what is measured is the
//!   pull and the fsynced store, not an upload.
//! - **bleak**: `benches/bleak_gateway.py` under the bleak venv, doing what
//!   the reference gateway's `bluetooth.py` does (PROTOCOL §6), 20 devices
//!   at once with asyncio; it writes each buffer to a file *without* fsync,
//!   after the final ack.
//! - **bare**: not a gateway but the least a pull through this simulated
//!   bluetoothd costs: this binary again (`ULOGGER_BLE_BENCH_ROLE=bare`)
//!   making only the D-Bus calls any gateway needs (one object listing;
//!   per device `Connect`, `ReadValue` of `config`, `AcquireNotify`,
//!   `AcquireWrite`, `Disconnect`, through zbus), then per chunk one read
//!   and one ack written on one epoll loop: no store, no checks, no
//!   timers, no core-dump phase. The goal's 10x below bleak is reported as
//!   a multiple of it: how close to this bound a gateway must come.
//! - **floor**: not a gateway but the true limit of one on this machine:
//!   the two system calls any gateway makes per chunk once BlueZ hands it
//!   sockets (read the chunk's datagram, write the ack's), on 20
//!   socketpairs driven by one epoll loop in plain threads, with nothing
//!   else (no bus, no store, no protocol). Its thread's own CPU time per
//!   chunk is what the others are compared with.
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

use ulogger_bench::stats::{median_of, percentile};
use ulogger_bench::usage::{child_named, children_cpu, proc_cpu, self_cpu};
use ulogger_ble_sim::{FakeBluez, Firmware, PrivateBus, SimulatedDevice};
use ulogger_emulator::ble::{DeviceEvent, Erased, Notify, SimDevice};

const DEVICES: usize = 20;
/// Each device's log buffer: one v4 log, header included (16 KiB, or
/// `ULOGGER_BLE_BENCH_LOG_BYTES`: two sizes split a gateway's CPU into
/// what each device costs and what each chunk does).
static LOG_BYTES: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("ULOGGER_BLE_BENCH_LOG_BYTES")
        .map(|n| n.parse().expect("ULOGGER_BLE_BENCH_LOG_BYTES is a number"))
        .unwrap_or(16 * 1024)
});
/// The device's chunk payload (PROTOCOL §6).
const CHUNK_PAYLOAD: usize = 16;
const CUSTOMER: u32 = 4242;
const APP: u32 = 7;
const DEFAULT_ROUNDS: usize = 3;
/// Bounds one gateway's run: a hang fails the bench, never stalls it.
const GATEWAY_LIMIT: Duration = Duration::from_secs(300);
/// The environment variable that makes this binary the gateway child.
const ROLE: &str = "ULOGGER_BLE_BENCH_ROLE";
/// The goals.
const CPU_RATIO_GOAL: f64 = 10.0;
const FINAL_ACK_P50_GOAL: Duration = Duration::from_millis(5);

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("gateway") => std::process::exit(gateway::run()),
        Ok("bare") => std::process::exit(bare::run()),
        _ => {}
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
    let data: Vec<u8> = (0..*LOG_BYTES - overhead)
        .map(|i| ((i * 31 + n * 7) % 251) as u8)
        .collect();
    let log = build_log(header, &data).unwrap();
    assert_eq!(log.len(), *LOG_BYTES);
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
    Bleak,
    /// Not a gateway: the least any pull through this bluetoothd costs
    /// (`bare`).
    Bare,
}

impl Gateway {
    fn name(self) -> &'static str {
        match self {
            Gateway::Ours => "ours",
            Gateway::Bleak => "bleak",
            Gateway::Bare => "bare",
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
        "ble_gateway: {DEVICES} devices x {} bytes ({} chunks each), {rounds} round(s), \
         no notification delay; ours stores in a durable outbox (fsync), bleak writes files \
         without fsync",
        *LOG_BYTES,
        (*LOG_BYTES).div_ceil(CHUNK_PAYLOAD)
    );
    // ULOGGER_BLE_BENCH_ONLY=ours (or `bleak`): one gateway,
    // for a profiler; no comparison is reported then.
    let only = std::env::var("ULOGGER_BLE_BENCH_ONLY").ok();
    let only = only.as_deref();
    let mut runs = Vec::new();
    let mut floors = Vec::new();
    for round in 0..rounds {
        if only.is_none() {
            let floor = floor::run(DEVICES, (*LOG_BYTES).div_ceil(CHUNK_PAYLOAD));
            println!(
                "round {}    floor: cpu {:>6.1} us/chunk (raw sockets, two system calls per chunk)",
                round + 1,
                floor.as_secs_f64() * 1e6
            );
            floors.push(floor);
        }
        // Alternating order, so neither always runs on a warmer machine.
        let order = if round % 2 == 0 {
            [Gateway::Bare, Gateway::Ours, Gateway::Bleak]
        } else {
            [Gateway::Bleak, Gateway::Ours, Gateway::Bare]
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
        report(&runs, &floors);
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
        Gateway::Ours => {
            let mut c = tokio::process::Command::new(std::env::current_exe().unwrap());
            c.env(ROLE, "gateway");
            c
        }
        Gateway::Bleak => {
            let mut c = tokio::process::Command::new(python);
            c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/bleak_gateway.py"));
            c
        }
        Gateway::Bare => {
            let mut c = tokio::process::Command::new(std::env::current_exe().unwrap());
            c.env(ROLE, "bare");
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
    let (bus_before, fake_before) = (bus_daemon_cpu(), self_cpu());
    let started = Instant::now();
    let child = command.spawn().unwrap();
    let output = tokio::time::timeout(GATEWAY_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {} gateway hung", gateway.name()))
        .unwrap();
    let wall = started.elapsed();
    let cpu = children_cpu().saturating_sub(before);
    let bus_cpu = bus_daemon_cpu().saturating_sub(bus_before);
    let fake_cpu = self_cpu().saturating_sub(fake_before);
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

/// User + system time of our `dbus-daemon` child so far, from /proc (in
/// clock ticks, 100 per second on Linux); zero if it cannot be read.
fn bus_daemon_cpu() -> Duration {
    child_named("dbus-daemon")
        .and_then(|pid| proc_cpu(&pid))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "3.0x less than" or "2.5x more than", for a ratio theirs / ours.
fn times_less(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("{ratio:.1}x less than")
    } else {
        format!("{:.1}x more than", 1.0 / ratio)
    }
}

fn report(runs: &[Run], floors: &[Duration]) {
    let of = |g: Gateway| runs.iter().filter(move |r| r.gateway == g);
    let med = |g: Gateway, f: fn(&Run) -> f64| median_of(of(g).map(f));
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
    for g in [Gateway::Ours, Gateway::Bleak, Gateway::Bare] {
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
    let floor = median_of(floors.iter().map(|f| f.as_secs_f64() * 1e6));
    println!(
        "     floor: {floor:>6.1} us CPU/chunk (two system calls per chunk on raw sockets, nothing else): \
         ours {:.2}x the floor, bleak {:.1}x",
        cpu(Gateway::Ours) / floor,
        cpu(Gateway::Bleak) / floor
    );
    let bare = cpu(Gateway::Bare);
    println!(
        "      bare: {bare:>6.1} us CPU/chunk (the D-Bus calls and system calls any pull through this \
         bluetoothd makes, nothing else): ours {:.2}x it, bleak {:.1}x; a gateway {CPU_RATIO_GOAL}x \
         below bleak may spend {:.1} us, {:.2}x it",
        cpu(Gateway::Ours) / bare,
        cpu(Gateway::Bleak) / bare,
        cpu(Gateway::Bleak) / CPU_RATIO_GOAL,
        cpu(Gateway::Bleak) / CPU_RATIO_GOAL / bare
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
        "SUITE ble gateway CPU per chunk, {DEVICES} devices | {:.1} us | {} bleak's {:.1} us (goal >= {CPU_RATIO_GOAL}x less; raw-socket floor {floor:.1} us)",
        cpu(Gateway::Ours),
        times_less(ratio),
        cpu(Gateway::Bleak)
    );
    println!(
        "SUITE ble gateway CPU per chunk against the bare pull | {:.2}x | ours {:.1} us, bare {bare:.1} us; 10x below bleak would be {:.2}x",
        cpu(Gateway::Ours) / bare,
        cpu(Gateway::Ours),
        cpu(Gateway::Bleak) / CPU_RATIO_GOAL / bare
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
/// command line at once through one `BleSession` into a durable outbox.
mod gateway {
    use std::time::Duration;

    use ulogger_cloud::ble::{Address, BleSession, PullOptions};
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
        // As the agent runs it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
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
            // One connection to bluetoothd for every pull, as the agent's
            // `Gateway` holds it.
            let bluetooth = BleSession::new().await.unwrap();
            let mut pulls = tokio::task::JoinSet::new();
            let mut results = Vec::new();
            for address in addresses {
                let client = client.clone();
                let bluetooth = bluetooth.clone();
                pulls.spawn(async move {
                    let parsed: Address = address.parse().unwrap();
                    let pulled = bluetooth
                        .pull(&client, "hci0", parsed, PullOptions::new())
                        .await
                        .map(|report| report.stored.iter().map(|s| s.len).collect::<Vec<_>>())
                        .map_err(|e| e.to_string());
                    (address, pulled)
                });
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
            // Connections to the bus still open (bluer's Session never
            // closes its socket): two for the one `BleSession`.
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
                "timing pulls {} ms, shutdown {} ms, {sockets} sockets open at the end",
                pulled.as_millis(),
                (started.elapsed() - pulled).as_millis(),
            );
            code
        })
    }

    fn self_cpu_us() -> u128 {
        ulogger_bench::usage::self_cpu().as_micros()
    }
}

/// The least a pull through this simulated bluetoothd can cost: the
/// D-Bus calls any gateway makes per device (one object listing per
/// process; per device `Connect`, `ReadValue` of `config`, `AcquireNotify`
/// of `log_data`, `AcquireWrite` of `log_ack`, `Disconnect`), then, per
/// chunk, the floor's two system calls (read the datagram, write the ack)
/// on one epoll loop; no store, no core-dump phase, no timers, no
/// protocol checks beyond the offset. It is not a gateway (it would lose
/// logs, and trusts the device) but the bound any gateway's CPU per chunk
/// on this double lies above: ours and bleak's are reported as multiples
/// of it.
mod bare {
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use nix::sys::socket::{recv, send, MsgFlags};
    use zbus::{OwnedObjectPath, Variant};

    const CHAR: &str = "org.bluez.GattCharacteristic1";
    const DEVICE: &str = "org.bluez.Device1";

    /// Calls bluetoothd's `method` on `path`; its reply.
    async fn call<B>(
        conn: &zbus::Connection,
        path: &OwnedObjectPath,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Message
    where
        B: zbus::export::serde::Serialize + zbus::zvariant::DynamicType,
    {
        conn.call_method(
            Some("org.bluez"),
            path.as_str(),
            Some(interface),
            method,
            body,
        )
        .await
        .unwrap()
    }

    /// One device's sockets, once acquired.
    struct Link {
        address: String,
        device: OwnedObjectPath,
        notify: OwnedFd,
        ack: OwnedFd,
    }

    /// argv: an unused directory, then the devices' addresses. Prints
    /// `ready <cpu us>` and `stored <address> <bytes>` as the gateway
    /// does; returns the exit code.
    pub fn run() -> i32 {
        let addresses: Vec<String> = std::env::args().skip(2).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        println!("ready {}", ulogger_bench::usage::self_cpu().as_micros());
        let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").expect("the bus address");
        let (conn, links) = runtime.block_on(async {
            let conn = zbus::connection::Builder::address(bus.as_str())
                .build()
                .await
                .unwrap();
            let device_path = |address: &str| {
                OwnedObjectPath::try_from(format!(
                    "{}/dev_{}",
                    ulogger_ble_sim::ADAPTER_PATH,
                    address.replace(':', "_")
                ))
                .unwrap()
            };
            // Connected first: bluetoothd lists a device's GATT objects
            // once it has resolved them.
            let mut connects = tokio::task::JoinSet::new();
            for address in &addresses {
                let (conn, device) = (conn.clone(), device_path(address));
                connects.spawn(async move {
                    call(&conn, &device, DEVICE, "Connect", &()).await;
                });
            }
            connects.join_all().await;
            let objects = zbus::fdo::ObjectManagerProxy::builder(&conn)
                .destination("org.bluez")
                .path("/")
                .build()
                .await
                .unwrap()
                .get_managed_objects()
                .await
                .unwrap();
            let mut setups = tokio::task::JoinSet::new();
            for address in addresses {
                let device = device_path(&address);
                let under = format!("{}/", device.as_str());
                let find = |uuid: &str| -> OwnedObjectPath {
                    objects
                        .iter()
                        .find(|(path, interfaces)| {
                            path.as_str().starts_with(&under)
                                && interfaces.iter().any(|(name, props)| {
                                    name.as_str() == CHAR
                                        && props.get("UUID").is_some_and(|v| {
                                            <&str>::try_from(&**v as &Variant)
                                                .is_ok_and(|u| u == uuid)
                                        })
                                })
                        })
                        .map(|(path, _)| path.clone())
                        .expect("the characteristic")
                };
                use ulogger_ble_sim::Characteristic as C;
                let (config, data, ack) = (
                    find(C::Config.uuid()),
                    find(C::LogData.uuid()),
                    find(C::LogAck.uuid()),
                );
                let conn = conn.clone();
                setups.spawn(async move {
                    let no_options = (HashMap::<&str, Variant>::new(),);
                    let char_call = |path, method| call(&conn, path, CHAR, method, &no_options);
                    let _config: Vec<u8> = char_call(&config, "ReadValue")
                        .await
                        .body()
                        .deserialize()
                        .unwrap();
                    let notify: (zbus::OwnedFd, u16) = char_call(&data, "AcquireNotify")
                        .await
                        .body()
                        .deserialize()
                        .unwrap();
                    let write: (zbus::OwnedFd, u16) = char_call(&ack, "AcquireWrite")
                        .await
                        .body()
                        .deserialize()
                        .unwrap();
                    Link {
                        address,
                        device,
                        notify: notify.0.into(),
                        ack: write.0.into(),
                    }
                });
            }
            (conn, setups.join_all().await)
        });
        let stored = transfer(&links);
        runtime.block_on(async {
            let mut gone = tokio::task::JoinSet::new();
            for link in links {
                let conn = conn.clone();
                gone.spawn(async move {
                    // The sockets go first, as a gateway lets them go.
                    drop((link.notify, link.ack));
                    call(&conn, &link.device, DEVICE, "Disconnect", &()).await;
                });
            }
            gone.join_all().await;
        });
        for (address, bytes) in stored {
            println!("stored {address} {bytes}");
        }
        0
    }

    /// Ack 0 to each, then for each chunk at the offset expected, the
    /// ack of the next, until the final one: the addresses and lengths.
    fn transfer(links: &[Link]) -> Vec<(String, usize)> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        let mut expected = vec![0u16; links.len()];
        let mut done = Vec::new();
        for (n, link) in links.iter().enumerate() {
            epoll
                .add(&link.notify, EpollEvent::new(EpollFlags::EPOLLIN, n as u64))
                .unwrap();
            send(link.ack.as_raw_fd(), &[0, 0], MsgFlags::empty()).unwrap();
        }
        let mut events = vec![EpollEvent::empty(); links.len()];
        let mut buf = [0u8; 517];
        while done.len() < links.len() {
            let ready = epoll.wait(&mut events, EpollTimeout::NONE).unwrap();
            for event in &events[..ready] {
                let n = event.data() as usize;
                let link = &links[n];
                let len = recv(link.notify.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
                if len < 4 || u16::from_le_bytes([buf[0], buf[1]]) != expected[n] {
                    continue; // a chunk sent twice (the device's timer)
                }
                let total = u16::from_le_bytes([buf[2], buf[3]]);
                let next = expected[n] + (len - 4) as u16;
                send(link.ack.as_raw_fd(), &next.to_le_bytes(), MsgFlags::empty()).unwrap();
                expected[n] = next;
                if next >= total {
                    epoll.delete(&link.notify).unwrap();
                    done.push((link.address.clone(), usize::from(total)));
                }
            }
        }
        done
    }
}

/// The true limit of a gateway's CPU time per chunk on this machine (see
/// the module's documentation): 20 socketpairs, a thread playing the
/// devices (a chunk for each ack, stop and wait, as the firmware does)
/// and a thread playing the gateway (for each chunk, one read and one
/// ack written, nothing else), on epoll. Returns the gateway thread's
/// CPU time (user + system) per chunk.
mod floor {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::Duration;

    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
    use ulogger_bench::usage::thread_cpu;

    /// A chunk's datagram: a 2-byte offset and 16 bytes (PROTOCOL §6).
    const CHUNK: [u8; 18] = [0x5a; 18];

    pub fn run(devices: usize, chunks: usize) -> Duration {
        let (gateway_ends, device_ends): (Vec<OwnedFd>, Vec<OwnedFd>) = (0..devices)
            .map(|_| {
                socketpair(
                    AddressFamily::Unix,
                    SockType::SeqPacket,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .unwrap()
            })
            .unzip();
        let device = std::thread::spawn(move || {
            serve(&device_ends, |fd, acks| {
                if acks <= chunks {
                    send(fd, &CHUNK, MsgFlags::empty()).unwrap();
                    false
                } else {
                    true // the final ack: erased
                }
            });
        });
        let gateway = std::thread::spawn(move || {
            for fd in &gateway_ends {
                send(fd.as_raw_fd(), &[0, 0], MsgFlags::empty()).unwrap();
            }
            let before = thread_cpu();
            serve(&gateway_ends, |fd, received| {
                send(fd, &[0, 0], MsgFlags::empty()).unwrap();
                received == chunks
            });
            thread_cpu() - before
        });
        let cpu = gateway.join().unwrap();
        device.join().unwrap();
        cpu / (devices * chunks) as u32
    }

    /// Reads a datagram from whichever socket has one and calls `on(fd,
    /// how many so far)`, until it has said `true` (done) for each.
    fn serve(fds: &[OwnedFd], mut on: impl FnMut(i32, usize) -> bool) {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        for (n, fd) in fds.iter().enumerate() {
            epoll
                .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, n as u64))
                .unwrap();
        }
        let mut counts = vec![0; fds.len()];
        let mut left = fds.len();
        let mut events = vec![EpollEvent::empty(); fds.len()];
        let mut buf = [0u8; 64];
        while left > 0 {
            let ready = epoll.wait(&mut events, EpollTimeout::NONE).unwrap();
            for event in &events[..ready] {
                let n = event.data() as usize;
                let fd = fds[n].as_raw_fd();
                recv(fd, &mut buf, MsgFlags::empty()).unwrap();
                counts[n] += 1;
                if on(fd, counts[n]) {
                    epoll.delete(&fds[n]).unwrap();
                    left -= 1;
                }
            }
        }
    }
}
