//! Every metric the node exports, named in one place, and their Prometheus text rendering.

use std::ops::Deref;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Shared handle to the node's metrics (cheap to clone).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

pub struct Inner {
    registry: Registry,
    /// Live client connections on this node.
    pub connections: IntGauge,
    /// Messages by outcome as the sender saw it: delivered_local, delivered_remote, stored, rejected.
    pub messages: IntCounterVec,
    /// Rejected messages by protocol error code.
    pub rejected: IntCounterVec,
    /// Client frames refused, by error code.
    pub frames_refused: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    /// Redis operations issued by this node, by operation (a pipeline counts once).
    pub redis_ops: IntCounterVec,
    /// Messages per mesh batch sent to a peer.
    pub mesh_batch_size: Histogram,
    /// Mesh calls that failed (peer unreachable, timed out, refused).
    pub mesh_errors: IntCounter,
    /// Connections closed because they did not read fast enough.
    pub slow_consumers: IntCounter,
    /// Written messages no longer tracked for redelivery because a client did not ack them.
    pub unacked_dropped: IntCounter,
}

impl Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections = IntGauge::new(
            "wsroute_connections",
            "Live client WebSocket connections on this node",
        )
        .expect("valid metric");
        let messages = IntCounterVec::new(
            Opts::new(
                "wsroute_messages_total",
                "Messages sent through this node, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "wsroute_messages_rejected_total",
                "Messages rejected by this node, by error code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let frames_refused = IntCounterVec::new(
            Opts::new(
                "wsroute_client_frames_refused_total",
                "Client frames refused, by error code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let cache_hits = IntCounter::new(
            "wsroute_route_cache_hits_total",
            "Recipient lookups answered by the local route cache",
        )
        .expect("valid metric");
        let cache_misses = IntCounter::new(
            "wsroute_route_cache_misses_total",
            "Recipient lookups that went to Redis",
        )
        .expect("valid metric");
        let redis_ops = IntCounterVec::new(
            Opts::new(
                "wsroute_redis_operations_total",
                "Redis operations issued by this node, by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        let mesh_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "wsroute_mesh_batch_size",
                "Messages per batch forwarded to a peer node",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("valid metric");
        let mesh_errors = IntCounter::new(
            "wsroute_mesh_errors_total",
            "Mesh forward calls that failed",
        )
        .expect("valid metric");
        let slow_consumers = IntCounter::new(
            "wsroute_slow_consumers_total",
            "Connections closed (1013) because their queue overflowed",
        )
        .expect("valid metric");
        let unacked_dropped = IntCounter::new(
            "wsroute_unacked_untracked_total",
            "Written messages no longer kept for redelivery because the client did not ack them",
        )
        .expect("valid metric");
        for c in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(messages.clone()),
            Box::new(rejected.clone()),
            Box::new(frames_refused.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(redis_ops.clone()),
            Box::new(mesh_batch_size.clone()),
            Box::new(mesh_errors.clone()),
            Box::new(slow_consumers.clone()),
            Box::new(unacked_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self(Arc::new(Inner {
            registry,
            connections,
            messages,
            rejected,
            frames_refused,
            cache_hits,
            cache_misses,
            redis_ops,
            mesh_batch_size,
            mesh_errors,
            slow_consumers,
            unacked_dropped,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
