//! The local session table: the connections this node holds, by connection id and by user, each
//! with a bounded outbound queue that its session task drains into the socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytestring::ByteString;
use dashmap::DashMap;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ids::{ConnId, MsgId, UserId};

/// Something for a session task to write to its client.
#[derive(Debug)]
pub enum Outbound {
    /// A `message` frame. `written` is told whether the frame reached the socket (the honest basis
    /// of a `delivered` ack); dropping it unsent counts as "not written".
    Message {
        id: MsgId,
        frame: ByteString,
        from_inbox: bool,
        /// When the cluster accepted the message (unix microseconds), for the latency metric.
        accepted_us: i64,
        written: Option<oneshot::Sender<bool>>,
    },
}

/// An instruction to a session, outside its message queue so that a full queue cannot hold it up.
#[derive(Debug, Clone)]
pub enum Control {
    /// Send a `reconnect` frame pointing at `url`, then close with 1001.
    Reconnect { url: String, reason: String },
    /// Close with this code and reason (slow consumer, node stopping).
    Close { code: u16, reason: String },
    /// The user's inbox has new messages: fetch and send what this connection has not had.
    InboxChanged,
}

/// What the table knows of one connection.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub user: UserId,
    pub device: Option<Arc<str>>,
    pub connected_at_ms: i64,
    /// Bounded (`Limits::session_queue`); when full the client is a slow consumer and
    /// [`Sessions::deliver`] says so instead of waiting.
    pub queue: mpsc::Sender<Outbound>,
    /// Small and bounded; a full control queue means an instruction is already pending.
    pub control: mpsc::Sender<Control>,
    /// Cancelled when the connection's queue overflows: the session stops whatever write it is
    /// blocked in and closes with 1013, so that one slow reader cannot hold memory or senders.
    pub evict: CancellationToken,
}

/// Why a frame could not be handed to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverError {
    /// This node does not hold that connection (any more).
    Gone,
    /// The connection's queue is full: the client does not read fast enough.
    Full,
}

/// Connections by id and by user. DashMap shards its locks, so sessions on different workers
/// and mesh handlers touch the table concurrently without one global lock; no lock is held
/// across an `.await`.
#[derive(Debug, Default)]
pub struct Sessions {
    by_conn: DashMap<ConnId, SessionHandle>,
    /// Small vectors: a user rarely holds more than a few devices on one node.
    by_user: DashMap<UserId, Vec<ConnId>>,
    count: AtomicUsize,
    /// Woken whenever the last connection leaves (a drain waits on it).
    emptied: Notify,
}

impl Sessions {
    pub fn insert(&self, conn: ConnId, handle: SessionHandle) {
        self.by_user
            .entry(handle.user.clone())
            .or_default()
            .push(conn.clone());
        if self.by_conn.insert(conn, handle).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes a connection; returns its handle if it was present.
    pub fn remove(&self, conn: &ConnId) -> Option<SessionHandle> {
        let (_, handle) = self.by_conn.remove(conn)?;
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.emptied.notify_waiters();
        }
        self.by_user.remove_if_mut(&handle.user, |_, conns| {
            conns.retain(|c| c != conn);
            conns.is_empty()
        });
        Some(handle)
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Distinct users with at least one connection here.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no connection is left, or `timeout`; true if none is left.
    pub async fn wait_empty(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, emptied).await.is_err() {
                return self.is_empty();
            }
        }
    }

    pub fn contains(&self, conn: &ConnId) -> bool {
        self.by_conn.contains_key(conn)
    }

    /// Queues a frame for one connection without waiting.
    pub fn deliver(&self, conn: &ConnId, item: Outbound) -> Result<(), DeliverError> {
        // try_send never waits, so holding the shard's read guard across it is fine.
        let Some(handle) = self.by_conn.get(conn) else {
            return Err(DeliverError::Gone);
        };
        handle.queue.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                if !handle.evict.is_cancelled() {
                    tracing::warn!(user = %handle.user, conn_id = %conn, "slow consumer: queue full; closing the connection");
                    handle.evict.cancel();
                }
                DeliverError::Full
            }
            mpsc::error::TrySendError::Closed(_) => DeliverError::Gone,
        })
    }

    /// Sends an instruction to one connection; false if it is gone or already has one pending.
    pub fn control(&self, conn: &ConnId, msg: Control) -> bool {
        match self.by_conn.get(conn) {
            Some(h) => h.control.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// The connections this node holds for a user.
    pub fn conns_of(&self, user: &UserId) -> Vec<ConnId> {
        self.by_user
            .get(user)
            .map(|c| c.value().clone())
            .unwrap_or_default()
    }

    /// Every connection with its user (for re-registration after Redis lost its data).
    pub fn snapshot(&self) -> Vec<(ConnId, SessionHandle)> {
        self.by_conn
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(user: &str, cap: usize) -> (SessionHandle, mpsc::Receiver<Outbound>) {
        let (queue, rx) = mpsc::channel(cap);
        let (control, _) = mpsc::channel(1);
        (
            SessionHandle {
                user: UserId::parse(user).expect("valid"),
                device: None,
                connected_at_ms: 0,
                queue,
                control,
                evict: CancellationToken::new(),
            },
            rx,
        )
    }

    fn msg() -> Outbound {
        Outbound::Message {
            id: MsgId::parse("m1").expect("valid"),
            frame: ByteString::from_static("{}"),
            from_inbox: false,
            accepted_us: 0,
            written: None,
        }
    }

    #[test]
    fn tracks_connections_by_user_and_reports_full_and_gone() {
        let s = Sessions::default();
        let c1 = ConnId::parse("c1").expect("valid");
        let c2 = ConnId::parse("c2").expect("valid");
        let (h1, _rx1) = handle("bob", 1);
        let (h2, _rx2) = handle("bob", 1);
        s.insert(c1.clone(), h1);
        s.insert(c2.clone(), h2);
        let bob = UserId::parse("bob").expect("valid");
        assert_eq!(s.conns_of(&bob).len(), 2);
        assert_eq!(s.deliver(&c1, msg()), Ok(()));
        assert_eq!(s.deliver(&c1, msg()), Err(DeliverError::Full));
        assert!(s.by_conn.get(&c1).expect("present").evict.is_cancelled());
        s.remove(&c1);
        assert_eq!(s.deliver(&c1, msg()), Err(DeliverError::Gone));
        assert_eq!(s.conns_of(&bob), vec![c2.clone()]);
        s.remove(&c2);
        assert!(s.conns_of(&bob).is_empty());
        assert!(s.is_empty());
    }
}
