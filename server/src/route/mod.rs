//! Where users are: the route table in Redis (the truth, tied to node leases) and the local cache
//! in front of it (so that steady-state sends touch Redis zero times). The key layout, the Redis
//! handle and the table's read side are in `wsroute_core`; this module writes.
//!
//! - `membership`: this node's record and lease, removing nodes, sweeping dead ones;
//! - `table`: users' routes (register, unregister, reconcile) and the events that announce them;
//! - `events`: the pub/sub listener that keeps the cache fresh;
//! - `cache`: the local route cache.

pub mod cache;
pub mod events;
pub mod membership;
pub mod table;

/// A user's route, defined with its encoding in `wsroute_core::routes`; named here too, where
/// the server's callers (and the fuzz targets) find it.
pub use wsroute_core::routes::Route;
