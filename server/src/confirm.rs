//! Confirmations: what became of a message that a peer forwarded here and holds until it knows
//! (a device of the recipient acked it, or its connection ended and it went to the inbox). They
//! go back to that peer on the reply side of the peer's own mesh stream, batched, so a message
//! costs its sender no Redis call and no extra round trip.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::ids::{MsgId, NodeId};

/// Confirmations waiting for one peer's stream, at most. Past this they are dropped (and
/// counted): the peer's hold then expires and it stores a copy of the message, which the
/// recipient's connections recognise by its id. A copy, never a loss.
pub const QUEUE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfirmStatus {
    /// A device of the recipient acked it.
    Received,
    /// Its connection ended before any device acked it; it is in the recipient's inbox now.
    Stored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub id: MsgId,
    pub status: ConfirmStatus,
    /// The acking device, when it named one.
    pub device: Option<Arc<str>>,
}

/// One bounded queue per peer with an open stream to this node.
#[derive(Default)]
pub struct Confirms {
    links: DashMap<NodeId, mpsc::Sender<Confirmation>, foldhash::quality::RandomState>,
}

impl Confirms {
    /// A stream from `peer` opened: its confirmations go to the returned queue from now on (a
    /// newer stream from the same peer takes over from an older one).
    pub fn attach(
        &self,
        peer: NodeId,
    ) -> (mpsc::Sender<Confirmation>, mpsc::Receiver<Confirmation>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.links.insert(peer, tx.clone());
        (tx, rx)
    }

    /// The stream that owns `tx` ended: forget its queue, unless a newer stream replaced it.
    pub fn detach(&self, peer: &NodeId, tx: &mpsc::Sender<Confirmation>) {
        self.links.remove_if(peer, |_, mine| mine.same_channel(tx));
    }

    /// Queues a confirmation for `peer`; false when it cannot go (no open stream from that peer,
    /// or its queue is full).
    pub fn send(&self, peer: &NodeId, c: Confirmation) -> bool {
        match self.links.get(peer) {
            Some(tx) => tx.try_send(c).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmation(n: usize) -> Confirmation {
        Confirmation {
            id: MsgId::parse(&format!("m{n}")).expect("valid"),
            status: ConfirmStatus::Received,
            device: None,
        }
    }

    #[test]
    fn confirmations_go_to_the_newest_stream_of_a_peer_and_only_while_it_is_open() {
        let confirms = Confirms::default();
        let peer = NodeId::parse("n1").expect("valid");
        assert!(
            !confirms.send(&peer, confirmation(1)),
            "no stream: nowhere to go"
        );
        let (old_tx, mut old_rx) = confirms.attach(peer.clone());
        assert!(confirms.send(&peer, confirmation(2)));
        assert_eq!(old_rx.try_recv().expect("queued"), confirmation(2));
        let (new_tx, mut new_rx) = confirms.attach(peer.clone());
        confirms.detach(&peer, &old_tx);
        assert!(
            confirms.send(&peer, confirmation(3)),
            "the newer stream stays"
        );
        assert_eq!(new_rx.try_recv().expect("queued"), confirmation(3));
        confirms.detach(&peer, &new_tx);
        assert!(!confirms.send(&peer, confirmation(4)));
    }

    #[test]
    fn a_full_queue_refuses_rather_than_grows() {
        let confirms = Confirms::default();
        let peer = NodeId::parse("n1").expect("valid");
        let (_tx, _rx) = confirms.attach(peer.clone());
        for n in 0..QUEUE {
            assert!(confirms.send(&peer, confirmation(n)));
        }
        assert!(!confirms.send(&peer, confirmation(QUEUE)));
    }
}
