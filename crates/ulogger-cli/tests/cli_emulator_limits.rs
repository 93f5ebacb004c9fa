//! `ulogger emulator` out of file descriptors: run the binary under
//! `prlimit --nofile=64`, connect clients until new ones are no longer
//! served, and check that the emulator neither spins on `accept()` nor
//! floods its log, still serves the clients it has, and accepts again
//! once descriptors are free.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish};
use rumqttc::mqttbytes::QoS;
use support::Running;

/// The emulator's file-descriptor limit in this test.
const NOFILE: u32 = 64;
/// How long the test holds the emulator out of descriptors.
const HOLD: Duration = Duration::from_secs(3);
/// How long a served client waits for its CONNACK (an unserved one never
/// gets it: this only bounds the one wait that shows exhaustion).
const CONNACK_WAIT: Duration = Duration::from_secs(2);
/// How long the connection left waiting may take to be served once
/// descriptors are free (the back-off is 1 s at most).
const RECOVERY_WAIT: Duration = Duration::from_secs(10);

/// A blocking MQTT client over a bare socket.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// Connects and sends CONNECT; does not wait for the CONNACK.
    fn connect(addr: SocketAddr, client_id: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        let mut client = Client {
            stream,
            buf: BytesMut::new(),
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = 600;
        client.send(Packet::Connect(connect));
        client
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// The next packet, or `None` on close, error or after `wait`.
    fn read(&mut self, wait: Duration) -> Option<Packet> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        loop {
            match Packet::read(&mut self.buf, 1024 * 1024) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from the emulator: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// CPU seconds (user + system) the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    ticks as f64 / per_second as f64
}

fn find_prlimit() -> Option<()> {
    let found = Command::new("prlimit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return Some(());
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("prlimit is required under CI=true but was not found (install util-linux)");
    }
    eprintln!("prlimit not found: skipping the file-descriptor exhaustion test");
    None
}

#[test]
fn out_of_file_descriptors_the_emulator_backs_off_and_keeps_serving() {
    if find_prlimit().is_none() {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let stderr_path = data.path().join("emulator.stderr");
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={NOFILE}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_ulogger"))
        .args(["emulator", "--plaintext", "--listen", "127.0.0.1:0"])
        .arg("--customer-id")
        .arg("77")
        .arg("--data")
        .arg(data.path().join("emulator"))
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap());
    // prlimit execs the emulator: same process, same pid.
    let running = Running::spawn(command);
    let pid = running.child.id();
    let address = running.field("address:");
    let addr: SocketAddr = address.split_whitespace().next().unwrap().parse().unwrap();

    let mut first = Client::connect(addr, "cust-77-first");
    assert!(
        matches!(first.read(CONNACK_WAIT), Some(Packet::ConnAck(_))),
        "no CONNACK for the first client"
    );

    // Connect until one is no longer served: the emulator is out of
    // descriptors and that connection waits in the listen backlog.
    let mut clients = Vec::new();
    let started = std::time::Instant::now();
    let unserved = loop {
        assert!(
            clients.len() < 4 * NOFILE as usize,
            "every connection was served: the descriptor limit did not apply"
        );
        let mut client = Client::connect(addr, &format!("cust-77-idle-{}", clients.len()));
        match client.read(CONNACK_WAIT) {
            Some(Packet::ConnAck(_)) => clients.push(client),
            _ => break client,
        }
    };
    assert!(
        clients.len() + 1 < NOFILE as usize,
        "{} clients served under --nofile={NOFILE}",
        clients.len() + 1
    );

    let before = cpu_seconds(pid);
    std::thread::sleep(HOLD);
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "the emulator used {used:.2} CPU seconds in {HOLD:?} out of descriptors"
    );

    // Already-connected clients are still served.
    first.send(Packet::PingReq);
    assert!(
        matches!(first.read(CONNACK_WAIT), Some(Packet::PingResp)),
        "no PINGRESP while out of descriptors"
    );
    let mut publish = Publish::new("fd/test", QoS::AtLeastOnce, "still here");
    publish.pkid = 1;
    first.send(Packet::Publish(publish));
    assert!(
        matches!(first.read(CONNACK_WAIT), Some(Packet::PubAck(_))),
        "no PUBACK while out of descriptors"
    );

    // Once descriptors are free again, the waiting connection is served
    // (within the longest back-off, 1 s).
    drop(clients);
    let mut unserved = unserved;
    assert!(
        matches!(unserved.read(RECOVERY_WAIT), Some(Packet::ConnAck(_))),
        "the waiting connection was not served once descriptors were free"
    );
    drop(running);
    let exhausted = started.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let accept_lines = stderr.lines().filter(|l| l.contains("accept")).count();
    assert!(
        stderr.contains("accept failed"),
        "the emulator never ran out of descriptors:\n{stderr}"
    );
    // One line a second at most, plus one for rounding.
    let allowed = exhausted.as_secs() as usize + 2;
    assert!(
        accept_lines <= allowed,
        "{accept_lines} accept-error lines in {exhausted:?}; the first ones:\n{}",
        stderr.lines().take(10).collect::<Vec<_>>().join("\n")
    );
    println!(
        "out of descriptors for {HOLD:?}: {used:.2} CPU seconds, {accept_lines} accept-error lines"
    );
}
