//! Sending a node's clients elsewhere, in waves: a drain, and a node that lost its lease
//! (cut off from Redis, see `upkeep::lease_watch`).

use std::time::Duration;

use crate::sessions::Control;
use crate::state::NodeState;

/// Clients are handed over in this many waves, so that they do not all reconnect at once.
const WAVES: usize = 10;
/// Pause between waves.
const WAVE_PAUSE: Duration = Duration::from_millis(200);

/// Where the clients are sent: a `reconnect` frame to the node's URL, then close 1001; with no
/// node to name, close 1001 (clients find one through `/gateway`).
#[derive(Debug, Clone)]
pub(crate) enum Away {
    /// The least-loaded other node, asked of Redis before each wave.
    ToAnotherNode,
    /// This URL (a node that said over the mesh that it takes clients).
    To(String),
}

/// Sends every client of this node away, in waves, with `reason` in the frame or close.
pub(crate) async fn hand_over(state: &NodeState, away: Away, reason: &str) {
    let clients = state.sessions.snapshot();
    let per_wave = clients.len().div_ceil(WAVES).max(1);
    for (i, wave) in clients.chunks(per_wave).enumerate() {
        if i > 0 {
            tokio::time::sleep(WAVE_PAUSE).await;
        }
        let target = match &away {
            Away::ToAnotherNode => match state.pick_node(Some(&state.node)).await {
                Ok(t) => t.map(|(_, url)| url),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot find a node to send clients to");
                    None
                }
            },
            Away::To(url) => Some(url.clone()),
        };
        for (conn, _) in wave {
            let ctl = match &target {
                Some(url) => Control::Reconnect {
                    url: url.clone(),
                    reason: reason.to_owned(),
                },
                None => Control::Close {
                    code: crate::error::close::GOING_AWAY,
                    reason: reason.to_owned(),
                },
            };
            state.sessions.control(conn, ctl);
        }
        tracing::info!(wave = i + 1, clients = wave.len(), "hand-over wave sent");
    }
}
