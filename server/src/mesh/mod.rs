//! The gRPC mesh between nodes: `client` keeps one long-lived channel and one batching queue per
//! peer; `server` receives forwarded batches and writes them to local connections; `wire` turns
//! messages into their protobuf form and back.

pub mod client;
pub mod server;
pub mod tls;
pub mod wire;
