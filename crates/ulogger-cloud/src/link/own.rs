//! Our own MQTT session as an [`MqttLink`]: the trait's reference
//! implementation, and proof that everything the client needs from a
//! connection fits through it.
//!
//! The client does not use it for its own connections (the pool calls
//! `Transport` directly, without boxing or dynamic dispatch); tests use it
//! to run the bridged path over a real socket.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use tokio::task::AbortHandle;

use super::{IncomingMessage, LinkFuture, LinkInbox, MqttLink};
use crate::transport::Transport;

/// A [`Transport`] seen through the [`MqttLink`] trait.
///
/// The transport re-sends unacknowledged publishes and restores its
/// subscriptions after every reconnect by itself, so towards the client
/// its session is never lost: it reports `connected(true)` once it is up
/// and nothing of its reconnects.
pub(crate) struct OwnLink {
    transport: Transport,
    inbox: OnceLock<LinkInbox>,
    /// Filter -> subscribes made and the task forwarding its messages.
    forwarders: Mutex<HashMap<String, (usize, AbortHandle)>>,
}

impl OwnLink {
    pub fn new(transport: Transport) -> OwnLink {
        OwnLink {
            transport,
            inbox: OnceLock::new(),
            forwarders: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards what arrives on `filter` to the inbox, once per filter.
    fn forward(&self, filter: &str) {
        let Some(inbox) = self.inbox.get().cloned() else {
            return;
        };
        let mut forwarders = self
            .forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((count, _)) = forwarders.get_mut(filter) {
            *count += 1;
            return;
        }
        let mut listener = self.transport.listen(filter);
        let topic = filter.to_owned();
        let task = tokio::spawn(async move {
            while let Some(message) = listener.recv().await {
                inbox.deliver(
                    IncomingMessage::new(topic.clone(), message.payload)
                        .retain(message.retain)
                        .dup(message.dup),
                );
            }
        });
        forwarders.insert(filter.to_owned(), (1, task.abort_handle()));
    }

    /// Stops forwarding `filter`; returns how many subscribes it had.
    fn stop_forwarding(&self, filter: &str) -> usize {
        let mut forwarders = self
            .forwarders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match forwarders.remove(filter) {
            Some((count, task)) => {
                task.abort();
                count
            }
            None => 0,
        }
    }
}

impl MqttLink for OwnLink {
    fn attach(&self, inbox: LinkInbox) {
        if self.inbox.set(inbox.clone()).is_err() {
            return;
        }
        let transport = self.transport.clone();
        tokio::spawn(async move {
            transport.wait_connected().await;
            if transport.is_connected() {
                inbox.connected(true);
            }
        });
    }

    fn publish(&self, topic: String, payload: Bytes) -> LinkFuture<'_> {
        Box::pin(self.transport.publish(topic, payload))
    }

    fn subscribe(&self, filter: String) -> LinkFuture<'_> {
        Box::pin(async move {
            // Listen before subscribing, so a retained message replayed on
            // subscription cannot slip past.
            self.forward(&filter);
            self.transport.subscribe(filter).await
        })
    }

    /// The client unsubscribes once, when its last holder of `filter` let
    /// go; the transport counts every subscribe, so give them all up.
    fn unsubscribe(&self, filter: String) -> LinkFuture<'_> {
        for _ in 0..self.stop_forwarding(&filter) {
            self.transport.unsubscribe(filter.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::wire::{build_log, DeviceInfo, LogHeader};
    use crate::{Client, MqttConfig, Pacing, Security};
    use ulogger_emulator::{Emulator, EmulatorConfig, RecordKind, Verdict};

    /// The bridged path (`Bridge` over the trait) on our own transport and
    /// a real socket: registration (subscribe, routed reply), an upload
    /// the cloud verifies, and telemetry.
    #[tokio::test]
    async fn our_transport_serves_as_a_bridged_link() {
        let emu = Emulator::start(EmulatorConfig::new(4242).plaintext(true)).unwrap();
        let config = MqttConfig::new(4242)
            .broker("127.0.0.1")
            .port(emu.addr().port())
            .security(Security::Plaintext)
            .pacing(Pacing::off());
        let transport = Transport::start(config.validate().unwrap()).unwrap();
        let client = Client::builder(config)
            .link(OwnLink::new(transport))
            .build()
            .unwrap();
        let device = DeviceInfo::new(7, "SN-OWN-LINK", "board", "v1.0.0", "abc1234");
        let token = client.session_token(&device).await.unwrap();
        assert_eq!(
            emu.issued_tokens(),
            vec![(7, "SN-OWN-LINK".to_owned(), token)]
        );
        let log = build_log(LogHeader::new(1).unwrap(), &[5u8; 100]).unwrap();
        client.upload_log(&device, &log).await.unwrap();
        let record = emu
            .wait_for(|r| r.kind == RecordKind::BinaryLog, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
        client
            .publish_heartbeat("SN-OWN-LINK", 7, None)
            .await
            .unwrap();
        let record = emu
            .wait_for(|r| r.kind == RecordKind::Metrics, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(record.verdict, Verdict::Ok, "{:?}", record.reason);
        client.shutdown().await;
    }
}
