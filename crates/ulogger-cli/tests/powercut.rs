//! Power cuts (issue 17): the outbox, the agent's inbox and the emulator's
//! data directory on the power-cut filesystem (`ulogger-powercut`, which
//! keeps unsynced bytes and unsynced directory entries in memory and
//! drops them at the cut), the process SIGKILLed and the power cut at a
//! random point of each trial. Pass: nothing that was reported durable,
//! queued or acknowledged is lost, and the copies sent again stay within
//! what was in flight and not yet synced.
//!
//! Each test prints its seed; `POWERCUT_SEED=<seed>` replays it,
//! `POWERCUT_TRIALS` changes the number of trials (default 20), and
//! `POWERCUT_DURABILITY=ordered` runs them under the ext4-like model
//! instead of strict POSIX. The
//! trials live here, not in `ulogger-powercut`, because only this
//! package's tests are given the `ulogger` binary built from this tree.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::sandbox::*;
use support::Running;
use ulogger_cloud::wire::DeviceInfo;
use ulogger_cloud::{Client, MqttConfig, OutboxConfig, Security};
use ulogger_emulator::{Emulator, EmulatorConfig, PlatformLimits, Record, RecordKind, Verdict};
use ulogger_powercut::{mount_or_skip, Durability, PowerCutMount};

/// The most records the outbox writer has in flight (its `max_inflight`).
const IN_FLIGHT: u16 = 16;
/// The writer's outbox syncs its acknowledgements once this many wait.
const ACK_SYNC_EVERY: usize = 40;
/// Records each outbox trial writes.
const RECORDS: usize = 150;
/// The most files each agent trial drops in the inbox.
const FILES: usize = 120;
/// Concurrent uploaders of the emulator trial.
const UPLOADERS: usize = 8;
/// About how many filesystem requests a whole run of each makes here
/// (the cut points are drawn up to these).
const OUTBOX_RUN_REQUESTS: u64 = 600;
const AGENT_RUN_REQUESTS: u64 = 3_500;
const EMULATOR_RUN_REQUESTS: u64 = 3_000;
/// How long a trial waits for something that should happen soon.
const DEADLINE: Duration = Duration::from_secs(60);

/// A small deterministic generator (SplitMix64): the trials' random
/// points, replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn for_test(name: &str) -> Rng {
        let seed = match std::env::var("POWERCUT_SEED") {
            Ok(seed) => seed.parse().expect("POWERCUT_SEED is a number"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        eprintln!("{name}: seed {seed} (POWERCUT_SEED={seed} replays it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        self.next() % (max + 1)
    }
}

/// Strict POSIX directory durability unless `POWERCUT_DURABILITY=ordered`
/// asks for the ext4-like model.
fn durability() -> Durability {
    match std::env::var("POWERCUT_DURABILITY").as_deref() {
        Ok("ordered") => Durability::Ordered,
        Ok("strict") | Err(_) => Durability::Strict,
        Ok(other) => panic!("POWERCUT_DURABILITY is strict or ordered, not {other}"),
    }
}

fn trials() -> usize {
    std::env::var("POWERCUT_TRIALS")
        .map(|n| n.parse().expect("POWERCUT_TRIALS is a number"))
        .unwrap_or(20)
}

/// Where a trial cuts: after this many filesystem requests of the
/// program under test, drawn from `0..=max`, where `max` is about what a
/// whole run takes (so a cut lands in any phase: creating its
/// directories, writing, syncing, delivering, removing).
#[derive(Debug, Clone, Copy)]
struct CutPoint {
    operations: u64,
}

impl CutPoint {
    fn random(rng: &mut Rng, max: u64) -> CutPoint {
        CutPoint {
            operations: rng.upto(max),
        }
    }
}

/// Runs `child` until `point` (or until it exits), stops what else
/// writes to the mount (`at_cut`, which returns once it has), SIGKILLs it, and
/// returns what it reported (`report` picks the number out of a line
/// that reports one): every line it printed before it died.
fn kill_at(
    mut child: Running,
    mount: &PowerCutMount,
    point: CutPoint,
    report: impl Fn(&str) -> Option<u64>,
    at_cut: impl FnOnce(),
) -> BTreeSet<u64> {
    let start = Instant::now();
    let target = mount.operations() + point.operations;
    while mount.operations() < target
        && start.elapsed() < DEADLINE
        && child.child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    let exited = child.child.try_wait().unwrap().is_some();
    at_cut();
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    if exited {
        eprintln!(
            "  it had finished, after {} requests",
            mount.operations() + point.operations - target
        );
    }
    // Every line it wrote before it died: the reader ends at EOF.
    let mut reported = BTreeSet::new();
    while let Ok(line) = child.lines.recv_timeout(DEADLINE) {
        if let Some(n) = report(&line) {
            reported.insert(n);
        }
    }
    reported
}

/// The number in a `log-NNNNN` name or payload within `line`.
fn log_number(line: &str) -> Option<u64> {
    let at = line.find("log-")? + 4;
    line.get(at..at + 5)?.parse().ok()
}

/// Creates `dir` (and its missing parents) the durable way, as decision
/// 18 says, for the parts of a trial that play the device's writer.
fn durable_dir(dir: &Path) {
    if dir.is_dir() {
        return;
    }
    durable_dir(dir.parent().unwrap());
    fs::create_dir(dir).unwrap();
    File::open(dir.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
}

/// Writes `bytes` to `path` durably, under another name first (as the
/// agent's writers must).
fn durable_file(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::rename(&tmp, path).unwrap();
    File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
}

fn unlimited_emulator() -> Emulator {
    Emulator::start(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited()),
    )
    .unwrap()
}

fn plaintext_config(port: u16) -> MqttConfig {
    MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(port)
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(30))
}

fn device() -> DeviceInfo {
    DeviceInfo::new(APP, "SN-POWERCUT", "test-board", "v1.0.0", GIT_HASH)
}

/// Sums the copies past the first.
fn extra(copies: &BTreeMap<usize, usize>) -> usize {
    copies.values().map(|c| c - 1).sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Delivers what is left in the outbox at `dir` to `emu`, and returns
/// once nothing is queued or in flight.
fn drain_outbox(dir: &Path, emu: &Emulator) {
    runtime().block_on(async {
        let client = Client::builder(plaintext_config(emu.addr().port()))
            .outbox(OutboxConfig::new(dir))
            .build()
            .unwrap();
        let start = Instant::now();
        loop {
            let status = client.outbox_status().unwrap();
            if status.queued == 0 && status.in_flight == 0 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "the outbox drains: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Not a test: the outbox writer that the outbox trials run as a child
/// process (this test binary run again with `POWERCUT_OUTBOX` set). It
/// enqueues `POWERCUT_RECORDS` numbered logs into an outbox delivering to
/// the emulator at `POWERCUT_PORT`, and prints `durable log-NNNNN` for
/// each as soon as its enqueue returned Ok (the outbox's word that it
/// is durable). Without the variable it does nothing.
#[test]
fn child_outbox_writer() {
    let Ok(dir) = std::env::var("POWERCUT_OUTBOX") else {
        return;
    };
    let port: u16 = std::env::var("POWERCUT_PORT").unwrap().parse().unwrap();
    let records: usize = std::env::var("POWERCUT_RECORDS").unwrap().parse().unwrap();
    runtime().block_on(async {
        let outbox = OutboxConfig::new(&dir)
            .ack_sync_every(ACK_SYNC_EVERY)
            .ack_sync_interval(Duration::from_secs(3600));
        let client = Client::builder(plaintext_config(port).max_inflight(IN_FLIGHT))
            .outbox(outbox)
            .build()
            .unwrap();
        let mut jobs = tokio::task::JoinSet::new();
        for n in 0..records {
            if jobs.len() >= 8 {
                jobs.join_next().await.unwrap().unwrap();
            }
            let client = client.clone();
            jobs.spawn(async move {
                let id = client
                    .enqueue_log(&device(), &numbered_log(n))
                    .await
                    .unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "durable log-{n:05}").unwrap();
                out.flush().unwrap();
                id
            });
        }
        let mut ids = Vec::new();
        while let Some(id) = jobs.join_next().await {
            ids.push(id.unwrap());
        }
        for id in ids {
            client.delivered(id).await.unwrap();
        }
    });
}

#[test]
fn outbox_records_reported_durable_survive_sigkill_and_power_cut() {
    let mut rng = Rng::for_test("outbox");
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_or_skip(dir.path(), durability()) else {
        return;
    };
    let (mut durable_total, mut lost_total, mut extra_total) = (0, 0, 0);
    for trial in 0..trials() {
        let emu = unlimited_emulator();
        // A fresh directory per trial, created by the writer itself: its
        // own entry must be made durable (the first bug issue 17 found).
        let outbox = mount.path().join(format!("outbox-{trial}"));
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "child_outbox_writer", "--nocapture"])
            .env("POWERCUT_OUTBOX", &outbox)
            .env("POWERCUT_PORT", emu.addr().port().to_string())
            .env("POWERCUT_RECORDS", RECORDS.to_string())
            .env("ULOGGER_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let point = CutPoint::random(&mut rng, OUTBOX_RUN_REQUESTS);
        let durable = kill_at(
            Running::spawn(command),
            &mount,
            point,
            |line| line.strip_prefix("durable ").and_then(log_number),
            || {},
        );
        mount.power_cut();

        if outbox.is_dir() {
            drain_outbox(&outbox, &emu);
        }
        let copies = copies(&emu);
        let lost: Vec<_> = durable
            .iter()
            .filter(|&&n| !copies.contains_key(&(n as usize)))
            .collect();
        let extra = extra(&copies);
        eprintln!(
            "outbox trial {trial} cut at {point:?}: {} reported durable, {} lost, {extra} extra copies",
            durable.len(),
            lost.len()
        );
        assert!(lost.is_empty(), "trial {trial}: lost {lost:?}");
        assert!(
            extra <= usize::from(IN_FLIGHT) + ACK_SYNC_EVERY,
            "trial {trial}: {extra} extra copies"
        );
        durable_total += durable.len();
        lost_total += lost.len();
        extra_total += extra;
    }
    eprintln!(
        "outbox: {} trials, {durable_total} reported durable, {lost_total} lost, \
         {extra_total} extra copies",
        trials()
    );
}

fn agent_args(emu: &Emulator, inbox: &Path, outbox: &Path) -> Vec<String> {
    let mut args = connect_args("agent", emu);
    args.extend(strings(&["--scan-interval", "20", "--inbox"]));
    args.push(s(inbox));
    args.push("--outbox".to_owned());
    args.push(s(outbox));
    args
}

fn spawn_agent(sandbox: &Sandbox, args: &[String]) -> Running {
    let mut command = sandbox.command(&[]);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Running::spawn(command)
}

/// The logs still waiting in the inbox folder `device`.
fn in_inbox(device: &Path) -> BTreeSet<u64> {
    fs::read_dir(device)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".bin").then(|| log_number(&name)).flatten()
        })
        .collect()
}

#[test]
fn files_the_agent_queued_survive_sigkill_and_power_cut() {
    let mut rng = Rng::for_test("agent");
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_or_skip(dir.path(), durability()) else {
        return;
    };
    let (mut queued_total, mut lost_total, mut extra_total, mut undone_total) = (0, 0, 0, 0);
    for trial in 0..trials() {
        // A fresh home: the session tokens are the trial's emulator's.
        let sandbox = Sandbox::new();
        let emu = unlimited_emulator();
        let inbox = mount.path().join(format!("inbox-{trial}"));
        let outbox = mount.path().join(format!("outbox-{trial}"));
        let device = inbox.join("dev1");
        durable_dir(&device);
        durable_file(
            &device.join("device.toml"),
            format!(
                "app_id = {APP}\nserial = \"SN-AGENT\"\ndevice_type = \"test-board\"\n\
                 git_version = \"v1.0.0\"\ngit_hash = \"{GIT_HASH}\"\n"
            )
            .as_bytes(),
        );
        // Some files wait when the agent starts; a writer drops more while
        // it runs, each written durably (its folder synced) before the
        // agent can see it, until the cut.
        for n in 0..FILES / 4 {
            durable_file(&device.join(format!("log-{n:05}.bin")), &numbered_log(n));
        }
        let args = agent_args(&emu, &inbox, &outbox);
        let agent = spawn_agent(&sandbox, &args);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, device) = (stop.clone(), device.clone());
            std::thread::spawn(move || {
                let mut n = FILES / 4;
                while n < FILES && !stop.load(Ordering::SeqCst) {
                    durable_file(&device.join(format!("log-{n:05}.bin")), &numbered_log(n));
                    n += 1;
                }
                n
            })
        };
        let point = CutPoint::random(&mut rng, AGENT_RUN_REQUESTS);
        let queued = kill_at(
            agent,
            &mount,
            point,
            |line| line.strip_prefix("queued ").and_then(log_number),
            || stop.store(true, Ordering::SeqCst),
        );
        let files = writer.join().unwrap();
        mount.power_cut();

        // Files it queued and removed whose removal the cut undid: they
        // are queued again (copies sent twice, not lost).
        let undone = in_inbox(&device).intersection(&queued).count();
        // Each file it queued is either back in the inbox or in the outbox
        // or delivered: the rerun finds them all.
        let mut agent = spawn_agent(&sandbox, &args);
        let start = Instant::now();
        loop {
            let delivered = copies(&emu);
            let everything_delivered = (0..files).all(|n| delivered.contains_key(&n));
            if everything_delivered && in_inbox(&device).is_empty() {
                break;
            }
            if start.elapsed() > DEADLINE {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        agent.terminate();
        let copies = copies(&emu);
        let lost: Vec<_> = queued
            .iter()
            .filter(|&&n| !copies.contains_key(&(n as usize)))
            .collect();
        let never: Vec<_> = (0..files).filter(|n| !copies.contains_key(n)).collect();
        let extra = extra(&copies);
        eprintln!(
            "agent trial {trial} cut at {point:?}: {files} files written, {} reported queued, {} lost, \
             {extra} extra copies, {undone} removals undone",
            queued.len(),
            lost.len()
        );
        assert!(lost.is_empty(), "trial {trial}: queued and lost {lost:?}");
        // The agent syncs its removals at least every 64 files (its
        // enqueue batch): a cut undoes at most that many.
        assert!(undone <= 64, "trial {trial}: {undone} removals undone");
        // A file is sent at most three times: once, once more by the
        // outbox (its acknowledgement not yet synced at the cut: run 1 is
        // shorter than the agent's 1 s ack sync interval), and once more
        // queued again (its enqueue or its removal under way at the cut).
        let most = copies.values().max().copied().unwrap_or(0);
        assert!(most <= 3, "trial {trial}: a file sent {most} times");
        // Every file was written durably: none may be lost, queued or not.
        assert!(never.is_empty(), "trial {trial}: never delivered {never:?}");
        queued_total += queued.len();
        lost_total += lost.len();
        extra_total += extra;
        undone_total += undone;
    }
    eprintln!(
        "agent: {} trials, {queued_total} reported queued, {lost_total} lost, \
         {extra_total} extra copies, {undone_total} removals undone",
        trials()
    );
}

/// The uploads the records at `data` hold as verified logs; asserts on
/// the way that every record is whole (its payload file there, of its
/// size). Counts copies per log number.
fn logs_in_records(data: &Path) -> BTreeMap<usize, usize> {
    let index = data.join(ulogger_emulator::INDEX_FILE);
    let records = if index.exists() {
        Record::read_index(&index).unwrap()
    } else {
        Vec::new()
    };
    let mut copies = BTreeMap::new();
    for record in &records {
        if let Some(file) = &record.file {
            let bytes =
                fs::read(data.join(file)).unwrap_or_else(|e| panic!("payload of {record:?}: {e}"));
            assert_eq!(bytes.len(), record.size, "{record:?}");
        }
        if record.kind != RecordKind::BinaryLog {
            continue;
        }
        assert_eq!(record.verdict, Verdict::Ok, "{record:?}");
        let bytes = fs::read(data.join(record.file.as_ref().unwrap())).unwrap();
        let n = log_number(&String::from_utf8_lossy(&bytes[25..])).unwrap();
        *copies.entry(n as usize).or_default() += 1;
    }
    copies
}

#[test]
fn uploads_the_emulator_acknowledged_survive_sigkill_and_power_cut() {
    let mut rng = Rng::for_test("emulator");
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_or_skip(dir.path(), durability()) else {
        return;
    };
    let runtime = runtime();
    let (mut lost_total, mut acked_total) = (0, 0);
    for trial in 0..trials() {
        let data = mount.path().join(format!("emulator-{trial}"));
        let running = Running::start(&[
            "--json",
            "emulator",
            "--plaintext",
            "--no-limits",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--customer-id",
            &CUSTOMER.to_string(),
        ]);
        let ready = running.json_line();
        assert_eq!(ready["event"], "ready", "{ready}");
        let addr: std::net::SocketAddr = ready["address"].as_str().unwrap().parse().unwrap();

        // Uploaders note each upload the broker acknowledged (PUBACK).
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let client = {
            let _guard = runtime.enter();
            Client::builder(plaintext_config(addr.port()).ack_timeout(Duration::from_secs(30)))
                .build()
                .unwrap()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..UPLOADERS {
            let (client, acked) = (client.clone(), acked.clone());
            tasks.spawn_on(
                async move {
                    let mut n = worker;
                    while n < 100_000 {
                        if client.upload_log(&device(), &numbered_log(n)).await.is_ok() {
                            acked.lock().unwrap().insert(n);
                        } else {
                            return;
                        }
                        n += UPLOADERS;
                    }
                },
                runtime.handle(),
            );
        }
        let point = CutPoint::random(&mut rng, EMULATOR_RUN_REQUESTS);
        kill_at(running, &mount, point, |_| None, || {});
        mount.power_cut();
        runtime.block_on(async { tasks.shutdown().await });
        drop(client);
        let acked = acked.lock().unwrap().clone();

        let copies = logs_in_records(&data);
        // And the emulator starts again on what the cut left (its record
        // database rebuilt or reopened from it).
        let restarted = Emulator::start(
            EmulatorConfig::new(CUSTOMER)
                .plaintext(true)
                .data_dir(&data),
        )
        .unwrap();
        drop(restarted);
        let lost: Vec<_> = acked.iter().filter(|n| !copies.contains_key(n)).collect();
        eprintln!(
            "emulator trial {trial} cut at {point:?}: {} acknowledged, {} lost, {} extra copies",
            acked.len(),
            lost.len(),
            extra(&copies)
        );
        assert!(
            lost.is_empty(),
            "trial {trial}: acknowledged and lost {lost:?}"
        );
        lost_total += lost.len();
        acked_total += acked.len();
    }
    eprintln!(
        "emulator: {} trials, {acked_total} acknowledged, {lost_total} lost",
        trials()
    );
}
