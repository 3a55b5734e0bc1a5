//! One connection's ledger of what was written to it and what its client acked: the live messages
//! not acked yet (kept in the inbox if the connection ends), the inbox messages it already has,
//! and the ids of its recent live writes. Its rules keep a connection from getting a message
//! twice, whichever way (live, or back through the inbox) the message comes.

use std::collections::{HashSet, VecDeque};

use bytestring::ByteString;

use crate::ids::MsgId;

/// How many recently written live message ids a connection remembers (16 bytes each).
const RECENT_IDS: usize = 128;

/// What to do with a message read from the user's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxCopy {
    /// New to this connection: send it, then record it with [`Ledger::wrote_inbox`].
    Send,
    /// This connection has it already (from the inbox, or written live and not acked yet).
    Had,
    /// Written here live, and the client acked it since: that ack never reached the inbox, so
    /// the stored copy should be removed there.
    Acked,
}

pub struct Ledger {
    /// Live messages written and not yet acked by the client, oldest first (at most
    /// `unacked_max`). Empty, and unallocated, for a client that keeps up with its acks.
    unacked: VecDeque<(MsgId, ByteString)>,
    unacked_max: usize,
    /// Ids this connection already has from the inbox (or that a sender gave up on and stored):
    /// never sent twice to this connection, and acked in Redis when the client acks them.
    inbox_sent: HashSet<MsgId>,
    /// The last [`RECENT_IDS`] live messages written here. A message written here whose sender
    /// did not hear so (a mesh stream broke before the reply) is stored by its sender and comes
    /// back through the inbox: this is how the connection knows it already has it.
    recent: VecDeque<MsgId>,
}

impl Ledger {
    /// An empty ledger that tracks at most `unacked_max` unacked live messages.
    pub fn new(unacked_max: usize) -> Self {
        Self {
            unacked: VecDeque::new(),
            unacked_max,
            inbox_sent: HashSet::new(),
            recent: VecDeque::new(),
        }
    }

    /// Whether this connection already has `id` as an inbox message (it is not written again).
    pub fn has_from_inbox(&self, id: &MsgId) -> bool {
        self.inbox_sent.contains(id)
    }

    /// `id` was written as an inbox message: from the inbox, or a live one whose sender stopped
    /// waiting and stores it. The inbox will not send it here again.
    pub fn wrote_inbox(&mut self, id: MsgId) {
        self.inbox_sent.insert(id);
    }

    /// A live message was written: remembered as recent, and as unacked until the client acks
    /// it. Returns true when the oldest unacked message was let go to make room (the client does
    /// not ack: it is no longer tracked, rather than the list growing without bound).
    #[must_use = "a message let go untracked is counted"]
    pub fn wrote_live(&mut self, id: MsgId, frame: ByteString) -> bool {
        if self.recent.len() >= RECENT_IDS {
            self.recent.pop_front();
        }
        self.recent.push_back(id.clone());
        let full = self.unacked.len() >= self.unacked_max;
        if full {
            self.unacked.pop_front();
        }
        self.unacked.push_back((id, frame));
        full
    }

    /// The client acked `id`: it is no longer unacked, in any copy (a resent `cid` writes one
    /// id here more than once, and a client that drops the copies acks it once). Returns
    /// whether it is an inbox message, whose stored copy is then removed in Redis.
    pub fn acked(&mut self, id: &MsgId) -> bool {
        self.unacked.retain(|(u, _)| u != id);
        self.inbox_sent.contains(id)
    }

    /// What to do with inbox message `id`; one written here live is recorded as had.
    pub fn inbox_copy(&mut self, id: &MsgId) -> InboxCopy {
        if self.inbox_sent.contains(id) {
            return InboxCopy::Had;
        }
        if !self.recent.contains(id) {
            return InboxCopy::Send;
        }
        let still_unacked = self.unacked.iter().any(|(u, _)| u == id);
        self.inbox_sent.insert(id.clone());
        if still_unacked {
            InboxCopy::Had
        } else {
            InboxCopy::Acked
        }
    }

    /// The unacked live messages, oldest first; the ledger keeps none.
    pub fn take_unacked(&mut self) -> VecDeque<(MsgId, ByteString)> {
        std::mem::take(&mut self.unacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> MsgId {
        MsgId::parse(&format!("m{n}")).expect("valid")
    }

    fn frame(n: usize) -> ByteString {
        ByteString::from(format!("frame {n}"))
    }

    fn unacked_ids(ledger: &mut Ledger) -> Vec<MsgId> {
        ledger
            .take_unacked()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    #[test]
    fn the_unacked_list_is_bounded_and_lets_the_oldest_go() {
        let mut l = Ledger::new(2);
        assert!(!l.wrote_live(id(1), frame(1)));
        assert!(!l.wrote_live(id(2), frame(2)));
        assert!(
            l.wrote_live(id(3), frame(3)),
            "the oldest is let go, and said so"
        );
        let kept = l.take_unacked();
        assert_eq!(
            kept.iter()
                .map(|(id, f)| (id.clone(), f.clone()))
                .collect::<Vec<_>>(),
            [(id(2), frame(2)), (id(3), frame(3))]
        );
        assert!(l.take_unacked().is_empty(), "taken once");
    }

    #[test]
    fn an_ack_removes_the_message_from_the_unacked_list() {
        let mut l = Ledger::new(8);
        let _ = l.wrote_live(id(1), frame(1));
        let _ = l.wrote_live(id(2), frame(2));
        assert!(
            !l.acked(&id(1)),
            "a live message: nothing to remove in Redis"
        );
        assert!(!l.acked(&id(9)), "an unknown id changes nothing");
        assert_eq!(unacked_ids(&mut l), [id(2)]);
    }

    #[test]
    fn one_ack_settles_every_copy_of_an_id() {
        let mut l = Ledger::new(8);
        let _ = l.wrote_live(id(1), frame(1));
        let _ = l.wrote_live(id(2), frame(2));
        let _ = l.wrote_live(id(1), frame(1));
        assert!(!l.acked(&id(1)));
        assert_eq!(unacked_ids(&mut l), [id(2)]);
    }

    #[test]
    fn an_inbox_message_already_sent_is_not_sent_twice_and_its_ack_goes_to_redis() {
        let mut l = Ledger::new(8);
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Send);
        l.wrote_inbox(id(1));
        assert!(l.has_from_inbox(&id(1)));
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Had);
        assert!(l.acked(&id(1)), "an inbox message is acked in Redis");
        assert!(
            unacked_ids(&mut l).is_empty(),
            "inbox messages are not tracked as unacked"
        );
    }

    #[test]
    fn a_live_message_that_comes_back_through_the_inbox_is_recognised() {
        let mut l = Ledger::new(8);
        // Written live, not acked yet: the stored copy is not sent, and stays in Redis.
        let _ = l.wrote_live(id(1), frame(1));
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Had);
        assert!(l.has_from_inbox(&id(1)));
        // Written live and acked before the copy came: the copy is removed in Redis.
        let _ = l.wrote_live(id(2), frame(2));
        assert!(!l.acked(&id(2)));
        assert_eq!(l.inbox_copy(&id(2)), InboxCopy::Acked);
        assert_eq!(l.inbox_copy(&id(2)), InboxCopy::Had, "and only once");
    }

    #[test]
    fn only_the_recent_live_messages_are_remembered() {
        let mut l = Ledger::new(RECENT_IDS + 1);
        for n in 0..=RECENT_IDS {
            let _ = l.wrote_live(id(n), frame(n));
            l.acked(&id(n));
        }
        assert_eq!(l.inbox_copy(&id(0)), InboxCopy::Send, "forgotten");
        assert_eq!(l.inbox_copy(&id(RECENT_IDS)), InboxCopy::Acked);
    }
}
