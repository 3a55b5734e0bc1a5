// End-to-end in a real browser: alice's page on node A sends to bob's page on node B.
//
//   node tests/browser/cross.mjs http://127.0.0.1:8081 http://127.0.0.1:8082 shot.png [PID_A]
//
// Opens each node's own page (GET /) in headless Chromium (Debian's, /usr/bin/chromium, or
// $CHROMIUM), connects alice on A and bob on B with dev auth through the form, sends from alice
// to bob, and checks what a person would see: alice's send acked `delivered` to 1 device, bob's
// page showing the message from alice (as text, not HTML), alice's page showing that bob read
// it (the `read` receipt the page's client package sends when it shows a message), then bob's
// reply arriving at alice.
// Saves one PNG with both pages side by side. Given node A's process id, it then drains node A
// (SIGTERM) and checks that alice's page follows the `reconnect` to another node and can still
// send to bob. Exits 1 with the reason on any failure; every wait has a deadline, and the whole
// run has one too.

import { chromium } from "playwright-core";

const [baseA, baseB, shotPath, drainPid] = process.argv.slice(2);
if (!baseA || !baseB || !shotPath) {
  console.error("usage: node cross.mjs NODE_A_BASE_URL NODE_B_BASE_URL SCREENSHOT.png [NODE_A_PID]");
  process.exit(2);
}
const WAIT_MS = Number(process.env.WSROUTE_BROWSER_WAIT_MS || 15000); // one condition
const RUN_MS = Number(process.env.WSROUTE_BROWSER_RUN_MS || 90000); // the whole run

// Page errors, failed requests and console errors (CSP violations land there) all fail the run,
// and are told with any other failure.
const problems = [];
const fail = (why) => {
  console.error(`FAIL: ${why}`);
  if (problems.length) console.error(`seen on the pages:\n  ${problems.join("\n  ")}`);
  process.exit(1);
};
setTimeout(() => fail(`the whole run took longer than ${RUN_MS} ms`), RUN_MS).unref();

const browser = await chromium
  .launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: WAIT_MS,
  })
  .catch((e) => fail(`cannot start Chromium: ${e.message}`));

async function openAs(base, user) {
  const page = await browser.newPage({ viewport: { width: 640, height: 560 } });
  page.setDefaultTimeout(WAIT_MS);
  page.on("pageerror", (e) => problems.push(`${user}'s page threw: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`${user}'s console: ${m.text()}`);
  });
  page.on("requestfailed", (r) => problems.push(`${user}'s page: ${r.url()} failed: ${r.failure()?.errorText}`));
  const res = await page.goto(`${base}/`);
  if (res?.status() !== 200) fail(`GET ${base}/ answered ${res?.status()}`);
  await page.fill("#user", user);
  await page.click("#connect");
  await page
    .waitForSelector('#state[data-state="open"]', { timeout: WAIT_MS })
    .catch(() => fail(`${user} did not connect on ${base}`));
  return page;
}

async function step(what, promise) {
  try {
    return await promise;
  } catch (e) {
    fail(`${what}: ${e.message.split("\n")[0]}`);
  }
}

async function say(page, to, text) {
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#send");
}

try {
  const alice = await step("open alice's page", openAs(baseA, "alice"));
  const bob = await step("open bob's page", openAs(baseB, "bob"));
  const nodeA = await alice.getAttribute("#state", "data-node");
  const nodeB = await bob.getAttribute("#state", "data-node");
  console.log(`alice on ${nodeA} (${baseA}), bob on ${nodeB} (${baseB})`);
  if (!nodeA || !nodeB || nodeA === nodeB) fail(`the pages must be on two nodes: ${nodeA} and ${nodeB}`);

  // Markup in the text must come out as text on the other side.
  const text = `hello bob <b>from</b> ${nodeA}`;
  await say(alice, "bob", text);
  const sent = await step(
    "alice's ack",
    alice.waitForSelector('#sent li:not([data-status="pending"])'),
  );
  const status = await sent.getAttribute("data-status");
  const statusText = await sent.$eval(".status", (e) => e.textContent);
  if (status !== "delivered" || statusText !== "delivered (1 device)") {
    fail(`alice's send was acked "${statusText}" (status ${status}), expected delivered to 1 device`);
  }
  const got = await step(
    "bob sees the message",
    bob.waitForSelector('#received li[data-from="alice"]'),
  );
  const body = await got.$eval(".body", (e) => ({ text: e.textContent, tags: e.children.length }));
  if (body.text !== text || body.tags !== 0) fail(`bob's page shows ${JSON.stringify(body)}, expected the text ${JSON.stringify(text)}`);
  if ((await got.getAttribute("data-id")) !== (await sent.getAttribute("data-id"))) {
    fail("bob's message id differs from alice's ack id");
  }
  console.log(`alice -> bob: ${statusText}, bob's page shows "${body.text}"`);
  // Bob's page shows it, and so reads it: alice's page hears both receipts through the package.
  const sentId = await sent.getAttribute("data-id");
  const receipt = await step(
    "alice's page shows bob read it",
    alice.waitForSelector(`#sent li[data-id="${sentId}"][data-receipt="read"]`),
  );
  const receiptText = await receipt.$eval(".receipt", (e) => e.textContent);
  if (receiptText !== "read by bob") fail(`alice's page shows the receipt "${receiptText}", expected "read by bob"`);
  console.log(`alice's page: ${receiptText}`);

  await say(bob, "alice", `hi alice, from ${nodeB}`);
  await step("bob's ack", bob.waitForSelector('#sent li[data-status="delivered"]'));
  await step("alice sees the reply", alice.waitForSelector('#received li[data-from="bob"]'));
  console.log("bob -> alice: delivered and shown");

  if (problems.length) fail("the pages reported problems");

  // One picture of both pages, side by side.
  const [a, b] = await Promise.all([alice.screenshot(), bob.screenshot()]);
  const board = await browser.newPage({ viewport: { width: 1300, height: 600 } });
  await board.setContent(
    `<body style="margin:0;display:flex;gap:20px;background:#888;padding:10px">` +
      `<img src="data:image/png;base64,${a.toString("base64")}">` +
      `<img src="data:image/png;base64,${b.toString("base64")}"></body>`,
  );
  await board.screenshot({ path: shotPath, fullPage: true });
  console.log(`screenshot: ${shotPath}`);

  if (drainPid) {
    process.kill(Number(drainPid), "SIGTERM");
    const moved = await step(
      `alice's page follows the reconnect away from draining ${nodeA}`,
      alice.waitForSelector(`#state[data-state="open"]:not([data-node="${nodeA}"])`),
    );
    const nodeA2 = await moved.getAttribute("data-node");
    const later = `still here, now on ${nodeA2}`;
    await say(alice, "bob", later);
    const acked = await step(
      "alice's ack after the move",
      alice.waitForSelector('#sent li:first-child:not([data-status="pending"])'),
    );
    const after = await acked.getAttribute("data-status");
    if (after !== "delivered") fail(`after the move alice's send was acked ${after}`);
    await step(
      "bob sees the message sent after the move",
      bob.waitForFunction(
        (t) => document.querySelector("#received li .body")?.textContent === t,
        later,
      ),
    );
    console.log(`${nodeA} drained: alice moved to ${nodeA2} and bob got "${later}"`);
    if (problems.length) fail("the pages reported problems");
  }
} catch (e) {
  fail(e.message.split("\n")[0]);
} finally {
  await browser.close();
}
