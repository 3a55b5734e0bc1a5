//! TLS for the gRPC listener (mesh + Router) and for dialling peers, from PEM files.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::GrpcTls;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct TlsFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        path: path.to_owned(),
        source,
    })
}

/// Both sides' configurations, read once at start.
#[derive(Clone)]
pub struct MeshTls {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

impl MeshTls {
    pub fn load(cfg: &GrpcTls) -> Result<Self, TlsFileError> {
        let identity = Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?);
        let mut server = ServerTlsConfig::new().identity(identity.clone());
        // The node's own certificate is its client identity when it dials peers.
        let mut client = ClientTlsConfig::new().identity(identity);
        if let Some(ca) = &cfg.ca {
            let ca = Certificate::from_pem(read(ca)?);
            // Client certificates are optional on the listener (Router callers may have none);
            // the Mesh service itself demands one when --mesh-mtls is set.
            server = server.client_ca_root(ca.clone()).client_auth_optional(true);
            client = client.ca_certificate(ca);
        }
        Ok(Self { server, client })
    }
}
