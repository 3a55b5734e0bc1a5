//! Reaching one node's `Mesh` service (drain, stats, watch): its gRPC address from the route
//! table, TLS as `--grpc-tls-*` says, and the mesh secret on every call.

use std::time::Duration;

use anyhow::Context;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use wsroute_core::ids::NodeId;
use wsroute_core::nodes::NodeReader;
use wsroute_proto::v1 as pb;
use wsroute_proto::v1::mesh_client::MeshClient;

use crate::output::GrpcTlsArgs;

/// Longest a single call may take (a node that accepts the connection but never answers).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The mesh secret: nodes refuse Mesh calls without it.
#[derive(clap::Args, Clone)]
pub struct MeshAuth {
    /// The cluster's mesh secret
    #[arg(long, env = "WSROUTE_MESH_SECRET", hide_env_values = true)]
    pub mesh_secret: Option<String>,
    /// File holding the mesh secret (one trailing newline trimmed), to keep it out of `ps`
    #[arg(long, env = "WSROUTE_MESH_SECRET_FILE")]
    pub mesh_secret_file: Option<std::path::PathBuf>,
}

impl MeshAuth {
    /// The secret from the flag (or env) or its file; both, or an unreadable or empty file, is
    /// an error.
    pub fn secret(&self) -> anyhow::Result<Option<String>> {
        Ok(wsroute_core::secret::secret_or_file(
            "mesh-secret",
            self.mesh_secret.clone(),
            self.mesh_secret_file.as_deref(),
        )?)
    }
}

/// An open channel to one node's Mesh service.
pub struct NodeLink {
    pub node: NodeId,
    /// The address dialled (a node that restarts elsewhere needs a new link).
    pub addr: String,
    client: MeshClient<Channel>,
    bearer: Option<MetadataValue<Ascii>>,
}

impl NodeLink {
    /// Looks the node's gRPC address up in the route table and dials it.
    pub async fn open(
        table: &NodeReader,
        node: &NodeId,
        tls: &GrpcTlsArgs,
        auth: &MeshAuth,
    ) -> anyhow::Result<Self> {
        let addr = table
            .node_grpc_addr(node)
            .await
            .context("reading the route table")?
            .filter(|a| !a.is_empty())
            .with_context(|| format!("node {node} is not registered"))?;
        Self::dial(node, &addr, tls, auth).await
    }

    /// Dials a node at a known address.
    pub async fn dial(
        node: &NodeId,
        addr: &str,
        tls: &GrpcTlsArgs,
        auth: &MeshAuth,
    ) -> anyhow::Result<Self> {
        let bearer = match &auth.secret()? {
            Some(secret) => Some(
                format!("Bearer {secret}")
                    .parse()
                    .context("the mesh secret must be printable ASCII")?,
            ),
            None => None,
        };
        let channel = crate::output::grpc_channel(addr, tls)
            .await
            .with_context(|| format!("cannot reach {node}"))?;
        Ok(Self {
            node: node.clone(),
            addr: addr.to_owned(),
            client: MeshClient::new(channel),
            bearer,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(CALL_TIMEOUT);
        if let Some(b) = &self.bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        req
    }

    /// `Mesh.Drain`: the node starts draining (or already was).
    pub async fn drain(&mut self) -> anyhow::Result<pb::DrainReply> {
        let req = self.request(pb::DrainRequest {
            node_id: self.node.to_string(),
        });
        let reply = self.client.drain(req).await;
        self.answer(reply)
    }

    /// `Mesh.Stats`: the node's own figures.
    pub async fn stats(&mut self) -> anyhow::Result<pb::StatsReply> {
        let req = self.request(pb::StatsRequest {
            node_id: self.node.to_string(),
        });
        let reply = self.client.stats(req).await;
        self.answer(reply)
    }

    fn answer<T>(&self, reply: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
        reply
            .map(tonic::Response::into_inner)
            .map_err(|s| anyhow::anyhow!("{}: {}", self.node, s.message()))
    }
}
