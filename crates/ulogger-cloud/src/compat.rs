//! The Python SDK's free functions, by its names: each connects, does one
//! job and closes.
//!
//! They keep code ported from the Python SDK reading the same. A gateway
//! that uploads more than now and then should hold one [`Client`] instead:
//! it keeps its connection open between uploads, and sends any telemetry
//! message ([`Telemetry`](crate::wire::Telemetry)) with one call,
//! [`Client::publish_telemetry`]. Blocking versions are in
//! [`crate::blocking`]. (Until the next release these names are also at the
//! crate root, where they used to be.)

use std::sync::Arc;

use bytes::Bytes;

use crate::error::Error;
use crate::store::SessionStore;
use crate::wire::{DeviceEvents, DeviceInfo, DeviceMetrics, Event, Metric};
use crate::{Client, MqttConfig, PublishReceipt, TelemetryReceipt, UploadReceipt};

async fn with_client<T, F>(
    config: &MqttConfig,
    store: Option<&Arc<SessionStore>>,
    job: impl FnOnce(Client) -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let mut builder = Client::builder(config.clone());
    if let Some(store) = store {
        builder = builder.session_store(store.clone());
    }
    let client = builder.build()?;
    // Fail on the first failed attempt rather than retrying for the whole
    // connect timeout: a one-shot call has no later to wait for.
    let result = match client.connected().await {
        Ok(()) => job(client.clone()).await,
        Err(e) => Err(e),
    };
    client.shutdown().await;
    result
}

/// Uploads one binary log: validates it, takes the device's token from
/// `store` or registers, patches the token in, publishes and waits for the
/// broker's acknowledgement. See [`Client::upload_log`].
pub async fn upload_log(
    config: &MqttConfig,
    device: &DeviceInfo,
    log: &[u8],
    store: &Arc<SessionStore>,
) -> Result<UploadReceipt, Error> {
    with_client(config, Some(store), |c| async move {
        c.upload_log(device, log).await
    })
    .await
}

/// The device's token from `store`, else from a boot registration (which
/// is then stored). See [`Client::session_token`].
pub async fn get_or_fetch_token(
    config: &MqttConfig,
    device: &DeviceInfo,
    store: &Arc<SessionStore>,
) -> Result<u32, Error> {
    with_client(config, Some(store), |c| async move {
        c.session_token(device).await
    })
    .await
}

/// Performs a boot registration and returns the new token (nothing is
/// cached). See [`Client::register`].
pub async fn get_session_token(config: &MqttConfig, device: &DeviceInfo) -> Result<u32, Error> {
    with_client(config, None, |c| async move { c.register(device).await }).await
}

/// Publishes a binary log as-is. See [`Client::publish_binary_log`].
pub async fn publish_binary_log(
    config: &MqttConfig,
    app_id: u32,
    log: impl Into<Bytes>,
) -> Result<PublishReceipt, Error> {
    let log = log.into();
    with_client(config, None, |c| async move {
        c.publish_binary_log(app_id, log).await
    })
    .await
}

/// Publishes a core dump as-is. See [`Client::publish_core_dump`].
pub async fn publish_core_dump(
    config: &MqttConfig,
    dump: impl Into<Bytes>,
) -> Result<PublishReceipt, Error> {
    let dump = dump.into();
    with_client(
        config,
        None,
        |c| async move { c.publish_core_dump(dump).await },
    )
    .await
}

/// Publishes one device's metrics over MQTT. See [`Client::publish_metrics`];
/// without a client certificate, use the HTTPS fallback instead.
pub async fn publish_metrics(
    config: &MqttConfig,
    serial: &str,
    app_id: u32,
    metrics: &[Metric],
) -> Result<TelemetryReceipt, Error> {
    with_client(config, None, |c| async move {
        c.publish_metrics(serial, app_id, metrics).await
    })
    .await
}

/// Publishes one device's events over MQTT. See [`Client::publish_events`].
pub async fn publish_events(
    config: &MqttConfig,
    serial: &str,
    app_id: u32,
    events: &[Event],
) -> Result<TelemetryReceipt, Error> {
    with_client(config, None, |c| async move {
        c.publish_events(serial, app_id, events).await
    })
    .await
}

/// Publishes a heartbeat on behalf of a device over MQTT. See
/// [`Client::publish_heartbeat`].
pub async fn publish_heartbeat(
    config: &MqttConfig,
    serial: &str,
    app_id: u32,
    timestamp: Option<u64>,
) -> Result<TelemetryReceipt, Error> {
    with_client(config, None, |c| async move {
        c.publish_heartbeat(serial, app_id, timestamp).await
    })
    .await
}

/// Publishes many devices' metrics in one MQTT message. See
/// [`Client::publish_metrics_batch`].
pub async fn publish_metrics_batch(
    config: &MqttConfig,
    app_id: u32,
    devices: &[DeviceMetrics],
) -> Result<TelemetryReceipt, Error> {
    with_client(config, None, |c| async move {
        c.publish_metrics_batch(app_id, devices).await
    })
    .await
}

/// Publishes many devices' events in one MQTT message. See
/// [`Client::publish_events_batch`].
pub async fn publish_events_batch(
    config: &MqttConfig,
    app_id: u32,
    devices: &[DeviceEvents],
) -> Result<TelemetryReceipt, Error> {
    with_client(config, None, |c| async move {
        c.publish_events_batch(app_id, devices).await
    })
    .await
}

pub(crate) mod blocking {
    //! The same functions, each on a short-lived runtime of its own.

    use super::*;

    fn run<T>(future: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                Error::with_source(
                    crate::ErrorKind::InvalidConfig {
                        field: "runtime",
                        reason: "could not start a runtime".to_owned(),
                    },
                    e,
                )
            })?
            .block_on(future)
    }

    /// Blocking [`crate::compat::upload_log`].
    pub fn upload_log(
        config: &MqttConfig,
        device: &DeviceInfo,
        log: &[u8],
        store: &Arc<SessionStore>,
    ) -> Result<UploadReceipt, Error> {
        run(super::upload_log(config, device, log, store))
    }

    /// Blocking [`crate::compat::get_or_fetch_token`].
    pub fn get_or_fetch_token(
        config: &MqttConfig,
        device: &DeviceInfo,
        store: &Arc<SessionStore>,
    ) -> Result<u32, Error> {
        run(super::get_or_fetch_token(config, device, store))
    }

    /// Blocking [`crate::compat::get_session_token`].
    pub fn get_session_token(config: &MqttConfig, device: &DeviceInfo) -> Result<u32, Error> {
        run(super::get_session_token(config, device))
    }

    /// Blocking [`crate::compat::publish_binary_log`].
    pub fn publish_binary_log(
        config: &MqttConfig,
        app_id: u32,
        log: impl Into<Bytes>,
    ) -> Result<PublishReceipt, Error> {
        run(super::publish_binary_log(config, app_id, log))
    }

    /// Blocking [`crate::compat::publish_core_dump`].
    pub fn publish_core_dump(
        config: &MqttConfig,
        dump: impl Into<Bytes>,
    ) -> Result<PublishReceipt, Error> {
        run(super::publish_core_dump(config, dump))
    }

    /// Blocking [`crate::compat::publish_metrics`].
    pub fn publish_metrics(
        config: &MqttConfig,
        serial: &str,
        app_id: u32,
        metrics: &[Metric],
    ) -> Result<TelemetryReceipt, Error> {
        run(super::publish_metrics(config, serial, app_id, metrics))
    }

    /// Blocking [`crate::compat::publish_events`].
    pub fn publish_events(
        config: &MqttConfig,
        serial: &str,
        app_id: u32,
        events: &[Event],
    ) -> Result<TelemetryReceipt, Error> {
        run(super::publish_events(config, serial, app_id, events))
    }

    /// Blocking [`crate::compat::publish_heartbeat`].
    pub fn publish_heartbeat(
        config: &MqttConfig,
        serial: &str,
        app_id: u32,
        timestamp: Option<u64>,
    ) -> Result<TelemetryReceipt, Error> {
        run(super::publish_heartbeat(config, serial, app_id, timestamp))
    }

    /// Blocking [`crate::compat::publish_metrics_batch`].
    pub fn publish_metrics_batch(
        config: &MqttConfig,
        app_id: u32,
        devices: &[DeviceMetrics],
    ) -> Result<TelemetryReceipt, Error> {
        run(super::publish_metrics_batch(config, app_id, devices))
    }

    /// Blocking [`crate::compat::publish_events_batch`].
    pub fn publish_events_batch(
        config: &MqttConfig,
        app_id: u32,
        devices: &[DeviceEvents],
    ) -> Result<TelemetryReceipt, Error> {
        run(super::publish_events_batch(config, app_id, devices))
    }
}
