//! The local route cache: user -> their connections, so that a steady-state send resolves the
//! recipient without Redis. Kept correct by invalidation events and by the repair path (a
//! forward that finds a connection gone drops the entry).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::Route;
use crate::ids::{NodeId, UserId};
use crate::metrics::Metrics;

/// Invalidation stripes (a power of two is not needed; 256 keeps false sharing of a stripe rare).
const EPOCH_STRIPES: usize = 256;

/// Cached routes. Only users with at least one connection are cached: "offline" is never cached,
/// so a user who comes online is found at once.
pub struct RouteCache {
    map: DashMap<UserId, Arc<[Route]>, foldhash::quality::RandomState>,
    /// Invalidation counters, striped by user: a lookup that started before an invalidation of
    /// its user must not store what it read, since the read may predate the change (see
    /// [`RouteCache::epoch`]). Striped, so that other users' connects and disconnects (constant
    /// in a large cluster) do not keep every lookup from being cached.
    epochs: Box<[AtomicU64]>,
    /// Nodes found dead (a forward failed and their lease is gone): their routes are ignored
    /// until the sweep removes them or the node registers again (`NodeUp`).
    dead: DashMap<NodeId, (), foldhash::quality::RandomState>,
    metrics: Metrics,
}

impl RouteCache {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            map: DashMap::default(),
            epochs: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            dead: DashMap::default(),
            metrics,
        }
    }

    pub fn get(&self, user: &UserId) -> Option<Arc<[Route]>> {
        let hit = self.map.get(user).map(|r| Arc::clone(r.value()));
        if hit.is_some() {
            self.metrics.cache_hits.inc();
        } else {
            self.metrics.cache_misses.inc();
        }
        hit
    }

    fn stripe(&self, user: &UserId) -> &AtomicU64 {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(user, &mut h);
        &self.epochs[(std::hash::Hasher::finish(&h) as usize) % EPOCH_STRIPES]
    }

    fn bump_all(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Read before a Redis lookup of `user` and hand back to [`RouteCache::insert`].
    pub fn epoch(&self, user: &UserId) -> u64 {
        self.stripe(user).load(Ordering::Acquire)
    }

    /// Caches routes read from Redis, unless an invalidation arrived since `epoch` was read.
    pub fn insert(&self, user: UserId, routes: Arc<[Route]>, epoch: u64) {
        if routes.is_empty() {
            return;
        }
        self.map.insert(user.clone(), routes);
        // Checked after inserting: an invalidation racing with the insert either bumped the
        // epoch (we remove ours) or ran after the insert (it removed ours).
        if self.stripe(&user).load(Ordering::Acquire) != epoch {
            self.map.remove(&user);
        }
    }

    pub fn invalidate(&self, user: &UserId) {
        self.stripe(user).fetch_add(1, Ordering::AcqRel);
        self.map.remove(user);
    }

    /// Drops every route that points at `node` (it died or is draining).
    pub fn forget_node(&self, node: &NodeId) {
        self.bump_all();
        self.map
            .retain(|_, routes| routes.iter().all(|r| &r.node != node));
    }

    /// Stops routing to a node whose lease is gone.
    pub fn mark_dead(&self, node: &NodeId) {
        if self.dead.insert(node.clone(), ()).is_none() {
            tracing::warn!(dead_node = %node, "routes to a dead node are ignored until it returns");
        }
        self.forget_node(node);
    }

    pub fn node_up(&self, node: &NodeId) {
        self.dead.remove(node);
    }

    /// Drops routes to dead nodes from a Redis answer.
    pub fn live_only(&self, routes: Vec<Route>) -> Vec<Route> {
        if self.dead.is_empty() {
            return routes;
        }
        routes
            .into_iter()
            .filter(|r| !self.dead.contains_key(&r.node))
            .collect()
    }

    pub fn clear(&self) {
        self.bump_all();
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnId;

    fn routes(node: &str) -> Arc<[Route]> {
        Arc::from(vec![Route {
            conn: ConnId::parse("c1").expect("valid"),
            node: NodeId::parse(node).expect("valid"),
            device: None,
            connected_at_ms: 0,
        }])
    }

    #[test]
    fn a_lookup_older_than_an_invalidation_is_not_cached() {
        let cache = RouteCache::new(Metrics::new());
        let bob = UserId::parse("bob").expect("valid");
        let epoch = cache.epoch(&bob);
        cache.invalidate(&bob);
        cache.insert(bob.clone(), routes("n1"), epoch);
        assert!(cache.get(&bob).is_none());
        // Another user's invalidation does not stop bob's lookup from being cached (unless
        // they share a stripe, which these two names do not).
        let epoch = cache.epoch(&bob);
        cache.invalidate(&UserId::parse("carol").expect("valid"));
        cache.insert(bob.clone(), routes("n1"), epoch);
        assert!(cache.get(&bob).is_some());
        cache.invalidate(&bob);
        cache.insert(bob.clone(), routes("n1"), cache.epoch(&bob));
        assert!(cache.get(&bob).is_some());
        cache.forget_node(&NodeId::parse("n1").expect("valid"));
        assert!(cache.get(&bob).is_none());
        let n1 = NodeId::parse("n1").expect("valid");
        cache.mark_dead(&n1);
        assert!(cache.live_only(routes("n1").to_vec()).is_empty());
        cache.node_up(&n1);
        assert_eq!(cache.live_only(routes("n1").to_vec()).len(), 1);
    }

    #[test]
    fn offline_is_never_cached() {
        let cache = RouteCache::new(Metrics::new());
        let bob = UserId::parse("bob").expect("valid");
        cache.insert(bob.clone(), Arc::from(Vec::new()), cache.epoch(&bob));
        assert!(cache.is_empty());
    }
}
