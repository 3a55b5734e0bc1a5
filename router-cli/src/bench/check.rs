//! Checking every message: what one connection received (duplicates, order per sender), and at
//! the end which messages were acked `delivered` but never arrived.

use std::collections::{HashMap, HashSet};

/// A message's identity in the bench: its sender's index and the sender's sequence number.
/// Unlike the server's `id`, it also catches a message delivered twice under two ids.
fn key(sender: u32, n: u32) -> u64 {
    (u64::from(sender) << 32) | u64::from(n)
}

/// What one recipient connection saw.
#[derive(Default)]
pub struct Received {
    seen: HashSet<u64>,
    /// Highest `n` seen per sender: messages of one sender must arrive in increasing `n`.
    last_n: HashMap<u32, u32>,
    pub duplicates: u64,
    pub out_of_order: u64,
}

/// The verdict on one received message.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    New,
    /// Out of order but not seen before.
    Late,
    Duplicate,
}

impl Received {
    pub fn record(&mut self, sender: u32, n: u32) -> Receipt {
        if !self.seen.insert(key(sender, n)) {
            self.duplicates += 1;
            return Receipt::Duplicate;
        }
        let last = self.last_n.entry(sender).or_insert(0);
        if n < *last {
            self.out_of_order += 1;
            return Receipt::Late;
        }
        *last = n;
        Receipt::New
    }

    pub fn contains(&self, sender: u32, n: u32) -> bool {
        self.seen.contains(&key(sender, n))
    }
}

/// Lost messages: acked `delivered` to sender `i` (as `(recipient, n)` in `delivered[i]`) but not
/// in the recipient's `received`. Returns the count and a few examples.
pub fn lost(delivered: &[Vec<(u32, u32)>], received: &[Received]) -> (u64, Vec<String>) {
    let mut count = 0;
    let mut samples = Vec::new();
    for (sender, acks) in delivered.iter().enumerate() {
        for &(to, n) in acks {
            let arrived = received
                .get(to as usize)
                .is_some_and(|r| r.contains(sender as u32, n));
            if !arrived {
                count += 1;
                if samples.len() < 5 {
                    samples.push(format!(
                        "user {sender} -> user {to}, n={n}: acked delivered, never received"
                    ));
                }
            }
        }
    }
    (count, samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_order_are_per_sender() {
        let mut r = Received::default();
        assert_eq!(r.record(1, 1), Receipt::New);
        assert_eq!(r.record(2, 5), Receipt::New);
        assert_eq!(r.record(1, 3), Receipt::New);
        assert_eq!(r.record(1, 2), Receipt::Late);
        assert_eq!(r.record(1, 3), Receipt::Duplicate);
        assert_eq!(r.record(2, 6), Receipt::New);
        assert_eq!((r.duplicates, r.out_of_order), (1, 1));
    }

    #[test]
    fn lost_counts_delivered_acks_without_a_receipt() {
        let mut to0 = Received::default();
        to0.record(1, 1);
        let received = vec![to0, Received::default()];
        // Sender 1 had two messages acked delivered to user 0; one arrived.
        let delivered = vec![Vec::new(), vec![(0, 1), (0, 2)]];
        let (n, samples) = lost(&delivered, &received);
        assert_eq!(n, 1);
        assert!(samples[0].contains("n=2"), "{samples:?}");
    }
}
