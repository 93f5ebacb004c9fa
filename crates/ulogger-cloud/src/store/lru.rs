//! An in-memory map from serial to value that remembers use order.
//!
//! Every key carries a sequence number; a `BTreeMap` keyed by it holds the
//! use order, so lookups, moves to the most-recent end, eviction of the
//! least-recent entry and removal are all `O(log n)`, and iteration runs
//! least- to most-recently used without sorting.

use std::collections::{BTreeMap, HashMap};

/// Ordered map: iteration goes from the least- to the most-recently used key.
#[derive(Debug, Clone)]
pub(super) struct LruMap<V> {
    seq_of: HashMap<String, u64>,
    by_seq: BTreeMap<u64, (String, V)>,
    next_seq: u64,
    /// Bumped by every change of content or order, so that a caller can
    /// tell whether something it derived from the map is still current.
    version: u64,
    /// The version made by inserting a new key (at the most recent end).
    appended_at: Option<u64>,
}

impl<V> Default for LruMap<V> {
    fn default() -> Self {
        LruMap {
            seq_of: HashMap::new(),
            by_seq: BTreeMap::new(),
            next_seq: 0,
            version: 0,
            appended_at: None,
        }
    }
}

impl<V> LruMap<V> {
    pub(super) fn len(&self) -> usize {
        self.seq_of.len()
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.seq_of.contains_key(key)
    }

    /// True when `key` is the most recently used key.
    pub(super) fn is_most_recent(&self, key: &str) -> bool {
        match (self.seq_of.get(key), self.by_seq.last_key_value()) {
            (Some(seq), Some((last, _))) => seq == last,
            _ => false,
        }
    }

    /// The value, without changing the use order.
    pub(super) fn peek(&self, key: &str) -> Option<&V> {
        let seq = self.seq_of.get(key)?;
        self.by_seq.get(seq).map(|(_, value)| value)
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
        self.by_seq
            .last_key_value()
            .map(|(_, (key, value))| (key.as_str(), value))
    }

    /// The value, after moving the key to the most-recently-used end.
    pub(super) fn touch(&mut self, key: &str) -> Option<&V> {
        let old = *self.seq_of.get(key)?;
        if self
            .by_seq
            .last_key_value()
            .is_some_and(|(&last, _)| last == old)
        {
            return self.by_seq.get(&old).map(|(_, value)| value);
        }
        self.changed();
        let new = self.bump();
        let entry = self.by_seq.remove(&old)?;
        if let Some(seq) = self.seq_of.get_mut(key) {
            *seq = new;
        }
        Some(&self.by_seq.entry(new).or_insert(entry).1)
    }

    /// Inserts or replaces `key`, which becomes the most recently used.
    pub(super) fn insert(&mut self, key: String, value: V) {
        self.changed();
        let seq = self.bump();
        match self.seq_of.insert(key.clone(), seq) {
            Some(old) => {
                self.by_seq.remove(&old);
            }
            None => self.appended_at = Some(self.version),
        }
        self.by_seq.insert(seq, (key, value));
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<V> {
        let seq = self.seq_of.remove(key)?;
        self.changed();
        self.by_seq.remove(&seq).map(|(_, value)| value)
    }

    /// Removes and returns the least-recently-used entry.
    pub(super) fn pop_lru(&mut self) -> Option<(String, V)> {
        let (_, (key, value)) = self.by_seq.pop_first()?;
        self.changed();
        self.seq_of.remove(&key);
        Some((key, value))
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
        self.seq_of.clear();
        self.by_seq.clear();
    }

    /// Entries from the least- to the most-recently used.
    pub(super) fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> + '_ {
        self.by_seq
            .values()
            .map(|(key, value)| (key.as_str(), value))
    }

    fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    fn bump(&mut self) -> u64 {
        if self.next_seq == u64::MAX {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Packs the sequence numbers to `0..len` (only reachable after 2^64
    /// moves, but cheap to get right).
    fn renumber(&mut self) {
        let old = std::mem::take(&mut self.by_seq);
        self.seq_of.clear();
        for (seq, (key, value)) in (0u64..).zip(old.into_values()) {
            self.seq_of.insert(key.clone(), seq);
            self.by_seq.insert(seq, (key, value));
        }
        self.next_seq = u64::try_from(self.by_seq.len()).unwrap_or(0);
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

    #[test]
    fn renumbering_keeps_order() {
        let mut map = LruMap::default();
        map.insert("a".into(), ());
        map.insert("b".into(), ());
        map.next_seq = u64::MAX;
        map.touch("a");
        map.insert("c".into(), ());
        assert_eq!(keys(&map), ["b", "a", "c"]);
        assert!(map.next_seq < 10);
    }
}
