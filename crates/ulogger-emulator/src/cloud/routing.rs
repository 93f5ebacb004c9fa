//! The platform's topic rules (PROTOCOL §2): which published topics reach
//! the cloud at all. AWS IoT acknowledges every publish its policy allows;
//! then one rule per family, a filter with a fixed number of levels, picks
//! what is stored. Whatever matches no rule is dropped there, so the
//! emulator records it as unrouted, with the likely cause.
//!
//! Written independently of `ulogger_wire::Topics` on purpose: the
//! client's topic builder is tested against this oracle.

/// A family of device-to-cloud messages, each routed by its own rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Boot,
    BinaryLog,
    CoreDump,
    Metrics,
    Events,
    TextLogs,
}

impl Family {
    /// Every family, with its first topic level.
    pub(crate) const ALL: [(Family, &'static str); 6] = [
        (Family::Boot, "boot"),
        (Family::BinaryLog, "binlog"),
        (Family::CoreDump, "core-dump"),
        (Family::Metrics, "metrics"),
        (Family::Events, "events"),
        (Family::TextLogs, "logs"),
    ];

    fn name(self) -> &'static str {
        Family::ALL
            .iter()
            .find(|(family, _)| *family == self)
            .map_or("", |(_, name)| name)
    }

    /// The levels after `v0` the platform's rule filter has, as written
    /// in the likely-cause messages.
    fn rule_levels(self) -> &'static str {
        match self {
            Family::CoreDump => "{customer}/{group}",
            _ => "{customer}/{group}/{app}",
        }
    }

    /// How many levels after `v0` the rule matches.
    fn level_count(self) -> usize {
        match self {
            Family::CoreDump => 2,
            _ => 3,
        }
    }
}

/// A topic a rule matched: its family and the ids in its levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) family: Family,
    /// The group level; `None` only for the original layout, accepted
    /// when the emulator is told to.
    pub(crate) group: Option<u32>,
    /// The application level (`None` for a core dump, which has none).
    pub(crate) app: Option<u32>,
}

/// Where a published topic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routing {
    /// A rule matched.
    Routed(Route),
    /// Cloud-to-device traffic (a boot reply): no rule, nothing to store.
    ToDevice,
    /// No rule matches: the platform drops it. The reason says why and
    /// what the platform routes instead.
    Unrouted(String),
}

/// How the platform routes `topic`, published under `prefix` for the
/// emulator's `customer`. With `legacy`, the original layout without the
/// group level is routed too (old brokers and bridges).
pub(crate) fn route(prefix: &str, customer: u32, topic: &str, legacy: bool) -> Routing {
    let Some(rest) = topic.strip_prefix(prefix) else {
        return Routing::Unrouted(format!("{topic}: not under the topic prefix {prefix:?}"));
    };
    let mut levels = rest.split('/');
    let first = levels.next().unwrap_or_default();
    let Some(family) = Family::ALL
        .iter()
        .find(|(_, name)| *name == first)
        .map(|(family, _)| *family)
    else {
        return Routing::Unrouted(format!("{topic}: no rule routes {first:?} topics"));
    };
    let expected = || {
        format!(
            "the platform routes {prefix}{}/v0/{}",
            family.name(),
            family.rule_levels()
        )
    };
    if levels.next() != Some("v0") {
        return Routing::Unrouted(format!("{topic}: not version v0; {}", expected()));
    }
    let ids: Vec<&str> = levels.collect();
    let count = family.level_count();
    if family == Family::Boot {
        // {customer}/{group}/{app}/{serial}: a boot reply, which the cloud
        // itself sends to the device; with the original layout,
        // {customer}/{app}/{serial} (a serial that is not a number).
        let legacy_reply =
            legacy && ids.len() == count && ids.get(2).is_some_and(|s| number(s).is_none());
        if ids.len() == count + 1 || legacy_reply {
            return Routing::ToDevice;
        }
    }
    if ids.len() > count || ids.len() + 1 < count {
        let levels = if ids.len() == 1 { "level" } else { "levels" };
        return Routing::Unrouted(format!(
            "{topic}: {} {levels} after v0, the rule has {count}; {}",
            ids.len(),
            expected()
        ));
    }
    let mut numbers = Vec::with_capacity(ids.len());
    for level in &ids {
        match number(level) {
            Some(n) => numbers.push(n),
            None => {
                return Routing::Unrouted(format!(
                    "{topic}: level {level:?} is not a decimal id; {}",
                    expected()
                ))
            }
        }
    }
    if numbers.first().is_some_and(|&c| c != customer) {
        return Routing::Unrouted(format!(
            "{topic}: customer id {} is not this cloud's customer {customer}",
            numbers[0]
        ));
    }
    if numbers.len() == count {
        return Routing::Routed(Route {
            family,
            group: Some(numbers[1]),
            app: numbers.get(2).copied(),
        });
    }
    if legacy {
        return Routing::Routed(Route {
            family,
            group: None,
            app: numbers.get(1).copied(),
        });
    }
    Routing::Unrouted(format!(
        "{topic}: no group level; {} (group 0 for none)",
        expected()
    ))
}

/// A decimal id as the platform's topics carry it: digits only, at most
/// a u32.
fn number(level: &str) -> Option<u32> {
    if level.is_empty() || !level.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    level.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(family: Family, group: Option<u32>, app: Option<u32>) -> Routing {
        Routing::Routed(Route { family, group, app })
    }

    #[test]
    fn the_group_layout_is_routed() {
        let cases = [
            (
                "binlog/v0/1/0/7",
                routed(Family::BinaryLog, Some(0), Some(7)),
            ),
            ("boot/v0/1/5/7", routed(Family::Boot, Some(5), Some(7))),
            (
                "metrics/v0/1/0/7",
                routed(Family::Metrics, Some(0), Some(7)),
            ),
            ("events/v0/1/0/7", routed(Family::Events, Some(0), Some(7))),
            ("logs/v0/1/0/7", routed(Family::TextLogs, Some(0), Some(7))),
            ("core-dump/v0/1/0", routed(Family::CoreDump, Some(0), None)),
        ];
        for (topic, expected) in cases {
            assert_eq!(route("", 1, topic, false), expected, "{topic}");
            assert_eq!(route("", 1, topic, true), expected, "{topic}");
            let prefixed = format!("ulogger/{topic}");
            assert_eq!(route("ulogger/", 1, &prefixed, false), expected);
        }
    }

    #[test]
    fn the_original_layout_is_unrouted_with_its_cause_unless_accepted() {
        let Routing::Unrouted(reason) = route("", 1, "binlog/v0/1/7", false) else {
            panic!("routed");
        };
        assert_eq!(
            reason,
            "binlog/v0/1/7: no group level; the platform routes \
             binlog/v0/{customer}/{group}/{app} (group 0 for none)"
        );
        let Routing::Unrouted(reason) = route("", 1, "core-dump/v0/1", false) else {
            panic!("routed");
        };
        assert!(
            reason.contains("core-dump/v0/{customer}/{group}"),
            "{reason}"
        );
        assert_eq!(
            route("", 1, "binlog/v0/1/7", true),
            routed(Family::BinaryLog, None, Some(7))
        );
        assert_eq!(
            route("", 1, "core-dump/v0/1", true),
            routed(Family::CoreDump, None, None)
        );
    }

    #[test]
    fn replies_go_to_devices_and_other_shapes_are_unrouted() {
        assert_eq!(route("", 1, "boot/v0/1/0/7/SN-1", false), Routing::ToDevice);
        assert_eq!(route("", 1, "boot/v0/1/0/7/1001", false), Routing::ToDevice);
        assert_eq!(route("", 1, "boot/v0/1/7/SN-1", true), Routing::ToDevice);
        for (topic, cause) in [
            ("binlog/v0/1/0/7/8", "4 levels after v0, the rule has 3"),
            ("binlog/v1/1/0/7", "not version v0"),
            ("binlog/v0/1/x/7", "level \"x\" is not a decimal id"),
            (
                "binlog/v0/2/0/7",
                "customer id 2 is not this cloud's customer 1",
            ),
            ("binlog/v0/1/0/99999999999", "is not a decimal id"),
            ("boot/v0/1/7/SN-1", "level \"SN-1\" is not a decimal id"),
            ("p/binlog/v0/1/0/7", "no rule routes \"p\" topics"),
        ] {
            let Routing::Unrouted(reason) = route("", 1, topic, false) else {
                panic!("{topic} routed");
            };
            assert!(reason.starts_with(topic), "{reason}");
            assert!(reason.contains(cause), "{topic}: {reason}");
        }
        assert!(matches!(
            route("ulogger/", 1, "binlog/v0/1/0/7", false),
            Routing::Unrouted(_)
        ));
    }
}
