//! Log configurations pushed by the cloud to a device (PROTOCOL §7).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{timeout_at, Instant};

use super::pool::{Connection, Receiver};
use super::Client;
use crate::error::{Error, ErrorKind, Phase};
use crate::transport::{deadline_after, Message};
use crate::wire::{DeviceInfo, LogConfig};

impl Client {
    /// Waits for one log configuration for `device` on its config topic,
    /// for at most `timeout` in all (subscribing included).
    ///
    /// A retained message on the topic counts: the platform may keep the
    /// device's current configuration there, and the Python SDK treats it
    /// as such. The subscription ends when this returns.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Timeout`] with [`Phase::LogConfig`] when nothing
    /// arrived in time, [`ErrorKind::InvalidLogConfig`] when what arrived
    /// does not decode, [`ErrorKind::InvalidTopic`] for a serial that
    /// cannot go into a topic, and the connection's errors.
    pub async fn wait_for_log_config(
        &self,
        device: &DeviceInfo,
        timeout: Duration,
    ) -> Result<LogConfig, Error> {
        let deadline = deadline_after(Instant::now(), timeout);
        let wait = async {
            let mut configs = self.log_configs(device).await?;
            match configs.next().await {
                Some(item) => item,
                None => Err(ErrorKind::Shutdown.into()),
            }
        };
        timeout_at(deadline, wait)
            .await
            .unwrap_or_else(|_| Err(ErrorKind::Timeout(Phase::LogConfig).into()))
    }

    /// Subscribes to `device`'s config topic and returns, once the broker
    /// granted the subscription, the configurations that arrive on it.
    ///
    /// The subscription survives reconnects (the client restores it) and
    /// ends when the [`LogConfigs`] is dropped. See [`LogConfigs`] for
    /// retained messages and duplicates.
    ///
    /// ```no_run
    /// use ulogger_cloud::{Client, MqttConfig, wire::DeviceInfo};
    ///
    /// # async fn run() -> Result<(), ulogger_cloud::Error> {
    /// let config = MqttConfig::new(42).client_cert("gw.pem.crt", "gw.pem.key");
    /// let client = Client::builder(config).build()?;
    /// let device = DeviceInfo::new(7, "SN-0001", "sensor-board", "v1.2.0", "abcdef0");
    /// let mut configs = client.log_configs(&device).await?;
    /// while let Some(config) = configs.next().await {
    ///     match config {
    ///         Ok(config) => println!("level {} for {}s", config.level, config.timeout_secs),
    ///         Err(e) => eprintln!("skipping a configuration: {e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidTopic`] for a serial that cannot go into a
    /// topic, and the subscription's errors (refused, timed out, the
    /// connection's).
    pub async fn log_configs(&self, device: &DeviceInfo) -> Result<LogConfigs, Error> {
        let topic = self
            .settings()
            .topics
            .config(device.app_id, &device.serial)?;
        let transport = self.transport().clone();
        // Listen before subscribing, so that a retained message replayed on
        // subscription cannot slip past.
        let listener = transport.listen(&topic);
        let configs = LogConfigs {
            transport,
            topic,
            listener,
            last: None,
        };
        configs.transport.subscribe(configs.topic.clone()).await?;
        Ok(configs)
    }
}

/// The log configurations the cloud pushes to one device, in the order
/// they arrive; from [`Client::log_configs`].
///
/// Read them with [`LogConfigs::next`] or as a
/// [`Stream`](futures_core::Stream). A payload that does not decode is an
/// [`ErrorKind::InvalidLogConfig`] item and the configurations go on; the
/// stream ends (`None`) only when the client shuts down. Dropping it
/// unsubscribes.
///
/// **Retained messages are delivered**: a retained configuration on the
/// topic is the device's current one, as the Python SDK has it, so it is
/// usually the first item.
///
/// **Duplicates.** The connection subscribes at QoS 1 on a clean session,
/// so a configuration can come twice in two ways, and both are skipped
/// when the payload is the one yielded last: a re-delivery the broker
/// marks DUP, and the retained configuration the broker replays when the
/// client resubscribes after a reconnect. What cannot be told apart from a
/// new push is a copy that arrives with neither flag, or a duplicate
/// of a configuration older than the last one; those are yielded again
/// (applying one twice is harmless). A configuration pushed, not retained,
/// while the connection was down is lost: a clean session keeps nothing.
pub struct LogConfigs {
    transport: Connection,
    topic: String,
    listener: Receiver,
    /// The payload yielded last, to recognise re-deliveries of it.
    last: Option<Bytes>,
}

impl LogConfigs {
    /// The next configuration: `None` once the client is shut down.
    pub async fn next(&mut self) -> Option<Result<LogConfig, Error>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The config topic this subscribes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<LogConfig, Error>>> {
        loop {
            let message = match self.listener.poll_recv(cx) {
                Poll::Ready(Some(message)) => message,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if let Some(item) = self.accept(message) {
                return Poll::Ready(Some(item));
            }
        }
    }

    /// The item for `message`, or `None` for a re-delivery of the last one.
    fn accept(&mut self, message: Message) -> Option<Result<LogConfig, Error>> {
        let again = message.dup || message.retain;
        if again && self.last.as_ref() == Some(&message.payload) {
            tracing::debug!(topic = %self.topic, "skipping a re-delivered log configuration");
            return None;
        }
        let item = LogConfig::decode(&message.payload).map_err(Error::from);
        self.last = Some(message.payload);
        Some(item)
    }
}

impl futures_core::Stream for LogConfigs {
    type Item = Result<LogConfig, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl Drop for LogConfigs {
    fn drop(&mut self) {
        self.transport.unsubscribe(std::mem::take(&mut self.topic));
    }
}

impl std::fmt::Debug for LogConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogConfigs")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}
