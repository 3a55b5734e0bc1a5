// Compiled (never run) by `tsc --noEmit -p .`: what an app writes type-checks against
// wsroute-client.d.ts, and what it must not write does not (each @ts-expect-error must fail).

import { connect, sameHostUrl, WsRouteClient } from "wsroute-client";
import type { Ack, Message, Presence, Receipt, WsRouteError } from "wsroute-client";

interface Chat {
  text: string;
}

const chat: WsRouteClient<Chat> = connect<Chat>("ws://127.0.0.1:8081/ws", {
  user: "alice",
  device: "laptop",
  nodes: ["ws://127.0.0.1:8082"],
  gateway: ["http://127.0.0.1:8081", "http://127.0.0.1:8082"],
  maxOutbox: 100,
  onMessage: (m: Message<Chat>) => {
    const text: string = m.body.text;
    chat.read(m.id);
    console.log(m.from, text, new Date(m.ts));
  },
  onReceipt: (r: Receipt) => {
    if (r.status === "read") console.log(`${r.to} read ${r.id}`);
  },
  onPresence: (p: Presence) => console.log(p.user, p.online ? `online (${p.devices})` : "offline"),
  onState: (state, detail) => console.log(state, detail),
  onError: (e: WsRouteError) => console.log(e.code, e.message),
});

async function use(): Promise<void> {
  const hello = await chat.opened();
  console.log(hello.node, hello.heartbeat_ms);
  const ack: Ack = await chat.send("bob", { text: "hi" }, { cid: "chat-1.msg-7" });
  if (ack.status === "rejected") console.log(ack.error?.code);
  if (ack.status === "delivered") console.log(ack.devices);
  chat.watch(["bob", "carol"]);
  chat.unwatch("carol");
  const waiting: number = chat.outboxSize + chat.stats.resent;
  console.log(waiting, chat.state, chat.hello?.conn_id);
  chat.close();
}
void use;

// A token, or a function that gives fresh ones, and only a gateway.
connect(null, { token: "a.b.c", gateway: "https://chat.example" });
connect(sameHostUrl(), { getToken: async () => "a.b.c", refreshBeforeMs: 10_000 });

// @ts-expect-error: no way to authenticate
connect("ws://x/ws", {});
// @ts-expect-error: two ways to authenticate
connect("ws://x/ws", { user: "alice", token: "a.b.c" });
// @ts-expect-error: a body must be JSON
chat.send("bob", () => 1);
// @ts-expect-error: an ack status is one of three
const never: Ack["status"] = "lost";
void never;
// @ts-expect-error: a message's body has the app's type
connect<Chat>("ws://x/ws", { user: "a", onMessage: (m) => m.body.txt });
