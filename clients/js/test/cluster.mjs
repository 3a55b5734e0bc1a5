// What the tests against a real cluster share: the cluster that tests/tests/js_client.rs started
// (WSROUTE_TEST_CLUSTER), tokens signed with its secret, WebSockets that record every frame, and
// waits on a condition with a deadline (never a sleep as synchronisation).

import { createHmac } from "node:crypto";
import { afterEach } from "node:test";

import { WebSocket as WsPackageSocket } from "ws";

import { connect } from "../wsroute-client.js";

const raw = process.env.WSROUTE_TEST_CLUSTER;
if (!raw) {
  throw new Error("WSROUTE_TEST_CLUSTER is not set: these tests run from `cargo test -p wsroute-tests --test js_client`");
}
/** { nodes: [{ id, ws, http, pid }], jwtSecret, patienceMs } */
export const cluster = JSON.parse(raw);
export const nodes = cluster.nodes;
/** How long one condition may take (WSROUTE_TEST_PATIENCE_MS through the harness). */
export const PATIENCE_MS = cluster.patienceMs;

/** `ws://host:port` of a node (what `options.nodes` takes). */
export const origin = (node) => new URL(node.ws).origin.replace(/^http/, "ws");

/** An HS256 JWT for `sub`, valid for `seconds`, signed with the cluster's secret. */
export function jwt(sub, seconds) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const exp = Math.floor(Date.now() / 1000) + seconds;
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub, exp })}`;
  const sig = createHmac("sha256", cluster.jwtSecret).update(head).digest("base64url");
  return `${head}.${sig}`;
}

/**
 * Polls `check` until it returns a truthy value (returned), failing after the patience; the
 * failure says what `detail()` (if given) says then.
 */
export async function waitFor(what, check, patienceMs = PATIENCE_MS, detail = () => "") {
  const deadline = Date.now() + patienceMs;
  let pause = 5;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${patienceMs} ms waiting for: ${what} ${detail()}`);
    await new Promise((r) => setTimeout(r, pause));
    pause = Math.min(pause * 2, 100);
  }
}

/**
 * A WebSocket class (subclassing `Base`) whose instances record the frames they send and
 * receive, in `Recording.sockets`; `Recording.hold` (a predicate over outgoing frames) drops the
 * frames it matches, as a network that loses them would.
 */
export function recording(Base) {
  class Recording extends Base {
    static sockets = [];
    static hold = null;
    constructor(url) {
      super(url);
      this.urlGiven = new URL(url);
      this.sentFrames = [];
      this.gotFrames = [];
      this.addEventListener("message", (ev) => this.gotFrames.push(JSON.parse(String(ev.data))));
      Recording.sockets.push(this);
    }
    send(text) {
      const f = JSON.parse(text);
      if (Recording.hold?.(f)) return;
      this.sentFrames.push(f);
      super.send(text);
    }
  }
  return Recording;
}

/** The two WebSockets a Node.js app may hand the client: the `ws` package's, and Node's own. */
export const WS_PACKAGE = WsPackageSocket;
export const NODE_GLOBAL = globalThis.WebSocket;
if (typeof NODE_GLOBAL !== "function") {
  throw new Error("no global WebSocket: run Node.js 22+, or Node.js 20 with --experimental-websocket");
}

/** Every client a test made: closed after each test, passed or failed (or the run never ends). */
const made = [];
afterEach(() => {
  for (const c of made.splice(0)) c.close();
});

/**
 * A client that records what it is told: `messages`, `receipts`, `presence`, `states`, `errors`
 * (arrays), on a recording WebSocket (`.sockets`).
 */
export function client(url, options) {
  const WebSocket = recording(options.WebSocket ?? WS_PACKAGE);
  const seen = { messages: [], receipts: [], presence: [], states: [], errors: [] };
  const c = connect(url, {
    minBackoffMs: 100,
    maxBackoffMs: 1000,
    ...options,
    WebSocket,
    onMessage: (m) => seen.messages.push(m),
    onReceipt: (r) => seen.receipts.push(r),
    onPresence: (p) => seen.presence.push(p),
    onState: (state, detail) => seen.states.push({ state, detail, at: Date.now() }),
    onError: (e) => seen.errors.push(e),
  });
  made.push(c);
  return Object.assign(c, seen, { sockets: WebSocket.sockets, Socket: WebSocket });
}

/** A client's state in one line, for failure messages. */
export const describe = (c) =>
  JSON.stringify({ state: c.state, node: c.hello?.node, outbox: c.outboxSize, shown: c.messages.length, stats: c.stats, errors: c.errors.map((e) => e.message) });
