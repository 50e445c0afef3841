// A typed use of herald.js, checked with `tsc --strict` against the
// installed package (tests/browser.rs): every part of the public API, as an
// application would write it. Compiled only, never run.
import { Herald, HeraldPushError } from "herald-client";
import type { CursorStorage, Envelope, Gap, HeraldError, Subscription, Transport } from "herald-client";

interface Notice {
  title: string;
  n: number;
}

const herald = new Herald("https://herald.example.com", {
  transports: ["ws", "sse", "poll"],
  token: async () => (await fetch("/herald-token")).text(),
  pollWait: 25,
  storage: sessionStorage,
});

const sub: Subscription = herald.subscribe<Notice>("user.42", {
  since: "2026-11-25T10:00:00Z",
  onMessage(msg: Envelope<Notice>) {
    const title: string = msg.data.title;
    const where: [string, number, number, string] = [msg.topic, msg.partition, msg.offset, msg.cursor];
    const key: string | null = msg.key;
    console.log(title, where, key, msg.ts);
  },
  onGap(gap: Gap) {
    for (const p of gap.partitions) console.log(gap.channel, p.topic, p.to - p.from);
  },
  onError(err: HeraldError) {
    if (err.fatal) console.warn(err.code, err.message, err.cursor, err.channel);
  },
});
const cursor: string | null = sub.cursor;
const transport: Transport | null = herald.transport;
console.log(cursor, transport, sub.channel, sub.closed);
sub.close();

// A fixed token, a custom store, a cursor to start from.
const memory = new Map<string, string>();
const store: CursorStorage = {
  getItem: (k) => memory.get(k) ?? null,
  setItem: (k, v) => void memory.set(k, v),
  removeItem: (k) => void memory.delete(k),
};
const other = new Herald(undefined, { token: "a.jwt.here", storage: store });
other.subscribe("news", { cursor: "hAQRuZXdzAwACAQACAQ", onMessage: (m) => console.log(m.data) });
new Herald(null, { token: null, storage: localStorage }).close();

async function notifications(): Promise<void> {
  if (!herald.push.supported) return;
  try {
    const registered = await herald.push.subscribe(["news", "user.42"], { serviceWorker: "/push-sw.js" });
    const id: string = registered.id;
    const endpoint: string = registered.endpoint;
    console.log(id, endpoint, registered.channels, registered.subscription.toJSON());
  } catch (e) {
    if (e instanceof HeraldPushError && e.code === "permission_denied") {
      const status: number | null = e.status;
      console.log(e.message, status);
    }
  }
  const current = await herald.push.subscription();
  if (current) console.log(current.id, current.channels);
  const key: string = await herald.push.vapidKey();
  const gone: boolean = await herald.push.unsubscribe();
  console.log(key, gone);
}
void notifications();

// @ts-expect-error: not a transport
new Herald("", { transports: ["carrier-pigeon"] });
// @ts-expect-error: a token function returns a string or null
new Herald("", { token: () => 42 });

herald.close();
other.close();
