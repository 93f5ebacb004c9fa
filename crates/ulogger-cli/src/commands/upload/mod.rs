//! `ulogger upload`, `ulogger register` and `ulogger core-dump`: the
//! commands that talk to the cloud.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use ulogger_cloud::{wire, Client};

use crate::connection::ConnectionArgs;
use crate::device::DeviceArgs;
use crate::exit::{self, Exit, Failure};
use crate::files;
use crate::signal::StopSignal;
use crate::Global;

mod jobs;
mod outbox;

/// Arguments of `ulogger upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Write the gateway's clock into version-4 headers whose time is 0
    /// [default: false].
    #[arg(long, env = "ULOGGER_STAMP_TIME", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = crate::connection::boolish)]
    stamp_time: Option<bool>,
    /// Make every file durable in this outbox directory first, then
    /// deliver; a rerun after a crash or Ctrl-C sends only what was not
    /// delivered [default: none: upload directly].
    #[arg(long, env = "ULOGGER_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// Files uploaded at once over the connection(s); results are printed
    /// as uploads finish, so their order may differ from the command
    /// line's (`--json` keeps it). With --outbox: files read and queued at
    /// once (default 64) [default: 100 per connection, the platform's
    /// limit of unacknowledged publishes; at most that].
    #[arg(long, env = "ULOGGER_JOBS", value_name = "N")]
    jobs: Option<u64>,
    /// Binary log files, as read from the device.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// Arguments of `ulogger register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Arguments of `ulogger core-dump`.
#[derive(Debug, clap::Args)]
pub struct CoreDumpArgs {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The core dump, as read from the device: a 264-byte header
    /// (PROTOCOL §10) and the dump. An empty file or an invalid header is
    /// refused before connecting.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Exit::from)
}

async fn client(connection: &ConnectionArgs, stamp_time: bool) -> Result<Client, Exit> {
    let (config, store) = connection.resolve()?;
    let client = Client::builder(config)
        .session_store(store)
        .stamp_epoch_time(stamp_time)
        .build()
        .map_err(exit::from_cloud)?;
    client.connected().await.map_err(exit::from_cloud)?;
    Ok(client)
}

/// Uploads the files, up to `--jobs` at once over the client's
/// connection(s); reports each outcome as it completes, then a summary;
/// fails with the worst one. Ctrl-C (or SIGTERM) stops at once: uploads in
/// flight are abandoned (their files count as not uploaded: the cloud may
/// or may not have them); the summary counts them as not uploaded and the
/// error says how many were in flight and how many not started. A registration that fails fails the
/// device's remaining files at once, with the same reason, instead of
/// registering again for each.
pub fn upload(global: Global, args: UploadArgs) -> Result<(), Exit> {
    let file = args.connection.file()?;
    files::refuse_folders("upload", &args.files)?;
    let device = args.device.device(file)?;
    let stamp_time = args.stamp_time.or(file.stamp_time).unwrap_or(false);
    let connections = args.connection.connections.or(file.connections);
    let asked_jobs = args.jobs.or(file.jobs);
    let jobs = jobs::resolve(asked_jobs, connections)?;
    if let Some(dir) = args.outbox.as_ref().or(file.outbox.as_ref()) {
        return outbox::upload(
            global,
            &args.connection,
            stamp_time,
            &device,
            &args.files,
            dir,
            asked_jobs.map(|_| jobs),
        );
    }
    let runtime = runtime()?;
    let stop = {
        let _runtime = runtime.enter();
        StopSignal::listen()?
    };
    runtime.block_on(async {
        let started = Instant::now();
        // Listening replaced the default action of Ctrl-C: it must also
        // stop the wait for the connection.
        let stop = stop.wait();
        tokio::pin!(stop);
        let total = args.files.len();
        let client = tokio::select! {
            client = client(&args.connection, stamp_time) => client?,
            _ = &mut stop => return Err(interrupted(&Account { not_started: total, ..Account::default() })),
        };
        // A bar on stderr for many files, drawn only on a terminal.
        let progress = (total > 1 && !global.json && !global.quiet).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        // Where a person watches the bar, it stands for the per-file lines
        // (1,000 files, 1,000 lines); they are printed when asked for (-v)
        // or when stdout goes to a file or another program.
        let each_line = global.verbose > 0
            || !std::io::stdout().is_terminal()
            || progress.as_ref().is_none_or(ProgressBar::is_hidden);
        let mut tally = Tally {
            global,
            files: &args.files,
            each_line,
            progress,
            worst: None,
            hint: None,
            account: Account::default(),
            bytes: 0,
            reports: Vec::new(),
        };
        let mut stopped = false;
        let mut uploads = jobs::Uploads::new(client.clone(), device.clone(), &args.files, jobs);
        loop {
            tokio::select! {
                done = uploads.next() => match done? {
                    Some(done) => tally.settle(done),
                    None => break,
                },
                _ = &mut stop => {
                    stopped = true;
                    break;
                }
            }
        }
        // Report what finished meanwhile, then abandon what is in flight
        // before closing: the connection then waits for no
        // acknowledgement that nobody would report.
        for done in uploads.finished() {
            tally.settle(done);
        }
        let in_flight = uploads.abandon().await;
        let Tally {
            progress,
            worst,
            hint,
            mut account,
            bytes,
            mut reports,
            ..
        } = tally;
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        account.in_flight = in_flight;
        // Saturating: a task that panicked is in no count (and fails the run).
        account.not_started = total
            .saturating_sub(account.uploaded + account.failed + account.in_flight);
        client.shutdown().await;
        if global.json {
            // Input order, whatever order the uploads finished in.
            reports.sort_by_key(|(index, _)| *index);
            outln!(
                "{}",
                serde_json::Value::Array(reports.into_iter().map(|(_, r)| r).collect())
            );
        } else if total > 1 || stopped {
            outln!(
                "{} uploaded, {} failed{}, {bytes} bytes in {:.1} s",
                account.uploaded,
                account.failed,
                account.not_uploaded_note(),
                started.elapsed().as_secs_f64()
            );
        }
        if stopped {
            return Err(interrupted(&account));
        }
        match worst {
            None => Ok(()),
            Some(failure) => Err(Exit::new(
                failure,
                anyhow::anyhow!("{} of {total} files failed", account.failed),
            )
            .with_hint(hint)),
        }
    })
}

/// The outcomes of one `upload` run so far, printed as they come.
struct Tally<'a> {
    global: Global,
    files: &'a [PathBuf],
    /// Print a line for each file uploaded (a failure always has one).
    each_line: bool,
    progress: Option<ProgressBar>,
    worst: Option<Failure>,
    hint: Option<String>,
    account: Account,
    bytes: u64,
    /// `--json` reports with the file's position on the command line.
    reports: Vec<(usize, serde_json::Value)>,
}

impl Tally<'_> {
    /// Counts one finished upload and prints its line.
    fn settle(&mut self, done: jobs::Done) {
        let file = &self.files[done.index];
        let json = self.global.json;
        let (line, failed) = match done.outcome {
            Ok(receipt) => {
                self.account.uploaded += 1;
                self.bytes += receipt.size as u64;
                if json {
                    self.reports.push((
                        done.index,
                        json!({
                            "file": file, "ok": true, "topic": receipt.topic,
                            "token": receipt.token, "size": receipt.size,
                            "header_version": receipt.header.version,
                        }),
                    ));
                }
                let line = format!(
                    "{}: uploaded {} bytes to {} (token {})",
                    file.display(),
                    receipt.size,
                    receipt.topic,
                    receipt.token
                );
                (line, false)
            }
            Err(failed) => {
                self.account.failed += 1;
                self.worst = Some(self.worst.map_or(failed.failure, |w| w.max(failed.failure)));
                if self.hint.is_none() {
                    self.hint = failed.hint;
                }
                if json {
                    self.reports.push((
                        done.index,
                        json!({"file": file, "ok": false, "error": failed.message}),
                    ));
                }
                (
                    format!("{}: FAILED: {}", file.display(), failed.message),
                    true,
                )
            }
        };
        if json {
            return;
        }
        // A failure is a cause: one line on stderr; an upload a result.
        let print = || {
            if failed {
                eprintln!("{line}");
            } else if self.each_line {
                outln!("{line}");
            }
        };
        match &self.progress {
            Some(bar) => {
                // `println` prints nothing while the bar is hidden
                // (stderr not a terminal); `suspend` always does.
                bar.suspend(print);
                bar.inc(1);
                if self.account.failed > 0 {
                    bar.set_message(format!("({} failed)", self.account.failed));
                }
            }
            None => print(),
        }
    }
}

/// What became of the files of one `upload` run.
#[derive(Debug, Default)]
struct Account {
    uploaded: usize,
    failed: usize,
    /// Handed to the client but not acknowledged when the run stopped:
    /// the cloud may or may not have them.
    in_flight: usize,
    not_started: usize,
}

impl Account {
    fn not_uploaded(&self) -> usize {
        self.in_flight + self.not_started
    }

    /// `, N not uploaded` when some file was not settled.
    fn not_uploaded_note(&self) -> String {
        match self.not_uploaded() {
            0 => String::new(),
            left => format!(", {left} not uploaded"),
        }
    }
}

/// Ctrl-C before every file was settled.
fn interrupted(account: &Account) -> Exit {
    let total = account.uploaded + account.failed + account.not_uploaded();
    let hint = (account.in_flight > 0).then(|| {
        format!(
            "the {} files in flight were not acknowledged: the cloud may have some of them; upload the files not reported as uploaded again, or use --outbox, whose reruns send only what was not delivered",
            account.in_flight
        )
    });
    Exit::new(
        Failure::Interrupted,
        anyhow::anyhow!(
            "interrupted: {} of {total} files not uploaded ({} in flight, unacknowledged; {} not started)",
            account.not_uploaded(),
            account.in_flight,
            account.not_started
        ),
    )
    .with_hint(hint)
}

/// Performs a boot registration and prints the token.
pub fn register(global: Global, args: RegisterArgs) -> Result<(), Exit> {
    let device = args.device.device(args.connection.file()?)?;
    runtime()?.block_on(async {
        let client = client(&args.connection, false).await?;
        let result = client.register(&device).await;
        client.shutdown().await;
        let token = result.map_err(exit::from_cloud)?;
        if global.json {
            outln!(
                "{}",
                json!({"serial": device.serial, "app_id": device.app_id, "token": token})
            );
        } else {
            outln!("{}: token {token}", device.serial);
        }
        Ok(())
    })
}

/// Refuses, before connecting, a core dump the cloud could not read: an
/// empty file, or one whose header (PROTOCOL §10) fails its checks. Sent,
/// either would be stored as it is and acknowledged.
fn check_core_dump(path: &std::path::Path, dump: &[u8]) -> Result<(), Exit> {
    let refuse = |why: String, hint: &str| {
        Exit::new(Failure::BadInput, anyhow::anyhow!(why)).with_hint(Some(hint.to_owned()))
    };
    if dump.is_empty() {
        return Err(refuse(
            format!("the core dump {} is empty (0 bytes)", path.display()),
            "read the dump from the device's crash region again: a core dump is a 264-byte header (PROTOCOL §10) followed by the CrashCatcher dump",
        ));
    }
    match wire::CoreDumpHeader::decode(dump) {
        Ok(_) => Ok(()),
        Err(error) => {
            let hint = if wire::validate_checksum(dump).is_ok() {
                "this file is a binary log: send it with `ulogger upload`"
            } else {
                "`ulogger inspect FILE` shows what the header holds; read the dump from the device again"
            };
            Err(refuse(
                format!("{} is not a valid core dump: {error}", path.display()),
                hint,
            ))
        }
    }
}

/// Publishes a core dump.
pub fn core_dump(global: Global, args: CoreDumpArgs) -> Result<(), Exit> {
    args.connection.file()?;
    let dump = files::read_limited(&args.file, files::MAX_MESSAGE_SIZE, files::ONE_MESSAGE)
        .with_context(|| args.file.display().to_string())
        .map_err(|e| Exit::new(Failure::BadInput, e))?;
    check_core_dump(&args.file, &dump)?;
    runtime()?.block_on(async {
        let client = client(&args.connection, false).await?;
        let result = client.publish_core_dump(dump).await;
        client.shutdown().await;
        let receipt = result.map_err(exit::from_cloud)?;
        if global.json {
            outln!(
                "{}",
                json!({"file": args.file, "topic": receipt.topic, "size": receipt.size})
            );
        } else {
            outln!(
                "{}: published {} bytes to {}",
                args.file.display(),
                receipt.size,
                receipt.topic
            );
        }
        Ok(())
    })
}
