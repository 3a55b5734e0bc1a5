//! The high-level client: one logical session that outlives connections. It finds a node (by
//! URL or by asking `/gateway`), reconnects with exponential back-off and full jitter, keeps
//! heartbeats, follows a draining node's `reconnect` to a known node only, acks every message and
//! drops repeated ids, keeps every send in an outbox until it is known to be safe and sends it
//! again after a reconnect, refreshes its JWT before it expires, and re-sends its presence
//! `watch` list on every new connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use wsroute_client::{Client, ClientConfig, Event};
//!
//! let config = ClientConfig::gateways(["http://127.0.0.1:8081", "http://127.0.0.1:8082"])
//!     .dev_user("alice")
//!     .device("laptop");
//! let (client, mut events) = Client::connect(config).await?;
//! let ack = client.send("bob", serde_json::json!({"text": "hi"}))?.await?;
//! println!("{:?} as {:?}", ack.status, ack.id);
//! client.watch(["bob"]).await?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(m) => {
//!             println!("{}: {}", m.from, m.body);
//!             client.read(&m.id).await?;
//!         }
//!         Event::Receipt(r) => println!("{} is {:?}", r.id, r.status),
//!         Event::Presence(p) => println!("{} online: {}", p.user, p.online),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod driver;
mod endpoints;
mod outbox;
mod seen;
mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use endpoints::Endpoints;
pub use token::{TokenError, TokenFuture, TokenSource};

use crate::error::{CloseInfo, ConnectError, SendError};
use crate::frame::{Ack, ErrorFrame, Hello, Message, Presence, Receipt};

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `?user=ID` (nodes with `--dev-auth` only).
    Dev(String),
    /// JWTs from the app's callback, asked at every connect and before each token expires.
    Token(TokenSource),
}

/// Everything [`Client::connect`] needs; built with [`ClientConfig::urls`] or
/// [`ClientConfig::gateways`] and the setters below.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) endpoints: Endpoints,
    pub(crate) auth: Auth,
    pub(crate) device: Option<String>,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) events_capacity: usize,
    pub(crate) outbox_capacity: usize,
    pub(crate) seen_window: usize,
    pub(crate) max_watch: usize,
    pub(crate) refresh_before: Duration,
    pub(crate) retry_after: Duration,
}

impl ClientConfig {
    /// Connect to these node `/ws` URLs (`ws://` or `wss://`), in turn.
    pub fn urls<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with(Endpoints::Urls(urls.into_iter().map(Into::into).collect()))
    }

    /// One node URL.
    pub fn url(url: impl Into<String>) -> Self {
        Self::urls([url.into()])
    }

    /// Ask these nodes' `GET /gateway` (`http://HOST:PORT` base URLs) which node to connect to,
    /// in turn.
    pub fn gateways<I, S>(bases: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with(Endpoints::Gateways(
            bases.into_iter().map(Into::into).collect(),
        ))
    }

    fn with(endpoints: Endpoints) -> Self {
        Self {
            endpoints,
            auth: Auth::Dev(String::new()),
            device: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            events_capacity: 1024,
            outbox_capacity: 1000,
            seen_window: 10_000,
            max_watch: 1000,
            refresh_before: Duration::from_secs(60),
            retry_after: Duration::from_secs(1),
        }
    }

    /// Dev auth as `user`.
    pub fn dev_user(mut self, user: impl Into<String>) -> Self {
        self.auth = Auth::Dev(user.into());
        self
    }

    /// JWT auth with a token callback.
    pub fn token_source(mut self, source: TokenSource) -> Self {
        self.auth = Auth::Token(source);
        self
    }

    /// Names this device (`?device=`).
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Reconnect delays: a random delay up to `initial * 2^attempt`, at most `max`
    /// (default 100 ms and 10 s).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Limit for each stage of a connect (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Room for events the app has not taken yet (default 1,024). When full, the client stops
    /// reading its connection until the app takes one (back-pressure, nothing dropped); a
    /// message is acked only once it is in this channel.
    pub fn events_capacity(mut self, n: usize) -> Self {
        self.events_capacity = n.max(1);
        self
    }

    /// Most sends the outbox holds unconfirmed (default 1,000); past it [`Client::send`]
    /// returns [`SendError::OutboxFull`].
    pub fn outbox_capacity(mut self, n: usize) -> Self {
        self.outbox_capacity = n.max(1);
        self
    }

    /// How many recent message ids are remembered to drop repeats (default 10,000).
    pub fn seen_window(mut self, n: usize) -> Self {
        self.seen_window = n.max(1);
        self
    }

    /// Most users watched at once (default 1,000, the server's default `--max-watch`).
    pub fn max_watch(mut self, n: usize) -> Self {
        self.max_watch = n;
        self
    }

    /// Refresh the token this long before it expires, or at half its remaining life if that
    /// is sooner (default 60 s).
    pub fn refresh_before(mut self, d: Duration) -> Self {
        self.refresh_before = d;
        self
    }
}

/// What the client tells the app, in order, through [`Events`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection is up (the first one, and each after a reconnect).
    Connected(Hello),
    /// The connection ended; the client reconnects. `close` is the server's close frame.
    Disconnected { close: Option<CloseInfo> },
    /// A message, shown once: repeats of an id within the window are acked and dropped.
    Message(Message),
    /// What became of a message this user sent (from any of its devices).
    Receipt(Receipt),
    /// A watched user came online, went offline or changed device count.
    Presence(Presence),
    /// The server refused a frame (e.g. `unauthorized` for a refresh, `too_many` for a watch).
    Error(ErrorFrame),
    /// The token was refreshed; the session now ends at `exp` (unix seconds).
    Refreshed { exp: u64 },
    /// The client stopped for good: a permanent refusal (a 4xx other than 408 and 429) or
    /// [`Client::close`]. Sends still in the outbox failed with [`SendError::Closed`].
    Stopped { why: String },
}

/// The app's end of the event channel (bounded, see [`ClientConfig::events_capacity`]).
/// Dropping it means the app does not want events: messages are then still acked.
#[derive(Debug)]
pub struct Events(mpsc::Receiver<Event>);

impl Events {
    /// The next event; `None` once the client stopped and every event was taken.
    pub async fn recv(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    /// An event that is ready now, if any.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

/// The answer to one [`Client::send`]: resolves with the first ack that settles it
/// (`delivered`, `stored`, or a rejection that is not retried), however many connections that
/// took. Dropping it does not cancel the send.
#[derive(Debug)]
pub struct PendingAck {
    cid: String,
    rx: oneshot::Receiver<Result<Ack, SendError>>,
}

impl PendingAck {
    /// The send's `cid` (also its `ref`).
    pub fn cid(&self) -> &str {
        &self.cid
    }
}

impl Future for PendingAck {
    type Output = Result<Ack, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(SendError::Closed)))
    }
}

/// What the app asks of the connection task.
#[derive(Debug)]
enum Command {
    Read(String),
    Watch(Vec<String>),
    Unwatch(Vec<String>),
}

/// What [`Client`] handles and its task share.
#[derive(Debug)]
struct Shared {
    /// Locked only for short, non-async steps (push, due, acked), never across an await.
    outbox: Mutex<outbox::Outbox>,
    /// Wakes the task when a send was pushed.
    pushed: Notify,
    /// The current connection's `hello` (`None` while disconnected).
    hello: watch::Sender<Option<Hello>>,
    /// Users watched; sent again on every new connection. At most `max_watch`.
    watching: Mutex<std::collections::BTreeSet<String>>,
    max_watch: usize,
}

impl Shared {
    /// A poisoned lock means a panic elsewhere mid-step; the outbox is still consistent (every
    /// step leaves it so), so it is used on.
    fn outbox(&self) -> std::sync::MutexGuard<'_, outbox::Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watching(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.watching.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reconnecting wsroute client. Cheap to clone; the connection task stops when the last clone
/// is dropped or [`Client::close`] is called.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// Bounded (256): when the task is busy reconnecting, `read`/`watch` wait for room.
    commands: mpsc::Sender<Command>,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Client {
    /// Makes the first connection (its failure is returned as is: a refused token is a `401`
    /// with the server's JSON body), then runs the session on a task.
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ConnectError> {
        let prefix = format!("{:016x}", rand::random::<u64>());
        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox::Outbox::new(config.outbox_capacity, prefix)),
            pushed: Notify::new(),
            hello: watch::Sender::new(None),
            watching: Mutex::new(Default::default()),
            max_watch: config.max_watch,
        });
        let (events_tx, events_rx) = mpsc::channel(config.events_capacity);
        let (commands, commands_rx) = mpsc::channel(256);
        let (stop, stop_rx) = watch::channel(false);
        let mut driver = driver::Driver::new(config, Arc::clone(&shared), events_tx);
        let first = driver.connect_once().await?;
        shared.hello.send_replace(Some(first.hello().clone()));
        let task = tokio::spawn(driver.run(first, commands_rx, stop_rx));
        Ok((
            Client {
                shared,
                commands,
                stop: Arc::new(stop),
                task: Arc::new(Mutex::new(Some(task))),
            },
            Events(events_rx),
        ))
    }

    /// Sends `body` to `to` with a generated `cid`. Returns at once: the send is in the outbox
    /// (written now if connected, else after the reconnect); await the [`PendingAck`] for its
    /// ack. Errors: [`SendError::OutboxFull`] (nothing queued), [`SendError::Closed`].
    pub fn send(&self, to: impl Into<String>, body: Value) -> Result<PendingAck, SendError> {
        self.push(to.into(), body, None)
    }

    /// Like [`Client::send`] with the app's own `cid` (1 to 64 bytes of `[A-Za-z0-9_.:-]`),
    /// for an app that keeps its own outbox across restarts: the same `cid` gives the same id.
    pub fn send_with_cid(
        &self,
        to: impl Into<String>,
        body: Value,
        cid: impl Into<String>,
    ) -> Result<PendingAck, SendError> {
        self.push(to.into(), body, Some(cid.into()))
    }

    fn push(&self, to: String, body: Value, cid: Option<String>) -> Result<PendingAck, SendError> {
        if *self.stop.borrow() || self.commands.is_closed() {
            return Err(SendError::Closed);
        }
        let (cid, rx) = self.shared.outbox().push(to, body, cid)?;
        self.shared.pushed.notify_one();
        Ok(PendingAck { cid, rx })
    }

    /// Tells the sender of message `id` that the user read it (a `read` receipt).
    pub async fn read(&self, id: &str) -> Result<(), SendError> {
        self.command(Command::Read(id.to_owned())).await
    }

    /// Watches these users' presence; a [`Event::Presence`] comes for each, then on every
    /// change. Kept across reconnects.
    pub async fn watch<I, S>(&self, users: I) -> Result<(), SendError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let users: Vec<String> = users.into_iter().map(Into::into).collect();
        {
            let mut watching = self.shared.watching();
            let new = users.iter().filter(|u| !watching.contains(*u)).count();
            if watching.len() + new > self.shared.max_watch {
                return Err(SendError::TooManyWatched {
                    max: self.shared.max_watch,
                });
            }
            watching.extend(users.iter().cloned());
        }
        self.command(Command::Watch(users)).await
    }

    /// Stops watching these users.
    pub async fn unwatch<I, S>(&self, users: I) -> Result<(), SendError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let users: Vec<String> = users.into_iter().map(Into::into).collect();
        {
            let mut watching = self.shared.watching();
            for u in &users {
                watching.remove(u);
            }
        }
        self.command(Command::Unwatch(users)).await
    }

    async fn command(&self, c: Command) -> Result<(), SendError> {
        self.commands.send(c).await.map_err(|_| SendError::Closed)
    }

    /// The current connection's `hello` (`None` while reconnecting).
    pub fn hello(&self) -> Option<Hello> {
        self.shared.hello.borrow().clone()
    }

    /// Waits until a connection is up and returns its `hello`.
    pub async fn connected(&self) -> Result<Hello, SendError> {
        let mut rx = self.shared.hello.subscribe();
        let h = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| SendError::Closed)?;
        h.clone().ok_or(SendError::Closed)
    }

    /// Sends not yet known to be safe (no ack, or `delivered` with no receipt yet).
    pub fn unconfirmed(&self) -> usize {
        self.shared.outbox().len()
    }

    /// Closes the connection and stops the client; sends still unconfirmed fail with
    /// [`SendError::Closed`] (they may still have reached their recipient).
    pub async fn close(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
