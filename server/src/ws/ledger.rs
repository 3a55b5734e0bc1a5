//! One connection's ledger of what was written to it and what its client acked: the live messages
//! not acked yet (kept in the inbox if the connection ends), the inbox messages it already has,
//! and the ids of its recent live writes. Its rules keep a connection from getting a message
//! twice, whichever way (live, or back through the inbox) the message comes.

use std::collections::VecDeque;

/// Ids hashed with foldhash (seeded per process): a message's ids are hashed on every write and
/// ack, where SipHash showed in profiles.
type HashSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

use bytestring::ByteString;

use crate::ids::{MsgId, UserId};
use crate::sessions::Source;

/// How many recently written live message ids a connection remembers, with their senders (for
/// `read` receipts and to recognise a copy that comes back).
const RECENT_IDS: usize = 256;

/// What one unacked message costs the ledger beyond its frame.
const ENTRY_COST: usize = 64;

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

/// Whether a live copy of a message is new to this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveCopy {
    /// Not written here recently: write it.
    New,
    /// Written here and not acked yet: not written again; whoever waits for this copy hears
    /// when the client acks (see [`Acked::also`]).
    Unacked,
    /// Written here and acked by the client since: not written again, and whoever waits for
    /// this copy can be told `received` now.
    Acked,
}

/// A live message written to the connection and not acked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unacked {
    pub id: MsgId,
    pub frame: ByteString,
    pub source: Option<Source>,
}

/// What an ack from the client meant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// It was a live message waiting for this ack: where it came from (its sender is told, and
    /// the peer holding it is sent a confirmation).
    pub live: Option<Option<Source>>,
    /// It is an inbox message (or has a stored copy): remove it in Redis.
    pub inbox: bool,
    /// Other copies of it, sent again from elsewhere while it waited here (a sender that
    /// reconnected to another node and resent): their holders are told too.
    pub also: Vec<Source>,
}

/// Written live without room in the ledger: the connection is a slow consumer.
#[derive(Debug, PartialEq, Eq)]
pub struct OverBudget;

pub struct Ledger {
    /// Live messages written and not yet acked by the client, oldest first, bounded by
    /// `max_bytes`. Empty, and unallocated, for a client that keeps up with its acks.
    unacked: VecDeque<Unacked>,
    unacked_bytes: usize,
    max_bytes: usize,
    /// Ids this connection already has from the inbox (or that a sender gave up on and stored),
    /// not acked yet: never sent twice to this connection, and acked in Redis (once) when the
    /// client acks them. Bounded by what the inbox sends (its caps) and by the live messages
    /// whose sender stopped waiting (bounded like the unacked ones).
    inbox_sent: HashSet<MsgId>,
    /// The last [`RECENT_IDS`] live messages written here, with their senders. A message written
    /// here whose sender did not hear so (a mesh stream broke before the reply) is sent again or
    /// stored, and comes back live or through the inbox: this is how the connection knows it
    /// already has it.
    recent: VecDeque<(MsgId, Option<UserId>)>,
    recent_ids: HashSet<MsgId>,
    /// Where copies of unacked messages came from besides the first (see [`LiveCopy::Unacked`]),
    /// at most [`RECENT_IDS`] (the oldest is let go: its holder stores the message when its hold
    /// expires, as for any copy nobody confirms). Empty, and unallocated, almost always.
    also: VecDeque<(MsgId, Source)>,
}

impl Ledger {
    /// An empty ledger that keeps at most `max_bytes` of unacked live messages.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            max_bytes,
            inbox_sent: HashSet::default(),
            recent: VecDeque::new(),
            recent_ids: HashSet::default(),
            also: VecDeque::new(),
        }
    }

    /// Whether this connection already has `id` as an inbox message (it is not written again).
    pub fn has_from_inbox(&self, id: &MsgId) -> bool {
        self.inbox_sent.contains(id)
    }

    /// Whether a live copy of `id` from `source` is new here. A copy written already is not
    /// written again; one still unacked whose `source` differs from the first copy's is noted,
    /// so that the client's ack answers both (see [`Acked::also`]).
    pub fn live_copy(&mut self, id: &MsgId, source: Option<&Source>) -> LiveCopy {
        if let Some(u) = self.unacked.iter().find(|u| u.id == *id) {
            if let Some(source) = source
                && u.source.as_ref() != Some(source)
                && !self.also.iter().any(|(i, s)| i == id && s == source)
            {
                if self.also.len() >= RECENT_IDS {
                    self.also.pop_front();
                }
                self.also.push_back((id.clone(), source.clone()));
            }
            LiveCopy::Unacked
        } else if self.recent_ids.contains(id) {
            LiveCopy::Acked
        } else {
            LiveCopy::New
        }
    }

    /// `id` was written as an inbox message: from the inbox, or a live one whose sender stopped
    /// waiting and stores it. The inbox will not send it here again.
    pub fn wrote_inbox(&mut self, id: MsgId) {
        self.inbox_sent.insert(id);
    }

    /// A live message was written: remembered as recent, and kept as unacked until the client
    /// acks it. It is always kept; `Err` says the ledger is now over its budget: the session
    /// writes nothing more until acks bring it under (see [`Ledger::over_budget`]).
    pub fn wrote_live(&mut self, entry: Unacked) -> Result<(), OverBudget> {
        let from = entry.source.as_ref().map(|s| s.from.clone());
        self.remember(entry.id.clone(), from);
        self.unacked_bytes += entry.frame.len() + ENTRY_COST;
        self.unacked.push_back(entry);
        if self.unacked_bytes > self.max_bytes {
            Err(OverBudget)
        } else {
            Ok(())
        }
    }

    /// Whether the unacked messages are over the budget: nothing more is written until acks
    /// bring them under it.
    pub fn over_budget(&self) -> bool {
        self.unacked_bytes > self.max_bytes
    }

    /// The client acked `id`.
    pub fn acked(&mut self, id: &MsgId) -> Acked {
        let live = self.unacked.iter().position(|u| u.id == *id).map(|i| {
            let u = self.unacked.remove(i).expect("found at i");
            self.unacked_bytes -= u.frame.len() + ENTRY_COST;
            if self.unacked.is_empty() {
                self.unacked = VecDeque::new();
            }
            u.source
        });
        // An inbox message is acked in Redis once: a repeated ack finds nothing to remove and
        // costs no Redis call. It stays recognised (as recent), so that a copy stored after
        // this ack (a sender that stopped waiting) is dropped there, not sent here again.
        let inbox = self.inbox_sent.remove(id);
        if inbox && !self.recent_ids.contains(id) {
            self.remember(id.clone(), None);
        }
        Acked {
            live,
            inbox,
            also: self.take_also(|i| i == id),
        }
    }

    /// The noted other copies' sources for the ids `pick` chooses, removed.
    fn take_also(&mut self, pick: impl Fn(&MsgId) -> bool) -> Vec<Source> {
        if self.also.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        self.also.retain(|(i, s)| {
            let keep = !pick(i);
            if !keep {
                taken.push(s.clone());
            }
            keep
        });
        if self.also.is_empty() {
            self.also = VecDeque::new();
        }
        taken
    }

    /// Whether `id` waits for this client's ack (a live message not acked yet, or an inbox
    /// message sent here): an ack of it answers the server's own traffic.
    pub fn awaits_ack(&self, id: &MsgId) -> bool {
        self.inbox_sent.contains(id) || self.unacked.iter().any(|u| u.id == *id)
    }

    /// Who sent `id`, if it was written here recently (or is still unacked).
    pub fn sender_of(&self, id: &MsgId) -> Option<UserId> {
        self.recent
            .iter()
            .rev()
            .find(|(r, _)| r == id)
            .and_then(|(_, from)| from.clone())
            .or_else(|| {
                self.unacked
                    .iter()
                    .find(|u| u.id == *id)
                    .and_then(|u| u.source.as_ref().map(|s| s.from.clone()))
            })
    }

    /// Remembers who sent `id`, written here from the inbox (for a `read` receipt later).
    pub fn remember_sender(&mut self, id: MsgId, from: UserId) {
        self.remember(id, Some(from));
    }

    fn remember(&mut self, id: MsgId, from: Option<UserId>) {
        if self.recent.len() >= RECENT_IDS
            && let Some((old, _)) = self.recent.pop_front()
        {
            self.recent_ids.remove(&old);
        }
        self.recent_ids.insert(id.clone());
        self.recent.push_back((id, from));
    }

    /// What to do with inbox message `id`; one written here live is recorded as had.
    pub fn inbox_copy(&mut self, id: &MsgId) -> InboxCopy {
        if self.inbox_sent.contains(id) {
            return InboxCopy::Had;
        }
        let still_unacked = self.unacked.iter().any(|u| u.id == *id);
        if !still_unacked && !self.recent_ids.contains(id) {
            return InboxCopy::Send;
        }
        self.inbox_sent.insert(id.clone());
        if still_unacked {
            InboxCopy::Had
        } else {
            InboxCopy::Acked
        }
    }

    /// The unacked live messages, oldest first, each followed by its other copies (the same
    /// message with another source, see [`LiveCopy::Unacked`]); the ledger keeps none.
    pub fn take_unacked(&mut self) -> Vec<Unacked> {
        self.unacked_bytes = 0;
        let unacked = std::mem::take(&mut self.unacked);
        let mut all = Vec::with_capacity(unacked.len() + self.also.len());
        for u in unacked {
            let copies = self.take_also(|i| *i == u.id);
            let (id, frame) = (u.id.clone(), u.frame.clone());
            all.push(u);
            all.extend(copies.into_iter().map(|source| Unacked {
                id: id.clone(),
                frame: frame.clone(),
                source: Some(source),
            }));
        }
        self.also = VecDeque::new();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> MsgId {
        MsgId::parse(&format!("m{n}")).expect("valid")
    }

    fn entry(n: usize) -> Unacked {
        Unacked {
            id: id(n),
            frame: ByteString::from(format!("frame {n:04}")),
            source: Some(Source {
                from: UserId::parse("alice").expect("valid"),
                holder: None,
            }),
        }
    }

    fn unacked_ids(ledger: &mut Ledger) -> Vec<MsgId> {
        ledger.take_unacked().into_iter().map(|u| u.id).collect()
    }

    #[test]
    fn the_unacked_list_keeps_everything_and_says_when_it_is_over_budget() {
        let one = entry(0).frame.len() + ENTRY_COST;
        let mut l = Ledger::new(one * 2);
        assert_eq!(l.wrote_live(entry(1)), Ok(()));
        assert_eq!(l.wrote_live(entry(2)), Ok(()));
        assert_eq!(
            l.wrote_live(entry(3)),
            Err(OverBudget),
            "over budget, and said so"
        );
        assert_eq!(
            l.take_unacked().into_iter().collect::<Vec<_>>(),
            [entry(1), entry(2), entry(3)],
            "nothing let go: all of it goes to the inbox"
        );
        assert!(l.take_unacked().is_empty(), "taken once");
        assert_eq!(l.wrote_live(entry(4)), Ok(()), "the budget is free again");
    }

    #[test]
    fn an_ack_removes_the_message_and_says_where_it_came_from() {
        let one = entry(0).frame.len() + ENTRY_COST;
        let mut l = Ledger::new(one * 2);
        l.wrote_live(entry(1)).expect("room");
        l.wrote_live(entry(2)).expect("room");
        let acked = l.acked(&id(1));
        assert_eq!(
            acked.live,
            Some(entry(1).source),
            "a live message, with its sender"
        );
        assert!(!acked.inbox, "nothing to remove in Redis");
        assert_eq!(
            l.acked(&id(9)),
            Acked::default(),
            "an unknown id changes nothing"
        );
        assert_eq!(l.acked(&id(1)).live, None, "acked once");
        assert_eq!(l.wrote_live(entry(3)), Ok(()), "the ack freed its bytes");
        assert_eq!(unacked_ids(&mut l), [id(2), id(3)]);
    }

    #[test]
    fn an_inbox_message_already_sent_is_not_sent_twice_and_its_ack_goes_to_redis() {
        let mut l = Ledger::new(1 << 20);
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Send);
        l.wrote_inbox(id(1));
        assert!(l.has_from_inbox(&id(1)));
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Had);
        assert!(l.awaits_ack(&id(1)));
        assert!(l.acked(&id(1)).inbox, "an inbox message is acked in Redis");
        assert!(!l.awaits_ack(&id(1)));
        assert!(
            !l.acked(&id(1)).inbox,
            "a repeated ack does not go to Redis again"
        );
        assert_eq!(
            l.inbox_copy(&id(1)),
            InboxCopy::Acked,
            "a copy still in Redis is removed, not sent again"
        );
        assert!(
            unacked_ids(&mut l).is_empty(),
            "inbox messages are not tracked as unacked"
        );
    }

    #[test]
    fn a_live_message_that_comes_back_live_or_through_the_inbox_is_recognised() {
        let mut l = Ledger::new(1 << 20);
        // Written live, not acked yet: the stored copy is not sent, and stays in Redis until
        // the client acks.
        l.wrote_live(entry(1)).expect("room");
        assert_eq!(
            l.live_copy(&id(1), entry(1).source.as_ref()),
            LiveCopy::Unacked,
            "a second live copy is not written"
        );
        assert_eq!(l.inbox_copy(&id(1)), InboxCopy::Had);
        assert!(l.has_from_inbox(&id(1)));
        let acked = l.acked(&id(1));
        assert!(
            acked.live.is_some() && acked.inbox,
            "both: tell the sender, clean Redis"
        );
        // Written live and acked before the copy came: the copy is removed in Redis.
        l.wrote_live(entry(2)).expect("room");
        assert!(l.acked(&id(2)).live.is_some());
        assert_eq!(
            l.live_copy(&id(2), None),
            LiveCopy::Acked,
            "still recognised after the ack"
        );
        assert_eq!(l.inbox_copy(&id(2)), InboxCopy::Acked);
        assert_eq!(l.inbox_copy(&id(2)), InboxCopy::Had, "and only once");
        assert_eq!(
            l.sender_of(&id(2)).map(|u| u.to_string()),
            Some("alice".into())
        );
    }

    #[test]
    fn only_the_recent_live_messages_are_remembered() {
        let mut l = Ledger::new(1 << 30);
        for n in 0..=RECENT_IDS {
            l.wrote_live(entry(n)).expect("room");
            l.acked(&id(n));
        }
        assert_eq!(l.live_copy(&id(0), None), LiveCopy::New, "forgotten");
        assert_eq!(l.sender_of(&id(0)), None);
        assert_eq!(l.inbox_copy(&id(0)), InboxCopy::Send);
        assert_eq!(l.inbox_copy(&id(RECENT_IDS)), InboxCopy::Acked);
    }

    fn from_node(node: &str) -> Source {
        Source {
            from: UserId::parse("alice").expect("valid"),
            holder: Some(crate::ids::NodeId::parse(node).expect("valid")),
        }
    }

    #[test]
    fn a_copy_sent_again_from_elsewhere_is_answered_by_the_one_ack() {
        let mut l = Ledger::new(1 << 30);
        let first = Unacked {
            source: Some(from_node("node1")),
            ..entry(1)
        };
        l.wrote_live(first).expect("room");
        let again = from_node("node3");
        for _ in 0..3 {
            assert_eq!(l.live_copy(&id(1), Some(&again)), LiveCopy::Unacked);
        }
        assert_eq!(
            l.live_copy(&id(1), Some(&from_node("node1"))),
            LiveCopy::Unacked,
            "the first copy's own source is not noted twice"
        );
        assert_eq!(l.live_copy(&id(2), Some(&again)), LiveCopy::New);
        let acked = l.acked(&id(1));
        assert_eq!(acked.live, Some(Some(from_node("node1"))));
        assert_eq!(acked.also, vec![again.clone()], "noted once");
        assert_eq!(l.live_copy(&id(1), Some(&again)), LiveCopy::Acked);
        assert!(l.acked(&id(1)).also.is_empty(), "answered once");
    }

    #[test]
    fn a_connection_that_ends_hands_back_every_copy_of_what_it_did_not_ack() {
        let mut l = Ledger::new(1 << 30);
        l.wrote_live(entry(1)).expect("room");
        l.wrote_live(entry(2)).expect("room");
        l.live_copy(&id(1), Some(&from_node("node2")));
        let left = l.take_unacked();
        let got: Vec<(MsgId, Option<Source>)> =
            left.into_iter().map(|u| (u.id, u.source)).collect();
        assert_eq!(
            got,
            vec![
                (id(1), entry(1).source),
                (id(1), Some(from_node("node2"))),
                (id(2), entry(2).source),
            ]
        );
        assert!(l.take_unacked().is_empty());
    }
}
