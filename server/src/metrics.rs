//! Every metric the node exports, named in one place, and their Prometheus text rendering.

use std::ops::Deref;
use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramTimer, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, 50 µs to 2.5 s: the hot path is sub-millisecond, and a Redis or
/// mesh stall of seconds must still land in a bucket of its own.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

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
    /// Messages acked `delivered` that could not be kept anywhere when their connection or the
    /// peer holding them ended (the inbox store failed past its retries). Should stay 0.
    pub unacked_dropped: IntCounter,
    /// Messages acked `delivered` and then moved to the inbox (their connection ended, or their
    /// peer failed, before a device acked), by who moved them (`connection`, `hold`).
    pub kept: IntCounterVec,
    /// Receipts sent to senders' connections.
    pub receipts: IntCounter,
    /// Sends still waiting for their outcome at the send deadline (then awaited to the end).
    pub sends_overdue: IntCounter,
    /// Time of each Redis operation, by operation (as counted in `redis_ops`).
    pub redis_latency: HistogramVec,
    /// Time from sending a batch to a peer until its reply.
    pub mesh_forward_latency: Histogram,
    /// A user's inbox depth right after a message was stored there.
    pub inbox_depth: Histogram,
    /// Inbox messages written to a connection (on connect, or when the inbox changed).
    pub inbox_replayed: IntCounter,
    /// From the cluster accepting a message to its frame being written to the recipient.
    pub delivery_latency: Histogram,
    /// 1 while the node drains.
    pub draining: IntGauge,
    /// Always 1, labelled with the node id and version (for dashboards' legends).
    pub node_info: IntGaugeVec,
    /// Messages received from peers, by form: `frame` (passed through) or `envelope` (an older
    /// sender, or a peer that did not see this node announce frames).
    pub mesh_items_received: IntCounterVec,
    pub route_events: IntCounterVec,
    /// Connections on this node that watch at least one user's presence.
    pub presence_watchers: IntGauge,
    /// Distinct users watched by this node's connections.
    pub presence_watched_users: IntGauge,
    /// (connection, watched user) pairs on this node: what presence keeps in memory.
    pub presence_watches: IntGauge,
    /// Watched users' device counts read from Redis (one HLEN each).
    pub presence_reads: IntCounter,
    /// Presence frames for this node's watchers, by result: `queued`, or `dropped` (the
    /// watcher's notice queue was full).
    pub presence_frames: IntCounterVec,
    /// Webhook events this node wrote to the events stream, by type.
    pub webhook_emitted: IntCounterVec,
    /// Webhook events lost before delivery, by why: `trimmed` (the events stream was at
    /// --webhook-max-events and its oldest went), `dead_trimmed` (the same for dead events),
    /// `unwritten` (Redis Cluster: the append after its change failed).
    pub webhook_dropped: IntCounterVec,
    /// Webhook POSTs answered 2xx (events settled).
    pub webhook_sent: IntCounter,
    /// Webhook POSTs that failed (not 2xx, no answer in time, no connection).
    pub webhook_failed: IntCounter,
    /// Webhook POSTs that were a second or later attempt.
    pub webhook_retried: IntCounter,
    /// Webhook events this node gave up on (moved to the dead stream).
    pub webhook_dead: IntCounter,
    /// Cluster-wide, as last read: events not settled yet.
    pub webhook_waiting: IntGauge,
    /// Cluster-wide, as last read: events read by a node at least once and not settled.
    pub webhook_pending: IntGauge,
    /// Cluster-wide, as last read: age of the oldest event not settled.
    pub webhook_oldest_age: Gauge,
    /// Cluster-wide, as last read: dead events kept.
    pub webhook_dead_kept: IntGauge,
}

impl Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric")
}

fn latency(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
}

impl Metrics {
    /// Counts one Redis operation and times it until the returned timer is dropped.
    pub fn redis_op(&self, op: &str) -> HistogramTimer {
        self.redis_ops.with_label_values(&[op]).inc();
        self.redis_latency.with_label_values(&[op]).start_timer()
    }

    /// Records the end-to-end latency of a message accepted at `accepted_us` (unix µs).
    pub fn observe_delivery(&self, accepted_us: i64) {
        if accepted_us > 0 {
            let us = (crate::envelope::now_us() - accepted_us).max(0);
            self.delivery_latency.observe(us as f64 / 1e6);
        }
    }

    pub fn new() -> Self {
        let registry = Registry::new();
        let connections = gauge(
            "wsroute_connections",
            "Live client WebSocket connections on this node",
        );
        let messages = counter_vec(
            "wsroute_messages_total",
            "Messages sent through this node, by outcome",
            &["outcome"],
        );
        let rejected = counter_vec(
            "wsroute_messages_rejected_total",
            "Messages rejected by this node, by error code",
            &["code"],
        );
        let frames_refused = counter_vec(
            "wsroute_client_frames_refused_total",
            "Client frames refused, by error code",
            &["code"],
        );
        let cache_hits = counter(
            "wsroute_route_cache_hits_total",
            "Recipient lookups answered by the local route cache",
        );
        let cache_misses = counter(
            "wsroute_route_cache_misses_total",
            "Recipient lookups that went to Redis",
        );
        let redis_ops = counter_vec(
            "wsroute_redis_operations_total",
            "Redis operations issued by this node, by operation",
            &["op"],
        );
        let mesh_batch_size = histogram(
            "wsroute_mesh_batch_size",
            "Messages per batch forwarded to a peer node",
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
        );
        let mesh_errors = counter(
            "wsroute_mesh_errors_total",
            "Mesh forward calls that failed",
        );
        let slow_consumers = counter(
            "wsroute_slow_consumers_total",
            "Connections closed (1013) because their queue overflowed",
        );
        let unacked_dropped = counter(
            "wsroute_delivered_lost_total",
            "Messages acked delivered that could not be kept when their connection or holder ended (Redis away and the backlog full, or the node stopped before Redis answered); should stay 0",
        );
        let kept = counter_vec(
            "wsroute_kept_total",
            "Messages acked delivered and moved to the inbox before any device acked them, by who moved them (connection, hold; backlog: kept by the node until Redis answered)",
            &["by"],
        );
        let receipts = counter(
            "wsroute_receipts_total",
            "Receipts handed to senders' live connections on this node (one per connection; a receipt for a sender with no live connection is dropped and not counted)",
        );
        let sends_overdue = counter(
            "wsroute_sends_overdue_total",
            "Sends still waiting for their outcome at the send deadline (their outcome is still awaited and reported)",
        );
        let redis_latency = HistogramVec::new(
            latency(
                "wsroute_redis_command_duration_seconds",
                "Time of each Redis operation (a pipeline or script counts once), by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        let mesh_forward_latency = histogram(
            "wsroute_mesh_forward_duration_seconds",
            "Time from forwarding a batch to a peer node until its reply",
            LATENCY_BUCKETS,
        );
        let inbox_depth = histogram(
            "wsroute_inbox_depth",
            "Messages in a user's inbox right after one was stored there",
            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
        );
        let inbox_replayed = counter(
            "wsroute_inbox_replayed_total",
            "Inbox messages written to a client connection",
        );
        let delivery_latency = histogram(
            "wsroute_delivery_latency_seconds",
            "Time from the cluster accepting a message to writing it to the recipient's connection",
            LATENCY_BUCKETS,
        );
        let draining = gauge("wsroute_draining", "1 while this node drains, else 0");
        let node_info = IntGaugeVec::new(
            Opts::new("wsroute_node_info", "Always 1: this node's id and version"),
            &["node", "version"],
        )
        .expect("valid metric");
        let mesh_items_received = counter_vec(
            "wsroute_mesh_items_received_total",
            "Items received from peer nodes, by form (frame or envelope: a message; notice: a receipt; refused: a frame that is not a message, or a notice that is not a receipt, kept from the clients)",
            &["form"],
        );
        let route_events = counter_vec(
            "wsroute_route_events_total",
            "Route events heard on the event channel, by kind (invalidate, inbox, node_up, node_gone)",
            &["kind"],
        );
        let presence_watchers = gauge(
            "wsroute_presence_watchers",
            "Connections on this node watching at least one user's presence",
        );
        let presence_watched_users = gauge(
            "wsroute_presence_watched_users",
            "Distinct users watched by this node's connections",
        );
        let presence_watches = gauge(
            "wsroute_presence_watches",
            "Watches (connection, watched user) held by this node",
        );
        let presence_reads = counter(
            "wsroute_presence_reads_total",
            "Watched users' device counts read from Redis (one HLEN each)",
        );
        let presence_frames = counter_vec(
            "wsroute_presence_frames_total",
            "Presence frames for this node's watchers, by result (queued; dropped: the watcher's notice queue was full)",
            &["result"],
        );
        let webhook_emitted = counter_vec(
            "wsroute_webhook_events_total",
            "Webhook events this node wrote to the events stream, by type",
            &["type"],
        );
        let webhook_dropped = counter_vec(
            "wsroute_webhook_dropped_total",
            "Webhook events lost before delivery, by why (trimmed: the events stream was at --webhook-max-events and its oldest went; dead_trimmed: the same for dead events; unwritten: on Redis Cluster the append after its change failed)",
            &["why"],
        );
        let webhook_sent = counter(
            "wsroute_webhook_sent_total",
            "Webhook POSTs answered 2xx (events settled)",
        );
        let webhook_failed = counter(
            "wsroute_webhook_failed_total",
            "Webhook POSTs that failed (not 2xx, no answer within 5 s, no connection)",
        );
        let webhook_retried = counter(
            "wsroute_webhook_retried_total",
            "Webhook POSTs that were a second or later attempt of their event",
        );
        let webhook_dead = counter(
            "wsroute_webhook_dead_total",
            "Webhook events this node gave up on after --webhook-max-attempts (moved to the dead stream)",
        );
        let webhook_waiting = gauge(
            "wsroute_webhook_waiting",
            "Webhook events not settled yet, cluster-wide (as last read)",
        );
        let webhook_pending = gauge(
            "wsroute_webhook_pending",
            "Webhook events read by a node at least once and not settled, cluster-wide (as last read)",
        );
        let webhook_oldest_age = Gauge::new(
            "wsroute_webhook_oldest_age_seconds",
            "Age of the oldest webhook event not settled, cluster-wide (as last read)",
        )
        .expect("valid metric");
        let webhook_dead_kept = gauge(
            "wsroute_webhook_dead_events",
            "Dead webhook events kept, cluster-wide (as last read)",
        );
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
            Box::new(kept.clone()),
            Box::new(receipts.clone()),
            Box::new(sends_overdue.clone()),
            Box::new(redis_latency.clone()),
            Box::new(mesh_forward_latency.clone()),
            Box::new(inbox_depth.clone()),
            Box::new(inbox_replayed.clone()),
            Box::new(delivery_latency.clone()),
            Box::new(draining.clone()),
            Box::new(node_info.clone()),
            Box::new(mesh_items_received.clone()),
            Box::new(route_events.clone()),
            Box::new(presence_watchers.clone()),
            Box::new(presence_watched_users.clone()),
            Box::new(presence_watches.clone()),
            Box::new(presence_reads.clone()),
            Box::new(presence_frames.clone()),
            Box::new(webhook_emitted.clone()),
            Box::new(webhook_dropped.clone()),
            Box::new(webhook_sent.clone()),
            Box::new(webhook_failed.clone()),
            Box::new(webhook_retried.clone()),
            Box::new(webhook_dead.clone()),
            Box::new(webhook_waiting.clone()),
            Box::new(webhook_pending.clone()),
            Box::new(webhook_oldest_age.clone()),
            Box::new(webhook_dead_kept.clone()),
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
            kept,
            receipts,
            sends_overdue,
            redis_latency,
            mesh_forward_latency,
            inbox_depth,
            inbox_replayed,
            delivery_latency,
            draining,
            node_info,
            mesh_items_received,
            route_events,
            presence_watchers,
            presence_watched_users,
            presence_watches,
            presence_reads,
            presence_frames,
            webhook_emitted,
            webhook_dropped,
            webhook_sent,
            webhook_failed,
            webhook_retried,
            webhook_dead,
            webhook_waiting,
            webhook_pending,
            webhook_oldest_age,
            webhook_dead_kept,
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

/// The Redis operations `wsroute_core` runs (route lookups, node lists, inbox reads) are counted
/// and timed like the server's own.
impl wsroute_core::observe::Observer for Metrics {
    fn observe_redis_op(&self, op: &'static str, took: std::time::Duration) {
        self.redis_ops.with_label_values(&[op]).inc();
        self.redis_latency
            .with_label_values(&[op])
            .observe(took.as_secs_f64());
    }
}
