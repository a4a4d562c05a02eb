// The types the application sees: values, options, events. No runtime code;
// every other module may import it.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * Where a topic with history stands: the last offset seen, and its epoch.
 * Also what a broadcast on such a topic is acknowledged with: its event's
 * position.
 */
export interface Position {
  offset: number;
  epoch: string;
}

/**
 * Who is in a topic, on every server instance: connections, and
 * connections per user (keyed by the user id; a string id as itself).
 */
export interface Presence {
  clients: number;
  users: { [user: string]: number };
}

/** The part of the WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket constructor: the browser's, Node's, or one for tests. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Timers, injectable so that tests control time. */
export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** How a client connects and behaves. Only `url` is required. */
export interface ClientOptions {
  /** The topic's URL, as `ws://host:port/ws/lobby`. */
  url: string;
  /** The token, sent as the `bearer, <token>` subprotocol (browsers cannot set headers). */
  token?: string;
  /**
   * Gets a fresh token: called when the server says the connection's token
   * is about to expire (its `expiring` frame), whose answer is sent with
   * `$refresh` without reconnecting, and before reconnecting after the
   * server closed with 3000 (token expired). Without it, a 3000 stops the
   * client.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default: the global one (Node 20 needs `--experimental-websocket`, or pass one). */
  WebSocket?: WebSocketConstructor;
  /** How long a call waits for its answer. Default 10 000 ms. */
  callTimeoutMs?: number;
  /** The backoff's bounds. Default 500 ms to 20 000 ms. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** The random source of the backoff's jitter, in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Timers. Default: the system's. */
  clock?: Clock;
  /**
   * After this long without a frame from the server, the client sends a
   * `$ping`; after this long plus `silenceMarginMs` it gives the connection
   * up and reconnects. The client asks the server for its heartbeat as a
   * text frame (`?heartbeat=text`), which it answers: against a server
   * whose `ping_interval` is below this, it sends no `$ping` of its own.
   * Default 30 000 ms (above the server's default interval, 25 s) and
   * 10 000 ms.
   */
  heartbeatMs?: number;
  silenceMarginMs?: number;
  /** Calls made while disconnected: `queue` them (the default) or `fail` at once. */
  offline?: "queue" | "fail";
  /** The most calls queued while disconnected; past it, calls fail. Default 100. */
  maxQueued?: number;
  /**
   * Asks why an upgrade failed before the socket opened (a browser's
   * WebSocket hides the HTTP status): resolves with the HTTP status of a
   * plain GET of `httpUrl` (the socket's URL over HTTP), or `undefined`.
   * Default: a `fetch` with the token. 400, 401 and 403 stop the client;
   * anything else (426, 429, 503, no answer, a rejection) retries.
   */
  refusal?: (httpUrl: string, token: string | undefined) => Promise<number | undefined>;
}

/** What a call may say besides its type and data. */
export interface CallOptions {
  /** The topic the message is about (a `$join`ed one); default: the URL's. */
  topic?: string;
  /** Overrides `callTimeoutMs`. */
  timeoutMs?: number;
  /**
   * Carry an idempotency key, and when the connection drops before the
   * answer, send the call again (same key) after the reconnect instead of
   * failing it. The server publishes a broadcast once per key (within its
   * window, 2 minutes by default) and acknowledges a repeat as the first;
   * a direct method ignores the key, so it would run again: mark only those
   * that may.
   */
  idempotent?: boolean;
  /**
   * The key to send, 1 to 64 bytes of UTF-8, for a key the application
   * keeps (say, across page loads); implies `idempotent` unless that is
   * `false`. Default: a random one per call.
   */
  idempotencyKey?: string;
}

/** An event of a topic, as a subscription's handler receives it. */
export interface EventMeta {
  topic: string;
  /** The event's offset, for a topic with history. */
  offset?: number;
}

/** The connection's state. */
export type State = "idle" | "connecting" | "open" | "reconnecting" | "stopped";

/** What the client tells the application besides events. */
export interface ClientEvents {
  /** The state changed. */
  state: { state: State };
  /**
   * A subscription is live; `recovered` when it resumed (`since`). `offset`
   * and `epoch` on a topic with history. `server` when the server subscribed
   * the connection to a topic the client did not follow: the client follows
   * it from now on (`subscribe` adds its handler, and it is joined again
   * after a reconnect), as if the application had subscribed.
   */
  subscribed: { topic: string; offset?: number; epoch?: string; recovered?: boolean; server?: boolean };
  /** The server took the connection out of a topic: the client follows it no more. */
  unsubscribed: { topic: string };
  /** Events of a topic were lost; reload its state. */
  reset: { topic: string; offset: number; epoch: string };
  /** A user's first connection subscribed to a topic that announces joins. */
  join: { topic: string; user: Json };
  /** A user's last connection left such a topic. */
  leave: { topic: string; user: Json };
  /**
   * The whole list of who is in such a topic, replacing what the joins and
   * leaves built: the server's link to its broker came back, and joins and
   * leaves of meanwhile may be lost.
   */
  presence: { topic: string; presence: Presence };
  /** The token was replaced on the open connection (`$refresh`); `expiresIn` in seconds, `null` if it does not expire. */
  refreshed: { expiresIn: number | null };
  /** An open connection was lost; the client reconnects. */
  lost: { code: number; reason: string };
  /** An error frame that answered no call, or a failed `$join` (each try) or `$leave`. */
  error: { error: Error; topic?: string };
  /** The client stopped: `close()`, a close code that means "stop", or a refused upgrade. */
  stopped: { code?: number; reason: string };
}

/** A listener of one kind of client event. */
export type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;

/** A subscription's handler: gets each event of its topic. */
export type EventHandler = (event: Json, meta: EventMeta) => void;
