// A push service of the test's own, for tests/browser.rs: Firefox's side
// (the autopush WebSocket protocol Firefox speaks to `dom.push.serverURL`)
// and the application server's side (RFC 8030: Herald POSTs each Web Push
// message to a subscription's endpoint, `http://127.0.0.1:PORT/wpush/<id>`).
//
// Firefox connects, says `hello` and gets a user agent id (`uaid`);
// `register` gets a channel id and its endpoint; a POST to that endpoint
// becomes a `notification` carrying the encrypted body (base64url), which
// Firefox decrypts, hands to the service worker and `ack`s. A message not
// acked yet is sent again when Firefox reconnects, as a real push service
// does. An endpoint nobody holds any more answers `410 Gone`.
//
// Each POST is checked as a push service would: `Content-Encoding:
// aes128gcm`, a `TTL`, at most 4096 bytes of body, and a VAPID
// `Authorization: vapid t=<JWT>, k=<key>` whose key is the one the
// subscription was made with, whose ES256 signature verifies (WebCrypto,
// not the library Herald signs with), whose `aud` is the endpoint's origin
// with its port and whose `exp` is at most 24 hours ahead. A POST that
// fails a check is refused (400, 401 or 413) and reported.
//
// `rotate()` makes the push service forget every subscription: it closes
// Firefox's socket and answers its next `hello` with a new uaid, so Firefox
// drops its subscriptions and fires `pushsubscriptionchange` at their
// service workers.
import { createServer } from "node:http";
import { randomUUID, webcrypto } from "node:crypto";
import { WebSocketServer } from "ws";

// The largest body a push service must accept (RFC 8030 §7.2 asks for at
// least 4096 bytes; Mozilla's and Google's accept exactly that). Above it:
// 413, as they answer.
const MAX_BODY = 4096;
// The longest a VAPID JWT may live (RFC 8292 §2).
const MAX_VAPID_LIFETIME_S = 24 * 3600;

const b64url = (bytes) => Buffer.from(bytes).toString("base64url");
const unb64url = (text) => Buffer.from(String(text).replace(/=+$/, ""), "base64url");

/// Starts the push service on 127.0.0.1 (a free port). `onEvent(event)` is
/// told everything that happens, for the test to read.
export async function startPushService({ onEvent = () => {} } = {}) {
  // uaid -> { socket, unacked: Map<version, notification> }
  const agents = new Map();
  // channelID -> { uaid, key }: the subscriptions held.
  const channels = new Map();
  // uaids whose next `hello` gets a new uaid (see rotate()).
  const rotating = new Set();
  let versions = 0;

  const server = createServer((req, res) => {
    const match = /^\/wpush\/([0-9A-Za-z-]+)$/.exec(req.url);
    if (req.method !== "POST" || !match) {
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size <= MAX_BODY + 1) chunks.push(chunk);
    });
    req.on("end", () => {
      deliver(match[1], req, Buffer.concat(chunks), size).then(
        ({ status, headers = {}, reason }) => {
          res.writeHead(status, headers).end(reason ? JSON.stringify({ reason }) : undefined);
        },
        (e) => {
          onEvent({ type: "error", message: `delivering to ${match[1]}: ${e.stack || e}` });
          res.writeHead(500).end();
        },
      );
    });
  });
  const origin = await new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${server.address().port}`));
  });

  // A POST from the application server: checked, then sent to Firefox.
  async function deliver(channelID, req, body, size) {
    const refuse = (status, reason) => {
      onEvent({ type: "refused", channelID, status, reason });
      return { status, reason };
    };
    const sub = channels.get(channelID);
    if (!sub) return refuse(410, "no such subscription");
    if (size > MAX_BODY) return refuse(413, `a body of ${size} bytes, over ${MAX_BODY}`);
    if (req.headers["content-encoding"] !== "aes128gcm") {
      return refuse(400, `Content-Encoding ${req.headers["content-encoding"]}, not aes128gcm`);
    }
    const ttl = Number(req.headers.ttl);
    if (req.headers.ttl === undefined || !Number.isInteger(ttl) || ttl < 0) {
      return refuse(400, `TTL ${req.headers.ttl}`);
    }
    const vapid = await checkVapid(req.headers.authorization, sub.key, origin);
    if (vapid.error) return refuse(401, vapid.error);
    const version = String(++versions);
    const notification = {
      messageType: "notification",
      channelID,
      version,
      data: b64url(body),
      headers: { encoding: "aes128gcm" },
      ttl,
    };
    const agent = agents.get(sub.uaid);
    agent.unacked.set(version, notification);
    send(agent.socket, notification);
    onEvent({
      type: "delivery",
      channelID,
      version,
      bytes: body.length,
      ttl,
      urgency: req.headers.urgency ?? null,
      connected: agent.socket !== null,
      vapid: vapid.claims,
    });
    return { status: 201, headers: { location: `${origin}/m/${version}`, ttl: String(ttl) } };
  }

  const send = (socket, message) => {
    if (socket && socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
  };

  const wss = new WebSocketServer({
    server,
    // Firefox asks for this subprotocol and fails the socket without it.
    handleProtocols: (protocols) => (protocols.has("push-notification") ? "push-notification" : false),
  });
  wss.on("connection", (socket) => {
    let uaid = null;
    socket.on("message", (raw) => {
      let msg;
      try {
        msg = JSON.parse(String(raw));
      } catch {
        onEvent({ type: "error", message: `not JSON from Firefox: ${raw}` });
        return;
      }
      switch (msg.messageType) {
        case undefined: // a ping, `{}`
          send(socket, {});
          break;
        case "hello": {
          const known = typeof msg.uaid === "string" && agents.has(msg.uaid) && !rotating.has(msg.uaid);
          if (typeof msg.uaid === "string" && rotating.delete(msg.uaid)) forget(msg.uaid);
          uaid = known ? msg.uaid : randomUUID().replace(/-/g, "");
          const agent = agents.get(uaid) ?? { socket: null, unacked: new Map() };
          if (agent.socket && agent.socket !== socket) agent.socket.terminate();
          agent.socket = socket;
          agents.set(uaid, agent);
          send(socket, { messageType: "hello", status: 200, uaid, use_webpush: true, broadcasts: {} });
          onEvent({ type: "hello", uaid, asked: msg.uaid ?? null, rotated: !known && typeof msg.uaid === "string" });
          for (const notification of agent.unacked.values()) send(socket, notification);
          break;
        }
        case "register": {
          if (!uaid) break;
          const key = msg.key ? b64url(unb64url(msg.key)) : null;
          channels.set(msg.channelID, { uaid, key });
          const pushEndpoint = `${origin}/wpush/${msg.channelID}`;
          send(socket, { messageType: "register", status: 200, channelID: msg.channelID, pushEndpoint });
          onEvent({ type: "register", channelID: msg.channelID, endpoint: pushEndpoint, key });
          break;
        }
        case "unregister":
          channels.delete(msg.channelID);
          send(socket, { messageType: "unregister", status: 200, channelID: msg.channelID });
          onEvent({ type: "unregister", channelID: msg.channelID, code: msg.code ?? null });
          break;
        case "ack":
          for (const update of msg.updates || []) {
            agents.get(uaid)?.unacked.delete(update.version);
            onEvent({ type: "ack", channelID: update.channelID, version: update.version, code: update.code });
          }
          break;
        case "nack":
          onEvent({ type: "nack", version: msg.version, code: msg.code });
          break;
        default:
          break; // broadcast_subscribe and the like: nothing to do here
      }
    });
    socket.on("close", () => {
      const agent = uaid && agents.get(uaid);
      if (agent && agent.socket === socket) agent.socket = null;
      onEvent({ type: "disconnected", uaid });
    });
  });

  // Drops a user agent and every subscription it held.
  function forget(uaid) {
    for (const [id, sub] of channels) if (sub.uaid === uaid) channels.delete(id);
    agents.delete(uaid);
  }

  return {
    /// What goes into Firefox's `dom.push.serverURL`.
    url: origin.replace(/^http/, "ws") + "/",
    origin,
    /// Forgets every subscription (see the top of this file).
    rotate() {
      for (const [uaid, agent] of agents) {
        rotating.add(uaid);
        if (agent.socket) agent.socket.terminate();
      }
      return rotating.size;
    },
    close() {
      for (const agent of agents.values()) agent.socket?.terminate();
      wss.close();
      server.close();
    },
  };
}

// Checks `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292): its claims, or
// `{error}` saying what was wrong.
async function checkVapid(header, subscribedKey, origin) {
  const m = /^vapid\s+(.*)$/i.exec(header || "");
  if (!m) return { error: `Authorization ${JSON.stringify(header)} is not vapid t=…, k=…` };
  const params = Object.fromEntries(
    m[1].split(",").map((part) => {
      const eq = part.indexOf("=");
      return [part.slice(0, eq).trim(), part.slice(eq + 1).trim()];
    }),
  );
  if (!params.t || !params.k) return { error: `vapid without t= or k=: ${header}` };
  const key = b64url(unb64url(params.k));
  if (subscribedKey && key !== subscribedKey) {
    return { error: `k=${key} is not the key the subscription was made with, ${subscribedKey}` };
  }
  const [head, payload, signature] = params.t.split(".");
  let claims;
  try {
    const alg = JSON.parse(unb64url(head)).alg;
    if (alg !== "ES256") return { error: `JWT alg ${alg}, not ES256` };
    claims = JSON.parse(unb64url(payload));
    const publicKey = await webcrypto.subtle.importKey("raw", unb64url(params.k), { name: "ECDSA", namedCurve: "P-256" }, false, [
      "verify",
    ]);
    const ok = await webcrypto.subtle.verify(
      { name: "ECDSA", hash: "SHA-256" },
      publicKey,
      unb64url(signature),
      Buffer.from(`${head}.${payload}`),
    );
    if (!ok) return { error: "the JWT's signature does not verify with k=" };
  } catch (e) {
    return { error: `a JWT that cannot be read: ${e.message}` };
  }
  if (claims.aud !== origin) return { error: `aud ${JSON.stringify(claims.aud)}, not the endpoint's origin ${origin}` };
  const now = Date.now() / 1000;
  if (typeof claims.exp !== "number" || claims.exp <= now || claims.exp > now + MAX_VAPID_LIFETIME_S) {
    return { error: `exp ${claims.exp}: not within the next 24 hours` };
  }
  if (typeof claims.sub !== "string" || !/^(mailto:|https:)/.test(claims.sub)) {
    return { error: `sub ${JSON.stringify(claims.sub)} is not a mailto: or https: URL` };
  }
  return { claims };
}
