//! One bench user's connection: sends at the plan's pace, reads acks and messages, checks every
//! message and acks it (as a real client does), until the run is over. One task owns the socket,
//! so everything readable at once is handled together and answered with a single write.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use wsroute_client::ConnError;
use wsroute_client::raw::Utf8Bytes;

use super::check::{Receipt, Received};
use super::conn::Ws;
use super::load::{Pace, Plan, Shared};
use super::unix_us;

/// What one user learned, for the final loss check.
#[derive(Default)]
pub struct Ledger {
    /// `(recipient, n)` of each of our sends acked `delivered`.
    pub delivered: Vec<(u32, u32)>,
    pub received: Received,
}

/// A server frame, as much of it as the bench reads. The optional strings are borrowed from
/// the frame (serde copies an `Option<Cow<str>>` every time): ids, refs, statuses and codes never
/// need JSON escapes, and a frame where one had them would be reported as unreadable, not
/// misread.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(rename = "ref", default, borrow)]
    reference: Option<&'a str>,
    #[serde(default, borrow)]
    status: Option<&'a str>,
    #[serde(default, borrow)]
    body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<AckError<'a>>,
    /// On `error` frames.
    #[serde(default, borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct AckError<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// The body every bench message carries.
#[derive(Deserialize)]
struct Body {
    /// Sender index.
    s: u32,
    /// Sender's sequence number, from 1.
    n: u32,
    /// Send time, unix µs.
    t: u64,
}

/// `ref` = `n:recipient:send_time_us`, so an ack needs no lookup on the sending side.
fn parse_ref(r: &str) -> Option<(u32, u32, u64)> {
    let mut parts = r.split(':');
    let n = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let t = parts.next()?.parse().ok()?;
    Some((n, to, t))
}

/// What woke the loop.
enum Event {
    Frame(Result<Utf8Bytes, ConnError>),
    Send,
    Stop,
}

struct User {
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ledger: Ledger,
    rng: StdRng,
    /// Our last sequence number.
    n: u32,
    /// Sends not answered yet (bounded by the plan's window).
    in_flight: usize,
    /// Frames to write at the end of this turn, in one flush.
    outbox: Vec<String>,
}

pub async fn run(
    i: usize,
    mut ws: Ws,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    done: CancellationToken,
) -> Ledger {
    let rng = StdRng::seed_from_u64(plan.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut ticker = ticker(i, &plan);
    let mut me = User {
        i,
        plan,
        shared,
        ledger: Ledger::default(),
        rng,
        n: 0,
        in_flight: 0,
        outbox: Vec::new(),
    };
    let plan = Arc::clone(&me.plan);
    // A write may wait on a node that stopped reading; give up when the drain would end.
    let write_deadline = plan.stop + plan.drain;
    let mut sending = true;
    tokio::select! {
        _ = done.cancelled() => return me.ledger,
        _ = tokio::time::sleep_until(plan.start) => {}
    }
    'run: loop {
        let room = sending && me.in_flight < plan.window;
        let event = tokio::select! {
            biased;
            _ = done.cancelled() => break 'run,
            msg = ws.recv_text() => Event::Frame(msg),
            _ = pace(&mut ticker), if room => Event::Send,
            _ = tokio::time::sleep_until(plan.stop), if sending => Event::Stop,
        };
        match event {
            Event::Frame(msg) => {
                if !me.on_frame(msg) {
                    break 'run;
                }
                // Everything else already readable, so that its acks share one write.
                while let Some(msg) = ws.recv_text_now() {
                    if !me.on_frame(msg) {
                        break 'run;
                    }
                }
            }
            Event::Send if Instant::now() < plan.stop => {
                let batch = match plan.pace {
                    Pace::Window => plan.window - me.in_flight,
                    Pace::Rate { .. } => 1,
                };
                for _ in 0..batch {
                    me.send();
                }
            }
            Event::Send | Event::Stop => sending = false,
        }
        if let Err(why) = me.write(&mut ws, write_deadline).await {
            me.shared.error(format!("user {i}: {why}"));
            break 'run;
        }
    }
    // Leave politely; the node removes the route either way.
    ws.close(Duration::from_secs(1)).await;
    me.ledger
}

/// Rate mode: one tick per send, the users staggered over one period so they do not tick together.
fn ticker(i: usize, plan: &Plan) -> Option<Interval> {
    match plan.pace {
        Pace::Rate { per_conn } => {
            let offset = per_conn.mul_f64(i as f64 / plan.users as f64);
            let mut t = tokio::time::interval_at(plan.start + offset, per_conn);
            t.set_missed_tick_behavior(MissedTickBehavior::Skip);
            Some(t)
        }
        Pace::Window => None,
    }
}

/// Ready at the next tick in rate mode, at once in window mode.
async fn pace(ticker: &mut Option<Interval>) {
    if let Some(t) = ticker {
        t.tick().await;
    }
}

impl User {
    fn send(&mut self) {
        self.n += 1;
        let (i, n) = (self.i, self.n);
        let (to, cross) = self.plan.pick(i, &mut self.rng);
        let t = unix_us();
        self.outbox.push(format!(
            r#"{{"type":"send","to":"{}","ref":"{n}:{to}:{t}","body":{{"s":{i},"n":{n},"t":{t}}}}}"#,
            self.plan.user_name(to)
        ));
        self.in_flight += 1;
        let c = &self.shared.counters;
        c.sent.fetch_add(1, Relaxed);
        if cross {
            c.cross.fetch_add(1, Relaxed);
        }
    }

    /// Writes the outbox in one flush.
    async fn write(&mut self, ws: &mut Ws, deadline: Instant) -> Result<(), String> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.outbox);
        let written = tokio::time::timeout_at(deadline, async {
            for f in frames {
                ws.feed_text(f).await?;
            }
            ws.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("a write did not finish before the drain ended".into()),
        }
    }

    /// Handles one read; false when the connection is over.
    fn on_frame(&mut self, msg: Result<Utf8Bytes, ConnError>) -> bool {
        let i = self.i;
        let text = match msg {
            Ok(t) => t,
            Err(ConnError::Closed(Some(why))) => {
                self.shared
                    .error(format!("user {i}: the node closed the connection: {why}"));
                return false;
            }
            Err(ConnError::Closed(None)) => {
                self.shared.error(format!("user {i}: connection closed"));
                return false;
            }
            Err(e) => {
                self.shared
                    .error(format!("user {i}: connection failed: {e:#}"));
                return false;
            }
        };
        // Receipts (and presence) are not checked by the bench: skip reading them. Nodes write
        // `type` first; a frame written otherwise is still read whole below.
        if text.starts_with(r#"{"type":"receipt","#) {
            return true;
        }
        let now = unix_us();
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(&text) else {
            self.shared
                .error(format!("user {i}: unreadable frame {text}"));
            return true;
        };
        match frame.kind.as_ref() {
            "message" => self.on_message(&frame, &text, now),
            "ack" => self.on_ack(frame, &text, now),
            "error" => {
                if frame.reference.and_then(parse_ref).is_some() {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    self.shared.counters.refused.fetch_add(1, Relaxed);
                }
                let code = frame.code.unwrap_or("?");
                self.shared.error(format!(
                    "user {i}: the node refused a frame ({code}): {text}"
                ));
            }
            "reconnect" => {
                self.shared
                    .error(format!("user {i}: the node asked to reconnect: {text}"));
            }
            _ => {}
        }
        true
    }

    fn on_message(&mut self, frame: &Frame<'_>, text: &str, now: u64) {
        let (i, plan, c) = (self.i, &self.plan, &self.shared.counters);
        if let Some(id) = &frame.id {
            let id = serde_json::to_string(id).expect("a string serializes");
            self.outbox.push(format!(r#"{{"type":"ack","id":{id}}}"#));
        }
        let Some(body) = frame
            .body
            .and_then(|b| serde_json::from_str::<Body>(b.get()).ok())
        else {
            self.shared
                .error(format!("user {i}: a message without a bench body: {text}"));
            return;
        };
        match self.ledger.received.record(body.s, body.n) {
            Receipt::Duplicate => {
                c.duplicates.fetch_add(1, Relaxed);
                return;
            }
            Receipt::Late => {
                c.out_of_order.fetch_add(1, Relaxed);
            }
            Receipt::New => {}
        }
        c.received.fetch_add(1, Relaxed);
        let window = plan.measure_from_us..plan.stop_us;
        if window.contains(&now) {
            c.received_in_window.fetch_add(1, Relaxed);
        }
        if window.contains(&body.t) {
            self.shared
                .recorder
                .end_to_end(i, now.saturating_sub(body.t));
        }
    }

    fn on_ack(&mut self, frame: Frame<'_>, text: &str, now: u64) {
        let (i, c) = (self.i, &self.shared.counters);
        let Some((n, to, t)) = frame.reference.and_then(parse_ref) else {
            self.shared
                .error(format!("user {i}: an ack for no send of ours: {text}"));
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        if (self.plan.measure_from_us..self.plan.stop_us).contains(&t) {
            self.shared.recorder.ack(i, now.saturating_sub(t));
        }
        match frame.status {
            Some("delivered") => {
                c.delivered.fetch_add(1, Relaxed);
                self.ledger.delivered.push((to, n));
            }
            Some("stored") => {
                c.stored.fetch_add(1, Relaxed);
            }
            _ => {
                c.rejected.fetch_add(1, Relaxed);
                let code = frame
                    .error
                    .map(|e| e.code.into_owned())
                    .unwrap_or_else(|| "unknown".into());
                *self
                    .shared
                    .rejected_codes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(code)
                    .or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip() {
        assert_eq!(parse_ref("12:3:456"), Some((12, 3, 456)));
        assert_eq!(parse_ref("x"), None);
    }
}
