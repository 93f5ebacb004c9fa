//! `ulogger agent` as a service that reports itself: systemd's notify
//! protocol on a real datagram socket (ready, status, watchdog,
//! stopping), the Prometheus endpoint scraped over TCP while files are
//! delivered to the emulator, and timestamped lines saying when the
//! connection comes up and goes down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::sandbox::*;
use support::Running;
use ulogger_emulator::PortHold;

const DEVICE_TOML: &str = r#"app_id = 7
serial = "SN-SERVICE"
device_type = "board"
git_version = "v1.0.0"
git_hash = "abc1234"
"#;

/// Writes a file the way writers must: under a temporary name, then renamed.
fn drop_file(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A sandbox with an inbox holding one device folder.
fn inbox() -> (Sandbox, std::path::PathBuf) {
    let sandbox = Sandbox::new();
    let device = sandbox.path("inbox").join("SN-SERVICE");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("device.toml"), DEVICE_TOML).unwrap();
    (sandbox, device)
}

/// The agent on the sandbox's inbox and outbox against `addr`, with
/// `flags` and `env`.
fn agent(
    sandbox: &Sandbox,
    addr: SocketAddr,
    json: bool,
    flags: &[&str],
    env: &[(&str, String)],
) -> std::process::Command {
    let mut args = strings(if json { &["--json"] } else { &[] });
    args.extend(strings(&[
        "agent",
        "--broker",
        "127.0.0.1",
        "--plaintext",
        "--no-store",
        "--scan-interval",
        "20",
    ]));
    args.extend([
        "--customer-id".to_owned(),
        CUSTOMER.to_string(),
        "--port".to_owned(),
        addr.port().to_string(),
        "--inbox".to_owned(),
        s(&sandbox.path("inbox")),
        "--outbox".to_owned(),
        s(&sandbox.path("outbox")),
    ]);
    args.extend(strings(flags));
    let mut command = sandbox.command(env);
    command.args(&args).stdout(Stdio::piped());
    command
}

/// The next event of `kind` the agent prints (`--json`).
fn event(running: &Running, kind: &str) -> serde_json::Value {
    loop {
        let line = running.json_line();
        if line["event"] == kind {
            return line;
        }
    }
}

/// Waits until the agent has printed each event of `kinds` (in any
/// order: a connection line and a delivery may come either way round).
/// Returns them in the order of `kinds`.
fn events_in_any_order(running: &Running, kinds: &[&str]) -> Vec<serde_json::Value> {
    let mut found: Vec<Option<serde_json::Value>> = vec![None; kinds.len()];
    while found.iter().any(Option::is_none) {
        let line = running.json_line();
        if let Some(at) =
            (0..kinds.len()).find(|&i| found[i].is_none() && line["event"] == kinds[i])
        {
            found[at] = Some(line);
        }
    }
    found.into_iter().flatten().collect()
}

/// The datagrams systemd would get, one notification each.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(support::WAIT)).unwrap();
        NotifySocket {
            socket,
            seen: Vec::new(),
        }
    }

    /// The last `STATUS=` received that `accepts`, reading notifications
    /// (the watchdog's come every 100 ms) until one does, for at most
    /// [`support::WAIT`].
    fn status_until(&mut self, accepts: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + support::WAIT;
        loop {
            if let Some(status) = self
                .seen
                .iter()
                .rev()
                .find_map(|m| m.lines().find_map(|l| l.strip_prefix("STATUS=")))
                .filter(|s| accepts(s))
            {
                return status.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no such status: {:#?}",
                self.seen
            );
            self.until("WATCHDOG=1");
        }
    }

    /// The next notification within `wait`, if one comes.
    fn within(&mut self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 4096];
        let got = self.socket.recv(&mut buf);
        self.socket.set_read_timeout(Some(support::WAIT)).unwrap();
        match got {
            Ok(n) => {
                let message = String::from_utf8(buf[..n].to_vec()).unwrap();
                self.seen.push(message.clone());
                Some(message)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads notifications until one has the assignment `line`
    /// (`READY=1`); returns that one. Fails after [`support::WAIT`]
    /// without a datagram.
    fn until(&mut self, line: &str) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {line} ({e}); got {:#?}", self.seen));
            let message = String::from_utf8(buf[..n].to_vec()).unwrap();
            self.seen.push(message.clone());
            if message.lines().any(|l| l == line) {
                return message;
            }
        }
    }
}

#[cfg(unix)]
#[test]
fn under_systemd_the_agent_says_ready_its_status_pings_the_watchdog_and_says_stopping() {
    let (sandbox, device) = inbox();
    let emu = plaintext_emulator();
    let socket_path = sandbox.path("notify.sock");
    let mut notify = NotifySocket::bind(&socket_path);
    let mut command = agent(
        &sandbox,
        emu.addr(),
        true,
        &["--summary-interval", "1"],
        &[
            ("NOTIFY_SOCKET", s(&socket_path)),
            // 200 ms: a ping every 100 ms.
            ("WATCHDOG_USEC", "200000".to_owned()),
        ],
    );
    command.env_remove("WATCHDOG_PID");
    let mut running = Running::spawn(command);

    let ready = notify.until("READY=1");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("a status with READY: {ready}"));
    assert!(status.contains("0 queued"), "{status}");

    // Pings keep coming from the running loop.
    let pings_before = Instant::now();
    for _ in 0..3 {
        notify.until("WATCHDOG=1");
    }
    assert!(
        pings_before.elapsed() < Duration::from_secs(5),
        "three pings at 100 ms took {:?}",
        pings_before.elapsed()
    );

    // The status follows the connection and the deliveries.
    drop_file(&device, "log-00001.bin", &numbered_log(1));
    event(&running, "delivered");
    let status = notify.status_until(|s| s.contains("1 delivered"));
    assert!(status.starts_with("connected; "), "{status}");

    // A failure shows in the status, with its cause.
    drop(emu);
    event(&running, "disconnected");
    let failing =
        notify.status_until(|s| s.starts_with("not connected;") && s.contains("failing since"));
    assert!(
        failing.contains("could not connect") || failing.contains("lost"),
        "{failing}"
    );

    let terminated = running.terminate();
    let stopping = notify.until("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    assert!(terminated.success());
}

#[cfg(unix)]
#[test]
fn without_notify_socket_the_agent_sends_nothing_and_runs_as_before() {
    let (sandbox, device) = inbox();
    let emu = plaintext_emulator();
    // A socket nobody names: nothing may arrive on it.
    let socket_path = sandbox.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut command = agent(&sandbox, emu.addr(), true, &[], &[]);
    command
        .env_remove("NOTIFY_SOCKET")
        .env("WATCHDOG_USEC", "200000");
    let mut running = Running::spawn(command);
    drop_file(&device, "log-00001.bin", &numbered_log(1));
    event(&running, "delivered");
    assert!(running.terminate().success());
    let mut buf = [0u8; 64];
    assert_eq!(
        socket.recv(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// One sample of an exposition: its name and labels, and its value.
type Samples = BTreeMap<String, f64>;

/// Parses the Prometheus text format (0.0.4): `# HELP`/`# TYPE` lines
/// and samples `name{label="value",...} value`; every sample's family
/// must have been declared by a `# TYPE` line before it.
fn parse_exposition(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|e| panic!("{e}: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        assert!(types.contains_key(name), "no # TYPE for {name}: {text}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                // label="value" pairs, values quoted with \" and \\ escaped.
                let mut inner = labels[1..labels.len() - 1].chars().peekable();
                while inner.peek().is_some() {
                    let key: String = inner.by_ref().take_while(|c| *c != '=').collect();
                    assert!(!key.is_empty(), "{line}");
                    assert_eq!(inner.next(), Some('"'), "{line}");
                    let mut escaped = false;
                    for c in inner.by_ref() {
                        match (escaped, c) {
                            (false, '\\') => escaped = true,
                            (false, '"') => break,
                            _ => escaped = false,
                        }
                    }
                    if inner.peek() == Some(&',') {
                        inner.next();
                    }
                }
            }
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "a sample twice: {line}"
        );
    }
    samples
}

/// `GET /metrics` over a plain TCP connection; checks the answer's
/// status and content type, returns the parsed samples.
fn scrape(addr: &str) -> Samples {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(support::WAIT)).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_exposition(body)
}

#[test]
fn the_metrics_endpoint_follows_deliveries_devices_and_the_connection() {
    let (sandbox, device) = inbox();
    let port = PortHold::new().unwrap();
    let emu = plaintext_emulator_on(&port);
    let addr = emu.addr();
    let running = Running::spawn(agent(
        &sandbox,
        addr,
        true,
        &["--metrics-listen", "127.0.0.1:0"],
        &[],
    ));
    let endpoint = event(&running, "metrics");
    let listen = endpoint["listen"].as_str().unwrap().to_owned();
    assert!(listen.starts_with("127.0.0.1:"), "{endpoint}");
    assert_ne!(listen, "127.0.0.1:0", "the bound port is said");
    assert_eq!(endpoint["url"], format!("http://{listen}/metrics"));
    assert!(
        endpoint["time"].as_str().unwrap().ends_with('Z'),
        "{endpoint}"
    );

    event(&running, "connected");
    let before = scrape(&listen);
    assert_eq!(before["ulogger_connection_up"], 1.0, "{before:#?}");
    assert_eq!(before["ulogger_outbox_delivered_total"], 0.0);
    assert_eq!(before["ulogger_outbox_queued"], 0.0);
    assert_eq!(before["ulogger_delivery_failing"], 0.0);
    for name in [
        "ulogger_outbox_in_flight",
        "ulogger_outbox_dead",
        "ulogger_outbox_evicted_total",
        "ulogger_outbox_corrupt_total",
        "ulogger_delivery_last_error_age_seconds",
    ] {
        assert_eq!(before.get(name), Some(&0.0), "{name}: {before:#?}");
    }

    for n in 0..3 {
        drop_file(&device, &format!("log-{n:05}.bin"), &numbered_log(n));
    }
    let mut bad = numbered_log(9);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    drop_file(&device, "broken.bin", &bad);
    // The rejection comes with the scan, the deliveries later: either order.
    let (mut delivered, mut rejected) = (0, 0);
    while delivered < 3 || rejected < 1 {
        match running.json_line()["event"].as_str() {
            Some("delivered") => delivered += 1,
            Some("rejected") => rejected += 1,
            _ => {}
        }
    }
    let after = scrape(&listen);
    assert_eq!(after["ulogger_outbox_delivered_total"], 3.0, "{after:#?}");
    assert_eq!(after["ulogger_outbox_queued"], 0.0);
    assert_eq!(after["ulogger_outbox_in_flight"], 0.0);
    let device_series =
        |name: &str| format!("ulogger_agent_device_{name}_total{{serial=\"SN-SERVICE\"}}");
    assert_eq!(after[&device_series("queued")], 3.0, "{after:#?}");
    assert_eq!(after[&device_series("delivered")], 3.0, "{after:#?}");
    assert_eq!(after[&device_series("rejected")], 1.0, "{after:#?}");

    // The broker goes: the connection is down and delivery failing.
    drop(emu);
    let seen = events_in_any_order(&running, &["disconnected", "failing"]);
    assert!(seen[0]["error"].is_string(), "{}", seen[0]);
    drop_file(&device, "log-00003.bin", &numbered_log(3));
    event(&running, "queued");
    let failing = scrape(&listen);
    assert_eq!(failing["ulogger_connection_up"], 0.0, "{failing:#?}");
    assert_eq!(failing["ulogger_delivery_failing"], 1.0, "{failing:#?}");
    assert_eq!(failing["ulogger_outbox_queued"], 1.0, "{failing:#?}");
    assert!(failing["ulogger_delivery_failed_attempts"] >= 1.0);

    // Back: the record goes out, the failure clears.
    let emu = plaintext_emulator_on(&port);
    events_in_any_order(&running, &["connected", "delivered"]);
    let back = scrape(&listen);
    assert_eq!(back["ulogger_connection_up"], 1.0, "{back:#?}");
    assert_eq!(back["ulogger_outbox_delivered_total"], 4.0, "{back:#?}");
    assert_eq!(back[&device_series("delivered")], 4.0, "{back:#?}");
    drop(emu);
}

#[test]
fn a_metrics_address_in_use_is_refused_before_starting() {
    let (sandbox, _) = inbox();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = sandbox.run(
        &[
            strings(&[
                "agent",
                "--broker",
                "127.0.0.1",
                "--plaintext",
                "--no-store",
            ]),
            vec![
                "--customer-id".to_owned(),
                CUSTOMER.to_string(),
                "--inbox".to_owned(),
                s(&sandbox.path("inbox")),
                "--outbox".to_owned(),
                s(&sandbox.path("outbox")),
                "--metrics-listen".to_owned(),
                addr.clone(),
            ],
        ]
        .concat(),
    );
    assert_eq!(run.code, Some(2), "{}", run.output());
    assert!(
        run.stderr
            .contains(&format!("--metrics-listen {addr}: cannot listen there")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: another process listens there"),
        "{}",
        run.stderr
    );
}

/// Without `--json` each line starts with its time (RFC 3339, UTC), and
/// the connection's coming and going are lines of their own.
#[test]
fn text_lines_carry_the_time_and_say_when_the_connection_comes_and_goes() {
    let (sandbox, device) = inbox();
    let port = PortHold::new().unwrap();
    let emu = plaintext_emulator_on(&port);
    let addr = emu.addr();
    let running = Running::spawn(agent(&sandbox, addr, false, &[], &[]));
    let stamped = |line: &str| -> String {
        let (time, rest) = line.split_once(' ').unwrap();
        let parsed =
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(parsed.offset(), time::UtcOffset::UTC, "{line}");
        assert!(time.ends_with('Z'), "{line}");
        rest.to_owned()
    };
    let started = running.line_containing("agent started");
    assert!(
        stamped(&started).starts_with("agent started: inbox "),
        "{started}"
    );
    let up = running.line_containing("connected to the broker as ");
    assert!(
        stamped(&up).starts_with("connected to the broker as cust-4242-"),
        "{up}"
    );
    drop_file(&device, "log-00001.bin", &numbered_log(1));
    let delivered = running.line_containing("delivered SN-SERVICE/log-00001.bin");
    stamped(&delivered);

    drop(emu);
    // Not the failure report, which may quote "lost" too.
    let down = running.line_containing("; reconnecting");
    let text = stamped(&down);
    assert!(
        text.starts_with("connection cust-4242-") && text.ends_with("; reconnecting"),
        "{down}"
    );
    let _emu = plaintext_emulator_on(&port);
    let again = running.line_containing("connected to the broker as ");
    stamped(&again);
}

/// The shipped unit uses what the agent does: readiness, the watchdog
/// (pinged at half of it), and notifications from the main process only.
#[test]
fn the_shipped_unit_is_a_notify_service_with_a_watchdog() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/ulogger-agent.service"),
    )
    .unwrap();
    let service: Vec<&str> = unit
        .lines()
        .skip_while(|l| *l != "[Service]")
        .take_while(|l| !l.starts_with("[Install]"))
        .collect();
    for line in ["Type=notify", "NotifyAccess=main", "Restart=on-failure"] {
        assert!(service.contains(&line), "{line} missing:\n{unit}");
    }
    let watchdog: u64 = service
        .iter()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .expect("WatchdogSec=")
        .parse()
        .unwrap();
    assert!((10..=300).contains(&watchdog), "{watchdog}");
}

/// `--help` (and so the manual page) says how the agent runs as a service.
#[test]
fn the_help_says_how_the_agent_reports_itself() {
    let sandbox = Sandbox::new();
    let help = sandbox
        .run(&strings(&["agent", "--help"]))
        .expect_code(0)
        .stdout;
    for needle in [
        "--metrics-listen <ADDR>",
        "Type=notify",
        "WATCHDOG=1 from its loop at half of WatchdogSec=",
        "without NOTIFY_SOCKET it sends nothing",
        "up to 256 serials",
    ] {
        assert!(help.contains(needle), "{needle}:\n{help}");
    }
}

/// The pings come from the service loop itself: while the loop is stuck
/// (here an outbox write held for 3 s by a fault point, which holds the
/// scan waiting on it) none come, so systemd would restart the agent;
/// once it moves on they come again.
#[cfg(unix)]
#[test]
fn a_stuck_service_loop_stops_the_watchdog_pings() {
    let (sandbox, device) = inbox();
    let emu = plaintext_emulator();
    let socket_path = sandbox.path("notify.sock");
    let mut notify = NotifySocket::bind(&socket_path);
    let mut command = agent(
        &sandbox,
        emu.addr(),
        true,
        &[],
        &[
            ("NOTIFY_SOCKET", s(&socket_path)),
            ("WATCHDOG_USEC", "200000".to_owned()),
            // The first batch written to the outbox stalls for 3 s.
            (
                "FAILPOINTS",
                "outbox-write-segment=1*sleep(3000)".to_owned(),
            ),
        ],
    );
    command.env_remove("WATCHDOG_PID");
    let running = Running::spawn(command);
    notify.until("READY=1");
    notify.until("WATCHDOG=1");

    drop_file(&device, "log-00001.bin", &numbered_log(1));
    // Pings every 100 ms until the scan meets the stalled write; then a
    // second without one.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        assert!(
            Instant::now() < deadline,
            "the pings never stopped: {:#?}",
            notify.seen
        );
        if notify.within(Duration::from_secs(1)).is_none() {
            break;
        }
    }
    // The write goes through, the loop moves on, the pings resume.
    event(&running, "delivered");
    notify.until("WATCHDOG=1");
}
