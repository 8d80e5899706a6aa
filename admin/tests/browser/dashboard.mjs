// Browser test of the sse-admin dashboard, in Debian's headless Chromium.
//
// Usage: node dashboard.mjs <admin-url> <fresh-user-data-dir> <topic> <node> <before> <after> <rate>
//        node dashboard.mjs <admin-url> <fresh-user-data-dir> --reopen
//
// Opens the dashboard without any token, waits until it is live, shows
// <topic>, and shows node <node> with <before> connections; then prints
// "READY" and waits (the test changes the node's report meanwhile) until the
// page shows <after> connections and a delivery rate of <rate> for the node
// and in all, still shown two snapshots later; prints "UPDATED" and exits 0.
// With --reopen: the page's stream is refused at first (admin busy); prints
// "REFUSED" once the page says so, then waits until the page is live again
// and prints "LIVE". Any failure prints "FAIL <reason>" and exits 1.
// SCREENSHOT=<path> saves a picture.
import { chromium } from "playwright-core";

const [url, userDataDir, topic, node, before, after, rate] = process.argv.slice(2);
const timeout = 20000;

function fail(reason) {
  console.log(`FAIL ${reason}`);
  process.exit(1);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") console.error(`console: ${m.text()}`); });

  const response = await page.goto(url);
  if (!response.ok()) fail(`dashboard answered ${response.status()}`);
  if (topic === "--reopen") {
    await page.waitForSelector("#status.down", { timeout });
    console.log("REFUSED");
    await page.waitForSelector("#status.live", { timeout });
    console.log("LIVE");
    process.exit(0);
  }
  await page.waitForSelector("#status.live", { timeout });
  await page.waitForSelector(`#topics tr[data-topic="${topic}"]`, { timeout });
  const connections = `#nodes tr[data-node="${node}"] td.connections`;
  const shows = (n) =>
    page.waitForFunction(
      ([sel, n]) => document.querySelector(sel)?.textContent === n,
      [connections, n],
      { timeout },
    );
  await shows(before);
  const total = await page.textContent("#total-connections");
  if (total !== before) fail(`total connections ${total}, expected ${before}`);
  console.log("READY");

  await shows(after);
  const rates = () =>
    page.evaluate((sel) => [
      document.querySelector(sel)?.textContent,
      document.querySelector("#total-rate").textContent,
    ], `#nodes tr[data-node="${node}"] td.rate`);
  await page.waitForFunction(
    ([sel, r]) => document.querySelector(sel)?.textContent === r,
    [`#nodes tr[data-node="${node}"] td.rate`, rate],
    { timeout },
  );
  // The node reports every few seconds, the page gets a snapshot more
  // often: the rate must hold between reports, not fall to zero.
  for (let i = 0; i < 2; i++) {
    const generated = await page.textContent("#generated");
    await page.waitForFunction(
      (g) => document.querySelector("#generated").textContent !== g,
      generated,
      { timeout },
    );
    const [shown, total] = await rates();
    if (shown !== rate || total !== rate) fail(`rate ${shown}, in all ${total}, expected ${rate}`);
  }
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  if (errors.length) fail(`page errors: ${errors.join("; ")}`);
  console.log("UPDATED");
} catch (e) {
  fail(e.message.split("\n")[0]);
} finally {
  await context.close();
}
process.exit(0);
