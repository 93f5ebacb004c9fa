//! Subscriptions and topic matching: who gets a published message.

use rumqttc::mqttbytes::QoS;

use super::{Mailbox, Message};

/// True when `topic` matches the subscription `filter` (MQTT 3.1.1 §4.7):
/// `+` matches one level, a final `#` matches the parent and any levels
/// below, and wildcards at the first level do not match topics starting
/// with `$`.
pub(crate) fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when `filter` is a well-formed subscription filter.
pub(crate) fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    levels.iter().enumerate().all(|(i, level)| {
        if level.contains('#') {
            *level == "#" && i == last
        } else if level.contains('+') {
            *level == "+"
        } else {
            true
        }
    })
}

struct Entry {
    filter: String,
    qos: QoS,
    target: Mailbox,
}

/// All subscriptions of all connections (and of the internal cloud).
#[derive(Default)]
pub(crate) struct Subscriptions {
    entries: Vec<Entry>,
}

impl Subscriptions {
    /// Adds or replaces (same connection, same filter) a subscription.
    pub(crate) fn add(&mut self, target: Mailbox, filter: &str, qos: QoS) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.target.conn_id == target.conn_id && e.filter == filter)
        {
            entry.qos = qos;
            return;
        }
        self.entries.push(Entry {
            filter: filter.to_string(),
            qos,
            target,
        });
    }

    pub(crate) fn remove(&mut self, conn_id: u64, filter: &str) {
        self.entries
            .retain(|e| !(e.target.conn_id == conn_id && e.filter == filter));
    }

    pub(crate) fn remove_connection(&mut self, conn_id: u64) {
        self.entries.retain(|e| e.target.conn_id != conn_id);
    }

    /// One delivery per connection whose filters match, at the highest
    /// QoS among its matching subscriptions capped by the message's.
    pub(crate) fn deliveries(&self, message: &Message) -> Vec<(Mailbox, QoS)> {
        let mut out: Vec<(Mailbox, QoS)> = Vec::new();
        for entry in self
            .entries
            .iter()
            .filter(|e| topic_matches(&e.filter, &message.topic))
        {
            let qos = min_qos(entry.qos, message.qos);
            match out
                .iter_mut()
                .find(|(t, _)| t.conn_id == entry.target.conn_id)
            {
                Some((_, granted)) => *granted = max_qos(*granted, qos),
                None => out.push((entry.target.clone(), qos)),
            }
        }
        out
    }
}

pub(crate) fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_mqtt_3_1_1() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/+/c", "a//c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn filters_are_validated() {
        for ok in ["a", "a/b", "+", "#", "a/+/b", "a/#", "+/+", "/"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a\0"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
    }

    #[test]
    fn one_delivery_per_connection_at_the_best_qos() {
        let (target, _rx, _close) = Mailbox::new(1);
        let mut subs = Subscriptions::default();
        subs.add(target.clone(), "a/#", QoS::AtMostOnce);
        subs.add(target, "a/+", QoS::AtLeastOnce);
        let message = Message {
            topic: "a/b".into(),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let d = subs.deliveries(&message);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].1, QoS::AtLeastOnce);
        subs.remove(1, "a/+");
        assert_eq!(subs.deliveries(&message)[0].1, QoS::AtMostOnce);
        subs.remove_connection(1);
        assert!(subs.deliveries(&message).is_empty());
    }
}
