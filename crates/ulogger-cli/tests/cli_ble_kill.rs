//! `ulogger ble pull` SIGKILLed at random points (issue 19): in 20 trials
//! the gateway process is killed while it pulls a simulated device (the
//! demo firmware's state machine behind the simulated BlueZ, the emulator
//! as the cloud), then run again until the device is empty. Pass: no
//! buffer is ever erased on the device before it is durable (in the
//! outbox, or already in the cloud), everything the device erased reaches
//! the cloud byte for byte (modulo the fields the gateway patches), and
//! the cloud holds at most one duplicate per kill.
//!
//! Kill points are chosen from a seeded RNG (printed; set
//! `ULOGGER_KILL_SEED` to replay) by the device's own progress, not by
//! time: the simulated device counts the acks it receives and the gateway
//! is SIGKILLed while its k-th ack is being handled, so the gateway is
//! stopped exactly there (it waits for that write's D-Bus reply, which
//! never comes). Most kills let the device act on that ack first (any
//! chunk's, or a final ack: the buffer is erased and the gateway dies
//! before it learns it); others swallow a final ack (the gateway dies
//! after the buffer became durable and before the device heard its delete
//! command: the device offers it again, which the pull's content keys
//! recognise, and which without them is a duplicate).
//!
//! In half the trials a run to be killed has no cloud (a closed port):
//! nothing it stores is delivered before the kill, so every duplicate is
//! the device's re-offer and the bound is strict: one per kill.
//! In the others the cloud is up during the kill, and a record the outbox
//! had published but not yet marked delivered is sent again by the
//! restart (the outbox delivers at least once): those trials allow one
//! duplicate per kill plus one per record the restart delivered for the
//! killed run.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::stderr;
use ulogger_ble_sim::{
    Characteristic, DeviceBehaviour, DeviceHandle, FakeBluez, Firmware, Notification, PrivateBus,
    ReadError, SimulatedDevice,
};
use ulogger_cloud::wire::{self, CoreDumpHeader, DeviceInfo, LogHeader};
use ulogger_emulator::ble::{DeviceEvent, Erased, SimDevice};
use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind};

const TRIALS: u64 = 20;
/// Trials run side by side: most of a trial is waiting (for the device's
/// silence, for the cloud), not computing.
const PARALLEL: usize = 4;
const CUSTOMER: u32 = 4242;
/// Every wait is bounded: a hang fails the test.
const STEP: Duration = Duration::from_secs(60);
/// Silence that means "nothing (more) to send". The device's core dump
/// follows its logs after 100 ms; a second of margin keeps a loaded CI
/// machine from ending a pull in that gap (which would drop the link
/// mid-handover and re-offer the logs: a duplicate no kill caused).
const FIRST_CHUNK_MS: &str = "1000";
/// The wire's chunk payload (PROTOCOL §6).
const CHUNK: usize = 16;

/// splitmix64: small, seedable, good enough to pick kill points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn seed() -> u64 {
    match std::env::var("ULOGGER_KILL_SEED") {
        Ok(s) => s.trim().parse().expect("ULOGGER_KILL_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Where a gateway run is killed: while the device handles the run's
/// `at_ack`-th ack, before it acts on it (`swallow`: the ack never reaches
/// the device) or after.
#[derive(Debug, Clone, Copy)]
struct KillPlan {
    at_ack: usize,
    swallow: bool,
}

/// What the device end saw of the current run, shared with the test.
#[derive(Default)]
struct Watch {
    plan: Option<KillPlan>,
    acks: usize,
    gateway_pid: Option<u32>,
    /// The kill that happened in this run: its plan and the ack's value.
    killed: Option<(KillPlan, u16)>,
    /// Erasures whose content was not durable when the device erased it.
    violations: Vec<String>,
    /// Erasures checked (each buffer in them).
    checked: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The firmware, watched: counts acks, kills the gateway at the planned
/// one, and at the instant of every erase checks that what is erased is
/// durable on the gateway's side.
struct Watched {
    firmware: Firmware,
    watch: Arc<Mutex<Watch>>,
    outbox: PathBuf,
    emulator: Arc<Emulator>,
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL {pid} failed");
}

impl DeviceBehaviour for Watched {
    fn connect(&mut self, now: Instant) {
        self.firmware.connect(now);
    }

    fn disconnect(&mut self) {
        self.firmware.disconnect();
    }

    fn read(&mut self, ch: Characteristic) -> Result<Vec<u8>, ReadError> {
        self.firmware.read(ch)
    }

    fn write(&mut self, ch: Characteristic, value: &[u8], now: Instant) -> Vec<Notification> {
        if ch != Characteristic::LogAck {
            return self.firmware.write(ch, value, now);
        }
        let mut watch = lock(&self.watch);
        watch.acks += 1;
        let ack = value
            .first_chunk::<2>()
            .map_or(0, |b| u16::from_le_bytes(*b));
        let fire = watch.plan.filter(|p| p.at_ack == watch.acks);
        if let Some(plan) = fire {
            watch.plan = None;
            watch.killed = Some((plan, ack));
            // The gateway waits for this write's reply: killed here, it is
            // stopped exactly at this ack.
            sigkill(watch.gateway_pid.expect("the gateway's pid"));
            if plan.swallow {
                return Vec::new();
            }
        }
        let before = self.firmware.device().erasures().count();
        let out = self.firmware.write(ch, value, now);
        let erased: Vec<Erased> = self
            .firmware
            .device()
            .erasures()
            .skip(before)
            .map(|(e, _)| e.clone())
            .collect();
        for erased in erased {
            let buffers = match erased {
                Erased::Logs(logs) => vec![(RecordKind::BinaryLog, logs)],
                Erased::LogsAndCoreDump { logs, core_dump } => vec![
                    (RecordKind::BinaryLog, logs),
                    (RecordKind::CoreDump, core_dump),
                ],
            };
            for (kind, original) in buffers {
                watch.checked += 1;
                if !durable(&self.outbox, &self.emulator, kind, &original) {
                    watch.violations.push(format!(
                        "a {kind:?} of {} bytes was erased by ack {ack} before it was durable",
                        original.len()
                    ));
                }
            }
        }
        out
    }

    fn tick(&mut self, now: Instant) -> Vec<Notification> {
        self.firmware.tick(now)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.firmware.next_deadline()
    }
}

/// Whether `candidate` is `original` as the gateway forwards it: the same
/// bytes but for the session token it patches in and, in a v4 log whose
/// epoch was 0, the time it stamps in (which must then be set).
fn same_buffer(kind: RecordKind, original: &[u8], candidate: &[u8]) -> bool {
    if kind != RecordKind::BinaryLog {
        return original == candidate;
    }
    if original.len() != candidate.len() {
        return false;
    }
    let (Ok(header), Ok(theirs)) = (LogHeader::parse(original), LogHeader::parse(candidate)) else {
        return false;
    };
    let mut normalised = candidate.to_vec();
    wire::patch_session_token(&mut normalised, header.session_token).unwrap();
    if header.epoch_time_us == Some(0) {
        if theirs.epoch_time_us == Some(0) {
            return false;
        }
        wire::patch_epoch_time_us(&mut normalised, 0).unwrap();
    }
    normalised == original
}

/// The payloads of every intact record of kind `kind` (1 log, 2 core
/// dump) in the outbox's segment files, read as another process may:
/// frames of `"uLOB" | len u32 | crc32 u32 | body`, body `id u64 |
/// enqueued u64 | kind u8 | app u32 | 4 × (u16 len + bytes) | payload`.
fn outbox_payloads(dir: &Path, kind: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("seg-") && name.ends_with(".log")) {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let mut at = 0;
        while at + 12 <= bytes.len() {
            if &bytes[at..at + 4] != b"uLOB" {
                at += 1;
                continue;
            }
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            let Some(body) = bytes.get(at + 12..at + 12 + len) else {
                break;
            };
            if crc32fast::hash(body) != crc || body.len() < 21 {
                at += 1;
                continue;
            }
            let mut p = 21;
            let mut ok = true;
            for _ in 0..4 {
                let Some(n) = body.get(p..p + 2) else {
                    ok = false;
                    break;
                };
                p += 2 + usize::from(u16::from_le_bytes([n[0], n[1]]));
            }
            if ok && body[16] == kind && p <= body.len() {
                out.push(body[p..].to_vec());
            }
            at += 12 + len;
        }
    }
    out
}

fn cloud_payloads(emulator: &Emulator, kind: RecordKind) -> Vec<Vec<u8>> {
    emulator
        .records()
        .into_iter()
        .filter(|r| r.kind == kind)
        .filter_map(|r| std::fs::read(emulator.data_dir().join(r.file.as_ref()?)).ok())
        .collect()
}

/// Whether `original` is kept on the gateway's side: in the outbox, or
/// (delivered and removed from it meanwhile) in the cloud. The outbox is
/// looked at first: a record leaves it only after the cloud stored it.
fn durable(outbox: &Path, emulator: &Emulator, kind: RecordKind, original: &[u8]) -> bool {
    let code = if kind == RecordKind::BinaryLog { 1 } else { 2 };
    outbox_payloads(outbox, code)
        .iter()
        .any(|p| same_buffer(kind, original, p))
        || cloud_payloads(emulator, kind)
            .iter()
            .any(|p| same_buffer(kind, original, p))
}

fn config_value(info: &DeviceInfo) -> Vec<u8> {
    let mut v = info.app_id.to_le_bytes().to_vec();
    for s in [
        &info.serial,
        &info.device_type,
        &info.git_version,
        &info.git_hash,
    ] {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    v
}

fn make_log(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut header = LogHeader::new(4).unwrap();
    header.anchor_tick = Some(rng.next() as u32);
    header.tick_rate_hz = Some(32_768);
    // Half the devices have no wall clock: the gateway stamps the time.
    header.epoch_time_us = Some(if rng.chance(50) {
        0
    } else {
        1_700_000_000_000_000 + n as u64
    });
    let len = rng.range(40, 400);
    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    wire::build_log(header, &data).unwrap()
}

fn make_core_dump(rng: &mut Rng, info: &DeviceInfo) -> Vec<u8> {
    let mut body = b"cC".to_vec();
    body.extend((0..rng.range(30, 200)).map(|_| rng.next() as u8));
    CoreDumpHeader::encode_package(info, &body)
}

struct Device {
    address: String,
    firmware: Firmware,
    handle: DeviceHandle,
    watch: Arc<Mutex<Watch>>,
    log: Vec<u8>,
    core_dump: Option<Vec<u8>>,
}

impl Device {
    fn is_empty(&self) -> bool {
        let device = self.firmware.device();
        device.logs().is_empty() && device.core_dump().is_none()
    }

    /// The acks of one clean pull: ack 0, one per chunk of each buffer
    /// (the last of which is its final ack).
    fn acks_of_a_pull(&self) -> usize {
        1 + self.log.len().div_ceil(CHUNK)
            + self
                .core_dump
                .as_ref()
                .map_or(0, |c| c.len().div_ceil(CHUNK))
    }

    fn final_log_ack(&self) -> usize {
        1 + self.log.len().div_ceil(CHUNK)
    }
}

/// A kill point: anywhere in the pull, or right at a final ack (the
/// device erases and the gateway dies, or the gateway dies after
/// durability and the device never hears the ack).
fn kill_plan(rng: &mut Rng, device: &Device) -> KillPlan {
    let total = device.acks_of_a_pull();
    let at_final = if device.core_dump.is_some() && rng.chance(50) {
        total
    } else {
        device.final_log_ack()
    };
    match rng.range(0, 4) {
        0 | 1 => KillPlan {
            at_ack: rng.range(1, total),
            swallow: false,
        },
        2 => KillPlan {
            at_ack: at_final,
            swallow: false,
        },
        _ => KillPlan {
            at_ack: at_final,
            swallow: true,
        },
    }
}

/// What one trial did.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    log_duplicates: usize,
    core_dump_duplicates: usize,
    checked: usize,
    runs: usize,
    points: Vec<String>,
    /// Whether the killed runs had a cloud to deliver to.
    online: bool,
    /// Records a killed run left that the restart delivered.
    redelivered: usize,
    took: Duration,
}

/// Where a gateway run sends: the cloud, or a port nobody listens on.
#[derive(Clone, Copy)]
enum Cloud {
    Up(u16),
    Unreachable(u16),
}

async fn run_gateway(
    bus: &str,
    cloud: Cloud,
    outbox: &Path,
    address: &str,
    watch: &Arc<Mutex<Watch>>,
) -> Output {
    let (port, deliver_timeout) = match cloud {
        Cloud::Up(port) => (port, "30"),
        // Nothing to wait for: a run that is not killed ends after its pull.
        Cloud::Unreachable(port) => (port, "0"),
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_ulogger"));
    command
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .env("ULOGGER_HOME", outbox.with_extension("home"))
        .env_remove("ULOGGER_CONFIG")
        .args(["--json", "ble", "pull", "--address", address])
        .args(["--first-chunk-timeout", FIRST_CHUNK_MS])
        .args(["--deliver-timeout", deliver_timeout])
        .args([
            "--no-store",
            "--plaintext",
            "--broker",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .args(["--customer-id", &CUSTOMER.to_string(), "--outbox"])
        .arg(outbox)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Spawned under the lock the device's acks take: no ack of this run
    // can be seen before its pid is known.
    let child = {
        let mut watch = lock(watch);
        let child = command.spawn().unwrap();
        watch.gateway_pid = Some(child.id());
        child
    };
    // The fake BlueZ runs on this runtime: wait for the process off it.
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    tokio::time::timeout(STEP, waited)
        .await
        .expect("the gateway finished or was killed in time")
        .unwrap()
}

async fn trial(n: u64, seed: u64) -> Tally {
    let started = Instant::now();
    let mut rng = Rng(seed ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let bus = PrivateBus::start().unwrap();
    let bluez = tokio::time::timeout(STEP, FakeBluez::start(bus.address()))
        .await
        .unwrap()
        .unwrap();
    let emulator =
        Arc::new(Emulator::start(EmulatorConfig::new(CUSTOMER).plaintext(true)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox");
    let with_core_dump = rng.chance(50);
    let online = rng.chance(50);
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };

    let mut devices = Vec::new();
    for d in 0..rng.range(1, 2) {
        let info = DeviceInfo::new(7, format!("KILL{n:02}D{d}"), "demo", "1.2.4", "abc1234");
        let log = make_log(&mut rng, d);
        let core_dump = (d == 0 && with_core_dump).then(|| make_core_dump(&mut rng, &info));
        let firmware = Firmware::new(SimDevice::new(
            config_value(&info),
            log.clone(),
            core_dump.clone(),
        ));
        let watch = Arc::new(Mutex::new(Watch::default()));
        let address = format!("AA:BB:CC:00:{n:02X}:{d:02X}");
        let handle = bluez
            .add_device(SimulatedDevice::new(
                &address,
                "uLogger Example",
                Box::new(Watched {
                    firmware: firmware.clone(),
                    watch: watch.clone(),
                    outbox: outbox.clone(),
                    emulator: emulator.clone(),
                }),
            ))
            .await
            .unwrap();
        devices.push(Device {
            address,
            firmware,
            handle,
            watch,
            log,
            core_dump,
        });
    }
    let target = rng.range(0, devices.len() - 1);
    let second_kill = rng.chance(30);
    let mut tally = Tally {
        online,
        ..Tally::default()
    };

    for (d, device) in devices.iter().enumerate() {
        // After a kill: the device event from which the restart is judged.
        let mut killed_at_event: Option<usize> = None;
        // A killed run (or one without a cloud) is always followed by one
        // that finishes with the cloud up: it delivers what the other made
        // durable, and lets the link go.
        let mut rerun = false;
        for run in 0.. {
            if device.is_empty() && !rerun {
                break;
            }
            assert!(
                run < 6,
                "trial {n} (seed {seed}): device {d} not empty after {run} runs"
            );
            let plan = match run {
                0 if d == target => Some(kill_plan(&mut rng, device)),
                1 if d == target && second_kill => Some(kill_plan(&mut rng, device)),
                _ => None,
            };
            {
                let mut watch = lock(&device.watch);
                watch.plan = plan;
                watch.acks = 0;
                watch.killed = None;
                watch.gateway_pid = None;
            }
            let cloud = match plan {
                Some(_) if !online => Cloud::Unreachable(closed_port),
                _ => Cloud::Up(emulator.addr().port()),
            };
            let out = run_gateway(
                bus.address(),
                cloud,
                &outbox,
                &device.address,
                &device.watch,
            )
            .await;
            tally.runs += 1;
            let violations = lock(&device.watch).violations.clone();
            assert!(
                violations.is_empty(),
                "trial {n} (seed {seed}): run {run} of device {d}: {violations:?}"
            );
            let killed = lock(&device.watch).killed.take();
            lock(&device.watch).plan = None;
            if let Some((plan, ack)) = killed {
                assert_eq!(
                    out.status.signal(),
                    Some(9),
                    "trial {n} (seed {seed}): the gateway was to die of SIGKILL: {}",
                    stderr(&out)
                );
                tally.kills += 1;
                tally.points.push(format!(
                    "ack #{} ({ack}){}",
                    plan.at_ack,
                    if plan.swallow { " unheard" } else { "" }
                ));
                // As bluetoothd, the fake keeps the link of a client that died.
                assert!(
                    device.handle.is_connected(),
                    "trial {n} (seed {seed}): the link went with the killed gateway"
                );
                killed_at_event = Some(device.firmware.device().events().len());
                rerun = true;
                continue;
            }
            assert!(
                out.status.success(),
                "trial {n} (seed {seed}): run {run} of device {d} failed: {}",
                stderr(&out)
            );
            if matches!(cloud, Cloud::Unreachable(_)) {
                // Planned, not reached: what it stored waits in the outbox.
                rerun = true;
                continue;
            }
            rerun = false;
            let summary: serde_json::Value =
                serde_json::from_str(support::stdout(&out).trim()).unwrap();
            assert_eq!(summary["pending"], 0, "trial {n} (seed {seed}): {summary}");
            if killed_at_event.is_some() {
                tally.redelivered += summary["earlier_delivered"].as_u64().unwrap() as usize;
            }
            if let Some(mark) = killed_at_event.take() {
                // The restart found the device still connected and used that
                // link: its first act was an ack, not a connection.
                let device_state = device.firmware.device();
                let first = device_state.events()[mark..].iter().find(|e| {
                    matches!(
                        e,
                        DeviceEvent::Connected { .. } | DeviceEvent::AckReceived { .. }
                    )
                });
                assert!(
                    matches!(first, Some(DeviceEvent::AckReceived { .. })),
                    "trial {n} (seed {seed}): the restart did not reuse the link: {first:?}"
                );
            }
        }
        assert!(device.is_empty());
    }

    // Everything the devices erased reaches the cloud.
    let mut erased: Vec<(RecordKind, Vec<u8>)> = Vec::new();
    for device in &devices {
        for (e, _) in device.firmware.device().erasures() {
            match e {
                Erased::Logs(logs) => erased.push((RecordKind::BinaryLog, logs.clone())),
                Erased::LogsAndCoreDump { logs, core_dump } => {
                    erased.push((RecordKind::BinaryLog, logs.clone()));
                    erased.push((RecordKind::CoreDump, core_dump.clone()));
                }
            }
        }
    }
    let mut expected: Vec<(RecordKind, Vec<u8>)> = Vec::new();
    for device in &devices {
        expected.push((RecordKind::BinaryLog, device.log.clone()));
        if let Some(core_dump) = &device.core_dump {
            expected.push((RecordKind::CoreDump, core_dump.clone()));
        }
    }
    assert_eq!(
        erased.len(),
        expected.len(),
        "trial {n} (seed {seed}): each buffer is erased once"
    );
    let deadline = Instant::now() + STEP;
    let copies = loop {
        let copies: Vec<usize> = expected
            .iter()
            .map(|(kind, original)| {
                cloud_payloads(&emulator, *kind)
                    .iter()
                    .filter(|p| same_buffer(*kind, original, p))
                    .count()
            })
            .collect();
        if copies.iter().all(|&c| c > 0) {
            break copies;
        }
        assert!(
            Instant::now() < deadline,
            "trial {n} (seed {seed}): the cloud lacks erased buffers: copies {copies:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Nothing arrived that no device sent.
    for kind in [RecordKind::BinaryLog, RecordKind::CoreDump] {
        for payload in cloud_payloads(&emulator, kind) {
            assert!(
                expected
                    .iter()
                    .any(|(k, o)| *k == kind && same_buffer(kind, o, &payload)),
                "trial {n} (seed {seed}): the cloud holds a {kind:?} no device sent"
            );
        }
    }
    for ((kind, _), c) in expected.iter().zip(&copies) {
        match kind {
            RecordKind::CoreDump => tally.core_dump_duplicates += c - 1,
            _ => tally.log_duplicates += c - 1,
        }
    }
    for device in &devices {
        let watch = lock(&device.watch);
        assert!(
            watch.violations.is_empty(),
            "trial {n} (seed {seed}): {:?}",
            watch.violations
        );
        tally.checked += watch.checked;
    }
    tally.took = started.elapsed();
    // A kill leaves at most one buffer to be offered again: BlueZ keeps the
    // link, so a device whose gateway dies during its core dump goes on
    // with the core dump and does not re-send its logs. With the cloud up at the
    // kill, the outbox may also send again what it had published (it
    // delivers at least once): at most what the restart delivered for the
    // killed run.
    let allowed = tally.kills + if online { tally.redelivered } else { 0 };
    assert!(
        tally.log_duplicates + tally.core_dump_duplicates <= allowed,
        "trial {n} (seed {seed}): {tally:?}"
    );
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_at_random_points_loses_nothing_and_duplicates_at_most_once_per_kill() {
    let seed = seed();
    eprintln!("cli_ble_kill: seed {seed} (replay with ULOGGER_KILL_SEED={seed})");
    let started = Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    let mut next = 0;
    let mut results = Vec::new();
    while next < TRIALS || !pending.is_empty() {
        while next < TRIALS && pending.len() < PARALLEL {
            let n = next;
            pending.spawn(async move { (n, trial(n, seed).await) });
            next += 1;
        }
        match pending.join_next().await.unwrap() {
            Ok(done) => results.push(done),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    results.sort_by_key(|(n, _)| *n);
    let mut total = Tally::default();
    // Kills and duplicates where the cloud was down at the kills: every
    // duplicate there is a device's re-offer.
    let (mut offline_kills, mut offline_duplicates) = (0, 0);
    for (n, tally) in &results {
        eprintln!(
            "trial {n:2}: cloud {} at the kills, {} run(s), {} kill(s) [{}], {} log and {} core-dump duplicate(s), {} record(s) left by a killed run delivered by its restart, {} erased buffer(s) checked durable, {:.1} s",
            if tally.online { "up" } else { "down" },
            tally.runs,
            tally.kills,
            tally.points.join(", "),
            tally.log_duplicates,
            tally.core_dump_duplicates,
            tally.redelivered,
            tally.checked,
            tally.took.as_secs_f64()
        );
        total.runs += tally.runs;
        total.kills += tally.kills;
        total.log_duplicates += tally.log_duplicates;
        total.core_dump_duplicates += tally.core_dump_duplicates;
        total.checked += tally.checked;
        if !tally.online {
            offline_kills += tally.kills;
            offline_duplicates += tally.log_duplicates + tally.core_dump_duplicates;
        }
    }
    eprintln!(
        "cli_ble_kill: {TRIALS} trials, seed {seed}: {} kills, {} duplicates ({} log, {} core dump; {offline_duplicates} for {offline_kills} kills with the cloud down), {} erasures checked durable, 0 lost, {} gateway runs in {:.1} s",
        total.kills,
        total.log_duplicates + total.core_dump_duplicates,
        total.log_duplicates,
        total.core_dump_duplicates,
        total.checked,
        total.runs,
        started.elapsed().as_secs_f64()
    );
    assert!(
        total.kills >= TRIALS as usize,
        "every trial killed the gateway at least once"
    );
}
