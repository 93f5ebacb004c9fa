//! The cache file's JSON, as the Python SDK reads and writes it.
//!
//! `{"<serial>": {"token": <u32>, "git_hash": "<str>"}, ...}`, keys from the
//! least- to the most-recently used. We write what Python's
//! `json.dump(data, fh, indent=2)` writes, byte for byte: two-space
//! indentation, `": "` after keys, no trailing newline, and every character
//! outside printable ASCII escaped as `\uXXXX` (so a Python that opens the
//! file with a non-UTF-8 locale encoding still reads it).

use std::fmt;
use std::io;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::ser::{Formatter, PrettyFormatter};

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

/// Writes `map` as the Python SDK would.
pub(super) fn write<W: io::Write>(writer: W, map: &LruMap<Record>) -> io::Result<()> {
    let mut ser = serde_json::Serializer::with_formatter(writer, PythonFormatter::new());
    FileView(map)
        .serialize(&mut ser)
        .map_err(|e| match e.io_error_kind() {
            Some(kind) => io::Error::new(kind, e),
            None => io::Error::other(e),
        })
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

struct FileView<'a>(&'a LruMap<Record>);

impl Serialize for FileView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (serial, record) in self.0.iter() {
            map.serialize_entry(serial, record)?;
        }
        map.end()
    }
}

/// serde_json's pretty printer with Python's `ensure_ascii=True` escaping.
struct PythonFormatter(PrettyFormatter<'static>);

impl PythonFormatter {
    fn new() -> Self {
        PythonFormatter(PrettyFormatter::with_indent(b"  "))
    }
}

impl Formatter for PythonFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already escaped quotes, backslashes and control
        // characters; what is left to escape is DEL and non-ASCII.
        let mut rest = fragment;
        while let Some(pos) = rest.find(|c: char| !(' '..='~').contains(&c)) {
            let (plain, tail) = rest.split_at(pos);
            writer.write_all(plain.as_bytes())?;
            let mut chars = tail.chars();
            if let Some(c) = chars.next() {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
            rest = chars.as_str();
        }
        writer.write_all(rest.as_bytes())
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_array(w)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array(w)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_array_value(w)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object(w)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object(w)
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.0.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.0.end_object_value(w)
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
        write(&mut out, map).unwrap();
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
}
