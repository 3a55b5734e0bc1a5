//! Traffic for the chaos suite: simulated users spread over the nodes, each sending direct
//! messages to random others at a bounded rate, acking what it receives, and reconnecting when
//! its connection ends (to the `reconnect` URL, else through `/gateway`, else the next node).
//! Everything is written to a ledger, and [`Ledger::account`] checks the promise: every message
//! acked `delivered` or `stored` was received by its recipient, no connection received an id
//! twice, nothing was received that was never sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use wsroute_client::{ConnectOptions, Connection};

use crate::patience;

/// One node as a client sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub http: String,
    pub ws: String,
}

#[derive(Debug, Clone)]
pub struct TrafficOpts {
    pub users: usize,
    /// Messages per second per user.
    pub rate: f64,
    /// Body padding (bytes) added to every message.
    pub pad: usize,
    /// Every this many sends, a user drops its TCP connection without a close frame.
    pub abrupt_drop_every: Option<u64>,
    /// Users are named `{prefix}{i}`.
    pub prefix: String,
}

impl Default for TrafficOpts {
    fn default() -> Self {
        Self {
            users: 24,
            rate: 5.0,
            pad: 0,
            abrupt_drop_every: None,
            prefix: "u".into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Ack {
    to: String,
    status: String,
}

#[derive(Debug, Clone)]
struct Received {
    user: String,
    conn: String,
    id: String,
    from: String,
    reference: String,
}

/// Everything that happened, as the clients saw it.
#[derive(Default)]
pub struct Ledger {
    /// ref -> (from, to) of every send written to a socket.
    sent: Mutex<HashMap<String, (String, String)>>,
    /// id -> ack, for acks received.
    acks: Mutex<HashMap<String, Ack>>,
    rejected: Mutex<HashMap<String, u64>>,
    received: Mutex<Vec<Received>>,
    connects: Mutex<u64>,
    /// Sends whose connection ended before their ack arrived: the sender never learned their
    /// fate (they may still arrive, and are checked like any other if they do).
    orphaned: Mutex<u64>,
}

/// The accounting of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub sent: usize,
    pub delivered: usize,
    pub stored: usize,
    pub rejected: usize,
    pub unacked: usize,
    pub orphaned: u64,
    pub received: usize,
    pub received_unique: usize,
    pub lost: Vec<String>,
    pub duplicates_on_one_connection: Vec<String>,
    pub never_sent: Vec<String>,
    pub connects: u64,
    /// Rejections by error code.
    pub rejections: Vec<(String, u64)>,
}

impl Accounting {
    pub fn print(&self, scenario: &str) {
        println!(
            "ACCOUNTING {scenario}: sent={} delivered={} stored={} rejected={} {:?} unanswered={} orphaned={} received={} (unique {}) lost={} dup_on_conn={} never_sent={} connects={}",
            self.sent,
            self.delivered,
            self.stored,
            self.rejected,
            self.rejections,
            self.unacked,
            self.orphaned,
            self.received,
            self.received_unique,
            self.lost.len(),
            self.duplicates_on_one_connection.len(),
            self.never_sent.len(),
            self.connects
        );
    }

    /// The promise, asserted.
    pub fn assert_kept(&self, scenario: &str) {
        self.print(scenario);
        assert!(self.sent > 0, "{scenario}: nothing was sent");
        assert!(self.lost.is_empty(), "{scenario}: lost {:?}", self.lost);
        assert!(
            self.duplicates_on_one_connection.is_empty(),
            "{scenario}: duplicates on one connection {:?}",
            self.duplicates_on_one_connection
        );
        assert!(
            self.never_sent.is_empty(),
            "{scenario}: never sent {:?}",
            self.never_sent
        );
    }
}

impl Ledger {
    /// Ids acked delivered/stored that their recipient has not received yet.
    pub fn missing(&self) -> Vec<String> {
        let acks = self.acks.lock().expect("ledger lock");
        let received = self.received.lock().expect("ledger lock");
        let got: HashSet<(&str, &str)> = received
            .iter()
            .map(|r| (r.user.as_str(), r.id.as_str()))
            .collect();
        acks.iter()
            .filter(|(_, a)| a.status == "delivered" || a.status == "stored")
            .filter(|(id, a)| !got.contains(&(a.to.as_str(), id.as_str())))
            .map(|(id, a)| format!("{id}->{}", a.to))
            .collect()
    }

    pub fn account(&self) -> Accounting {
        let lost = self.missing();
        let sent = self.sent.lock().expect("ledger lock");
        let acks = self.acks.lock().expect("ledger lock");
        let received = self.received.lock().expect("ledger lock");
        let rejected: u64 = self.rejected.lock().expect("ledger lock").values().sum();
        let count = |s: &str| acks.values().filter(|a| a.status == s).count();
        let mut per_conn = HashSet::new();
        let mut dups = Vec::new();
        let mut never_sent = Vec::new();
        let mut unique = HashSet::new();
        for r in received.iter() {
            if !per_conn.insert((r.conn.as_str(), r.id.as_str())) {
                dups.push(format!("{} on {}", r.id, r.conn));
            }
            unique.insert(r.id.as_str());
            match sent.get(&r.reference) {
                Some((from, to)) if *from == r.from && *to == r.user => {}
                _ => never_sent.push(format!("{} ({} from {})", r.id, r.reference, r.from)),
            }
        }
        let orphaned = *self.orphaned.lock().expect("ledger lock");
        let answered = acks.len() + rejected as usize + orphaned as usize;
        Accounting {
            sent: sent.len(),
            delivered: count("delivered"),
            stored: count("stored"),
            rejected: rejected as usize,
            unacked: sent.len().saturating_sub(answered),
            orphaned,
            received: received.len(),
            received_unique: unique.len(),
            lost,
            duplicates_on_one_connection: dups,
            never_sent,
            connects: *self.connects.lock().expect("ledger lock"),
            rejections: {
                let mut r: Vec<(String, u64)> = self
                    .rejected
                    .lock()
                    .expect("ledger lock")
                    .iter()
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                r.sort();
                r
            },
        }
    }
}

/// Running traffic.
pub struct Traffic {
    pub ledger: Arc<Ledger>,
    sending: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    pub users: Vec<String>,
}

impl Traffic {
    /// Starts `opts.users` users, user i on endpoint i % n, each connected before this returns.
    pub async fn start(endpoints: Vec<Endpoint>, opts: TrafficOpts) -> Self {
        let ledger = Arc::new(Ledger::default());
        let sending = Arc::new(AtomicBool::new(true));
        let running = Arc::new(AtomicBool::new(true));
        let users: Vec<String> = (0..opts.users)
            .map(|i| format!("{}{i}", opts.prefix))
            .collect();
        let endpoints = Arc::new(endpoints);
        let mut tasks = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(opts.users);
        for (i, user) in users.iter().enumerate() {
            let sim = SimUser {
                me: user.clone(),
                others: users.iter().filter(|u| *u != user).cloned().collect(),
                endpoints: endpoints.clone(),
                home: i % endpoints.len(),
                opts: opts.clone(),
                ledger: ledger.clone(),
                sending: sending.clone(),
                running: running.clone(),
                seed: i as u64 * 7919 + 1,
            };
            let ready = ready_tx.clone();
            tasks.push(tokio::spawn(sim.run(ready)));
        }
        for _ in 0..opts.users {
            tokio::time::timeout(patience(), ready_rx.recv())
                .await
                .expect("every simulated user connects");
        }
        Self {
            ledger,
            sending,
            running,
            tasks,
            users,
        }
    }

    /// Stops sending, waits until every `delivered`/`stored` message has been received (users
    /// keep reconnecting meanwhile), stops the users and returns the accounting.
    pub async fn finish(mut self) -> Accounting {
        self.sending.store(false, Ordering::Release);
        let ledger = self.ledger.clone();
        // Acks still in flight settle within the server's send deadline. A send whose
        // connection died before its ack came back stays unanswered: that is not a loss (the
        // sender was never told it was delivered), so only wait a bounded time for them.
        let l = ledger.clone();
        crate::poll_until(patience(), || {
            let l = l.clone();
            async move { l.account().unacked == 0 }
        })
        .await;
        // Every delivered/stored message reaches its recipient (reconnecting users get their
        // inbox); give up after the harness's patience and let the accounting show what is lost.
        let l = ledger.clone();
        crate::poll_until(patience(), || {
            let l = l.clone();
            async move { l.missing().is_empty() }
        })
        .await;
        self.running.store(false, Ordering::Release);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        ledger.account()
    }
}

struct SimUser {
    me: String,
    others: Vec<String>,
    endpoints: Arc<Vec<Endpoint>>,
    home: usize,
    opts: TrafficOpts,
    ledger: Arc<Ledger>,
    sending: Arc<AtomicBool>,
    running: Arc<AtomicBool>,
    seed: u64,
}

impl SimUser {
    fn next_rand(&mut self) -> u64 {
        // xorshift: deterministic per user, no extra crate.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    async fn run(mut self, ready: tokio::sync::mpsc::Sender<()>) {
        let mut ready = Some(ready);
        let mut url = self.endpoints[self.home].ws.clone();
        let mut rotation = self.home;
        let mut n = 0u64;
        let mut conn_seq = 0u64;
        let period = Duration::from_secs_f64(1.0 / self.opts.rate.max(0.1));
        while self.running.load(Ordering::Acquire) {
            let target = ConnectOptions::new(url.as_str()).dev_user(self.me.as_str());
            let ws = match Connection::connect(&target).await {
                Ok(ws) => ws,
                Err(_) => {
                    // Ask any node's /gateway, else try the next node.
                    rotation = (rotation + 1) % self.endpoints.len();
                    url = gateway(&self.endpoints, rotation)
                        .await
                        .unwrap_or_else(|| self.endpoints[rotation].ws.clone());
                    // A client's reconnect back-off, not a synchronisation.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            conn_seq += 1;
            *self.ledger.connects.lock().expect("ledger lock") += 1;
            let conn = format!("{}#{conn_seq}", self.me);
            if let Some(r) = ready.take() {
                let _ = r.send(()).await;
            }
            let (mut tx, mut rx) = ws.split();
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_url = None;
            let mut abrupt = false;
            let mut awaiting: HashSet<String> = HashSet::new();
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if !self.running.load(Ordering::Acquire) {
                            let _ = tx.close().await;
                            *self.ledger.orphaned.lock().expect("ledger lock") += awaiting.len() as u64;
                            return;
                        }
                        if !self.sending.load(Ordering::Acquire) {
                            continue;
                        }
                        n += 1;
                        if self.opts.abrupt_drop_every.is_some_and(|k| n.is_multiple_of(k)) {
                            abrupt = true;
                            break;
                        }
                        let pick = (self.next_rand() % self.others.len() as u64) as usize;
                        let to = self.others[pick].clone();
                        let reference = format!("{}-{n}", self.me);
                        let body = json!({"ref": reference, "pad": "x".repeat(self.opts.pad)});
                        let frame = json!({"type":"send","to":to,"ref":reference,"body":body}).to_string();
                        // Recorded before sending: a send whose write fails may still have left.
                        self.ledger.sent.lock().expect("ledger lock").insert(reference.clone(), (self.me.clone(), to));
                        awaiting.insert(reference);
                        if tx.send_text(frame).await.is_err() {
                            break;
                        }
                    }
                    msg = rx.recv_text() => {
                        let Ok(text) = msg else { break };
                        let v: Value = serde_json::from_str(&text).expect("server frames are JSON");
                        match v["type"].as_str() {
                            Some("message") => {
                                self.ledger.received.lock().expect("ledger lock").push(Received {
                                    user: self.me.clone(),
                                    conn: conn.clone(),
                                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                                    from: v["from"].as_str().unwrap_or_default().to_owned(),
                                    reference: v["body"]["ref"].as_str().unwrap_or_default().to_owned(),
                                });
                                let ack = json!({"type":"ack","id":v["id"]}).to_string();
                                if tx.send_text(ack).await.is_err() {
                                    break;
                                }
                            }
                            Some("ack") => {
                                awaiting.remove(v["ref"].as_str().unwrap_or_default());
                                self.on_ack(&v);
                            }
                            Some("reconnect") => next_url = v["url"].as_str().map(str::to_owned),
                            _ => {}
                        }
                    }
                }
            }
            if abrupt {
                // Drop the TCP connection with no close frame.
                drop((tx, rx));
            }
            *self.ledger.orphaned.lock().expect("ledger lock") += awaiting.len() as u64;
            url = match next_url {
                Some(u) => u,
                None => gateway(&self.endpoints, rotation)
                    .await
                    .unwrap_or_else(|| self.endpoints[rotation].ws.clone()),
            };
        }
    }

    fn on_ack(&self, v: &Value) {
        let reference = v["ref"].as_str().unwrap_or_default();
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        if status == "rejected" {
            let code = v["error"]["code"].as_str().unwrap_or("?").to_owned();
            *self
                .ledger
                .rejected
                .lock()
                .expect("ledger lock")
                .entry(code)
                .or_default() += 1;
            return;
        }
        let to = self
            .ledger
            .sent
            .lock()
            .expect("ledger lock")
            .get(reference)
            .map(|(_, to)| to.clone())
            .unwrap_or_default();
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        self.ledger
            .acks
            .lock()
            .expect("ledger lock")
            .insert(id, Ack { to, status });
    }
}

/// The `/gateway` answer of the first node that gives one, starting at `from`.
async fn gateway(endpoints: &[Endpoint], from: usize) -> Option<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .ok()?;
    for k in 0..endpoints.len() {
        let e = &endpoints[(from + k) % endpoints.len()];
        if let Ok(r) = client.get(format!("{}/gateway", e.http)).send().await
            && r.status() == 200
            && let Ok(v) = r.json::<Value>().await
            && let Some(u) = v["url"].as_str()
        {
            return Some(u.to_owned());
        }
    }
    None
}
