//! What the durable outbox costs: enqueue against the disk's own fsync,
//! delivery through it against direct uploads, and opening a large one.
//!
//! One run (`cargo bench -p ulogger-cloud --bench outbox`), in a scratch
//! directory under Cargo's `CARGO_TARGET_TMPDIR` (the real disk, not
//! `/dev/shm`: fsync must cost what it costs):
//!
//! 1. **fsync baseline**: appends of 4 KiB to a file in the outbox's
//!    directory, each followed by `sync_data` (one append and one
//!    fdatasync is the least a lone durable enqueue costs), one right
//!    before each 1-producer enqueue: this disk's fsync cost flips between
//!    fast and slow spells that last seconds, so only strictly interleaved
//!    samples compare;
//! 2. **durable enqueue**: `Client::enqueue_log` of valid 4 KiB logs by 1, 8
//!    and 64 concurrent producers, on a client whose broker address is an
//!    unused loopback port (nothing is delivered meanwhile): records/s,
//!    per-call latency, and records per batch, counted from the write calls
//!    of the outbox's writer thread (`/proc/self/task/*/io`: one write and
//!    one fdatasync per batch, less its 8-byte eventfd wake-ups of the
//!    runtime), which shows whether the group commit batches (at most one
//!    record per producer). `ROUNDS` rounds; the 1-producer p50 is
//!    compared with the fsync p50;
//! 3. **end to end, outbox vs direct**: a private mosquitto with mutual TLS
//!    and an emulator's cloud side attached (as in `benches/upload.rs`),
//!    `E2E_LOGS` 4 KiB logs of `E2E_DEVICES` pre-registered devices,
//!    alternating `E2E_ROUNDS` times: (a) `upload_log` from `E2E_CALLERS`
//!    concurrent callers, (b) `enqueue_log` from `E2E_CALLERS` producers
//!    into a durable outbox plus its background delivery, timed until every
//!    record is `delivered`. Every log must reach the cloud with an ok
//!    verdict, each exactly once (told apart by their anchor tick). Both
//!    clients run with `Pacing::off()` (mosquitto has no platform limits);
//! 4. **open**: an outbox of `OPEN_RECORDS` 4 KiB records (built with
//!    `durable(false)`), then `Outbox::open` of it, `OPEN_REPEATS` times,
//!    next to a plain `fs::read` of every segment file (the I/O floor).
//!    The page cache is warm (the files were just written): a cold open
//!    adds the disk's read time.
//!
//! Targets: 1-producer enqueue p50 within 2x the fsync p50; outbox delivery
//! at least half the direct rate; open of 100,000 records under 1 s. A
//! missed target is reported, not a failure; a failed enqueue, upload or
//! delivery, a log the cloud rejects, misses or gets twice, or a missing
//! mosquitto is. Absolute times on a shared machine are noisy; the ratios,
//! measured side by side, are the figures to compare.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use ulogger_bench::broker::{
    device, require_mosquitto, valid_log, MosquittoCloud, CUSTOMER, LOG_SIZE,
};
use ulogger_bench::report::{ms, verdict};
use ulogger_bench::stats::{median, percentile};
use ulogger_bench::usage::{filesystem_of, thread_writes};
use ulogger_cloud::wire::{DeviceInfo, LogHeader};
use ulogger_cloud::{
    Client, MqttConfig, Outbox, OutboxConfig, Pacing, RecordId, Security, SessionStore,
};
use ulogger_emulator::{CertPaths, RecordKind, RecordWatcher};

/// Enqueue phases: (producers, enqueues per producer), each about a second.
const ENQUEUE_PHASES: [(usize, usize); 3] = [(1, 200), (8, 100), (64, 50)];
/// Untimed enqueues before the first round (creates the first segment).
const WARMUP_ENQUEUES: usize = 20;
/// Enqueue rounds (each a few tenths of a second).
const ROUNDS: usize = 5;

/// Logs per end-to-end phase.
const E2E_LOGS: usize = 2_000;
/// Logs per untimed warm-up of each end-to-end phase.
const E2E_WARMUP: usize = 200;
/// Concurrent `upload_log` callers, and concurrent producers.
const E2E_CALLERS: usize = 64;
/// Devices the logs belong to (registered before timing).
const E2E_DEVICES: usize = 20;
/// Alternating direct / outbox rounds (each phase about a tenth of a
/// second, so medians of several).
const E2E_ROUNDS: usize = 5;
/// How long one end-to-end phase may take before the bench fails.
const E2E_PATIENCE: Duration = Duration::from_secs(120);

/// The name of the outbox's writer thread, whose writes are counted.
const OUTBOX_WRITER: &str = "ulogger-outbox";
/// Records in the outbox whose open is timed.
const OPEN_RECORDS: usize = 100_000;
/// Timed opens (and segment reads), alternating.
const OPEN_REPEATS: usize = 3;
/// Producers filling it.
const OPEN_FILLERS: usize = 64;

fn main() {
    let binary = require_mosquitto("outbox");
    let scratch = tempfile::Builder::new()
        .prefix("outbox-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch directory");
    let filesystem = filesystem_of(scratch.path()).unwrap_or_else(|| "unknown".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("ulogger-cloud outbox benchmark");
    println!(
        "  outbox directories under {} ({filesystem})",
        scratch.path().display()
    );
    if filesystem == "tmpfs" {
        println!("  WARNING: a memory file system; the fsync figures mean nothing here");
    }
    println!();

    let enqueue = enqueue_part(&runtime, &scratch.path().join("enqueue"));
    let e2e = e2e_part(&runtime, &binary, scratch.path());
    let open = open_part(&runtime, &scratch.path().join("open"));
    drop(runtime);

    print_summary(&enqueue, &e2e, &open);
}

// ---------------------------------------------------------------------------
// 1 and 2: fsync baseline and durable enqueue

struct EnqueueFigures {
    fsync_p50: Duration,
    single_p50: Duration,
    single_p99: Duration,
    /// Median records/s per phase of `ENQUEUE_PHASES`.
    rates: Vec<f64>,
    /// Median records per batch (write + fdatasync) per phase, where known.
    per_batch: Vec<Option<f64>>,
}

fn enqueue_part(runtime: &Runtime, dir: &Path) -> EnqueueFigures {
    let client = runtime
        .block_on(async { offline_client(OutboxConfig::new(dir)) })
        .expect("the enqueue client builds");
    let device = Arc::new(device("SN-ENQ"));
    let most = ENQUEUE_PHASES.iter().map(|(p, n)| p * n).max().unwrap_or(0);
    let logs: Arc<Vec<Bytes>> = Arc::new((0..most).map(|i| valid_log(i, 0)).collect());
    runtime
        .block_on(produce(&client, &device, &logs, 1, WARMUP_ENQUEUES))
        .unwrap_or_else(|e| panic!("warm-up enqueue: {e}"));

    // The baseline's file lives next to the segments (the outbox ignores
    // names that are not `seg-*`).
    let mut probe = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))
        .expect("fsync probe file");
    let block = vec![0x5A; LOG_SIZE];

    println!(
        "durable enqueue: valid {LOG_SIZE} B logs, Client::enqueue_log into OutboxConfig::new (durable), \
         broker unreachable (nothing delivered); {ROUNDS} rounds"
    );
    println!(
        "  fsync: write {LOG_SIZE} B appended + sync_data on a file in the outbox directory, one before each \
         1-producer enqueue (this disk's fsync flips between fast and slow spells lasting seconds)"
    );
    println!(
        "  per batch: records per write + fdatasync of the outbox's writer thread (its write calls \
         from /proc/self/task/*/io, less its eventfd wake-ups); at most the number of producers"
    );
    println!(
        "  busy ms: the phase's wall time (1 producer: its enqueues only, without the fsync probes between them)"
    );
    println!();
    println!(
        "  {:<6} {:<13} {:>8} {:>9} {:>11} {:>9} {:>9} {:>10}",
        "round", "phase", "records", "busy ms", "records/s", "p50 ms", "p99 ms", "per batch"
    );
    let mut fsyncs_all = Vec::new();
    let mut single_all = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ENQUEUE_PHASES.len()];
    let mut per_batch: Vec<Vec<f64>> = vec![Vec::new(); ENQUEUE_PHASES.len()];
    for round in 1..=ROUNDS {
        for (phase, &(producers, each)) in ENQUEUE_PHASES.iter().enumerate() {
            let writes_before = thread_writes(OUTBOX_WRITER);
            let bytes_before = segment_bytes(dir);
            let (mut latencies, busy, fsyncs) = if producers == 1 {
                let (latencies, mut fsyncs) = runtime
                    .block_on(interleaved(
                        &client, &device, &logs, each, &mut probe, &block,
                    ))
                    .unwrap_or_else(|e| panic!("enqueue with 1 producer: {e}"));
                fsyncs.sort_unstable();
                let busy = latencies.iter().sum();
                (latencies, busy, Some(fsyncs))
            } else {
                let start = Instant::now();
                let latencies = runtime
                    .block_on(produce(&client, &device, &logs, producers, each))
                    .unwrap_or_else(|e| panic!("enqueue with {producers} producers: {e}"));
                (latencies, start.elapsed(), None)
            };
            let batches =
                thread_writes(OUTBOX_WRITER)
                    .zip(writes_before)
                    .and_then(|(after, before)| {
                        batches(before, after, segment_bytes(dir) - bytes_before)
                    });
            if let Some(fsyncs) = fsyncs {
                let busy: Duration = fsyncs.iter().sum();
                println!(
                    "  {round:<6} {:<13} {:>8} {:>9} {:>11.0} {:>9} {:>9} {:>10}",
                    "fsync 4 KiB",
                    fsyncs.len(),
                    ms(busy),
                    fsyncs.len() as f64 / busy.as_secs_f64(),
                    ms(percentile(&fsyncs, 0.50)),
                    ms(percentile(&fsyncs, 0.99)),
                    "-",
                );
                fsyncs_all.extend_from_slice(&fsyncs);
            }
            latencies.sort_unstable();
            let records = producers * each;
            let rate = records as f64 / busy.as_secs_f64();
            let batch = batches.map(|b| records as f64 / b as f64);
            println!(
                "  {round:<6} {:<13} {records:>8} {:>9} {rate:>11.0} {:>9} {:>9} {:>10}",
                format!(
                    "{producers} producer{}",
                    if producers == 1 { "" } else { "s" }
                ),
                ms(busy),
                ms(percentile(&latencies, 0.50)),
                ms(percentile(&latencies, 0.99)),
                batch.map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
            );
            rates[phase].push(rate);
            if let Some(batch) = batch {
                per_batch[phase].push(batch);
            }
            if producers == 1 {
                single_all.extend_from_slice(&latencies);
            }
        }
    }
    drop(probe);
    runtime.block_on(client.shutdown());
    drop(client);

    fsyncs_all.sort_unstable();
    single_all.sort_unstable();
    let figures = EnqueueFigures {
        fsync_p50: percentile(&fsyncs_all, 0.50),
        single_p50: percentile(&single_all, 0.50),
        single_p99: percentile(&single_all, 0.99),
        rates: rates.iter_mut().map(|r| median(r)).collect(),
        per_batch: per_batch
            .iter_mut()
            .map(|b| (!b.is_empty()).then(|| median(b)))
            .collect(),
    };
    println!();
    println!(
        "  over all rounds: fsync p50 {} ms; 1 producer p50 {} ms, p99 {} ms",
        ms(figures.fsync_p50),
        ms(figures.single_p50),
        ms(figures.single_p99)
    );
    println!();
    figures
}

/// One producer: `n` times, a timed probe append + fdatasync, then a timed
/// enqueue, so both see the disk in the same mood. Returns the enqueue
/// latencies and the fsync times.
async fn interleaved(
    client: &Client,
    device: &DeviceInfo,
    logs: &[Bytes],
    n: usize,
    probe: &mut std::fs::File,
    block: &[u8],
) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let mut latencies = Vec::with_capacity(n);
    let mut fsyncs = Vec::with_capacity(n);
    for i in 0..n {
        // Blocking here is harmless: this future runs on the bench's main
        // thread, not on a runtime worker.
        let t = Instant::now();
        probe
            .write_all(block)
            .and_then(|()| probe.sync_data())
            .map_err(|e| format!("fsync probe: {e}"))?;
        fsyncs.push(t.elapsed());
        let t = Instant::now();
        client
            .enqueue_log(device, &logs[i % logs.len()])
            .await
            .map_err(|e| e.to_string())?;
        latencies.push(t.elapsed());
    }
    Ok((latencies, fsyncs))
}

/// Batches (write + fdatasync) the writer made between two readings of
/// [`thread_writes`] of the outbox writer while the segments grew by `appended` bytes. Besides
/// one write per batch, the writer thread writes 8 bytes to an eventfd
/// whenever its replies wake a parked runtime worker; those are told
/// apart by their bytes.
fn batches(before: (u64, u64), after: (u64, u64), appended: u64) -> Option<u64> {
    let calls = after.0.checked_sub(before.0)?;
    let wakeups = (after.1.checked_sub(before.1)?).checked_sub(appended)? / 8;
    calls.checked_sub(wakeups).filter(|b| *b > 0)
}

/// Bytes in the segment files of the outbox in `dir`.
fn segment_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `producers` tasks each enqueue `each` logs one after the other; returns
/// every call's latency.
async fn produce(
    client: &Client,
    device: &Arc<DeviceInfo>,
    logs: &Arc<Vec<Bytes>>,
    producers: usize,
    each: usize,
) -> Result<Vec<Duration>, String> {
    let mut tasks = JoinSet::new();
    for p in 0..producers {
        let (client, device, logs) = (client.clone(), device.clone(), logs.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(each);
            for i in 0..each {
                let log = &logs[(p * each + i) % logs.len()];
                let t = Instant::now();
                client
                    .enqueue_log(&device, log)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut all = Vec::with_capacity(producers * each);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| format!("producer task: {e}"))??);
    }
    Ok(all)
}

/// A client whose broker address is a loopback port nothing listens on:
/// it keeps trying to connect (with backoff) and delivers nothing.
fn offline_client(outbox: OutboxConfig) -> Result<Client, String> {
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let config = MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(unused)
        .security(Security::Plaintext);
    Client::builder(config)
        .outbox(outbox)
        .build()
        .map_err(|e| format!("building the offline client: {e}"))
}

// ---------------------------------------------------------------------------
// 3: end to end, outbox vs direct

struct E2eFigures {
    direct: f64,
    outbox: f64,
}

fn e2e_part(runtime: &Runtime, binary: &Path, scratch: &Path) -> E2eFigures {
    let certs_dir = tempfile::tempdir().expect("certificate directory");
    let cloud = MosquittoCloud::start(certs_dir.path());
    let (port, emulator) = (cloud.port(), &cloud.emulator);

    println!(
        "end to end: {E2E_LOGS} logs x {LOG_SIZE} B of {E2E_DEVICES} pre-registered devices per phase, \
         QoS 1, the client's default max_inflight (100), pacing off"
    );
    println!(
        "  broker: {} on 127.0.0.1:{port}, mutual TLS, set_tcp_nodelay true; cloud: ulogger-emulator attached, records in {}",
        binary.display(),
        emulator.data_dir().display()
    );
    println!(
        "  direct: one Client, {E2E_CALLERS} concurrent upload_log callers; \
         outbox: one Client with a durable outbox, {E2E_CALLERS} enqueue_log producers, timed until every id is delivered"
    );
    println!(
        "  (each phase on a fresh connection and, for the outbox, a fresh directory; connect time excluded; \
         after an untimed warm-up of {E2E_WARMUP})"
    );
    println!();

    let mut bench = E2e {
        port,
        certs: cloud.certs.clone(),
        store: Arc::new(SessionStore::in_memory()),
        records: emulator.watch_records(),
        cloud_dir: emulator.data_dir().to_path_buf(),
        scratch: scratch.to_path_buf(),
    };
    let outcome = runtime.block_on(async {
        tokio::time::timeout(E2E_PATIENCE * (2 * E2E_ROUNDS as u32 + 2), bench.run())
            .await
            .unwrap_or_else(|_| Err("the end-to-end part took too long".to_owned()))
    });
    let figures = match outcome {
        Ok(figures) => figures,
        Err(message) => panic!(
            "{message}\n--- mosquitto log ---\n{}",
            cloud.mosquitto.log()
        ),
    };
    drop(cloud);
    figures
}

struct E2e {
    port: u16,
    certs: CertPaths,
    store: Arc<SessionStore>,
    records: RecordWatcher,
    cloud_dir: PathBuf,
    scratch: PathBuf,
}

/// One timed end-to-end phase.
struct Phase {
    wall: Duration,
    /// Outbox only: when the last enqueue returned.
    enqueued: Option<Duration>,
}

impl E2e {
    async fn run(&mut self) -> Result<E2eFigures, String> {
        let devices: Vec<DeviceInfo> = (0..E2E_DEVICES)
            .map(|i| device(&format!("SN-E2E-{i:03}")))
            .collect();
        let client = self.client(None)?;
        for dev in &devices {
            client
                .session_token(dev)
                .await
                .map_err(|e| format!("pre-registering {}: {e}", dev.serial))?;
        }
        client.shutdown().await;
        self.records.drain();
        let devices = Arc::new(devices);
        // The client writes each device's token in; the anchor tick tells
        // the logs apart at the cloud.
        let logs: Arc<Vec<(usize, Bytes)>> = Arc::new(
            (0..E2E_LOGS)
                .map(|i| (i % E2E_DEVICES, valid_log(i, 0)))
                .collect(),
        );
        let warmup: Arc<Vec<(usize, Bytes)>> = Arc::new(logs[..E2E_WARMUP].to_vec());
        self.direct(&devices, &warmup).await?;
        self.outbox(&devices, &warmup).await?;

        println!(
            "  {:<6} {:<7} {:>9} {:>10} {:>14} {:>10}",
            "round", "phase", "wall ms", "logs/s", "enqueued ms", "verified"
        );
        let mut direct_rates = Vec::new();
        let mut outbox_rates = Vec::new();
        for round in 1..=E2E_ROUNDS {
            let direct = self.direct(&devices, &logs).await?;
            print_phase(round, "direct", &direct);
            direct_rates.push(E2E_LOGS as f64 / direct.wall.as_secs_f64());
            let outbox = self.outbox(&devices, &logs).await?;
            print_phase(round, "outbox", &outbox);
            outbox_rates.push(E2E_LOGS as f64 / outbox.wall.as_secs_f64());
        }
        let figures = E2eFigures {
            direct: median(&mut direct_rates),
            outbox: median(&mut outbox_rates),
        };
        println!();
        println!(
            "  median direct {:.0} logs/s, outbox {:.0} logs/s, ratio outbox / direct {:.2}",
            figures.direct,
            figures.outbox,
            figures.outbox / figures.direct
        );
        println!();
        Ok(figures)
    }

    /// A client sharing the bench's token store, with an outbox if given.
    fn client(&self, outbox: Option<OutboxConfig>) -> Result<Client, String> {
        let config = MqttConfig::new(CUSTOMER)
            .broker("127.0.0.1")
            .port(self.port)
            .ca_file(&self.certs.ca_cert)
            .client_cert(&self.certs.client_cert, &self.certs.client_key)
            .pacing(Pacing::off())
            .registration_limit(ulogger_cloud::RegistrationLimit::off());
        let mut builder = Client::builder(config).session_store(self.store.clone());
        if let Some(outbox) = outbox {
            builder = builder.outbox(outbox);
        }
        builder
            .build()
            .map_err(|e| format!("building the client: {e}"))
    }

    async fn direct(
        &mut self,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &Arc<Vec<(usize, Bytes)>>,
    ) -> Result<Phase, String> {
        let client = self.client(None)?;
        client
            .connected()
            .await
            .map_err(|e| format!("client connecting: {e}"))?;
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for caller in 0..E2E_CALLERS {
            let (client, devices, logs) = (client.clone(), devices.clone(), logs.clone());
            tasks.spawn(async move {
                for (device, log) in logs.iter().skip(caller).step_by(E2E_CALLERS) {
                    client
                        .upload_log(&devices[*device], log)
                        .await
                        .map_err(|e| format!("upload_log failed: {e}"))?;
                }
                Ok::<_, String>(())
            });
        }
        let joined = tokio::time::timeout(E2E_PATIENCE, async {
            while let Some(joined) = tasks.join_next().await {
                joined.map_err(|e| format!("upload task: {e}"))??;
            }
            Ok::<_, String>(())
        })
        .await;
        joined.map_err(|_| "direct uploads took too long".to_owned())??;
        let wall = start.elapsed();
        client.shutdown().await;
        self.verify(logs.len()).await?;
        Ok(Phase {
            wall,
            enqueued: None,
        })
    }

    async fn outbox(
        &mut self,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &Arc<Vec<(usize, Bytes)>>,
    ) -> Result<Phase, String> {
        let dir = tempfile::Builder::new()
            .prefix("e2e-")
            .tempdir_in(&self.scratch)
            .map_err(|e| format!("outbox directory: {e}"))?;
        let client = self.client(Some(OutboxConfig::new(dir.path())))?;
        client
            .connected()
            .await
            .map_err(|e| format!("client connecting: {e}"))?;
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for producer in 0..E2E_CALLERS {
            let (client, devices, logs) = (client.clone(), devices.clone(), logs.clone());
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for (device, log) in logs.iter().skip(producer).step_by(E2E_CALLERS) {
                    ids.push(
                        client
                            .enqueue_log(&devices[*device], log)
                            .await
                            .map_err(|e| format!("enqueue_log failed: {e}"))?,
                    );
                }
                Ok::<_, String>(ids)
            });
        }
        let waited = tokio::time::timeout(E2E_PATIENCE, async {
            let mut ids: Vec<RecordId> = Vec::with_capacity(logs.len());
            while let Some(joined) = tasks.join_next().await {
                ids.extend(joined.map_err(|e| format!("producer task: {e}"))??);
            }
            let enqueued = start.elapsed();
            for id in ids {
                client
                    .delivered(id)
                    .await
                    .map_err(|e| format!("record {id} not delivered: {e}"))?;
            }
            Ok::<_, String>(enqueued)
        })
        .await;
        let enqueued = waited.map_err(|_| "outbox delivery took too long".to_owned())??;
        let wall = start.elapsed();
        let status = client
            .outbox_status()
            .map_err(|e| format!("outbox status: {e}"))?;
        if status.delivered != logs.len() as u64 || status.dead != 0 || status.queued != 0 {
            return Err(format!(
                "the outbox does not account for every log: {status:?}"
            ));
        }
        client.shutdown().await;
        drop(client);
        self.verify(logs.len()).await?;
        Ok(Phase {
            wall,
            enqueued: Some(enqueued),
        })
    }

    /// Waits until the cloud has seen `n` more binary logs, and checks that
    /// they are logs 0..n, each once, each accepted.
    async fn verify(&mut self, n: usize) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        let waited = tokio::time::timeout(E2E_PATIENCE, async {
            while seen.len() < n {
                let record = self.records.next().await;
                if record.kind != RecordKind::BinaryLog {
                    continue;
                }
                if !record.is_ok() {
                    return Err(format!(
                        "the cloud rejected an uploaded log: {:?}",
                        record.reason
                    ));
                }
                let file = record
                    .file
                    .as_ref()
                    .ok_or("the cloud stored an accepted log nowhere")?;
                let bytes = fs::read(self.cloud_dir.join(file))
                    .map_err(|e| format!("reading the cloud's copy {}: {e}", file.display()))?;
                let tick = LogHeader::parse(&bytes)
                    .map_err(|e| format!("the cloud's copy of a log: {e}"))?
                    .anchor_tick
                    .ok_or("a log without its anchor tick")?;
                if !seen.insert(tick) {
                    return Err(format!("log {tick} reached the cloud twice"));
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(format!(
                "only {} of {n} logs reached the cloud in {E2E_PATIENCE:?}",
                seen.len()
            )),
        }?;
        if seen.iter().copied().ne(0..n as u32) {
            return Err("the cloud got other logs than the ones sent".to_owned());
        }
        Ok(())
    }
}

fn print_phase(round: usize, phase: &str, p: &Phase) {
    println!(
        "  {round:<6} {phase:<7} {:>9} {:>10.0} {:>14} {:>5}/{E2E_LOGS}",
        ms(p.wall),
        E2E_LOGS as f64 / p.wall.as_secs_f64(),
        p.enqueued.map_or_else(|| "-".to_owned(), ms),
        E2E_LOGS,
    );
}

// ---------------------------------------------------------------------------
// 4: open

struct OpenFigures {
    records: usize,
    segment_bytes: u64,
    segments: usize,
    payload_bytes: u64,
    open: Duration,
    read: Duration,
}

fn open_part(runtime: &Runtime, dir: &Path) -> OpenFigures {
    let fill_start = Instant::now();
    runtime
        .block_on(async {
            let client = offline_client(OutboxConfig::new(dir).durable(false))?;
            let device = Arc::new(device("SN-OPEN"));
            let logs: Arc<Vec<Bytes>> =
                Arc::new((0..OPEN_FILLERS).map(|i| valid_log(i, 0)).collect());
            let each = OPEN_RECORDS / OPEN_FILLERS;
            produce(&client, &device, &logs, OPEN_FILLERS, each).await?;
            let rest = OPEN_RECORDS - each * OPEN_FILLERS;
            produce(&client, &device, &logs, 1, rest).await?;
            client.shutdown().await;
            Ok::<_, String>(())
        })
        .unwrap_or_else(|e| panic!("filling the outbox to open: {e}"));
    let fill = fill_start.elapsed();
    let segments: Vec<PathBuf> = fs::read_dir(dir)
        .expect("outbox directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
        })
        .collect();
    let segment_bytes: u64 = segments
        .iter()
        .map(|p| fs::metadata(p).expect("segment metadata").len())
        .sum();

    println!(
        "open: an outbox of {OPEN_RECORDS} records x {LOG_SIZE} B (filled with durable(false) by {OPEN_FILLERS} producers in {} ms), \
         then Outbox::open(OutboxConfig::new(dir)) {OPEN_REPEATS} times;",
        ms(fill)
    );
    println!("  next to fs::read of every segment file (the I/O floor); page cache warm");
    println!();
    println!(
        "  {:<6} {:>12} {:>12} {:>9} {:>12}",
        "repeat", "read ms", "open ms", "records", "queued MiB"
    );
    let mut opens = Vec::new();
    let mut reads = Vec::new();
    let mut records = 0;
    let mut payload_bytes = 0;
    for repeat in 1..=OPEN_REPEATS {
        let start = Instant::now();
        let mut read_bytes = 0;
        for segment in &segments {
            read_bytes += fs::read(segment).expect("segment readable").len() as u64;
        }
        let read = start.elapsed();
        assert_eq!(read_bytes, segment_bytes);

        let start = Instant::now();
        let outbox = Outbox::open(OutboxConfig::new(dir))
            .unwrap_or_else(|e| panic!("opening the filled outbox: {e}"));
        let open = start.elapsed();
        let status = outbox.status();
        records = outbox.records().len();
        payload_bytes = status.queued_bytes;
        if records != OPEN_RECORDS || status.queued != OPEN_RECORDS || status.corrupt != 0 {
            panic!(
                "the opened outbox does not hold what was enqueued: {records} records, {status:?}"
            );
        }
        drop(outbox);
        println!(
            "  {repeat:<6} {:>12} {:>12} {records:>9} {:>12.1}",
            ms(read),
            ms(open),
            payload_bytes as f64 / (1024.0 * 1024.0)
        );
        opens.push(open);
        reads.push(read);
    }
    opens.sort_unstable();
    reads.sort_unstable();
    let figures = OpenFigures {
        records,
        segment_bytes,
        segments: segments.len(),
        payload_bytes,
        open: opens[opens.len() / 2],
        read: reads[reads.len() / 2],
    };
    println!();
    println!(
        "  median open {} ms, read {} ms ({} segment files, {:.1} MiB)",
        ms(figures.open),
        ms(figures.read),
        figures.segments,
        figures.segment_bytes as f64 / (1024.0 * 1024.0)
    );
    println!();
    figures
}

// ---------------------------------------------------------------------------
// Summary and helpers

fn print_summary(enqueue: &EnqueueFigures, e2e: &E2eFigures, open: &OpenFigures) {
    println!("summary (medians; ratios from the same run)");
    let row = |what: &str, figure: String, target: &str, verdict: &str| {
        println!("  {what:<44} {figure:>16}   {target:<16} {verdict}");
    };
    row(
        "fsync p50 (4 KiB append + sync_data)",
        format!("{} ms", ms(enqueue.fsync_p50)),
        "",
        "",
    );
    for ((&(producers, _), rate), batch) in ENQUEUE_PHASES
        .iter()
        .zip(&enqueue.rates)
        .zip(&enqueue.per_batch)
    {
        row(
            &format!(
                "durable enqueue, {producers} producer{}",
                if producers == 1 { "" } else { "s" }
            ),
            format!("{rate:.0} rec/s"),
            "",
            "",
        );
        row(
            "  records per batch (write + fdatasync)",
            batch.map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
            &format!("<= {producers}"),
            "",
        );
    }
    row(
        "1-producer enqueue p50 / p99",
        format!("{} / {} ms", ms(enqueue.single_p50), ms(enqueue.single_p99)),
        "",
        "",
    );
    let ratio = enqueue.single_p50.as_secs_f64() / enqueue.fsync_p50.as_secs_f64();
    row(
        "1-producer enqueue p50 / fsync p50",
        format!("{ratio:.2}"),
        "<= 2.00",
        verdict(ratio <= 2.0),
    );
    row(
        "end to end, direct upload_log (64 callers)",
        format!("{:.0} logs/s", e2e.direct),
        "",
        "",
    );
    row(
        "end to end, outbox enqueue + delivery",
        format!("{:.0} logs/s", e2e.outbox),
        "",
        "",
    );
    let ratio = e2e.outbox / e2e.direct;
    row(
        "outbox / direct",
        format!("{ratio:.2}"),
        ">= 0.50",
        verdict(ratio >= 0.5),
    );
    row(
        &format!(
            "open of {} records ({:.0} MiB payload, {:.0} MiB on disk)",
            open.records,
            open.payload_bytes as f64 / (1024.0 * 1024.0),
            open.segment_bytes as f64 / (1024.0 * 1024.0)
        ),
        format!("{} ms", ms(open.open)),
        "< 1000 ms",
        verdict(open.open < Duration::from_secs(1)),
    );
    row(
        "open / fs::read of the segments",
        format!("{:.2}", open.open.as_secs_f64() / open.read.as_secs_f64()),
        "",
        "",
    );

    // The headline figures once more, for scripts/bench-suite.
    println!();
    let single = enqueue.single_p50.as_secs_f64() / enqueue.fsync_p50.as_secs_f64();
    println!(
        "SUITE outbox 1-producer durable enqueue p50 | {} ms | {single:.2} of an fsync (goal <= 2.00)",
        ms(enqueue.single_p50)
    );
    if let (Some(&(producers, _)), Some(rate)) = (ENQUEUE_PHASES.last(), enqueue.rates.last()) {
        println!(
            "SUITE outbox durable enqueue, {producers} producers | {rate:.0} records/s | group commit"
        );
    }
    println!(
        "SUITE outbox end to end, enqueue + delivery | {:.0} logs/s | {:.2} of direct upload_log (goal >= 0.50)",
        e2e.outbox,
        e2e.outbox / e2e.direct
    );
    println!(
        "SUITE outbox open of {} records | {} ms | {:.2} of fs::read of the segments (goal < 1000 ms)",
        open.records,
        ms(open.open),
        open.open.as_secs_f64() / open.read.as_secs_f64()
    );
}
