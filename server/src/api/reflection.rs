//! gRPC server reflection (`grpc.reflection.v1.ServerReflection` and its `v1alpha` twin, which
//! many tools still ask for): lists this listener's services and hands out their `.proto`
//! descriptors, without credentials, so that `grpcurl` and other generic clients need no files.

use tonic_reflection::server::{Builder, Error, v1, v1alpha};

/// Every descriptor set the reflection services describe: wsroute's own, the health service's,
/// and both reflection versions', so that either version lists all of them.
fn described() -> Builder<'static> {
    Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(wsroute_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// Both reflection services. Fails only if a built-in descriptor set does not decode (a bug).
#[allow(clippy::type_complexity)]
pub fn services() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    Ok((described().build_v1()?, described().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_descriptor_set_decodes() {
        assert!(super::services().is_ok());
    }
}
