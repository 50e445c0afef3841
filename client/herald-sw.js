// herald-sw.js — Herald's Web Push service worker. A classic script, no
// build step, no dependencies. Served by Herald at /herald-sw.js;
// documented in docs/client.md ("Web Push"). herald.js's `herald.push`
// registers it and subscribes; this shows the notifications.
//
// A service worker must be on the page's origin. On Herald's own origin,
// register it as it is; a page on another origin hosts a file of its own:
//
//   // https://app.example.com/push-sw.js
//   self.heraldPush = { title: "/title", body: "/body", url: "/inbox" };
//   importScripts("https://herald.example.com/herald-sw.js");
//
// Options, each from `self.heraldPush` or else the query of the service
// worker's own URL (`/herald-sw.js?title=/title&body=/body`):
//   title, body, icon  JSON pointers (RFC 6901) into the message's `data`
//                      for the notification's title (default: the channel),
//                      body (default: `data` as text) and icon URL
//   link               a JSON pointer to a URL in `data` to open on a click
//   url                the URL to open otherwise (default: the scope)
//   token              a token, or a function returning one (may be async),
//                      instead of the one herald.js stored
//   notification       (self.heraldPush only) a function of the envelope
//                      returning {title, ...options} to show instead, or
//                      null to show none
//
// On `push`: the payload is Herald's envelope {channel, cursor, topic,
// partition, offset, ts, key, data}; one Herald cut short (`truncated`,
// no `data`) is read back from GET /poll at its cursor. One notification
// per message, tagged with the channel (a new one replaces the last
// rather than stacking), its `data` the envelope; every open page of the
// origin gets {type: "herald.push", envelope} by postMessage.
// `notificationclick` focuses the page at the URL or opens it. When the
// browser renews the subscription (`pushsubscriptionchange`) it subscribes
// again and registers the new one with Herald, from what herald.js stored
// in IndexedDB.
(() => {
  "use strict";

  // Where herald.js keeps, per service worker scope, what this worker
  // needs: {url, channels, key, endpoint, token}. Keep in step with
  // herald.js.
  const DB_NAME = "herald-push";
  const DB_STORE = "subscriptions";
  // The most of `data` shown as a notification's body.
  const MAX_BODY_CHARS = 1000;
  // How many records a read-back of a truncated message asks for: the
  // record is at the cursor, so among the first, unless other partitions'
  // records come before it.
  const READ_BACK_LIMIT = 100;

  const params = new URL(self.location.href).searchParams;
  // Read at each event, so `self.heraldPush` may be set before or after
  // importScripts.
  const option = (name) => {
    const set = self.heraldPush && self.heraldPush[name];
    return set !== undefined && set !== null ? set : params.get(name);
  };

  // The same store as herald.js's pushState, written twice on purpose: a
  // classic service worker script cannot import the ES module.
  function store(mode, act) {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open(DB_NAME, 1);
      open.onupgradeneeded = () => open.result.createObjectStore(DB_STORE);
      open.onerror = () => reject(open.error);
      open.onsuccess = () => {
        const db = open.result;
        const tx = db.transaction(DB_STORE, mode);
        const request = act(tx.objectStore(DB_STORE));
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
  const scope = () => self.registration.scope;
  async function loadState() {
    try {
      return (await store("readonly", (s) => s.get(scope()))) || null;
    } catch (e) {
      console.warn("herald-sw: cannot read IndexedDB:", e);
      return null;
    }
  }
  const saveState = (state) => store("readwrite", (s) => s.put(state, scope()));

  async function tokenFor(state) {
    const given = option("token");
    if (typeof given === "function") return (await given()) || null;
    if (typeof given === "string" && given) return given;
    return (state && state.token) || null;
  }

  // Herald's base URL: the one herald.js stored; without it, this
  // script's own origin (served by Herald).
  const heraldUrl = (state) => String((state && state.url) || option("herald") || self.location.origin).replace(/\/+$/, "");

  // An error with Herald's code, from an HTTP answer.
  async function httpError(response, what) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {}
    const e = new Error(`${what}: ${(error && error.message) || `HTTP ${response.status}`}`);
    e.code = (error && error.code) || `http_${response.status}`;
    e.status = response.status;
    return e;
  }

  // A JSON pointer (RFC 6901) into `value`; undefined when it leads nowhere.
  function pointer(value, ptr) {
    if (typeof ptr !== "string") return undefined;
    if (ptr === "") return value;
    if (!ptr.startsWith("/")) return undefined;
    for (const raw of ptr.slice(1).split("/")) {
      const token = raw.replace(/~1/g, "/").replace(/~0/g, "~");
      if (value === null || typeof value !== "object" || !Object.prototype.hasOwnProperty.call(value, token)) {
        return undefined;
      }
      value = value[token];
    }
    return value;
  }

  function asText(value) {
    if (value === undefined || value === null) return "";
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return text.length > MAX_BODY_CHARS ? text.slice(0, MAX_BODY_CHARS - 1) + "…" : text;
  }

  // Reads a truncated message back from /poll: the envelope with its
  // `data` (and `encoding`) filled in.
  async function readBack(envelope, state) {
    const token = await tokenFor(state);
    const query = new URLSearchParams({ channel: envelope.channel, cursor: envelope.cursor, limit: String(READ_BACK_LIMIT) });
    const response = await fetch(`${heraldUrl(state)}/poll?${query}`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
      cache: "no-store",
    });
    if (!response.ok) throw await httpError(response, "reading the message back from /poll");
    const body = await response.json();
    const found = (body.messages || []).find(
      (m) => m.topic === envelope.topic && m.partition === envelope.partition && m.offset === envelope.offset,
    );
    if (!found) {
      const e = new Error(`${envelope.topic}/${envelope.partition}@${envelope.offset} is not at its cursor any more`);
      e.code = "not_found";
      throw e;
    }
    const filled = { ...envelope, data: found.data };
    if (found.encoding) filled.encoding = found.encoding;
    return filled;
  }

  // The notification for an envelope: [title, options], or null for none.
  function notificationFor(envelope) {
    const custom = self.heraldPush && self.heraldPush.notification;
    if (typeof custom === "function") {
      const made = custom(envelope);
      if (!made) return null;
      const { title, ...options } = made;
      return [String(title || envelope.channel), { tag: envelope.channel, data: envelope, ...options }];
    }
    const options = { tag: envelope.channel, data: envelope };
    if (!("data" in envelope)) {
      // Cut short and not readable now: say where, not what.
      options.body = "New message";
      return [envelope.channel, options];
    }
    const title = pointer(envelope.data, option("title"));
    const body = pointer(envelope.data, option("body"));
    const icon = pointer(envelope.data, option("icon"));
    options.body = asText(body !== undefined ? body : envelope.data);
    if (typeof icon === "string") options.icon = icon;
    return [asText(title) || envelope.channel, options];
  }

  async function toPages(message) {
    const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const page of pages) page.postMessage(message);
  }

  async function onPush(event) {
    let envelope = null;
    try {
      envelope = event.data ? event.data.json() : null;
    } catch {}
    if (!envelope || typeof envelope.channel !== "string") {
      // Not Herald's: the browser still wants a notification for a push.
      await self.registration.showNotification(self.registration.scope, { body: "New message" });
      return;
    }
    if (envelope.truncated) {
      try {
        envelope = await readBack(envelope, await loadState());
      } catch (e) {
        console.warn("herald-sw:", e.message);
        envelope.readBackError = { code: e.code || "fetch_failed", message: e.message };
      }
    }
    const shown = notificationFor(envelope);
    const [notified] = await Promise.allSettled([
      shown ? self.registration.showNotification(shown[0], shown[1]) : null,
      toPages({ type: "herald.push", envelope }),
    ]);
    if (notified.status === "rejected") console.warn("herald-sw: showNotification failed:", notified.reason);
  }

  async function onClick(event) {
    event.notification.close();
    const envelope = event.notification.data || {};
    const link = pointer(envelope.data, option("link"));
    const target = new URL(typeof link === "string" ? link : option("url") || scope(), scope()).href;
    const pages = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    const page = pages.find((p) => p.url === target);
    if (page) {
      await page.focus();
      page.postMessage({ type: "herald.notificationclick", envelope });
    } else {
      await self.clients.openWindow(target);
    }
  }

  // The browser renewed (or dropped) the subscription: subscribe again with
  // Herald's key and register the new one for the same channels.
  async function onSubscriptionChange(event) {
    const state = await loadState();
    if (!state || !state.key) return; // not subscribed through herald.js
    let subscription = event.newSubscription || null;
    if (!subscription) {
      subscription = await self.registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: fromBase64url(state.key),
      });
    }
    const url = heraldUrl(state);
    const token = await tokenFor(state);
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(`${url}/push/subscriptions`, {
      method: "POST",
      headers,
      body: JSON.stringify({ subscription: subscription.toJSON(), channels: state.channels }),
    });
    if (!response.ok) throw await httpError(response, "registering the renewed subscription with Herald");
    const { id } = await response.json();
    const previous = (event.oldSubscription && event.oldSubscription.endpoint) || state.endpoint;
    await saveState({ ...state, endpoint: subscription.endpoint, id });
    if (previous && previous !== subscription.endpoint) {
      // Herald would drop it at the push service's 404/410; sooner is
      // better. No token: the endpoint is the capability.
      await fetch(`${url}/push/subscriptions`, {
        method: "DELETE",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ endpoint: previous }),
      }).catch(() => {});
    }
    await toPages({ type: "herald.pushsubscriptionchange", endpoint: subscription.endpoint, previous: previous || null });
  }

  function fromBase64url(text) {
    const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  }

  self.addEventListener("push", (event) => event.waitUntil(onPush(event)));
  self.addEventListener("notificationclick", (event) => event.waitUntil(onClick(event)));
  self.addEventListener("pushsubscriptionchange", (event) =>
    event.waitUntil(
      onSubscriptionChange(event).catch((e) => {
        console.warn("herald-sw: re-subscribing failed:", e.code || "", e.message);
        return toPages({ type: "herald.pushsubscriptionchange", error: { code: e.code || "failed", message: e.message } });
      }),
    ),
  );
})();
