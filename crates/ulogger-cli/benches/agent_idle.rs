//! What an idle `ulogger agent` costs: two agents, built with the bench
//! profile, connected over mutual TLS to one emulator in this process,
//! with an empty inbox (one device folder) and nothing to send, measured
//! over the same window side by side: one watching its inbox (the
//! default), one polling it (`--poll`, every 500 ms as before).
//!
//! A wakeup is a context switch of any of the agent's threads (voluntary
//! and not, from `/proc/<pid>/task/*/status`); CPU is utime + stime from
//! `/proc/<pid>/stat`, as a share of one core. The goal (issue 20): a few
//! wakeups per keep-alive interval (30 s) and under 0.1% of a core. The
//! watching agent's wakeups are also shown per thread, to name what wakes
//! it.
//!
//! `cargo bench -p ulogger-cli --bench agent_idle` (a 20 s window;
//! `ULOGGER_IDLE_BENCH_SECS=600` for the 10 minutes). With
//! `ULOGGER_IDLE_BENCH_BASELINE=PATH` a third agent, that `ulogger` binary
//! (an earlier build), runs beside them with the same flags as the
//! watching one. Linux only.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ulogger_bench::usage;
use ulogger_emulator::{Emulator, EmulatorConfig};

const CUSTOMER: u32 = 4242;
/// The client's MQTT keep-alive (`ClientConfig::keep_alive`'s default).
const KEEP_ALIVE_SECS: f64 = 30.0;

struct Agent {
    name: &'static str,
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Per thread (`tid comm`): context switches; and the process's CPU time.
struct Sample {
    switches: BTreeMap<String, u64>,
    cpu: Duration,
}

fn sample(pid: u32) -> Sample {
    Sample {
        switches: usage::thread_switches(pid),
        cpu: usage::proc_cpu(&pid.to_string()).expect("the agent's /proc/<pid>/stat"),
    }
}

fn start(emu: &Emulator, work: &Path, name: &'static str, binary: &Path, flags: &[&str]) -> Agent {
    let dir = work.join(name);
    let device = dir.join("inbox/SN-IDLE");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(
        device.join("device.toml"),
        "app_id = 7\nserial = \"SN-IDLE\"\ndevice_type = \"b\"\ngit_version = \"v\"\ngit_hash = \"h\"\n",
    )
    .unwrap();
    let certs = emu.certs().unwrap();
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ULOGGER_") {
            command.env_remove(key);
        }
    }
    command
        .env("HOME", &dir)
        .env("ULOGGER_HOME", dir.join(".ulogger"))
        .env("ULOGGER_LOG", "off")
        .env_remove("NOTIFY_SOCKET")
        .args(["--json", "agent", "--broker", "127.0.0.1", "--no-store"])
        .args(["--customer-id", &CUSTOMER.to_string()])
        .args(["--port", &emu.addr().port().to_string()])
        .arg("--ca")
        .arg(&certs.ca_cert)
        .arg("--cert")
        .arg(&certs.client_cert)
        .arg("--key")
        .arg(&certs.client_key)
        .arg("--inbox")
        .arg(dir.join("inbox"))
        .arg("--outbox")
        .arg(dir.join("outbox"))
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().unwrap();
    // Measured once connected: the idle state, not the start.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the agent connects");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "connected" {
            break;
        }
        assert_ne!(
            event["event"], "polling",
            "{name}: inotify unavailable: {line}"
        );
    }
    // Its later lines (summaries) are read and dropped.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Agent { name, child }
}

fn main() {
    let secs: u64 = std::env::var("ULOGGER_IDLE_BENCH_SECS")
        .ok()
        .map(|v| v.parse().expect("ULOGGER_IDLE_BENCH_SECS: whole seconds"))
        .unwrap_or(20);
    let work = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig::new(CUSTOMER).data_dir(work.path().join("cloud")))
        .expect("emulator starts");
    let ours = Path::new(env!("CARGO_BIN_EXE_ulogger"));
    let mut agents = vec![
        start(&emu, work.path(), "watching", ours, &[]),
        start(&emu, work.path(), "polling", ours, &["--poll"]),
    ];
    if let Some(baseline) = std::env::var_os("ULOGGER_IDLE_BENCH_BASELINE") {
        agents.push(start(
            &emu,
            work.path(),
            "baseline",
            Path::new(&baseline),
            &[],
        ));
    }
    // The connection's own first exchanges settle.
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<Sample> = agents.iter().map(|a| sample(a.child.id())).collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: Vec<Sample> = agents.iter().map(|a| sample(a.child.id())).collect();
    let window = started.elapsed().as_secs_f64();

    println!("idle agents, {window:.1} s window, side by side (keep-alive {KEEP_ALIVE_SECS} s)");
    println!(
        "{:<10} {:>10} {:>14} {:>16} {:>10}",
        "agent", "wakeups", "wakeups/s", "per keep-alive", "CPU %"
    );
    let mut rates = Vec::new();
    for ((agent, b), a) in agents.iter().zip(&before).zip(&after) {
        let wakeups: u64 = a
            .switches
            .iter()
            .map(|(k, v)| v - b.switches.get(k).copied().unwrap_or(0))
            .sum();
        let rate = wakeups as f64 / window;
        let cpu = (a.cpu - b.cpu).as_secs_f64() / window * 100.0;
        println!(
            "{:<10} {:>10} {:>14.2} {:>16.1} {:>10.3}",
            agent.name,
            wakeups,
            rate,
            rate * KEEP_ALIVE_SECS,
            cpu
        );
        rates.push((rate, cpu));
    }
    for (name, (rate, cpu)) in agents.iter().map(|a| a.name).zip(&rates).skip(1) {
        println!(
            "{name} / watching: {:.0}x the wakeups ({rate:.2}/s against {:.2}/s), CPU {cpu:.3}% against {:.3}%",
            rate / rates[0].0.max(1.0 / window),
            rates[0].0,
            rates[0].1
        );
    }
    println!("watching agent's wakeups by thread:");
    for (thread, count) in &after[0].switches {
        let was = before[0].switches.get(thread).copied().unwrap_or(0);
        if count > &was {
            println!("  {thread:<28} {:>6}", count - was);
        }
    }
    drop(emu);
}
