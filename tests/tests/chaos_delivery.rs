//! Delivery under single failures (issue #12, point 4): a sender streams to a recipient while a
//! node is killed, Redis restarts empty or a mesh stream breaks, and a ledger says what became of
//! every message. The promise checked each time: 0 lost of what the sender saw acked `delivered`
//! or `stored`, no id twice on one connection. Sends whose ack the sender never saw are
//! "unknown": not counted as lost (a client library resends them with their `cid`). Order breaks
//! from the sender's connection to each recipient connection are reported (README.md, "When
//! things fail", says where order does not hold).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wsroute_tests::ledger::StreamLedger;
use wsroute_tests::{Client, Cluster, RedisServer, eventually, metric, patience};

/// Streams here send up to 1,000 a second, over the default flood limit (200 a second).
fn fast_senders(extra: &mut Vec<String>) {
    extra.extend(["--max-msgs-per-sec".into(), "100000".into()]);
}

const KEPT_BY_CONNECTION: &str = "wsroute_kept_total{by=\"connection\"}";
const KEPT_BY_HOLD: &str = "wsroute_kept_total{by=\"hold\"}";

/// How far a stream got, shared with the test that watches it.
#[derive(Clone)]
struct Progress {
    /// Sends written so far (watched: the test acts the moment a count is reached).
    sent: Arc<watch::Sender<usize>>,
    /// Sends to make in all (the test may lower it while the stream runs).
    limit: Arc<AtomicUsize>,
}

impl Progress {
    fn new(limit: usize) -> Self {
        Self {
            sent: Arc::new(watch::Sender::new(0)),
            limit: Arc::new(AtomicUsize::new(limit)),
        }
    }

    fn sent(&self) -> usize {
        *self.sent.borrow()
    }

    /// Waits until at least `n` sends went out.
    async fn reached(&self, n: usize) {
        let mut sent = self.sent.subscribe();
        let reached = tokio::time::timeout(patience(), sent.wait_for(|s| *s >= n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "the stream did not reach {n} sends (it stopped at {})",
            self.sent()
        );
    }

    /// `more` sends after those made so far, then the stream ends.
    fn stop_after(&self, more: usize) {
        self.limit.store(self.sent() + more, Ordering::SeqCst);
    }
}

/// What a stream leaves: the sender's client (closed if its node died), the ledger of its sends
/// and every other frame it read (receipts).
struct Streamed {
    client: Client,
    ledger: StreamLedger,
    others: Vec<Value>,
}

/// Send `n` to `to` with ref `r{n}`, cid `{cid}{n}` and body `{"n": n}`: false if the connection
/// is gone.
async fn send_numbered(client: &mut Client, to: &str, cid: &str, n: usize) -> bool {
    client
        .try_send_json(json!({
            "type": "send", "to": to, "ref": format!("r{n}"), "cid": format!("{cid}{n}"),
            "body": {"n": n},
        }))
        .await
}

/// Sends 0, 1, 2, ... to `to`, one per `pace` tick, pipelined (acks are picked up as they come),
/// until `progress.limit` or the connection ends; then reads the acks still owed until they all
/// came, the connection ended or patience ran out.
async fn stream(
    mut client: Client,
    to: &str,
    cid: &str,
    pace: Duration,
    progress: Progress,
) -> Streamed {
    let mut ledger = StreamLedger::default();
    let mut others = Vec::new();
    let mut tick = tokio::time::interval(pace);
    let mut take = |frames: Vec<Value>, ledger: &mut StreamLedger| {
        for f in frames {
            let n = f["ref"].as_str().and_then(|r| r.strip_prefix('r'));
            match n.and_then(|n| n.parse().ok()) {
                Some(n) if f["type"] == "ack" => ledger.ack(n, f),
                _ => others.push(f),
            }
        }
    };
    let mut n = 0;
    while n < progress.limit.load(Ordering::SeqCst) && !client.is_closed() {
        tick.tick().await;
        if !send_numbered(&mut client, to, cid, n).await {
            break;
        }
        ledger.sent(n);
        n += 1;
        progress.sent.send_replace(n);
        let ready = client.ready_frames().await;
        take(ready, &mut ledger);
    }
    let owed = ledger.sent_count() - ledger.acked_count();
    let rest = client
        .collect_until(patience(), |frames| {
            frames.iter().filter(|f| f["type"] == "ack").count() >= owed
        })
        .await;
    take(rest, &mut ledger);
    Streamed {
        client,
        ledger,
        others,
    }
}

/// [`stream`] to bob on its own task, with at most `limit` sends.
fn spawn_stream(
    alice: Client,
    cid: &'static str,
    pace: Duration,
    limit: usize,
) -> (Progress, JoinHandle<Streamed>) {
    let progress = Progress::new(limit);
    let task = tokio::spawn(stream(alice, "bob", cid, pace, progress.clone()));
    (progress, task)
}

/// A recipient's connection read on its own task (auto-acking unless it was made manual) until
/// the connection ends, or until every id the test then names has come.
struct Reader {
    want: watch::Sender<Option<HashSet<String>>>,
    task: JoinHandle<(Client, Vec<Value>)>,
}

fn has_all(frames: &[Value], more: &[Value], want: &HashSet<String>) -> bool {
    let got: HashSet<&str> = frames
        .iter()
        .chain(more)
        .filter(|f| f["type"] == "message")
        .filter_map(|f| f["id"].as_str())
        .collect();
    want.iter().all(|id| got.contains(id.as_str()))
}

impl Reader {
    fn start(mut client: Client) -> Self {
        let (want, rx) = watch::channel(None::<HashSet<String>>);
        let task = tokio::spawn(async move {
            let mut frames: Vec<Value> = Vec::new();
            let mut deadline = None;
            while !client.is_closed() {
                let wanted = rx.borrow().clone();
                if let Some(w) = &wanted {
                    let d = *deadline.get_or_insert_with(|| Instant::now() + patience());
                    if has_all(&frames, &[], w) || Instant::now() >= d {
                        break;
                    }
                }
                // Short reads, so that what the test names is looked at soon after it is named.
                let more = client
                    .collect_until(Duration::from_millis(50), |more| {
                        wanted.as_ref().is_some_and(|w| has_all(&frames, more, w))
                    })
                    .await;
                frames.extend(more);
            }
            (client, frames)
        });
        Self { want, task }
    }

    /// Reads until every id in `want` came (or patience runs out, or the connection ended).
    async fn finish(self, want: HashSet<String>) -> (Client, Vec<Value>) {
        let _ = self.want.send(Some(want));
        self.task.await.expect("reader task")
    }
}

/// Receipts of `status` in `frames`.
fn receipts(frames: &[Value], status: &str) -> HashSet<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "receipt" && f["status"] == status)
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

fn report(scenario: &str, ledger: &StreamLedger) {
    eprintln!("[{scenario}] {}", ledger.summary());
    let examples = ledger.order_break_examples(5);
    if !examples.is_empty() {
        eprintln!(
            "[{scenario}] order breaks (connection, n that came late, highest n before it): \
             {examples:?}"
        );
    }
}

/// kill -9 of the sender's node mid-stream: everything the sender saw acked reaches the
/// recipient; what was in flight is unknown to the sender, and not counted as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_senders_node_mid_stream() {
    let mut c = Cluster::start_with(3, |o| fast_senders(&mut o.extra)).await;
    let alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let bob = Reader::start(Client::connect(&c.node(2).ws_user("bob")).await);

    let (progress, sender) = spawn_stream(alice, "k1-", Duration::from_millis(2), 500);
    progress.reached(250).await;
    c.nodes[0].kill();
    let Streamed { mut ledger, .. } = sender.await.expect("stream task");
    let (_bob, frames) = bob.finish(ledger.promised()).await;
    ledger.connection("alice", &frames);

    report("sender's node killed", &ledger);
    assert!(
        (250..500).contains(&ledger.sent_count()),
        "the kill came mid-stream: {}",
        ledger.summary()
    );
    assert!(ledger.ids("delivered").len() >= 200, "{}", ledger.summary());
    ledger.assert_kept("sender's node killed");
    assert_eq!(ledger.order_breaks(), [0], "nothing broke between the two");
}

/// kill -9 of the one node holding both ends, with a recipient app that read but did not ack:
/// nothing else held those messages. The sender's receipts say which ones: acked `delivered`
/// with no `received` receipt. Resent with their `cid` from another node, they reach the
/// recipient on a third node, each once, with their first ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_holding_both_ends_then_resend_by_cid() {
    const N: usize = 100;
    const ACKED: usize = 40;
    let mut c = Cluster::start_with(3, |o| fast_senders(&mut o.extra)).await;
    let alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut phone = Client::connect(&c.node(1).ws_user("bob"))
        .await
        .manual_ack();

    let progress = Progress::new(N);
    let Streamed {
        client: mut alice,
        mut ledger,
        ..
    } = stream(alice, "bob", "k2-", Duration::from_millis(1), progress).await;
    let delivered = ledger.ids("delivered");
    assert_eq!(delivered.len(), N, "{}", ledger.summary());

    // Bob's app reads every message and acks the first 40 only.
    let read = phone
        .collect_until(patience(), |f| has_all(f, &[], &delivered))
        .await;
    let read: Vec<Value> = read
        .into_iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert_eq!(read.len(), N);
    let mut confirmed_by_app = Vec::new();
    for m in read
        .iter()
        .filter(|m| m["body"]["n"].as_u64() < Some(ACKED as u64))
    {
        phone.send_json(json!({"type":"ack","id":m["id"]})).await;
        confirmed_by_app.push(m.clone());
    }
    let acked_ids: HashSet<String> = confirmed_by_app
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    // Alice hears of each ack before the crash.
    let heard = alice
        .collect_until(patience(), |f| {
            acked_ids.is_subset(&receipts(f, "received"))
        })
        .await;
    let received = receipts(&heard, "received");
    assert_eq!(received, acked_ids, "a received receipt per app ack");

    c.nodes[0].kill();
    drop(phone);
    // What alice's receipts say: these were acked delivered and no device confirmed them.
    let unconfirmed: Vec<usize> = (0..N)
        .filter(|n| {
            let id = ledger.acked(*n).and_then(|a| a["id"].as_str());
            id.is_some_and(|id| !received.contains(id))
        })
        .collect();
    eprintln!(
        "[node holding both ends killed] alice's receipts: received {}, stored {}, none {} \
         (acked delivered, unconfirmed: to resend with their cid)",
        received.len(),
        receipts(&heard, "stored").len(),
        unconfirmed.len()
    );
    assert_eq!(unconfirmed.len(), N - ACKED);
    // What the app confirmed is its connection's share; what it read and did not ack died with
    // it.
    ledger.connection("alice", &confirmed_by_app);

    // Alice's client library resends the unconfirmed ones from node 2, with their cids.
    let mut alice = Client::connect(&c.node(2).ws_user("alice")).await;
    let mut resent = HashSet::new();
    for &n in &unconfirmed {
        assert!(send_numbered(&mut alice, "bob", "k2-", n).await);
    }
    for &n in &unconfirmed {
        let ack = alice.expect_ack(&format!("r{n}")).await;
        let first = ledger.acked(n).expect("acked before the crash");
        assert_eq!(ack["id"], first["id"], "one cid, one id: {ack}");
        assert!(
            ack["status"] == "stored" || ack["status"] == "delivered",
            "{ack}"
        );
        resent.insert(ack["id"].as_str().unwrap_or_default().to_owned());
    }

    // Bob comes back on node 3 and gets each of them, once.
    let mut bob = Client::connect(&c.node(3).ws_user("bob")).await;
    let mut frames = bob
        .collect_until(patience(), |f| has_all(f, &[], &resent))
        .await;
    frames.extend(bob.frames_until_pong().await);
    ledger.connection("alice", &frames);
    report("node holding both ends killed", &ledger);
    ledger.assert_kept("node holding both ends killed");
    let again: HashSet<String> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(again, resent, "bob gets exactly what was unconfirmed");
}

/// Redis restarted empty at the moment the recipient's connection drops, with messages it did
/// not ack: they are kept across the blip (the recipient's node retries, the sender's node holds
/// them meanwhile), the nodes put their routes back within 15 s, and the recipient gets every
/// message on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_as_the_recipient_drops() {
    const N: usize = 100;
    // Always a single server: this one restarts.
    let redis = RedisServer::start_with_args(&[]).await;
    let mut c = Cluster::start_on(redis, 3, |o| fast_senders(&mut o.extra)).await;
    let alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let mut phone = Client::connect(&c.node(2).ws_user("bob"))
        .await
        .manual_ack();

    let Streamed {
        client: mut alice,
        mut ledger,
        ..
    } = stream(
        alice,
        "bob",
        "k3-",
        Duration::from_millis(1),
        Progress::new(N),
    )
    .await;
    let delivered = ledger.ids("delivered");
    assert_eq!(delivered.len(), N, "{}", ledger.summary());
    let read = phone
        .collect_until(patience(), |f| has_all(f, &[], &delivered))
        .await;
    assert!(has_all(&read, &[], &delivered), "bob's app read them all");
    // Bob's app acked nothing: his connection's share is nothing.
    ledger.connection("alice", &[]);

    c.redis.stop();
    drop(phone);
    c.redis.start_again().await;
    let restarted = Instant::now();
    // Alice and bob's old connection's node: every route comes back without a reconnect.
    eventually("alice's route back in Redis", || async {
        (c.redis.routes_of_user("alice").await == 1).then_some(())
    })
    .await;
    let back = restarted.elapsed();
    assert!(back < Duration::from_secs(15), "{back:?}");
    // A node's first Redis call after the restart may find its connection dead (it is replaced
    // on that failure): the client retries a 503, as clients do.
    let url = c.node(3).ws_user("bob");
    let mut bob = eventually("bob connects on node 3", || async {
        Client::try_connect(&url).await.ok()
    })
    .await;
    let mut frames = bob
        .collect_until(patience(), |f| has_all(f, &[], &delivered))
        .await;
    frames.extend(bob.frames_until_pong().await);
    ledger.connection("alice", &frames);
    // Alice hears of each one, though her route was not in Redis yet when they were kept: her
    // node knows its own connections.
    let heard = alice
        .collect_until(patience(), |f| delivered.is_subset(&receipts(f, "stored")))
        .await;
    let kept_by_conn = metric(&c.node(2).http("/metrics"), KEPT_BY_CONNECTION).await;
    let kept_by_hold = metric(&c.node(1).http("/metrics"), KEPT_BY_HOLD).await;
    let retried = c
        .node(2)
        .log_text()
        .contains("cannot keep a delivered message yet");
    eprintln!(
        "[redis restarted empty] routes back {back:?} after the restart; moved to the inbox by \
         bob's node {kept_by_conn} (retried across the blip: {retried}), by alice's node's holds {kept_by_hold}; alice's stored \
         receipts: {} of {N}",
        receipts(&heard, "stored").len()
    );
    assert_eq!(
        receipts(&heard, "stored"),
        delivered,
        "a stored receipt for each"
    );
    for n in [1, 2] {
        let dropped = metric(&c.node(n).http("/metrics"), "wsroute_delivered_lost_total").await;
        assert_eq!(dropped, 0.0, "node {n} could not keep some messages");
    }
    report("redis restarted empty", &ledger);
    ledger.assert_kept("redis restarted empty");
}

/// A steady stream across a mesh stream break: the recipient's node is killed and started again
/// on its ports, the recipient reconnects there, the stream goes on. Nothing acked is lost, no
/// connection sees an id twice; order breaks per recipient connection are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_across_a_broken_mesh_stream() {
    let mut c = Cluster::start_with(3, |o| fast_senders(&mut o.extra)).await;
    let alice = Client::connect(&c.node(1).ws_user("alice")).await;
    let bob = Reader::start(Client::connect(&c.node(2).ws_user("bob")).await);

    // At most 3,000 sends (15 s): the test lowers it once bob is back.
    let (progress, sender) = spawn_stream(alice, "k4-", Duration::from_millis(5), 3000);
    progress.reached(200).await;
    c.nodes[1].kill();
    let killed_at = progress.sent();
    let (_, before) = bob.finish(HashSet::new()).await;
    let redis = &c.redis;
    c.nodes[1].restart(redis).await;
    // Bob stays away for 100 more sends (half a second: they are stored), then comes back.
    progress.reached(killed_at + 100).await;
    let bob = Reader::start(Client::connect(&c.node(2).ws_user("bob")).await);
    let back_at = progress.sent();
    progress.stop_after(200);
    let Streamed {
        mut ledger, others, ..
    } = sender.await.expect("stream task");
    assert!(
        progress.sent() < 3000,
        "bob came back within the stream's bound"
    );

    ledger.connection("alice", &before);
    let got_before: HashSet<String> = before
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect();
    let want: HashSet<String> = ledger.promised().difference(&got_before).cloned().collect();
    let (_bob, after) = bob.finish(want).await;
    ledger.connection("alice", &after);
    eprintln!(
        "[mesh stream broken] node 2 killed after send {killed_at}, bob back after send \
         {back_at}; alice's receipts: received {}, stored {}",
        receipts(&others, "received").len(),
        receipts(&others, "stored").len()
    );
    report("mesh stream broken", &ledger);
    ledger.assert_kept("mesh stream broken");
    // Live again once bob is back (the first second after a failed reopen fails fast and is
    // stored: the peer worker's reopen back-off).
    assert!(
        ledger.ids("delivered").len() > got_before.len(),
        "the stream reached bob live before and after: {}",
        ledger.summary()
    );
    // Order holds on the connection that lived until the kill.
    assert_eq!(ledger.order_breaks()[0], 0, "{}", ledger.summary());
    assert_eq!(
        ledger.unknown(),
        0,
        "every send answered: {}",
        ledger.summary()
    );
}
