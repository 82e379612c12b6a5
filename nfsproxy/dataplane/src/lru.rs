//! A bounded map that remembers use order (Python's OrderedDict as an LRU).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    order: BTreeMap<u64, K>,
    next: u64,
}

impl<K: Hash + Eq + Clone, V> Default for Lru<K, V> {
    fn default() -> Self {
        Lru { map: HashMap::new(), order: BTreeMap::new(), next: 0 }
    }
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Set `k` to `v`, newest in order.
    pub fn put_newest(&mut self, k: K, v: V) {
        self.remove(&k);
        self.order.insert(self.next, k.clone());
        self.map.insert(k, (v, self.next));
        self.next += 1;
    }

    /// Set `k` to `v`, keeping its place when present (newest when not).
    pub fn put(&mut self, k: K, v: V) {
        match self.map.get_mut(&k) {
            Some(slot) => slot.0 = v,
            None => self.put_newest(k, v),
        }
    }

    pub fn touch(&mut self, k: &K) {
        if let Some(v) = self.remove(k) {
            self.put_newest(k.clone(), v);
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let (v, at) = self.map.remove(k)?;
        self.order.remove(&at);
        Some(v)
    }

    pub fn pop_oldest(&mut self) -> Option<(K, V)> {
        let (_, k) = self.order.pop_first()?;
        let (v, _) = self.map.remove(&k)?;
        Some((k, v))
    }
}
