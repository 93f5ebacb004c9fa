//! The cache file's JSON, as the Python SDK reads and writes it.
//!
//! `{"<serial>": {"token": <u32>, "git_hash": "<str>"}, ...}`, keys from the
//! least- to the most-recently used. We write what Python's
//! `json.dump(data, fh, indent=2)` writes, byte for byte: two-space
//! indentation, `": "` after keys, no trailing newline, and every character
//! outside printable ASCII escaped as `\uXXXX` (so a Python that opens the
//! file with a non-UTF-8 locale encoding still reads it).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::lru::LruMap;
use super::Record;

/// Parses a whole cache file. The error is the reason it is not a cache
/// file, with a line and column where serde_json knows them.
pub(super) fn parse(bytes: &[u8]) -> Result<LruMap<Record>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".to_string());
    }
    serde_json::from_slice::<CacheFile>(bytes)
        .map(|file| file.0)
        .map_err(|e| e.to_string())
}

/// Appends `map` to `out` as the Python SDK would write it.
///
/// Written by hand rather than through serde: this is the hot part of
/// every full rewrite (a 10,000-entry file is ~730 kB), and serde_json's
/// pretty printer with a Python-escaping formatter, which gives the same
/// bytes, measured 2.4 to 2.8 times slower (`benches/store.rs`,
/// decision 6).
pub(super) fn write(out: &mut Vec<u8>, map: &LruMap<Record>) {
    out.reserve(map.len().saturating_mul(80).saturating_add(2));
    out.push(b'{');
    for (i, (serial, record)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_entry(out, serial, record);
    }
    if map.len() > 0 {
        out.extend_from_slice(CLOSE);
    } else {
        out.push(b'}');
    }
}

/// Turns `out`, which holds [`write`] of a map of two or more entries
/// minus its last one, into [`write`] of the whole map, in time
/// proportional to the last entry. This is the common write (a new device
/// registers) and saves re-serialising every other entry. Returns false,
/// leaving `out` as it was, when `out` does not look like such a file.
pub(super) fn append_last(out: &mut Vec<u8>, map: &LruMap<Record>) -> bool {
    let Some((serial, record)) = map.last() else {
        return false;
    };
    if map.len() < 2 || !out.ends_with(CLOSE) {
        return false;
    }
    out.truncate(out.len() - CLOSE.len());
    out.push(b',');
    write_entry(out, serial, record);
    out.extend_from_slice(CLOSE);
    true
}

/// The end of a non-empty file.
const CLOSE: &[u8] = b"\n}";

fn write_entry(out: &mut Vec<u8>, serial: &str, record: &Record) {
    out.extend_from_slice(b"\n  ");
    write_str(out, serial);
    out.extend_from_slice(b": {\n    \"token\": ");
    write_u32(out, record.token);
    out.extend_from_slice(b",\n    \"git_hash\": ");
    write_str(out, &record.git_hash);
    out.extend_from_slice(b"\n  }");
}

/// A JSON string as Python's `json.dump` (`ensure_ascii=True`) writes it:
/// printable ASCII as is, the usual short escapes, everything else
/// `\uXXXX` in lower-case hex (UTF-16 surrogate pairs beyond the BMP).
fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\';
    if s.bytes().all(plain) {
        out.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                ' '..='~' => out.push(c as u8),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.extend_from_slice(b"\\u");
                        for shift in [12u16, 8, 4, 0] {
                            out.push(HEX[usize::from((*unit >> shift) & 0xf)]);
                        }
                    }
                }
            }
        }
    }
    out.push(b'"');
}

const HEX: [u8; 16] = *b"0123456789abcdef";

fn write_u32(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

struct CacheFile(LruMap<Record>);

impl<'de> Deserialize<'de> for CacheFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(CacheFileVisitor)
    }
}

struct CacheFileVisitor;

impl<'de> Visitor<'de> for CacheFileVisitor {
    type Value = CacheFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object from device serial to {\"token\": ..., \"git_hash\": ...}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = LruMap::default();
        while let Some(serial) = access.next_key::<String>()? {
            let raw: RawEntry = access.next_value()?;
            let record = raw.check(&serial).map_err(de::Error::custom)?;
            map.insert(serial, record);
        }
        Ok(CacheFile(map))
    }
}

/// An entry as found in the file; unknown fields are ignored so that a
/// newer SDK may add some.
#[derive(Deserialize)]
#[serde(expecting = "an object with \"token\" and \"git_hash\"")]
struct RawEntry {
    token: Option<serde_json::Number>,
    git_hash: Option<String>,
}

impl RawEntry {
    fn check(self, serial: &str) -> Result<Record, String> {
        let token = self
            .token
            .ok_or_else(|| format!("entry {serial:?} has no \"token\""))?;
        let token = token
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .ok_or_else(|| {
                format!("entry {serial:?}: token {token} is not an unsigned 32-bit integer")
            })?;
        let git_hash = self
            .git_hash
            .ok_or_else(|| format!("entry {serial:?} has no \"git_hash\" string"))?;
        Ok(Record { token, git_hash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: u32, git_hash: &str) -> Record {
        Record {
            token,
            git_hash: git_hash.to_string(),
        }
    }

    fn to_string(map: &LruMap<Record>) -> String {
        let mut out = Vec::new();
        write(&mut out, map);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_python_json_dump_indent_2_writes() {
        let mut map = LruMap::default();
        map.insert("B-2".into(), record(4_294_967_295, "abc"));
        map.insert("A-1".into(), record(0, "def"));
        // json.dump(OrderedDict(...), fh, indent=2)
        let python = "{\n  \"B-2\": {\n    \"token\": 4294967295,\n    \"git_hash\": \"abc\"\n  },\n  \"A-1\": {\n    \"token\": 0,\n    \"git_hash\": \"def\"\n  }\n}";
        assert_eq!(to_string(&map), python);
        assert_eq!(to_string(&LruMap::default()), "{}");
    }

    #[test]
    fn escapes_like_python_ensure_ascii() {
        let mut map = LruMap::default();
        map.insert("é\u{7f}😀\"\\\n\u{1}x".into(), record(1, "g"));
        let text = to_string(&map);
        // json.dumps("é\x7f😀\"\\\n\x01x")
        assert!(
            text.contains(r#""\u00e9\u007f\ud83d\ude00\"\\\n\u0001x""#),
            "{text}"
        );
        let back = parse(text.as_bytes()).unwrap();
        assert!(back.contains("é\u{7f}😀\"\\\n\u{1}x"));
    }

    #[test]
    fn parses_in_file_order_and_tolerates_unknown_fields() {
        let text = r#"{"z": {"token": 7, "git_hash": "a", "extra": [1, {"x": null}]},
                       "a": {"git_hash": "b", "token": 8}}"#;
        let map = parse(text.as_bytes()).unwrap();
        let entries: Vec<_> = map
            .iter()
            .map(|(k, r)| (k.to_string(), r.token, r.git_hash.clone()))
            .collect();
        assert_eq!(
            entries,
            [("z".into(), 7, "a".into()), ("a".into(), 8, "b".into())]
        );
    }

    #[test]
    fn rejects_what_is_not_a_cache_file() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("  \n", "empty"),
            ("not json", "expected"),
            ("[]", "a JSON object from device serial"),
            ("{\"a\": 5}", "an object with \"token\""),
            (
                "{\"a\": {\"token\": -1, \"git_hash\": \"x\"}}",
                "token -1 is not",
            ),
            (
                "{\"a\": {\"token\": 4294967296, \"git_hash\": \"x\"}}",
                "token 4294967296",
            ),
            (
                "{\"a\": {\"token\": 1.5, \"git_hash\": \"x\"}}",
                "token 1.5",
            ),
            (
                "{\"a\": {\"token\": \"1\", \"git_hash\": \"x\"}}",
                "invalid type",
            ),
            ("{\"a\": {\"git_hash\": \"x\"}}", "has no \"token\""),
            ("{\"a\": {\"token\": 1}}", "has no \"git_hash\""),
            (
                "{\"a\": {\"token\": 1, \"git_hash\": null}}",
                "has no \"git_hash\"",
            ),
            ("{\"a\": {\"token\": 1, \"git_hash\": \"x\"", "EOF"),
            ("{} {}", "trailing"),
        ];
        for (text, needle) in cases {
            let err = match parse(text.as_bytes()) {
                Ok(_) => panic!("{text:?} parsed"),
                Err(err) => err,
            };
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn what_we_write_parses_back_identically(
            entries in proptest::collection::vec(
                (proptest::prelude::any::<String>(), proptest::prelude::any::<u32>(), proptest::prelude::any::<String>()),
                0..20,
            )
        ) {
            let mut map = LruMap::default();
            for (serial, token, git_hash) in entries {
                map.insert(serial, record(token, &git_hash));
            }
            let text = to_string(&map);
            proptest::prop_assert!(text.is_ascii());
            let back = parse(text.as_bytes()).unwrap();
            let flat = |m: &LruMap<Record>| -> Vec<(String, u32, String)> {
                m.iter().map(|(k, r)| (k.to_string(), r.token, r.git_hash.clone())).collect()
            };
            proptest::prop_assert_eq!(flat(&back), flat(&map));
        }
    }
}
