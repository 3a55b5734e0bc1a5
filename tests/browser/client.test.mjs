// web/wsroute.js against a scripted server (a fake WebSocket): what the browser test cannot
// provoke on purpose. `node --test tests/browser/client.test.mjs` (run by tests/tests/browser.rs).

import assert from "node:assert/strict";
import { test } from "node:test";

import { connect } from "../../web/wsroute.js";

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
    this.frame({ type: "hello", conn_id: "c1", user: "alice", node, heartbeat_ms });
  }
}

/** Lets every promise that can move on do so (no timer involved). */
const settled = () => new Promise(setImmediate);

/** A client on fake sockets, and a way to wait for its next state. */
function client(options = {}) {
  FakeSocket.opened = [];
  const waiting = [];
  const c = connect("ws://node1.test/ws", {
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
  return c;
}

test("auth goes in the query; a send made while connecting waits and resolves with its ack", async () => {
  const c = client({ device: "phone" });
  const ws = c.socket();
  assert.equal(ws.url.searchParams.get("user"), "alice");
  assert.equal(ws.url.searchParams.get("device"), "phone");
  const sending = c.send("bob", { text: "hi" });
  ws.hello();
  await settled();
  const [send] = ws.sent;
  assert.deepEqual({ ...send, ref: undefined }, { type: "send", to: "bob", ref: undefined, body: { text: "hi" } });
  ws.frame({ type: "ack", ref: "other", id: "m0", status: "delivered", devices: 1 });
  ws.frame({ type: "ack", ref: send.ref, id: "m1", status: "rejected", devices: 0, error: { code: "bad_recipient", message: "no" } });
  const ack = await sending;
  assert.equal(ack.id, "m1");
  assert.equal(ack.error.code, "bad_recipient");
  c.close();
});

test("a token is used instead of a user; neither is an error", () => {
  FakeSocket.opened = [];
  const c = connect("ws://node1.test/ws", { token: "t.k.n", WebSocket: FakeSocket });
  assert.equal(FakeSocket.opened[0].url.searchParams.get("token"), "t.k.n");
  assert.equal(FakeSocket.opened[0].url.searchParams.has("user"), false);
  c.close();
  assert.throws(() => connect("ws://x/ws", { WebSocket: FakeSocket }), /user.*token/);
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
  assert.deepEqual(
    ws.sent.map((f) => `${f.type}:${f.id}`),
    ["ack:m1", "ack:m2", "ack:m1"],
  );
  c.close();
});

test("a reconnect frame sends the next connection to the url given, at once", async () => {
  const c = client({ nodes: ["ws://node2.test/ws"] });
  const ws = c.socket();
  ws.hello();
  ws.frame({ type: "reconnect", url: "ws://node2.test/ws", reason: "draining" });
  ws.drop(1001);
  const next = c.socket();
  assert.notEqual(next, ws);
  assert.equal(next.url.host, "node2.test");
  assert.equal(next.url.searchParams.get("user"), "alice");
  c.close();
});

test("a lost connection fails its unanswered sends clearly and comes back after a back-off", async () => {
  const c = client();
  const ws = c.socket();
  ws.hello();
  const sending = c.send("bob", 1);
  ws.drop();
  await assert.rejects(sending, /connection closed before the ack/);
  assert.equal(c.state, "closed");
  assert.equal((await c.nextState()).state, "connecting");
  const again = c.socket();
  assert.notEqual(again, ws);
  assert.equal(again.url.host, "node1.test");
  c.close();
  await assert.rejects(c.send("bob", 2), /closed/);
});

test("it pings every heartbeat and gives up on a silent server", async () => {
  const c = client();
  const ws = c.socket();
  ws.hello("node1", 20);
  const { state, detail } = await c.nextState();
  assert.equal(state, "closed");
  assert.equal(detail.code, 4000);
  assert.ok(ws.sent.some((f) => f.type === "ping"), JSON.stringify(ws.sent));
  c.close();
});

test("a send fails with the reason when no connection or no ack comes in time", async () => {
  const c = client({ ackTimeoutMs: 20 });
  await assert.rejects(c.send("bob", 1), /not connected within 20 ms/);
  c.socket().hello();
  await assert.rejects(c.send("bob", 2), /no ack for send r\d+ within 20 ms/);
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
  ws.frame({ type: "reconnect", url: "wss://node1.test:8443/ws", reason: "draining" });
  assert.equal(errors.length, 2, "another port is another origin");
  c.close();
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
