//! The local session table: the connections this node holds, by connection id and by user, each
//! with a bounded outbound queue that its session task drains into the socket.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytestring::ByteString;
use dashmap::DashMap;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ids::{ConnId, MsgId, NodeId, UserId};

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
        /// Who sent it and who holds it: where its receipts and confirmation go. `None` for
        /// messages nobody waits to hear about (inbox copies, the broadcast baseline).
        source: Option<Source>,
    },
    /// A notification frame (a `receipt`): written if the connection can take it, kept nowhere.
    Notice(ByteString),
}

/// Where a live message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The sending user: receipts go to their live connections.
    pub from: UserId,
    /// The peer that forwarded it and holds it until this node confirms what became of it
    /// (a device acked it, or it went to the inbox); `None` when it was sent on this node.
    pub holder: Option<NodeId>,
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
    /// What waits for the session task: message frames (bounded by `Limits::session_queue`;
    /// when full the client is a slow consumer and [`Sessions::deliver`] says so instead of
    /// waiting) and control instructions.
    pub mailbox: Arc<Mailbox>,
    /// Cancelled when the connection's queue overflows: the session stops whatever write it is
    /// blocked in and closes with 1013, so that one slow reader cannot hold memory or senders.
    /// A child of the node's shutdown token, so also cancelled when the node stops (the session
    /// then closes with 1001, see `ws::session`).
    pub evict: CancellationToken,
}

/// A drained queue that grew past this many slots gives its memory back.
const SHRINK_ABOVE: usize = 64;

/// One session's mailbox: its queued message frames (bounded) and control instructions, behind
/// one short lock, and a wake-up for the session task. Nothing is allocated until something is
/// queued, and a queue that a burst grew gives its memory back once drained: an idle connection
/// costs no queue memory. (A pair of tokio mpsc channels allocated ~4 KiB per connection up
/// front, a block of 32 slots each.)
#[derive(Debug)]
pub struct Mailbox {
    slots: Mutex<Slots>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Slots {
    messages: VecDeque<Outbound>,
    /// Notices (receipts), in their own queue: a burst of them (a thousand messages stored at
    /// once) neither crowds out messages nor makes the client a slow consumer.
    notices: VecDeque<ByteString>,
    control: VecDeque<Control>,
    closed: bool,
}

/// Notices waiting for one session, at most; past this they are dropped (they are
/// notifications).
const NOTICES_MAX: usize = 4096;

impl Slots {
    /// The oldest notice; the queue gives its memory back once drained.
    fn pop_notice(&mut self) -> Option<Outbound> {
        let n = self.notices.pop_front()?;
        if self.notices.is_empty() && self.notices.capacity() > SHRINK_ABOVE {
            self.notices = VecDeque::new();
        }
        Some(Outbound::Notice(n))
    }

    /// The oldest message; a queue that a burst grew gives its memory back once drained.
    fn pop_message(&mut self) -> Option<Outbound> {
        let m = self.messages.pop_front()?;
        if self.messages.is_empty() && self.messages.capacity() > SHRINK_ABOVE {
            self.messages = VecDeque::new();
        }
        Some(m)
    }
}

/// What a session takes from its mailbox: instructions first.
#[derive(Debug)]
pub enum Mail {
    Control(Control),
    Message(Outbound),
}

impl Mailbox {
    /// A mailbox that holds at most `capacity` message frames.
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            ready: Notify::new(),
            capacity,
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding the lock; if something did, the queues are still whole.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message frame without waiting.
    fn push(&self, item: Outbound) -> Result<(), DeliverError> {
        {
            let mut slots = self.slots();
            if slots.closed {
                return Err(DeliverError::Gone);
            }
            match item {
                Outbound::Notice(frame) => {
                    if slots.notices.len() >= NOTICES_MAX {
                        return Err(DeliverError::Full);
                    }
                    slots.notices.push_back(frame);
                }
                message => {
                    if slots.messages.len() >= self.capacity {
                        return Err(DeliverError::Full);
                    }
                    slots.messages.push_back(message);
                }
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues an instruction; false only if the session is gone. At most one of each kind
    /// waits, so the queue stays bounded without refusing anything: a second `InboxChanged` is
    /// already covered by the pending one (the session fetches everything it has not had), and
    /// a `Reconnect` or `Close` replaces a pending one (the latest word on where the client
    /// goes), so a drain's instruction always lands however busy the session is.
    fn control(&self, msg: Control) -> bool {
        {
            let mut slots = self.slots();
            if slots.closed {
                return false;
            }
            match msg {
                Control::InboxChanged => {
                    if slots
                        .control
                        .iter()
                        .any(|c| matches!(c, Control::InboxChanged))
                    {
                        return true;
                    }
                }
                Control::Reconnect { .. } | Control::Close { .. } => {
                    slots.control.retain(|c| matches!(c, Control::InboxChanged));
                }
            }
            slots.control.push_back(msg);
        }
        self.ready.notify_one();
        true
    }

    /// Waits for the next instruction or message frame. Cancel-safe: nothing is taken unless
    /// it is returned.
    pub async fn recv(&self) -> Mail {
        loop {
            if let Some(mail) = self.try_recv() {
                return mail;
            }
            // A wake-up sent after the check above is kept as a permit, so none is missed.
            self.ready.notified().await;
        }
    }

    /// The next instruction, or message frame when `messages` is true (a session whose client
    /// has too much unacked takes instructions only, and its messages wait in the queue).
    pub async fn recv_gated(&self, messages: bool) -> Mail {
        loop {
            {
                let mut slots = self.slots();
                if let Some(c) = slots.control.pop_front() {
                    return Mail::Control(c);
                }
                if messages && let Some(m) = slots.pop_message() {
                    return Mail::Message(m);
                }
                // Notices cost the client's unacked budget nothing: they pass the gate.
                if let Some(n) = slots.pop_notice() {
                    return Mail::Message(n);
                }
            }
            self.ready.notified().await;
        }
    }

    fn try_recv(&self) -> Option<Mail> {
        let mut slots = self.slots();
        if let Some(c) = slots.control.pop_front() {
            return Some(Mail::Control(c));
        }
        slots
            .pop_message()
            .or_else(|| slots.pop_notice())
            .map(Mail::Message)
    }

    /// The next queued message frame, if one is there now.
    pub fn try_message(&self) -> Option<Outbound> {
        let mut slots = self.slots();
        slots.pop_message().or_else(|| slots.pop_notice())
    }

    /// Refuses everything from now on and hands back what was queued (dropping a message's
    /// `written` tells its sender "not written").
    pub fn close(&self) -> VecDeque<Outbound> {
        let mut slots = self.slots();
        slots.closed = true;
        slots.control.clear();
        slots.notices = VecDeque::new();
        std::mem::take(&mut slots.messages)
    }
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
    by_conn: DashMap<ConnId, SessionHandle, foldhash::quality::RandomState>,
    /// Small vectors: a user rarely holds more than a few devices on one node.
    by_user: DashMap<UserId, Vec<ConnId>, foldhash::quality::RandomState>,
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
        // push never waits, so holding the shard's read guard across it is fine.
        let Some(handle) = self.by_conn.get(conn) else {
            return Err(DeliverError::Gone);
        };
        handle.mailbox.push(item).inspect_err(|e| {
            if *e == DeliverError::Full && !handle.evict.is_cancelled() {
                tracing::warn!(user = %handle.user, conn_id = %conn, "slow consumer: queue full; closing the connection");
                handle.evict.cancel();
            }
        })
    }

    /// Queues a notice (a receipt) for one connection. A full queue drops it (receipts are
    /// notifications) and, unlike a message, does not close the connection.
    pub fn notice(&self, conn: &ConnId, frame: ByteString) -> Result<(), DeliverError> {
        match self.by_conn.get(conn) {
            Some(handle) => handle.mailbox.push(Outbound::Notice(frame)),
            None => Err(DeliverError::Gone),
        }
    }

    /// Sends an instruction to one connection; false if it is gone.
    pub fn control(&self, conn: &ConnId, msg: Control) -> bool {
        match self.by_conn.get(conn) {
            Some(h) => h.mailbox.control(msg),
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
pub(crate) mod tests {
    use super::*;

    /// A table entry for `user` whose mailbox holds `cap` frames, and the mailbox.
    pub(crate) fn handle(user: &str, cap: usize) -> (SessionHandle, Arc<Mailbox>) {
        let mailbox = Arc::new(Mailbox::new(cap));
        (
            SessionHandle {
                user: UserId::parse(user).expect("valid"),
                device: None,
                connected_at_ms: 0,
                mailbox: mailbox.clone(),
                evict: CancellationToken::new(),
            },
            mailbox,
        )
    }

    fn msg() -> Outbound {
        Outbound::Message {
            id: MsgId::parse("m1").expect("valid"),
            frame: ByteString::from_static("{}"),
            from_inbox: false,
            accepted_us: 0,
            written: None,
            source: None,
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

    #[tokio::test]
    async fn a_mailbox_gives_instructions_first_and_refuses_everything_once_closed() {
        let m = Mailbox::new(2);
        assert_eq!(m.push(msg()), Ok(()));
        assert!(m.control(Control::InboxChanged));
        assert_eq!(m.push(msg()), Ok(()));
        assert_eq!(m.push(msg()), Err(DeliverError::Full));
        assert!(matches!(
            m.recv().await,
            Mail::Control(Control::InboxChanged)
        ));
        assert!(matches!(m.recv().await, Mail::Message(_)));
        assert!(m.try_message().is_some());
        assert!(m.try_message().is_none());
        // A wake-up sent before anyone waits is not lost.
        assert_eq!(m.push(msg()), Ok(()));
        assert!(matches!(m.recv().await, Mail::Message(_)));
        assert_eq!(m.push(msg()), Ok(()));
        let (tx, rx) = oneshot::channel();
        let mut written = msg();
        let Outbound::Message { written: w, .. } = &mut written else {
            unreachable!("msg() is a message")
        };
        *w = Some(tx);
        assert_eq!(m.push(written), Ok(()));
        let left = m.close();
        assert_eq!(left.len(), 2);
        drop(left);
        assert!(
            rx.await.is_err(),
            "a frame dropped unsent tells its sender it was not written"
        );
        assert_eq!(m.push(msg()), Err(DeliverError::Gone));
        assert!(!m.control(Control::InboxChanged));
    }

    fn reconnect(url: &str) -> Control {
        Control::Reconnect {
            url: url.into(),
            reason: "node draining".into(),
        }
    }

    #[tokio::test]
    async fn a_drains_reconnect_always_lands_however_many_instructions_wait() {
        let m = Mailbox::new(2);
        // A busy user's inbox changes many times while the session is slow to look.
        for _ in 0..100 {
            assert!(m.control(Control::InboxChanged));
        }
        assert!(m.control(reconnect("ws://a/ws")));
        // A later wave names another node: the latest word wins, the first is not sent too.
        assert!(m.control(reconnect("ws://b/ws")));
        assert!(m.control(Control::InboxChanged));
        assert!(matches!(
            m.recv().await,
            Mail::Control(Control::InboxChanged)
        ));
        match m.recv().await {
            Mail::Control(Control::Reconnect { url, .. }) => assert_eq!(url, "ws://b/ws"),
            other => panic!("expected the reconnect, got {other:?}"),
        }
        assert!(m.try_recv().is_none(), "one of each kind, no more");
        // A close replaces a pending reconnect.
        assert!(m.control(reconnect("ws://a/ws")));
        assert!(m.control(Control::Close {
            code: 1001,
            reason: "node stopping".into()
        }));
        assert!(matches!(
            m.recv().await,
            Mail::Control(Control::Close { .. })
        ));
        assert!(m.try_recv().is_none());
    }

    #[test]
    fn receipts_queue_apart_from_messages_and_never_close_the_connection() {
        let s = Sessions::default();
        let c1 = ConnId::parse("c1").expect("valid");
        let (h1, mailbox) = handle("alice", 1);
        s.insert(c1.clone(), h1);
        for _ in 0..NOTICES_MAX {
            assert_eq!(s.notice(&c1, ByteString::from_static("{}")), Ok(()));
        }
        assert_eq!(
            s.notice(&c1, ByteString::from_static("{}")),
            Err(DeliverError::Full),
            "bounded: dropped"
        );
        assert!(
            !s.by_conn.get(&c1).expect("present").evict.is_cancelled(),
            "a full notice queue closes nothing"
        );
        assert_eq!(s.deliver(&c1, msg()), Ok(()), "messages keep their room");
        assert!(matches!(
            mailbox.try_message(),
            Some(Outbound::Message { .. })
        ));
        assert!(matches!(mailbox.try_message(), Some(Outbound::Notice(_))));
    }
}
