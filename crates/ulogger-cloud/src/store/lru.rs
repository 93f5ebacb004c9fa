//! An in-memory map from serial to value that remembers use order.
//!
//! A `hashlink::LinkedHashMap` (a hash table whose entries are also linked
//! in use order), so lookups, moves to the most-recent end, eviction of the
//! least-recent entry and removal are all `O(1)`, and iteration runs
//! least- to most-recently used. This wrapper adds the version counter the
//! store uses to know whether the bytes it last wrote are still current.
//!
//! It replaced a hand-written `HashMap` + `BTreeMap` by sequence number,
//! which `benches/store.rs` showed 4 to 13 times slower (decision 6).

use std::collections::hash_map::RandomState;

use hashlink::LinkedHashMap;

/// Ordered map: iteration goes from the least- to the most-recently used key.
#[derive(Debug, Clone)]
pub struct LruMap<V> {
    /// std's SipHash rather than hashlink's default (foldhash): serials
    /// come from devices, and the difference is ~15 ns per lookup.
    entries: LinkedHashMap<String, V, RandomState>,
    /// Bumped by every change of content or order, so that a caller can
    /// tell whether something it derived from the map is still current.
    version: u64,
    /// The version made by inserting a new key (at the most recent end).
    appended_at: Option<u64>,
}

impl<V> Default for LruMap<V> {
    fn default() -> Self {
        LruMap {
            entries: LinkedHashMap::default(),
            version: 0,
            appended_at: None,
        }
    }
}

impl<V> LruMap<V> {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// True when `key` is the most recently used key.
    pub(super) fn is_most_recent(&self, key: &str) -> bool {
        self.entries.back().is_some_and(|(last, _)| last == key)
    }

    /// The value, without changing the use order.
    pub(super) fn peek(&self, key: &str) -> Option<&V> {
        self.entries.get(key)
    }

    /// Changes with every change of content or order.
    pub(super) fn version(&self) -> u64 {
        self.version
    }

    /// True when the last change was the insertion of a new key: the map
    /// is the one at `version() - 1` plus [`last`](Self::last).
    pub(super) fn last_change_was_append(&self) -> bool {
        self.appended_at == Some(self.version)
    }

    /// The most recently used entry.
    pub(super) fn last(&self) -> Option<(&str, &V)> {
        self.entries
            .back()
            .map(|(key, value)| (key.as_str(), value))
    }

    /// The value, after moving the key to the most-recently-used end.
    pub fn touch(&mut self, key: &str) -> Option<&V> {
        if !self.is_most_recent(key) {
            self.entries.to_back(key)?;
            self.changed();
        }
        self.entries.back().map(|(_, value)| value)
    }

    /// Inserts or replaces `key`, which becomes the most recently used.
    pub fn insert(&mut self, key: String, value: V) {
        self.changed();
        if self.entries.insert(key, value).is_none() {
            self.appended_at = Some(self.version);
        }
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<V> {
        let value = self.entries.remove(key)?;
        self.changed();
        Some(value)
    }

    /// Removes and returns the least-recently-used entry.
    pub fn pop_lru(&mut self) -> Option<(String, V)> {
        let entry = self.entries.pop_front()?;
        self.changed();
        Some(entry)
    }

    /// Evicts least-recently-used entries until at most `max` remain.
    pub(super) fn trim_to(&mut self, max: usize) {
        while self.len() > max {
            if self.pop_lru().is_none() {
                break;
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.changed();
        self.entries.clear();
    }

    /// Entries from the least- to the most-recently used.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> + '_ {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(map: &LruMap<V>) -> Vec<&str> {
        map.iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn insertion_order_is_use_order() {
        let mut map = LruMap::default();
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        map.insert("c".into(), 3);
        assert_eq!(keys(&map), ["a", "b", "c"]);
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn touch_moves_to_most_recent_and_peek_does_not() {
        let mut map = LruMap::default();
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            map.insert(k.to_string(), i);
        }
        assert_eq!(map.peek("a"), Some(&0));
        assert_eq!(keys(&map), ["a", "b", "c"]);
        assert_eq!(map.touch("a"), Some(&0));
        assert_eq!(keys(&map), ["b", "c", "a"]);
        assert_eq!(map.touch("zz"), None);
    }

    #[test]
    fn insert_replaces_and_moves_to_most_recent() {
        let mut map = LruMap::default();
        map.insert("a".into(), 1);
        map.insert("b".into(), 2);
        map.insert("a".into(), 10);
        assert_eq!(keys(&map), ["b", "a"]);
        assert_eq!(map.peek("a"), Some(&10));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn pop_trim_remove_clear() {
        let mut map = LruMap::default();
        for k in ["a", "b", "c", "d"] {
            map.insert(k.to_string(), ());
        }
        assert_eq!(map.pop_lru().map(|(k, _)| k), Some("a".to_string()));
        map.trim_to(2);
        assert_eq!(keys(&map), ["c", "d"]);
        assert_eq!(map.remove("c"), Some(()));
        assert_eq!(map.remove("c"), None);
        assert!(!map.contains("c"));
        map.clear();
        assert_eq!(map.len(), 0);
        assert!(map.pop_lru().is_none());
    }

    #[test]
    fn version_tracks_changes_and_appends() {
        let mut map = LruMap::default();
        let v0 = map.version();
        map.insert("a".into(), 1);
        assert_ne!(map.version(), v0);
        assert!(map.last_change_was_append());
        assert_eq!(map.last(), Some(("a", &1)));
        map.insert("b".into(), 2);
        assert!(map.last_change_was_append());
        let v = map.version();
        map.touch("b"); // already the most recent: no change
        assert_eq!(map.version(), v);
        assert!(map.last_change_was_append());
        map.touch("a");
        assert_ne!(map.version(), v);
        assert!(!map.last_change_was_append());
        map.insert("b".into(), 3); // a replacement is not an append
        assert!(!map.last_change_was_append());
        for change in [
            |m: &mut LruMap<i32>| {
                m.remove("a");
            },
            |m: &mut LruMap<i32>| {
                m.pop_lru();
            },
            |m: &mut LruMap<i32>| m.clear(),
        ] {
            map.insert("x".into(), 0);
            let v = map.version();
            change(&mut map);
            assert_ne!(map.version(), v);
            assert!(!map.last_change_was_append());
        }
        let v = map.version();
        assert_eq!(map.remove("nothing"), None);
        assert_eq!(map.version(), v);
    }
}
