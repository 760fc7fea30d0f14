//! The mount's caches of chunks and trees: bounded by bytes, with room for
//! one object over budget.

use std::hash::Hash;

/// A cache of decoded objects bounded by the sum of their costs (bytes).
/// Which objects stay is quick_cache's choice (CLOCK-Pro, a scan-resistant
/// approximation of LRU: Jiang, Chen and Zhang, USENIX ATC 2005). An object
/// heavier than quick_cache admits (about 97% of the budget: a directory of
/// some 200k entries) is still kept, alone, beside it, so that such a
/// directory is not fetched again at every lookup in it: the cache then
/// holds at most the budget plus that one object.
pub(super) struct Lru<K, V> {
    cache: quick_cache::unsync::Cache<K, (V, usize), ByCost>,
    oversized: Option<(K, V)>,
}

/// Weighs a cached object by the cost it was inserted with (at least 1: an
/// object of weight 0 would never be evicted).
#[derive(Clone)]
struct ByCost;

impl<K, V> quick_cache::Weighter<K, (V, usize)> for ByCost {
    fn weight(&self, _: &K, value: &(V, usize)) -> u64 {
        u64::try_from(value.1.max(1)).unwrap_or(u64::MAX)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Lru<K, V> {
    /// A cache of `budget` bytes expected to hold about `items` objects.
    pub(super) fn new(budget: usize, items: usize) -> Self {
        let budget = u64::try_from(budget).unwrap_or(u64::MAX);
        Self {
            cache: quick_cache::unsync::Cache::with_weighter(items.max(1), budget, ByCost),
            oversized: None,
        }
    }

    pub(super) fn get(&mut self, key: &K) -> Option<V> {
        if let Some((value, _)) = self.cache.get(key) {
            return Some(value.clone());
        }
        match &self.oversized {
            Some((k, value)) if k == key => Some(value.clone()),
            _ => None,
        }
    }

    pub(super) fn insert(&mut self, key: K, value: V, cost: usize) {
        if self.oversized.as_ref().is_some_and(|(k, _)| *k == key) {
            self.oversized = None;
        }
        self.cache.insert(key.clone(), (value.clone(), cost));
        if self.cache.peek(&key).is_none() {
            self.oversized = Some((key, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_within_its_budget_and_keeps_one_oversized_object() {
        let mut lru = Lru::new(100, 4);
        for key in 0..20 {
            lru.insert(key, key * 10, 30);
            assert_eq!(lru.get(&key), Some(key * 10), "the newest object is kept");
            assert!(
                lru.cache.weight() <= 100,
                "{} bytes held",
                lru.cache.weight()
            );
        }
        assert!(lru.cache.len() < 20, "older objects were evicted");
        // Replacing an object replaces its cost.
        lru.insert(19, 7, 60);
        assert_eq!(lru.get(&19), Some(7));
        assert!(lru.cache.weight() <= 100);
        // An object over the budget stays, beside the cache, until another
        // takes its place.
        lru.insert(100, 1, 500);
        assert_eq!(lru.get(&100), Some(1));
        assert!(lru.cache.weight() <= 100);
        lru.insert(101, 2, 500);
        assert_eq!(lru.get(&101), Some(2));
        assert_eq!(lru.get(&100), None);
        // Inserted again at a cost that fits, it moves into the cache.
        lru.insert(101, 3, 10);
        assert!(lru.oversized.is_none());
        assert_eq!(lru.get(&101), Some(3));
    }
}
