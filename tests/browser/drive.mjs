// Opens one page in Debian's Chromium and prints `window.state` as a JSON
// line every 200 ms until stdin closes or says "quit".
// Usage: node drive.mjs <url> <fresh user-data-dir>
// IGNORE_HTTPS_ERRORS=1 accepts a self-signed server certificate.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, userDataDir] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: process.env.IGNORE_HTTPS_ERRORS === "1",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
page.on("console", (m) => console.error(`console: ${m.text()}`));
page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
await page.goto(url);

let stopping = false;
const timer = setInterval(async () => {
  try {
    const state = await page.evaluate(() => window.state);
    if (!stopping) process.stdout.write(JSON.stringify(state) + "\n");
  } catch (e) {
    console.error(`evaluate: ${e.message}`);
  }
}, 200);

async function stop() {
  if (stopping) return;
  stopping = true;
  clearInterval(timer);
  await context.close();
  process.exit(0);
}
readline.createInterface({ input: process.stdin }).on("line", (l) => { if (l.trim() === "quit") stop(); }).on("close", stop);
process.on("SIGTERM", stop);
