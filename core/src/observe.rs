//! The hook through which a node counts and times the Redis operations this crate runs, so that
//! the crate needs no metrics library (the server plugs its Prometheus metrics in; router-cli
//! plugs nothing).

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Told about each Redis operation once it ends (whether it succeeded or not).
pub trait Observer: Send + Sync {
    /// Operation `op` (e.g. `lookup`, a pipeline counting once) took `took`.
    fn observe_redis_op(&self, op: &'static str, took: Duration);
}

/// Observes nothing: for tools that keep no metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn observe_redis_op(&self, _op: &'static str, _took: Duration) {}
}

/// An observer shared by every reader of one process.
pub type SharedObserver = Arc<dyn Observer>;

/// Reports `op` to its observer when dropped: an operation is timed from its start to the end
/// of the scope that holds this.
pub(crate) struct Timed<'a> {
    observer: &'a dyn Observer,
    op: &'static str,
    started: Instant,
}

impl<'a> Timed<'a> {
    pub(crate) fn start(observer: &'a dyn Observer, op: &'static str) -> Self {
        Self {
            observer,
            op,
            started: Instant::now(),
        }
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.observer
            .observe_redis_op(self.op, self.started.elapsed());
    }
}
