// The outbox against a real three-node cluster (started by tests/tests/js_client.rs): kill -9 of
// the one node holding both ends, with messages whose only copy was on it. Bob's app got the
// first half but its acks were lost with the node (the network dropped them), so no device ever
// confirmed them; the second half was being sent as the node died. Alice's client sends again,
// with the same cids, everything with no ack or no receipt, from whichever node the gateways
// name; bob's client, on another node, shows each message once. Expected: 0 lost.

import assert from "node:assert/strict";
import { test } from "node:test";

import { client, describe, nodes, PATIENCE_MS, waitFor } from "./cluster.mjs";

const [n1, n2, n3] = nodes;
const run = Date.now().toString(36);
const N = 200;
// Resends that go to bob's inbox count against alice's --max-stored-per-minute (120 by default):
// past it they are refused (quota_exceeded) and tried again until the minute has passed.
const QUOTA_PATIENCE_MS = Math.max(PATIENCE_MS, 90000);

test("kill -9 of the node holding both ends: the outbox resends what no device confirmed, and nothing is lost", async () => {
  const [alice, bob] = [`alice-${run}`, `bob-${run}`];
  // Both start on node1; every reconnect asks node2's or node3's gateway.
  const gateway = [n2.http, n3.http];
  const a = client(n1.ws, { user: alice, gateway });
  const b = client(n1.ws, { user: bob, gateway });
  // Bob's acks on his first connection never reach the server.
  b.Socket.hold = (f) => f.type === "ack" && b.sockets.length === 1;
  await Promise.all([a.opened(), b.opened()]);
  assert.equal(a.hello.node, n1.id);
  assert.equal(b.hello.node, n1.id);

  const sends = [];
  const send = (n) => sends.push(a.send(bob, { n }));
  for (let n = 0; n < N / 2; n++) send(n);
  const firstHalf = await Promise.all(sends);
  assert.deepEqual(new Set(firstHalf.map((x) => x.status)), new Set(["delivered"]));
  await waitFor("bob's app has the first half", () => b.messages.length === N / 2);
  assert.equal(a.outboxSize, N / 2, "no receipt confirmed any of them");

  // The second half goes out as node1 dies.
  for (let n = N / 2; n < N; n++) send(n);
  const killedAt = Date.now();
  process.kill(n1.pid, "SIGKILL");

  const detail = () => `alice ${describe(a)} bob ${describe(b)}`;
  const acks = await Promise.all(sends);
  await waitFor("bob has every message", () => b.messages.length >= N, QUOTA_PATIENCE_MS, detail);
  await waitFor("alice's outbox empties (every message confirmed)", () => a.outboxSize === 0, QUOTA_PATIENCE_MS, detail);
  const settledMs = Date.now() - killedAt;

  const statuses = {};
  for (const ack of acks) statuses[ack.status] = (statuses[ack.status] ?? 0) + 1;
  const promised = new Set(acks.filter((x) => x.status !== "rejected").map((x) => x.id));
  const got = new Set(b.messages.map((m) => m.id));
  const lost = [...promised].filter((id) => !got.has(id));
  const bodies = b.messages.map((m) => m.body.n).sort((x, y) => x - y);
  console.log(
    `node holding both ends killed: ${N} sent, acks ${JSON.stringify(statuses)}, resent ${a.stats.resent} (refused ${a.stats.refused}, tried again), ` +
      `bob shown ${b.messages.length} (${got.size} ids), copies dropped ${b.stats.duplicates}, lost ${lost.length}, ` +
      `alice on ${a.hello.node}, bob on ${b.hello.node}, outbox empty ${settledMs} ms after the kill`,
  );
  assert.equal(statuses.rejected, undefined, JSON.stringify(statuses));
  assert.equal(promised.size, N, "one id per message");
  assert.equal(lost.length, 0, `lost: ${lost.join(" ")}`);
  assert.equal(b.messages.length, N, "each shown once");
  assert.deepEqual(bodies, Array.from({ length: N }, (_, n) => n));
  // What the node took with it came back through resends of the same ids.
  assert.ok(a.stats.resent >= N / 2, `resent ${a.stats.resent}`);
  assert.ok(b.stats.duplicates >= N / 2, `bob dropped ${b.stats.duplicates} copies`);
  assert.notEqual(a.hello.node, n1.id);
  assert.notEqual(b.hello.node, n1.id);
  a.close();
  b.close();
});
