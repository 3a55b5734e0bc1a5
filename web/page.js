// The try-it page served at `/`: wires the form to the wsroute-client package (clients/js),
// served by every node at /wsroute-client.js. Everything a peer sends is shown
// with textContent, never as HTML.
import { connect, sameHostUrl } from "./wsroute-client.js";

const $ = (id) => document.getElementById(id);
let client = null;

// ?user=alice&to=bob fills the form (and connects as that user) for quick demos.
const query = new URLSearchParams(location.search);
$("user").value = query.get("user") || "";
$("to").value = query.get("to") || "";
$("url").value = sameHostUrl();

// The cluster's nodes when the page was served (the node fills them in): a drain's `reconnect`
// is followed to these, to this host, or to the server typed in, and nowhere else.
function clusterNodes() {
  const meta = document.querySelector('meta[name="wsroute-nodes"]');
  return (meta?.content || "").split(" ").filter(Boolean);
}

function showState(state, text) {
  $("state").dataset.state = state;
  $("state").textContent = text;
}

function connected(on) {
  $("connect").disabled = on;
  $("disconnect").disabled = !on;
  $("send").disabled = !on;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

// A body as text: the page sends {"text": "..."}; other senders may send any JSON.
function bodyText(body) {
  return body && typeof body.text === "string" ? body.text : JSON.stringify(body);
}

function row(list, parts) {
  const li = document.createElement("li");
  for (const [cls, text] of parts) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    li.append(span);
  }
  $(list).prepend(li);
  return li;
}

// What a receipt says, strongest last: a `read` is not undone by a late `received`.
const RECEIPT_RANK = { stored: 1, received: 2, read: 3 };
// Receipts that came before their send's ack named the id (at most 100 kept).
const early = new Map();

/** Shows a receipt on the sent message it is about. */
function showReceipt(r) {
  const li = [...$("sent").children].find((el) => el.dataset.id === r.id);
  if (!li) {
    early.set(r.id, r);
    if (early.size > 100) early.delete(early.keys().next().value);
    return;
  }
  if ((RECEIPT_RANK[r.status] || 0) <= (RECEIPT_RANK[li.dataset.receipt] || 0)) return;
  li.dataset.receipt = r.status;
  const device = r.device ? ` (${r.device})` : "";
  li.querySelector(".receipt").textContent = {
    received: `received by ${r.to}${device}`,
    read: `read by ${r.to}${device}`,
    stored: `kept in ${r.to}'s inbox`,
  }[r.status] || r.status;
}

function start(event) {
  event.preventDefault();
  const user = $("user").value.trim();
  const token = $("token").value.trim();
  if (!user && !token) {
    showState("error", "give a user (dev auth) or a token");
    return;
  }
  client?.close();
  client = connect($("url").value.trim() || sameHostUrl(), {
    nodes: clusterNodes(),
    user: token ? undefined : user,
    token: token || undefined,
    device: $("device").value.trim() || undefined,
    onHello: (h) => {
      document.title = `${h.user} on ${h.node}: wsroute`;
      showState("open", `${h.user}, connected to ${h.node} (connection ${h.conn_id})`);
      $("state").dataset.node = h.node;
      connected(true);
    },
    onState: (state, detail) => {
      if (state === "connecting") showState(state, `connecting to ${detail}…`);
      if (state === "closed") {
        showState(state, `disconnected (${detail.code}${detail.reason ? ": " + detail.reason : ""}); retrying…`);
        $("send").disabled = true;
      }
      if (state === "stopped") {
        showState("idle", "not connected");
        connected(false);
      }
    },
    onMessage: (m) => {
      const li = row("received", [
        ["meta", time(m.ts)],
        ["who", `from ${m.from}`],
        ["body", bodyText(m.body)],
      ]);
      li.dataset.from = m.from;
      li.dataset.id = m.id;
      // Shown on the page: read. The sender's page hears so (a `read` receipt).
      client.read(m.id);
    },
    onReceipt: showReceipt,
    onError: (e) => showState("error", e.message),
  });
}

async function send(event) {
  event.preventDefault();
  const to = $("to").value.trim();
  const text = $("text").value;
  const li = row("sent", [
    ["meta", new Date().toLocaleTimeString()],
    ["who", `to ${to}`],
    ["body", text],
    ["status", "sending…"],
    ["receipt", ""],
  ]);
  li.dataset.status = "pending";
  const status = li.querySelector(".status");
  try {
    const ack = await client.send(to, { text });
    li.dataset.status = ack.status;
    li.dataset.id = ack.id || "";
    status.textContent = {
      delivered: `delivered (${ack.devices} device${ack.devices === 1 ? "" : "s"})`,
      stored: `stored in ${to}'s inbox`,
      rejected: `rejected: ${ack.error?.code}${ack.error?.message ? ` (${ack.error.message})` : ""}`,
    }[ack.status] || ack.status;
    if (ack.status !== "rejected") $("text").value = "";
    const r = early.get(ack.id);
    if (r) {
      early.delete(ack.id);
      showReceipt(r);
    }
  } catch (e) {
    li.dataset.status = "failed";
    status.textContent = e.message;
  }
}

$("connect-form").addEventListener("submit", start);
$("disconnect").addEventListener("click", () => client?.close());
$("send-form").addEventListener("submit", send);
if (query.get("user")) $("connect-form").requestSubmit();
