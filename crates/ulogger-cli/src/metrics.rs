//! `ulogger agent --metrics-listen ADDR`: the agent's state in the
//! Prometheus text format (version 0.0.4) at `http://ADDR/metrics`, for
//! a scraper. The outbox's numbers and the connection are read at each
//! scrape; the per-device counters are counted as the agent goes, for at
//! most [`MAX_DEVICES`] serials (the rest are counted together under
//! [`OTHERS`], so a gateway meeting many devices cannot grow the
//! exposition, nor a scraper's storage, without bound).

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use ulogger_cloud::Client;

use crate::exit::{Exit, Failure};

/// Serials counted one by one; the others are counted together.
pub const MAX_DEVICES: usize = 256;

/// The `serial` label of the devices past [`MAX_DEVICES`]: parentheses
/// are not allowed in a serial, so no device has it.
pub const OTHERS: &str = "(others)";

/// Scrapes served at once; more wait for the listener's backlog.
const MAX_CONNECTIONS: usize = 8;

/// How long a scraper may take to send its request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The `serial` label of the per-device counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Device {
    serial: String,
}

/// The agent's metrics: cheap to clone, shared by the service loop and
/// the endpoint.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// Serials with labels of their own (at most [`MAX_DEVICES`]).
    devices: Mutex<HashSet<String>>,
    queued: Family<Device, Counter>,
    delivered: Family<Device, Counter>,
    failed: Family<Device, Counter>,
    rejected: Family<Device, Counter>,
}

impl Metrics {
    /// The metrics of the agent running `client`.
    pub fn new(client: &Client) -> Metrics {
        let mut registry = Registry::with_prefix("ulogger");
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Device, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let queued = family(
            &mut registry,
            "agent_device_queued",
            "Records the agent queued in the outbox for a device (inbox files, BLE buffers)",
        );
        let delivered = family(
            &mut registry,
            "agent_device_delivered",
            "Records of a device queued by this agent that the broker acknowledged",
        );
        let failed = family(
            &mut registry,
            "agent_device_failed",
            "Records of a device queued by this agent that failed for good (dead in the outbox)",
        );
        let rejected = family(
            &mut registry,
            "agent_device_rejected",
            "Inbox files of a device moved to the rejected folder as invalid",
        );
        registry.register_collector(Box::new(Snapshot {
            client: client.clone(),
        }));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                devices: Mutex::new(HashSet::new()),
                queued,
                delivered,
                failed,
                rejected,
            }),
        }
    }

    /// A record of `serial` was queued.
    pub fn queued(&self, serial: &str) {
        self.count(&self.inner.queued, serial);
    }

    /// A record of `serial` was delivered.
    pub fn delivered(&self, serial: &str) {
        self.count(&self.inner.delivered, serial);
    }

    /// A record of `serial` failed for good.
    pub fn failed(&self, serial: &str) {
        self.count(&self.inner.failed, serial);
    }

    /// A file of `serial` was rejected.
    pub fn rejected(&self, serial: &str) {
        self.count(&self.inner.rejected, serial);
    }

    fn count(&self, family: &Family<Device, Counter>, serial: &str) {
        family.get_or_create(&self.label(serial)).inc();
    }

    /// The label `serial` is counted under: its own while there is room.
    fn label(&self, serial: &str) -> Device {
        let mut devices = self
            .inner
            .devices
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let own = devices.contains(serial)
            || (devices.len() < MAX_DEVICES && devices.insert(serial.to_owned()));
        Device {
            serial: if own { serial } else { OTHERS }.to_owned(),
        }
    }

    /// The exposition, as a scrape gets it.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}

/// What is read at each scrape: the outbox's status and the connection.
#[derive(Debug)]
struct Snapshot {
    client: Client,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn gauge<N: EncodeGaugeValue>(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: N,
        ) -> Result<(), std::fmt::Error> {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        }
        fn counter(
            encoder: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            value: u64,
        ) -> Result<(), std::fmt::Error> {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
        }
        let up = i64::from(self.client.is_connected());
        gauge(
            &mut encoder,
            "connection_up",
            "1 while a connection to the broker is up, else 0",
            up,
        )?;
        // An outbox the agent cannot read has no numbers: a scrape says
        // so by their absence rather than by zeros.
        let Ok(status) = self.client.outbox_status() else {
            return Ok(());
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let big = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        gauge(
            &mut encoder,
            "outbox_queued",
            "Records waiting in the outbox for delivery",
            count(status.queued),
        )?;
        gauge(
            &mut encoder,
            "outbox_queued_bytes",
            "Payload bytes of the queued records",
            big(status.queued_bytes),
        )?;
        gauge(
            &mut encoder,
            "outbox_in_flight",
            "Records handed to the broker and not acknowledged yet",
            count(status.in_flight),
        )?;
        gauge(
            &mut encoder,
            "outbox_dead",
            "Records that failed for good, kept until retried or purged",
            count(status.dead),
        )?;
        gauge(
            &mut encoder,
            "outbox_oldest_age_seconds",
            "How long the oldest queued record has waited (0 with none queued)",
            status.oldest_age.unwrap_or_default().as_secs_f64(),
        )?;
        counter(
            &mut encoder,
            "outbox_delivered",
            "Records the broker acknowledged since the agent started",
            status.delivered,
        )?;
        counter(
            &mut encoder,
            "outbox_evicted",
            "Records removed at a bound of the outbox (bytes, count, age) since the agent started",
            status.evicted,
        )?;
        counter(
            &mut encoder,
            "outbox_corrupt",
            "Damaged records set aside when the agent opened the outbox",
            status.corrupt,
        )?;
        let failing_for = status
            .failing_since
            .map(|since| {
                SystemTime::now()
                    .duration_since(since)
                    .unwrap_or_default()
                    .as_secs_f64()
            })
            .unwrap_or(0.0);
        gauge(
            &mut encoder,
            "delivery_failing",
            "1 while delivery fails (outbox status shows the error), else 0",
            i64::from(status.last_error.is_some()),
        )?;
        gauge(
            &mut encoder,
            "delivery_last_error_age_seconds",
            "How long the current delivery failure has lasted, from its first occurrence (0 while delivery works)",
            failing_for,
        )?;
        gauge(
            &mut encoder,
            "delivery_failed_attempts",
            "Attempts that failed since the current delivery failure started",
            big(status.failed_attempts),
        )?;
        Ok(())
    }
}

/// Binds the endpoint's address, before the agent says it is ready: a
/// taken or unusable address is bad input, said at once.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Exit> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another process listens there: pick another port (port 0 takes a free one)"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: pick a port above 1023"
            }
            _ => "pass an address of this machine, e.g. 127.0.0.1:9464",
        };
        Exit::new(
            Failure::BadInput,
            anyhow::anyhow!("--metrics-listen {addr}: cannot listen there: {e}"),
        )
        .with_hint(Some(hint.to_owned()))
    })
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of descriptors, most likely: no hot loop.
                tracing::warn!(error = %e, "the metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(socket), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "a metrics connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn answer<B>(metrics: &Metrics, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n".to_owned(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match metrics.encode() {
        Ok(text) => {
            let mut response = reply(StatusCode::OK, text);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn devices_past_the_bound_are_counted_together() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let client = Client::builder(
            ulogger_cloud::MqttConfig::new(1)
                .broker("127.0.0.1")
                .port(1)
                .security(ulogger_cloud::Security::Plaintext),
        )
        .build()
        .unwrap();
        let metrics = Metrics::new(&client);
        for n in 0..MAX_DEVICES + 10 {
            metrics.queued(&format!("SN-{n}"));
        }
        metrics.queued("SN-0");
        let text = metrics.encode().unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ulogger_agent_device_queued_total{"))
            .collect();
        assert_eq!(lines.len(), MAX_DEVICES + 1, "{text}");
        assert!(lines.contains(&"ulogger_agent_device_queued_total{serial=\"SN-0\"} 2"));
        assert!(lines.contains(&"ulogger_agent_device_queued_total{serial=\"(others)\"} 10"));
    }
}
