//! The task behind a [`super::Client`]: connect, run the session (write the outbox, read and
//! answer frames, heartbeats, token refresh), and on a lost connection back off and connect
//! again, until the app closes the client or a refusal says trying again cannot help.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::backoff::Backoff;
use super::endpoints::Picker;
use super::seen::SeenIds;
use super::token;
use super::{Auth, ClientConfig, Command, Event, Shared};
use crate::connect::ConnectOptions;
use crate::connection::Connection;
use crate::error::{CloseInfo, ConnError, ConnectError, SendError};
use crate::frame::{ClientFrame, ServerFrame};

/// Users per `watch` frame on a reconnect: 200 ids of up to 128 bytes stay far below the
/// server's 64 KiB frame limit.
const WATCH_CHUNK: usize = 200;

/// How a session ended.
enum End {
    /// The app closed the client (or dropped every handle).
    Stop,
    /// The connection is gone; connect again.
    Lost(Option<CloseInfo>),
}

pub(super) struct Driver {
    config: ClientConfig,
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    picker: Picker,
    backoff: Backoff,
    seen: SeenIds,
    /// `exp` of the token of the current connection (or of the last refresh).
    token_exp: Option<u64>,
    /// A `refreshed` moved `token_exp`: the next refresh is to be planned from it.
    new_exp: bool,
}

impl Driver {
    pub(super) fn new(
        config: ClientConfig,
        shared: Arc<Shared>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Self {
            picker: Picker::new(config.endpoints.clone(), config.connect_timeout),
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            seen: SeenIds::new(config.seen_window),
            config,
            shared,
            events,
            token_exp: None,
            new_exp: false,
        }
    }

    /// One connection attempt, to wherever the endpoints say next.
    pub(super) async fn connect_once(&mut self) -> Result<Connection, ConnectError> {
        let url = self.picker.next().await?;
        let mut opts = ConnectOptions::new(url.as_str()).timeout(self.config.connect_timeout);
        if let Some(d) = &self.config.device {
            opts = opts.device(d.as_str());
        }
        opts = match &self.config.auth {
            Auth::Dev(user) => opts.dev_user(user.as_str()),
            Auth::Token(source) => {
                let t = self.fresh_token(source.clone()).await?;
                self.token_exp = token::expiry(&t);
                opts.token(t)
            }
        };
        match Connection::connect(&opts).await {
            Ok(c) => {
                self.picker.succeeded();
                Ok(c)
            }
            Err(e) => {
                self.picker.failed(&url);
                Err(e)
            }
        }
    }

    async fn fresh_token(&self, source: super::TokenSource) -> Result<String, ConnectError> {
        match tokio::time::timeout(self.config.connect_timeout, source.get()).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(ConnectError::Token(e)),
            Err(_) => Err(ConnectError::Token("the token callback timed out".into())),
        }
    }

    /// Runs sessions until the client stops: `stop` turns true (or its sender is dropped), or
    /// `commands` closes (every [`super::Client`] handle is gone).
    pub(super) async fn run(
        mut self,
        first: Connection,
        mut commands: mpsc::Receiver<Command>,
        stop: watch::Receiver<bool>,
    ) {
        let stopped = stop_signal(stop);
        tokio::pin!(stopped);
        let mut next = Some(first);
        let why = loop {
            let conn = match next.take() {
                Some(c) => c,
                None => match self.reconnect(stopped.as_mut(), &commands).await {
                    Ok(c) => c,
                    Err(why) => break why,
                },
            };
            match self.session(conn, &mut commands, stopped.as_mut()).await {
                End::Stop => break None,
                End::Lost(close) => {
                    self.shared.hello.send_replace(None);
                    tracing::info!(close = ?close, "wsroute connection lost; reconnecting");
                    if !self
                        .emit(Event::Disconnected { close }, stopped.as_mut())
                        .await
                    {
                        break None;
                    }
                }
            }
        };
        self.shared.outbox().fail_all(SendError::Closed);
        self.shared.hello.send_replace(None);
        // A permanent refusal is news to the app and waits for room; a close it asked for is not.
        if let Some(why) = why {
            let _ = self.events.send(Event::Stopped { why }).await;
        } else {
            let _ = self.events.try_send(Event::Stopped {
                why: "closed by the app".into(),
            });
        }
    }

    /// Backs off and connects until it works: `Err(Some(why))` for a permanent refusal,
    /// `Err(None)` when the app stopped the client meanwhile.
    async fn reconnect(
        &mut self,
        mut stopped: Pin<&mut impl Future<Output = ()>>,
        commands: &mpsc::Receiver<Command>,
    ) -> Result<Connection, Option<String>> {
        loop {
            if commands.is_closed() {
                return Err(None);
            }
            let delay = if self.picker.has_redirect() {
                Duration::ZERO
            } else {
                self.backoff.next_delay()
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.as_mut() => return Err(None),
            }
            let attempt = tokio::select! {
                r = self.connect_once() => r,
                _ = stopped.as_mut() => return Err(None),
            };
            match attempt {
                Ok(c) => return Ok(c),
                Err(e) if e.is_permanent() => {
                    tracing::warn!(error = %e, "wsroute refused the client for good");
                    return Err(Some(e.to_string()));
                }
                Err(e) => tracing::debug!(error = %e, "wsroute connect failed; backing off"),
            }
        }
    }

    /// Hands an event to the app, waiting for room; false if the client stopped meanwhile.
    async fn emit(&self, event: Event, stopped: Pin<&mut impl Future<Output = ()>>) -> bool {
        tokio::select! {
            // A dropped `Events` means the app does not listen: nothing to wait for.
            _ = self.events.send(event) => true,
            _ = stopped => false,
        }
    }

    async fn session(
        &mut self,
        mut conn: Connection,
        commands: &mut mpsc::Receiver<Command>,
        mut stopped: Pin<&mut impl Future<Output = ()>>,
    ) -> End {
        let hello = conn.hello().clone();
        self.backoff.reset();
        self.shared.hello.send_replace(Some(hello.clone()));
        self.shared.outbox().reconnected();
        tracing::debug!(node = %hello.node, conn_id = %hello.conn_id, "wsroute connected");
        if !self
            .emit(Event::Connected(hello.clone()), stopped.as_mut())
            .await
        {
            conn.close(Duration::from_secs(1)).await;
            return End::Stop;
        }
        let watching: Vec<String> = self.shared.watching().iter().cloned().collect();
        for users in watching.chunks(WATCH_CHUNK) {
            let frame = ClientFrame::Watch {
                users: users.to_vec(),
            };
            if let Err(e) = conn.feed_text(frame.to_text()).await {
                return lost(e);
            }
        }
        if let Err(e) = self.write_due(&mut conn).await {
            return lost(e);
        }

        let heartbeat = Duration::from_millis(hello.heartbeat_ms.max(200));
        let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat / 2, heartbeat / 2);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(self.config.retry_after);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut refresh_at = self.refresh_deadline();
        // One event read but not yet taken by the app (and the message id to ack once it is):
        // while it waits, the connection is not read (back-pressure).
        let mut pending: Option<(Event, Option<String>)> = None;
        let (events, shared) = (self.events.clone(), Arc::clone(&self.shared));

        loop {
            let waiting_retry = self.shared.outbox().has_waiting();
            tokio::select! {
                biased;
                _ = stopped.as_mut() => {
                    conn.close(Duration::from_secs(1)).await;
                    return End::Stop;
                }
                permit = events.reserve(), if pending.is_some() => {
                    let Some((event, ack)) = pending.take() else { continue };
                    // Seen from the moment the app has it: a message read but not handed over when
                    // the connection ended was not acked either, and must be taken when it comes
                    // again.
                    if let Event::Message(m) = &event {
                        self.seen.insert(&m.id);
                    }
                    if let Ok(permit) = permit {
                        permit.send(event);
                    }
                    last_heard = Instant::now();
                    if let Some(id) = ack
                        && let Err(e) = conn.send(&ClientFrame::Ack { id }).await {
                            return lost(e);
                        }
                }
                text = conn.recv_text(), if pending.is_none() => {
                    let text = match text {
                        Ok(t) => t,
                        Err(e) => return lost(e),
                    };
                    last_heard = Instant::now();
                    match self.on_frame(&text, &mut conn).await {
                        Ok(Some(p)) => pending = Some(p),
                        Ok(None) => {}
                        Err(e) => return lost(e),
                    }
                    if let Some(exp) = self.take_new_exp() {
                        refresh_at = Some(Instant::now() + token::refresh_in(exp, self.config.refresh_before));
                    }
                }
                _ = shared.pushed.notified() => {
                    if let Err(e) = self.write_due(&mut conn).await {
                        return lost(e);
                    }
                }
                command = commands.recv() => {
                    let frame = match command {
                        None => {
                            conn.close(Duration::from_secs(1)).await;
                            return End::Stop;
                        }
                        Some(Command::Read(id)) => ClientFrame::Read { id },
                        Some(Command::Watch(users)) => ClientFrame::Watch { users },
                        Some(Command::Unwatch(users)) => ClientFrame::Unwatch { users },
                    };
                    if let Err(e) = conn.send(&frame).await {
                        return lost(e);
                    }
                }
                _ = ticker.tick() => {
                    if pending.is_none() && last_heard.elapsed() > heartbeat * 2 {
                        tracing::info!(node = %hello.node, "wsroute node silent for two heartbeats");
                        return End::Lost(None);
                    }
                    if let Err(e) = conn.send(&ClientFrame::Ping).await {
                        return lost(e);
                    }
                }
                _ = sleep_until_some(refresh_at) => {
                    refresh_at = None;
                    match self.refresh(&mut conn).await {
                        Ok(true) => {}
                        // The callback failed: try again shortly, until the session expires.
                        Ok(false) => refresh_at = Some(Instant::now() + self.config.retry_after),
                        Err(e) => return lost(e),
                    }
                }
                _ = retry.tick(), if waiting_retry => {
                    if let Err(e) = self.write_due(&mut conn).await {
                        return lost(e);
                    }
                }
            }
        }
    }

    /// When to refresh the current token (JWT auth with a readable `exp` only).
    fn refresh_deadline(&self) -> Option<Instant> {
        match self.config.auth {
            Auth::Token(_) => self
                .token_exp
                .map(|exp| Instant::now() + token::refresh_in(exp, self.config.refresh_before)),
            Auth::Dev(_) => None,
        }
    }

    fn take_new_exp(&mut self) -> Option<u64> {
        if std::mem::take(&mut self.new_exp) {
            self.token_exp
        } else {
            None
        }
    }

    /// Asks the callback for a fresh token and sends `refresh`; false if the callback failed.
    async fn refresh(&mut self, conn: &mut Connection) -> Result<bool, ConnError> {
        let Auth::Token(source) = &self.config.auth else {
            return Ok(true);
        };
        match self.fresh_token(source.clone()).await {
            Ok(token) => {
                conn.send(&ClientFrame::Refresh { token }).await?;
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, "wsroute token refresh: the callback failed");
                Ok(false)
            }
        }
    }

    /// Writes every send that is due, in one flush.
    async fn write_due(&mut self, conn: &mut Connection) -> Result<(), ConnError> {
        let due = self.shared.outbox().due(std::time::Instant::now());
        for f in &due {
            conn.feed_text(f.to_text()).await?;
        }
        conn.flush().await
    }

    /// Handles one frame; returns the event for the app (and the id to ack once it is taken).
    async fn on_frame(
        &mut self,
        text: &str,
        conn: &mut Connection,
    ) -> Result<Option<(Event, Option<String>)>, ConnError> {
        let frame = match ServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, frame = text, "wsroute sent a frame this client cannot read");
                return Ok(None);
            }
        };
        Ok(match frame {
            ServerFrame::Message(m) => {
                if !self.seen.contains(&m.id) {
                    let id = m.id.clone();
                    Some((Event::Message(m), Some(id)))
                } else {
                    // A copy of one the app has: ack it (so the server forgets it), show nothing.
                    conn.send(&ClientFrame::Ack { id: m.id }).await?;
                    None
                }
            }
            ServerFrame::Ack(ack) => {
                let retry_at = std::time::Instant::now() + self.config.retry_after;
                self.shared.outbox().acked(&ack, retry_at);
                None
            }
            ServerFrame::Receipt(r) => {
                self.shared.outbox().receipt(&r);
                Some((Event::Receipt(r), None))
            }
            ServerFrame::Presence(p) => Some((Event::Presence(p), None)),
            ServerFrame::Error(e) => Some((Event::Error(e), None)),
            ServerFrame::Refreshed(r) => {
                self.token_exp = Some(r.exp);
                self.new_exp = true;
                Some((Event::Refreshed { exp: r.exp }, None))
            }
            ServerFrame::Reconnect(r) => {
                if self.picker.redirect(&r.url) {
                    tracing::info!(url = %r.url, reason = %r.reason, "wsroute node draining; following its reconnect");
                } else {
                    tracing::warn!(url = %r.url, "wsroute node named a reconnect target this client does not know; ignored");
                }
                None
            }
            ServerFrame::Hello(_) | ServerFrame::Pong | ServerFrame::Unknown => None,
        })
    }
}

fn lost(e: ConnError) -> End {
    match e {
        ConnError::Closed(close) => End::Lost(close),
        other => {
            tracing::debug!(error = %other, "wsroute connection failed");
            End::Lost(None)
        }
    }
}

/// Resolves when the client is to stop: `stop` turned true or every sender of it is gone.
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
