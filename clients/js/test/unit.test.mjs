// wsroute-client.js against a scripted server (a fake WebSocket and a fake fetch): what a real
// cluster cannot be made to do on purpose (forged reconnects, a silent server, exact timings).
// `node --test test/unit.test.mjs` (run by tests/tests/js_client.rs).

import assert from "node:assert/strict";
import { test } from "node:test";

import * as pkg from "../wsroute-client.js";

const { connect } = pkg;

/** A WebSocket whose server side the test plays: `frame()` delivers, `drop()` closes. */
class FakeSocket {
  static opened = [];
  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    FakeSocket.opened.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
    this.onSent?.();
  }
  /** The first frame sent that matches `pred`, now or when it is sent. */
  sentFrame(pred) {
    return new Promise((resolve) => {
      const look = () => {
        const f = this.sent.find(pred);
        if (f) resolve(f);
      };
      this.onSent = look;
      look();
    });
  }
  sends() {
    return this.sent.filter((f) => f.type === "send");
  }
  close(code = 1005, reason = "") {
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  frame(f) {
    this.onmessage({ data: JSON.stringify(f) });
  }
  drop(code = 1006) {
    this.onclose({ code, reason: "" });
  }
  hello(node = "node1", heartbeat_ms = 60000) {
    this.frame({ type: "hello", conn_id: `c${FakeSocket.opened.length}`, user: "alice", node, heartbeat_ms });
  }
  ack(send, status = "delivered", id = `m-${send.cid}`) {
    this.frame({ type: "ack", ref: send.ref, id, status, devices: status === "delivered" ? 1 : 0 });
  }
}

/** Lets every promise that can move on do so (no timer involved). */
const settled = () => new Promise(setImmediate);

/** A client on fake sockets, and a way to wait for its next state. */
function client(options = {}, url = "ws://node1.test/ws") {
  FakeSocket.opened = [];
  const waiting = [];
  const c = connect(url, {
    user: "alice",
    WebSocket: FakeSocket,
    minBackoffMs: 5,
    onState: (state, detail) => {
      for (const w of waiting.splice(0)) w({ state, detail });
    },
    ...options,
  });
  c.nextState = () => new Promise((resolve) => waiting.push(resolve));
  c.socket = () => FakeSocket.opened.at(-1);
  /** Waits for the next connection and opens it with a hello. */
  c.reopen = async () => {
    while ((await c.nextState()).state !== "connecting");
    await settled();
    c.socket().hello();
    return c.socket();
  };
  return c;
}

/** An open client that has sent one message: the client, its socket, the send's promise and frame. */
async function sentOne(options = {}) {
  const c = client(options);
  const ws = c.socket();
  ws.hello();
  const sending = c.send("bob", 1);
  await settled();
  return { c, ws, sending, frame: ws.sends()[0] };
}

test("the module exports what its types declare", () => {
  assert.deepEqual(Object.keys(pkg).sort(), ["WsRouteClient", "connect", "sameHostUrl"]);
});

test("auth goes in the query; a send made while connecting waits and resolves with its ack", async () => {
  const c = client({ device: "phone" });
  const ws = c.socket();
  assert.equal(ws.url.searchParams.get("user"), "alice");
  assert.equal(ws.url.searchParams.get("device"), "phone");
  const sending = c.send("bob", { text: "hi" });
  ws.hello();
  await settled();
  const [send] = ws.sent;
  assert.match(send.cid, /^[a-z0-9]{8}\.1$/);
  assert.deepEqual({ ...send, ref: undefined, cid: undefined }, { type: "send", to: "bob", ref: undefined, cid: undefined, body: { text: "hi" } });
  ws.frame({ type: "ack", ref: "other", id: "m0", status: "delivered", devices: 1 });
  ws.frame({ type: "ack", ref: send.ref, id: "m1", status: "rejected", devices: 0, error: { code: "bad_recipient", message: "no" } });
  const ack = await sending;
  assert.equal(ack.id, "m1");
  assert.equal(ack.error.code, "bad_recipient");
  assert.equal(c.outboxSize, 0, "a rejected send is final");
  c.close();
});

test("a token is used instead of a user; neither is an error, and so is a url that is not one", () => {
  FakeSocket.opened = [];
  const c = connect("ws://node1.test/ws", { token: "t.k.n", WebSocket: FakeSocket });
  assert.equal(FakeSocket.opened[0].url.searchParams.get("token"), "t.k.n");
  assert.equal(FakeSocket.opened[0].url.searchParams.has("user"), false);
  c.close();
  assert.throws(() => connect("ws://x/ws", { WebSocket: FakeSocket }), /user.*token/);
  assert.throws(() => connect("not a url", { user: "a", WebSocket: FakeSocket }), /Invalid URL/);
});

test("every message is acked, a repeated id is acked again but handed over once", () => {
  const got = [];
  const c = client({ onMessage: (m) => got.push(m.id) });
  const ws = c.socket();
  ws.hello();
  for (const id of ["m1", "m2", "m1"]) {
    ws.frame({ type: "message", id, from: "bob", to: "alice", ts: 1, body: {} });
  }
  assert.deepEqual(got, ["m1", "m2"]);
  assert.deepEqual(ws.sent.map((f) => `${f.type}:${f.id}`), ["ack:m1", "ack:m2", "ack:m1"]);
  assert.equal(c.stats.duplicates, 1);
  c.close();
});

test("the window of remembered ids is bounded: the oldest is forgotten first", () => {
  const got = [];
  const c = client({ rememberIds: 2, onMessage: (m) => got.push(m.id) });
  const ws = c.socket();
  ws.hello();
  for (const id of ["m1", "m2", "m3", "m3", "m2", "m1"]) {
    ws.frame({ type: "message", id, from: "bob", to: "alice", ts: 1, body: {} });
  }
  assert.deepEqual(got, ["m1", "m2", "m3", "m1"], "m1 was forgotten when m3 came");
  c.close();
});

test("an onMessage that throws is reported and the client goes on", () => {
  const errors = [];
  const got = [];
  const c = client({
    onMessage: (m) => {
      got.push(m.id);
      throw new Error("app bug");
    },
    onError: (e) => errors.push(e),
  });
  const ws = c.socket();
  ws.hello();
  ws.frame({ type: "message", id: "m1", from: "bob", to: "alice", ts: 1, body: {} });
  ws.frame({ type: "message", id: "m2", from: "bob", to: "alice", ts: 1, body: {} });
  assert.deepEqual(got, ["m1", "m2"]);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].code, "callback");
  c.close();
});

test("the outbox: after a reconnect it resends, in order and with their cids, the unacked sends and the delivered ones no receipt confirmed", async () => {
  const c = client();
  let ws = c.socket();
  ws.hello();
  const sends = ["a", "b", "c", "d", "e"].map((t) => c.send("bob", t));
  await settled();
  const [a, b, cc, d] = ws.sends();
  ws.ack(a, "delivered");
  ws.ack(b, "delivered");
  ws.ack(cc, "stored");
  ws.frame({ type: "receipt", id: `m-${a.cid}`, to: "bob", status: "received", device: "phone" });
  assert.equal((await sends[0]).status, "delivered");
  assert.equal((await sends[2]).status, "stored");
  // a: received; c: stored; b: delivered, no receipt; d, e: no ack.
  assert.equal(c.outboxSize, 3);
  ws.drop();
  ws = await c.reopen();
  await settled();
  const again = ws.sends();
  assert.deepEqual(again.map((f) => f.body), ["b", "d", "e"]);
  assert.deepEqual(again.map((f) => f.cid), [b.cid, d.cid, ws.sends()[2].cid]);
  assert.equal(again[1].cid, d.cid);
  assert.equal(c.stats.resent, 3, "e was never sent before: it counts as sent");
  assert.equal(c.stats.sent, 5);
  // The resends' acks: d's and e's promises resolve with them; b's stays resolved with its first,
  // and its resend acked delivered settles it.
  ws.ack(again[0], "delivered");
  assert.equal(c.outboxSize, 2);
  for (const f of again.slice(1)) ws.ack(f, "stored");
  assert.deepEqual((await Promise.all(sends)).map((x) => x.status), ["delivered", "delivered", "stored", "stored", "stored"]);
  assert.equal(c.outboxSize, 0);
  c.close();
});

test("a receipt that comes before its ack settles the send at its ack", async () => {
  const { c, ws, sending, frame } = await sentOne();
  ws.frame({ type: "receipt", id: "m-early", to: "bob", status: "received" });
  ws.ack(frame, "delivered", "m-early");
  assert.equal((await sending).status, "delivered");
  assert.equal(c.outboxSize, 0);
  c.close();
});

test("a send with a cid already in the outbox is that send; a cid outside its rules fails", async () => {
  const c = client();
  const ws = c.socket();
  ws.hello();
  const one = c.send("bob", "x", { cid: "chat.7" });
  const two = c.send("bob", "x", { cid: "chat.7" });
  assert.equal(one, two);
  await settled();
  assert.equal(ws.sends().length, 1);
  for (const bad of ["", "a b", "x".repeat(65), "é", 7]) {
    await assert.rejects(c.send("bob", "x", { cid: bad }), (e) => e.code === "bad_field");
  }
  c.close();
  await assert.rejects(one, (e) => e.code === "closed");
});

test("the outbox is bounded: past maxOutbox a send fails at once and queues nothing", async () => {
  const c = client({ maxOutbox: 2 });
  const first = c.send("bob", 1);
  const second = c.send("bob", 2);
  await assert.rejects(c.send("bob", 3), (e) => e.code === "outbox_full" && /nothing was sent/.test(e.message));
  assert.equal(c.outboxSize, 2);
  c.socket().hello();
  await settled();
  assert.deepEqual(c.socket().sends().map((f) => f.body), [1, 2]);
  for (const f of c.socket().sends()) c.socket().ack(f, "stored");
  await Promise.all([first, second]);
  const third = c.send("bob", 3); // room again
  assert.equal(c.outboxSize, 1);
  c.close();
  await assert.rejects(third, (e) => e.code === "closed");
});

test("a delivered send leaves the outbox when its receipt does not come in time", async () => {
  const errors = [];
  const { c, ws, sending, frame } = await sentOne({ receiptTimeoutMs: 10, onError: (e) => errors.push(e) });
  ws.ack(frame, "delivered");
  await sending;
  assert.equal(c.outboxSize, 1);
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(c.outboxSize, 0);
  assert.equal(c.stats.expired, 1);
  assert.deepEqual(errors, [], "its connection lived on: nothing to tell");
  c.close();
});

test("a resend refused for a passing reason is tried again after a back-off; for another reason the app hears so", async () => {
  const errors = [];
  const c = client({ onError: (e) => errors.push(e) });
  let ws = c.socket();
  ws.hello();
  const sending = [c.send("bob", "quota"), c.send("bob", "gone")];
  await settled();
  for (const f of ws.sends()) ws.ack(f, "delivered");
  await Promise.all(sending);
  ws.drop();
  ws = await c.reopen();
  await settled();
  const [quota, gone] = ws.sends();
  const refuse = (f, code) => ws.frame({ type: "ack", ref: f.ref, id: `m-${f.cid}`, status: "rejected", devices: 0, error: { code, message: "no" } });
  refuse(quota, "quota_exceeded");
  refuse(gone, "bad_recipient");
  assert.deepEqual(errors.map((e) => e.code), ["resend_refused"]);
  assert.match(errors[0].message, new RegExp(`resend of m-${gone.cid}.*bad_recipient`));
  assert.equal(c.outboxSize, 1, "the quota one waits");
  const retry = await ws.sentFrame((f) => f.type === "send" && f.cid === quota.cid && f.ref !== quota.ref);
  // Refused again as an error frame (rate_limited): again later.
  ws.frame({ type: "error", code: "rate_limited", message: "slow down", ref: retry.ref });
  const third = await ws.sentFrame((f) => f.type === "send" && f.cid === quota.cid && f.ref !== quota.ref && f.ref !== retry.ref);
  ws.ack(third, "stored");
  assert.equal(c.outboxSize, 0);
  assert.equal(errors.length, 1);
  c.close();
});

test("a send whose connection died before its ack, resent and refused for a passing reason, is tried again; its promise waits for a later answer", async () => {
  const errors = [];
  const c = client({ onError: (e) => errors.push(e), minBackoffMs: 1, maxBackoffMs: 5 });
  let ws = c.socket();
  ws.hello();
  let answer = null;
  const sending = c.send("bob", "late").then((a) => (answer = a));
  const refusedFirst = c.send("bob", "first");
  await settled();
  const [late, first] = ws.sends();
  // A first send refused is the app's answer, passing reason or not: not resent.
  ws.frame({ type: "ack", ref: first.ref, id: `m-${first.cid}`, status: "rejected", devices: 0, error: { code: "quota_exceeded", message: "no" } });
  assert.equal((await refusedFirst).status, "rejected");
  // The other one's connection dies before its ack; its resend is refused twice (an ack, then
  // an error frame), both for passing reasons.
  ws.drop();
  ws = await c.reopen();
  await settled();
  const [resent] = ws.sends();
  assert.equal(resent.cid, late.cid);
  ws.frame({ type: "ack", ref: resent.ref, id: `m-${late.cid}`, status: "rejected", devices: 0, error: { code: "quota_exceeded", message: "over the minute's quota" } });
  await settled();
  assert.equal(answer, null, "the app is not told rejected");
  assert.equal(c.outboxSize, 1);
  const again = await ws.sentFrame((f) => f.type === "send" && f.cid === late.cid && f.ref !== resent.ref);
  ws.frame({ type: "error", code: "rate_limited", message: "slow down", ref: again.ref });
  const third = await ws.sentFrame((f) => f.type === "send" && f.cid === late.cid && f.ref !== resent.ref && f.ref !== again.ref);
  ws.ack(third, "stored");
  assert.equal((await sending).status, "stored");
  assert.equal(c.outboxSize, 0);
  assert.equal(c.stats.refused, 2);
  assert.deepEqual(errors, []);
  c.close();
});

test("a send fails with code timeout when no ack comes in time, connected or not, and leaves the outbox", async () => {
  const c = client({ ackTimeoutMs: 20 });
  await assert.rejects(c.send("bob", 1), (e) => e.code === "timeout" && /no ack for .* within 20 ms/.test(e.message));
  c.socket().hello();
  await assert.rejects(c.send("bob", 2), (e) => e.code === "timeout");
  assert.equal(c.outboxSize, 0);
  c.close();
});

test("a refused send (error frame with its ref) fails with the server's code and is not resent", async () => {
  const { c, ws, sending, frame } = await sentOne();
  ws.frame({ type: "error", code: "bad_field", message: "nope", ref: frame.ref });
  await assert.rejects(sending, (e) => e.code === "bad_field");
  assert.equal(c.outboxSize, 0);
  c.close();
});

test("a reconnect frame sends the next connection to the url given, at once", async () => {
  const c = client({ nodes: ["ws://node2.test/ws"] });
  const ws = c.socket();
  ws.hello();
  ws.frame({ type: "reconnect", url: "ws://node2.test/ws", reason: "draining" });
  ws.drop(1001);
  await settled();
  const next = c.socket();
  assert.notEqual(next, ws);
  assert.equal(next.url.host, "node2.test");
  assert.equal(next.url.searchParams.get("user"), "alice");
  c.close();
});

test("a lost connection keeps its sends for the next one, which comes after a back-off", async () => {
  const c = client();
  const ws = c.socket();
  ws.hello();
  const sending = c.send("bob", 1);
  ws.drop();
  assert.equal(c.state, "closed");
  const again = await c.reopen();
  assert.notEqual(again, ws);
  assert.equal(again.url.host, "node1.test");
  await settled();
  const [resent] = again.sends();
  assert.equal(resent.cid, ws.sends()[0].cid);
  again.ack(resent, "delivered");
  assert.equal((await sending).status, "delivered");
  c.close();
  await assert.rejects(c.send("bob", 2), (e) => e.code === "closed");
});

test("back-off: full jitter below a ceiling that doubles per failure up to maxBackoffMs", async (t) => {
  const waits = [];
  const realTimeout = globalThis.setTimeout;
  t.mock.method(globalThis, "setTimeout", (f, ms, ...rest) => {
    waits.push(ms);
    return realTimeout(f, 0, ...rest);
  });
  t.mock.method(Math, "random", () => 0.999);
  const c = client({ minBackoffMs: 100, maxBackoffMs: 1000, ackTimeoutMs: 0 });
  for (let i = 0; i < 6; i++) {
    c.socket().drop();
    await c.nextState(); // connecting again
  }
  const retries = waits.filter((w) => w !== undefined);
  assert.deepEqual(retries, [100, 200, 400, 800, 1000, 1000].map((ceiling) => ceiling * 0.999));
  t.mock.restoreAll();
  // After a hello the failures start again from the bottom.
  t.mock.method(globalThis, "setTimeout", (f, ms, ...rest) => {
    waits.push(ms);
    return realTimeout(f, 0, ...rest);
  });
  t.mock.method(Math, "random", () => 0.5);
  c.socket().hello();
  waits.length = 0;
  c.socket().drop();
  await c.nextState();
  assert.deepEqual(waits.map(Math.round), [50]);
  t.mock.restoreAll();
  c.close();
});

test("it pings every heartbeat and gives up on a silent server at once", async () => {
  const c = client();
  const ws = c.socket();
  ws.hello("node1", 20);
  const { state, detail } = await c.nextState();
  assert.equal(state, "closed");
  assert.equal(detail.code, 4000);
  assert.ok(ws.sent.some((f) => f.type === "ping"), JSON.stringify(ws.sent));
  c.close();
});

test("a reconnect to a host it was not given is not followed: the token stays home", async () => {
  const errors = [];
  const c = client({ token: "t.k.n", user: undefined, nodes: ["ws://node2.test"], onError: (e) => errors.push(e.message) });
  const ws = c.socket();
  ws.hello();
  for (const url of [
    "ws://evil.example/ws",
    "ws://node2.test.evil.example/ws",
    "http://node2.test/ws",
    "javascript:alert(1)",
    "not a url",
  ]) {
    ws.frame({ type: "reconnect", url, reason: "draining" });
  }
  assert.equal(errors.length, 5, errors.join("\n"));
  assert.match(errors[0], /not following a reconnect to ws:\/\/evil\.example\/ws/);
  ws.drop(1001);
  // Not at once, and not there: back to its own server after a back-off.
  assert.equal(c.socket(), ws);
  await c.nextState(); // connecting
  const next = c.socket();
  assert.notEqual(next, ws);
  assert.equal(next.url.host, "node1.test");
  assert.ok(FakeSocket.opened.every((s) => s.url.host === "node1.test"), "no socket to another host");
  c.close();
});

test("a wss client does not follow a reconnect down to ws, even on its own host", () => {
  FakeSocket.opened = [];
  const errors = [];
  const c = connect("wss://node1.test/ws", { user: "alice", WebSocket: FakeSocket, onError: (e) => errors.push(e) });
  const ws = FakeSocket.opened[0];
  ws.hello();
  ws.frame({ type: "reconnect", url: "ws://node1.test/ws", reason: "draining" });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "untrusted_reconnect");
  ws.frame({ type: "reconnect", url: "wss://node1.test:8443/ws", reason: "draining" });
  assert.equal(errors.length, 2, "another port is another origin");
  c.close();
});

/** A fetch that answers /gateway from a script: `answers[host]` is a url, a status or an Error. */
function fakeFetch(answers, asked = []) {
  return async (url) => {
    const u = new URL(url);
    asked.push(`${u.host}${u.pathname}`);
    const a = answers[u.host];
    if (a instanceof Error) throw a;
    if (typeof a === "number") return { ok: false, status: a, json: async () => ({}) };
    return { ok: true, status: 200, json: async () => ({ url: a, node: "n" }) };
  };
}

test("with only a gateway, it asks the gateways in turn and connects where the first answer says", async () => {
  const asked = [];
  const errors = [];
  FakeSocket.opened = [];
  const c = connect(null, {
    user: "alice",
    WebSocket: FakeSocket,
    gateway: ["http://gw1.test", "http://gw2.test/base/"],
    fetch: fakeFetch({ "gw1.test": new Error("refused"), "gw2.test": "ws://node7.test/ws" }, asked),
    onError: (e) => errors.push(e),
  });
  await settled();
  assert.deepEqual(asked, ["gw1.test/gateway", "gw2.test/base/gateway"]);
  assert.equal(errors[0].code, "gateway");
  const ws = FakeSocket.opened[0];
  assert.equal(ws.url.host, "node7.test");
  ws.hello();
  // A node a gateway named is trusted for a reconnect.
  ws.frame({ type: "reconnect", url: "ws://node7.test/ws", reason: "draining" });
  assert.equal(errors.length, 1);
  c.close();
});

test("with a url and a gateway: the url first, the gateway on every reconnect, the url when no gateway answers", async () => {
  const asked = [];
  const answers = { "gw.test": "ws://node2.test/ws" };
  const c = client({ gateway: "http://gw.test", fetch: fakeFetch(answers, asked), onError: () => {} });
  assert.equal(c.socket().url.host, "node1.test");
  assert.deepEqual(asked, []);
  c.socket().hello();
  c.socket().drop();
  await c.reopen();
  assert.equal(c.socket().url.host, "node2.test");
  assert.deepEqual(asked, ["gw.test/gateway"]);
  answers["gw.test"] = 503;
  c.socket().drop();
  await c.reopen();
  assert.equal(c.socket().url.host, "node1.test");
  c.close();
});

test("a wss-only client does not take a ws: node from a gateway", async () => {
  const errors = [];
  FakeSocket.opened = [];
  const c = connect(null, {
    user: "alice",
    WebSocket: FakeSocket,
    minBackoffMs: 60000,
    gateway: "https://gw.test",
    fetch: fakeFetch({ "gw.test": "ws://node1.test/ws" }),
    onError: (e) => errors.push(e.message),
  });
  await settled();
  assert.equal(FakeSocket.opened.length, 0);
  assert.match(errors[0], /not following wss down to ws/);
  c.close();
});

test("watch: frames in chunks, bounded by maxWatch, sent again after a reconnect; presence of others is not handed over", async () => {
  const seen = [];
  const c = client({ maxWatch: 300, onPresence: (p) => seen.push(`${p.user}:${p.online}:${p.devices}`) });
  let ws = c.socket();
  ws.hello();
  const users = Array.from({ length: 300 }, (_, i) => `u${i}`);
  c.watch(users);
  const frames = ws.sent.filter((f) => f.type === "watch");
  assert.deepEqual(frames.map((f) => f.users.length), [256, 44]);
  assert.throws(() => c.watch("one-more"), (e) => e.code === "too_many");
  assert.throws(() => c.watch([""]), (e) => e.code === "bad_field");
  c.unwatch(users.slice(2));
  assert.deepEqual(ws.sent.filter((f) => f.type === "unwatch").map((f) => f.users.length), [256, 42]);
  ws.frame({ type: "presence", user: "u0", online: true, devices: 2 });
  ws.frame({ type: "presence", user: "u5", online: true, devices: 1 });
  assert.deepEqual(seen, ["u0:true:2"]);
  ws.drop();
  ws = await c.reopen();
  assert.deepEqual(ws.sent.filter((f) => f.type === "watch"), [{ type: "watch", users: ["u0", "u1"] }]);
  c.close();
});

test("read sends a read frame when connected, and says false when not", () => {
  const c = client();
  assert.equal(c.read("m1"), false);
  c.socket().hello();
  assert.equal(c.read("m1"), true);
  assert.deepEqual(c.socket().sent, [{ type: "read", id: "m1" }]);
  c.close();
});

test("opened() resolves with the hello, and rejects when closed first", async () => {
  const c = client();
  const waiting = c.opened();
  c.socket().hello("node3");
  assert.equal((await waiting).node, "node3");
  assert.equal((await c.opened()).node, "node3");
  c.close();
  await assert.rejects(c.opened(), (e) => e.code === "closed");
});

/** An unsigned token whose payload carries `exp` (the client reads it only to schedule). */
function jwt(exp, n) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256" })}.${b64({ sub: "alice", exp, n })}.sig`;
}

test("getToken gives every connect its token, refreshes it before exp, and a 4001 reconnects at once", async () => {
  FakeSocket.opened = [];
  const tokens = [];
  const getToken = async () => {
    tokens.push(jwt(Math.floor(Date.now() / 1000) + 1, tokens.length));
    return tokens.at(-1);
  };
  const c = connect("ws://node1.test/ws", { getToken, WebSocket: FakeSocket, minBackoffMs: 60000 });
  await settled();
  const ws = FakeSocket.opened[0];
  assert.equal(ws.url.searchParams.get("token"), tokens[0]);
  ws.hello();
  // The token expires within a second: the refresh goes out before, with a new token.
  const refresh = await ws.sentFrame((f) => f.type === "refresh");
  assert.equal(refresh.token, tokens[1]);
  ws.frame({ type: "refreshed", exp: Math.floor(Date.now() / 1000) + 3600 });
  // The server ends the session anyway (4001): a new token, a new connection, no back-off.
  ws.drop(4001);
  await settled();
  assert.equal(FakeSocket.opened.length, 2);
  assert.equal(FakeSocket.opened[1].url.searchParams.get("token"), tokens[2]);
  c.close();
});
