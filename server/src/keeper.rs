//! The keeper: one task that stores what a failure must not take (held messages whose peer
//! broke, timed out or went over budget) and tells senders what became of their messages
//! (`receipt` frames). It runs off the client and mesh paths, so a slow Redis never holds a
//! session or a peer worker up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::holds::{Event, Held, ReceiptStatus};
use crate::ids::{MsgId, UserId};
use crate::route::events::RouteEvent;
use crate::state::NodeState;
use crate::ws::frame;

/// How often held messages are checked for their deadline and the budget.
const SWEEP: Duration = Duration::from_secs(1);

/// How long storing one user's held messages may retry across a Redis blip.
const KEEP_WITHIN: Duration = Duration::from_secs(30);

pub async fn run(state: Arc<NodeState>, mut events: mpsc::Receiver<Event>) {
    let mut sweep = tokio::time::interval(SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(e) => handle(&state, e).await,
                None => break,
            },
            _ = sweep.tick() => {
                let before = Instant::now()
                    .checked_sub(state.config.limits.hold_timeout)
                    .unwrap_or_else(Instant::now);
                let due = state.holds.take_due(before);
                if !due.is_empty() {
                    tracing::info!(messages = due.len(), "held messages not confirmed in time (or over budget); storing them");
                    store(&state, due).await;
                }
            }
        }
    }
    // This node stops: what it still holds would die with it, so it goes to the inbox now (a
    // copy at worst: the recipients' connections know the ids they have).
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let left = state.holds.take_due(far);
    if !left.is_empty() {
        tracing::info!(
            messages = left.len(),
            "stopping: storing the messages still held"
        );
        store(&state, left).await;
    }
}

async fn handle(state: &Arc<NodeState>, e: Event) {
    match e {
        Event::Receipt {
            user,
            id,
            to,
            status,
            device,
        } => receipt(state, &user, &id, &to, status, device.as_deref()).await,
        Event::PeerLost(peer) => {
            let held = state.holds.take_peer(&peer);
            if !held.is_empty() {
                tracing::warn!(peer = %peer, messages = held.len(), "mesh stream to a peer broke; storing the messages it held unconfirmed");
                store(state, held).await;
            }
        }
        Event::Unheld(id, held) => store(state, vec![(id, held)]).await,
    }
}

/// Tells `user`'s live connections what became of their message `id` to `to`.
pub async fn receipt(
    state: &NodeState,
    user: &UserId,
    id: &MsgId,
    to: &UserId,
    status: ReceiptStatus,
    device: Option<&str>,
) {
    let text = frame::receipt(id.as_str(), to.as_str(), status.as_str(), device);
    state.delivery.notify(user, id, text.into()).await;
}

/// Stores held messages in their recipients' inboxes, announces them, and tells each sender.
async fn store(state: &Arc<NodeState>, held: Vec<(MsgId, Held)>) {
    let mut by_user: HashMap<UserId, Vec<(MsgId, Held)>> = HashMap::new();
    for (id, h) in held {
        by_user.entry(h.to.clone()).or_default().push((id, h));
    }
    for (to, messages) in by_user {
        let frames: Vec<(MsgId, &str)> = messages
            .iter()
            .map(|(id, h)| (id.clone(), h.frame.as_ref()))
            .collect();
        let (kept, lost) = state.inbox.keep(&to, &frames, KEEP_WITHIN).await;
        state
            .metrics
            .kept
            .with_label_values(&["hold"])
            .inc_by(kept.len() as u64);
        state.metrics.unacked_dropped.inc_by(lost.len() as u64);
        if kept.is_empty() {
            continue;
        }
        announce_inbox(state, &to).await;
        for (id, h) in &messages {
            if kept.contains(id) {
                receipt(state, &h.from, id, &to, ReceiptStatus::Stored, None).await;
            }
        }
    }
}

/// Tells the user's connections, wherever they are, that their inbox changed.
pub async fn announce_inbox(state: &NodeState, user: &UserId) {
    if let Err(e) = state
        .routes
        .publish(&RouteEvent::Inbox(user.clone()).encode())
        .await
    {
        tracing::warn!(%user, error = %e, "cannot announce kept messages; the user gets them on the next inbox event or connect");
    }
}
