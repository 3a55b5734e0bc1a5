//! wsroute-core: what the parts of wsroute share about Redis, with no web, gRPC or metrics
//! framework, so that router-cli and the tests read what the nodes write without building a node.
//!
//! From the bottom up (no import loop between files; the server's `tests/module_graph.rs` checks
//! this crate too):
//! - `ids`: the id newtypes, their rules, and the generator of cluster-unique ids;
//! - `keys`: every Redis key and channel name, and the fields of a node's record;
//! - `observe`: the hook a node counts and times Redis operations through;
//! - `db`: the way to Redis (the [`db::Redis`] handle on deadpool-redis pools, its connections,
//!   staged multi-slot writes, pub/sub subscriptions) and [`db::DbError`], the error of every
//!   Redis call;
//! - the read side of what the nodes keep in Redis: `routes` (a user's routes, a node's index),
//!   `nodes` (the node list, a node's record and mesh endpoint), `inbox` (what waits for a user);
//! - `webhooks`: the fields of webhook stream entries, and dead events (listed, retried);
//! - `secret`: secrets read from files, shared by the node and router-cli (no Redis in it).

pub mod clock;
pub mod db;
pub mod ids;
pub mod inbox;
pub mod keys;
pub mod nodes;
pub mod observe;
pub mod routes;
pub mod secret;
pub mod webhooks;
