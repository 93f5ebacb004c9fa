//! Registration latency and upload throughput of [`ulogger_cloud::Client`]
//! against a real broker, next to a plain rumqttc publisher as baseline.
//!
//! One run (`cargo bench -p ulogger-cloud --bench upload`):
//!
//! 1. starts a private mosquitto with mutual TLS (`require_certificate
//!    true`) and `set_tcp_nodelay true`, and attaches an emulator's cloud
//!    side to it, which answers boot registrations and verifies every log;
//! 2. times `REGISTRATIONS` sequential `Client::register` calls (distinct
//!    serials) on one open connection: p50 and p99;
//! 3. uploads `UPLOADS` valid 4 KiB logs of `DEVICES` pre-registered devices
//!    through one `Client`, `CONCURRENCY` calls in flight: uploads/s and
//!    per-call latency;
//! 4. publishes the same payloads to the same topic with a plain rumqttc
//!    `AsyncClient` (QoS 1, pipelined, one mutual-TLS connection):
//!    publishes/s;
//! 5. alternates 3 and 4 `ROUNDS` times (the machine is shared and noisy)
//!    and reports every round, the medians and the ratio client / raw.
//!
//! For context it also times the registration handshake done by hand with
//! rumqttc, interleaved with the client's (the floor that the broker and
//! the cloud set), and each upload phase's CPU time in this process
//! without the emulator's thread (`CPU us/msg`; Linux only). The cloud's
//! records go to `/dev/shm` where it exists: the file it writes before
//! answering a registration is otherwise disk latency, not the client's.
//!
//! Targets: registration p50 < 1 ms and p99 < 5 ms on loopback; client
//! throughput at least half the raw one. A missed target is reported, not
//! a failure; a failed upload, a log the cloud rejects or a missing
//! mosquitto is.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use ulogger_cloud::wire::{boot_payload, parse_boot_reply, DeviceInfo, Topics};
use ulogger_cloud::{Client, MqttConfig, Pacing, SessionStore};
use ulogger_emulator::testing::{find_mosquitto, Mosquitto, MosquittoTls};
use ulogger_emulator::{AttachTo, CertPaths, Emulator, EmulatorConfig, RecordKind, RecordWatcher};

use support::{
    device, median, ms, percentile, valid_log, verdict, APP, CUSTOMER, LOG_SIZE, MOSQUITTO_EXTRA,
    SHM,
};

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
/// Unacknowledged publishes per connection, for the client and rumqttc alike
/// (the client's default, AWS IoT's limit).
const MAX_INFLIGHT: u16 = 100;
/// Alternating raw/client rounds.
const ROUNDS: usize = 3;
/// How long the attached cloud may take to verify a phase's logs.
const VERIFY_PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    let Some(binary) = find_mosquitto() else {
        panic!(
            "the upload benchmark needs mosquitto and found none \
             (install it: apt-get install -y mosquitto; or set MOSQUITTO=/path/to/mosquitto)"
        );
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = CertPaths::generate(dir.path(), CUSTOMER).expect("certificates generated");
    let mosquitto =
        Mosquitto::start_with_config(MosquittoTls::Mutual(certs.clone()), MOSQUITTO_EXTRA)
            .expect("mosquitto was found above, so it starts or panics");
    let port = mosquitto.addr().port();
    // The cloud writes a file per record before it answers; on a shared
    // disk that is most of a registration's time and all of its noise,
    // and it is not the client's. Keep it in memory where we can (else
    // the emulator's own temporary directory, which it does not fsync).
    let cloud_dir = tempfile::tempdir_in(SHM).ok();
    let mut cloud =
        EmulatorConfig::new(CUSTOMER).attach(AttachTo::new("127.0.0.1", port).mutual_tls(
            &certs.ca_cert,
            &certs.client_cert,
            &certs.client_key,
        ));
    if let Some(dir) = &cloud_dir {
        cloud = cloud.data_dir(dir.path());
    }
    let emulator = Emulator::start(cloud)
        .unwrap_or_else(|e| panic!("the emulator's cloud side cannot attach to mosquitto: {e}"));

    println!("ulogger-cloud upload benchmark");
    println!(
        "  broker: {} ({}) on 127.0.0.1:{port}, mutual TLS (require_certificate true), set_tcp_nodelay true",
        binary.display(),
        mosquitto_version(&binary),
    );
    println!(
        "  cloud:  ulogger-emulator attached to it (answers boot registrations, verifies logs), records in {}",
        emulator.data_dir().display()
    );
    println!();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bench = Bench {
        port,
        certs,
        topics: Topics::new("", CUSTOMER, None).expect("topics"),
        store: Arc::new(SessionStore::in_memory()),
        records: emulator.watch_records(),
    };
    let outcome = runtime.block_on(bench.run());
    drop(runtime);
    if let Err(message) = outcome {
        panic!("{message}\n--- mosquitto log ---\n{}", mosquitto.log());
    }
    drop(emulator);
    drop(cloud_dir);
}

struct Bench {
    port: u16,
    certs: CertPaths,
    topics: Topics,
    store: Arc<SessionStore>,
    records: RecordWatcher,
}

/// One timed upload phase.
struct Round {
    wall: Duration,
    /// Per-call latencies (client only).
    latencies: Vec<Duration>,
    /// CPU time of this process minus the emulator's thread, if known.
    cpu: Option<Duration>,
    verified: usize,
}

impl Round {
    fn rate(&self) -> f64 {
        UPLOADS as f64 / self.wall.as_secs_f64()
    }
}

impl Bench {
    async fn run(mut self) -> Result<(), String> {
        self.registrations().await?;

        // Devices and logs for the upload phases. The payloads carry their
        // device's token already, so the raw publisher's logs verify too;
        // the client writes the same token in again.
        let devices: Vec<DeviceInfo> = (0..DEVICES)
            .map(|i| device(&format!("SN-UP-{i:03}")))
            .collect();
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
        self.skip_records();
        let logs: Vec<(usize, Bytes)> = (0..UPLOADS)
            .map(|i| (i % DEVICES, valid_log(i, tokens[i % DEVICES])))
            .collect();
        let devices = Arc::new(devices);

        println!(
            "uploads: {UPLOADS} logs x {LOG_SIZE} B of {DEVICES} pre-registered devices per phase, \
             QoS 1, max_inflight {MAX_INFLIGHT}, no pacing for both;"
        );
        println!(
            "  client: one Client, {CONCURRENCY} upload_log calls in flight; \
             raw: one rumqttc AsyncClient, all publishes queued then the event loop driven"
        );
        println!("  (each phase on a fresh connection, after an untimed warm-up of {WARMUP_UPLOADS}; connect time excluded)");
        println!();
        self.raw_phase(&logs[..WARMUP_UPLOADS], "warmup").await?;
        self.client_phase(&devices, &logs[..WARMUP_UPLOADS]).await?;

        println!(
            "  {:<6} {:<7} {:>9} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "round",
            "phase",
            "wall ms",
            "per second",
            "MiB/s",
            "p50 ms",
            "p99 ms",
            "CPU us/msg",
            "verified"
        );
        let mut raw_rates = Vec::new();
        let mut client_rates = Vec::new();
        let mut client_latencies = Vec::new();
        for round in 1..=ROUNDS {
            let raw = self.raw_phase(&logs, &round.to_string()).await?;
            print_round(round, "raw", &raw);
            raw_rates.push(raw.rate());
            let cli = self.client_phase(&devices, &logs).await?;
            print_round(round, "client", &cli);
            client_rates.push(cli.rate());
            client_latencies.extend_from_slice(&cli.latencies);
        }
        let raw_median = median(&mut raw_rates);
        let client_median = median(&mut client_rates);
        let ratio = client_median / raw_median;
        client_latencies.sort_unstable();
        println!();
        println!("  median raw:    {raw_median:>9.0} publishes/s");
        println!(
            "  median client: {client_median:>9.0} uploads/s   upload_log latency over all rounds: p50 {} ms, p99 {} ms",
            ms(percentile(&client_latencies, 0.50)),
            ms(percentile(&client_latencies, 0.99)),
        );
        println!(
            "  ratio client / raw: {ratio:.2}  (target >= 0.50: {})",
            verdict(ratio >= 0.5)
        );
        Ok(())
    }

    /// Sequential registrations on one open connection, interleaved with
    /// the same handshake done by a plain rumqttc client (the floor the
    /// broker and the cloud set).
    async fn registrations(&mut self) -> Result<(), String> {
        let client = self.client()?;
        let (raw, mut events) = self.raw_client("raw-reg", 64).await?;
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
            .pacing(Pacing::off());
        Client::builder(config)
            .session_store(self.store.clone())
            .build()
            .map_err(|e| format!("building the client: {e}"))
    }

    async fn client_phase(
        &mut self,
        devices: &Arc<Vec<DeviceInfo>>,
        logs: &[(usize, Bytes)],
    ) -> Result<Round, String> {
        let client = self.client()?;
        client
            .connected()
            .await
            .map_err(|e| format!("client connecting: {e}"))?;
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        let cpu_before = own_cpu();
        let start = Instant::now();
        for (device, log) in logs {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let client = client.clone();
            let devices = devices.clone();
            let (device, log) = (*device, log.clone());
            tasks.spawn(async move {
                let started = Instant::now();
                let result = client.upload_log(&devices[device], &log).await;
                drop(slot);
                result.map(|_| started.elapsed())
            });
        }
        let mut latencies = Vec::with_capacity(logs.len());
        while let Some(joined) = tasks.join_next().await {
            let latency = joined
                .map_err(|e| format!("upload task: {e}"))?
                .map_err(|e| format!("upload_log failed: {e}"))?;
            latencies.push(latency);
        }
        let wall = start.elapsed();
        let cpu = own_cpu()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        client.shutdown().await;
        latencies.sort_unstable();
        let verified = self.verify(logs.len()).await?;
        Ok(Round {
            wall,
            latencies,
            cpu,
            verified,
        })
    }

    async fn raw_phase(&mut self, logs: &[(usize, Bytes)], name: &str) -> Result<Round, String> {
        // Room for every publish, so queueing never waits on the event loop.
        let (raw, mut events) = self.raw_client(name, logs.len() + 16).await?;
        let topic = self.topics.binlog(APP).expect("binlog topic");
        let cpu_before = own_cpu();
        let start = Instant::now();
        for (_, log) in logs {
            raw.publish_bytes(topic.clone(), QoS::AtLeastOnce, false, log.clone())
                .await
                .map_err(|e| format!("raw publish: {e}"))?;
        }
        let mut acked = 0;
        while acked < logs.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("raw client after {acked} PUBACKs: {e}")),
            }
        }
        let wall = start.elapsed();
        let cpu = own_cpu()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        disconnect(&raw, &mut events).await;
        let verified = self.verify(logs.len()).await?;
        Ok(Round {
            wall,
            latencies: Vec::new(),
            cpu,
            verified,
        })
    }

    /// A connected plain rumqttc client: mutual TLS, TCP_NODELAY, the same
    /// in-flight window as the client, `capacity` queued requests.
    async fn raw_client(
        &self,
        name: &str,
        capacity: usize,
    ) -> Result<(AsyncClient, EventLoop), String> {
        let mut options = MqttOptions::new(
            format!("cust-{CUSTOMER}-raw-{name}"),
            "127.0.0.1",
            self.port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_inflight(MAX_INFLIGHT);
        options.set_max_packet_size(256 * 1024, 256 * 1024);
        let tls = self
            .certs
            .client_config()
            .map_err(|e| format!("raw TLS config: {e}"))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (raw, mut events) = AsyncClient::new(options, capacity);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((raw, events)),
                Ok(_) => {}
                Err(e) => return Err(format!("raw client {name} connecting: {e}")),
            }
        }
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

async fn disconnect(raw: &AsyncClient, events: &mut EventLoop) {
    if raw.disconnect().await.is_err() {
        return;
    }
    // Drive the event loop until the DISCONNECT went out.
    for _ in 0..16 {
        match events.poll().await {
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn print_round(round: usize, phase: &str, r: &Round) {
    let (p50, p99) = if r.latencies.is_empty() {
        ("-".to_owned(), "-".to_owned())
    } else {
        (
            ms(percentile(&r.latencies, 0.50)),
            ms(percentile(&r.latencies, 0.99)),
        )
    };
    let mib = (UPLOADS * LOG_SIZE) as f64 / (1024.0 * 1024.0) / r.wall.as_secs_f64();
    let cpu = r.cpu.map_or_else(
        || "-".to_owned(),
        |cpu| format!("{:.1}", cpu.as_secs_f64() * 1e6 / UPLOADS as f64),
    );
    println!(
        "  {round:<6} {phase:<7} {:>9} {:>12.0} {:>9.1} {p50:>9} {p99:>9} {cpu:>10} {:>5}/{UPLOADS}",
        ms(r.wall),
        r.rate(),
        mib,
        r.verified,
    );
}

/// CPU time this process's threads ran, except the emulator's (Linux:
/// nanosecond scheduler statistics); `None` where unavailable.
fn own_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.starts_with("ulogger-emulato") {
            continue; // the cloud side, not the publisher under test
        }
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
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

fn mosquitto_version(binary: &std::path::Path) -> String {
    std::process::Command::new(binary)
        .arg("-h")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned())
}
