// Presence (docs/protocol.md, presence) through the client against a real two-node cluster (started by
// tests/tests/js_client.rs): watch, onPresence on every change of a watched user's devices
// across nodes, unwatch, and the watch list sent again after a reconnect.

import assert from "node:assert/strict";
import { test } from "node:test";

import { client, nodes, waitFor } from "./cluster.mjs";

const [n1, n2] = nodes;
const run = Date.now().toString(36);

test("watch: onPresence says who is online with how many devices, across nodes, until unwatch; a reconnect watches again", async () => {
  const [alice, bob, carol] = [`alice-${run}`, `bob-${run}`, `carol-${run}`];
  const a = client(n1.ws, { user: alice });
  await a.opened();
  a.watch([bob, carol]);
  /** Waits for the next presence of `user` after the `seen`-th, and returns it. */
  const next = async (user, want) => {
    const p = await waitFor(`presence ${user} ${JSON.stringify(want)}`, () =>
      a.presence.find((p, i) => i >= a.presence.mark && p.user === user && p.online === want.online && p.devices === want.devices),
    );
    a.presence.mark = a.presence.indexOf(p) + 1;
    return p;
  };
  a.presence.mark = 0;
  // The answer to watch: one frame per user.
  await next(bob, { online: false, devices: 0 });
  assert.ok(a.presence.some((p) => p.user === carol && p.online === false && p.devices === 0));

  a.presence.mark = a.presence.length;
  const phone = client(n2.ws, { user: bob, device: "phone" });
  await next(bob, { online: true, devices: 1 });
  const laptop = client(n1.ws, { user: bob, device: "laptop" });
  await next(bob, { online: true, devices: 2 });
  phone.close();
  await next(bob, { online: true, devices: 1 });

  // Unwatched: carol's coming and going is no longer told.
  a.unwatch(carol);
  const c = client(n2.ws, { user: carol });
  await c.opened();
  laptop.close();
  await next(bob, { online: false, devices: 0 }); // after carol's connect, on the same path
  assert.ok(!a.presence.some((p) => p.user === carol && p.online), "no presence for an unwatched user");

  // A new connection watches again: the server answers with bob's state, and tells changes.
  const before = a.presence.length;
  a.sockets[0].close();
  await waitFor("alice's second connection", () => a.sockets.length === 2 && a.state === "open");
  const rewatch = a.sockets[1].sentFrames.filter((f) => f.type === "watch");
  assert.deepEqual(rewatch, [{ type: "watch", users: [bob] }]);
  a.presence.mark = before;
  await next(bob, { online: false, devices: 0 });
  const back = client(n2.ws, { user: bob });
  await next(bob, { online: true, devices: 1 });
  assert.deepEqual(a.errors, []);
  for (const x of [a, c, back]) x.close();
});

test("watching more users than maxWatch is refused by the client, and the server's own limit by the server", async () => {
  const alice = `alice-limit-${run}`;
  const a = client(n2.ws, { user: alice, maxWatch: 2000 });
  await a.opened();
  const many = Array.from({ length: 1001 }, (_, i) => `u${i}-${run}`);
  a.watch(many); // over the server's default --max-watch of 1,000
  const refused = await waitFor("the server's too_many", () => a.errors.find((e) => e.code === "too_many"));
  assert.match(refused.message, /too_many/);
  const small = client(n2.ws, { user: `${alice}-2`, maxWatch: 1 });
  await small.opened();
  assert.throws(() => small.watch(["x", "y"]), (e) => e.code === "too_many");
  a.close();
  small.close();
});
