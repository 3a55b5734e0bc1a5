// wsroute.js: a small, dependency-free client for the wsroute WebSocket protocol (PROTOCOL.md
// section 2). Copy this file into your app; it is an ES module and needs only a WebSocket
// (browsers; Node 22+, or pass `WebSocket` in the options).
//
//   import { connect } from "./wsroute.js";
//   const chat = connect("ws://127.0.0.1:8081/ws", {
//     user: "alice",                       // dev auth (--dev-auth); or token: "<JWT>";
//                                          // or getToken: async () => "<JWT>" (refreshed)
//     onMessage: (m) => console.log(m.from, m.body),
//   });
//   const ack = await chat.send("bob", { text: "hi" });   // ack.status: delivered | stored | rejected
//
// What it does for you: acks every message it receives (the server keeps unacked ones and
// sends them again), drops copies of a message id it has already seen, pings every
// `heartbeat_ms` from `hello` and reconnects when the server goes silent, follows `reconnect`
// frames (a draining node) to the url given, and reconnects with back-off after any other close.
//
// A `reconnect` is followed only to a node this client trusts with its token: one on the host
// it was given (the `url`), on this page's own host, or listed in `options.nodes` (URLs or
// `ws(s)://host:port` origins); never from `wss:` to `ws:`. Any other target is not followed
// (`onError` says so) and the client reconnects to its own `url` with back-off instead, so a
// forged or mistaken frame cannot send the token to another host.
//
// With `getToken`, it asks the app for a token on every connect and again shortly before the
// token's `exp`, which it sends as a `refresh` (the server ends a session whose token expires,
// with close 4001: it then reconnects at once with a fresh token).

const DEFAULTS = {
  ackTimeoutMs: 10000, // the server answers every send within 8 s; past this the send fails
  minBackoffMs: 500,
  maxBackoffMs: 30000,
  rememberIds: 1000, // how many message ids are kept for dropping copies
  refreshBeforeMs: 30000, // with getToken: refresh this long before exp (or at 4/5 of the time left)
};

/** The WebSocket URL of the page's own host: ws(s)://host/ws. */
export function sameHostUrl(path = "/ws") {
  const scheme = globalThis.location?.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${globalThis.location.host}${path}`;
}

/** Connects and keeps connecting until `close()`; returns the client at once. */
export function connect(url, options = {}) {
  return new WsRouteClient(url, options);
}

export class WsRouteClient {
  /**
   * url: ws://host:port/ws (default: this page's host). options: user (dev auth), token, or
   * getToken (an async function returning a fresh JWT for the same user: called on every
   * connect and before the token expires), device, nodes (where a `reconnect` may send it
   * besides `url`'s host and this page's host), and callbacks onMessage(msg), onHello(hello),
   * onState(state, detail), onError(err).
   * state is "connecting" | "open" | "closed" (will retry) | "stopped" (after close()).
   */
  constructor(url, options = {}) {
    if (!options.user && !options.token && !options.getToken) {
      throw new Error("wsroute: give `user` (dev auth), `token` or `getToken`");
    }
    this.options = { ...DEFAULTS, ...options };
    this.baseUrl = url || sameHostUrl();
    this.hello = null; // the last hello: conn_id, user, node, heartbeat_ms
    this.state = "connecting";
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._pending = new Map(); // ref -> { resolve, reject, timer }
    this._openWaiters = []; // sends waiting for the connection, in order
    this._seen = new Set(); // message ids already handed to onMessage
    this._seenOrder = [];
    this._nextRef = 0;
    this._attempt = 0; // failed connects in a row (back-off grows with it)
    this._redirect = null; // url from a `reconnect` frame, used for the next connect only
    this._stopped = false;
    this._token = options.token || null; // the token of the current connection
    this._open();
  }

  /**
   * Sends `body` (any JSON) to user `to`; resolves with the ack frame, whatever its status.
   * While (re)connecting it waits for the connection, as long as it would wait for an ack.
   */
  async send(to, body) {
    if (this._stopped) throw new Error("wsroute: closed");
    if (this.state !== "open") await this._whenOpen();
    const ref = `r${++this._nextRef}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(ref);
        reject(new Error(`wsroute: no ack for send ${ref} within ${this.options.ackTimeoutMs} ms`));
      }, this.options.ackTimeoutMs);
      this._pending.set(ref, { resolve, reject, timer });
      this._ws.send(JSON.stringify({ type: "send", to, ref, body }));
    });
  }

  /** Closes for good: no more reconnects; unanswered sends fail. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    for (const w of this._openWaiters.splice(0)) w.reject(new Error("wsroute: closed"));
    if (this._ws) this._ws.close(1000, "client closed");
    this._setState("stopped");
  }

  _whenOpen() {
    return new Promise((resolve, reject) => {
      const ms = this.options.ackTimeoutMs;
      const timer = setTimeout(() => reject(new Error(`wsroute: not connected within ${ms} ms`)), ms);
      const done = (settle) => (arg) => {
        clearTimeout(timer);
        settle(arg); // a no-op once the timer has rejected
      };
      this._openWaiters.push({ resolve: done(resolve), reject: done(reject) });
    });
  }

  _url(base) {
    const u = new URL(base);
    if (this._token) u.searchParams.set("token", this._token);
    else u.searchParams.set("user", this.options.user);
    if (this.options.device) u.searchParams.set("device", this.options.device);
    return u.toString();
  }

  _open() {
    const target = this._redirect || this.baseUrl;
    this._redirect = null;
    this._setState("connecting", target);
    if (!this.options.getToken) {
      this._dial(target);
      return;
    }
    // A fresh token for every connect: the last one may have expired meanwhile.
    Promise.resolve()
      .then(() => this.options.getToken())
      .then(
        (token) => {
          if (this._stopped) return;
          this._token = token;
          this._dial(target);
        },
        (e) => {
          this._emitError(new Error(`wsroute: getToken failed: ${e?.message ?? e}`));
          this._scheduleRetry();
        },
      );
  }

  _dial(target) {
    let ws;
    try {
      ws = new this._WebSocket(this._url(target));
    } catch (e) {
      this._emitError(new Error(`wsroute: cannot connect to ${target}: ${e.message}`));
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev);
    // The browser says nothing about why (an HTTP 401 or 403 looks like any other failure):
    // the close that follows carries the retry.
    ws.onerror = () => {};
  }

  _onFrame(ws, data) {
    this._lastHeard = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      this._emitError(new Error("wsroute: the server sent a frame that is not JSON"));
      return;
    }
    switch (f.type) {
      case "hello":
        this.hello = f;
        this._attempt = 0;
        this._startHeartbeat(f.heartbeat_ms);
        this._scheduleRefresh(expOf(this._token));
        this._setState("open", f);
        this.options.onHello?.(f);
        for (const w of this._openWaiters.splice(0)) w.resolve();
        break;
      case "message":
        // Ack every copy (the server forgets it only then), hand each id over once.
        ws.send(JSON.stringify({ type: "ack", id: f.id })); // on the connection it came by
        if (this._seen.has(f.id)) break;
        this._remember(f.id);
        this.options.onMessage?.(f);
        break;
      case "ack": {
        const p = this._pending.get(f.ref);
        if (!p) break; // answered after its timeout
        this._pending.delete(f.ref);
        clearTimeout(p.timer);
        p.resolve(f);
        break;
      }
      case "error": {
        const err = new Error(`wsroute: ${f.code}: ${f.message}`);
        err.code = f.code;
        const p = f.ref != null && this._pending.get(f.ref);
        if (p) {
          this._pending.delete(f.ref);
          clearTimeout(p.timer);
          p.reject(err);
        } else {
          this._emitError(err);
        }
        break;
      }
      case "reconnect":
        // The server closes next; _onClose connects there at once, if it is a trusted node.
        if (this._trusted(f.url)) this._redirect = f.url;
        else this._emitError(new Error(`wsroute: not following a reconnect to ${f.url}: not this client's server, this page's host or one of its nodes`));
        break;
      case "pong":
        break;
      case "refreshed": // the session now lasts until the new token's exp
        this._scheduleRefresh(f.exp);
        break;
      default:
        break; // newer servers may send more types
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
    const base = new URL(this.baseUrl);
    if (base.protocol === "wss:" && target.protocol !== "wss:") return false; // no downgrade
    const trusted = [base.host];
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

  _onClose(ws, ev) {
    if (ws !== this._ws) return;
    this._ws = null;
    clearInterval(this._heartbeat);
    clearTimeout(this._refreshTimer);
    for (const [ref, p] of this._pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`wsroute: connection closed before the ack for ${ref}; the message may or may not have been sent`));
    }
    this._pending.clear();
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
    this._attempt += 1;
    const wait = ceiling / 2 + Math.random() * (ceiling / 2); // jitter: clients do not return in step
    this._retryTimer = setTimeout(() => this._open(), wait);
  }

  _startHeartbeat(ms) {
    clearInterval(this._heartbeat);
    if (!(ms > 0)) return;
    this._heartbeat = setInterval(() => {
      if (!this._ws) return;
      if (Date.now() - this._lastHeard > 2 * ms) {
        this._ws.close(4000, "server silent for two heartbeats"); // then reconnect
        return;
      }
      this._ws.send(JSON.stringify({ type: "ping" }));
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
      this._emitError(new Error(`wsroute: getToken failed: ${e?.message ?? e}`));
      return;
    }
    if (!ws || ws !== this._ws) return; // closed meanwhile: the reconnect asks for its own
    this._token = token;
    ws.send(JSON.stringify({ type: "refresh", token }));
  }

  _remember(id) {
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > this.options.rememberIds) {
      this._seen.delete(this._seenOrder.shift());
    }
  }

  _setState(state, detail) {
    this.state = state;
    this.options.onState?.(state, detail);
  }

  _emitError(err) {
    if (this.options.onError) this.options.onError(err);
    else console.error(err);
  }
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
