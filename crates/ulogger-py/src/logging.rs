//! The engine's `tracing` events as records of Python's `logging`, on the
//! logger `ulogger_cloud.engine`.
//!
//! Events are formatted where they happen and handed to a forwarding
//! thread through a bounded queue that never blocks: the engine must not
//! wait for the GIL (a Python thread holding it may be waiting for the
//! engine), so when Python does not keep up, records are dropped, not
//! queued without end. Which events are forwarded is `ULOGGER_LOG` (an
//! `EnvFilter` directive, default `info`). The engine never logs tokens
//! or keys.

use std::fmt::Write as _;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Records waiting for the forwarding thread.
const QUEUE: usize = 1024;

struct Record {
    level: u8,
    message: String,
}

struct ToPython {
    queue: SyncSender<Record>,
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// Python's level number for a `tracing` level.
fn python_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG | Level::TRACE => 10,
    }
}

impl<S: Subscriber> Layer<S> for ToPython {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text::default();
        event.record(&mut text);
        let metadata = event.metadata();
        let message = format!("{}: {}{}", metadata.target(), text.message, text.fields);
        // Full or gone: the record is dropped rather than the engine held.
        let _ = self.queue.try_send(Record {
            level: python_level(*metadata.level()),
            message,
        });
    }
}

fn forward(records: Receiver<Record>) {
    for record in records {
        let delivered = Python::try_attach(|py| {
            let logged = py
                .import("logging")
                .and_then(|logging| logging.call_method1("getLogger", ("ulogger_cloud.engine",)))
                .and_then(|logger| {
                    logger.call_method1("log", (record.level, "%s", record.message))
                });
            if let Err(e) = logged {
                e.print(py);
            }
        });
        if delivered.is_none() {
            // The interpreter is shutting down: nobody to tell.
            return;
        }
    }
}

/// Starts forwarding, once per process. Does nothing when the process
/// already has a global `tracing` subscriber (another extension's).
pub(crate) fn install() {
    let filter = EnvFilter::try_from_env("ULOGGER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (queue, records) = sync_channel(QUEUE);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(ToPython { queue })
        .try_init();
    if installed.is_ok() {
        let _ = std::thread::Builder::new()
            .name("ulogger-log".to_owned())
            .spawn(move || forward(records));
    }
}
