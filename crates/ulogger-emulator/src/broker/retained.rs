//! Retained messages: the last retained message per topic, handed to each
//! new matching subscription.

use std::collections::BTreeMap;

use super::router::topic_matches;
use super::Message;

#[derive(Default)]
pub(crate) struct Retained {
    by_topic: BTreeMap<String, Message>,
}

impl Retained {
    /// Stores `message` as its topic's retained message; an empty payload
    /// clears it (MQTT 3.1.1 §3.3.1.3).
    pub(crate) fn store(&mut self, message: &Message) {
        if message.payload.is_empty() {
            self.by_topic.remove(&message.topic);
        } else {
            self.by_topic.insert(message.topic.clone(), message.clone());
        }
    }

    pub(crate) fn matching(&self, filter: &str) -> Vec<Message> {
        self.by_topic
            .values()
            .filter(|m| topic_matches(filter, &m.topic))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::mqttbytes::QoS;

    fn msg(topic: &str, payload: &'static [u8]) -> Message {
        Message {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos: QoS::AtLeastOnce,
            retain: true,
        }
    }

    #[test]
    fn last_message_wins_and_empty_clears() {
        let mut r = Retained::default();
        r.store(&msg("a/b", b"1"));
        r.store(&msg("a/b", b"2"));
        r.store(&msg("a/c", b"3"));
        let got = r.matching("a/+");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload.as_ref(), b"2");
        r.store(&msg("a/b", b""));
        assert_eq!(r.matching("a/#").len(), 1);
    }
}
