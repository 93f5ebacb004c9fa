//! Memory per idle mutual-TLS connection: the emulator's broker against
//! mosquitto, in one run.
//!
//! `cargo bench -p ulogger-emulator --bench idle_memory` starts, for each
//! of `ROUNDS` rounds, a fresh emulator (in a child process: this binary
//! re-run with `ULOGGER_IDLE_MEMORY_SERVE` set, so that the clients' own
//! memory is not counted) and a fresh mosquitto (the crate's `testing`
//! fixture) with the same certificates. It opens `WARMUP` connections to
//! a server (TLS handshake with a client certificate, MQTT CONNECT,
//! CONNACK), reads the server's `VmRSS` from `/proc/<pid>/status`, opens
//! `CONNECTIONS` more that then stay idle, reads `VmRSS` again, and
//! reports the difference per connection, the median over the rounds and
//! the ratio emulator / mosquitto (target: at most 1.0). Linux only (it
//! reads `/proc`); mosquitto is required.
//!
//! It also times QoS 1 publishes of 4 KiB over one mutual-TLS connection
//! (`PUBLISHES` of them, `WINDOW` unacknowledged at most, to a topic
//! nobody subscribes to) against each server, fresh ones again (the
//! emulator without the platform's rate limits): a smaller buffer must
//! not cost throughput. Reported as the ratio emulator / mosquitto.
//!
//! `cargo test --benches` runs it once with a few connections, to check
//! that it works.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Publish};
use rumqttc::mqttbytes::QoS;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use ulogger_bench::stats::median;
use ulogger_bench::usage::rss_kb;
use ulogger_emulator::testing::{find_mosquitto, Mosquitto, MosquittoTls};
use ulogger_emulator::{CertPaths, Emulator, EmulatorConfig};

const CUSTOMER: u32 = 4242;
/// Connections opened before the first reading (lazy set-up of the
/// server is not per-connection memory).
const WARMUP: usize = 20;
/// Idle connections measured.
const CONNECTIONS: usize = 1_000;
/// Fresh servers per kind; the median is reported.
const ROUNDS: usize = 3;
/// Handshakes in flight at once (below the listen backlog).
const CONNECTING: usize = 32;
/// Set in the child process that runs the emulator.
const SERVE: &str = "ULOGGER_IDLE_MEMORY_SERVE";
/// Set (with `SERVE`) for an emulator without the platform's limits.
const UNLIMITED: &str = "ULOGGER_IDLE_MEMORY_UNLIMITED";
/// Publishes timed per throughput run.
const PUBLISHES: usize = 20_000;
/// Their payload size.
const PAYLOAD: usize = 4 * 1024;
/// Unacknowledged publishes at most (AWS IoT's limit).
const WINDOW: usize = 100;

fn main() {
    if let Some(dir) = std::env::var_os(SERVE) {
        return serve(dir.into());
    }
    let measuring = std::env::args().any(|a| a == "--bench");
    let (connections, rounds, publishes) = if measuring {
        (CONNECTIONS, ROUNDS, PUBLISHES)
    } else {
        (20, 1, 200)
    };
    let Some(binary) = find_mosquitto() else {
        panic!(
            "the idle-memory benchmark needs mosquitto and found none \
             (install it: apt-get install -y mosquitto; or set MOSQUITTO=/path/to/mosquitto)"
        );
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let certs = CertPaths::generate(dir.path().join("certs"), CUSTOMER).expect("certificates");
    let tls = TlsConnector::from(certs.client_config().expect("client TLS configuration"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("idle mutual-TLS connections: RSS growth of the server per connection");
    println!(
        "  {connections} idle connections after {WARMUP} warm-up ones (TLS with a client certificate, CONNECT, CONNACK), \
         fresh servers each round, {rounds} round(s); mosquitto: {}",
        binary.display()
    );
    println!(
        "  {:<6} {:<10} {:>12} {:>14}",
        "round", "server", "RSS growth", "per connection"
    );
    let mut emulator_kb = Vec::new();
    let mut mosquitto_kb = Vec::new();
    let mut emulator_rate = Vec::new();
    let mut mosquitto_rate = Vec::new();
    for round in 1..=rounds {
        let emulator = EmulatorChild::start(dir.path(), false);
        let per = runtime.block_on(measure(&tls, emulator.port, emulator.pid(), connections));
        print_round(round, "emulator", per, connections);
        emulator_kb.push(per);
        drop(emulator);

        let mosquitto = Mosquitto::start(MosquittoTls::Mutual(certs.clone()))
            .expect("mosquitto was found above, so it starts or panics");
        let per = runtime.block_on(measure(
            &tls,
            mosquitto.addr().port(),
            mosquitto.pid(),
            connections,
        ));
        print_round(round, "mosquitto", per, connections);
        mosquitto_kb.push(per);
        drop(mosquitto);

        let emulator = EmulatorChild::start(dir.path(), true);
        let rate = runtime.block_on(throughput(&tls, emulator.port, publishes));
        println!(
            "  {round:<6} {:<10} {rate:>12.0} publishes/s (QoS 1, {PAYLOAD} B)",
            "emulator"
        );
        emulator_rate.push(rate);
        drop(emulator);
        let mosquitto = Mosquitto::start(MosquittoTls::Mutual(certs.clone()))
            .expect("mosquitto was found above, so it starts or panics");
        let rate = runtime.block_on(throughput(&tls, mosquitto.addr().port(), publishes));
        println!(
            "  {round:<6} {:<10} {rate:>12.0} publishes/s (QoS 1, {PAYLOAD} B)",
            "mosquitto"
        );
        mosquitto_rate.push(rate);
        drop(mosquitto);
    }
    let emulator = median(&mut emulator_kb);
    let mosquitto = median(&mut mosquitto_kb);
    let ratio = emulator / mosquitto;
    println!();
    println!(
        "  median per idle connection: emulator {emulator:.1} KB, mosquitto {mosquitto:.1} KB"
    );
    println!(
        "  ratio emulator / mosquitto: {ratio:.2} (target <= 1.00: {})",
        if ratio <= 1.0 { "met" } else { "missed" }
    );
    println!(
        "SUITE emulator: memory per idle mutual-TLS connection | {emulator:.1} KB | {ratio:.2} of mosquitto ({mosquitto:.1} KB)"
    );
    let emulator_rate = median(&mut emulator_rate);
    let mosquitto_rate = median(&mut mosquitto_rate);
    println!(
        "  median QoS 1 publishes/s over one connection: emulator {emulator_rate:.0}, mosquitto {mosquitto_rate:.0}"
    );
    println!(
        "SUITE emulator: QoS 1 publishes/s, {PAYLOAD} B, one mutual-TLS connection | {emulator_rate:.0} /s | {:.2} of mosquitto ({mosquitto_rate:.0}/s)",
        emulator_rate / mosquitto_rate
    );
}

/// Publishes `count` QoS 1 messages over one new connection, at most
/// `WINDOW` unacknowledged; returns publishes per second until the last
/// PUBACK.
async fn throughput(tls: &TlsConnector, port: u16, count: usize) -> f64 {
    let stream = connect(tls, port, usize::MAX).await;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let window = Arc::new(Semaphore::new(WINDOW));
    let payload = bytes::Bytes::from(vec![7u8; PAYLOAD]);
    let start = std::time::Instant::now();
    let sender = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut packet = BytesMut::new();
            for i in 0..count {
                window.acquire().await.expect("window open").forget();
                let mut publish =
                    Publish::from_bytes("bench/throughput", QoS::AtLeastOnce, payload.clone());
                publish.pkid = u16::try_from(i % 65_535 + 1).expect("pkid fits");
                packet.clear();
                publish.write(&mut packet).expect("PUBLISH encodes");
                writer.write_all(&packet).await.expect("PUBLISH sent");
            }
            writer.flush().await.expect("flushed");
            writer
        })
    };
    let mut puback = [0u8; 4];
    for i in 0..count {
        tokio::time::timeout(Duration::from_secs(30), reader.read_exact(&mut puback))
            .await
            .unwrap_or_else(|_| panic!("no PUBACK {i} from port {port}"))
            .unwrap_or_else(|e| panic!("PUBACK {i} from port {port}: {e}"));
        assert_eq!(puback[..2], [0x40, 0x02], "not a PUBACK from port {port}");
        window.add_permits(1);
    }
    let elapsed = start.elapsed();
    drop(sender.await.expect("sender task"));
    count as f64 / elapsed.as_secs_f64()
}

fn print_round(round: usize, server: &str, per_kb: f64, connections: usize) {
    println!(
        "  {round:<6} {server:<10} {:>9.0} KB {:>11.1} KB",
        per_kb * connections as f64,
        per_kb
    );
}

/// Opens the warm-up connections, then `connections` more; returns the
/// server's RSS growth per connection over the latter, in KB. The
/// connections close when this returns.
async fn measure(tls: &TlsConnector, port: u16, pid: u32, connections: usize) -> f64 {
    let mut open = connect_many(tls, port, 0, WARMUP).await;
    let before = rss_kb(pid);
    open.extend(connect_many(tls, port, WARMUP, connections).await);
    let after = rss_kb(pid);
    assert_eq!(open.len(), WARMUP + connections);
    drop(open);
    (after.saturating_sub(before)) as f64 / connections as f64
}

async fn connect_many(
    tls: &TlsConnector,
    port: u16,
    first: usize,
    count: usize,
) -> Vec<TlsStream<TcpStream>> {
    let permits = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = JoinSet::new();
    for i in first..first + count {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let tls = tls.clone();
        tasks.spawn(async move {
            let stream = connect(&tls, port, i).await;
            drop(permit);
            stream
        });
    }
    let mut open = Vec::with_capacity(count);
    while let Some(stream) = tasks.join_next().await {
        open.push(stream.expect("connection task"));
    }
    open
}

/// One idle client: TLS handshake, CONNECT, a successful CONNACK.
async fn connect(tls: &TlsConnector, port: u16, i: usize) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connection {i} to port {port}: {e}"));
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut stream = tls
        .connect(name, tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake {i} with port {port}: {e}"));
    let mut connect = Connect::new(format!("cust-{CUSTOMER}-idle-{i}"));
    // Longer than the benchmark: the connections stay idle throughout.
    connect.keep_alive = 600;
    let mut packet = BytesMut::new();
    connect.write(&mut packet).expect("CONNECT encodes");
    stream.write_all(&packet).await.expect("CONNECT sent");
    stream.flush().await.expect("CONNECT flushed");
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut connack))
        .await
        .unwrap_or_else(|_| panic!("no CONNACK for connection {i} from port {port}"))
        .unwrap_or_else(|e| panic!("CONNACK for connection {i} from port {port}: {e}"));
    assert_eq!(
        connack,
        [0x20, 0x02, 0x00, 0x00],
        "connection {i} to port {port} refused"
    );
    stream
}

/// An emulator in a child process (this binary, in `serve` mode).
struct EmulatorChild {
    child: Child,
    port: u16,
}

impl EmulatorChild {
    /// Starts it with the certificates in `dir/certs` (without the
    /// platform's limits when `unlimited`) and waits for its port.
    fn start(dir: &std::path::Path, unlimited: bool) -> EmulatorChild {
        let data = tempfile::Builder::new()
            .prefix("emulator-")
            .tempdir_in(dir)
            .expect("data directory")
            .keep();
        std::fs::create_dir_all(data.join("certs")).expect("certs directory");
        for entry in std::fs::read_dir(dir.join("certs")).expect("certificates") {
            let entry = entry.expect("certificate entry");
            std::fs::copy(entry.path(), data.join("certs").join(entry.file_name()))
                .expect("certificate copied");
        }
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        if unlimited {
            command.env(UNLIMITED, "1");
        }
        let mut child = command
            .env(SERVE, &data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("emulator child starts");
        let stdout = child.stdout.take().expect("child stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("child reports its port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the emulator child did not start: {line:?}"));
        EmulatorChild { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EmulatorChild {
    fn drop(&mut self) {
        // Closing its stdin tells it to stop.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child: runs an emulator (mutual TLS, certificates reused from
/// `data/certs`) until its stdin closes.
fn serve(data: std::path::PathBuf) {
    let mut config = EmulatorConfig::new(CUSTOMER).data_dir(&data);
    if std::env::var_os(UNLIMITED).is_some() {
        config = config.limits(ulogger_emulator::PlatformLimits::unlimited());
    }
    let emulator = Emulator::start(config).expect("the emulator starts");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "port {}", emulator.addr().port()).expect("port reported");
    stdout.flush().expect("port reported");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    drop(emulator);
    let _ = std::fs::remove_dir_all(&data);
}
