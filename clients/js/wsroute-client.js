// wsroute-client: the JavaScript client for wsroute (the protocol: docs/protocol.md in the
// repository). One ES module with no dependencies: it needs only a WebSocket (browsers; Node.js 22+ has
// one built in, Node.js 20 with --experimental-websocket; or pass the `ws` package's in
// `options.WebSocket`). Types: wsroute-client.d.ts. Examples: README.md beside this file.
//
//   import { connect } from "wsroute-client";
//   const chat = connect("ws://127.0.0.1:8081/ws", {
//     user: "alice",                      // dev auth; or token: "<JWT>"; or getToken: async () => jwt
//     onMessage: (m) => console.log(m.from, m.body),
//     onReceipt: (r) => console.log(r.id, r.status),      // received | read | stored
//   });
//   const ack = await chat.send("bob", { text: "hi" });   // ack.status: delivered | stored | rejected
//
// What it does for you:
// - Acks every message it receives (the server keeps unacked ones and sends them again) and
//   hands each id to onMessage once: the last `rememberIds` ids are remembered (oldest forgotten
//   first), and a copy of one of them is acked and dropped.
// - An outbox: every send gets a `cid` (docs/protocol.md, cid), so a message sent again is the same
//   message (same id). A send stays in the outbox until it is settled: acked `stored` or
//   `rejected`, or acked `delivered` and then confirmed by a `received`, `read` or `stored`
//   receipt. After every (re)connect the outbox is sent again, in order: sends never acked, and
//   sends acked `delivered` that no receipt confirmed (the node that held both ends may have died
//   with the only copy); a resend acked `delivered` or `stored` is settled. A resend refused for
//   a passing reason (`rate_limited`, `quota_exceeded`, `unavailable`, `inbox_full`) is tried
//   again after a back-off; refused for any other, it leaves the outbox and onError says so
//   (code `resend_refused`). Bounds: at most `maxOutbox` sends (a send past it fails at once
//   with code `outbox_full` and queues nothing); a send not acked within `ackTimeoutMs` fails
//   with code `timeout` and leaves the outbox; one acked `delivered` leaves the outbox after
//   `receiptTimeoutMs` without a receipt or a reconnect (`stats.expired`: its connection, and so
//   its node, lived on, and the server keeps what it acked). The first ack settles the send's
//   promise: a rejected first send is not resent (the app has its reason). A send whose first
//   transmission got no answer (its connection died) and whose resend is refused for a passing
//   reason is tried again like any resend; its promise waits for the answer to a later try.
// - Pings every `heartbeat_ms` from `hello`, and reconnects when the server stays silent for two.
// - Reconnects after any close with exponential back-off and full jitter (a random wait between
//   0 and min(maxBackoffMs, minBackoffMs * 2^failures)); a connection that reached `hello`
//   resets the failures.
// - With `gateway` (one or more http(s) base URLs), asks `GET /gateway` which node to use on
//   every reconnect (and on the first connect when no `url` is given), trying the gateways in
//   turn; the first connect goes to `url` when one is given, and `url` is the fallback when no
//   gateway answers.
// - Follows a draining node's `reconnect` frame at once, but only to a node it trusts with its
//   token: on the host of `url`, on this page's own host, one listed in `options.nodes`, or one a
//   gateway named; never from `wss:` to `ws:`. Any other target is not followed (onError says
//   so) and the client reconnects as after any close, so a forged or mistaken frame cannot send
//   the token elsewhere.
// - With `getToken`, asks the app for a token on every connect and again before the token's
//   `exp`, which it sends as a `refresh` (docs/protocol.md, token refresh); a session ended by expiry (close 4001)
//   reconnects at once with a fresh token.
// - watch(users) / unwatch(users): presence (docs/protocol.md, presence), re-sent after every reconnect;
//   onPresence gets each `presence` frame. read(id): a `read` receipt for the message's sender.

const DEFAULTS = {
  ackTimeoutMs: 30000, // a send not acked by then fails (the server answers within 8 s once it has it)
  receiptTimeoutMs: 120000, // a send acked `delivered` waits this long for its receipt, then leaves the outbox
  maxOutbox: 1000, // sends waiting for an ack or a receipt; past it send() fails with `outbox_full`
  minBackoffMs: 500,
  maxBackoffMs: 30000,
  rememberIds: 1000, // message ids kept for dropping copies
  refreshBeforeMs: 30000, // with getToken: refresh this long before exp (or at 4/5 of the time left)
  maxWatch: 1000, // users watched at once (the server's default --max-watch)
  gatewayTimeoutMs: 5000, // how long one gateway may take to answer
};

/** Users per `watch`/`unwatch` frame: 256 user ids of at most 128 bytes stay well below 64 KiB. */
const WATCH_CHUNK = 256;
/** Node hosts learned from gateways (trusted for `reconnect`), oldest forgotten first. */
const MAX_KNOWN_HOSTS = 64;
const CID_RULE = /^[A-Za-z0-9_.:-]{1,64}$/;
/** Refusals that pass: a resend refused for one of these is tried again later. */
const RETRYABLE = new Set(["rate_limited", "quota_exceeded", "unavailable", "inbox_full"]);

/** The WebSocket URL of the page's own host: ws(s)://host/ws. */
export function sameHostUrl(path = "/ws") {
  const scheme = globalThis.location?.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${globalThis.location.host}${path}`;
}

/** Connects and keeps connecting until `close()`; returns the client at once. */
export function connect(url, options = {}) {
  return new WsRouteClient(url, options);
}

/** An Error with a machine-readable `code`. */
function failure(code, message) {
  const err = new Error(`wsroute: ${message}`);
  err.code = code;
  return err;
}

export class WsRouteClient {
  /**
   * url: ws://host:port/ws (default: this page's host, unless `gateway` is given). options: see
   * wsroute-client.d.ts (ConnectOptions) and the header of this file.
   * state is "connecting" | "open" | "closed" (will retry) | "stopped" (after close()).
   */
  constructor(url, options = {}) {
    if (!options.user && !options.token && !options.getToken) {
      throw new Error("wsroute: give `user` (dev auth), `token` or `getToken`");
    }
    if (url) new URL(url); // throws now for a url that is not one
    this.options = { ...DEFAULTS, ...options };
    this._gateways = [options.gateway ?? []].flat().map(gatewayUrl);
    this.baseUrl = url || (this._gateways.length ? null : sameHostUrl());
    this.hello = null; // the last hello: conn_id, user, node, heartbeat_ms
    this.state = "connecting";
    /** Counters: what the client did so far (for logs and tests). */
    this.stats = { connects: 0, sent: 0, resent: 0, refused: 0, acked: 0, received: 0, duplicates: 0, expired: 0 };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new Error("wsroute: no WebSocket here: pass `WebSocket` (e.g. from the ws package), or use Node.js 22+");
    }
    this._fetch = options.fetch || globalThis.fetch;
    this._prefix = randomPrefix(); // cids: this prefix and a counter
    this._nextCid = 0;
    this._nextRef = 0;
    this._outbox = new Map(); // cid -> entry, in send order
    this._refs = new Map(); // ref -> entry, on the current connection
    this._byId = new Map(); // message id -> entry acked delivered, waiting for its receipt
    this._confirmed = new Set(); // ids whose receipt came before their ack (bounded like _seen)
    this._seen = new Set(); // message ids already handed to onMessage, oldest first
    this._watching = new Set();
    this._knownHosts = new Set(); // node hosts gateways named
    this._openWaiters = [];
    this._attempt = 0; // failed connects in a row (back-off grows with it)
    this._gatewayNext = 0;
    this._redirect = null; // url from a `reconnect` frame, used for the next connect only
    this._stopped = false;
    this._token = options.token || null; // the token of the current connection
    this._open(true);
  }

  /** How many sends wait for an ack or a receipt. */
  get outboxSize() {
    return this._outbox.size;
  }

  /**
   * Sends `body` (any JSON) to user `to`; resolves with the ack frame, whatever its status.
   * While (re)connecting it waits in the outbox (see the file's header). `options.cid` names the
   * message (1 to 64 of [A-Za-z0-9_.:-]); a send with a cid already in the outbox is that send.
   */
  send(to, body, options = {}) {
    if (this._stopped) return Promise.reject(failure("closed", "closed"));
    const cid = options.cid ?? `${this._prefix}.${(++this._nextCid).toString(36)}`;
    if (typeof cid !== "string" || !CID_RULE.test(cid)) {
      return Promise.reject(failure("bad_field", `a cid is 1 to 64 of [A-Za-z0-9_.:-], not ${JSON.stringify(cid)}`));
    }
    const existing = this._outbox.get(cid);
    if (existing) return existing.promise;
    if (this._outbox.size >= this.options.maxOutbox) {
      return Promise.reject(failure("outbox_full", `${this._outbox.size} sends are waiting for their ack or receipt (maxOutbox); nothing was sent`));
    }
    const entry = { cid, to, body, ack: null, transmissions: 0, retries: 0 };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    const ms = this.options.ackTimeoutMs;
    if (ms > 0 && ms < Infinity) {
      entry.timer = setTimeout(() => {
        this._settle(entry);
        entry.reject(failure("timeout", `no ack for ${cid} within ${ms} ms; the message may or may not have been sent`));
      }, ms);
    }
    this._outbox.set(cid, entry);
    if (this.state === "open") this._transmit(entry);
    return entry.promise;
  }

  /** Tells the sender of message `id` (received on this connection) that it was read. */
  read(id) {
    return this._write({ type: "read", id });
  }

  /** Watches users' presence: onPresence gets their state now and on every change. */
  watch(users) {
    const list = userList(users);
    const added = list.filter((u) => !this._watching.has(u));
    if (this._watching.size + added.length > this.options.maxWatch) {
      throw failure("too_many", `watching ${this._watching.size} users; ${added.length} more is over maxWatch (${this.options.maxWatch})`);
    }
    for (const u of added) this._watching.add(u);
    if (this.state === "open") this._writeChunked("watch", list);
  }

  /** Stops watching users. */
  unwatch(users) {
    const list = userList(users).filter((u) => this._watching.delete(u));
    if (this.state === "open" && list.length) this._writeChunked("unwatch", list);
  }

  /** Resolves with the next `hello` (at once when open); rejects when closed first. */
  opened() {
    if (this.state === "open") return Promise.resolve(this.hello);
    if (this._stopped) return Promise.reject(failure("closed", "closed"));
    return new Promise((resolve, reject) => this._openWaiters.push({ resolve, reject }));
  }

  /** Closes for good: no more reconnects; sends still in the outbox fail with code `closed`. */
  close() {
    if (this._stopped) return;
    this._stopped = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    clearInterval(this._heartbeat);
    for (const w of this._openWaiters.splice(0)) w.reject(failure("closed", "closed"));
    for (const entry of [...this._outbox.values()]) {
      this._settle(entry);
      if (!entry.ack) entry.reject(failure("closed", `closed before the ack for ${entry.cid}; the message may or may not have been sent`));
    }
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, "client closed");
    this._setState("stopped");
  }

  // ------------------------------------------------------------------ outbox

  _transmit(entry) {
    clearTimeout(entry.retryTimer);
    const ref = `r${++this._nextRef}`;
    const sent = this._write({ type: "send", to: entry.to, ref, cid: entry.cid, body: entry.body });
    if (!sent) return; // the close that follows sends it again
    this._refs.set(ref, entry);
    entry.ref = ref;
    if (entry.transmissions++) this.stats.resent += 1;
    else this.stats.sent += 1;
  }

  /** Takes `entry` out of the outbox; its promise is left as it is. */
  _settle(entry) {
    clearTimeout(entry.timer);
    clearTimeout(entry.retryTimer);
    if (this._refs.get(entry.ref) === entry) this._refs.delete(entry.ref);
    clearTimeout(entry.receiptTimer);
    if (this._outbox.get(entry.cid) === entry) this._outbox.delete(entry.cid);
    if (entry.ack && this._byId.get(entry.ack.id) === entry) this._byId.delete(entry.ack.id);
  }

  _onAck(f) {
    const entry = this._refs.get(f.ref);
    if (!entry) return; // not ours, or already settled
    this._refs.delete(f.ref);
    if (this._outbox.get(entry.cid) !== entry) return;
    this.stats.acked += 1;
    const confirmed = f.status === "delivered" && this._confirmed.has(f.id);
    if (!entry.ack && f.status === "rejected" && this._retransmitted(entry, f.error?.code)) {
      this._resendRefused(entry, f.error?.code, f.error?.message);
      return;
    }
    if (!entry.ack) {
      // The first answer is the app's; a `delivered` one waits in the outbox for its receipt.
      entry.ack = f;
      clearTimeout(entry.timer);
      if (f.status === "delivered" && !confirmed) this._awaitReceipt(entry);
      else this._settle(entry);
      entry.resolve(f);
      return;
    }
    // A resend, after a reconnect, of a message acked `delivered` that no receipt confirmed.
    // Acked again on the new connection, it is as safe as any acked message: settled. (A
    // receipt would not always come: a connection that already had the message is not written
    // it again, and does not ack it again.)
    if (f.status === "rejected") this._resendRefused(entry, f.error?.code, f.error?.message);
    else this._settle(entry);
  }

  /**
   * Whether a refusal of `entry` is the refusal of this client's own resend, made after a reconnect
   * because the first transmission got no answer, for a passing reason: such a resend is tried
   * again, as any resend is, rather than ending a send the app made once (the first answer the
   * app gets is then the one to a later try).
   */
  _retransmitted(entry, code) {
    return entry.transmissions > 1 && RETRYABLE.has(code);
  }

  _awaitReceipt(entry) {
    this._byId.set(entry.ack.id, entry);
    // With the connection it was acked on still up, its node did not die: the server keeps it.
    entry.receiptTimer = setTimeout(() => {
      this.stats.expired += 1;
      this._settle(entry);
    }, this.options.receiptTimeoutMs);
  }

  /**
   * A resend was refused. For a passing reason it is tried again after a back-off (while it waits
   * for its receipt); for any other the app hears of it, as its promise was settled long ago.
   */
  _resendRefused(entry, code, message) {
    this.stats.refused += 1;
    if (RETRYABLE.has(code)) {
      const { minBackoffMs, maxBackoffMs } = this.options;
      const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** Math.min(entry.retries++, 30));
      clearTimeout(entry.retryTimer);
      entry.retryTimer = setTimeout(() => {
        if (this._outbox.get(entry.cid) === entry && this.state === "open") this._transmit(entry);
      }, Math.random() * ceiling);
      return;
    }
    this._settle(entry);
    this._emitError(failure("resend_refused", `the resend of ${entry.ack.id} (cid ${entry.cid}) to ${entry.to} was refused (${code}: ${message}); it may not have arrived`));
  }

  _onReceipt(f) {
    if (f.status === "received" || f.status === "read" || f.status === "stored") {
      const entry = this._byId.get(f.id);
      if (entry) this._settle(entry);
      else remember(this._confirmed, f.id, this.options.rememberIds);
    }
    this._call("onReceipt", f);
  }

  // ------------------------------------------------------------------ connecting

  async _open(first = false) {
    let target = this._redirect;
    this._redirect = null;
    if (!target && this._gateways.length && !(first && this.baseUrl)) {
      target = (await this._askGateways()) || this.baseUrl;
      if (this._stopped) return;
      if (!target) {
        this._scheduleRetry();
        return;
      }
    }
    target = target || this.baseUrl;
    this._setState("connecting", target);
    if (this.options.getToken) {
      // A fresh token for every connect: the last one may have expired meanwhile.
      try {
        this._token = await this.options.getToken();
      } catch (e) {
        this._emitError(failure("get_token", `getToken failed: ${e?.message ?? e}`));
        this._scheduleRetry();
        return;
      }
      if (this._stopped) return;
    }
    this._dial(target);
  }

  /** The url of the node the first gateway to answer names, or null (each failure told). */
  async _askGateways() {
    for (let i = 0; i < this._gateways.length && !this._stopped; i++) {
      const gw = this._gateways[this._gatewayNext++ % this._gateways.length];
      try {
        const url = await this._askGateway(gw);
        this._rememberHost(new URL(url).host);
        return url;
      } catch (e) {
        this._emitError(failure("gateway", `gateway ${gw}: ${e?.message ?? e}`));
      }
    }
    return null;
  }

  async _askGateway(gw) {
    if (typeof this._fetch !== "function") throw new Error("no fetch here: pass `fetch`");
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.options.gatewayTimeoutMs);
    try {
      const res = await this._fetch(gw, { signal: abort.signal });
      if (!res.ok) throw new Error(`answered ${res.status}`);
      const { url } = await res.json();
      const target = new URL(url);
      if (target.protocol !== "ws:" && target.protocol !== "wss:") throw new Error(`named ${url}, not a ws(s): url`);
      if (this._secure() && target.protocol !== "wss:") throw new Error(`named ${url}: not following wss down to ws`);
      return target.toString();
    } finally {
      clearTimeout(timer);
    }
  }

  _url(base) {
    const u = new URL(base);
    if (this._token) u.searchParams.set("token", this._token);
    else u.searchParams.set("user", this.options.user);
    if (this.options.device) u.searchParams.set("device", this.options.device);
    return u.toString();
  }

  _dial(target) {
    let ws;
    try {
      ws = new this._WebSocket(this._url(target));
    } catch (e) {
      this._emitError(failure("connect", `cannot connect to ${target}: ${e.message}`));
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    this.stats.connects += 1;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev);
    // Browsers say nothing about why (an HTTP 401 looks like any other failure): the close that
    // follows carries the retry.
    ws.onerror = () => {};
  }

  _onFrame(ws, data) {
    if (ws !== this._ws) return;
    this._lastHeard = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this._emitError(failure("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    switch (f?.type) {
      case "hello":
        this._onHello(f);
        break;
      case "message":
        // Ack every copy on the connection it came by (the server forgets it only then), hand
        // each id over once.
        this._write({ type: "ack", id: f.id });
        if (this._seen.has(f.id)) {
          this.stats.duplicates += 1;
          break;
        }
        remember(this._seen, f.id, this.options.rememberIds);
        this.stats.received += 1;
        this._call("onMessage", f);
        break;
      case "ack":
        this._onAck(f);
        break;
      case "receipt":
        this._onReceipt(f);
        break;
      case "presence":
        if (this._watching.has(f.user)) this._call("onPresence", f);
        break;
      case "error":
        this._onError(f);
        break;
      case "reconnect":
        // The server closes next; _onClose connects there at once, if it is a trusted node.
        if (this._trusted(f.url)) this._redirect = f.url;
        else this._emitError(failure("untrusted_reconnect", `not following a reconnect to ${f.url}: not this client's server, this page's host, one of its nodes or one a gateway named`));
        break;
      case "refreshed": // the session now lasts until the new token's exp
        this._scheduleRefresh(f.exp);
        break;
      default:
        break; // pong, and types newer servers may send
    }
  }

  _onHello(f) {
    this.hello = f;
    this._attempt = 0;
    this._startHeartbeat(f.heartbeat_ms);
    this._scheduleRefresh(expOf(this._token));
    this._setState("open", f);
    // Presence and the outbox belong to the connection: both again, in order.
    if (this._watching.size) this._writeChunked("watch", [...this._watching]);
    for (const entry of [...this._outbox.values()]) {
      if (!entry.ack || entry.ack.status === "delivered") this._transmit(entry);
    }
    this._call("onHello", f);
    for (const w of this._openWaiters.splice(0)) w.resolve(f);
  }

  _onError(f) {
    const err = failure(f.code, `${f.code}: ${f.message}`);
    const entry = f.ref != null && this._refs.get(f.ref);
    if (entry && (entry.ack || this._retransmitted(entry, f.code))) {
      this._refs.delete(f.ref);
      this._resendRefused(entry, f.code, f.message);
    } else if (entry) {
      // A refused send (bad_field, rate_limited, ...): the app hears why and decides.
      this._refs.delete(f.ref);
      this._settle(entry);
      entry.reject(err);
    } else {
      this._emitError(err);
    }
  }

  /** Whether `url` is a node this client may send its token to (see the file's header). */
  _trusted(url) {
    let target;
    try {
      target = new URL(url);
    } catch {
      return false;
    }
    if (target.protocol !== "ws:" && target.protocol !== "wss:") return false;
    if (this._secure() && target.protocol !== "wss:") return false; // no downgrade
    const trusted = [...this._knownHosts];
    if (this.baseUrl) trusted.push(new URL(this.baseUrl).host);
    if (globalThis.location?.host) trusted.push(globalThis.location.host);
    for (const n of this.options.nodes || []) {
      try {
        trusted.push(new URL(n).host);
      } catch {
        // not a URL: trusts nothing
      }
    }
    return trusted.includes(target.host);
  }

  /** Whether the client was given only secure addresses (then it never goes to ws:). */
  _secure() {
    if (this.baseUrl) return new URL(this.baseUrl).protocol === "wss:";
    return this._gateways.length > 0 && this._gateways.every((g) => g.startsWith("https:"));
  }

  _rememberHost(host) {
    this._knownHosts.delete(host);
    this._knownHosts.add(host);
    if (this._knownHosts.size > MAX_KNOWN_HOSTS) this._knownHosts.delete(this._knownHosts.values().next().value);
  }

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearInterval(this._heartbeat);
    clearTimeout(this._refreshTimer);
    this._refs.clear(); // what they named stays in the outbox, for the next connection
    if (this._stopped) return;
    this._setState("closed", { code: ev.code, reason: ev.reason });
    // 4001: the token expired; with getToken a fresh one is at hand, so reconnect at once.
    if (this._redirect || (ev.code === 4001 && this.options.getToken)) this._open();
    else this._scheduleRetry();
  }

  _scheduleRetry() {
    if (this._stopped) return;
    const { minBackoffMs, maxBackoffMs } = this.options;
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    this._retryTimer = setTimeout(() => this._open(), Math.random() * ceiling); // full jitter
  }

  _startHeartbeat(ms) {
    clearInterval(this._heartbeat);
    if (!(ms > 0)) return;
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      if (!ws) return;
      if (Date.now() - this._lastHeard > 2 * ms) {
        // Silent for two heartbeats: gone now (the close of a dead peer may take minutes).
        const reason = "server silent for two heartbeats";
        ws.close(4000, reason);
        this._onClose(ws, { code: 4000, reason });
        return;
      }
      this._write({ type: "ping" });
    }, ms);
  }

  /** With getToken: asks for a new token shortly before `exp` (unix s) and sends `refresh`. */
  _scheduleRefresh(exp) {
    clearTimeout(this._refreshTimer);
    if (!this.options.getToken || !(exp > 0)) return;
    const left = exp * 1000 - Date.now();
    const wait = Math.max(0, left - Math.min(this.options.refreshBeforeMs, left / 5));
    this._refreshTimer = setTimeout(() => this._refresh(), wait);
  }

  async _refresh() {
    const ws = this._ws;
    let token;
    try {
      token = await this.options.getToken();
    } catch (e) {
      // The session ends at exp (4001) and the reconnect asks again.
      this._emitError(failure("get_token", `getToken failed: ${e?.message ?? e}`));
      return;
    }
    if (!ws || ws !== this._ws) return; // closed meanwhile: the reconnect asks for its own
    this._token = token;
    this._write({ type: "refresh", token });
  }

  // ------------------------------------------------------------------ small parts

  /** Writes one frame on the current connection; false when there is none. */
  _write(frame) {
    if (!this._ws || this.state !== "open") return false;
    try {
      this._ws.send(JSON.stringify(frame));
      return true;
    } catch (e) {
      this._emitError(failure("write", `cannot write a ${frame.type} frame: ${e.message}`));
      return false;
    }
  }

  _writeChunked(type, users) {
    for (let i = 0; i < users.length; i += WATCH_CHUNK) {
      this._write({ type, users: users.slice(i, i + WATCH_CHUNK) });
    }
  }

  _setState(state, detail) {
    this.state = state;
    this._call("onState", state, detail);
  }

  /** Calls an app callback; one that throws is reported, and the client goes on. */
  _call(name, ...args) {
    const f = this.options[name];
    if (!f) return;
    try {
      f(...args);
    } catch (e) {
      if (name !== "onError") this._emitError(failure("callback", `${name} threw: ${e?.message ?? e}`));
      else console.error(e);
    }
  }

  _emitError(err) {
    if (this.options.onError) this._call("onError", err);
    else console.error(err);
  }
}

/** Adds `id` to the insertion-ordered set, forgetting the oldest past `max`. */
function remember(set, id, max) {
  set.add(id);
  if (set.size > max) set.delete(set.values().next().value);
}

/** `users` as a list of strings (a single string is one user). */
function userList(users) {
  const list = typeof users === "string" ? [users] : [...(users ?? [])];
  if (!list.every((u) => typeof u === "string" && u.length > 0)) {
    throw failure("bad_field", "users are non-empty strings");
  }
  return [...new Set(list)];
}

/** `http://host:port` or `.../gateway` -> the gateway endpoint's URL. */
function gatewayUrl(g) {
  const u = new URL(g, globalThis.location?.href);
  if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`wsroute: a gateway is an http(s) URL, not ${g}`);
  if (!u.pathname.endsWith("/gateway")) u.pathname = `${u.pathname.replace(/\/$/, "")}/gateway`;
  return u.toString();
}

/** A random cid prefix (8 base-36 characters), so that two clients of one user differ. */
function randomPrefix() {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  let n = 0;
  for (const b of bytes) n = n * 256 + b;
  return n.toString(36).padStart(8, "0").slice(-8);
}

/** The `exp` claim (unix s) of a JWT, read without checking it (for scheduling only). */
function expOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).exp;
  } catch {
    return undefined;
  }
}
