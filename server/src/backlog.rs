//! Messages acked `delivered` that must go to an inbox while Redis cannot be reached for longer
//! than a blip (a node cut off from Redis closed its clients, or a peer broke while Redis was
//! away): kept here, in memory, and stored by the keeper once Redis answers again. Without it
//! they were logged and dropped after a few seconds of retries.
//!
//! Bound: `max_bytes` of frames; past it a message is refused (the caller counts it in
//! `wsroute_unacked_dropped_total` and logs it as an error). What comes here is already bounded
//! by the connections' unacked budgets and the node's holds, so the bound only matters for a node
//! that stays cut off while taking more and more work, which it does not (it stops taking clients).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytestring::ByteString;

use crate::ids::{MsgId, NodeId, UserId};

/// Who is told once a message is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tell {
    /// The peer holding it: a `stored` confirmation (it then stops holding it).
    Peer(NodeId),
    /// The sender's live connections: a `stored` receipt.
    Sender(UserId),
    Nobody,
}

/// One message waiting for Redis.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub to: UserId,
    pub id: MsgId,
    pub frame: ByteString,
    pub tell: Tell,
}

impl Waiting {
    fn cost(&self) -> usize {
        self.frame.len() + 96
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Waiting>,
    bytes: usize,
}

#[derive(Debug)]
pub struct Backlog {
    queue: Mutex<Queue>,
    max_bytes: usize,
}

impl Backlog {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: Mutex::default(),
            max_bytes,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; if something did, the queue is still whole.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `w` until Redis answers; gives it back when over the bound.
    pub fn push(&self, w: Waiting) -> Result<(), Waiting> {
        let mut q = self.queue();
        if q.bytes + w.cost() > self.max_bytes {
            return Err(w);
        }
        q.bytes += w.cost();
        q.items.push_back(w);
        Ok(())
    }

    /// Everything waiting, oldest first (the keeper puts back what it could not store).
    pub fn take(&self) -> Vec<Waiting> {
        let mut q = self.queue();
        q.bytes = 0;
        q.items.drain(..).collect()
    }

    /// Puts back, ahead of anything that came meanwhile, what could not be stored yet (the
    /// bound is not checked again: these were accepted already).
    pub fn put_back(&self, items: Vec<Waiting>) {
        let mut q = self.queue();
        for w in items.into_iter().rev() {
            q.bytes += w.cost();
            q.items.push_front(w);
        }
    }

    pub fn len(&self) -> usize {
        self.queue().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue().items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(id: &str, bytes: usize) -> Waiting {
        Waiting {
            to: UserId::parse("bob").expect("valid"),
            id: MsgId::parse(id).expect("valid"),
            frame: "x".repeat(bytes).into(),
            tell: Tell::Nobody,
        }
    }

    #[test]
    fn keeps_order_across_a_put_back_and_refuses_past_its_bound() {
        let b = Backlog::new(3 * (100 + 96));
        for id in ["a1", "a2", "a3"] {
            b.push(waiting(id, 100)).expect("within the bound");
        }
        assert!(b.push(waiting("a4", 100)).is_err(), "over the bound");
        let taken = b.take();
        assert!(b.is_empty());
        b.push(waiting("a5", 100)).expect("room again");
        b.put_back(taken[1..].to_vec());
        let ids: Vec<String> = b.take().iter().map(|w| w.id.as_str().to_owned()).collect();
        assert_eq!(ids, ["a2", "a3", "a5"]);
    }
}
