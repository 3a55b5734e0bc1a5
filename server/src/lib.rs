//! wsroute-server: a WebSocket node that delivers direct messages to users by routing them, via
//! a Redis route table and a gRPC mesh, to exactly the nodes that hold the recipients.
//!
//! Where things live: `ws/` (client endpoint and sessions), `sessions` (local connections),
//! `route/` (Redis table, cache, events), `delivery` (resolve, deliver, forward, store),
//! `mesh/` (node to node), `inbox` (offline users), `api/` (push API, Router, probes),
//! `state` (what the parts share), `node` (wiring only), `upkeep` (lease, sweeps),
//! `drain`, `stats` (what `Mesh.Stats` answers).

pub mod api;
pub mod bearer;
pub mod config;
pub mod delivery;
pub mod drain;
pub mod envelope;
pub mod error;
pub mod fanout;
pub mod ids;
pub mod inbox;
pub mod local;
pub mod mesh;
pub mod metrics;
pub mod node;
pub mod route;
pub mod sessions;
pub mod state;
pub mod stats;
pub mod upkeep;
pub mod ws;
