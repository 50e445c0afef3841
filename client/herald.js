// herald.js — the browser client for Herald. One ES module, no build step,
// no dependencies. Served by Herald at /herald.js; documented in
// docs/client.md.
//
//   import { Herald } from "/herald.js";
//   const herald = new Herald("http://127.0.0.1:8080", {
//     transports: ["ws", "sse", "poll"],
//     storage: sessionStorage, // or localStorage, or your own; off by default
//     token: async () => (await fetch("/herald-token")).text(), // or a string, or none
//   });
//   const sub = herald.subscribe("news", { onMessage(msg) { console.log(msg.data); } });
//   sub.cursor;        // the position after the last message delivered
//   herald.transport;  // "ws" | "sse" | "poll" | null while not connected
//   sub.close(); herald.close();
//   await herald.push.subscribe(["news"]); // Web Push: notifications, no page open
//
// Every subscription of a Herald shares one connection, on every
// transport: one WebSocket, or one SSE stream, or one long-poll loop (the
// `sub=` form of /sse and /poll), each subscription with its own cursor.
// With `storage` (sessionStorage, localStorage or a custom store) each
// cursor is kept for the next page, so a reload continues exactly.
//
// Transports are tried in the order of `transports`: WebSocket first; when
// it cannot connect (a proxy that drops Upgrade, a refused /ws) SSE, then
// long polling. Reconnects use exponential backoff with full jitter and
// resume every subscription from its own cursor, across reconnects and
// transport switches. A message is never handed to the application twice.
// Back online, or back from the back/forward cache, it reconnects at once;
// a hidden tab keeps its connection but spreads its reconnects out.
//
// A `token` function is called before the first connection, again ahead of
// the token's `exp`, and whenever Herald refuses or expires the token; the
// fresh token is sent in place on a WebSocket (an `auth` message) and
// reopens SSE streams and polls from their cursors. The token travels in
// an `auth` message or an `Authorization` header, never in a URL, and is
// never logged.
//
// `herald.push` (at the end of this file) subscribes the browser through
// its push service, with Herald's service worker, herald-sw.js.

const ALL_TRANSPORTS = ["ws", "sse", "poll"];
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30000;
// Failed connection attempts on a transport before moving to the next one;
// a transport that has worked on this page is given more.
const ATTEMPTS_BEFORE_FALLBACK = 2;
const ATTEMPTS_BEFORE_FALLBACK_PROVEN = 5;
// A connection that lived this long resets the backoff.
const STABLE_MS = 5000;
// A hidden tab waits at least this long (and up to twice as long) before
// reconnecting, so that background tabs do not come back all at once.
const HIDDEN_RETRY_MIN_MS = 5000;
// Herald's SSE stream opens with a `subscribed` event at once; if it does
// not arrive, something (a buffering proxy) is in the way.
const SSE_OPEN_TIMEOUT_MS = 10000;
const DEFAULT_POLL_WAIT_S = 25;
// A token is renewed after this fraction of the time it has left when it
// arrives (by its `exp`), give or take the jitter, so that clients that
// got their tokens together do not all renew at once; never sooner than
// MIN_RENEW_MS after the last one, however short-lived the tokens are.
const RENEW_AT = 0.8;
const RENEW_JITTER = 0.05;
const MIN_RENEW_MS = 1000;
// A token function that has not settled by then has failed.
const TOKEN_TIMEOUT_MS = 30000;
// The WebSocket close code of a connection whose token expired.
const CLOSE_TOKEN_EXPIRED = 4001;
// The WebSocket close code of a connection whose token's subject the
// operator disconnected (POST /admin/disconnect): never reconnect with
// that token.
const CLOSE_TOKEN_REVOKED = 4003;

// Error codes after which retrying the same subscription can succeed.
const RETRYABLE = new Set([
  "not_ready",
  "replay_busy",
  "replay_failed",
  "kafka_unavailable",
  "too_many_connections",
  "too_many_long_polls",
  "slow_consumer",
]);

// Refusals of the token itself: a fresh one from the token function may
// be accepted.
const TOKEN_REFUSED = new Set(["invalid_token", "token_expired", "token_revoked"]);

// Whether the page is hidden (a background tab), or the browser says it
// is offline; false outside a browser.
function hidden() {
  return typeof document !== "undefined" && document.visibilityState === "hidden";
}

function offline() {
  return typeof navigator !== "undefined" && navigator.onLine === false;
}

// Adds (or removes) the page-lifecycle handlers: `online`, `offline` and
// `pageshow` on the window, `resume` and `visibilitychange` on the
// document.
function listen(handlers, on) {
  const method = on ? "addEventListener" : "removeEventListener";
  for (const [event, handler] of Object.entries(handlers)) {
    const target = event === "resume" || event === "visibilitychange" ? globalThis.document : globalThis;
    if (target && typeof target[method] === "function") target[method](event, handler);
  }
}

function backoff(attempt) {
  const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.random() * cap; // full jitter
}

class Subscription {
  constructor(herald, channel, options) {
    this._herald = herald;
    this.channel = channel;
    // A cursor given wins over one stored by an earlier page (`storage`).
    this.cursor = options.cursor || herald._storedCursor(channel) || null;
    this._since = options.since ?? null;
    this._onMessage = options.onMessage || (() => {});
    this._onGap = options.onGap || (() => {});
    this._onError = options.onError || ((e) => console.warn("herald:", e.code, e.message));
    this._last = new Map(); // "topic/partition" -> last offset handed over
    this.closed = false;
  }

  // Ends the subscription; a cursor kept in `storage` is forgotten (a
  // page that reloads does not close its subscriptions, so it keeps them).
  close() {
    if (this.closed) return;
    this.closed = true;
    this._herald._forgetCursor(this.channel);
    this._herald._remove(this);
  }

  _setCursor(cursor) {
    if (!cursor || this.closed || cursor === this.cursor) return;
    this.cursor = cursor;
    this._herald._storeCursor(this.channel, cursor);
  }

  // This subscription in Herald's `sub=` form (SSE and polling): the
  // channel, then after an `@` where it starts, an `@` always, so that a
  // channel holding one is read as it is.
  _subParam() {
    if (this.cursor) return `${this.channel}@${this.cursor}`;
    if (this._since != null) return `${this.channel}@since:${this._since}`;
    return `${this.channel}@`;
  }

  // Where to (re)start: the cursor once there is one, else `since`, else
  // the live end.
  _startParams() {
    if (this.cursor) return { cursor: this.cursor };
    if (this._since != null) return { since: String(this._since) };
    return {};
  }

  _deliver(msg) {
    if (this.closed) return;
    const key = `${msg.topic}/${msg.partition}`;
    const last = this._last.get(key);
    if (last !== undefined && msg.offset <= last) return; // never twice
    this._last.set(key, msg.offset);
    this._setCursor(msg.cursor);
    call(this._onMessage, msg);
  }

  _gap(gap) {
    if (this.closed) return;
    this._setCursor(gap.cursor);
    // A reset partition's offsets started over (its topic was deleted and
    // created again): the new, lower offsets are not repeats.
    for (const p of gap.partitions || []) if (p.reset) this._last.delete(`${p.topic}/${p.partition}`);
    call(this._onGap, gap);
  }

  _started(cursor) {
    if (!this.cursor) this._setCursor(cursor);
  }

  // A refusal that retrying cannot fix: tell the application and end.
  // The cursor is never dropped here: `err.cursor` (and `this.cursor`) is
  // the position the subscription had, for the application to keep, retry
  // later or give up explicitly (subscribing again without it).
  _fail(err) {
    if (this.closed) return;
    call(this._onError, { ...err, fatal: true, cursor: this.cursor });
    // Closed, but a stored cursor stays: the position is the application's.
    if (this.closed) return;
    this.closed = true;
    this._herald._remove(this);
  }

  // Something went wrong but herald.js retries by itself.
  _warn(err) {
    if (!this.closed) call(this._onError, { ...err, fatal: false });
  }
}

// The claims of a JWT, read without verifying it (Herald does that), or
// null when it is not one.
function jwtClaims(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

// How long a token just received has left, in ms, by its `exp`; null
// without one, or when it looks expired already (Herald will say). With an
// `iat` as well, the token's own lifetime wins over this clock when the
// clock is plainly off: behind (more time left than the token ever had) or
// ahead (expired on arrival).
function tokenTimeLeft(token, now) {
  const claims = jwtClaims(token);
  if (!claims || typeof claims.exp !== "number") return null;
  let left = claims.exp * 1000 - now;
  if (typeof claims.iat === "number" && claims.exp > claims.iat) {
    const lifetime = (claims.exp - claims.iat) * 1000;
    if (left > lifetime || left <= 0) left = lifetime;
  }
  return left > 0 ? left : null;
}

function call(fn, arg) {
  try {
    fn(arg);
  } catch (e) {
    console.error("herald: callback threw", e);
  }
}

export class Herald {
  constructor(url, options = {}) {
    const base = url || (typeof location !== "undefined" ? location.origin : "");
    this.url = String(base).replace(/\/+$/, "");
    const token = options.token ?? null;
    if (token !== null && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("herald: options.token must be a string, a function returning one, or null");
    }
    // A function is asked for tokens; a string is used as it is until
    // Herald refuses it.
    this._tokenSource = typeof token === "function" ? token : null;
    this._token = typeof token === "string" && token ? token : null;
    this._tokenStale = this._tokenSource !== null; // ask before connecting
    this._renewAt = Infinity; // when the current token is due for renewal
    this._renewTimer = null;
    this._fetching = null; // the token function's answer being awaited
    this._tokenFailures = 0; // token refusals and failures since one last worked
    this.transports = (options.transports || ALL_TRANSPORTS).filter((t) => ALL_TRANSPORTS.includes(t));
    if (this.transports.length === 0) throw new Error("herald: no usable transport in options.transports");
    this.pollWait = options.pollWait ?? DEFAULT_POLL_WAIT_S;
    const storage = options.storage ?? null;
    if (storage !== null && !["getItem", "setItem", "removeItem"].every((m) => typeof storage[m] === "function")) {
      throw new TypeError("herald: options.storage must be sessionStorage, localStorage or an object with getItem, setItem and removeItem");
    }
    // Where each subscription's cursor is kept for the next page: null, off.
    this._storage = storage;
    this.transport = null;
    this._subs = new Map(); // channel -> Subscription
    this._index = 0; // position in this.transports
    this._failures = 0; // consecutive failed attempts on the current transport
    this._attempt = 0; // consecutive reconnects, for the backoff
    this._proven = new Set(); // transports that have connected
    this._conn = null;
    this._timer = null;
    this._retryAt = 0; // when a visible tab would reconnect
    this._closed = false;
    // Web Push: subscriptions held by the browser's push service, which
    // reach a service worker with no page open.
    this.push = new HeraldPush(this);
    // The page's lifecycle (nothing of it at import: herald.js loads
    // outside browsers too). Back online, or back from the back/forward
    // cache or a frozen state: reconnect at once, not after a backoff.
    // Offline: the connection is dropped (it cannot work) and no attempt
    // counts toward falling back to another transport.
    this._lifecycle = {
      online: () => this._reconnectNow(),
      offline: () => {
        if (this._conn) this._lost(this._conn, 0);
      },
      pageshow: (e) => {
        if (e.persisted) this._reconnectNow();
      },
      resume: () => this._reconnectNow(),
      visibilitychange: () => {
        // Visible again while waiting to retry: retry when a visible tab
        // would have (at once, if that time has passed).
        if (!hidden() && !this._conn && this._timer) this._schedule(Math.max(0, this._retryAt - Date.now()));
      },
    };
    listen(this._lifecycle, true);
  }

  subscribe(channel, options = {}) {
    if (this._closed) throw new Error("herald: closed");
    channel = String(channel);
    if (this._subs.has(channel)) throw new Error(`herald: already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this._conn) this._conn.add(sub);
    else if (!this._timer) this._schedule(0);
    return sub;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._renewTimer);
    this._renewTimer = null;
    for (const sub of this._subs.values()) sub.closed = true;
    this._subs.clear();
    this._teardown();
    listen(this._lifecycle, false);
  }

  // Connects again now, with nothing to wait out: the network or the page
  // is back, and what failed before says nothing about now.
  _reconnectNow() {
    if (this._closed || this._subs.size === 0) return;
    this._attempt = 0;
    this._failures = 0;
    const conn = this._conn;
    this._conn = null;
    this.transport = null;
    if (conn) conn.close();
    this._schedule(0);
  }

  // Reconnects after `delay`, or in a hidden tab after at least
  // HIDDEN_RETRY_MIN_MS and spread over as much again, so that a server
  // restart does not bring back every background tab at once (the tab
  // keeps its connection while it works: notifications are the point).
  _retry(delay) {
    this._schedule(delay, Math.max(delay, HIDDEN_RETRY_MIN_MS * (1 + Math.random())));
  }

  _storageKey(channel) {
    return `herald:${this.url}:${channel}`;
  }

  _storedCursor(channel) {
    if (!this._storage) return null;
    try {
      return this._storage.getItem(this._storageKey(channel)) || null;
    } catch {
      return null;
    }
  }

  _storeCursor(channel, cursor) {
    if (!this._storage) return;
    try {
      this._storage.setItem(this._storageKey(channel), cursor);
    } catch (e) {
      console.warn("herald: cannot store the cursor:", e && e.message);
    }
  }

  _forgetCursor(channel) {
    if (!this._storage) return;
    try {
      this._storage.removeItem(this._storageKey(channel));
    } catch {}
  }

  _remove(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (this._conn) this._conn.remove(sub);
    if (this._subs.size === 0) {
      clearTimeout(this._timer);
      this._timer = null;
      this._teardown();
    }
  }

  _teardown() {
    const conn = this._conn;
    this._conn = null;
    this.transport = null;
    if (conn) conn.close();
  }

  // Connects after `delay`, or `hiddenDelay` while the tab is hidden.
  _schedule(delay, hiddenDelay = delay) {
    clearTimeout(this._timer);
    this._retryAt = Date.now() + delay;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._connect();
    }, hidden() ? hiddenDelay : delay);
  }

  _connect() {
    if (this._closed || this._subs.size === 0 || this._conn) return;
    if (this._tokenDue()) {
      this._fetchToken().then((ok) => {
        if (ok) this._connect();
        else if (!this._closed) this._schedule(backoff(Math.max(0, this._tokenFailures - 1)));
      });
      return;
    }
    const name = this.transports[this._index];
    const open = { ws: openWs, sse: openSse, poll: openPoll }[name];
    const conn = { name, openedAt: 0, renew: () => this._reopen(conn) };
    const hooks = {
      current: () => this._conn === conn,
      opened: () => {
        if (this._conn !== conn || conn.openedAt) return;
        conn.openedAt = Date.now();
        this.transport = name;
        this._proven.add(name);
        this._failures = 0;
      },
      lost: (retryAfterMs = 0) => {
        if (this._conn !== conn) return;
        this._lost(conn, retryAfterMs);
      },
      // Herald accepted the token (or needed none) for a subscription.
      authorized: () => {
        if (this._conn === conn) this._tokenFailures = 0;
      },
      // Herald refused or expired `used`, the token the connection had:
      // with a token function, reconnect with a fresh one.
      tokenRefused: (err, used) => {
        if (this._conn === conn) this._tokenRefused(conn, err, used);
      },
      // A WebSocket kept its token but refused the fresh one.
      renewRefused: (err) => {
        if (this._conn === conn) this._renewRefused(err);
      },
    };
    this._conn = conn;
    Object.assign(conn, open(this, hooks));
  }

  // The connection ended or never came up. Retry with backoff; after
  // repeated failures to connect at all, move on to the next transport
  // (and round again, backing off, when none connects).
  _lost(conn, retryAfterMs) {
    this._conn = null;
    this.transport = null;
    conn.close();
    if (this._closed || this._subs.size === 0) return;
    if (conn.openedAt) {
      if (Date.now() - conn.openedAt >= STABLE_MS) this._attempt = 0;
      this._retry(Math.max(retryAfterMs, backoff(this._attempt++)));
      return;
    }
    if (offline()) {
      // Nothing can connect: retry (`online` will retry at once), but do
      // not take it against the transport.
      this._retry(backoff(this._attempt++));
      return;
    }
    this._failures += 1;
    const limit = this._proven.has(conn.name) ? ATTEMPTS_BEFORE_FALLBACK_PROVEN : ATTEMPTS_BEFORE_FALLBACK;
    if (this._failures >= limit && this.transports.length > 1) {
      this._index = (this._index + 1) % this.transports.length;
      this._failures = 0;
      // Straight to the next transport, unless every one has failed.
      if (this._index === 0) this._retry(backoff(this._attempt++));
      else this._schedule(0);
      return;
    }
    this._retry(Math.max(retryAfterMs, backoff(this._attempt++)));
  }

  // The token went stale on a live connection (expired, refused): close
  // it and connect again, the token function asked first. At once the
  // first time (a token expiring is routine), then with backoff and
  // reported to every subscription: the fresh tokens are refused too.
  _tokenRefused(conn, err, used) {
    this._conn = null;
    this.transport = null;
    conn.close();
    if (this._closed || this._subs.size === 0) return;
    // Revoked, and no function to ask for another: reconnecting with the
    // same token would undo the operator's disconnect.
    if (err.code === "token_revoked" && !this._tokenSource) {
      for (const sub of [...this._subs.values()]) sub._fail(err);
      return;
    }
    if (used !== this._token) {
      this._schedule(0); // a fresher token has arrived meanwhile
      return;
    }
    this._tokenStale = true;
    this._tokenFailures += 1;
    if (this._tokenFailures > 1) this._warnAll(err);
    this._schedule(this._tokenFailures > 1 ? backoff(this._tokenFailures - 2) : 0);
  }

  // A WebSocket refused a fresh token in place; the one in force goes on
  // until it expires. Ask again, backing off.
  _renewRefused(err) {
    this._tokenStale = true;
    this._tokenFailures += 1;
    this._warnAll(err);
    this._retryRenew();
  }

  // SSE and polling carry the token in each request: reopen with the
  // fresh one, every subscription from its cursor. What arrives meanwhile
  // is read back from the cursor; the streams being replaced are ended
  // first, so nothing comes twice.
  _reopen(conn) {
    if (this._conn !== conn) return;
    this._conn = null;
    this.transport = null;
    conn.close();
    this._connect();
  }

  _warnAll(err) {
    for (const sub of this._subs.values()) sub._warn(err);
  }

  // Whether the token function must be asked before connecting.
  _tokenDue() {
    return this._tokenSource !== null && (this._tokenStale || Date.now() >= this._renewAt);
  }

  // Asks the token function (one call at a time, shared); resolves true
  // once a token (or null, none) is in place, false when it failed, after
  // reporting that to every subscription.
  _fetchToken() {
    if (this._fetching) return this._fetching;
    this._fetching = (async () => {
      let timer;
      try {
        const timeout = new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${TOKEN_TIMEOUT_MS} ms`)), TOKEN_TIMEOUT_MS);
        });
        const source = this._tokenSource; // called as a plain function
        const token = await Promise.race([Promise.resolve().then(() => source()), timeout]);
        if (token != null && typeof token !== "string") {
          throw new TypeError(`it returned a ${typeof token}, not a string or null`);
        }
        if (this._closed) return false;
        this._setToken(token || null);
        return true;
      } catch (e) {
        if (this._closed) return false;
        this._tokenFailures += 1;
        this._tokenError = `the token function failed: ${(e && e.message) || e}`;
        this._warnAll({ code: "token_unavailable", message: this._tokenError });
        return false;
      } finally {
        clearTimeout(timer);
        this._fetching = null;
      }
    })();
    return this._fetching;
  }

  // Puts a fresh token in place and schedules its renewal from its `exp`.
  _setToken(token) {
    this._token = token;
    this._tokenStale = false;
    this.push._tokenChanged(token);
    clearTimeout(this._renewTimer);
    this._renewTimer = null;
    this._renewAt = Infinity;
    const now = Date.now();
    const left = token ? tokenTimeLeft(token, now) : null;
    if (left == null) return; // no exp: renewed only when Herald refuses it
    const fraction = RENEW_AT + RENEW_JITTER * (2 * Math.random() - 1);
    const delay = Math.max(MIN_RENEW_MS, left * fraction);
    this._renewAt = now + delay;
    this._renewTimer = setTimeout(() => this._renew(), delay);
  }

  // The current token is due: fetch a fresh one and hand it to the
  // connection (not connected: the next connection asks first).
  _renew() {
    this._renewTimer = null;
    if (this._closed || !this._conn) return;
    this._fetchToken().then((ok) => {
      if (this._closed) return;
      if (!ok) this._retryRenew();
      else if (this._conn) this._conn.renew();
    });
  }

  _retryRenew() {
    clearTimeout(this._renewTimer);
    this._renewTimer = setTimeout(() => this._renew(), backoff(Math.max(0, this._tokenFailures - 1)));
  }
}

// A request's headers with `token` as `Authorization: Bearer` (SSE and
// polls are read with fetch, which can set it: the token stays out of
// URLs, and so out of access logs and the browser's history).
function withToken(token, headers = {}) {
  if (token) headers.authorization = `Bearer ${token}`;
  return headers;
}

// An HTTP refusal's `{"error":{"code","message"[,"channel"]}}`, with the status.
async function httpError(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {}
  const err = {
    status: response.status,
    code: (error && error.code) || `http_${response.status}`,
    message: (error && error.message) || response.statusText || `HTTP ${response.status}`,
  };
  // Which of a request's subscriptions the refusal is about (`sub=`).
  if (error && typeof error.channel === "string") err.channel = error.channel;
  return err;
}

// Whether an HTTP error is worth retrying, and after how long at least.
function retryable(response) {
  return response.status >= 500 || response.status === 429 || response.status === 408;
}

function retryAfterMs(response) {
  const s = Number(response.headers.get("retry-after"));
  return Number.isFinite(s) && s > 0 ? s * 1000 : 0;
}

// ---- WebSocket: one socket, one subscription per channel ----------------
//
// The token goes in an `auth` message, the socket's first, not in the URL:
// Herald's refusal of a token in the URL would come before the upgrade,
// and a browser shows a refused upgrade only as a socket that never
// opened (the transport would look broken). As a message, a refusal is an
// `error` herald.js can read. A fresh token is sent the same way, in place.

function openWs(herald, hooks) {
  const url = herald.url.replace(/^http/, "ws") + "/ws";
  // channel -> true once the server said `subscribed` on this socket:
  // frames for a channel before that belong to an earlier subscription.
  const live = new Map();
  const retries = new Map(); // channel -> timer for a resubscribe
  let attempt = 0;
  // Tokens sent in `auth` messages whose answer has not come yet, in
  // order (Herald answers them in order); the one Herald last accepted;
  // whether it has accepted one on this socket; whether it said the token
  // expired (close 4001 follows).
  const sent = [];
  let inForce = null;
  let accepted = false;
  let expired = false;
  let ws;
  try {
    ws = new WebSocket(url);
  } catch (e) {
    setTimeout(() => hooks.lost(), 0);
    return { add() {}, remove() {}, close() {} };
  }
  const send = (obj) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  };
  const subscribe = (sub) => {
    live.set(sub.channel, false);
    send({ type: "subscribe", channel: sub.channel, ...sub._startParams() });
  };
  // Before the socket opens there is nothing to do: it sends the current
  // token when it does.
  const sendAuth = () => {
    const token = herald._token;
    if (token == null || ws.readyState !== WebSocket.OPEN) return;
    sent.push(token);
    send({ type: "auth", token });
  };
  const detach = () => {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  };
  // The socket's token is no good: reconnect with a fresh one.
  const tokenRefused = (err, used) => {
    detach();
    hooks.tokenRefused(err, used);
  };
  ws.onopen = () => {
    hooks.opened();
    // Herald handles a socket's messages in order: the subscriptions are
    // decided with this token.
    sendAuth();
    for (const sub of herald._subs.values()) subscribe(sub);
  };
  ws.onmessage = (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      return;
    }
    const sub = msg.channel != null ? herald._subs.get(msg.channel) : undefined;
    const { type, ...body } = msg;
    switch (type) {
      case "authenticated":
        inForce = sent.length ? sent.shift() : inForce;
        accepted = true;
        hooks.authorized();
        break;
      case "subscribed":
        if (sub && live.has(sub.channel)) {
          live.set(sub.channel, true);
          hooks.authorized();
          sub._started(msg.cursor);
        }
        break;
      case "message":
        if (sub && live.get(sub.channel)) sub._deliver(body);
        break;
      case "gap":
        if (sub && live.get(sub.channel)) sub._gap(body);
        break;
      case "error": {
        const err = { code: msg.code, message: msg.message };
        if (msg.channel == null && msg.code === "token_expired" && accepted) {
          // Either the token in force expired (close 4001 follows, and a
          // fresh token sent just before is never read) or the fresh one
          // came expired (the one in force goes on, until it expires and
          // that close comes). The same message either way: await the
          // close, which reconnects with the fresh token, or a fresher one
          // when it is refused there.
          sent.shift();
          expired = true;
          break;
        }
        if (msg.channel == null && sent.length && (TOKEN_REFUSED.has(msg.code) || msg.code === "auth_unavailable")) {
          // The answer to an `auth` message.
          const used = sent.shift();
          if (accepted) {
            hooks.renewRefused(err); // the token in force goes on
          } else if (msg.code === "auth_unavailable") {
            herald._warnAll(err); // Herald cannot check tokens yet: retry later
            end();
          } else if (herald._tokenSource) {
            tokenRefused(err, used);
          }
          // A fixed token refused: each subscription that needs one is
          // refused on its own, for good; public ones go on.
          break;
        }
        if (!sub) {
          for (const s of herald._subs.values()) if (msg.channel == null) s._warn(err);
          break;
        }
        if (msg.code === "already_subscribed" || msg.code === "not_subscribed") break;
        if (TOKEN_REFUSED.has(msg.code) && herald._tokenSource) {
          tokenRefused(err, inForce);
          break;
        }
        live.delete(sub.channel);
        if (RETRYABLE.has(msg.code)) {
          sub._warn(err);
          clearTimeout(retries.get(sub.channel));
          retries.set(
            sub.channel,
            setTimeout(() => {
              retries.delete(sub.channel);
              if (herald._subs.get(sub.channel) === sub && ws.readyState === WebSocket.OPEN) subscribe(sub);
            }, backoff(attempt++)),
          );
        } else {
          sub._fail(err);
        }
        break;
      }
    }
  };
  function end() {
    detach();
    hooks.lost();
  }
  ws.onerror = end;
  ws.onclose = (event) => {
    if (event.code === CLOSE_TOKEN_REVOKED) {
      tokenRefused({ code: "token_revoked", message: "the token was revoked and the WebSocket was closed (4003)" }, inForce);
    } else if ((event.code === CLOSE_TOKEN_EXPIRED || expired) && herald._tokenSource) {
      tokenRefused({ code: "token_expired", message: "the token expired and the WebSocket was closed (4001)" }, inForce);
    } else {
      end();
    }
  };
  return {
    add: subscribe,
    renew: sendAuth,
    remove: (sub) => {
      clearTimeout(retries.get(sub.channel));
      retries.delete(sub.channel);
      if (live.delete(sub.channel)) send({ type: "unsubscribe", channel: sub.channel });
    },
    close: () => {
      for (const t of retries.values()) clearTimeout(t);
      retries.clear();
      detach();
      try {
        ws.close(1000);
      } catch {}
    },
  };
}

// SSE and polling hold one request for every subscription of the Herald
// (Herald's `sub=` form: one subscription per channel, each from its own
// cursor): a browser allows six connections per origin on HTTP/1.1, and a
// page may have more subscriptions than that. Adding or removing a
// subscription ends the request and opens the next one with every
// subscription's cursor: what the old one had not delivered yet is read
// back from the cursors, and the old one's events are ignored once it is
// replaced, so nothing is lost or comes twice. Changes made together (in
// one task) reopen once.
//
// `run(subs, controller, loops)` makes the request for `subs` (channel ->
// Subscription, a snapshot: a subscription added later is not the
// request's); `loops` has `end(retryAfter)`, `refused(subs, response,
// token)` for an HTTP error to a request that carried `token`,
// `tokenRefused(err, token)`, and `live(controller)`.
function sharedRequest(herald, hooks, run) {
  let controller = null;
  let ended = false;
  let reopening = false;
  const start = () => {
    if (ended) return;
    if (controller) controller.abort();
    controller = new AbortController();
    const subs = new Map(herald._subs);
    if (subs.size > 0) run(subs, controller, loops);
  };
  const stop = () => {
    ended = true;
    if (controller) controller.abort();
    controller = null;
  };
  const loops = {
    end(retryAfter) {
      if (ended) return;
      stop();
      hooks.lost(retryAfter);
    },
    // Herald refused the request (so the transport itself works). A
    // refusal about one subscription (its `channel`) that retrying cannot
    // fix ends that one, and the others go on in a new request; one about
    // the whole request ends them all. Any other is retried after
    // Retry-After or backoff.
    async refused(subs, response, token) {
      const err = await httpError(response);
      if (ended) return;
      hooks.opened();
      if (response.status === 401 && TOKEN_REFUSED.has(err.code) && herald._tokenSource) {
        loops.tokenRefused(err, token);
        return;
      }
      const one = err.channel != null ? subs.get(err.channel) : undefined;
      const hit = one ? [one] : [...subs.values()];
      if (!retryable(response)) {
        for (const sub of hit) sub._fail(err); // each one's close reopens with the rest
        return;
      }
      for (const sub of hit) sub._warn(err);
      loops.end(retryAfterMs(response));
    },
    // The token is stale: the request ends, to be reopened with a fresh one.
    tokenRefused(err, token) {
      if (ended) return;
      stop();
      hooks.tokenRefused(err, token);
    },
    live(c) {
      return !ended && controller === c;
    },
  };
  const changed = () => {
    if (reopening || ended) return;
    reopening = true;
    queueMicrotask(() => {
      reopening = false;
      start();
    });
  };
  start();
  return { add: changed, remove: changed, close: stop };
}

// The delivery of a request's event to `sub`, if it is still the one the
// Herald holds for its channel.
function current(herald, sub) {
  return sub && !sub.closed && herald._subs.get(sub.channel) === sub ? sub : undefined;
}

// ---- SSE: one stream for every subscription ------------------------------
//
// Read with fetch rather than EventSource, so a refusal's status and JSON
// error are visible (EventSource only reports "error") and reconnects stay
// under herald.js's own backoff and transport fallback.
function openSse(herald, hooks) {
  return sharedRequest(herald, hooks, async (subs, controller, loops) => {
    const q = new URLSearchParams();
    for (const sub of subs.values()) q.append("sub", sub._subParam());
    const url = `${herald.url}/sse?${q}`;
    const token = herald._token;
    let opened = false;
    const timer = setTimeout(() => {
      if (!opened && loops.live(controller)) loops.end(); // no `subscribed` in time: a proxy is buffering
    }, SSE_OPEN_TIMEOUT_MS);
    try {
      const response = await fetch(url, {
        signal: controller.signal,
        headers: withToken(token, { accept: "text/event-stream" }),
        cache: "no-store",
      });
      if (!response.ok) {
        clearTimeout(timer);
        if (loops.live(controller)) await loops.refused(subs, response, token);
        return;
      }
      const reason = await readEvents(response.body, (ev) => {
        // Replaced (a subscription added or removed, a fresh token, a
        // reconnect): its successor reads on from the cursors.
        if (!loops.live(controller)) return "aborted";
        if (ev.event === "subscribed") {
          opened = true;
          clearTimeout(timer);
          hooks.opened();
          hooks.authorized();
          const cursors = JSON.parse(ev.data).cursors || {};
          for (const [channel, cursor] of Object.entries(cursors)) current(herald, subs.get(channel))?._started(cursor);
        } else if (ev.event === "message") {
          const msg = JSON.parse(ev.data);
          current(herald, subs.get(msg.channel))?._deliver(msg);
        } else if (ev.event === "gap") {
          const gap = JSON.parse(ev.data);
          current(herald, subs.get(gap.channel))?._gap(gap);
        } else if (ev.event === "reconnect") {
          let why = {};
          try {
            why = JSON.parse(ev.data);
          } catch {}
          if (why.reason === "replay_failed") {
            for (const sub of subs.values()) current(herald, sub)?._warn({ code: why.reason, message: why.message || why.reason });
          }
          if (why.reason === "token_expired" || why.reason === "token_revoked") return why.reason;
          return "reconnect";
        }
      });
      clearTimeout(timer);
      if (!loops.live(controller) || reason === "aborted") return;
      if (reason === "token_revoked") {
        loops.tokenRefused({ code: "token_revoked", message: "the token was revoked and Herald ended the stream" }, token);
      } else if (reason === "token_expired" && herald._tokenSource) {
        loops.tokenRefused({ code: "token_expired", message: "the token expired and Herald ended the stream" }, token);
      } else {
        loops.end();
      }
    } catch (e) {
      clearTimeout(timer);
      if (loops.live(controller)) loops.end();
    }
  });
}

// Parses a text/event-stream body, calling `onEvent({event, data, id})`
// per event; stops early when it returns a value. Resolves when the
// stream ends.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let event = "";
  let data = [];
  let id = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return "eof";
      buf += value;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length || event) {
            const stop = onEvent({ event: event || "message", data: data.join("\n"), id });
            if (stop) return stop;
          }
          event = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id") id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// ---- Long polling: one loop for every subscription -----------------------

function openPoll(herald, hooks) {
  return sharedRequest(herald, hooks, async (subs, controller, loops) => {
    while (loops.live(controller)) {
      const q = new URLSearchParams();
      let all = true;
      for (const sub of subs.values()) {
        q.append("sub", sub._subParam());
        if (!sub.cursor) all = false;
      }
      // A poll with a subscription that has no cursor yet returns at once,
      // with the live end's cursor for it.
      if (all) q.set("wait", String(herald.pollWait));
      const token = herald._token;
      let response;
      let body;
      try {
        response = await fetch(`${herald.url}/poll?${q}`, {
          signal: controller.signal,
          headers: withToken(token),
          cache: "no-store",
        });
        if (!response.ok) {
          if (loops.live(controller)) await loops.refused(subs, response, token);
          return;
        }
        body = await response.json();
      } catch (e) {
        if (loops.live(controller)) loops.end();
        return;
      }
      // Replaced meanwhile: its successor polls again from the cursors.
      if (!loops.live(controller)) return;
      hooks.opened();
      hooks.authorized();
      for (const gap of [].concat(body.gap || [])) current(herald, subs.get(gap.channel))?._gap(gap);
      for (const msg of body.messages || []) current(herald, subs.get(msg.channel))?._deliver(msg);
      for (const [channel, cursor] of Object.entries(body.cursors || {})) current(herald, subs.get(channel))?._setCursor(cursor);
    }
  });
}

// ---- Web Push: herald.push ----------------------------------------------
//
// A push subscription is the browser's, made with Herald's VAPID key and
// registered with Herald for some channels; Herald sends each of their
// records through the browser's push service to the service worker
// (herald-sw.js), which shows it as a notification, with no page open.
// herald.js keeps what the service worker needs in IndexedDB: Herald's
// URL, the channels, the key, the endpoint and the token (see herald-sw.js).

// Where, per service worker scope; herald-sw.js reads the same.
const PUSH_DB = "herald-push";
const PUSH_STORE = "subscriptions";
const SW_PATH = "/herald-sw.js";
// Firefox sometimes never answers the first pushManager call made while
// its push service is still starting (the page's first visit): such a
// call is made again after this long, up to PUSH_CALL_ATTEMPTS times.
const PUSH_CALL_TIMEOUT_MS = 3000;
const PUSH_CALL_ATTEMPTS = 5;
const NO_ANSWER = Symbol("no answer");

// A Web Push failure: `code` is Herald's error code for a refusal
// (`forbidden_channel`, `invalid_token`, `endpoint_not_allowed`, …, with
// `status`), or one of herald.js's own: `push_unsupported`,
// `permission_denied`, `permission_dismissed`, `push_not_enabled`,
// `service_worker_origin`, `service_worker_failed`, `push_subscribe_failed`,
// `token_unavailable`, `network_error`.
export class HeraldPushError extends Error {
  constructor(code, message, status = null) {
    super(message);
    this.name = "HeraldPushError";
    this.code = code;
    this.status = status;
  }
}

class HeraldPush {
  constructor(herald) {
    this._herald = herald;
    // The scope whose stored token follows herald.js's fresh tokens: set
    // once this page subscribed or found a subscription.
    this._scope = null;
  }

  // Whether this browser can take push subscriptions at all.
  get supported() {
    return (
      typeof navigator !== "undefined" &&
      "serviceWorker" in navigator &&
      typeof PushManager !== "undefined" &&
      typeof Notification !== "undefined"
    );
  }

  // Subscribes this browser to `channels` (an array, or one channel): asks
  // for permission to notify, registers the service worker, subscribes with
  // Herald's key (reusing a subscription made with it) and registers the
  // subscription with Herald, whose answer replaces the channels of an
  // earlier one. Resolves {id, endpoint, channels, subscription}.
  async subscribe(channels, options = {}) {
    channels = [].concat(channels).map(String);
    if (channels.length === 0 || channels.some((c) => c === "")) {
      throw new TypeError("herald.push.subscribe: give one or more channel names");
    }
    this._checkSupport();
    await this._permission();
    const registration = await this._register(options);
    const keyText = await this.vapidKey();
    const key = fromBase64url(keyText);
    let subscription = await currentSubscription(registration);
    const previous = await pushState("readonly", (s) => s.get(registration.scope)).catch(() => null);
    if (subscription && !sameKey(subscription, key, previous, keyText)) {
      // Made with another key (Herald's changed, or another server's): the
      // push service would refuse Herald's messages to it.
      await this._delete(subscription.endpoint).catch(() => {});
      await subscription.unsubscribe().catch(() => {});
      subscription = null;
    }
    if (!subscription) {
      try {
        subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
      } catch (e) {
        throw new HeraldPushError("push_subscribe_failed", `the browser's push service refused: ${e && e.name}: ${e && e.message}`);
      }
    }
    const token = await this._token();
    const state = { url: this._herald.url, channels, key: keyText, endpoint: subscription.endpoint, token };
    // Stored first: a message may come before Herald's answer does.
    await this._save(registration.scope, state);
    let body;
    try {
      body = await this._request("POST", { subscription: subscription.toJSON(), channels }, token);
    } catch (e) {
      await this._save(registration.scope, previous);
      throw e;
    }
    await this._save(registration.scope, { ...state, id: body.id });
    this._scope = registration.scope;
    return { id: body.id, endpoint: subscription.endpoint, channels, subscription };
  }

  // Ends the subscription: Herald forgets it, then the browser does.
  // Resolves true, or false when there was none.
  async unsubscribe(options = {}) {
    if (!this.supported) return false;
    const registration = await this._existing(options);
    const subscription = registration && (await currentSubscription(registration));
    if (!subscription) {
      if (registration) await this._save(registration.scope, null);
      return false;
    }
    await this._delete(subscription.endpoint);
    await subscription.unsubscribe();
    await this._save(registration.scope, null);
    if (this._scope === registration.scope) this._scope = null;
    return true;
  }

  // This browser's subscription as herald.js registered it: {endpoint,
  // channels, id, subscription}, or null.
  async subscription(options = {}) {
    if (!this.supported) return null;
    const registration = await this._existing(options);
    const subscription = registration && (await currentSubscription(registration));
    if (!subscription) return null;
    const state = await pushState("readonly", (s) => s.get(registration.scope)).catch(() => null);
    if (!state || state.endpoint !== subscription.endpoint) return null;
    this._scope = registration.scope;
    return { endpoint: subscription.endpoint, channels: state.channels, id: state.id ?? null, subscription };
  }

  // Herald's VAPID public key, base64url (`push_not_enabled` without
  // `[push]`).
  async vapidKey() {
    const response = await this._fetch(`${this._herald.url}/push/vapid-public-key`, { cache: "no-store" });
    if (response.status === 404) {
      const err = await httpError(response);
      throw new HeraldPushError("push_not_enabled", `Herald has Web Push off: ${err.message}`, 404);
    }
    if (!response.ok) {
      const err = await httpError(response);
      throw new HeraldPushError(err.code, err.message, err.status);
    }
    return (await response.json()).key;
  }

  _checkSupport() {
    if (!this.supported) {
      throw new HeraldPushError("push_unsupported", "this browser has no service workers, Push API or notifications");
    }
  }

  async _permission() {
    if (Notification.permission === "granted") return;
    if (Notification.permission === "denied") {
      throw new HeraldPushError("permission_denied", "notifications are blocked for this site (the browser's site settings can allow them)");
    }
    const answer = await Notification.requestPermission();
    if (answer === "denied") throw new HeraldPushError("permission_denied", "the user blocked notifications");
    if (answer !== "granted") throw new HeraldPushError("permission_dismissed", "the user did not allow notifications");
  }

  // The service worker's script URL: `serviceWorker` as given, else
  // Herald's /herald-sw.js, which must then be on this page's origin.
  _scriptUrl(options) {
    const url = new URL(String(options.serviceWorker || SW_PATH), options.serviceWorker ? location.href : `${this._herald.url}/`);
    if (url.origin !== location.origin) {
      throw new HeraldPushError(
        "service_worker_origin",
        `a service worker must be on the page's origin, ${location.origin}, not ${url.origin}: host a script there ` +
          `that does importScripts("${this._herald.url}${SW_PATH}") and pass its URL as { serviceWorker }`,
      );
    }
    return url.href;
  }

  async _register(options) {
    if (isRegistration(options.serviceWorker)) return activated(options.serviceWorker);
    const url = this._scriptUrl(options);
    let registration;
    try {
      registration = await navigator.serviceWorker.register(url, options.scope ? { scope: options.scope } : undefined);
    } catch (e) {
      throw new HeraldPushError("service_worker_failed", `registering ${url} failed: ${e && e.name}: ${e && e.message}`);
    }
    return activated(registration);
  }

  // The registration of the service worker, without registering it.
  async _existing(options) {
    if (isRegistration(options.serviceWorker)) return options.serviceWorker;
    const url = this._scriptUrl(options);
    const registrations = await navigator.serviceWorker.getRegistrations();
    return (
      registrations.find((r) => [r.active, r.waiting, r.installing].some((w) => w && w.scriptURL === url)) || null
    );
  }

  async _save(scope, state) {
    try {
      await pushState("readwrite", (s) => (state ? s.put(state, scope) : s.delete(scope)));
    } catch (e) {
      // The subscription works without it, but the service worker cannot
      // read truncated messages back nor re-subscribe by itself.
      console.warn("herald: cannot store the push subscription in IndexedDB:", e && e.message);
    }
  }

  // herald.js has a fresh token: the service worker uses it from now on.
  _tokenChanged(token) {
    const scope = this._scope;
    if (!scope || typeof indexedDB === "undefined") return;
    pushState("readwrite", (s) => {
      const read = s.get(scope);
      read.onsuccess = () => {
        if (read.result) s.put({ ...read.result, token }, scope);
      };
    }).catch(() => {});
  }

  // The token to send: the Herald's own, asked for when due.
  async _token() {
    const herald = this._herald;
    if (herald._tokenDue() && !(await herald._fetchToken())) {
      throw new HeraldPushError("token_unavailable", herald._tokenError || "the token function failed");
    }
    return herald._token;
  }

  // Herald takes no token for it: the endpoint is the capability.
  _delete(endpoint) {
    return this._request("DELETE", { endpoint }, null, { notFoundIsFine: true });
  }

  // A request to /push/subscriptions with `token` (by default the
  // Herald's; null for none); a refused token is renewed once (with a
  // token function) and the request sent again.
  async _request(method, body, token = undefined, { notFoundIsFine = false } = {}) {
    const herald = this._herald;
    if (token === undefined) token = await this._token();
    for (let attempt = 0; ; attempt++) {
      const response = await this._fetch(`${herald.url}/push/subscriptions`, {
        method,
        headers: withToken(token, { "content-type": "application/json" }),
        body: JSON.stringify(body),
      });
      if (response.ok) return response.status === 204 ? {} : response.json();
      if (response.status === 404 && notFoundIsFine) return {};
      const err = await httpError(response);
      if (response.status === 401 && TOKEN_REFUSED.has(err.code) && herald._tokenSource && attempt === 0) {
        herald._tokenStale = true;
        token = await this._token();
        continue;
      }
      throw new HeraldPushError(err.code, err.message, err.status);
    }
  }

  async _fetch(url, init) {
    try {
      return await fetch(url, init);
    } catch (e) {
      throw new HeraldPushError("network_error", `${init.method || "GET"} ${url} failed: ${e && e.message}`);
    }
  }
}

// registration.pushManager.getSubscription(), asked again when it does
// not answer in time (see PUSH_CALL_TIMEOUT_MS).
async function currentSubscription(registration) {
  for (let attempt = 1; ; attempt++) {
    let timer;
    const late = new Promise((resolve) => (timer = setTimeout(() => resolve(NO_ANSWER), PUSH_CALL_TIMEOUT_MS)));
    try {
      const answer = await Promise.race([registration.pushManager.getSubscription(), late]);
      if (answer !== NO_ANSWER) return answer;
    } finally {
      clearTimeout(timer);
    }
    if (attempt >= PUSH_CALL_ATTEMPTS) {
      throw new HeraldPushError("push_subscribe_failed", "the browser's push service did not answer getSubscription()");
    }
  }
}

function isRegistration(value) {
  return typeof ServiceWorkerRegistration !== "undefined" && value instanceof ServiceWorkerRegistration;
}

// Resolves the registration once it has an active worker, which
// pushManager.subscribe needs.
function activated(registration) {
  if (registration.active) return Promise.resolve(registration);
  const worker = registration.installing || registration.waiting;
  return new Promise((resolve, reject) => {
    worker.addEventListener("statechange", () => {
      if (worker.state === "activated") resolve(registration);
      if (worker.state === "redundant") {
        reject(new HeraldPushError("service_worker_failed", `the service worker ${worker.scriptURL} failed to install`));
      }
    });
  });
}

// Whether `subscription` was made with the key `key`: by its options
// where the browser tells, else by what herald.js stored for it.
function sameKey(subscription, key, stored, keyText) {
  if (subscription.options) {
    const given = subscription.options.applicationServerKey;
    if (!given) return false;
    const bytes = new Uint8Array(given);
    return bytes.length === key.length && bytes.every((b, i) => b === key[i]);
  }
  return !!stored && stored.endpoint === subscription.endpoint && stored.key === keyText;
}

function fromBase64url(text) {
  const b64 = String(text).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}

// Runs `act(store)` in a transaction on herald.js's push store; resolves
// the result of the request it returns, once the transaction completed.
// herald-sw.js has its own copy (`store`): a classic service worker script
// cannot import this module.
function pushState(mode, act) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open(PUSH_DB, 1);
    open.onupgradeneeded = () => open.result.createObjectStore(PUSH_STORE);
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction(PUSH_STORE, mode);
      const request = act(tx.objectStore(PUSH_STORE));
      tx.oncomplete = () => {
        db.close();
        resolve(request ? request.result : undefined);
      };
      tx.onerror = tx.onabort = () => {
        db.close();
        reject(tx.error);
      };
    };
  });
}
