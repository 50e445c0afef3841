// Drives Debian's Chromium for tests/browser.rs, one command at a time.
//
// Protocol: line-based JSON. After launching it prints {"ready":true}; then
// each line on stdin is a command {"id", "op", …} and gets exactly one
// answer {"id", "ok":true, "value"} or {"id", "ok":false, "error"}. Lines
// without an id ({"log": …}) are the page's console and errors, for the
// test's output. It exits when stdin closes (the test ended or panicked),
// and by itself after HERALD_DRIVER_LIFETIME_MS (default 10 minutes).
//
// Commands:
//   goto {url}                navigate and wait for the load event
//   eval {js}                 evaluate an expression in the page (awaited)
//   wait {js, timeout_ms}     wait until the expression is truthy; returns it
//   refuse_websockets {}      refuse every WebSocket the page opens, as a
//                             proxy that drops Upgrade would: it closes
//                             without ever opening
//   hold_requests {pattern}   hold matching requests (a RegExp source) until
//                             release_requests; every matching request's
//                             headers are recorded
//   release_requests {}       let held (and later) requests through
//   requests {}               the recorded [{url, headers}]
//   streams {reset}           the page's requests to /sse, /poll and /ws
//                             from the browser's own network log: those
//                             open now, the most open at once and how many
//                             were opened since the last reset ({open:
//                             [url], max, opened})
//   reload {}                 reload the page and wait for the load event
//   offline {offline}         Chromium's network emulation: offline or not
//   viewport {width, height}
//   screenshot {path}
//   close {}                  close the browser and exit
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const CHROMIUM = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
const LIFETIME_MS = Number(process.env.HERALD_DRIVER_LIFETIME_MS || 600000);

const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (text) => send({ log: text });

const profile = mkdtempSync(join(tmpdir(), "herald-chromium-"));
let context;
let finished = false;
async function finish(code) {
  if (finished) return;
  finished = true;
  // Whatever happens, gone soon: the test may be waiting for us to exit.
  setTimeout(() => process.exit(code), 10000).unref();
  try {
    if (context) await context.close();
  } catch {}
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
setTimeout(() => {
  log(`driver: lifetime of ${LIFETIME_MS} ms ran out`);
  finish(3);
}, LIFETIME_MS).unref();

try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    // tests/browser.rs's TLS listener has a certificate from a CA made for
    // the test; Chromium is not asked to trust it (curl in tests/tls.rs
    // checks the chain). Plain-HTTP pages are unaffected.
    ignoreHTTPSErrors: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1280, height: 800 },
  });
} catch (e) {
  send({ ready: false, error: `cannot launch ${CHROMIUM}: ${e.message}` });
  await finish(2);
}
const page = context.pages()[0] || (await context.newPage());
page.on("console", (m) => log(`console.${m.type()}: ${m.text()}`));
page.on("pageerror", (e) => log(`pageerror: ${e.message}`));

// The page's connections to Herald's transports as the network log shows
// them: a request counts from its start until it finished or failed, a
// WebSocket until it closed.
const STREAM = /\/(sse|poll|ws)(\?|$)/;
const open = new Set();
let maxOpen = 0;
let openedCount = 0;
const opened = (key) => {
  open.add(key);
  openedCount += 1;
  maxOpen = Math.max(maxOpen, open.size);
};
page.on("request", (r) => STREAM.test(new URL(r.url()).pathname + "?") && opened(r));
page.on("requestfinished", (r) => open.delete(r));
page.on("requestfailed", (r) => open.delete(r));
page.on("websocket", (ws) => {
  opened(ws);
  ws.on("close", () => open.delete(ws));
});

let held = []; // resolve functions of held requests
let holding = false;
let recorded = [];
let holdPattern = null;

const ops = {
  async goto({ url }) {
    await page.goto(url, { waitUntil: "load" });
    return page.url();
  },
  async eval({ js }) {
    return await page.evaluate(js);
  },
  async wait({ js, timeout_ms }) {
    const handle = await page.waitForFunction(js, null, { timeout: timeout_ms ?? 30000, polling: 50 });
    return await handle.jsonValue();
  },
  async refuse_websockets() {
    await page.routeWebSocket(/.*/, async (ws) => {
      log(`driver: refused WebSocket ${ws.url()}`);
      await ws.close({ code: 1006, reason: "refused by the test" }).catch(() => ws.close());
    });
    return true;
  },
  async hold_requests({ pattern }) {
    holding = true;
    if (!holdPattern) {
      holdPattern = new RegExp(pattern);
      await page.route(holdPattern, async (route) => {
        const request = route.request();
        recorded.push(request);
        if (holding) await new Promise((resolve) => held.push(resolve));
        await route.continue().catch(() => {});
      });
    }
    return true;
  },
  async release_requests() {
    holding = false;
    const waiting = held;
    held = [];
    for (const resolve of waiting) resolve();
    return waiting.length;
  },
  async requests() {
    return recorded.map((r) => ({ url: r.url(), headers: r.headers() }));
  },
  async streams({ reset }) {
    const answer = { open: [...open].map((r) => r.url()), max: maxOpen, opened: openedCount };
    if (reset) {
      maxOpen = open.size;
      openedCount = 0;
    }
    return answer;
  },
  async reload() {
    await page.reload({ waitUntil: "load" });
    return page.url();
  },
  async offline({ offline }) {
    await context.setOffline(!!offline);
    return true;
  },
  async viewport({ width, height }) {
    await page.setViewportSize({ width, height });
    return true;
  },
  async screenshot({ path }) {
    await page.screenshot({ path, animations: "disabled" });
    return path;
  },
  async close() {
    setImmediate(() => finish(0));
    return true;
  },
};

send({ ready: true, version: context.browser()?.version() ?? null });

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    send({ log: `driver: not JSON: ${line}` });
    return;
  }
  const op = ops[cmd.op];
  if (!op) {
    send({ id: cmd.id, ok: false, error: `unknown op ${cmd.op}` });
    return;
  }
  try {
    const value = await op(cmd);
    send({ id: cmd.id, ok: true, value: value === undefined ? null : value });
  } catch (e) {
    send({ id: cmd.id, ok: false, error: String(e && e.stack ? e.stack : e) });
  }
});
lines.on("close", () => finish(0));
