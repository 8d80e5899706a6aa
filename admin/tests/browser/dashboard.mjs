// Browser test of the sse-admin dashboard, in Debian's headless Chromium.
//
// Usage: node dashboard.mjs <admin-url> <fresh-user-data-dir> <topic> <node> <before> <after>
//
// Opens the dashboard without any token, waits until it is live, shows
// <topic>, and shows node <node> with <before> connections; then prints
// "READY" and waits (the test changes the node's report meanwhile) until the
// page shows <after> connections, prints "UPDATED" and exits 0. Any failure
// prints "FAIL <reason>" and exits 1. SCREENSHOT=<path> saves a picture.
import { chromium } from "playwright-core";

const [url, userDataDir, topic, node, before, after] = process.argv.slice(2);
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
  if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  if (errors.length) fail(`page errors: ${errors.join("; ")}`);
  console.log("UPDATED");
} catch (e) {
  fail(e.message.split("\n")[0]);
} finally {
  await context.close();
}
process.exit(0);
