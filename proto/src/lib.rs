//! The generated `wsroute.v1` gRPC types, shared by the server, the CLI and the tests.

/// Package `wsroute.v1`: services `Router` (public) and `Mesh` (node to node).
pub mod v1 {
    tonic::include_proto!("wsroute.v1");

    /// `wsroute.proto` compiled into an encoded `google.protobuf.FileDescriptorSet` (with its
    /// comments), for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/wsroute_descriptor.bin"));
}
