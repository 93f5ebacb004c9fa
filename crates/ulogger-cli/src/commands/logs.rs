//! `ulogger logs`: lines of text from files or standard input sent as a
//! device's text logs (PROTOCOL §12), so that
//! `journalctl -f -o cat | ulogger logs --serial gw-1 ...` forwards a
//! gateway's own log. Lines are batched by size and by time, through the
//! same connection (or, with `--outbox`, the same durable outbox) as
//! everything else, and a summary is printed at the end.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;
use tokio::sync::mpsc;
use ulogger_cloud::wire::{DeviceInfo, TextEntry, TextLevel};
use ulogger_cloud::{Client, OutboxConfig, RecordId};

use crate::connection::ConnectionArgs;
use crate::device::DeviceArgs;
use crate::exit::{self, Exit, Failure};
use crate::signal::StopSignal;
use crate::Global;

/// Examples shown under `ulogger logs --help`.
pub const EXAMPLES: &str = "\
Examples:
  journalctl -f -o cat | ulogger logs --serial gw-1 --app-id 7 --parse-level
  ulogger logs --serial gw-1 --app-id 7 --level warning /var/log/gateway.log
  ulogger logs --outbox /var/lib/ulogger/outbox --serial gw-1 --app-id 7 < events.txt";

/// A line longer than this is cut (with a note at its end), so that one
/// runaway line cannot make a message the platform refuses.
const MAX_LINE: usize = 16 * 1024;
/// Send once this many bytes of text wait, without waiting for the timer.
const FLUSH_BYTES: usize = 96 * 1024;

/// Arguments of `ulogger logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Files to read, in order ("-" or none: standard input).
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The level of every line: debug, info, warning, error, critical
    /// (or 1 to 5).
    #[arg(long, default_value = "info", value_parser = parse_level)]
    level: TextLevel,
    /// Read each line's level from its start instead, when it has one: a
    /// syslog priority (`<3>`) or a level word (`ERROR`, `[warn]`, `E:`
    /// is not one); other lines get --level.
    #[arg(long)]
    parse_level: bool,
    /// Send what waits at least this often (seconds; also whenever
    /// 96 KiB of text wait).
    #[arg(long, default_value = "1", value_name = "SECS", value_parser = flush_interval)]
    flush_interval: Duration,
    /// Make every batch durable in this outbox directory first; it is
    /// delivered in the background, and whatever is not delivered when
    /// the input ends stays there for the next run or `ulogger agent`.
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
}

fn parse_level(text: &str) -> Result<TextLevel, String> {
    TextLevel::parse(text)
        .ok_or_else(|| "expected debug, info, warning, error, critical or 1 to 5".to_owned())
}

/// The level a line announces at its start, if it does.
fn level_of(line: &str) -> Option<TextLevel> {
    let line = line.trim_start();
    if let Some(rest) = line.strip_prefix('<') {
        let (number, _) = rest.split_once('>')?;
        // Syslog priorities: facility * 8 + severity 0 (emergency) to 7 (debug).
        let severity = number.parse::<u32>().ok()? % 8;
        return Some(match severity {
            0..=2 => TextLevel::Critical,
            3 => TextLevel::Error,
            4 => TextLevel::Warning,
            5 | 6 => TextLevel::Info,
            _ => TextLevel::Debug,
        });
    }
    let trimmed = line.trim_start_matches(['[', '(']);
    let word: String = trimmed
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    // A level word stands alone ("ERROR:", "[warn]", "debug x=1");
    // "Errors: 0" is no level.
    let rest = &trimmed[word.len()..];
    if word.len() < 3 || rest.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return None;
    }
    match word.to_ascii_lowercase().as_str() {
        "notice" => Some(TextLevel::Info),
        "trace" => Some(TextLevel::Debug),
        "emerg" | "alert" | "panic" => Some(TextLevel::Critical),
        other => TextLevel::parse(other),
    }
}

/// What was sent, for the summary.
#[derive(Debug, Default)]
struct Totals {
    lines: usize,
    cut: usize,
    messages: usize,
    bytes: usize,
    queued: Vec<RecordId>,
    /// The signal that ended the input early, if one did.
    stopped_by: Option<crate::signal::Stop>,
}

/// The longest `--flush-interval`: text waits no longer than this.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(3600);

/// `--flush-interval`: more than zero, at most an hour (a huge value made
/// `Duration::from_secs_f64` panic, and would hold text back for ever).
fn flush_interval(text: &str) -> Result<Duration, String> {
    let interval = crate::duration::fractional_secs(text)?;
    if interval.is_zero() {
        return Err("it must be more than zero".to_owned());
    }
    if interval > MAX_FLUSH_INTERVAL {
        return Err(format!("'{}' is too long: at most 1h", text.trim()));
    }
    Ok(interval)
}

pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let file = args.connection.file()?;
    let device = args.device.device(file)?;
    let interval = args.flush_interval;
    let outbox = args.outbox.clone().or_else(|| file.outbox.clone());
    // Text logs need no session token: keep the token file untouched.
    let mut connection = args.connection.clone();
    connection.no_store = true;
    let (config, _) = connection.resolve()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (tx, rx) = mpsc::channel::<String>(4096);
    let reader = spawn_reader(args.files.clone(), tx)?;
    let totals = runtime.block_on(async {
        let stop = StopSignal::listen()?;
        let mut builder = Client::builder(config);
        if let Some(dir) = &outbox {
            builder = builder.outbox(OutboxConfig::new(dir));
        }
        let client = builder.build().map_err(exit::from_cloud)?;
        let result = pump(&client, &device, &args, interval, rx, stop).await;
        let result = match result {
            Ok(totals) if outbox.is_some() => settle(&client, totals).await,
            other => other,
        };
        client.shutdown().await;
        result
    });
    // The reader ends with its input; after an error or a stop it may be
    // blocked reading a pipe, and is left to the process's exit.
    if totals.is_ok() {
        if let Ok(Err(e)) = reader.join() {
            return Err(Exit::new(Failure::BadInput, e));
        }
    }
    let totals = totals?;
    summary(global, &device, &totals, outbox.is_some());
    totals
        .stopped_by
        .map_or(Ok(()), crate::signal::Stop::outcome)
}

/// Reads the inputs line by line on a thread of its own (standard input
/// blocks), handing each line over; ends at the end of the last input.
fn spawn_reader(
    files: Vec<PathBuf>,
    tx: mpsc::Sender<String>,
) -> Result<std::thread::JoinHandle<anyhow::Result<()>>, Exit> {
    std::thread::Builder::new()
        .name("ulogger-logs-reader".into())
        .spawn(move || {
            let inputs = if files.is_empty() {
                vec![PathBuf::from("-")]
            } else {
                files
            };
            for path in inputs {
                let input: Box<dyn Read> = if path.as_os_str() == "-" {
                    Box::new(std::io::stdin())
                } else {
                    Box::new(
                        std::fs::File::open(&path)
                            .with_context(|| format!("cannot open {}", path.display()))?,
                    )
                };
                let mut input = BufReader::new(input);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    let n = input
                        .read_until(b'\n', &mut raw)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if tx.blocking_send(line.to_owned()).is_err() {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
        .context("cannot start the input reader")
        .map_err(Exit::from)
}

/// Batches lines and sends each batch, until the input ends or a stop.
async fn pump(
    client: &Client,
    device: &DeviceInfo,
    args: &Args,
    interval: Duration,
    mut lines: mpsc::Receiver<String>,
    stop: StopSignal,
) -> Result<Totals, Exit> {
    let mut totals = Totals::default();
    let mut batch: Vec<TextEntry> = Vec::new();
    let mut batch_bytes = 0;
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            line = lines.recv() => {
                let Some(mut line) = line else { break };
                if line.len() > MAX_LINE {
                    let mut end = MAX_LINE;
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    line.truncate(end);
                    line.push_str(" [line cut by ulogger]");
                    totals.cut += 1;
                }
                let level = if args.parse_level { level_of(&line).unwrap_or(args.level) } else { args.level };
                batch_bytes += line.len();
                batch.push(TextEntry::new(now_seconds(), level, line));
                totals.lines += 1;
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + interval);
                if batch_bytes >= FLUSH_BYTES {
                    send(client, device, &mut batch, &mut totals, args.outbox.is_some()).await?;
                    batch_bytes = 0;
                    deadline = None;
                }
            }
            () = timer => {
                send(client, device, &mut batch, &mut totals, args.outbox.is_some()).await?;
                batch_bytes = 0;
                deadline = None;
            }
            stopped = &mut stop => {
                totals.stopped_by = Some(stopped?);
                break;
            }
        }
    }
    send(
        client,
        device,
        &mut batch,
        &mut totals,
        args.outbox.is_some(),
    )
    .await?;
    Ok(totals)
}

async fn send(
    client: &Client,
    device: &DeviceInfo,
    batch: &mut Vec<TextEntry>,
    totals: &mut Totals,
    outbox: bool,
) -> Result<(), Exit> {
    if batch.is_empty() {
        return Ok(());
    }
    let bytes: usize = batch.iter().map(|e| e.message.len()).sum();
    if outbox {
        let ids = client
            .enqueue_text_logs(device, batch)
            .await
            .map_err(exit::from_cloud)?;
        totals.messages += ids.len();
        totals.queued.extend(ids);
    } else {
        let receipt = client.publish_text_logs(device, batch).await.map_err(|e| {
            let mut exit = exit::from_cloud(e);
            exit.error = exit.error.context(format!(
                "{} lines were not sent (--outbox DIR keeps lines through an outage)",
                batch.len()
            ));
            exit
        })?;
        totals.messages += receipt.sequences.len();
    }
    totals.bytes += bytes;
    batch.clear();
    Ok(())
}

/// With an outbox: waits a little for what was queued to go out; what
/// does not stays queued for a later run.
async fn settle(client: &Client, totals: Totals) -> Result<Totals, Exit> {
    let patience = Duration::from_secs(10);
    let _ = tokio::time::timeout(patience, async {
        for id in &totals.queued {
            if client.delivered(*id).await.is_err() {
                break;
            }
        }
    })
    .await;
    Ok(totals)
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn summary(global: Global, device: &DeviceInfo, totals: &Totals, outbox: bool) {
    if global.json {
        outln!(
            "{}",
            json!({
                "serial": device.serial,
                "app_id": device.app_id,
                "lines": totals.lines,
                "cut": totals.cut,
                "messages": totals.messages,
                "bytes": totals.bytes,
                "queued_in_outbox": outbox,
            })
        );
        return;
    }
    let how = if outbox {
        "queued in the outbox as"
    } else {
        "sent in"
    };
    eprintln!(
        "{} lines of {} {how} {} message(s), {} bytes of text{}",
        totals.lines,
        device.serial,
        totals.messages,
        totals.bytes,
        if totals.cut > 0 {
            format!("; {} overlong line(s) cut at {MAX_LINE} bytes", totals.cut)
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_read_from_syslog_priorities_and_level_words() {
        for (line, level) in [
            ("<3>disk failed", Some(TextLevel::Error)),
            ("<14>started", Some(TextLevel::Info)),
            ("<0>panic", Some(TextLevel::Critical)),
            ("ERROR: disk failed", Some(TextLevel::Error)),
            ("[warn] low battery", Some(TextLevel::Warning)),
            ("  debug x=1", Some(TextLevel::Debug)),
            ("Errors: 0", None),
            ("information", None),
            ("plain text", None),
            ("err", Some(TextLevel::Error)),
            ("", None),
        ] {
            assert_eq!(level_of(line), level, "{line:?}");
        }
    }
}
