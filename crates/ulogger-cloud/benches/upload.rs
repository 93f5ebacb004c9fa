//! Registration latency and upload throughput of [`ulogger_cloud::Client`]
//! against a real broker, next to the two baselines that bound it.
//!
//! One run (`cargo bench -p ulogger-cloud --bench upload`):
//!
//! 1. starts a private mosquitto with mutual TLS (`require_certificate
//!    true`) and `set_tcp_nodelay true`, and attaches an emulator's cloud
//!    side to it, which answers boot registrations and verifies every log;
//! 2. times `REGISTRATIONS` sequential `Client::register` calls (distinct
//!    serials) on one open connection: p50 and p99, interleaved with the
//!    same handshake done by hand with rumqttc (the floor that the broker
//!    and the cloud set);
//! 3. sends `UPLOADS` valid 4 KiB logs per phase with four publishers,
//!    each on a fresh mutual-TLS connection, QoS 1, 100 in flight, no
//!    pacing:
//!    - `socket`: the true limit, a minimal pipelined publisher on a raw
//!      TLS socket: one task writes while fewer than 100 are
//!      unacknowledged, each burst in one vectored write of PUBLISH
//!      headers and the payloads themselves (no copy but TLS's; the bytes
//!      are checked against rumqttc's `mqttbytes` codec first), one task
//!      reads and counts PUBACKs;
//!    - `rumqttc`: a plain rumqttc `AsyncClient`, everything queued, then
//!      its event loop driven;
//!    - `client`: one `Client`, `CONCURRENCY` tasks each calling
//!      `upload_log` for the next log as soon as its last call returned;
//!    - `publish`: the same with `publish_binary_log`, which skips
//!      `upload_log`'s validation, token lookup and copy (the transport's
//!      share of the cost);
//!
//!    each running in a task of the runtime (as in a gateway), on tokio's
//!    default multi-thread runtime and on a current-thread runtime, in
//!    `ROUNDS` alternating rounds (the machine is shared and
//!    noisy), reporting publishes/s, CPU time per publish and context
//!    switches per publish of this process (every thread but the
//!    emulator's; Linux `/proc`), medians and ratios to `socket`;
//! 4. times `LONE_UPLOADS` sequential single `upload_log` calls on an
//!    idle connection, on both runtimes, called from a task and from the
//!    thread that called `block_on` (as `#[tokio::main]`'s body): CPU time
//!    and context switches per call (a gateway that uploads now and then
//!    pays this, not throughput).
//!
//! `UPLOAD_BENCH_PROFILE=<phase>` (`socket`, `rumqttc`, `client` or
//! `publish`) runs only that phase, `PROFILE_PHASES` times on the
//! multi-thread runtime after the warm-up, for a profiler to attach to:
//! `UPLOAD_BENCH_PROFILE=client perf record -g --call-graph dwarf
//! target/release/deps/upload-<hash> --bench`.
//!
//! The cloud's records go to `/dev/shm` where it exists: the file it
//! writes before answering a registration is otherwise disk latency, not
//! the client's. Headline figures are also printed as `SUITE` lines for
//! the benchmark suite.
//!
//! Targets: registration p50 < 1 ms and p99 < 5 ms on loopback; client
//! throughput on the multi-thread runtime at least 0.95 of `socket`, with
//! no more CPU per upload than rumqttc (the median of the round-by-round
//! ratios: the two phases run next to each other, so a slow spell of the
//! machine weighs on both). A missed target is reported, not
//! a failure; a failed upload, a log the cloud rejects or a missing
//! mosquitto is.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet as WirePacket, Publish as WirePublish};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use ulogger_bench::broker::{
    device, disconnect, mosquitto_version, raw_client, require_mosquitto, valid_log,
    MosquittoCloud, APP, CUSTOMER, LOG_SIZE, MAX_INFLIGHT,
};
use ulogger_bench::report::{ms, suite, verdict};
use ulogger_bench::stats::{median, percentile};
use ulogger_bench::usage::ThreadsUsage;
use ulogger_cloud::wire::{boot_payload, parse_boot_reply, DeviceInfo, Topics};
use ulogger_cloud::{Client, MqttConfig, Pacing, SessionStore};
use ulogger_emulator::{CertPaths, RecordKind, RecordWatcher};

/// Sequential registrations timed (after `WARMUP_REGISTRATIONS` untimed).
const REGISTRATIONS: usize = 200;
const WARMUP_REGISTRATIONS: usize = 10;
/// Devices whose logs are uploaded (registered before timing).
const DEVICES: usize = 20;
/// Logs per timed upload phase.
const UPLOADS: usize = 2_000;
/// Logs per untimed warm-up of each upload phase.
const WARMUP_UPLOADS: usize = 200;
/// `upload_log` calls in flight at once.
const CONCURRENCY: usize = 200;
/// Alternating rounds of every publisher on every runtime.
const ROUNDS: usize = 15;
/// Sequential single `upload_log` calls per lone-upload phase.
const LONE_UPLOADS: usize = 1_000;
/// Alternating rounds of the lone-upload phases.
const LONE_ROUNDS: usize = 5;
/// Phases run under `UPLOAD_BENCH_PROFILE`.
const PROFILE_PHASES: usize = 40;
/// The threads left out of the CPU and context-switch counts: the
/// emulator's (the cloud side, not the publisher under test). The
/// publishers under test start no thread that ends in between.
const EMULATOR_THREADS: &str = "ulogger-emulato";
/// How long the attached cloud may take to verify a phase's logs.
const VERIFY_PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    let binary = require_mosquitto("upload");
    let dir = tempfile::tempdir().expect("temporary directory");
    // The cloud writes a file per record before it answers; on a shared
    // disk that is most of a registration's time and all of its noise,
    // and it is not the client's: the fixture keeps it in memory.
    let cloud = MosquittoCloud::start(dir.path());
    let port = cloud.port();

    println!("ulogger-cloud upload benchmark");
    println!(
        "  broker: {} ({}) on 127.0.0.1:{port}, mutual TLS (require_certificate true), set_tcp_nodelay true",
        binary.display(),
        mosquitto_version(&binary),
    );
    println!(
        "  cloud:  ulogger-emulator attached to it (answers boot registrations, verifies logs), records in {}",
        cloud.emulator.data_dir().display()
    );
    println!();

    let runtimes = [
        (
            "multi",
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
        ),
        (
            "current",
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
        ),
    ];
    let mut bench = Bench {
        port,
        certs: cloud.certs.clone(),
        topics: Topics::new("", CUSTOMER, Some(0)).expect("topics"),
        store: Arc::new(SessionStore::in_memory()),
        records: cloud.emulator.watch_records(),
    };
    let outcome = bench.run(&runtimes);
    drop(runtimes);
    if let Err(message) = outcome {
        panic!(
            "{message}\n--- mosquitto log ---\n{}",
            cloud.mosquitto.log()
        );
    }
    drop(cloud);
}

struct Bench {
    port: u16,
    certs: CertPaths,
    topics: Topics,
    store: Arc<SessionStore>,
    records: RecordWatcher,
}

/// The publishers compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publisher {
    /// Pipelined QoS 1 on a raw TLS socket: the limit.
    Socket,
    /// rumqttc's `AsyncClient` and event loop.
    Rumqttc,
    /// Our `Client::upload_log`.
    Client,
    /// Our `Client::publish_binary_log`: the same publishes without
    /// `upload_log`'s validation, token lookup and copy, which tells the
    /// transport's cost apart from theirs.
    Publish,
}

impl Publisher {
    const ALL: [Publisher; 4] = [
        Publisher::Socket,
        Publisher::Rumqttc,
        Publisher::Client,
        Publisher::Publish,
    ];

    fn name(self) -> &'static str {
        match self {
            Publisher::Socket => "socket",
            Publisher::Rumqttc => "rumqttc",
            Publisher::Client => "client",
            Publisher::Publish => "publish",
        }
    }
}

/// One timed upload phase.
struct Round {
    wall: Duration,
    /// Per-call latencies (client only).
    latencies: Vec<Duration>,
    /// CPU time and context switches of this process, the emulator's
    /// thread excepted.
    usage: ThreadsUsage,
    verified: usize,
}

impl Round {
    fn rate(&self) -> f64 {
        UPLOADS as f64 / self.wall.as_secs_f64()
    }
}

/// Medians of one publisher on one runtime over the rounds.
#[derive(Default)]
struct Figures {
    rates: Vec<f64>,
    cpu_us: Vec<f64>,
    switches: Vec<f64>,
}

impl Figures {
    fn add(&mut self, round: &Round, count: usize) {
        self.rates.push(round.rate());
        self.cpu_us.push(round.usage.cpu_us_per(count));
        self.switches.push(round.usage.switches_per(count));
    }

    fn medians(&mut self) -> (f64, f64, f64) {
        (
            median(&mut self.rates),
            median(&mut self.cpu_us),
            median(&mut self.switches),
        )
    }
}

impl Bench {
    fn run(&mut self, runtimes: &[(&'static str, Runtime)]) -> Result<(), String> {
        let main = &runtimes[0].1;
        main.block_on(self.registrations())?;

        // Devices and logs for the upload phases. The payloads carry their
        // device's token already, so the raw publishers' logs verify too;
        // the client writes the same token in again.
        let devices: Vec<DeviceInfo> = (0..DEVICES)
            .map(|i| device(&format!("SN-UP-{i:03}")))
            .collect();
        let tokens = main.block_on(async {
            let client = self.client()?;
            let mut tokens = Vec::new();
            for dev in &devices {
                tokens.push(
                    client
                        .session_token(dev)
                        .await
                        .map_err(|e| format!("pre-registering {}: {e}", dev.serial))?,
                );
            }
            client.shutdown().await;
            Ok::<_, String>(tokens)
        })?;
        self.skip_records();
        let logs: Vec<(usize, Bytes)> = (0..UPLOADS)
            .map(|i| (i % DEVICES, valid_log(i, tokens[i % DEVICES])))
            .collect();
        let devices = Arc::new(devices);

        println!(
            "uploads: {UPLOADS} logs x {LOG_SIZE} B of {DEVICES} pre-registered devices per phase, \
             QoS 1, {MAX_INFLIGHT} in flight, no pacing, each phase on a fresh connection \
             (connect time excluded);"
        );
        println!(
            "  socket: pipelined publisher on a raw TLS socket (headers and payloads in vectored writes, no copy but TLS's; a writer task and a PUBACK-counting reader)"
        );
        println!("  rumqttc: one AsyncClient, all publishes queued, then its event loop driven");
        println!("  client: one Client, {CONCURRENCY} tasks calling upload_log back to back ({CONCURRENCY} calls in flight)");
        println!(
            "  publish: the same with publish_binary_log (no validation, token lookup or copy: the transport's share)"
        );
        println!(
            "  runtimes: multi = tokio's default multi-thread runtime ({} workers), current = current-thread;",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        println!(
            "  {ROUNDS} alternating rounds after an untimed warm-up of {WARMUP_UPLOADS}; CPU and context switches are this process's minus the emulator thread's"
        );
        println!();
        for (_, runtime) in runtimes {
            for publisher in Publisher::ALL {
                runtime.block_on(self.phase(publisher, &devices, &logs[..WARMUP_UPLOADS]))?;
            }
        }
        if let Ok(name) = std::env::var("UPLOAD_BENCH_PROFILE") {
            return self.profile(&name, &runtimes[0], &devices, &logs);
        }

        println!(
            "  {:<6} {:<8} {:<8} {:>9} {:>12} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10}",
            "round",
            "runtime",
            "phase",
            "wall ms",
            "per second",
            "p50 ms",
            "p99 ms",
            "CPU us/msg",
            "cs/msg",
            "vol. cs",
            "verified"
        );
        let mut figures: Vec<Vec<Figures>> = runtimes
            .iter()
            .map(|_| Publisher::ALL.iter().map(|_| Figures::default()).collect())
            .collect();
        let mut client_latencies = Vec::new();
        for round in 1..=ROUNDS {
            for (r, (rt_name, runtime)) in runtimes.iter().enumerate() {
                for (p, publisher) in Publisher::ALL.into_iter().enumerate() {
                    let result = runtime.block_on(self.phase(publisher, &devices, &logs))?;
                    print_round(round, rt_name, publisher.name(), &result);
                    figures[r][p].add(&result, UPLOADS);
                    if publisher == Publisher::Client && r == 0 {
                        client_latencies.extend_from_slice(&result.latencies);
                    }
                }
            }
        }
        client_latencies.sort_unstable();
        // Client against rumqttc CPU, round by round: the two phases ran
        // next to each other, so a slow spell of the shared machine weighs
        // on both; the spread of these ratios is the measurement's noise.
        let paired = Paired::of(&figures[0][2].cpu_us, &figures[0][1].cpu_us);
        println!();
        println!(
            "  medians        {:>12} {:>11} {:>10} {:>10}",
            "per second", "of socket", "CPU us/msg", "cs/msg"
        );
        let mut table = Vec::new();
        for (r, (rt_name, _)) in runtimes.iter().enumerate() {
            let medians: Vec<(f64, f64, f64)> =
                figures[r].iter_mut().map(Figures::medians).collect();
            let socket_rate = medians[0].0;
            for (p, publisher) in Publisher::ALL.into_iter().enumerate() {
                let (rate, cpu, switches) = medians[p];
                println!(
                    "  {rt_name:<7} {:<7} {rate:>11.0} {:>11.2} {cpu:>10.1} {switches:>10.2}",
                    publisher.name(),
                    rate / socket_rate,
                );
            }
            table.push(medians);
        }
        let [socket, rumqttc, client, publish] =
            [table[0][0], table[0][1], table[0][2], table[0][3]];
        let ratio = client.0 / socket.0;
        println!(
            "  client upload_log latency (multi): p50 {} ms, p99 {} ms",
            ms(percentile(&client_latencies, 0.50)),
            ms(percentile(&client_latencies, 0.99)),
        );
        println!(
            "  client / socket on the multi-thread runtime: {ratio:.2} (target >= 0.95: {})",
            verdict(ratio >= 0.95)
        );
        println!(
            "  client CPU per upload / rumqttc's: {:.2} of the medians; round by round (adjacent phases): median {:.2}, quartiles {:.2}-{:.2}, lower in {} of {} rounds (target <= 1: {})",
            client.1 / rumqttc.1,
            paired.median,
            paired.low_quartile,
            paired.high_quartile,
            paired.below_one,
            paired.count,
            verdict(paired.median <= 1.0)
        );
        println!();
        suite(
            "upload socket limit (multi-thread)",
            format!("{:.0} publishes/s", socket.0),
            format!("{:.1} us CPU, {:.2} cs per publish", socket.1, socket.2),
        );
        suite(
            "upload rumqttc (multi-thread)",
            format!("{:.0} publishes/s", rumqttc.0),
            format!("{:.2} of socket", rumqttc.0 / socket.0),
        );
        suite(
            "upload Client (multi-thread)",
            format!("{:.0} uploads/s", client.0),
            format!("{ratio:.2} of socket"),
        );
        suite(
            "upload Client (current-thread)",
            format!("{:.0} uploads/s", table[1][2].0),
            format!("{:.2} of socket", table[1][2].0 / table[1][0].0),
        );
        suite(
            "upload Client CPU per upload (multi-thread)",
            format!("{:.1} us", client.1),
            format!("rumqttc {:.1} us, socket {:.1} us", rumqttc.1, socket.1),
        );
        suite(
            "upload Client CPU / rumqttc's, round by round (multi-thread)",
            format!("{:.2}", paired.median),
            format!(
                "quartiles {:.2}-{:.2}, lower in {} of {} rounds",
                paired.low_quartile, paired.high_quartile, paired.below_one, paired.count
            ),
        );
        suite(
            "Client::publish_binary_log CPU per publish (multi-thread)",
            format!("{:.1} us", publish.1),
            format!("rumqttc {:.1} us, socket {:.1} us", rumqttc.1, socket.1),
        );
        suite(
            "upload Client context switches per upload (multi-thread)",
            format!("{:.2} cs", client.2),
            format!("rumqttc {:.2}, socket {:.2}", rumqttc.2, socket.2),
        );
        println!();

        self.lone_uploads(runtimes, &devices, &logs)
    }

    /// Only `name`'s phase, `PROFILE_PHASES` times on `runtime`: something
    /// steady to attach a profiler to (`perf record`), with nothing else of
    /// this process running but the emulator.
    fn profile(
        &mut self,
        name: &str,
        (rt_name, runtime): &(&'static str, Runtime),
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
    ) -> Result<(), String> {
        let publisher = Publisher::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Publisher::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "UPLOAD_BENCH_PROFILE={name}: no such phase (one of {})",
                    names.join(", ")
                )
            })?;
        println!(
            "profiling: {PROFILE_PHASES} {name} phases on the {rt_name} runtime, nothing else"
        );
        for round in 1..=PROFILE_PHASES {
            let result = runtime.block_on(self.phase(publisher, devices, logs))?;
            print_round(round, rt_name, publisher.name(), &result);
        }
        Ok(())
    }

    /// `LONE_UPLOADS` sequential single `upload_log` calls on an idle,
    /// connected client: the cost of an upload now and then.
    fn lone_uploads(
        &mut self,
        runtimes: &[(&'static str, Runtime)],
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
    ) -> Result<(), String> {
        println!(
            "lone uploads: {LONE_UPLOADS} sequential upload_log calls on one connected Client, {LONE_ROUNDS} alternating rounds;"
        );
        println!(
            "  caller: a task of the runtime (task), or the thread that called block_on, as #[tokio::main]'s body (block_on)"
        );
        println!(
            "  {:<6} {:<8} {:<9} {:>10} {:>12} {:>9} {:>9}",
            "round", "runtime", "caller", "p50 ms", "CPU us/call", "cs/call", "verified"
        );
        let callers = [("task", true), ("block_on", false)];
        let mut figures: Vec<Vec<Figures>> = runtimes
            .iter()
            .map(|_| callers.iter().map(|_| Figures::default()).collect())
            .collect();
        let logs = &logs[..LONE_UPLOADS];
        for round in 1..=LONE_ROUNDS {
            for (r, (rt_name, runtime)) in runtimes.iter().enumerate() {
                for (c, (caller, in_task)) in callers.iter().enumerate() {
                    let result = runtime.block_on(self.lone_phase(devices, logs, *in_task))?;
                    println!(
                        "  {round:<6} {rt_name:<8} {caller:<9} {:>10} {:>12.1} {:>9.2} {:>5}/{LONE_UPLOADS}",
                        ms(percentile(&result.latencies, 0.5)),
                        result.usage.cpu_us_per(LONE_UPLOADS),
                        result.usage.switches_per(LONE_UPLOADS),
                        result.verified
                    );
                    figures[r][c].add(&result, LONE_UPLOADS);
                }
            }
        }
        for (r, (rt_name, _)) in runtimes.iter().enumerate() {
            let medians: Vec<(f64, f64, f64)> =
                figures[r].iter_mut().map(Figures::medians).collect();
            for (c, (caller, _)) in callers.iter().enumerate() {
                let (_, cpu, switches) = medians[c];
                println!(
                    "  median {rt_name:<8} {caller:<9} CPU {cpu:.1} us/call, {switches:.2} context switches/call"
                );
            }
            let [(_, task_cpu, task_cs), (_, main_cpu, main_cs)] = [medians[0], medians[1]];
            suite(
                format!("lone upload_log CPU ({rt_name}, caller in a task)"),
                format!("{task_cpu:.1} us"),
                format!("block_on caller {main_cpu:.1} us"),
            );
            suite(
                format!("lone upload_log context switches ({rt_name}, caller in a task)"),
                format!("{task_cs:.2} cs"),
                format!("block_on caller {main_cs:.2}"),
            );
        }
        Ok(())
    }

    /// Sequential registrations on one open connection, interleaved with
    /// the same handshake done by a plain rumqttc client (the floor the
    /// broker and the cloud set).
    async fn registrations(&mut self) -> Result<(), String> {
        let client = self.client()?;
        let (raw, mut events) = raw_client(&self.certs, self.port, "raw-reg", 64).await?;
        for i in 0..WARMUP_REGISTRATIONS {
            let dev = device(&format!("SN-WARM-{i:04}"));
            client
                .register(&dev)
                .await
                .map_err(|e| format!("warm-up registration {i}: {e}"))?;
            let dev = device(&format!("SN-RAWWARM-{i:04}"));
            self.raw_register(&raw, &mut events, &dev).await?;
        }
        let mut latencies = Vec::with_capacity(REGISTRATIONS);
        let mut raw_latencies = Vec::with_capacity(REGISTRATIONS);
        let mut raw_subscribes = Vec::with_capacity(REGISTRATIONS);
        for i in 0..REGISTRATIONS {
            let dev = device(&format!("SN-REG-{i:04}"));
            let start = Instant::now();
            client
                .register(&dev)
                .await
                .map_err(|e| format!("registration {i}: {e}"))?;
            latencies.push(start.elapsed());
            let dev = device(&format!("SN-RAWREG-{i:04}"));
            let (subscribed, total) = self.raw_register(&raw, &mut events, &dev).await?;
            raw_subscribes.push(subscribed);
            raw_latencies.push(total);
        }
        client.shutdown().await;
        disconnect(&raw, &mut events).await;
        latencies.sort_unstable();
        raw_latencies.sort_unstable();
        raw_subscribes.sort_unstable();
        let p50 = percentile(&latencies, 0.50);
        let p99 = percentile(&latencies, 0.99);
        println!(
            "registration: {REGISTRATIONS} sequential Client::register calls, distinct serials, one open connection"
        );
        println!(
            "  p50 {:>7} ms   (target < 1 ms: {})",
            ms(p50),
            verdict(p50 < Duration::from_millis(1))
        );
        println!(
            "  p99 {:>7} ms   (target < 5 ms: {})",
            ms(p99),
            verdict(p99 < Duration::from_millis(5))
        );
        println!("  {}", summary(&latencies));
        println!(
            "  raw rumqttc, same handshake (SUBSCRIBE, SUBACK, PUBLISH, PUBACK + reply), interleaved:"
        );
        println!(
            "  p50 {:>7} ms   p99 {} ms   {}",
            ms(percentile(&raw_latencies, 0.50)),
            ms(percentile(&raw_latencies, 0.99)),
            summary(&raw_latencies)
        );
        println!(
            "  of which SUBSCRIBE to SUBACK (one broker round trip): p50 {} ms   p99 {} ms",
            ms(percentile(&raw_subscribes, 0.50)),
            ms(percentile(&raw_subscribes, 0.99)),
        );
        println!();
        self.skip_records();
        Ok(())
    }

    /// A boot registration by hand: subscribe to the reply topic, wait for
    /// the SUBACK, publish the boot payload, wait for its PUBACK and the
    /// token, then unsubscribe (without waiting), as the client does.
    /// Returns the time to the SUBACK and to the end.
    async fn raw_register(
        &self,
        raw: &AsyncClient,
        events: &mut EventLoop,
        dev: &DeviceInfo,
    ) -> Result<(Duration, Duration), String> {
        let start = Instant::now();
        let reply_topic = self
            .topics
            .boot_reply(APP, &dev.serial)
            .expect("reply topic");
        let failed = |e: &dyn std::fmt::Display| format!("raw registration of {}: {e}", dev.serial);
        raw.subscribe(reply_topic.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| failed(&e))?;
        loop {
            if let Event::Incoming(Packet::SubAck(_)) =
                events.poll().await.map_err(|e| failed(&e))?
            {
                break;
            }
        }
        let subscribed = start.elapsed();
        raw.publish(
            self.topics.boot(APP).expect("boot topic"),
            QoS::AtLeastOnce,
            false,
            boot_payload(dev),
        )
        .await
        .map_err(|e| failed(&e))?;
        let mut acked = false;
        let mut token = None;
        while !acked || token.is_none() {
            match events.poll().await.map_err(|e| failed(&e))? {
                Event::Incoming(Packet::PubAck(_)) => acked = true,
                Event::Incoming(Packet::Publish(reply)) if reply.topic == reply_topic => {
                    token = parse_boot_reply(&reply.payload).map_err(|e| failed(&e))?;
                }
                _ => {}
            }
        }
        let total = start.elapsed();
        raw.unsubscribe(reply_topic).await.map_err(|e| failed(&e))?;
        Ok((subscribed, total))
    }

    /// A connected client sharing the bench's token store.
    fn client(&self) -> Result<Client, String> {
        let config = MqttConfig::new(CUSTOMER)
            .broker("127.0.0.1")
            .port(self.port)
            .ca_file(&self.certs.ca_cert)
            .client_cert(&self.certs.client_cert, &self.certs.client_key)
            .max_inflight(MAX_INFLIGHT)
            // A local broker, and a raw baseline that is not paced either.
            .pacing(Pacing::off())
            .registration_limit(ulogger_cloud::RegistrationLimit::off());
        Client::builder(config)
            .session_store(self.store.clone())
            .build()
            .map_err(|e| format!("building the client: {e}"))
    }

    /// [`Bench::client`], once it is connected.
    async fn connected_client(&self) -> Result<Client, String> {
        let client = self.client()?;
        client
            .connected()
            .await
            .map_err(|e| format!("client connecting: {e}"))?;
        Ok(client)
    }

    async fn phase(
        &mut self,
        publisher: Publisher,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
    ) -> Result<Round, String> {
        match publisher {
            Publisher::Socket => self.socket_phase(logs).await,
            Publisher::Rumqttc => self.rumqttc_phase(logs).await,
            Publisher::Client => self.client_phase(devices, logs, true).await,
            Publisher::Publish => self.client_phase(devices, logs, false).await,
        }
    }

    /// `CONCURRENCY` calls in flight of `upload_log` (`upload`), or of
    /// `publish_binary_log`.
    async fn client_phase(
        &mut self,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
        upload: bool,
    ) -> Result<Round, String> {
        let client = self.connected_client().await?;
        // The application's side runs in a task of the runtime, as in a
        // gateway (not on the thread that called `block_on`).
        let timed = {
            let (client, devices, logs) = (client.clone(), devices.clone(), logs.to_vec());
            tokio::spawn(async move {
                // `CONCURRENCY` callers, each taking the next log as soon
                // as its previous call returned (as a gateway's device
                // handlers do): the calls, not task spawns, are measured.
                let logs = Arc::new(logs);
                let next = Arc::new(AtomicUsize::new(0));
                let mut callers = JoinSet::new();
                let before = ThreadsUsage::now_except(EMULATOR_THREADS);
                let start = Instant::now();
                for _ in 0..CONCURRENCY {
                    let (client, devices, logs, next) =
                        (client.clone(), devices.clone(), logs.clone(), next.clone());
                    callers.spawn(async move {
                        let mut latencies = Vec::new();
                        while let Some((device, log)) =
                            logs.get(next.fetch_add(1, Ordering::Relaxed))
                        {
                            let started = Instant::now();
                            if upload {
                                client.upload_log(&devices[*device], log).await.map(drop)
                            } else {
                                client.publish_binary_log(APP, log.clone()).await.map(drop)
                            }
                            .map_err(|e| format!("upload_log failed: {e}"))?;
                            latencies.push(started.elapsed());
                        }
                        Ok::<_, String>(latencies)
                    });
                }
                let mut latencies = Vec::with_capacity(UPLOADS);
                while let Some(joined) = callers.join_next().await {
                    latencies.extend(joined.map_err(|e| format!("caller task: {e}"))??);
                }
                Ok::<_, String>((
                    start.elapsed(),
                    ThreadsUsage::now_except(EMULATOR_THREADS).since(&before),
                    latencies,
                ))
            })
        };
        let (wall, usage, mut latencies) =
            timed.await.map_err(|e| format!("client task: {e}"))??;
        client.shutdown().await;
        latencies.sort_unstable();
        let verified = self.verify(logs.len()).await?;
        Ok(Round {
            wall,
            latencies,
            usage,
            verified,
        })
    }

    /// Sequential single uploads: each call waits for its PUBACK before
    /// the next starts; the caller is a task of the runtime (`in_task`) or
    /// the thread that called `block_on` (as in `#[tokio::main]`'s body).
    async fn lone_phase(
        &mut self,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
        in_task: bool,
    ) -> Result<Round, String> {
        let client = self.connected_client().await?;
        // One untimed call: the first upload of a device looks its token up.
        let (device, log) = &logs[0];
        client
            .upload_log(&devices[*device], log)
            .await
            .map_err(|e| format!("upload_log failed: {e}"))?;
        let timed = {
            let (client, devices, logs) = (client.clone(), devices.clone(), logs.to_vec());
            async move {
                let mut latencies = Vec::with_capacity(logs.len());
                let before = ThreadsUsage::now_except(EMULATOR_THREADS);
                let start = Instant::now();
                for (device, log) in &logs {
                    let started = Instant::now();
                    client
                        .upload_log(&devices[*device], log)
                        .await
                        .map_err(|e| format!("upload_log failed: {e}"))?;
                    latencies.push(started.elapsed());
                }
                Ok::<_, String>((
                    start.elapsed(),
                    ThreadsUsage::now_except(EMULATOR_THREADS).since(&before),
                    latencies,
                ))
            }
        };
        let (wall, usage, mut latencies) = if in_task {
            tokio::spawn(timed)
                .await
                .map_err(|e| format!("upload task: {e}"))??
        } else {
            timed.await?
        };
        client.shutdown().await;
        latencies.sort_unstable();
        let verified = self.verify(logs.len() + 1).await?.saturating_sub(1);
        Ok(Round {
            wall,
            latencies,
            usage,
            verified,
        })
    }

    async fn rumqttc_phase(&mut self, logs: &[(usize, Bytes)]) -> Result<Round, String> {
        // Room for every publish, so queueing never waits on the event loop.
        let (raw, events) = raw_client(&self.certs, self.port, "rumqttc", logs.len() + 16).await?;
        let topic = self.topics.binlog(APP).expect("binlog topic");
        let payloads: Vec<Bytes> = logs.iter().map(|(_, log)| log.clone()).collect();
        let timed = tokio::spawn(async move {
            let mut events = events;
            let before = ThreadsUsage::now_except(EMULATOR_THREADS);
            let start = Instant::now();
            for log in &payloads {
                raw.publish_bytes(topic.clone(), QoS::AtLeastOnce, false, log.clone())
                    .await
                    .map_err(|e| format!("rumqttc publish: {e}"))?;
            }
            let mut acked = 0;
            while acked < payloads.len() {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => return Err(format!("rumqttc client after {acked} PUBACKs: {e}")),
                }
            }
            let measured = (
                start.elapsed(),
                ThreadsUsage::now_except(EMULATOR_THREADS).since(&before),
            );
            disconnect(&raw, &mut events).await;
            Ok(measured)
        });
        let (wall, usage) = timed.await.map_err(|e| format!("rumqttc task: {e}"))??;
        let verified = self.verify(logs.len()).await?;
        Ok(Round {
            wall,
            latencies: Vec::new(),
            usage,
            verified,
        })
    }

    /// The limit: QoS 1 publishes pipelined on a raw mutual-TLS socket
    /// with the transport's codec. A writer task keeps up to
    /// `MAX_INFLIGHT` unacknowledged (one TLS write per burst); this task
    /// reads and counts PUBACKs, returning window slots per read.
    async fn socket_phase(&mut self, logs: &[(usize, Bytes)]) -> Result<Round, String> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| format!("socket publisher, {what}: {e}");
        let tls = self
            .certs
            .client_config()
            .map_err(|e| failed("TLS config", &e))?;
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| failed("connect", &e))?;
        tcp.set_nodelay(true).map_err(|e| failed("nodelay", &e))?;
        let name = ServerName::try_from("127.0.0.1").expect("an IP address is a server name");
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| failed("TLS handshake", &e))?;
        let mut connect = Connect::new(format!("cust-{CUSTOMER}-socket"));
        connect.keep_alive = 30;
        connect.clean_session = true;
        let mut out = BytesMut::with_capacity(512 * 1024);
        WirePacket::Connect(connect)
            .write(&mut out, usize::MAX)
            .map_err(|e| failed("encode CONNECT", &e))?;
        stream
            .write_all(&out)
            .await
            .map_err(|e| failed("CONNECT", &e))?;
        stream.flush().await.map_err(|e| failed("CONNECT", &e))?;
        out.clear();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            match WirePacket::read(&mut buf, 1 << 20) {
                Ok(WirePacket::ConnAck(_)) => break,
                Ok(other) => return Err(failed("CONNACK", &format!("{other:?}"))),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(failed("CONNACK", &e)),
            }
            if stream
                .read_buf(&mut buf)
                .await
                .map_err(|e| failed("CONNACK", &e))?
                == 0
            {
                return Err(failed("CONNACK", &"connection closed"));
            }
        }
        let (mut reader, mut writer) = tokio::io::split(stream);
        let topic = self.topics.binlog(APP).expect("binlog topic");
        let payloads: Vec<Bytes> = logs.iter().map(|(_, log)| log.clone()).collect();
        let count = payloads.len();
        let window = Arc::new(Semaphore::new(usize::from(MAX_INFLIGHT)));
        // Headers by hand, payloads not copied: the same bytes as the codec
        // writes (checked here), and no more work than any publisher must do.
        {
            let mut by_codec = BytesMut::new();
            let mut publish = WirePublish::from_bytes(
                topic.clone(),
                rumqttc::mqttbytes::QoS::AtLeastOnce,
                payloads[0].clone(),
            );
            publish.pkid = 1;
            WirePacket::Publish(publish)
                .write(&mut by_codec, usize::MAX)
                .map_err(|e| failed("encode PUBLISH", &e))?;
            let mut by_hand = BytesMut::new();
            publish_head(&topic, 1, payloads[0].len(), &mut by_hand);
            by_hand.extend_from_slice(&payloads[0]);
            assert_eq!(
                by_hand, by_codec,
                "the raw publisher's PUBLISH is the codec's"
            );
        }

        let before = ThreadsUsage::now_except(EMULATOR_THREADS);
        let start = Instant::now();
        let writing = {
            let window = window.clone();
            tokio::spawn(async move {
                let mut pkid = 0u16;
                let mut sent = 0;
                while sent < count {
                    let Ok(permit) = window.acquire().await else {
                        break;
                    };
                    permit.forget();
                    let mut burst = 1;
                    while sent + burst < count {
                        match window.try_acquire() {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                        burst += 1;
                    }
                    let mut chunks = Vec::with_capacity(2 * burst);
                    for payload in &payloads[sent..sent + burst] {
                        pkid = pkid.checked_add(1).unwrap_or(1);
                        publish_head(&topic, pkid, payload.len(), &mut out);
                        chunks.push(out.split().freeze());
                        chunks.push(payload.clone());
                    }
                    sent += burst;
                    let mut slices: Vec<std::io::IoSlice<'_>> =
                        chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
                    let mut rest = &mut slices[..];
                    while !rest.is_empty() {
                        let n = writer
                            .write_vectored(rest)
                            .await
                            .map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("the broker takes no more bytes".to_owned());
                        }
                        std::io::IoSlice::advance_slices(&mut rest, n);
                    }
                    writer.flush().await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(writer)
            })
        };
        // The reader runs in a task of the runtime too, as the writer does.
        let reading = tokio::spawn(async move {
            let mut acked = 0;
            while acked < count {
                let mut batch = 0;
                loop {
                    match WirePacket::read(&mut buf, 1 << 20) {
                        Ok(WirePacket::PubAck(_)) => batch += 1,
                        Ok(_) => {}
                        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                        Err(e) => return Err(failed("reading", &e)),
                    }
                }
                acked += batch;
                window.add_permits(batch);
                if acked >= count {
                    break;
                }
                if reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| failed("reading", &e))?
                    == 0
                {
                    return Err(failed("reading", &format!("closed after {acked} PUBACKs")));
                }
            }
            Ok((
                start.elapsed(),
                ThreadsUsage::now_except(EMULATOR_THREADS).since(&before),
                reader,
            ))
        });
        let (wall, usage, reader) = reading.await.map_err(|e| failed("reader task", &e))??;
        let writer = writing
            .await
            .map_err(|e| failed("writer task", &e))?
            .map_err(|e| failed("writing", &e))?;
        let mut stream = reader.unsplit(writer);
        let mut out = BytesMut::new();
        if WirePacket::Disconnect.write(&mut out, usize::MAX).is_ok() {
            let _ = stream.write_all(&out).await;
        }
        let _ = stream.shutdown().await;
        let verified = self.verify(count).await?;
        Ok(Round {
            wall,
            latencies: Vec::new(),
            usage,
            verified,
        })
    }

    /// Waits until the attached cloud has seen `n` more binary logs;
    /// returns how many it accepted. A rejected log fails the bench: it
    /// means corrupted uploads.
    async fn verify(&mut self, n: usize) -> Result<usize, String> {
        let mut ok = 0;
        let mut seen = 0;
        let waited = tokio::time::timeout(VERIFY_PATIENCE, async {
            while seen < n {
                let record = self.records.next().await;
                if record.kind != RecordKind::BinaryLog {
                    continue;
                }
                seen += 1;
                if record.is_ok() {
                    ok += 1;
                } else {
                    return Err(format!(
                        "the cloud rejected an uploaded log: {:?}",
                        record.reason
                    ));
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(result) => result.map(|()| ok),
            Err(_) => Ok(ok), // reported as fewer verified
        }
    }

    /// Forgets the records so far (boot registrations).
    fn skip_records(&mut self) {
        self.records.drain();
    }
}

/// Ratios of two series measured round by round, `a[i] / b[i]`.
struct Paired {
    median: f64,
    low_quartile: f64,
    high_quartile: f64,
    /// Rounds in which `a` was below `b`.
    below_one: usize,
    count: usize,
}

impl Paired {
    fn of(a: &[f64], b: &[f64]) -> Paired {
        let mut ratios: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let last = ratios.len().saturating_sub(1);
            ratios
                .get((last as f64 * q).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Paired {
            median: at(0.5),
            low_quartile: at(0.25),
            high_quartile: at(0.75),
            below_one: ratios.iter().filter(|&&r| r < 1.0).count(),
            count: ratios.len(),
        }
    }
}

/// The fixed and variable header of a QoS 1 PUBLISH of `payload_len`
/// bytes to `topic` (MQTT 3.1.1 §3.3), for the raw publisher.
fn publish_head(topic: &str, pkid: u16, payload_len: usize, out: &mut BytesMut) {
    let mut remaining = 2 + topic.len() + 2 + payload_len;
    out.extend_from_slice(&[0x32]);
    loop {
        let byte = (remaining % 128) as u8;
        remaining /= 128;
        if remaining == 0 {
            out.extend_from_slice(&[byte]);
            break;
        }
        out.extend_from_slice(&[byte | 0x80]);
    }
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&pkid.to_be_bytes());
}

fn print_round(round: usize, runtime: &str, phase: &str, r: &Round) {
    let (p50, p99) = if r.latencies.is_empty() {
        ("-".to_owned(), "-".to_owned())
    } else {
        (
            ms(percentile(&r.latencies, 0.50)),
            ms(percentile(&r.latencies, 0.99)),
        )
    };
    println!(
        "  {round:<6} {runtime:<8} {phase:<8} {:>9} {:>12.0} {p50:>9} {p99:>9} {:>10.1} {:>9.2} {:>9.2} {:>5}/{UPLOADS}",
        ms(r.wall),
        r.rate(),
        r.usage.cpu_us_per(UPLOADS),
        r.usage.switches_per(UPLOADS),
        r.usage.voluntary_per(UPLOADS),
        r.verified,
    );
}

/// Minimum, maximum and mean of sorted values.
fn summary(sorted: &[Duration]) -> String {
    format!(
        "min {} ms   max {} ms   mean {} ms",
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        ms(sorted.iter().sum::<Duration>() / sorted.len() as u32),
    )
}
