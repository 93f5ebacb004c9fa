//! Samples as the command line spells them: `NAME=VALUE[@TIMESTAMP]` for
//! a metric, `TYPE[@TIMESTAMP]` for an event, timestamps in whole seconds
//! since the Unix epoch.

use ulogger_cloud::wire::{Event, Metric, MetricValue};

/// What a metric argument looks like, for messages.
pub const METRIC_SYNTAX: &str = "NAME=VALUE[@TIMESTAMP]";
/// What an event argument looks like, for messages.
pub const EVENT_SYNTAX: &str = "TYPE[@TIMESTAMP]";

/// A metric argument: the name is everything before the last `=`; after
/// it comes a finite number, then optionally `@` and a timestamp. A
/// sample without a timestamp of its own gets `default_timestamp`.
pub fn parse_metric(arg: &str, default_timestamp: Option<u64>) -> Result<Metric, String> {
    let bad = |why: String| format!("metric {arg:?}: {why} (expected {METRIC_SYNTAX})");
    let (name, rest) = arg
        .rsplit_once('=')
        .ok_or_else(|| bad("there is no `=` between name and value".to_owned()))?;
    if name.is_empty() {
        return Err(bad("the name is empty".to_owned()));
    }
    let (value, timestamp) = match rest.split_once('@') {
        Some((value, timestamp)) => (value, Some(parse_timestamp(timestamp).map_err(bad)?)),
        None => (rest, default_timestamp),
    };
    // `3` stays the integer 3 on the wire; `3.0` and `1e3` are floats.
    let value: MetricValue = match value.trim().parse::<i64>() {
        Ok(n) => MetricValue::Int(n),
        Err(_) => value
            .trim()
            .parse::<f64>()
            .map(MetricValue::Float)
            .map_err(|_| bad(format!("the value {value:?} is not a number")))?,
    };
    if !value.is_finite() {
        // The syntax was right: saying it again would not help.
        return Err(format!(
            "metric {arg:?}: the value {value} is not a finite number (JSON cannot carry it)"
        ));
    }
    let metric = Metric::new(name, value);
    Ok(match timestamp {
        Some(t) => metric.at(t),
        None => metric,
    })
}

/// An event argument: the type is everything before the last `@`, if
/// any, and a timestamp follows the `@`.
pub fn parse_event(arg: &str, default_timestamp: Option<u64>) -> Result<Event, String> {
    let bad = |why: String| format!("event {arg:?}: {why} (expected {EVENT_SYNTAX})");
    let (kind, timestamp) = match arg.rsplit_once('@') {
        Some((kind, timestamp)) => (kind, Some(parse_timestamp(timestamp).map_err(bad)?)),
        None => (arg, default_timestamp),
    };
    if kind.is_empty() {
        return Err(bad("the type is empty".to_owned()));
    }
    let event = Event::new(kind);
    Ok(match timestamp {
        Some(t) => event.at(t),
        None => event,
    })
}

fn parse_timestamp(text: &str) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the timestamp {text:?} after `@` is not whole seconds since the Unix epoch"
        ));
    }
    text.parse()
        .map_err(|_| format!("the timestamp {text} is over {}", u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_take_a_name_a_finite_value_and_an_optional_timestamp() {
        let m = parse_metric("temp=21.5", None).unwrap();
        assert_eq!(
            (m.name.as_str(), m.value, m.timestamp),
            ("temp", MetricValue::Float(21.5), None)
        );
        let m = parse_metric("rssi=-60@1700000000", Some(5)).unwrap();
        assert_eq!(
            (m.value, m.timestamp),
            (MetricValue::Int(-60), Some(1_700_000_000))
        );
        let m = parse_metric("a=b=1e3", Some(5)).unwrap();
        assert_eq!(
            (m.name.as_str(), m.value, m.timestamp),
            ("a=b", MetricValue::Float(1000.0), Some(5))
        );
        assert_eq!(
            parse_metric("n=3.0", None).unwrap().value,
            MetricValue::Float(3.0)
        );
        let m = parse_metric("t=0@18446744073709551615", None).unwrap();
        assert_eq!(m.timestamp, Some(u64::MAX));
        let m = parse_metric("温度 \"x\"=1.7976931348623157e308", None).unwrap();
        assert_eq!(m.value, MetricValue::Float(f64::MAX));
    }

    #[test]
    fn bad_metrics_are_named_with_the_reason() {
        for (arg, why) in [
            ("temp", "no `=`"),
            ("=1", "name is empty"),
            ("t=", "\"\" is not a number"),
            ("t=abc", "\"abc\" is not a number"),
            ("t=NaN", "not a finite number"),
            ("t=inf", "not a finite number"),
            ("t=1e999", "not a finite number"),
            ("t=1@", "timestamp \"\""),
            ("t=1@-5", "timestamp \"-5\""),
            ("t=1@1.5", "timestamp \"1.5\""),
            ("t=1@18446744073709551616", "is over"),
        ] {
            let e = parse_metric(arg, None).unwrap_err();
            assert!(e.contains(why) && e.contains(arg), "{arg}: {e}");
        }
    }

    #[test]
    fn events_take_a_type_and_an_optional_timestamp() {
        let e = parse_event("boot", Some(3)).unwrap();
        assert_eq!((e.kind.as_str(), e.timestamp), ("boot", Some(3)));
        let e = parse_event("reset@1700000000", None).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.timestamp),
            ("reset", Some(1_700_000_000))
        );
        let e = parse_event("user@host@7", None).unwrap();
        assert_eq!((e.kind.as_str(), e.timestamp), ("user@host", Some(7)));
        for (arg, why) in [
            ("", "type is empty"),
            ("@5", "type is empty"),
            ("a@b", "\"b\""),
        ] {
            let e = parse_event(arg, None).unwrap_err();
            assert!(e.contains(why), "{arg}: {e}");
        }
    }
}
