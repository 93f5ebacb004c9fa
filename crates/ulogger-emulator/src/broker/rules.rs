//! The platform broker's rules (PROTOCOL §1), as AWS IoT Core enforces
//! them. Written independently of `ulogger_wire` on purpose: the
//! emulator is the oracle the client's own checks are tested against.

use std::fmt;

/// AWS IoT's limit on one MQTT message's payload.
pub(crate) const MAX_PAYLOAD: usize = 128 * 1024;
/// AWS IoT's limit on a topic name's length in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 256;
/// AWS IoT's limit on the number of `/` in a topic name.
pub(crate) const MAX_TOPIC_SLASHES: usize = 7;
/// AWS IoT's limit on a client id's length in bytes.
pub(crate) const MAX_CLIENT_ID_LEN: usize = 128;

/// A broken rule; its `Display` is the reason written to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    PayloadTooLarge {
        size: usize,
        limit: usize,
    },
    TopicEmpty,
    TopicWildcard,
    TopicNul,
    TopicTooLong {
        len: usize,
        limit: usize,
    },
    TopicTooDeep {
        slashes: usize,
        limit: usize,
    },
    Qos2,
    ClientIdPrefix {
        expected: String,
    },
    ClientIdTooLong {
        len: usize,
        limit: usize,
    },
    Protocol(String),
    /// A publish found the connection's publish bucket empty.
    PublishRate {
        limit: u64,
    },
    /// A filter would take the connection over its subscriptions.
    TooManySubscriptions {
        limit: usize,
    },
    /// A SUBSCRIBE carried more filters than one may.
    TooManyFilters {
        count: usize,
        limit: usize,
    },
    /// The customer is quarantined (the boot guard tripped): every
    /// connection is refused until the emulator restarts.
    Quarantined,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::PayloadTooLarge { size, limit } => {
                write!(f, "payload of {size} bytes exceeds the {limit}-byte limit")
            }
            Violation::TopicEmpty => write!(f, "empty publish topic"),
            Violation::TopicWildcard => write!(f, "wildcard (+ or #) in publish topic"),
            Violation::TopicNul => write!(f, "NUL character in publish topic"),
            Violation::TopicTooLong { len, limit } => {
                write!(f, "topic of {len} bytes exceeds the {limit}-byte limit")
            }
            Violation::TopicTooDeep { slashes, limit } => {
                write!(f, "topic has {slashes} slashes, more than {limit}")
            }
            Violation::Qos2 => write!(f, "QoS 2 is not supported"),
            Violation::ClientIdPrefix { expected } => {
                write!(f, "client id does not start with {expected:?}")
            }
            Violation::ClientIdTooLong { len, limit } => {
                write!(f, "client id of {len} bytes exceeds the {limit}-byte limit")
            }
            Violation::Protocol(what) => write!(f, "protocol violation: {what}"),
            Violation::PublishRate { limit } => {
                write!(f, "publish rate over {limit}/s: discarded")
            }
            Violation::TooManySubscriptions { limit } => {
                write!(
                    f,
                    "more than {limit} subscriptions on one connection: filter refused"
                )
            }
            Violation::TooManyFilters { count, limit } => {
                write!(
                    f,
                    "SUBSCRIBE with {count} filters, more than {limit}: connection closed"
                )
            }
            Violation::Quarantined => write!(
                f,
                "customer quarantined after a registration storm (boot guard): \
                 every connection is refused until an operator acts (restart the emulator)"
            ),
        }
    }
}

/// Checks a topic name a client publishes to (also a will topic).
pub(crate) fn check_topic(topic: &str) -> Result<(), Violation> {
    if topic.is_empty() {
        return Err(Violation::TopicEmpty);
    }
    if topic.contains(['+', '#']) {
        return Err(Violation::TopicWildcard);
    }
    if topic.contains('\0') {
        return Err(Violation::TopicNul);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Violation::TopicTooLong {
            len: topic.len(),
            limit: MAX_TOPIC_LEN,
        });
    }
    let slashes = topic.bytes().filter(|&b| b == b'/').count();
    if slashes > MAX_TOPIC_SLASHES {
        return Err(Violation::TopicTooDeep {
            slashes,
            limit: MAX_TOPIC_SLASHES,
        });
    }
    Ok(())
}

/// Checks a payload's size.
pub(crate) fn check_payload(size: usize) -> Result<(), Violation> {
    if size > MAX_PAYLOAD {
        return Err(Violation::PayloadTooLarge {
            size,
            limit: MAX_PAYLOAD,
        });
    }
    Ok(())
}

/// The prefix every client id of customer `customer_id` must carry.
pub(crate) fn client_id_prefix(customer_id: u32) -> String {
    format!("cust-{customer_id}-")
}

/// Checks a client id at CONNECT.
pub(crate) fn check_client_id(client_id: &str, customer_id: u32) -> Result<(), Violation> {
    if client_id.len() > MAX_CLIENT_ID_LEN {
        return Err(Violation::ClientIdTooLong {
            len: client_id.len(),
            limit: MAX_CLIENT_ID_LEN,
        });
    }
    let expected = client_id_prefix(customer_id);
    if !client_id.starts_with(&expected) {
        return Err(Violation::ClientIdPrefix { expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_limits_are_inclusive() {
        assert_eq!(check_topic(&"a".repeat(256)), Ok(()));
        assert!(matches!(
            check_topic(&"a".repeat(257)),
            Err(Violation::TopicTooLong { len: 257, .. })
        ));
        assert_eq!(check_topic("a/b/c/d/e/f/g/h"), Ok(()));
        assert!(matches!(
            check_topic("a/b/c/d/e/f/g/h/i"),
            Err(Violation::TopicTooDeep { slashes: 8, .. })
        ));
    }

    #[test]
    fn wildcards_nul_and_empty_are_refused() {
        assert_eq!(check_topic("a/+/b"), Err(Violation::TopicWildcard));
        assert_eq!(check_topic("a/#"), Err(Violation::TopicWildcard));
        assert_eq!(check_topic("a\0b"), Err(Violation::TopicNul));
        assert_eq!(check_topic(""), Err(Violation::TopicEmpty));
    }

    #[test]
    fn payload_limit_is_128_kib() {
        assert_eq!(check_payload(131_072), Ok(()));
        assert!(check_payload(131_073).is_err());
    }

    #[test]
    fn client_id_needs_the_customer_prefix() {
        assert_eq!(check_client_id("cust-12-abc", 12), Ok(()));
        assert!(check_client_id("cust-123-abc", 12).is_err());
        assert!(check_client_id("cust-12", 12).is_err());
        assert!(check_client_id(&format!("cust-12-{}", "x".repeat(200)), 12).is_err());
    }
}
