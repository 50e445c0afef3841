// Runs Debian's Firefox ESR for tests/browser.rs, with a push service of
// the test's own (autopush.mjs) and the test's pages.
//
// Playwright drives only its own patched Firefox, which cannot be had
// here, so this launches `firefox-esr --headless` itself, with a fresh
// profile whose user.js points Firefox's push service at autopush.mjs,
// grants notifications and keeps Firefox off the network. The page it
// opens (push/page.html, served here) is the test's hands: it long-polls
// this process for JavaScript to run and posts back the result, and it
// reports what its service worker forwards.
//
// Protocol: line-based JSON, as driver.mjs. It prints
// {"ready":true,"push_service":<its origin>,"pages":<origin of the pages>}
// once both servers listen; then each line on stdin is a command
// {"id","op",…} answered by exactly one {"id","ok":true,"value"} or
// {"id","ok":false,"error"}. Lines without an id are events: {"log"} (the
// console of Firefox's pages and service workers), {"push": {…}} (what the
// push service saw: hello, register, delivery, ack, refused, …) and
// {"report": {…}} (what the page reported). It exits when stdin closes,
// and by itself after HERALD_DRIVER_LIFETIME_MS (default 10 minutes).
//
// Commands:
//   open {path}            launch Firefox on a page of ours (a path and
//                          query); answers once the page has loaded and
//                          asks for work. Firefox sometimes does not load
//                          the page on the first launch of a new profile:
//                          after LOAD_TIMEOUT_MS it is launched once more.
//   eval {js, timeout_ms}  evaluate an expression in the page (awaited)
//   rotate {}              the push service forgets every subscription
//                          (see autopush.mjs)
//   close {}               end Firefox and exit
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { startPushService } from "./autopush.mjs";

const FIREFOX = process.env.HERALD_FIREFOX || "/usr/bin/firefox-esr";
const LIFETIME_MS = Number(process.env.HERALD_DRIVER_LIFETIME_MS || 600000);
// How long a launch may take to show our page before Firefox is started
// again; generous, as the two cores are shared.
const LOAD_TIMEOUT_MS = 45000;
const LAUNCHES = 2;
const HERE = dirname(fileURLToPath(import.meta.url));

// The test may be gone (stdin closed) while Firefox is still stopping.
process.stdout.on("error", () => {});
const send = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const log = (text) => send({ log: text });

const profile = mkdtempSync(join(tmpdir(), "herald-firefox-"));
let firefox = null;
let finished = false;
async function finish(code) {
  if (finished) return;
  finished = true;
  setTimeout(() => process.exit(code), 10000).unref();
  await stopFirefox();
  push.close();
  pages.close();
  rmSync(profile, { recursive: true, force: true });
  process.exit(code);
}
setTimeout(() => {
  log(`firefox driver: lifetime of ${LIFETIME_MS} ms ran out`);
  finish(3);
}, LIFETIME_MS).unref();

const push = await startPushService({ onEvent: (event) => send({ push: event }) });

// ---- The pages: push/, the page's work queue and its reports ------------

const FILES = {
  "/page.html": ["push/page.html", "text/html; charset=utf-8"],
  "/sw.js": ["push/sw.js", "text/javascript; charset=utf-8"],
};
// Commands for the page, and the page's long polls waiting for one.
const queue = [];
const waiting = [];
// id -> resolve, for commands the page has not answered yet.
const answers = new Map();
// Resolved when the page asks for its first command.
let pageUp = null;

const pages = createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  const file = FILES[url.pathname];
  if (req.method === "GET" && file) {
    res.writeHead(200, { "content-type": file[1], "cache-control": "no-store" });
    res.end(readFileSync(join(HERE, file[0])));
    return;
  }
  if (req.method === "GET" && url.pathname === "/command") {
    if (pageUp) pageUp();
    if (queue.length) reply(res, queue.shift());
    else waiting.push(res);
    return;
  }
  if (req.method === "POST" && (url.pathname === "/result" || url.pathname === "/report")) {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      res.writeHead(204).end();
      let value;
      try {
        value = JSON.parse(body);
      } catch {
        log(`firefox driver: a ${url.pathname} that is not JSON: ${body}`);
        return;
      }
      if (url.pathname === "/report") {
        send({ report: value });
      } else {
        answers.get(value.id)?.(value);
        answers.delete(value.id);
      }
    });
    return;
  }
  res.writeHead(404).end();
});
const pagesOrigin = await new Promise((resolve) => {
  pages.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${pages.address().port}`));
});

function reply(res, command) {
  res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
  res.end(JSON.stringify(command));
}

function toPage(command) {
  const res = waiting.shift();
  if (res) reply(res, command);
  else queue.push(command);
}

// ---- Firefox ------------------------------------------------------------

// What keeps Firefox quiet with no network: no first-run or what's-new
// pages, no telemetry, updates, studies, remote settings, safe browsing,
// captive portal or connectivity checks, DNS over HTTPS, speculative
// connections. Then the push service of the test, notifications granted
// and shown by Firefox itself, and page and service worker consoles on
// stdout.
function userJs() {
  const prefs = {
    "dom.push.serverURL": push.url,
    "dom.push.testing.allowInsecureServerURL": true,
    "permissions.default.desktop-notification": 1,
    // Notifications in Firefox's own alert windows: the system's (libnotify
    // over D-Bus) is not there in a test, and showNotification would fail.
    "alerts.useSystemBackend": false,
    // Reconnect to the push service 1 s after it closed the socket (5 s
    // by default), doubling from there.
    "dom.push.retryBaseInterval": 1000,
    "devtools.console.stdout.content": true,
    "browser.shell.checkDefaultBrowser": false,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.firstrunSkipsHomepage": true,
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "startup.homepage_override_url": "",
    "browser.aboutwelcome.enabled": false,
    "browser.newtabpage.enabled": false,
    "browser.newtabpage.activity-stream.feeds.system.topstories": false,
    "browser.newtabpage.activity-stream.feeds.snippets": false,
    "browser.newtabpage.activity-stream.feeds.section.topstories": false,
    "browser.topsites.contile.enabled": false,
    "browser.sessionstore.resume_from_crash": false,
    "browser.tabs.warnOnClose": false,
    "toolkit.startup.max_resumed_crashes": -1,
    "datareporting.policy.dataSubmissionEnabled": false,
    "datareporting.healthreport.uploadEnabled": false,
    "toolkit.telemetry.enabled": false,
    "toolkit.telemetry.unified": false,
    "toolkit.telemetry.archive.enabled": false,
    "toolkit.telemetry.server": "",
    "browser.ping-centre.telemetry": false,
    "app.update.disabledForTesting": true,
    "app.update.auto": false,
    "app.normandy.enabled": false,
    "app.shield.optoutstudies.enabled": false,
    "extensions.update.enabled": false,
    "extensions.getAddons.cache.enabled": false,
    "extensions.systemAddon.update.enabled": false,
    "services.settings.server": "http://127.0.0.1:9/",
    "browser.safebrowsing.malware.enabled": false,
    "browser.safebrowsing.phishing.enabled": false,
    "browser.safebrowsing.downloads.enabled": false,
    "browser.safebrowsing.blockedURIs.enabled": false,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "network.captive-portal-service.enabled": false,
    "network.connectivity-service.enabled": false,
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": true,
    "network.prefetch-next": false,
    "network.http.speculative-parallel-limit": 0,
    "browser.search.update": false,
    "browser.region.network.url": "",
    "geo.provider.network.url": "",
    "media.gmp-manager.url": "",
    "media.gmp-gmpopenh264.enabled": false,
    "identity.fxaccounts.enabled": false,
    "security.OCSP.enabled": 0,
  };
  return Object.entries(prefs)
    .map(([name, value]) => `user_pref(${JSON.stringify(name)}, ${JSON.stringify(value)});\n`)
    .join("");
}
writeFileSync(join(profile, "user.js"), userJs());

function startFirefox(url) {
  const child = spawn(FIREFOX, ["--headless", "--no-remote", "--profile", profile, url], {
    // Its own process group, so that its content processes end with it.
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, MOZ_HEADLESS: "1", MOZ_CRASHREPORTER_DISABLE: "1" },
  });
  const lines = (stream) => createInterface({ input: stream }).on("line", onFirefoxLine);
  lines(child.stdout);
  lines(child.stderr);
  child.on("exit", (code, signal) => {
    if (firefox === child) firefox = null;
    if (!finished) log(`firefox driver: Firefox exited (${code ?? signal})`);
  });
  firefox = child;
}

// Console lines of pages and workers (devtools.console.stdout.content);
// Firefox's own chatter is dropped unless it is an error of ours.
function onFirefoxLine(line) {
  if (/^console\.\w+:/.test(line) || /JavaScript (error|warning)/.test(line)) log(`firefox: ${line}`);
}

async function stopFirefox() {
  const child = firefox;
  if (!child) return;
  firefox = null;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  try {
    process.kill(-child.pid, "SIGTERM");
  } catch {}
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {}
  }, 5000);
  await exited;
  clearTimeout(timer);
}

// ---- Commands -----------------------------------------------------------

let nextCommand = 1;
const ops = {
  async open({ path }) {
    const url = pagesOrigin + path;
    for (let launch = 1; ; launch++) {
      const up = new Promise((resolve) => (pageUp = resolve));
      startFirefox(url);
      let timer;
      const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve(false), LOAD_TIMEOUT_MS)));
      const loaded = await Promise.race([up.then(() => true), timeout]);
      clearTimeout(timer);
      if (loaded) {
        pageUp = null;
        return { launches: launch };
      }
      log(`firefox driver: launch ${launch} did not load ${url} within ${LOAD_TIMEOUT_MS} ms`);
      await stopFirefox();
      if (launch >= LAUNCHES) throw new Error(`Firefox did not load ${url} in ${LAUNCHES} launches`);
    }
  },
  async eval({ js, timeout_ms }) {
    const id = nextCommand++;
    const answer = new Promise((resolve) => answers.set(id, resolve));
    toPage({ id, js });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the page did not answer within ${timeout_ms ?? 30000} ms`)), timeout_ms ?? 30000);
    });
    try {
      const result = await Promise.race([answer, timeout]);
      if (!result.ok) throw new Error(result.error);
      return result.value;
    } finally {
      clearTimeout(timer);
      answers.delete(id);
    }
  },
  async rotate() {
    return push.rotate();
  },
  async close() {
    setImmediate(() => finish(0));
    return true;
  },
};

send({ ready: true, push_service: push.origin, pages: pagesOrigin });

const input = createInterface({ input: process.stdin });
input.on("line", async (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    log(`firefox driver: not JSON: ${line}`);
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
input.on("close", () => finish(0));
