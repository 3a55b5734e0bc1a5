//! Handing one message to connections of this node and hearing whether each connection's
//! writer took it: what a send does for its local routes, and what the mesh server does for
//! every item a peer forwards.

use bytestring::ByteString;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::envelope::Outgoing;
use crate::ids::ConnId;
use crate::sessions::{DeliverError, Outbound, Sessions, Source};

/// Frames handed to local connections, waiting to hear whether they were written.
pub struct LocalAttempt {
    waiters: Vec<oneshot::Receiver<bool>>,
    /// Notices queued (counted as written: nobody waits for them).
    queued: u32,
    /// Named connections this node does not hold.
    pub gone: Vec<String>,
}

impl LocalAttempt {
    /// Queues the message's frame on each connection, without waiting. `holder` is the peer
    /// that forwarded it and waits for its confirmation (`None`: sent on this node).
    pub fn start(
        sessions: &Sessions,
        msg: &Outgoing,
        conns: &[ConnId],
        holder: Option<&crate::ids::NodeId>,
    ) -> Self {
        let mut attempt = Self {
            waiters: Vec::with_capacity(conns.len()),
            queued: 0,
            gone: Vec::new(),
        };
        if conns.is_empty() {
            return attempt;
        }
        let source = msg.from.as_ref().map(|from| Source {
            from: from.clone(),
            holder: holder.cloned(),
        });
        for conn in conns {
            let (written, waiter) = oneshot::channel();
            let item = Outbound::Message {
                id: msg.id.clone(),
                frame: msg.frame.clone(),
                from_inbox: false,
                accepted_us: msg.accepted_us,
                written: Some(written),
                source: source.clone(),
            };
            match sessions.deliver(conn, item) {
                Ok(()) => attempt.waiters.push(waiter),
                Err(DeliverError::Gone) => attempt.gone.push(conn.as_str().to_owned()),
                // A slow consumer: not written, but the connection is still there.
                Err(DeliverError::Full) => {
                    tracing::warn!(conn_id = %conn, msg_id = %msg.id, "connection queue full; not delivered there");
                }
            }
        }
        attempt
    }

    /// An attempt that reached no connection (malformed item): all named ones count as gone.
    pub fn gone(conns: Vec<String>) -> Self {
        Self {
            waiters: Vec::new(),
            queued: 0,
            gone: conns,
        }
    }

    /// Queues a notice (a `receipt`) on each connection: nobody waits to hear it was written,
    /// and a full queue simply misses it.
    /// Notices handed to connections' queues by this attempt.
    pub fn notices_queued(&self) -> u32 {
        self.queued
    }

    pub fn notice(sessions: &Sessions, frame: &ByteString, conns: &[ConnId]) -> Self {
        let mut attempt = Self::gone(Vec::new());
        for conn in conns {
            match sessions.notice(conn, frame.clone()) {
                Ok(()) => attempt.queued += 1,
                Err(DeliverError::Gone) => attempt.gone.push(conn.as_str().to_owned()),
                Err(DeliverError::Full) => {}
            }
        }
        attempt
    }

    /// Waits (until `deadline`) for the writers; returns (written count, gone connections).
    pub async fn settle(self, deadline: Instant) -> (u32, Vec<String>) {
        let mut written = self.queued;
        for waiter in self.waiters {
            if let Ok(Ok(true)) = tokio::time::timeout_at(deadline, waiter).await {
                written += 1;
            }
        }
        (written, self.gone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::envelope::tests::env;
    use crate::sessions::Mailbox;
    use crate::sessions::tests::handle;

    /// A table holding bob's connection `c1`, and its mailbox.
    fn one_connection() -> (Sessions, ConnId, Arc<Mailbox>) {
        let sessions = Sessions::default();
        let conn = ConnId::parse("c1").expect("valid");
        let (h, mailbox) = handle("bob", 4);
        sessions.insert(conn.clone(), h);
        (sessions, conn, mailbox)
    }

    #[tokio::test]
    async fn counts_the_writes_and_names_the_connections_not_held() {
        let (sessions, here, mailbox) = one_connection();
        let away = ConnId::parse("c2").expect("valid");
        let attempt = LocalAttempt::start(&sessions, &env().outgoing(), &[here, away], None);
        assert_eq!(attempt.gone, vec!["c2".to_owned()]);
        let Some(Outbound::Message {
            written: Some(written),
            ..
        }) = mailbox.try_message()
        else {
            panic!("the frame waits in the connection's mailbox");
        };
        written.send(true).expect("the attempt waits");
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(attempt.settle(deadline).await, (1, vec!["c2".to_owned()]));
    }

    #[tokio::test]
    async fn a_writer_that_does_not_answer_in_time_did_not_write() {
        let (sessions, conn, _mailbox) = one_connection();
        let attempt = LocalAttempt::start(&sessions, &env().outgoing(), &[conn], None);
        let deadline = Instant::now() + Duration::from_millis(10);
        assert_eq!(attempt.settle(deadline).await, (0, Vec::<String>::new()));
    }
}
