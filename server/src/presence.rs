//! Presence (docs/protocol.md, presence): who on this node watches whom, the device count each watched user
//! had when last read, and the task that reads a watched user's count again when a route event
//! says its connections changed, telling this node's watchers when the count did.
//!
//! Presence rides the route events the nodes already exchange (`inv USER` on every connect and
//! disconnect, `up NODE`, a resubscription): nothing is broadcast for it and nothing is added per
//! delivered message. A node reads a user's count (one HLEN) only when one of its own
//! connections watches that user, and tells only its own watchers. An event for a user nobody
//! here watches costs one hash lookup, and none at all while nobody here watches anyone.
//!
//! Bounds: at most `--max-watch` users per connection; a connection's watches go when it does.
//! Counts to read wait in one set (a user once, however many events came): a burst of connects
//! costs a read per round, not one per event. Frames go out through the watcher's notice queue
//! (4,096 notices; past it a frame is dropped and counted, as receipts are).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wsroute_core::routes::RouteReader;

use crate::config::PresencePolicy;
use crate::ids::{ConnId, UserId};
use crate::metrics::Metrics;
use crate::sessions::{DeliverError, Sessions};
use crate::ws::frame;

/// Counts read in one round at most (one pipeline); the rest wait for the next round.
const READ_BATCH: usize = 1000;

/// Wait after a failed read before the next try, doubling up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Who a session may watch.
#[derive(Debug, Clone)]
pub enum Allowance {
    /// `--presence-policy open`: anyone.
    Anyone,
    /// `--presence-policy token`: only these (the token's `watch` claim).
    Only(Arc<HashSet<UserId>>),
}

impl Allowance {
    /// What `policy` lets a session whose token (or dev-auth query) lists `watch` watch.
    pub fn new(policy: PresencePolicy, watch: Vec<UserId>) -> Self {
        match policy {
            PresencePolicy::Open => Self::Anyone,
            PresencePolicy::Token => Self::Only(Arc::new(watch.into_iter().collect())),
        }
    }

    /// The users of `users` this allowance does not cover.
    pub fn refused<'a>(&self, users: &'a [UserId]) -> Vec<&'a UserId> {
        match self {
            Self::Anyone => Vec::new(),
            Self::Only(allowed) => users.iter().filter(|u| !allowed.contains(*u)).collect(),
        }
    }
}

/// Why a `watch` changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "watching {watching} users, {more} more would pass the limit of {max} per connection (--max-watch)"
)]
pub struct TooMany {
    pub watching: usize,
    pub more: usize,
    pub max: usize,
}

/// This node's watches and the counts last told. One lock: every change to who watches whom,
/// every frame queued for a watcher and every count applied happen under it, so that a watcher
/// is told counts in the order they were read and never misses one between its `watch` and the
/// next change. It is held for map updates and queue pushes only, never across an `.await`.
pub struct Presence {
    watches: Mutex<Watches>,
    /// Distinct users watched here, kept beside the map so that a route event skips the lock
    /// while nobody here watches anyone.
    watched: AtomicUsize,
    /// Wakes the reading task: counts wait to be read.
    wake: Notify,
    max_watch: usize,
    routes: RouteReader,
    sessions: Arc<Sessions>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Watches {
    /// Watched users: their watchers and the count last read.
    users: HashMap<UserId, Watched>,
    /// Each watching connection's users (for `--max-watch`, and to forget them all at once).
    conns: HashMap<ConnId, HashSet<UserId>>,
    /// Watched users whose count is to be read again.
    dirty: HashSet<UserId>,
    /// (connection, user) pairs, the sum of `conns`' sets.
    pairs: usize,
}

#[derive(Debug, Default)]
struct Watched {
    /// Live connections cluster-wide, as last read; `None` until the first read.
    devices: Option<u64>,
    watchers: HashSet<ConnId>,
    /// Watchers owed their first frame (they watched before any count was known).
    waiting: HashSet<ConnId>,
}

impl Presence {
    pub fn new(
        max_watch: usize,
        routes: RouteReader,
        sessions: Arc<Sessions>,
        metrics: Metrics,
    ) -> Self {
        Self {
            watches: Mutex::new(Watches::default()),
            watched: AtomicUsize::new(0),
            wake: Notify::new(),
            max_watch,
            routes,
            sessions,
            metrics,
        }
    }

    /// `--max-watch`.
    pub fn max_watch(&self) -> usize {
        self.max_watch
    }

    fn lock(&self) -> MutexGuard<'_, Watches> {
        // Nothing panics while holding the lock; if something did, the maps are still whole.
        self.watches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `users` (distinct) to `conn`'s watches, all or none: none if that would take it past
    /// `--max-watch`. Each user gets one frame: at once when its count is known, else after the
    /// read this asks for.
    pub fn watch(&self, conn: &ConnId, users: &[UserId]) -> Result<(), TooMany> {
        let mut guard = self.lock();
        let w = &mut *guard;
        let list = w.conns.get(conn);
        let watching = list.map_or(0, HashSet::len);
        let more = users
            .iter()
            .filter(|u| !list.is_some_and(|l| l.contains(*u)))
            .count();
        if watching + more > self.max_watch {
            return Err(TooMany {
                watching,
                more,
                max: self.max_watch,
            });
        }
        let list = w.conns.entry(conn.clone()).or_default();
        let mut to_read = false;
        let mut gone = false;
        for user in users {
            if list.insert(user.clone()) {
                w.pairs += 1;
            }
            let entry = w.users.entry(user.clone()).or_default();
            entry.watchers.insert(conn.clone());
            match entry.devices {
                Some(n) => gone |= !self.tell(conn, &presence_frame(user, n)),
                None => {
                    entry.waiting.insert(conn.clone());
                    w.dirty.insert(user.clone());
                    to_read = true;
                }
            }
        }
        self.update_gauges(w);
        drop(guard);
        if gone {
            self.forget(conn);
        }
        if to_read {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Removes `users` from `conn`'s watches (users it does not watch are ignored).
    pub fn unwatch(&self, conn: &ConnId, users: &[UserId]) {
        let mut guard = self.lock();
        let w = &mut *guard;
        let Some(list) = w.conns.get_mut(conn) else {
            return;
        };
        let mut dropped = Vec::new();
        for user in users {
            if list.remove(user) {
                dropped.push(user.clone());
            }
        }
        if list.is_empty() {
            w.conns.remove(conn);
        }
        for user in &dropped {
            w.stop_watching(conn, user);
        }
        self.update_gauges(w);
    }

    /// Keeps only the users `allowed` covers among `conn`'s watches (a refreshed token whose
    /// `watch` claim no longer lists some).
    pub fn keep_allowed(&self, conn: &ConnId, allowed: &Allowance) {
        let Allowance::Only(allowed) = allowed else {
            return;
        };
        let outside: Vec<UserId> = match self.lock().conns.get(conn) {
            Some(list) => list
                .iter()
                .filter(|u| !allowed.contains(*u))
                .cloned()
                .collect(),
            None => return,
        };
        self.unwatch(conn, &outside);
    }

    /// Forgets every watch of `conn` (it closed).
    pub fn forget(&self, conn: &ConnId) {
        let mut guard = self.lock();
        let w = &mut *guard;
        let Some(list) = w.conns.remove(conn) else {
            return;
        };
        for user in &list {
            w.stop_watching(conn, user);
        }
        self.update_gauges(w);
    }

    /// A route event: `user`'s connections changed. Its count is read again if someone here
    /// watches it.
    pub fn changed(&self, user: &UserId) {
        if self.watched.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut w = self.lock();
        if w.users.contains_key(user) {
            w.dirty.insert(user.clone());
            drop(w);
            self.wake.notify_one();
        }
    }

    /// Events may have been missed (the subscription was lost), or many routes came back at
    /// once without one each (a node registered again): every watched count is read again.
    pub fn recheck_all(&self) {
        if self.watched.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut guard = self.lock();
        let w = &mut *guard;
        w.dirty.extend(w.users.keys().cloned());
        drop(guard);
        self.wake.notify_one();
    }

    /// Reads the counts that wait to be read, a round at a time, until cancelled. A round that
    /// fails puts its users back and the next one waits (100 ms, doubling to 2 s).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let batch = self.take_dirty();
            if batch.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.routes.device_counts(&batch) => r,
            };
            match read {
                Ok(counts) => {
                    backoff = MIN_BACKOFF;
                    self.metrics.presence_reads.inc_by(batch.len() as u64);
                    self.apply(&batch, &counts);
                }
                Err(e) => {
                    tracing::warn!(users = batch.len(), error = %e, retry_in_ms = backoff.as_millis() as u64, "presence: cannot read device counts");
                    self.requeue(batch);
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Puts back users whose read failed (those still watched).
    fn requeue(&self, batch: Vec<UserId>) {
        let mut w = self.lock();
        for user in batch {
            if w.users.contains_key(&user) {
                w.dirty.insert(user);
            }
        }
    }

    /// Up to [`READ_BATCH`] users whose count waits to be read, taken out of the set.
    fn take_dirty(&self) -> Vec<UserId> {
        let mut w = self.lock();
        if w.dirty.len() <= READ_BATCH {
            return w.dirty.drain().collect();
        }
        let batch: Vec<UserId> = w.dirty.iter().take(READ_BATCH).cloned().collect();
        for user in &batch {
            w.dirty.remove(user);
        }
        batch
    }

    /// Applies counts just read: every watcher of a user whose count changed hears it, and
    /// watchers still owed their first frame get one whatever it is.
    fn apply(&self, users: &[UserId], counts: &[u64]) {
        let mut gone = Vec::new();
        {
            let mut w = self.lock();
            for (user, &n) in users.iter().zip(counts) {
                let Some(entry) = w.users.get_mut(user) else {
                    continue;
                };
                let changed = entry.devices != Some(n);
                entry.devices = Some(n);
                let waiting = std::mem::take(&mut entry.waiting);
                let to: Vec<&ConnId> = if changed {
                    entry.watchers.iter().collect()
                } else {
                    waiting.iter().collect()
                };
                if to.is_empty() {
                    continue;
                }
                let text = presence_frame(user, n);
                for conn in to {
                    if !self.tell(conn, &text) {
                        gone.push(conn.clone());
                    }
                }
            }
        }
        for conn in gone {
            self.forget(&conn);
        }
    }

    /// Queues a presence frame for `conn`; false if the connection is gone (its watches are to
    /// be forgotten). A full notice queue drops the frame.
    fn tell(&self, conn: &ConnId, text: &ByteString) -> bool {
        match self.sessions.notice(conn, text.clone()) {
            Ok(()) => {
                self.metrics
                    .presence_frames
                    .with_label_values(&["queued"])
                    .inc();
                true
            }
            Err(DeliverError::Full) => {
                self.metrics
                    .presence_frames
                    .with_label_values(&["dropped"])
                    .inc();
                tracing::debug!(conn_id = %conn, "presence frame dropped: the watcher's notice queue is full");
                true
            }
            Err(DeliverError::Gone) => false,
        }
    }

    fn update_gauges(&self, w: &Watches) {
        self.watched.store(w.users.len(), Ordering::Release);
        self.metrics.presence_watchers.set(w.conns.len() as i64);
        self.metrics
            .presence_watched_users
            .set(w.users.len() as i64);
        self.metrics.presence_watches.set(w.pairs as i64);
    }
}

impl Watches {
    /// `conn` no longer watches `user` (already taken out of `conn`'s own list); a user nobody
    /// watches any more is forgotten.
    fn stop_watching(&mut self, conn: &ConnId, user: &UserId) {
        self.pairs = self.pairs.saturating_sub(1);
        let Some(entry) = self.users.get_mut(user) else {
            return;
        };
        entry.watchers.remove(conn);
        entry.waiting.remove(conn);
        if entry.watchers.is_empty() {
            self.users.remove(user);
            self.dirty.remove(user);
        }
    }
}

fn presence_frame(user: &UserId, devices: u64) -> ByteString {
    ByteString::from(frame::presence(user.as_str(), devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{Mailbox, Outbound};

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("valid")
    }

    fn conn(name: &str) -> ConnId {
        ConnId::parse(name).expect("valid")
    }

    /// A registry whose Redis is never dialled (these tests apply counts by hand), and a
    /// session table holding connections `c1` and `c2`.
    fn setup(max: usize) -> (Presence, Arc<Mailbox>, Arc<Mailbox>) {
        let redis =
            wsroute_core::db::Redis::open("redis://127.0.0.1:1", Duration::from_millis(10), 0)
                .expect("a handle dials nothing until used");
        let metrics = Metrics::new();
        let reader = RouteReader::new(redis, Arc::new(metrics.clone()));
        let sessions = Arc::new(Sessions::default());
        let mut boxes = Vec::new();
        for c in ["c1", "c2"] {
            let (h, mailbox) = crate::sessions::tests::handle("watcher", 8);
            sessions.insert(conn(c), h);
            boxes.push(mailbox);
        }
        let c2 = boxes.pop().expect("two");
        let c1 = boxes.pop().expect("two");
        (Presence::new(max, reader, sessions, metrics), c1, c2)
    }

    /// Every presence frame queued for a mailbox, as (user, devices).
    fn told(m: &Mailbox) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        while let Some(Outbound::Notice(text)) = m.try_message() {
            let v: serde_json::Value = serde_json::from_str(&text).expect("json");
            assert_eq!(v["type"], "presence");
            assert_eq!(v["online"], v["devices"].as_u64() > Some(0));
            out.push((
                v["user"].as_str().expect("user").to_owned(),
                v["devices"].as_u64().expect("devices"),
            ));
        }
        out
    }

    #[test]
    fn a_watch_is_answered_once_per_user_then_only_changes_are_told() {
        let (p, m1, m2) = setup(10);
        p.watch(&conn("c1"), &[user("bob"), user("carol")])
            .expect("under the limit");
        assert!(told(&m1).is_empty(), "counts unknown: nothing yet");
        let batch = p.take_dirty();
        assert_eq!(batch.len(), 2);
        p.apply(&[user("bob"), user("carol")], &[1, 0]);
        let mut first = told(&m1);
        first.sort();
        assert_eq!(first, [("bob".into(), 1), ("carol".into(), 0)]);
        // A second watcher of a known user is answered at once, from the count in hand.
        p.watch(&conn("c2"), &[user("bob")]).expect("ok");
        assert_eq!(told(&m2), [("bob".into(), 1)]);
        assert!(p.take_dirty().is_empty(), "no read for a known count");
        // The same count again tells nobody; a new one tells every watcher.
        p.apply(&[user("bob")], &[1]);
        assert!(told(&m1).is_empty() && told(&m2).is_empty());
        p.apply(&[user("bob")], &[2]);
        assert_eq!(told(&m1), [("bob".into(), 2)]);
        assert_eq!(told(&m2), [("bob".into(), 2)]);
    }

    #[test]
    fn too_many_changes_nothing_and_rewatching_costs_no_room() {
        let (p, m1, _) = setup(3);
        p.watch(&conn("c1"), &[user("a"), user("b")])
            .expect("2 of 3");
        let err = p
            .watch(&conn("c1"), &[user("c"), user("d")])
            .expect_err("4 > 3");
        assert_eq!(
            err,
            TooMany {
                watching: 2,
                more: 2,
                max: 3
            }
        );
        assert_eq!(p.lock().conns[&conn("c1")].len(), 2, "nothing added");
        assert!(!p.lock().users.contains_key(&user("c")));
        p.watch(&conn("c1"), &[user("a"), user("b"), user("c")])
            .expect("a and b are watched already: one more fits");
        assert_eq!(p.lock().pairs, 3);
        drop(m1);
    }

    #[test]
    fn unwatch_and_forget_leave_nothing_behind() {
        let (p, m1, _) = setup(10);
        p.watch(&conn("c1"), &[user("a"), user("b")]).expect("ok");
        p.watch(&conn("c2"), &[user("b")]).expect("ok");
        p.unwatch(&conn("c1"), &[user("a"), user("zed")]);
        {
            let w = p.lock();
            assert!(!w.users.contains_key(&user("a")), "nobody watches a");
            assert!(!w.dirty.contains(&user("a")), "and its read is off");
            assert_eq!(w.pairs, 2);
        }
        p.apply(&[user("a"), user("b")], &[5, 1]);
        assert_eq!(told(&m1), [("b".into(), 1)], "nothing about a any more");
        p.forget(&conn("c1"));
        p.forget(&conn("c2"));
        let w = p.lock();
        assert!(w.users.is_empty() && w.conns.is_empty() && w.dirty.is_empty());
        assert_eq!(w.pairs, 0);
        assert_eq!(p.watched.load(Ordering::Acquire), 0);
        assert_eq!(p.metrics.presence_watches.get(), 0);
    }

    #[test]
    fn events_mark_only_watched_users_and_a_recheck_marks_them_all() {
        let (p, _, _) = setup(10);
        p.changed(&user("nobody"));
        assert!(p.take_dirty().is_empty());
        p.watch(&conn("c1"), &[user("a"), user("b")]).expect("ok");
        p.apply(&p.take_dirty(), &[0, 0]);
        p.changed(&user("nobody"));
        p.changed(&user("a"));
        p.changed(&user("a"));
        assert_eq!(p.take_dirty(), [user("a")], "a burst is one read");
        p.recheck_all();
        let mut all = p.take_dirty();
        all.sort();
        assert_eq!(all, [user("a"), user("b")]);
    }

    #[test]
    fn a_refreshed_allowance_ends_the_watches_it_no_longer_covers() {
        let (p, _, _) = setup(10);
        p.watch(&conn("c1"), &[user("a"), user("b")]).expect("ok");
        let only_a = Allowance::Only(Arc::new([user("a")].into_iter().collect()));
        assert_eq!(only_a.refused(&[user("a"), user("b")]), [&user("b")]);
        p.keep_allowed(&conn("c1"), &only_a);
        let w = p.lock();
        assert_eq!(w.conns[&conn("c1")].len(), 1);
        assert!(w.users.contains_key(&user("a")) && !w.users.contains_key(&user("b")));
    }

    #[test]
    fn a_gone_watcher_is_forgotten_when_told() {
        let (p, m1, _) = setup(10);
        p.watch(&conn("c1"), &[user("a")]).expect("ok");
        p.sessions.remove(&conn("c1"));
        drop(m1.close());
        p.apply(&[user("a")], &[1]);
        assert!(p.lock().conns.is_empty(), "its watches went with it");
        assert!(p.lock().users.is_empty());
    }
}
