//! Messages this node forwarded to a peer, which wrote them to a connection of the recipient
//! (the sender was told `delivered`), held here until the peer confirms what became of them: a
//! device acked (a `received` receipt goes to the sender), or the connection ended and the peer
//! stored them (`stored`). If the peer dies or its stream breaks first, or no confirmation comes
//! in time, this node stores them in the recipient's inbox itself: a message acked `delivered`
//! is always held by a node other than the one that may fail, until a device confirms it.
//!
//! Bounds: held frames count against `max_bytes`; past it the oldest holds are stored to the
//! inbox at the next sweep (a copy: the recipient's connection recognises its id), and past twice
//! that no new message is held (counted, and logged as an error).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytestring::ByteString;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::confirm::{ConfirmStatus, Confirmation};
use crate::ids::{MsgId, NodeId, UserId};

/// Confirmations that came before their message was held (the peer's confirmation overtook its
/// reply to the batch), remembered at most.
const EARLY_MAX: usize = 4096;

/// Events waiting for the keeper task, at most; past this a receipt is dropped (receipts are
/// notifications) and a lost peer is left to the expiry sweep.
pub const EVENTS: usize = 16_384;

/// A message held for a peer's confirmation.
#[derive(Debug, Clone)]
pub struct Held {
    pub to: UserId,
    pub from: UserId,
    pub frame: ByteString,
    pub peer: NodeId,
    pub since: Instant,
}

impl Held {
    fn cost(&self) -> usize {
        self.frame.len() + 96
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    Received,
    Read,
    Stored,
}

impl ReceiptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Read => "read",
            Self::Stored => "stored",
        }
    }
}

/// Work for the keeper task.
#[derive(Debug)]
pub enum Event {
    /// Tell `user`'s live connections what became of their message `id` to `to` (only those on
    /// other nodes when `elsewhere_only`: this node's were written already).
    Receipt {
        user: UserId,
        id: MsgId,
        to: UserId,
        status: ReceiptStatus,
        device: Option<Arc<str>>,
        elsewhere_only: bool,
    },
    /// The stream to this peer broke: store what it held.
    PeerLost(NodeId),
    /// Could not be held (over the hard bound): store it now.
    Unheld(MsgId, Held),
}

/// Writes receipts at once, on the thread that learns of them, to the sender's connections on
/// this node (the common case: a sender hears on the node it sent from). What it cannot finish
/// there (the sender has connections elsewhere, or the route cache does not know) goes to the
/// keeper task.
pub trait ReceiptSink: Send + Sync {
    /// Writes the receipt to `user`'s connections on this node; true when those are all of them
    /// as far as the route cache knows.
    fn here(
        &self,
        user: &UserId,
        id: &MsgId,
        to: &UserId,
        status: ReceiptStatus,
        device: Option<&str>,
    ) -> bool;
}

pub struct Holds {
    /// Set once delivery exists (it is built after the holds).
    sink: std::sync::OnceLock<Arc<dyn ReceiptSink>>,
    held: DashMap<MsgId, Held, foldhash::fast::RandomState>,
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Confirmations for ids not held (yet): a few at most, usually none, so a hold only
    /// looks here when `early_len` says there is something.
    early: Mutex<Early>,
    early_len: AtomicUsize,
    events: mpsc::Sender<Event>,
}

/// Early confirmations by id, and their arrival order (the oldest is let go first).
#[derive(Default)]
struct Early {
    by_id: HashMap<MsgId, Confirmation, foldhash::quality::RandomState>,
    order: VecDeque<MsgId>,
}

impl Holds {
    /// Holds with a budget of `max_bytes`, and the keeper's end of their events.
    pub fn new(max_bytes: usize) -> (Self, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(EVENTS);
        (
            Self {
                sink: std::sync::OnceLock::new(),
                held: DashMap::default(),
                bytes: AtomicUsize::new(0),
                max_bytes,
                early: Mutex::default(),
                early_len: AtomicUsize::new(0),
                events,
            },
            rx,
        )
    }

    /// A peer wrote `id` to a connection of its recipient: hold it until the peer says what
    /// became of it. A confirmation that came first settles it at once.
    pub fn hold(&self, id: MsgId, held: Held) {
        let early = if self.early_len.load(Ordering::Relaxed) == 0 {
            None
        } else {
            let mut early = self.early.lock().unwrap_or_else(PoisonError::into_inner);
            let c = early.by_id.remove(&id);
            if c.is_some() {
                early.order.retain(|o| *o != id);
                self.early_len.store(early.by_id.len(), Ordering::Relaxed);
            }
            c
        };
        if let Some(c) = early {
            self.settled(id, &held, c);
            return;
        }
        let cost = held.cost();
        if self.bytes.load(Ordering::Relaxed) + cost > self.max_bytes.saturating_mul(2) {
            tracing::error!(msg_id = %id, to = %held.to, "holds over twice their budget (--hold-bytes); storing the message now");
            if let Err(e) = self.events.try_send(Event::Unheld(id, held)) {
                tracing::error!(error = %e, "keeper queue full: a delivered message is not held");
            }
            return;
        }
        self.bytes.fetch_add(cost, Ordering::Relaxed);
        if let Some(old) = self.held.insert(id, held) {
            self.bytes.fetch_sub(old.cost(), Ordering::Relaxed);
        }
    }

    /// A peer said what became of a message it was given.
    pub fn confirm(&self, c: Confirmation) {
        match self.held.remove(&c.id) {
            Some((id, held)) => {
                self.bytes.fetch_sub(held.cost(), Ordering::Relaxed);
                self.settled(id, &held, c);
            }
            None => {
                // Came before its hold (or for a message no longer held: a second device's
                // ack, a hold already stored); remembered a while, bounded.
                let mut early = self.early.lock().unwrap_or_else(PoisonError::into_inner);
                if early.by_id.len() >= EARLY_MAX
                    && let Some(old) = early.order.pop_front()
                {
                    early.by_id.remove(&old);
                }
                if early.by_id.insert(c.id.clone(), c.clone()).is_none() {
                    early.order.push_back(c.id);
                }
                self.early_len.store(early.by_id.len(), Ordering::Relaxed);
            }
        }
    }

    fn settled(&self, id: MsgId, held: &Held, c: Confirmation) {
        let status = match c.status {
            ConfirmStatus::Received => ReceiptStatus::Received,
            ConfirmStatus::Stored => ReceiptStatus::Stored,
        };
        self.receipt(&held.from, id, &held.to, status, c.device);
    }

    /// Where receipts are written at once from now on.
    pub fn set_sink(&self, sink: Arc<dyn ReceiptSink>) {
        let _ = self.sink.set(sink);
    }

    /// Tells `user` what became of their message `id` to `to`: at once to their connections on
    /// this node, through the keeper to those elsewhere.
    pub fn receipt(
        &self,
        user: &UserId,
        id: MsgId,
        to: &UserId,
        status: ReceiptStatus,
        device: Option<Arc<str>>,
    ) {
        let written_here = self.sink.get();
        if let Some(sink) = written_here
            && sink.here(user, &id, to, status, device.as_deref())
        {
            return;
        }
        self.event(Event::Receipt {
            user: user.clone(),
            id,
            to: to.clone(),
            status,
            device,
            elsewhere_only: written_here.is_some(),
        });
    }

    /// Queues work for the keeper; false when its queue is full.
    pub fn event(&self, e: Event) -> bool {
        self.events.try_send(e).is_ok()
    }

    /// The stream to `peer` broke (a message on it may not survive the peer): the keeper stores
    /// what it holds.
    pub fn peer_lost(&self, peer: &NodeId) {
        if self.held.iter().any(|h| h.peer == *peer) && !self.event(Event::PeerLost(peer.clone())) {
            tracing::warn!(peer = %peer, "keeper queue full; the holds for this peer wait for the expiry sweep");
        }
    }

    /// Lets go of the holds for `peer`, to be stored.
    pub fn take_peer(&self, peer: &NodeId) -> Vec<(MsgId, Held)> {
        self.take_where(|h| h.peer == *peer)
    }

    /// Lets go of the holds older than `before`, and then the oldest ones while over budget.
    pub fn take_due(&self, before: Instant) -> Vec<(MsgId, Held)> {
        let mut due = self.take_where(|h| h.since < before);
        if self.bytes.load(Ordering::Relaxed) > self.max_bytes {
            let mut all: Vec<(MsgId, Instant)> = self
                .held
                .iter()
                .map(|h| (h.key().clone(), h.since))
                .collect();
            all.sort_by_key(|(_, since)| *since);
            for (id, _) in all {
                if self.bytes.load(Ordering::Relaxed) <= self.max_bytes {
                    break;
                }
                if let Some((id, held)) = self.held.remove(&id) {
                    self.bytes.fetch_sub(held.cost(), Ordering::Relaxed);
                    due.push((id, held));
                }
            }
        }
        due
    }

    fn take_where(&self, pick: impl Fn(&Held) -> bool) -> Vec<(MsgId, Held)> {
        let ids: Vec<MsgId> = self
            .held
            .iter()
            .filter(|h| pick(h.value()))
            .map(|h| h.key().clone())
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((id, held)) = self.held.remove(&id) {
                self.bytes.fetch_sub(held.cost(), Ordering::Relaxed);
                out.push((id, held));
            }
        }
        out
    }

    /// Messages held now, and their bytes.
    pub fn size(&self) -> (usize, usize) {
        (self.held.len(), self.bytes.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(peer: &str) -> Held {
        Held {
            to: UserId::parse("bob").expect("valid"),
            from: UserId::parse("alice").expect("valid"),
            frame: ByteString::from_static("{\"type\":\"message\"}"),
            peer: NodeId::parse(peer).expect("valid"),
            since: Instant::now(),
        }
    }

    fn id(n: usize) -> MsgId {
        MsgId::parse(&format!("m{n}")).expect("valid")
    }

    fn confirmation(n: usize, status: ConfirmStatus) -> Confirmation {
        Confirmation {
            id: id(n),
            status,
            device: Some(Arc::from("phone")),
        }
    }

    #[tokio::test]
    async fn a_confirmation_releases_the_hold_and_becomes_a_receipt_for_the_sender() {
        let (holds, mut events) = Holds::new(1 << 20);
        holds.hold(id(1), held("n2"));
        assert_eq!(holds.size().0, 1);
        holds.confirm(confirmation(1, ConfirmStatus::Received));
        assert_eq!(holds.size(), (0, 0));
        let Some(Event::Receipt {
            user,
            id: got,
            to,
            status,
            device,
            elsewhere_only: false,
        }) = events.recv().await
        else {
            panic!("a receipt");
        };
        assert_eq!(
            (user.as_str(), got, to.as_str(), status, device.as_deref()),
            (
                "alice",
                id(1),
                "bob",
                ReceiptStatus::Received,
                Some("phone")
            )
        );
    }

    #[tokio::test]
    async fn a_confirmation_that_overtakes_its_hold_still_settles_it() {
        let (holds, mut events) = Holds::new(1 << 20);
        holds.confirm(confirmation(1, ConfirmStatus::Stored));
        holds.hold(id(1), held("n2"));
        assert_eq!(holds.size().0, 0, "never held");
        assert!(matches!(
            events.recv().await,
            Some(Event::Receipt {
                status: ReceiptStatus::Stored,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_lost_peer_gives_back_its_holds_only() {
        let (holds, mut events) = Holds::new(1 << 20);
        holds.hold(id(1), held("n2"));
        holds.hold(id(2), held("n3"));
        holds.hold(id(3), held("n2"));
        holds.peer_lost(&NodeId::parse("n2").expect("valid"));
        assert!(matches!(events.recv().await, Some(Event::PeerLost(p)) if p.as_str() == "n2"));
        let mut taken: Vec<MsgId> = holds
            .take_peer(&NodeId::parse("n2").expect("valid"))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        taken.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(taken, [id(1), id(3)]);
        assert_eq!(holds.size().0, 1);
    }

    #[tokio::test]
    async fn old_holds_and_holds_over_budget_fall_due() {
        let one = held("n2").cost();
        let (holds, mut events) = Holds::new(one * 2);
        holds.hold(id(1), held("n2"));
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let due = holds.take_due(later);
        assert_eq!(due.len(), 1, "older than the deadline");
        let start = Instant::now();
        for n in 0..4 {
            holds.hold(id(10 + n), held("n2"));
        }
        assert_eq!(holds.size().0, 4, "up to twice the budget is held");
        holds.hold(id(20), held("n2"));
        assert!(
            matches!(events.try_recv(), Ok(Event::Unheld(i, _)) if i == id(20)),
            "past twice the budget a message is stored at once"
        );
        let due = holds.take_due(start);
        assert_eq!(due.len(), 2, "the oldest go until the budget holds");
        assert_eq!(holds.size().1, one * 2);
    }
}
