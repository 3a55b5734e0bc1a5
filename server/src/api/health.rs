//! The standard gRPC health service (`grpc.health.v1.Health`, `Check` and `Watch`): `SERVING`
//! while this node takes clients (what `/readyz` answers 200 to), `NOT_SERVING` while it starts,
//! drains or is cut off from Redis; for the whole server (`""`) and for `wsroute.v1.Router`.
//! Asked without credentials, like `/readyz`, so that Kubernetes' gRPC probes and `grpcurl` can.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::state::NodeState;

/// The service names a caller may ask about: `""` (the server as a whole) and the public API.
pub const SERVICES: [&str; 2] = ["", "wsroute.v1.Router"];

/// How often the readiness is read again when nothing announced a change: a safety net only,
/// as every cause announces itself (drain, registration in Redis, a lost lease, the route
/// events' subscription: see [`NodeState::readiness_changed`]).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// The health service, with every name [`SERVICES`] lists at `NOT_SERVING` until
/// [`follow_readiness`] says otherwise, and the handle that changes them.
pub async fn service(shutdown: CancellationToken) -> (HealthReporter, HealthServer<NodeHealth>) {
    let reporter = HealthReporter::new();
    for name in SERVICES {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let inner = HealthService::from_health_reporter(reporter.clone());
    (reporter, HealthServer::new(NodeHealth { inner, shutdown }))
}

/// Keeps the statuses equal to [`NodeState::accepting`] until the node stops.
pub async fn follow_readiness(state: Arc<NodeState>, reporter: HealthReporter) {
    let mut told: Option<bool> = None;
    loop {
        let serving = state.accepting();
        if told != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in SERVICES {
                reporter.set_service_status(name, status).await;
            }
            tracing::debug!(%status, "gRPC health");
            told = Some(serving);
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = state.readiness_changed.notified() => {}
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// tonic-health's service, with `Watch` streams that end when the node stops: the gRPC server's
/// graceful shutdown waits for every open stream, and a watch never ends by itself.
pub struct NodeHealth {
    inner: HealthService,
    shutdown: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for NodeHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let stream = self.inner.watch(request).await?.into_inner();
        let until = self.shutdown.clone().cancelled_owned();
        Ok(Response::new(Box::pin(stream.take_until(until))))
    }
}
