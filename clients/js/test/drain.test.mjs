// A draining node (SIGTERM) in a real two-node cluster (started by tests/tests/js_client.rs):
// a client that knows the other node follows its `reconnect` there and loses nothing it was
// sending; one that does not know it keeps its token home and goes back to its own url.

import assert from "node:assert/strict";
import { test } from "node:test";

import { NODE_GLOBAL, client, nodes, origin, waitFor } from "./cluster.mjs";

const [n1, n2] = nodes;
const run = Date.now().toString(36);
const N = 100;
const count = (xs) => xs.reduce((o, x) => ({ ...o, [x]: (o[x] ?? 0) + 1 }), {});

test("a drain's reconnect is followed to a known node at once, and what was being sent arrives once", async () => {
  const [alice, bob, carol] = [`alice-${run}`, `bob-${run}`, `carol-${run}`];
  // A back-off reconnect would go to node1's url: only a followed `reconnect` leads to node2.
  const a = client(n1.ws, { user: alice, nodes: [origin(n2)], WebSocket: NODE_GLOBAL });
  const c = client(n1.ws, { user: carol, minBackoffMs: 60000 });
  const b = client(n2.ws, { user: bob });
  await Promise.all([a.opened(), b.opened(), c.opened()]);

  const sends = [];
  for (let n = 0; n < N / 2; n++) sends.push(a.send(bob, { n }));
  await Promise.all(sends);
  process.kill(n1.pid, "SIGTERM");
  for (let n = N / 2; n < N; n++) sends.push(a.send(bob, { n }));

  await waitFor("alice is on node2", () => a.state === "open" && a.hello.node === n2.id);
  const followed = a.sockets[1].urlGiven;
  assert.equal(followed.host, new URL(n2.ws).host);
  const reconnect = a.sockets[0].gotFrames.find((f) => f.type === "reconnect");
  assert.ok(reconnect, "node1 sent a reconnect");
  assert.equal(new URL(reconnect.url).host, followed.host);
  assert.equal(a.sockets.length, 2, "one connection to node1, one to node2");

  const acks = await Promise.all(sends);
  assert.ok(acks.every((x) => x.status === "delivered" || x.status === "stored"), JSON.stringify(acks.map((x) => x.status)));
  await waitFor("bob has every message", () => b.messages.length >= N);
  // Receipts for what node1 delivered may be lost as alice moves (they are notifications): those
  // sends are resent on node2, where their acks settle them.
  await waitFor("alice's outbox empties", () => a.outboxSize === 0);
  const got = b.messages.map((m) => m.body.n).sort((x, y) => x - y);
  assert.deepEqual(got, Array.from({ length: N }, (_, n) => n), "each once");
  assert.equal(a.stats.expired, 0);
  console.log(
    `drain followed: ${N} sent, acks ${JSON.stringify(count(acks.map((x) => x.status)))}, resent ${a.stats.resent}, ` +
      `bob shown ${b.messages.length}, copies dropped ${b.stats.duplicates}`,
  );

  // Carol was not told of node2: she does not follow, and says why.
  await waitFor("carol refuses the reconnect", () => c.errors.find((e) => e.code === "untrusted_reconnect"));
  await waitFor("carol's connection to node1 ends", () => c.states.some((s) => s.state === "closed"));
  assert.ok(c.sockets.every((s) => s.urlGiven.host === new URL(n1.ws).host), "carol's token went nowhere else");
  a.close();
  b.close();
  c.close();
});
