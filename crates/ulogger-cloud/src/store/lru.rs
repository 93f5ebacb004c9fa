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
}

impl<V> Default for LruMap<V> {
    fn default() -> Self {
        LruMap {
            seq_of: HashMap::new(),
            by_seq: BTreeMap::new(),
            next_seq: 0,
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

    /// The value, after moving the key to the most-recently-used end.
    pub(super) fn touch(&mut self, key: &str) -> Option<&V> {
        let old = *self.seq_of.get(key)?;
        let new = self.bump();
        let entry = self.by_seq.remove(&old)?;
        if let Some(seq) = self.seq_of.get_mut(key) {
            *seq = new;
        }
        Some(&self.by_seq.entry(new).or_insert(entry).1)
    }

    /// Inserts or replaces `key`, which becomes the most recently used.
    pub(super) fn insert(&mut self, key: String, value: V) {
        let seq = self.bump();
        if let Some(old) = self.seq_of.insert(key.clone(), seq) {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, (key, value));
    }

    pub(super) fn remove(&mut self, key: &str) -> Option<V> {
        let seq = self.seq_of.remove(key)?;
        self.by_seq.remove(&seq).map(|(_, value)| value)
    }

    /// Removes and returns the least-recently-used entry.
    pub(super) fn pop_lru(&mut self) -> Option<(String, V)> {
        let (_, (key, value)) = self.by_seq.pop_first()?;
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
        self.seq_of.clear();
        self.by_seq.clear();
    }

    /// Entries from the least- to the most-recently used.
    pub(super) fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &V)> + '_ {
        self.by_seq
            .values()
            .map(|(key, value)| (key.as_str(), value))
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
