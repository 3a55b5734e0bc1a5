//! The accounting of one sender's stream to one recipient: what each send was acked, what each
//! connection of the recipient got, and the promise checked over it (0 lost of what was acked
//! `delivered` or `stored`, no id twice on one connection), with order breaks reported.
//!
//! A send is numbered by its place in the stream (`n`, which its body carries), so that what a
//! connection got can be put back in send order even for a message whose ack never came.

use std::collections::HashSet;

use serde_json::Value;

#[derive(Debug, Default)]
pub struct StreamLedger {
    /// The ack of send `n`, `None` while (or if ever) unseen.
    acks: Vec<Option<Value>>,
    /// What each connection of the recipient got from this sender, in arrival order: (id, n).
    received: Vec<Vec<(String, u64)>>,
}

impl StreamLedger {
    /// Send number `n` went out (numbers are given in order, from 0).
    pub fn sent(&mut self, n: usize) {
        if self.acks.len() <= n {
            self.acks.resize(n + 1, None);
        }
    }

    pub fn sent_count(&self) -> usize {
        self.acks.len()
    }

    /// The ack of send `n`.
    pub fn ack(&mut self, n: usize, ack: Value) {
        self.sent(n);
        self.acks[n] = Some(ack);
    }

    pub fn acked(&self, n: usize) -> Option<&Value> {
        self.acks.get(n).and_then(Option::as_ref)
    }

    /// How many sends have an ack.
    pub fn acked_count(&self) -> usize {
        self.acks.iter().flatten().count()
    }

    /// Ids acked with `status`.
    pub fn ids(&self, status: &str) -> HashSet<String> {
        self.acks
            .iter()
            .flatten()
            .filter(|a| a["status"] == status)
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Ids the sender was told are kept: acked `delivered` or `stored`.
    pub fn promised(&self) -> HashSet<String> {
        let mut all = self.ids("delivered");
        all.extend(self.ids("stored"));
        all
    }

    /// Sends whose ack never came (the sender cannot know what became of them).
    pub fn unknown(&self) -> usize {
        self.acks.iter().filter(|a| a.is_none()).count()
    }

    /// The `message` frames of one connection of the recipient (other frames, other senders'
    /// messages are left out; `sender` is the `from` of this stream).
    pub fn connection(&mut self, sender: &str, frames: &[Value]) {
        self.received.push(
            frames
                .iter()
                .filter(|f| f["type"] == "message" && f["from"] == sender)
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or_default().to_owned(),
                        f["body"]["n"].as_u64().unwrap_or(u64::MAX),
                    )
                })
                .collect(),
        );
    }

    pub fn received_unique(&self) -> HashSet<&str> {
        self.received
            .iter()
            .flatten()
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Acked delivered or stored, never received on any connection.
    pub fn lost(&self) -> usize {
        let got = self.received_unique();
        self.promised()
            .iter()
            .filter(|id| !got.contains(id.as_str()))
            .count()
    }

    /// Received, though their ack never came (they were kept, the sender could not know).
    pub fn unknown_received(&self) -> usize {
        let acked: HashSet<String> = self
            .acks
            .iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect();
        self.received_unique()
            .iter()
            .filter(|id| !acked.contains(**id))
            .count()
    }

    /// Copies of one id on one connection, over all connections.
    pub fn duplicates(&self) -> usize {
        self.received
            .iter()
            .map(|c| c.len() - c.iter().map(|(id, _)| id).collect::<HashSet<_>>().len())
            .sum()
    }

    /// Messages that arrived on a connection after one sent later had arrived there, per
    /// connection.
    pub fn order_breaks(&self) -> Vec<usize> {
        self.received
            .iter()
            .map(|c| {
                let mut highest: Option<u64> = None;
                let mut breaks = 0;
                for &(_, n) in c {
                    if highest.is_some_and(|h| n < h) {
                        breaks += 1;
                    }
                    highest = highest.max(Some(n));
                }
                breaks
            })
            .collect()
    }

    /// Where the order broke on each connection: (n that came late, highest n before it).
    pub fn order_break_examples(&self, most: usize) -> Vec<(usize, u64, u64)> {
        let mut out = Vec::new();
        for (i, c) in self.received.iter().enumerate() {
            let mut highest: Option<u64> = None;
            for &(_, n) in c {
                match highest {
                    Some(h) if n < h && out.len() < most => out.push((i, n, h)),
                    _ => {}
                }
                highest = highest.max(Some(n));
            }
        }
        out
    }

    /// Ids per connection.
    pub fn per_connection(&self) -> Vec<usize> {
        self.received.iter().map(Vec::len).collect()
    }

    pub fn summary(&self) -> String {
        let rejected = self
            .acks
            .iter()
            .flatten()
            .filter(|a| a["status"] == "rejected")
            .count();
        format!(
            "sent {}, delivered {}, stored {}, rejected {rejected}, unknown {} (of which received \
             {}), received unique {} (per connection {:?}), lost {}, duplicates {}, order breaks \
             per connection {:?}",
            self.sent_count(),
            self.ids("delivered").len(),
            self.ids("stored").len(),
            self.unknown(),
            self.unknown_received(),
            self.received_unique().len(),
            self.per_connection(),
            self.lost(),
            self.duplicates(),
            self.order_breaks(),
        )
    }

    /// The promise: nothing acked delivered or stored is lost, no id twice on one connection.
    pub fn assert_kept(&self, scenario: &str) {
        assert_eq!(self.lost(), 0, "{scenario}: {}", self.summary());
        assert_eq!(self.duplicates(), 0, "{scenario}: {}", self.summary());
    }
}
