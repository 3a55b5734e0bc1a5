//! The generated `wsroute.v1` gRPC types, shared by the server, the CLI and the tests.

/// Package `wsroute.v1`: services `Router` (public) and `Mesh` (node to node).
pub mod v1 {
    tonic::include_proto!("wsroute.v1");
}
