//! `ulogger upload`, `ulogger register` and `ulogger core-dump`: the
//! commands that talk to the cloud.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use ulogger_cloud::{Client, ErrorKind, Phase};

use crate::connection::ConnectionArgs;
use crate::device::DeviceArgs;
use crate::exit::{self, Exit, Failure};
use crate::signal::StopSignal;
use crate::Global;

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
    /// The core dump, as read from the device.
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

/// Uploads each file; reports each outcome, then a summary; fails with
/// the worst one. Ctrl-C (or SIGTERM) stops after the upload under way,
/// with the summary. A registration that fails fails the device's
/// remaining files at once, with the same reason, instead of registering
/// again for each.
pub fn upload(global: Global, args: UploadArgs) -> Result<(), Exit> {
    let file = args.connection.file()?;
    let device = args.device.device(file)?;
    let stamp_time = args.stamp_time.or(file.stamp_time).unwrap_or(false);
    if let Some(dir) = args.outbox.as_ref().or(file.outbox.as_ref()) {
        return crate::outbox_upload::upload(
            global,
            &args.connection,
            stamp_time,
            &device,
            &args.files,
            dir,
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
        let client = tokio::select! {
            client = client(&args.connection, stamp_time) => client?,
            _ = &mut stop => return Err(interrupted(0, args.files.len())),
        };
        let progress = (args.files.len() > 1 && !global.json).then(|| {
            let bar = ProgressBar::new(args.files.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        let mut worst: Option<Failure> = None;
        let mut hint: Option<String> = None;
        let mut registration_failed: Option<(Failure, String)> = None;
        let (mut uploaded, mut failed, mut bytes) = (0usize, 0usize, 0u64);
        let mut stopped = false;
        let mut reports = Vec::new();
        for file in &args.files {
            let outcome = match (&registration_failed, std::fs::read(file)) {
                (_, Err(e)) => Err((Failure::BadInput, format!("cannot read: {e}"))),
                (Some((failure, message)), Ok(_)) => Err((*failure, message.clone())),
                (None, Ok(log)) => {
                    tokio::select! {
                        result = client.upload_log(&device, &log) => result.map_err(|e| {
                            if is_registration_failure(&e) {
                                registration_failed = Some((
                                    exit::classify(&e),
                                    format!("registration failed: {}", exit::message(&e)),
                                ));
                            }
                            if hint.is_none() {
                                hint = exit::hint(&e);
                            }
                            (exit::classify(&e), exit::message(&e))
                        }),
                        _ = &mut stop => {
                            stopped = true;
                            break;
                        }
                    }
                }
            };
            let line = match &outcome {
                Ok(receipt) => {
                    uploaded += 1;
                    bytes += receipt.size as u64;
                    if global.json {
                        reports.push(json!({
                            "file": file, "ok": true, "topic": receipt.topic,
                            "token": receipt.token, "size": receipt.size,
                            "header_version": receipt.header.version,
                        }));
                    }
                    format!(
                        "{}: uploaded {} bytes to {} (token {})",
                        file.display(),
                        receipt.size,
                        receipt.topic,
                        receipt.token
                    )
                }
                Err((failure, message)) => {
                    failed += 1;
                    worst = Some(worst.map_or(*failure, |w| w.max(*failure)));
                    if global.json {
                        reports.push(json!({"file": file, "ok": false, "error": message}));
                    }
                    format!("{}: FAILED: {message}", file.display())
                }
            };
            match (&progress, global.json) {
                (_, true) => {}
                (Some(bar), false) => {
                    // `println` prints nothing while the bar is hidden
                    // (stderr not a terminal); `suspend` always does.
                    bar.suspend(|| println!("{line}"));
                    bar.inc(1);
                }
                (None, false) => println!("{line}"),
            }
        }
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        client.shutdown().await;
        let total = args.files.len();
        let left = total - uploaded - failed;
        if global.json {
            println!("{}", serde_json::Value::Array(reports));
        } else if total > 1 || stopped {
            println!(
                "{uploaded} uploaded, {failed} failed{}, {bytes} bytes in {:.1} s",
                if left > 0 {
                    format!(", {left} not uploaded")
                } else {
                    String::new()
                },
                started.elapsed().as_secs_f64()
            );
        }
        if stopped {
            return Err(interrupted(uploaded + failed, total));
        }
        match worst {
            None => Ok(()),
            Some(failure) => Err(Exit::new(
                failure,
                anyhow::anyhow!("{failed} of {total} files failed"),
            )
            .with_hint(hint)),
        }
    })
}

/// Ctrl-C with `done` of `total` files settled.
fn interrupted(done: usize, total: usize) -> Exit {
    Exit::new(
        Failure::Interrupted,
        anyhow::anyhow!(
            "interrupted: {} of {total} files not uploaded",
            total - done
        ),
    )
}

/// True when the device could not get a session token: uploading its
/// other files would only fail the same way, each after the same wait.
fn is_registration_failure(error: &ulogger_cloud::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Timeout(Phase::BootReply)
            | ErrorKind::InvalidBootReply(_)
            | ErrorKind::SubscribeRefused { .. }
    )
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
            println!(
                "{}",
                json!({"serial": device.serial, "app_id": device.app_id, "token": token})
            );
        } else {
            println!("{}: token {token}", device.serial);
        }
        Ok(())
    })
}

/// Publishes a core dump.
pub fn core_dump(global: Global, args: CoreDumpArgs) -> Result<(), Exit> {
    args.connection.file()?;
    let dump = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))
        .map_err(|e| Exit::new(Failure::BadInput, e))?;
    runtime()?.block_on(async {
        let client = client(&args.connection, false).await?;
        let result = client.publish_core_dump(dump).await;
        client.shutdown().await;
        let receipt = result.map_err(exit::from_cloud)?;
        if global.json {
            println!(
                "{}",
                json!({"file": args.file, "topic": receipt.topic, "size": receipt.size})
            );
        } else {
            println!(
                "{}: published {} bytes to {}",
                args.file.display(),
                receipt.size,
                receipt.topic
            );
        }
        Ok(())
    })
}
