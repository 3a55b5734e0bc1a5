//! wsroute-server: a WebSocket node that delivers direct messages to users by routing them, via
//! a Redis route table and a gRPC mesh, to exactly the nodes that hold the recipients.
//!
//! Where things live, from the wiring down to plain types (no import loop between files;
//! `tests/module_graph.rs` checks):
//! - `node` wires the parts together (and only that), `drain` stops a node;
//! - endpoints: `ws` (client WebSockets: auth, the session loop, its `ledger` of what was
//!   written and acked, frames, flood control), `api` (push API, Router, probes, gRPC health
//!   and reflection, the try-it page), `mesh` (`server`, `client` peers, `wire` the protobuf
//!   form), `upkeep` (lease, sweeps), `stats` (what `Mesh.Stats` answers);
//! - `state`: what the endpoints share;
//! - `delivery` (resolve, deliver, forward, store), `local` (a message handed to this node's
//!   connections), `inbox` (offline users), `fanout` (the broadcast baseline), `presence` (who
//!   here watches whom, told on the route events);
//! - `route` (writing the Redis route table: `table` users' routes, `membership` the node's
//!   record, lease and sweeps; the `cache` in front of it, `events`), `sessions` (the local
//!   session table);
//! - `webhooks` (events to the app's backend: written beside the route and inbox changes that
//!   cause them, delivered from a Redis stream by every node);
//! - plain types: `envelope`, `json_text` (hand-written JSON for the per-message frames), `ids` (the core's, re-exported), `error` (every code a client or
//!   caller sees, and the HTTP and gRPC refusals), `bearer` (secret checks), `metrics`, `config`.
//!
//! Below all of them, in the `wsroute-core` crate (shared with router-cli and the tests): the
//! ids, the Redis key layout, the Redis handle (`db::Redis`, `db::DbError`) and the read side of
//! the route table and inboxes.

pub mod api;
pub mod backlog;
pub mod bearer;
pub mod config;
pub mod confirm;
pub mod delivery;
pub mod drain;
pub mod envelope;
pub mod error;
pub mod fanout;
pub mod handover;
pub mod holds;
pub mod ids;
pub mod inbox;
pub mod json_text;
pub mod keeper;
pub mod local;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod quota;
pub mod route;
pub mod sessions;
pub mod state;
pub mod stats;
pub mod upkeep;
pub mod webhooks;
pub mod ws;
