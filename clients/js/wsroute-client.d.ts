// Types for wsroute-client.js (written by hand; `npm test` checks them with tsc --noEmit).
// The frames are those of the wsroute protocol (docs/protocol.md and 7).

/** Any JSON value: what a message body may be. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** The first frame of every connection. */
export interface Hello {
  type: "hello";
  conn_id: string;
  user: string;
  node: string;
  heartbeat_ms: number;
}

/** A direct message for this user. `from` is the sender's authenticated user id. */
export interface Message<B = Json> {
  type: "message";
  id: string;
  from: string;
  to: string;
  /** Unix milliseconds. */
  ts: number;
  body: B;
}

/** The answer to a send. */
export interface Ack {
  type: "ack";
  ref: string | null;
  id: string;
  status: "delivered" | "stored" | "rejected";
  /** Live connections written to (`delivered`). */
  devices: number;
  error?: { code: string; message: string };
}

/** What became of a message after its ack (docs/protocol.md, receipts), sent to every connection of its sender. */
export interface Receipt {
  type: "receipt";
  id: string;
  /** The recipient. */
  to: string;
  status: "received" | "read" | "stored";
  device?: string;
}

/** A watched user's presence (docs/protocol.md, presence). */
export interface Presence {
  type: "presence";
  user: string;
  online: boolean;
  /** Live connections, cluster-wide. */
  devices: number;
}

export type State = "connecting" | "open" | "closed" | "stopped";

/** Every error the client reports has a code: the server's (`bad_field`, `too_many`, ...) or its own. */
export interface WsRouteError extends Error {
  code:
    | "closed"
    | "timeout"
    | "outbox_full"
    | "resend_refused"
    | "bad_field"
    | "too_many"
    | "gateway"
    | "get_token"
    | "connect"
    | "untrusted_reconnect"
    | "bad_frame"
    | "write"
    | "callback"
    | (string & {});
}

/** What the client needs of a WebSocket: the browser's, Node's, or the `ws` package's. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** What the client needs of fetch (for `gateway`). */
export type FetchLike = (
  url: string,
  init: { signal: AbortSignal },
) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

interface Callbacks<B> {
  /** Each message once (copies of an id already handed over are dropped; all are acked). */
  onMessage?: (message: Message<B>) => void;
  /** Every receipt for messages this user sent (from any of their devices). */
  onReceipt?: (receipt: Receipt) => void;
  /** The presence of watched users: at once after watch(), then on every change. */
  onPresence?: (presence: Presence) => void;
  onHello?: (hello: Hello) => void;
  /** detail: the url being dialled ("connecting"), the hello ("open"), the close ("closed"). */
  onState?: (state: State, detail?: string | Hello | { code: number; reason: string }) => void;
  /** Errors not tied to a send's promise: refused frames, refused resends (`resend_refused`), untrusted reconnects, gateways, getToken. */
  onError?: (error: WsRouteError) => void;
}

interface Tuning {
  /** A send not acked by then fails with `timeout` (default 30000; 0: never). */
  ackTimeoutMs?: number;
  /** A send acked `delivered` waits this long for its receipt (or a reconnect), then leaves the outbox (default 120000). */
  receiptTimeoutMs?: number;
  /** Sends waiting for an ack or receipt; past it send() fails with `outbox_full` (default 1000). */
  maxOutbox?: number;
  /** Back-off: full jitter between 0 and min(max, min * 2^failures) (defaults 500, 30000). */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Message ids remembered for dropping copies (default 1000). */
  rememberIds?: number;
  /** With getToken: refresh this long before the token's exp (default 30000). */
  refreshBeforeMs?: number;
  /** Users watched at once (default 1000, the server's default --max-watch). */
  maxWatch?: number;
  /** How long one gateway may take to answer (default 5000). */
  gatewayTimeoutMs?: number;
}

interface Common<B> extends Callbacks<B>, Tuning {
  /** Names this connection's device (`?device=`). */
  device?: string;
  /** Where a draining node's `reconnect` may send the client besides `url`'s host and the page's host. */
  nodes?: string[];
  /** http(s) base URL(s) of nodes whose `/gateway` names the node to connect to. */
  gateway?: string | string[];
  /** The WebSocket to use (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** The fetch to use for `gateway` (default: the global one). */
  fetch?: FetchLike;
}

/** Exactly one way to authenticate: a dev-auth user, a JWT, or a function that returns fresh JWTs. */
export type ConnectOptions<B = Json> = Common<B> &
  (
    | { user: string; token?: undefined; getToken?: undefined }
    | { token: string; user?: undefined; getToken?: undefined }
    | { getToken: () => string | Promise<string>; user?: undefined; token?: undefined }
  );

export interface SendOptions {
  /** The message's key (1 to 64 of [A-Za-z0-9_.:-]); default: generated. */
  cid?: string;
}

export interface Stats {
  connects: number;
  sent: number;
  resent: number;
  /** Resends the server refused (those refused for a passing reason are tried again). */
  refused: number;
  acked: number;
  received: number;
  duplicates: number;
  /** Sends acked `delivered` whose receipt did not come within receiptTimeoutMs (no reconnect meanwhile). */
  expired: number;
}

export declare class WsRouteClient<B = Json> {
  constructor(url: string | null | undefined, options: ConnectOptions<B>);
  readonly options: Required<Tuning> & ConnectOptions<B>;
  /** The url given (null with only a gateway). */
  readonly baseUrl: string | null;
  readonly hello: Hello | null;
  readonly state: State;
  readonly stats: Readonly<Stats>;
  /** Sends waiting for an ack or a receipt. */
  readonly outboxSize: number;
  /** Resolves with the ack, whatever its status; see the README for what rejects. */
  send(to: string, body: Json, options?: SendOptions): Promise<Ack>;
  /** A `read` receipt for message `id`'s sender; false when not connected. */
  read(id: string): boolean;
  /** Throws `too_many` past maxWatch. */
  watch(users: string | string[]): void;
  unwatch(users: string | string[]): void;
  /** Resolves with the next hello (at once when open). */
  opened(): Promise<Hello>;
  /** For good: no more reconnects; waiting sends fail with `closed`. */
  close(): void;
}

export declare function connect<B = Json>(
  url: string | null | undefined,
  options: ConnectOptions<B>,
): WsRouteClient<B>;

/** ws(s)://this-page's-host/ws (browsers). */
export declare function sameHostUrl(path?: string): string;
