//! A node's own figures as `Mesh.Stats` answers them, read from its metrics, its session table
//! and its peer links: nothing is asked of Redis or of other nodes, so asking is cheap.

use std::collections::HashMap;

use prometheus::IntCounterVec;
use prometheus::core::Collector;
use wsroute_proto::v1 as pb;

use crate::envelope::now_ms;
use crate::state::NodeState;

impl NodeState {
    /// Counters since the node started, and its state now.
    pub fn stats(&self) -> pb::StatsReply {
        let m = &self.metrics;
        let messages = by_label(&m.messages);
        let outcome = |o: &str| messages.get(o).copied().unwrap_or(0);
        let now = now_ms();
        let sends_max = self.config.limits.node_sends_in_flight;
        let peers = self
            .delivery
            .peers
            .status()
            .into_iter()
            .map(|p| pb::PeerLink {
                node_id: p.node.to_string(),
                grpc_addr: p.addr,
                stream_up: p.stream_up,
                suspect: p.suspect,
            })
            .collect();
        pb::StatsReply {
            node_id: self.node.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: self.started_at_ms,
            uptime_ms: (now - self.started_at_ms).max(0),
            draining: self.is_draining(),
            accepting: self.accepting(),
            connections: self.sessions.len() as u64,
            users: self.sessions.users() as u64,
            max_connections: self.config.limits.node_connections,
            delivered_local: outcome("delivered_local"),
            delivered_remote: outcome("delivered_remote"),
            stored: outcome("stored"),
            rejected: outcome("rejected"),
            rejected_by_code: by_label(&m.rejected),
            frames_refused: by_label(&m.frames_refused),
            route_cache_hits: m.cache_hits.get(),
            route_cache_misses: m.cache_misses.get(),
            redis_ops: by_label(&m.redis_ops),
            mesh_errors: m.mesh_errors.get(),
            mesh_batches: m.mesh_batch_size.get_sample_count(),
            mesh_batched_messages: m.mesh_batch_size.get_sample_sum() as u64,
            slow_consumers: m.slow_consumers.get(),
            unacked_dropped: m.unacked_dropped.get(),
            sends_in_flight: sends_max.saturating_sub(self.admission.available_permits()) as u64,
            sends_in_flight_max: sends_max as u64,
            peers,
            grpc_addr: self.grpc_addr.clone(),
            public_url: self.public_url.clone(),
        }
    }
}

/// A one-label counter family as `label value -> count`. Reads the series that exist instead of
/// calling `with_label_values`, which would create (and export) empty ones.
fn by_label(family: &IntCounterVec) -> HashMap<String, u64> {
    Collector::collect(family)
        .iter()
        .flat_map(|f| f.get_metric())
        .filter_map(|metric| {
            let label = metric.get_label().first()?.value().to_owned();
            Some((label, metric.get_counter().get_value() as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_label_reads_only_existing_series() {
        let m = crate::metrics::Metrics::new();
        assert!(by_label(&m.messages).is_empty());
        m.messages.with_label_values(&["stored"]).inc_by(3);
        m.messages.with_label_values(&["delivered_local"]).inc();
        let got = by_label(&m.messages);
        assert_eq!(got.get("stored"), Some(&3));
        assert_eq!(got.get("delivered_local"), Some(&1));
        assert_eq!(got.len(), 2);
    }
}
