//! The keeper: one task that stores what a failure must not take (held messages whose peer
//! broke, timed out or went over budget) and tells senders what became of their messages
//! (`receipt` frames). It runs off the client and mesh paths, so a slow Redis never holds a
//! session or a peer worker up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backlog::{Tell, Waiting};
use crate::confirm::{ConfirmStatus, Confirmation};
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
                flush_backlog(&state).await;
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
    flush_backlog(&state).await;
    if !state.backlog.is_empty() {
        tracing::error!(
            messages = state.backlog.len(),
            "stopping while Redis is away: messages waiting for it are lost (peers holding them store them)"
        );
        state
            .metrics
            .unacked_dropped
            .inc_by(state.backlog.len() as u64);
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
            elsewhere_only,
        } => {
            let text = frame::receipt(id.as_str(), to.as_str(), status.as_str(), device.as_deref());
            if elsewhere_only {
                state
                    .delivery
                    .notify_elsewhere(&user, &id, text.into())
                    .await;
            } else {
                state.delivery.notify(&user, &id, text.into()).await;
            }
        }
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

/// Stores held messages in their recipients' inboxes, announces them, and tells each sender.
async fn store(state: &Arc<NodeState>, held: Vec<(MsgId, Held)>) {
    let mut by_user: HashMap<UserId, Vec<Waiting>> = HashMap::new();
    for (id, h) in held {
        by_user.entry(h.to.clone()).or_default().push(Waiting {
            to: h.to,
            id,
            frame: h.frame,
            tell: Tell::Sender(h.from),
        });
    }
    for (to, messages) in by_user {
        keep(state, &to, messages, KEEP_WITHIN, "hold").await;
    }
}

/// Stores `messages` (all for `to`) in the inbox, retrying across a Redis blip for `within`;
/// what Redis did not take waits in the node's backlog, stored when Redis answers again. What
/// was stored is announced, and whoever waits to hear about it is told (`stored`). `kind`
/// labels `wsroute_kept_total`.
pub async fn keep(
    state: &NodeState,
    to: &UserId,
    messages: Vec<Waiting>,
    within: Duration,
    kind: &str,
) {
    // The node lost its lease to a cut: Redis is away, do not wait out its timeouts.
    if state.is_cut_off() {
        for w in messages {
            wait_for_redis(state, w);
        }
        return;
    }
    // Messages already wait for Redis: one try, no retries.
    let within = if state.backlog.is_empty() {
        within
    } else {
        Duration::ZERO
    };
    let frames: Vec<(MsgId, &str)> = messages
        .iter()
        .map(|w| (w.id.clone(), w.frame.as_ref()))
        .collect();
    let (kept, later) = state.inbox.keep(to, &frames, within).await;
    drop(frames);
    state
        .metrics
        .kept
        .with_label_values(&[kind])
        .inc_by(kept.len() as u64);
    let kept: HashSet<MsgId> = kept.into_iter().collect();
    let later: HashSet<MsgId> = later.into_iter().collect();
    let mut told = Vec::new();
    for w in messages {
        if kept.contains(&w.id) {
            told.push(w);
        } else if later.contains(&w.id) {
            wait_for_redis(state, w);
        }
    }
    if told.is_empty() {
        return;
    }
    announce_inbox(state, to).await;
    for w in told {
        tell(state, w);
    }
}

/// Keeps a message Redis cannot take now in the backlog; past its bound it is lost, loudly.
fn wait_for_redis(state: &NodeState, w: Waiting) {
    if let Err(w) = state.backlog.push(w) {
        tracing::error!(user = %w.to, msg_id = %w.id, "cannot keep a delivered message (Redis away, backlog full): lost");
        state.metrics.unacked_dropped.inc();
    }
}

/// Tells whoever waits to hear that `w` is now in the inbox.
fn tell(state: &NodeState, w: Waiting) {
    match w.tell {
        Tell::Peer(peer) => {
            state.confirms.send(
                &peer,
                Confirmation {
                    id: w.id,
                    status: ConfirmStatus::Stored,
                    device: None,
                },
            );
        }
        Tell::Sender(from) => {
            state
                .holds
                .receipt(&from, w.id, &w.to, ReceiptStatus::Stored, None);
        }
        Tell::Nobody => {}
    }
}

/// Stores what waits in the backlog, if Redis answers: one try per user, and the first failure
/// puts everything not stored back for the next sweep.
async fn flush_backlog(state: &NodeState) {
    if state.backlog.is_empty() {
        return;
    }
    let waiting = state.backlog.take();
    let count = waiting.len();
    let mut by_user: Vec<(UserId, Vec<Waiting>)> = Vec::new();
    for w in waiting {
        match by_user.iter_mut().find(|(u, _)| *u == w.to) {
            Some((_, list)) => list.push(w),
            None => by_user.push((w.to.clone(), vec![w])),
        }
    }
    let mut users = by_user.into_iter();
    for (to, messages) in users.by_ref() {
        keep(state, &to, messages, Duration::ZERO, "backlog").await;
        if !state.backlog.is_empty() {
            // Redis is still away: the rest waits, in order, behind what just failed.
            let rest: Vec<Waiting> = users.flat_map(|(_, m)| m).collect();
            let mut all = state.backlog.take();
            all.extend(rest);
            state.backlog.put_back(all);
            tracing::debug!(
                waiting = state.backlog.len(),
                "Redis still away; the backlog waits"
            );
            return;
        }
    }
    tracing::info!(
        messages = count,
        "Redis answers again: the messages waiting for it are in the inboxes"
    );
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
