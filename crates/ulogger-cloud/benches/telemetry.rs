//! Telemetry through [`ulogger_cloud::Client`] against the emulator, next
//! to a plain rumqttc publisher of the same bytes to the same topic.
//!
//! One run (`cargo bench -p ulogger-cloud --bench telemetry`):
//!
//! 1. starts an emulator (mutual TLS, the platform's per-connection limits
//!    off, records in `/dev/shm` where it exists), whose cloud verifies
//!    every payload against PROTOCOL §8 before its PUBACK;
//! 2. a metrics batch of `BATCH_DEVICES` devices (2 samples each, 124 KB
//!    of JSON): `BATCHES` times, step by step on open connections, times
//!    building its JSON (`Compression::Never`), gzipping that JSON (the
//!    library's level), the whole `publish_metrics_batch` call (build,
//!    gzip, publish, PUBACK), the same work done by hand
//!    (`metrics_batch_payload`, then a raw publish awaiting its PUBACK),
//!    and the raw publish of the prebuilt gzip bytes alone;
//! 3. single-device metrics: `SINGLES` `publish_metrics` calls
//!    (`CONCURRENCY` in flight) per phase, against the same payloads
//!    published raw and pipelined: messages/s;
//! 4. repeats 2 and 3 `ROUNDS` times (the machine is shared and noisy)
//!    and reports every round, the medians and the ratios client / raw.
//!
//! Both sides run unpaced with the same in-flight window. A failed
//! publish or a payload the cloud rejects fails the benchmark.
//!
//! The batch's steps are interleaved one by one rather than run as
//! phases: on a loaded machine, phases of a thread that burns
//! milliseconds of CPU per message (building and gzipping) get woken
//! later than phases of one that only sends prebuilt bytes, which showed
//! as a client "overhead" of several milliseconds that interleaving makes
//! vanish. "raw + build" (the same CPU work, then a raw publish) is the
//! batch's like-for-like baseline; the bare raw publish is there for
//! scale.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use ulogger_bench::broker::{disconnect, raw_client, LocalCloud, APP, CUSTOMER, MAX_INFLIGHT};
use ulogger_bench::stats::median;
use ulogger_cloud::wire::{
    metrics_batch_payload, metrics_payload, Compression, DeviceMetrics, Metric, Topics,
};
use ulogger_cloud::{Client, MqttConfig, Pacing};
use ulogger_emulator::{CertPaths, PlatformLimits, RecordKind, RecordWatcher};

/// Devices in the batch message.
const BATCH_DEVICES: usize = 1_000;
/// Timings of each batch step per round (interleaved, one at a time).
const BATCHES: usize = 50;
/// Single-device messages per timed phase.
const SINGLES: usize = 5_000;
/// `publish_metrics` calls in flight at once.
const CONCURRENCY: usize = 100;
/// Alternating client/raw rounds.
const ROUNDS: usize = 5;
/// How long the cloud may take to record a phase's messages.
const VERIFY_PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    let cloud = LocalCloud::start(PlatformLimits::unlimited());
    let (emulator, certs) = (&cloud.emulator, cloud.certs().clone());
    println!("ulogger-cloud telemetry benchmark");
    println!(
        "  broker + cloud: ulogger-emulator on {} (mutual TLS, platform limits off, verifies every payload), records in {}",
        emulator.addr(),
        emulator.data_dir().display()
    );
    println!(
        "  client and raw rumqttc alike: QoS 1, max_inflight {MAX_INFLIGHT}, no pacing, TCP_NODELAY"
    );
    println!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bench = Bench {
        port: emulator.addr().port(),
        certs,
        topic: Topics::new("", CUSTOMER, Some(0))
            .and_then(|t| t.metrics(APP))
            .expect("metrics topic"),
        records: emulator.watch_records(),
    };
    if let Err(message) = runtime.block_on(bench.run()) {
        panic!("{message}");
    }
    drop(runtime);
    cloud.shutdown();
}

struct Bench {
    port: u16,
    certs: CertPaths,
    topic: String,
    records: RecordWatcher,
}

/// The batch: `BATCH_DEVICES` devices, a timestamped temperature and a
/// signal strength each: 124 KB of JSON, so that the uncompressed build
/// (timed alone) stays under the 128 KiB limit too.
fn batch() -> Vec<DeviceMetrics> {
    (0..BATCH_DEVICES)
        .map(|i| {
            DeviceMetrics::new(
                format!("SN-{i:06}"),
                vec![
                    Metric::new("temp", 20.0 + (i % 97) as f64 / 10.0).at(1_700_000_000 + i as u64),
                    Metric::new("rssi", -40.0 - (i % 53) as f64),
                ],
            )
        })
        .collect()
}

/// One single-device message: its serial and samples.
fn single(i: usize) -> (String, Vec<Metric>) {
    (
        format!("SN-{:06}", i % 1000),
        vec![
            Metric::new("temperature_c", 20.0 + (i % 97) as f64 / 10.0),
            Metric::new("rssi_dbm", -40.0 - (i % 53) as f64),
        ],
    )
}

fn gzip(json: &[u8]) -> Vec<u8> {
    // The library's level (flate2's default).
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(json).expect("writing to a Vec");
    encoder.finish().expect("writing to a Vec")
}

/// Median milliseconds of each step of the batch phase.
struct BatchTimes {
    build: f64,
    zip: f64,
    client: f64,
    built: f64,
    raw: f64,
}

impl Bench {
    async fn run(mut self) -> Result<(), String> {
        let devices = Arc::new(batch());
        let json = metrics_batch_payload(&devices, Compression::Never)
            .map(|p| p.bytes)
            .map_err(|e| format!("building the batch: {e}"))?;
        let sent = metrics_batch_payload(&devices, Compression::Auto)
            .map_err(|e| format!("building the batch: {e}"))?;
        if !sent.compressed {
            return Err("the batch should be over the gzip threshold".into());
        }
        let gz = Bytes::from(sent.bytes);
        println!(
            "batch: {BATCH_DEVICES} devices x 2 metrics: {} bytes of JSON, {} gzipped ({:.1}%); {BATCHES} of each step per round, interleaved",
            json.len(),
            gz.len(),
            gz.len() as f64 * 100.0 / json.len() as f64
        );
        let singles: Vec<(String, Vec<Metric>)> = (0..SINGLES).map(single).collect();
        let single_payloads: Vec<Bytes> = singles
            .iter()
            .map(|(serial, metrics)| {
                metrics_payload(serial, metrics, Compression::Auto)
                    .map(|p| Bytes::from(p.bytes))
                    .map_err(|e| format!("building a single: {e}"))
            })
            .collect::<Result<_, _>>()?;
        println!(
            "single: {SINGLES} publish_metrics calls of 2 samples ({} bytes each) per phase, {CONCURRENCY} in flight; raw: the same bytes pipelined",
            single_payloads[0].len()
        );
        let singles = Arc::new(singles);

        // Untimed warm-up of every phase.
        self.batches(&devices, &json, &gz, 2).await?;
        self.raw_singles(&single_payloads[..500]).await?;
        self.client_singles(&singles, 500).await?;

        println!();
        println!(
            "  {:<6} {:>9} {:>9} {:>10} {:>14} {:>9} {:>13} {:>11}",
            "round",
            "build ms",
            "gzip ms",
            "client ms",
            "raw+build ms",
            "raw ms",
            "client msg/s",
            "raw msg/s"
        );
        let (mut builds, mut gzips, mut client_batch, mut built_batch, mut raw_batch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut client_rates, mut raw_rates) = (Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            let BatchTimes {
                build,
                zip,
                client,
                built,
                raw,
            } = self.batches(&devices, &json, &gz, BATCHES).await?;
            let client_rate = self.client_singles(&singles, SINGLES).await?;
            let raw_rate = self.raw_singles(&single_payloads).await?;
            println!(
                "  {round:<6} {build:>9.3} {zip:>9.3} {client:>10.3} {built:>14.3} {raw:>9.3} {client_rate:>13.0} {raw_rate:>11.0}"
            );
            built_batch.push(built);
            builds.push(build);
            gzips.push(zip);
            client_batch.push(client);
            raw_batch.push(raw);
            client_rates.push(client_rate);
            raw_rates.push(raw_rate);
        }
        let build = median(&mut builds);
        let zip = median(&mut gzips);
        let client = median(&mut client_batch);
        let built = median(&mut built_batch);
        let raw = median(&mut raw_batch);
        let client_rate = median(&mut client_rates);
        let raw_rate = median(&mut raw_rates);
        println!(
            "  {:<6} {build:>9.3} {zip:>9.3} {client:>10.3} {built:>14.3} {raw:>9.3} {client_rate:>13.0} {raw_rate:>11.0}",
            "median"
        );
        println!();
        println!(
            "  batch: publish_metrics_batch (build + gzip + publish + PUBACK) takes {:.2}x the same done by hand",
            client / built
        );
        println!(
            "         (metrics_batch_payload + raw publish), {:.2}x the raw publish of prebuilt bytes",
            client / raw
        );
        println!(
            "  single-device: client {client_rate:.0} msg/s = {:.2} of raw {raw_rate:.0} msg/s",
            client_rate / raw_rate
        );
        println!();
        println!(
            "SUITE telemetry 1000-device batch build (JSON) | {build:.3} ms | {} bytes",
            json.len()
        );
        println!(
            "SUITE telemetry 1000-device batch gzip | {zip:.3} ms | {} -> {} bytes",
            json.len(),
            gz.len()
        );
        println!(
            "SUITE telemetry 1000-device batch publish_metrics_batch | {client:.3} ms | {:.2}x raw+build {built:.3} ms",
            client / built
        );
        println!(
            "SUITE telemetry single-device publish_metrics | {client_rate:.0} msg/s | {:.2} of raw",
            client_rate / raw_rate
        );
        Ok(())
    }

    /// A connected client, unpaced.
    async fn client(&self) -> Result<Client, String> {
        let config = MqttConfig::new(CUSTOMER)
            .broker("127.0.0.1")
            .port(self.port)
            .ca_file(&self.certs.ca_cert)
            .client_cert(&self.certs.client_cert, &self.certs.client_key)
            .max_inflight(MAX_INFLIGHT)
            .pacing(Pacing::off())
            .registration_limit(ulogger_cloud::RegistrationLimit::off());
        let client = Client::builder(config)
            .build()
            .map_err(|e| format!("building the client: {e}"))?;
        client
            .connected()
            .await
            .map_err(|e| format!("client connecting: {e}"))?;
        Ok(client)
    }

    /// `n` rounds, one step after the other, each timed: building the
    /// batch's JSON, gzipping it, `publish_metrics_batch`, the same by
    /// hand (`metrics_batch_payload` + raw publish awaiting its PUBACK),
    /// and a raw publish of the prebuilt `gz`. Interleaved step by step
    /// so that the machine's noise falls on all alike. Median
    /// milliseconds of each.
    async fn batches(
        &mut self,
        devices: &[DeviceMetrics],
        json: &[u8],
        gz: &Bytes,
        n: usize,
    ) -> Result<BatchTimes, String> {
        let client = self.client().await?;
        let (raw, mut events) = raw_client(&self.certs, self.port, "batch", 16).await?;
        let mut times: [Vec<f64>; 5] = Default::default();
        let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3;
        for _ in 0..n {
            let start = Instant::now();
            let built = metrics_batch_payload(devices, Compression::Never);
            times[0].push(ms(start));
            assert!(built.is_ok());

            let start = Instant::now();
            let zipped = gzip(json);
            times[1].push(ms(start));
            assert!(!zipped.is_empty());

            let start = Instant::now();
            client
                .publish_metrics_batch(APP, devices)
                .await
                .map_err(|e| format!("publish_metrics_batch: {e}"))?;
            times[2].push(ms(start));

            let start = Instant::now();
            let built = metrics_batch_payload(devices, Compression::Auto)
                .map_err(|e| format!("building the batch: {e}"))?;
            self.raw_publish(&raw, &mut events, Bytes::from(built.bytes))
                .await?;
            times[3].push(ms(start));

            let start = Instant::now();
            self.raw_publish(&raw, &mut events, gz.clone()).await?;
            times[4].push(ms(start));
        }
        client.shutdown().await;
        disconnect(&raw, &mut events).await;
        self.verify(3 * n).await?;
        let [build, zip, client, built, raw] = times.map(|mut t| median(&mut t));
        Ok(BatchTimes {
            build,
            zip,
            client,
            built,
            raw,
        })
    }

    /// One raw publish of `payload`, awaiting its PUBACK.
    async fn raw_publish(
        &self,
        raw: &AsyncClient,
        events: &mut EventLoop,
        payload: Bytes,
    ) -> Result<(), String> {
        raw.publish_bytes(self.topic.clone(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| format!("raw publish: {e}"))?;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("raw batch publish: {e}")),
            }
        }
    }

    /// The first `n` single-device messages through `publish_metrics`,
    /// `CONCURRENCY` at once; messages per second.
    async fn client_singles(
        &mut self,
        singles: &Arc<Vec<(String, Vec<Metric>)>>,
        n: usize,
    ) -> Result<f64, String> {
        let client = self.client().await?;
        let slots = Arc::new(Semaphore::new(CONCURRENCY));
        let mut tasks = JoinSet::new();
        let start = Instant::now();
        for i in 0..n {
            let slot = slots.clone().acquire_owned().await.expect("never closed");
            let client = client.clone();
            let singles = singles.clone();
            tasks.spawn(async move {
                let (serial, metrics) = &singles[i];
                let result = client.publish_metrics(serial, APP, metrics).await;
                drop(slot);
                result
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined
                .map_err(|e| format!("publish task: {e}"))?
                .map_err(|e| format!("publish_metrics: {e}"))?;
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        client.shutdown().await;
        self.verify(n).await?;
        Ok(rate)
    }

    /// `payloads` published raw, all queued, then every PUBACK awaited;
    /// messages per second.
    async fn raw_singles(&mut self, payloads: &[Bytes]) -> Result<f64, String> {
        let (raw, mut events) =
            raw_client(&self.certs, self.port, "single", payloads.len() + 16).await?;
        let start = Instant::now();
        for payload in payloads {
            raw.publish_bytes(self.topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                .await
                .map_err(|e| format!("raw publish: {e}"))?;
        }
        let mut acked = 0;
        while acked < payloads.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("raw client after {acked} PUBACKs: {e}")),
            }
        }
        let rate = payloads.len() as f64 / start.elapsed().as_secs_f64();
        disconnect(&raw, &mut events).await;
        self.verify(payloads.len()).await?;
        Ok(rate)
    }

    /// Waits until the cloud has recorded `n` more metrics messages, all
    /// accepted: a rejected one means a corrupted payload.
    async fn verify(&mut self, n: usize) -> Result<(), String> {
        let mut seen = 0;
        tokio::time::timeout(VERIFY_PATIENCE, async {
            while seen < n {
                let record = self.records.next().await;
                if record.kind != RecordKind::Metrics {
                    continue;
                }
                if !record.is_ok() {
                    return Err(format!(
                        "the cloud rejected a metrics message: {:?}",
                        record.reason
                    ));
                }
                seen += 1;
            }
            Ok(())
        })
        .await
        .map_err(|_| format!("only {seen} of {n} metrics messages reached the cloud"))?
    }
}
