//! The outbox: every send the app made that is not yet known to be safe. A send is safe once it
//! was acked `stored` (it is in the recipient's inbox in Redis), or acked `delivered` and then
//! confirmed by a `received`, `read` or `stored` receipt; a non-retryable rejection ends it too
//! (a resend refused for a quota or a full inbox is retried: see [`RETRYABLE_RESEND`]).
//! Until then it stays here, and after a reconnect it is written again with its `cid`, so that
//! a message only the sender's client still holds (the node holding both ends died) is not lost:
//! the same `cid` gives the same `id`, and the recipient's client drops a copy it already has.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::oneshot;

use super::seen::SeenIds;
use crate::error::SendError;
use crate::frame::{Ack, AckStatus, ClientFrame, Receipt};

/// Rejections worth trying again later instead of reporting: the node was busy or leaving.
const RETRYABLE: [&str; 3] = ["rate_limited", "draining", "unavailable"];

/// Rejections that pass with time (a sender's quota per minute, a full inbox being read): a
/// resend refused for one of them is tried again. A first send refused so is the app's answer.
const RETRYABLE_RESEND: [&str; 2] = ["quota_exceeded", "inbox_full"];

/// Where a send is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// To be written (first time, or again after a reconnect or a retryable rejection) once
    /// `not_before` passed.
    Unsent { not_before: Option<Instant> },
    /// Written on the current connection, no ack yet.
    Written,
    /// Acked `delivered`, waiting for a receipt.
    Delivered,
}

#[derive(Debug)]
struct Entry {
    cid: String,
    to: String,
    body: Value,
    stage: Stage,
    /// The app's [`crate::PendingAck`], answered by the first final ack.
    waiter: Option<oneshot::Sender<Result<Ack, SendError>>>,
    /// How many times it was written (more than once: resent after a reconnect or a refusal).
    written: u32,
}

/// Bounded: [`Outbox::push`] refuses a send past `capacity` with [`SendError::OutboxFull`];
/// nothing already in it is ever dropped to make room.
#[derive(Debug)]
pub(crate) struct Outbox {
    capacity: usize,
    /// In send order, so that resends go out in the order the app sent.
    entries: BTreeMap<u64, Entry>,
    by_cid: HashMap<String, u64>,
    /// Message ids (from `delivered` acks) of entries waiting for a receipt.
    by_id: HashMap<String, u64>,
    /// Receipts that came before their send's ack (the recipient's ack can overtake it), so
    /// that the ack then settles the send at once. Bounded like the outbox; the oldest goes.
    early: SeenIds,
    next: u64,
    /// Prefix of generated cids: random per client, so that two clients of one user (or one
    /// client restarted) never reuse a cid.
    prefix: String,
}

impl Outbox {
    pub(crate) fn new(capacity: usize, prefix: String) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: BTreeMap::new(),
            by_cid: HashMap::new(),
            by_id: HashMap::new(),
            early: SeenIds::new(capacity.max(1)),
            next: 0,
            prefix,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes a send; `cid` is generated when the app gave none.
    pub(crate) fn push(
        &mut self,
        to: String,
        body: Value,
        cid: Option<String>,
    ) -> Result<(String, oneshot::Receiver<Result<Ack, SendError>>), SendError> {
        if self.entries.len() >= self.capacity {
            return Err(SendError::OutboxFull {
                capacity: self.capacity,
            });
        }
        self.next += 1;
        let seq = self.next;
        let cid = match cid {
            Some(c) if !valid_cid(&c) => return Err(SendError::BadCid(c)),
            Some(c) if self.by_cid.contains_key(&c) => return Err(SendError::DuplicateCid(c)),
            Some(c) => c,
            None => format!("{}.{seq}", self.prefix),
        };
        let (tx, rx) = oneshot::channel();
        self.by_cid.insert(cid.clone(), seq);
        self.entries.insert(
            seq,
            Entry {
                cid: cid.clone(),
                to,
                body,
                stage: Stage::Unsent { not_before: None },
                waiter: Some(tx),
                written: 0,
            },
        );
        Ok((cid, rx))
    }

    /// The sends due to be written now, as frames (`ref` = `cid`), marked written.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<ClientFrame> {
        let mut out = Vec::new();
        for e in self.entries.values_mut() {
            if let Stage::Unsent { not_before } = e.stage
                && not_before.is_none_or(|t| t <= now)
            {
                e.stage = Stage::Written;
                e.written += 1;
                out.push(ClientFrame::Send {
                    to: e.to.clone(),
                    reference: Some(e.cid.clone()),
                    cid: Some(e.cid.clone()),
                    body: e.body.clone(),
                });
            }
        }
        out
    }

    /// Whether a retryable send waits for its time.
    pub(crate) fn has_waiting(&self) -> bool {
        self.entries.values().any(|e| {
            matches!(
                e.stage,
                Stage::Unsent {
                    not_before: Some(_)
                }
            )
        })
    }

    /// A new connection: everything not confirmed is to be written again (no ack yet, or acked
    /// `delivered` with no receipt: the node that held it may be the one that died).
    pub(crate) fn reconnected(&mut self) {
        for e in self.entries.values_mut() {
            e.stage = Stage::Unsent { not_before: None };
        }
        self.by_id.clear();
    }

    /// An ack from the server. `retry_at`: when a retryable rejection is written again.
    pub(crate) fn acked(&mut self, ack: &Ack, retry_at: Instant) {
        let Some(&seq) = ack.reference.as_ref().and_then(|r| self.by_cid.get(r)) else {
            return; // a second ack of a send already confirmed, or not one of ours
        };
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        match ack.status {
            AckStatus::Delivered => {
                e.stage = Stage::Delivered;
                answer(e, ack);
                if let Some(id) = &ack.id {
                    if self.early.contains(id) {
                        self.remove(seq);
                    } else {
                        self.by_id.insert(id.clone(), seq);
                    }
                }
            }
            // Retried: a refusal that passes, or one that passes with time when the send is
            // this client's own resend (the app has had its answer, or its first try got none:
            // the node that had it died). Ending those would drop the only copy unannounced.
            AckStatus::Rejected
                if ack.error.as_ref().is_some_and(|err| {
                    let code = err.code.as_str();
                    RETRYABLE.contains(&code)
                        || ((e.waiter.is_none() || e.written > 1)
                            && RETRYABLE_RESEND.contains(&code))
                }) =>
            {
                e.stage = Stage::Unsent {
                    not_before: Some(retry_at),
                };
            }
            AckStatus::Stored | AckStatus::Rejected => {
                answer(e, ack);
                self.remove(seq);
            }
        }
    }

    /// A receipt: any of them confirms a `delivered` send.
    pub(crate) fn receipt(&mut self, r: &Receipt) {
        match self.by_id.get(&r.id).copied() {
            Some(seq) => self.remove(seq),
            None => {
                self.early.insert(&r.id);
            }
        }
    }

    /// Every send still here fails with `why` (the client is closing).
    pub(crate) fn fail_all(&mut self, why: SendError) {
        for (_, mut e) in std::mem::take(&mut self.entries) {
            if let Some(w) = e.waiter.take() {
                let _ = w.send(Err(why.clone()));
            }
        }
        self.by_cid.clear();
        self.by_id.clear();
    }

    fn remove(&mut self, seq: u64) {
        if let Some(e) = self.entries.remove(&seq) {
            self.by_cid.remove(&e.cid);
        }
        self.by_id.retain(|_, s| *s != seq);
    }
}

fn answer(e: &mut Entry, ack: &Ack) {
    if let Some(w) = e.waiter.take() {
        // The app may have dropped its PendingAck: nothing to tell then.
        let _ = w.send(Ok(ack.clone()));
    }
}

/// 1 to 64 bytes of `[A-Za-z0-9_.:-]` (docs/protocol.md, cid).
pub(crate) fn valid_cid(c: &str) -> bool {
    (1..=64).contains(&c.len())
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorBody, ReceiptStatus};
    use serde_json::json;

    fn ack(cid: &str, status: AckStatus, id: &str, code: Option<&str>) -> Ack {
        Ack {
            reference: Some(cid.into()),
            id: Some(id.into()),
            status,
            devices: 1,
            error: code.map(|c| ErrorBody {
                code: c.into(),
                message: String::new(),
            }),
        }
    }

    /// The status the app was answered with (panics if it was not answered).
    fn answered(w: &mut oneshot::Receiver<Result<Ack, SendError>>) -> AckStatus {
        w.try_recv().expect("answered").expect("ack").status
    }

    fn receipt(id: &str) -> Receipt {
        Receipt {
            id: id.into(),
            to: "bob".into(),
            status: ReceiptStatus::Received,
            device: None,
        }
    }

    #[test]
    fn a_send_stays_until_stored_or_confirmed_and_is_resent_after_a_reconnect() {
        let now = Instant::now();
        let mut o = Outbox::new(10, "p".into());
        let (c1, mut w1) = o.push("bob".into(), json!(1), None).expect("room");
        let (c2, _w2) = o.push("bob".into(), json!(2), None).expect("room");
        let (c3, _w3) = o.push("bob".into(), json!(3), None).expect("room");
        assert_eq!((c1.as_str(), c2.as_str()), ("p.1", "p.2"));
        assert_eq!(o.due(now).len(), 3);
        assert!(o.due(now).is_empty(), "written once per connection");

        o.acked(&ack(&c1, AckStatus::Delivered, "m1", None), now);
        assert_eq!(
            w1.try_recv().expect("answered").expect("ok").id.as_deref(),
            Some("m1")
        );
        o.acked(&ack(&c2, AckStatus::Stored, "m2", None), now);
        assert_eq!(
            o.len(),
            2,
            "stored is safe; delivered waits for its receipt"
        );

        // The node died: c1 (delivered, no receipt) and c3 (no ack) go out again, in order.
        o.reconnected();
        let again: Vec<Option<String>> = o
            .due(now)
            .into_iter()
            .map(|f| match f {
                ClientFrame::Send { cid, .. } => cid,
                _ => None,
            })
            .collect();
        assert_eq!(again, [Some(c1.clone()), Some(c3.clone())]);
        o.acked(&ack(&c1, AckStatus::Delivered, "m1", None), now);
        o.receipt(&receipt("m1"));
        // A receipt that overtakes its ack settles the send when the ack comes.
        o.receipt(&receipt("m3"));
        o.acked(&ack(&c3, AckStatus::Delivered, "m3", None), now);
        assert_eq!(o.len(), 0);
    }

    #[test]
    fn a_full_outbox_refuses_and_keeps_what_it_has() {
        let mut o = Outbox::new(2, "p".into());
        o.push("a".into(), json!(1), None).expect("room");
        o.push("a".into(), json!(2), None).expect("room");
        assert_eq!(
            o.push("a".into(), json!(3), None).err(),
            Some(SendError::OutboxFull { capacity: 2 })
        );
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn cids_are_checked_and_unique() {
        let mut o = Outbox::new(5, "p".into());
        assert_eq!(
            o.push("a".into(), json!(1), Some("a b".into())).err(),
            Some(SendError::BadCid("a b".into()))
        );
        assert!(o.push("a".into(), json!(1), Some("".into())).is_err());
        assert!(o.push("a".into(), json!(1), Some("x".repeat(65))).is_err());
        o.push("a".into(), json!(1), Some("k-1".into()))
            .expect("valid");
        assert_eq!(
            o.push("a".into(), json!(1), Some("k-1".into())).err(),
            Some(SendError::DuplicateCid("k-1".into()))
        );
    }

    #[test]
    fn retryable_rejections_wait_and_go_again_others_end_the_send() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut o = Outbox::new(5, "p".into());
        let (c1, mut w1) = o.push("a".into(), json!(1), None).expect("room");
        let (c2, mut w2) = o.push("a".into(), json!(2), None).expect("room");
        o.due(now);
        o.acked(
            &ack(&c1, AckStatus::Rejected, "", Some("rate_limited")),
            later,
        );
        o.acked(
            &ack(&c2, AckStatus::Rejected, "", Some("bad_recipient")),
            later,
        );
        assert!(w1.try_recv().is_err(), "not answered yet");
        assert_eq!(answered(&mut w2), AckStatus::Rejected);
        assert!(o.has_waiting());
        assert!(o.due(now).is_empty());
        assert_eq!(o.due(later).len(), 1);
    }

    #[test]
    fn a_resend_refused_for_a_quota_is_tried_again_a_first_send_is_answered() {
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        let mut o = Outbox::new(5, "p".into());
        let (first, mut w_first) = o.push("a".into(), json!(0), None).expect("room");
        let (acked, mut w_acked) = o.push("a".into(), json!(1), None).expect("room");
        let (unanswered, mut w_unanswered) = o.push("a".into(), json!(2), None).expect("room");
        assert_eq!(o.due(now).len(), 3);
        // A first send over the quota: the app's answer, not resent.
        o.acked(
            &ack(&first, AckStatus::Rejected, "", Some("quota_exceeded")),
            later,
        );
        assert_eq!(answered(&mut w_first), AckStatus::Rejected);
        // One acked delivered, one with no answer; then the connection dies.
        o.acked(&ack(&acked, AckStatus::Delivered, "m1", None), later);
        assert_eq!(answered(&mut w_acked), AckStatus::Delivered);
        o.reconnected();
        assert_eq!(o.due(now).len(), 2, "both resent");
        // Both resends refused for the quota (or a full inbox): both wait and go again.
        o.acked(
            &ack(&acked, AckStatus::Rejected, "", Some("quota_exceeded")),
            later,
        );
        o.acked(
            &ack(&unanswered, AckStatus::Rejected, "", Some("inbox_full")),
            later,
        );
        assert!(w_unanswered.try_recv().is_err(), "not answered yet");
        assert_eq!(o.len(), 2);
        assert!(o.due(now).is_empty());
        assert_eq!(o.due(later).len(), 2);
        o.acked(&ack(&acked, AckStatus::Stored, "m1", None), later);
        o.acked(&ack(&unanswered, AckStatus::Stored, "m2", None), later);
        assert_eq!(
            w_unanswered
                .try_recv()
                .expect("answered")
                .expect("ack")
                .status,
            AckStatus::Stored
        );
        assert_eq!(o.len(), 0);
    }
}
