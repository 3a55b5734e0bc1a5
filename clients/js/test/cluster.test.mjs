// The client against a real two-node cluster (started by tests/tests/js_client.rs, nodes with no
// token leeway): sends and acks, receipts, copies dropped, reconnects, the gateway, token refresh.
// Alice uses Node's own WebSocket, the others the `ws` package's: both are what apps pass in.

import assert from "node:assert/strict";
import { test } from "node:test";

import { NODE_GLOBAL, client, jwt, nodes, waitFor } from "./cluster.mjs";

const [n1, n2] = nodes;
/** User ids unique to one test run, so that tests never see each other's traffic. */
const run = Date.now().toString(36);
const user = (name) => `${name}-${run}`;

test("send resolves with the ack; the message reaches the other node once, is acked, and its sender hears it was received and read", async () => {
  const [alice, bob] = [user("alice1"), user("bob1")];
  const a = client(n1.ws, { user: alice, WebSocket: NODE_GLOBAL });
  const b = client(n2.ws, { user: bob, device: "phone" });
  await Promise.all([a.opened(), b.opened()]);
  assert.equal(a.hello.node, n1.id);
  assert.equal(b.hello.node, n2.id);

  const ack = await a.send(bob, { text: "hi", n: 1 });
  assert.equal(ack.type, "ack");
  assert.equal(ack.status, "delivered");
  assert.equal(ack.devices, 1);
  assert.match(ack.id, /.+/);

  const m = await waitFor("bob's message", () => b.messages[0]);
  assert.deepEqual({ id: m.id, from: m.from, to: m.to, body: m.body }, { id: ack.id, from: alice, to: bob, body: { text: "hi", n: 1 } });
  // Bob's client acked it on its connection, and alice heard so: it left her outbox.
  assert.ok(b.sockets[0].sentFrames.some((f) => f.type === "ack" && f.id === ack.id), "bob acked");
  const received = await waitFor("a received receipt", () => a.receipts.find((r) => r.id === ack.id && r.status === "received"));
  assert.deepEqual({ to: received.to, device: received.device }, { to: bob, device: "phone" });
  await waitFor("alice's outbox empties", () => a.outboxSize === 0);

  // Bob reads it: alice hears that too.
  assert.equal(b.read(m.id), true);
  const read = await waitFor("a read receipt", () => a.receipts.find((r) => r.id === ack.id && r.status === "read"));
  assert.equal(read.to, bob);

  // Acked means forgotten: bob's next connection gets nothing from before, only what comes next.
  b.close();
  const b2 = client(n1.ws, { user: bob });
  await b2.opened();
  const next = await a.send(bob, "next");
  const first = await waitFor("bob's next message", () => b2.messages[0]);
  assert.equal(first.id, next.id, `the acked message came back: ${JSON.stringify(b2.messages)}`);
  assert.equal(a.stats.sent, 2);
  assert.equal(a.stats.resent, 0);
  assert.deepEqual(a.errors, []);
  a.close();
  b2.close();
});

test("a message for someone offline is acked stored, leaves the outbox, and reaches them when they connect", async () => {
  const [alice, carol] = [user("alice2"), user("carol2")];
  const a = client(n1.ws, { user: alice });
  await a.opened();
  const ack = await a.send(carol, "while you were away");
  assert.equal(ack.status, "stored");
  assert.equal(a.outboxSize, 0, "stored is settled");
  const c = client(n2.ws, { user: carol });
  const m = await waitFor("carol's message from her inbox", () => c.messages[0]);
  assert.equal(m.id, ack.id);
  assert.equal(a.stats.resent, 0, "a stored message is not sent again");
  a.close();
  c.close();
});

test("a copy of a message already shown (a resend with the same cid reaching a new connection) is acked and dropped", async () => {
  const [alice, bob] = [user("alice3"), user("bob3")];
  const a = client(n1.ws, { user: alice });
  const b = client(n2.ws, { user: bob });
  await Promise.all([a.opened(), b.opened()]);
  const first = await a.send(bob, "once", { cid: `dup.${run}` });
  await waitFor("bob's message", () => b.messages.length === 1);
  await waitFor("alice's outbox empties", () => a.outboxSize === 0);

  // Bob's connection drops (a network change); the client connects again by itself.
  b.sockets[0].close();
  await waitFor("bob's second connection", () => b.sockets.length === 2 && b.state === "open");
  // Alice's app sends the same message again (say after a restart): same cid, same id.
  const again = await a.send(bob, "once", { cid: `dup.${run}` });
  assert.equal(again.id, first.id);
  assert.equal(again.status, "delivered");
  const copy = await waitFor("the copy on bob's new connection", () => b.sockets[1].gotFrames.find((f) => f.type === "message"));
  assert.equal(copy.id, first.id);
  await waitFor("bob's client acks the copy", () => b.sockets[1].sentFrames.some((f) => f.type === "ack" && f.id === first.id));
  assert.equal(b.messages.length, 1, "shown once");
  assert.equal(b.stats.duplicates, 1);
  a.close();
  b.close();
});

test("a connection that ends comes back by itself, and a send made as it ended goes out on the next", async () => {
  const [alice, bob] = [user("alice4"), user("bob4")];
  const a = client(n1.ws, { user: alice, WebSocket: NODE_GLOBAL });
  const b = client(n2.ws, { user: bob });
  await Promise.all([a.opened(), b.opened()]);
  const firstConn = a.hello.conn_id;
  a.sockets[0].close();
  // Written into the closing socket (and lost there), or kept until the next connection: either
  // way it is in the outbox, and the next connection carries it.
  const sending = a.send(bob, "sent as the connection ends");
  assert.equal(a.outboxSize, 1);
  const ack = await sending;
  assert.equal(ack.status, "delivered");
  assert.notEqual(a.hello.conn_id, firstConn);
  assert.equal(a.stats.connects, 2);
  const states = a.states.map((s) => s.state);
  assert.deepEqual(states, ["connecting", "open", "closed", "connecting", "open"]);
  await waitFor("bob's message", () => b.messages.some((m) => m.id === ack.id));
  a.close();
  b.close();
});

test("with a gateway, the client asks a node where to connect", async () => {
  const alice = user("alice5");
  const a = client(null, { user: alice, gateway: [n2.http] });
  const hello = await a.opened();
  assert.ok(nodes.some((n) => n.id === hello.node), hello.node);
  const target = a.sockets[0].urlGiven;
  const named = nodes.find((n) => n.id === hello.node);
  assert.equal(target.host, new URL(named.ws).host, "connected where the gateway said");
  assert.equal(target.searchParams.get("user"), alice);
  a.close();
});

test("getToken: the token is refreshed before it expires and the session goes on; without it the session ends", async () => {
  const [alice, dave, bob] = [user("alice6"), user("dave6"), user("bob6")];
  const lifetime = 3; // seconds; the nodes take tokens with no leeway
  const tokens = [];
  const a = client(n1.ws, {
    getToken: async () => {
      tokens.push(jwt(alice, lifetime));
      return tokens.at(-1);
    },
  });
  const d = client(n1.ws, { token: jwt(dave, lifetime) });
  const b = client(n2.ws, { user: bob });
  await Promise.all([a.opened(), b.opened(), d.opened()]);
  const conn = a.hello.conn_id;
  const firstExp = JSON.parse(Buffer.from(tokens[0].split(".")[1], "base64url")).exp;

  // Dave's session ends with its token (close 4001): what would have become of alice's.
  const ended = await waitFor("dave's session ends", () => d.states.find((s) => s.state === "closed"));
  assert.equal(ended.detail.code, 4001);
  assert.ok(d.errors.some((e) => e.code === "token_expired"), d.errors.map((e) => e.message).join("; "));
  // Alice's goes on past her first token's exp, on the same connection.
  await waitFor("a second past the first token's exp", () => Date.now() > firstExp * 1000 + 1000, (lifetime + 5) * 1000);
  assert.equal(a.state, "open");
  assert.equal(a.hello.conn_id, conn);
  assert.equal(a.stats.connects, 1);
  const ws = a.sockets[0];
  assert.ok(ws.sentFrames.some((f) => f.type === "refresh" && f.token === tokens[1]), "sent the refresh");
  assert.ok(ws.gotFrames.some((f) => f.type === "refreshed" && f.exp > firstExp), "the server took it");
  const ack = await a.send(bob, "still here");
  assert.equal(ack.status, "delivered");

  // A reconnect asks for a fresh token too.
  ws.close();
  await waitFor("alice's second connection", () => a.sockets.length === 2 && a.state === "open");
  assert.equal(a.sockets[1].urlGiven.searchParams.get("token"), tokens.at(-1));
  assert.ok(tokens.length >= 3, `${tokens.length} tokens`);
  assert.deepEqual(a.errors, []);
  a.close();
  b.close();
  d.close();
});
