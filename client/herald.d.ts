// Types for herald.js, the browser client for Herald (docs/client.md).
// Checked by `tsc --strict` in the test suite (tests/browser.rs) against a
// small typed example, so they stay those of the code beside them.

/** A transport herald.js can use, tried in the order given. */
export type Transport = "ws" | "sse" | "poll";

/**
 * Where herald.js keeps each subscription's cursor for the next page (a
 * reload continues where the page was): `sessionStorage`, `localStorage`,
 * or any object with these three methods.
 */
export interface CursorStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * A token for Herald (a JWT), or none: a string used as it is until Herald
 * refuses it, or a function asked before the first connection, ahead of
 * the token's `exp`, and whenever Herald refuses or expires it.
 */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);

export interface HeraldOptions {
  /** Default `["ws", "sse", "poll"]`: WebSocket first, then the fallbacks. */
  transports?: Transport[];
  token?: TokenSource;
  /** Seconds a long poll waits for a record (default 25). */
  pollWait?: number;
  /** Off (null) by default. */
  storage?: CursorStorage | null;
}

/** One Kafka record delivered on a channel: Herald's envelope. */
export interface Envelope<T = unknown> {
  channel: string;
  /** The position after this message; resumes the subscription here. */
  cursor: string;
  topic: string;
  partition: number;
  offset: number;
  /** The Kafka timestamp, ms since the epoch. */
  ts: number;
  key: string | null;
  /** JSON payloads as JSON, other UTF-8 as a string, the rest base64. */
  data: T;
  encoding?: "base64";
  /** Web Push only: `data` was left out (too large); read it from /poll. */
  truncated?: boolean;
}

/** Records Kafka deleted (retention) before the subscription reached them. */
export interface Gap {
  channel: string;
  partitions: Array<{
    topic: string;
    partition: number;
    from: number;
    to: number;
    /** The partition's offsets started over (a topic created again). */
    reset?: boolean;
  }>;
  cursor?: string;
}

/** What `onError` gets: Herald's error code and message, or herald.js's own. */
export interface HeraldError {
  code: string;
  message: string;
  /** True when the subscription has ended (a refusal retrying cannot fix). */
  fatal: boolean;
  /** With `fatal`: the subscription's last cursor, for the application. */
  cursor?: string | null;
  /** The HTTP status of a refused SSE or poll request. */
  status?: number;
  /** The channel a refusal of one of several subscriptions is about. */
  channel?: string;
}

export interface SubscribeOptions<T = unknown> {
  /** Start after this cursor (wins over a stored one, and over `since`). */
  cursor?: string;
  /** Start at this time: ms since the epoch, or an RFC 3339 timestamp. */
  since?: number | string;
  onMessage?: (message: Envelope<T>) => void;
  onGap?: (gap: Gap) => void;
  onError?: (error: HeraldError) => void;
}

export interface Subscription {
  readonly channel: string;
  /** The position after the last message delivered; null until known. */
  readonly cursor: string | null;
  readonly closed: boolean;
  /** Ends the subscription and forgets its stored cursor. */
  close(): void;
}

export declare class Herald {
  /** `url` defaults to the page's origin. */
  constructor(url?: string | null, options?: HeraldOptions);
  readonly url: string;
  readonly transports: Transport[];
  readonly pollWait: number;
  /** The transport connected now; null while not connected. */
  readonly transport: Transport | null;
  readonly push: HeraldPush;
  /** One subscription per channel; all of them share one connection. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions<T>): Subscription;
  /** Ends every subscription and the connection; stored cursors stay. */
  close(): void;
}

export interface PushOptions {
  /**
   * The service worker: a script URL on the page's origin (default
   * Herald's `/herald-sw.js`, which must then be on it), or a registration.
   */
  serviceWorker?: string | URL | ServiceWorkerRegistration;
  scope?: string;
}

export interface HeraldPushSubscription {
  endpoint: string;
  channels: string[];
  id: string | null;
  subscription: PushSubscription;
}

export interface HeraldPush {
  /** Whether this browser can take push subscriptions at all. */
  readonly supported: boolean;
  subscribe(channels: string | string[], options?: PushOptions): Promise<HeraldPushSubscription & { id: string }>;
  /** True, or false when there was no subscription. */
  unsubscribe(options?: PushOptions): Promise<boolean>;
  subscription(options?: PushOptions): Promise<HeraldPushSubscription | null>;
  /** Herald's VAPID public key, base64url. */
  vapidKey(): Promise<string>;
}

export type HeraldPushErrorCode =
  | "push_unsupported"
  | "permission_denied"
  | "permission_dismissed"
  | "push_not_enabled"
  | "service_worker_origin"
  | "service_worker_failed"
  | "push_subscribe_failed"
  | "token_unavailable"
  | "network_error";

/** A Web Push failure: herald.js's own code, or Herald's (with `status`). */
export declare class HeraldPushError extends Error {
  constructor(code: string, message: string, status?: number | null);
  readonly code: HeraldPushErrorCode | (string & {});
  readonly status: number | null;
}
