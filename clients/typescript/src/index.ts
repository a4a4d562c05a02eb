// The client of the realtime protocol (version 1), for browsers and Node 20+:
// calls answered by promises, subscriptions with `$join`, resumption with
// `since`, reconnection with full-jitter backoff, the close-code rules, a
// heartbeat watchdog, a bounded queue for calls made while offline, and
// idempotent calls that are sent again after a reconnect.
// No runtime dependencies.

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

/** An error answer of the server: `{"error": {"code": 400, "message": "..."}}`. */
export class RealtimeError extends Error {
  override readonly name = "RealtimeError";
  constructor(
    /** The code (400, 403, 429, 500, 503, or the handler's own). */
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** A call that got no answer within its timeout. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
}

/**
 * A call that cannot be answered: the client stopped, the connection was
 * lost after the call was sent (it may or may not have run), or the client
 * is offline and fails calls at once.
 */
export class ClosedError extends Error {
  override readonly name = "ClosedError";
}

/** What the client does after the server closed the connection. */
export type CloseAction = "reconnect" | "stop";

/**
 * The close-code rules, in one table. `reconnect`: the server went away or
 * is overloaded, and trying again later works. `stop`: trying again would
 * be refused the same way; the client stops and reports why.
 *
 * | code | meaning | action |
 * | --- | --- | --- |
 * | 1000 | normal close | stop |
 * | 1001 | the server is shutting down | reconnect |
 * | 1002 | protocol error | stop |
 * | 1003 | binary frame | stop |
 * | 1006 | connection lost, no close frame | reconnect |
 * | 1007 | text that is not UTF-8 | stop |
 * | 1008 | policy: flood, or silent past the idle timeout | stop |
 * | 1009 | frame too large | stop |
 * | 1011 | server error | reconnect |
 * | 1012 | service restart | reconnect |
 * | 1013 | try again later (a reader too slow) | reconnect |
 * | HTTP 400, 401, 403 on the upgrade | bad topic or `since`, bad token, forbidden topic | stop |
 * | HTTP 426 on the upgrade | the upgrade would be accepted: it failed on the way | reconnect |
 * | HTTP 429, 503, other 5xx on the upgrade | refused for now: overloaded, broker down, shutting down | reconnect |
 * | no HTTP status (network error, no `fetch`) | | reconnect |
 * | any other | | reconnect |
 *
 * The HTTP rows apply to a socket that failed before it opened: a browser's
 * WebSocket hides the status, so the client asks with a plain GET of the
 * same URL (the `refusal` option), which the server answers as it would
 * the upgrade. Only the three refusals that the same request would meet
 * again stop the client.
 */
export const CLOSE_RULES: Readonly<Record<number, CloseAction>> = Object.freeze({
  1000: "stop",
  1001: "reconnect",
  1002: "stop",
  1003: "stop",
  1006: "reconnect",
  1007: "stop",
  1008: "stop",
  1009: "stop",
  1011: "reconnect",
  1012: "reconnect",
  1013: "reconnect",
});

/** HTTP statuses of a refused upgrade that stop the client: bad request, token, topic. Any other retries. */
const REFUSALS: readonly number[] = [400, 401, 403];

/** How long a connection must stay up before the backoff starts over. */
const STABLE_MS = 5_000;

/** The action for a close code (see {@link CLOSE_RULES}). */
export function closeAction(code: number): CloseAction {
  return CLOSE_RULES[code] ?? "reconnect";
}

/**
 * Full-jitter exponential backoff: a random wait between 0 and
 * `min(max, min * 2^attempt)` milliseconds.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return random() * ceiling;
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

const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** How a client connects and behaves. Only `url` is required. */
export interface ClientOptions {
  /** The topic's URL, as `ws://host:port/ws/lobby`. */
  url: string;
  /** The token, sent as the `bearer, <token>` subprotocol (browsers cannot set headers). */
  token?: string;
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
   * up and reconnects. Default 20 000 ms (the server's ping interval) and
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
  /** A subscription is live; `recovered` when it resumed (`since`). */
  subscribed: { topic: string; offset: number; epoch: string; recovered?: boolean };
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
  /** An open connection was lost; the client reconnects. */
  lost: { code: number; reason: string };
  /** An error frame that answered no call, or a failed `$join` (each try) or `$leave`. */
  error: { error: Error; topic?: string };
  /** The client stopped: `close()`, a close code that means "stop", or a refused upgrade. */
  stopped: { code?: number; reason: string };
}

type Listener<K extends keyof ClientEvents> = (event: ClientEvents[K]) => void;
type EventHandler = (event: Json, meta: EventMeta) => void;

/** What the client sends, but for the `id` each sending gets. */
interface Request {
  type: string;
  data?: Json;
  topic?: string;
  idempotency_key?: string;
}

interface ErrorBody {
  code: number;
  message: string;
}

/** The frames a server sends (realtime/docs/protocol.md, "Server to client"). */
type ServerFrame =
  | { reply_to: number | string; ok?: Json; error?: ErrorBody }
  | { error: ErrorBody }
  | { topic: string; event: Json; offset?: number }
  | { topic: string; subscribed: { offset: number; epoch: string; recovered?: boolean } }
  | { topic: string; reset: Position }
  | { topic: string; join: { user: Json } }
  | { topic: string; leave: { user: Json } }
  | { topic: string; presence: Presence };

/** A call until it is answered: sent and pending, or queued for a connection. */
interface Call {
  request: Request;
  timeoutMs: number;
  /** Its timeout runs from the moment it was made, across queues and connections. */
  deadline: number;
  resolve(value: Json): void;
  reject(error: Error): void;
  timer: unknown;
  /** Queued again when its connection drops, rather than failed. */
  idempotent: boolean;
}

/** One topic this client follows. */
interface Followed {
  handlers: Set<EventHandler>;
  position?: Position;
  /** The URL's topic, followed without `$join`. */
  home: boolean;
  /** Failed `$join`s on the current connection, for the backoff. */
  joinAttempt: number;
  joinTimer: unknown;
}

/**
 * A connection to one realtime endpoint that comes back by itself.
 *
 * ```ts
 * const client = new Client({ url: "ws://127.0.0.1:3000/ws/lobby", token: "alice" });
 * client.subscribe("lobby", (event) => console.log(event));
 * client.connect();
 * await client.call("say", { text: "hi" });
 * ```
 */
export class Client {
  private readonly options: Required<Omit<ClientOptions, "token" | "WebSocket" | "refusal">> & {
    token: string | undefined;
  };
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly refusal: (httpUrl: string, token: string | undefined) => Promise<number | undefined>;
  private readonly clock: Clock;
  private socket: WebSocketLike | null = null;
  private current: State = "idle";
  private attempt = 0;
  private nextId = 1;
  private readonly pending = new Map<number, Call>();
  private readonly queued: Call[] = [];
  private readonly topics = new Map<string, Followed>();
  private readonly listeners = new Map<keyof ClientEvents, Set<(event: never) => void>>();
  private retryTimer: unknown = null;
  private watchdogTimer: unknown = null;
  private connectTimer: unknown = null;
  private lastHeard = 0;
  /** When the current connection opened, to tell a stable one from a flap. */
  private openedAt = 0;
  /** Bumped by every `connect()` and `close()`: late answers of an earlier session are ignored. */
  private session = 0;
  /** The topic of the URL. */
  readonly topic: string;

  constructor(options: ClientOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WebSocketImpl) {
      throw new Error("no WebSocket constructor: pass `WebSocket`, or run Node with --experimental-websocket");
    }
    this.WebSocketImpl = WebSocketImpl;
    this.clock = options.clock ?? systemClock;
    this.options = {
      url: options.url,
      token: options.token,
      callTimeoutMs: options.callTimeoutMs ?? 10_000,
      backoffMinMs: options.backoffMinMs ?? 500,
      backoffMaxMs: options.backoffMaxMs ?? 20_000,
      random: options.random ?? Math.random,
      clock: this.clock,
      heartbeatMs: options.heartbeatMs ?? 20_000,
      silenceMarginMs: options.silenceMarginMs ?? 10_000,
      offline: options.offline ?? "queue",
      maxQueued: options.maxQueued ?? 100,
    };
    this.refusal = options.refusal ?? fetchStatus;
    const path = new URL(options.url).pathname;
    this.topic = decodeURIComponent(path.slice(path.lastIndexOf("/") + 1));
    this.topics.set(this.topic, { handlers: new Set(), home: true, joinAttempt: 0, joinTimer: null });
  }

  /** The connection's state. */
  get state(): State {
    return this.current;
  }

  /** The last position seen on `topic` (topics with history). */
  position(topic: string): Position | undefined {
    const position = this.topics.get(topic)?.position;
    return position && { ...position };
  }

  /**
   * Who is in `topic` (default: the URL's), on every server instance: a
   * `$presence` call. Joins and leaves after it come as `join` and `leave`
   * client events, where the server announces them, and the whole list
   * again as a `presence` event when joins and leaves may have been lost.
   */
  async presence(topic: string = this.topic, options: CallOptions = {}): Promise<Presence> {
    return (await this.call("$presence", { topic }, options)) as unknown as Presence;
  }

  /** Listens to one kind of client event; returns the function that stops it. */
  on<K extends keyof ClientEvents>(kind: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(kind);
    if (!set) {
      set = new Set();
      this.listeners.set(kind, set);
    }
    set.add(listener as (event: never) => void);
    return () => set.delete(listener as (event: never) => void);
  }

  /** Opens the connection; from then on it comes back by itself until `close()`. */
  connect(): void {
    if (this.current !== "idle" && this.current !== "stopped") return;
    this.session += 1;
    this.attempt = 0;
    this.open();
  }

  /** Closes the connection for good; queued and pending calls fail. */
  close(): void {
    this.stop(1000, "closed by the client");
  }

  /**
   * Sends a message and resolves with its answer: the reply of a direct
   * method; for a broadcast's acknowledgement, its event's {@link Position}
   * on a topic with history, else `null`. Rejects with a
   * {@link RealtimeError} for an error answer, a {@link TimeoutError}, or a
   * {@link ClosedError}; a `RangeError` for an idempotency key past 64
   * bytes. An `idempotent` call outlives a dropped connection (see
   * {@link CallOptions}).
   */
  call(type: string, data?: Json, options: CallOptions = {}): Promise<Json> {
    const timeoutMs = options.timeoutMs ?? this.options.callTimeoutMs;
    const request: Request = { type };
    if (data !== undefined) request.data = data;
    if (options.topic !== undefined && options.topic !== this.topic) request.topic = options.topic;
    const idempotent = options.idempotent ?? options.idempotencyKey !== undefined;
    return new Promise<Json>((resolve, reject) => {
      if (idempotent) {
        const key = options.idempotencyKey ?? this.idempotencyKey();
        const bytes = new TextEncoder().encode(key).length;
        if (bytes === 0 || bytes > 64) {
          reject(new RangeError(`an idempotency key has 1 to 64 bytes, not ${bytes}`));
          return;
        }
        request.idempotency_key = key;
      }
      const call: Call = {
        request,
        timeoutMs,
        deadline: this.clock.now() + timeoutMs,
        resolve,
        reject,
        timer: null,
        idempotent,
      };
      if (this.current === "stopped") {
        reject(new ClosedError("the client has stopped"));
        return;
      }
      if (this.current === "open") {
        this.send(call);
        return;
      }
      if (this.options.offline === "fail") {
        reject(new ClosedError("not connected"));
        return;
      }
      if (this.queued.length >= this.options.maxQueued) {
        reject(new ClosedError(`not connected, and ${this.options.maxQueued} calls wait already`));
        return;
      }
      this.enqueue(call);
    });
  }

  /**
   * Follows `topic`: `handler` gets each of its events. The URL's topic is
   * followed from the start; any other is `$join`ed, now if connected and
   * again (resuming with `since`) after every reconnect. Returns the
   * function that stops following (`$leave`).
   */
  subscribe(topic: string, handler: EventHandler): () => void {
    let followed = this.topics.get(topic);
    const fresh = !followed;
    if (!followed) {
      followed = { handlers: new Set(), home: false, joinAttempt: 0, joinTimer: null };
      this.topics.set(topic, followed);
    }
    followed.handlers.add(handler);
    if (fresh && this.current === "open") this.join(topic, followed);
    return () => {
      const current = this.topics.get(topic);
      if (!current) return;
      current.handlers.delete(handler);
      if (current.handlers.size === 0 && !current.home) {
        this.topics.delete(topic);
        this.clock.clearTimeout(current.joinTimer);
        if (this.current === "open") {
          this.call("$leave", { topic }).catch((error: Error) => this.emit("error", { error, topic }));
        }
      }
    };
  }

  private emit<K extends keyof ClientEvents>(kind: K, event: ClientEvents[K]): void {
    for (const listener of this.listeners.get(kind) ?? []) {
      try {
        (listener as Listener<K>)(event);
      } catch (error) {
        // An application's listener must not break the client's bookkeeping.
        reportLater(error);
      }
    }
  }

  private setState(state: State): void {
    if (this.current === state) return;
    this.current = state;
    this.emit("state", { state });
  }

  /** The URL to open: the topic's, with `since` when it has a position. */
  private socketUrl(): string {
    const url = new URL(this.options.url);
    const position = this.topics.get(this.topic)?.position;
    if (position) url.searchParams.set("since", `${position.offset}.${position.epoch}`);
    return url.toString();
  }

  private open(): void {
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    const protocols = this.options.token === undefined ? undefined : ["bearer", this.options.token];
    const url = this.socketUrl();
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(url, protocols);
    } catch (error) {
      this.stop(undefined, `cannot open a WebSocket: ${String(error)}`);
      return;
    }
    this.socket = socket;
    let opened = false;
    this.connectTimer = this.clock.setTimeout(() => {
      if (this.socket !== socket || opened) return;
      this.socket = null;
      socket.close();
      this.lost(1006, "the upgrade did not finish in time", false, url);
    }, this.options.callTimeoutMs);
    socket.onopen = () => {
      if (this.socket !== socket) return;
      opened = true;
      this.openedAt = this.clock.now();
      this.clock.clearTimeout(this.connectTimer);
      this.heard();
      for (const [topic, followed] of this.topics) {
        if (followed.home) continue;
        followed.joinAttempt = 0;
        this.join(topic, followed);
      }
      // Behind the `$join`s: the server handles a connection's frames in order.
      for (const call of this.queued.splice(0)) {
        this.clock.clearTimeout(call.timer);
        this.send(call);
      }
      this.setState("open");
    };
    socket.onmessage = (message) => {
      if (this.socket !== socket) return;
      this.heard();
      if (typeof message.data === "string") this.receive(message.data);
    };
    socket.onerror = () => {
      // Once open, a close event follows and says what to do. Before, some
      // implementations (Node 20's) send no close event at all.
      if (this.socket !== socket || opened) return;
      this.socket = null;
      this.lost(1006, "could not connect", false, url);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.lost(event.code, event.reason, opened, url);
    };
  }

  /**
   * The connection ended: fail what was in flight (or queue it again), then
   * stop or retry. `url` is the socket's, asked over HTTP if it never opened.
   */
  private lost(code: number, reason: string, opened: boolean, url: string = this.options.url): void {
    this.clock.clearTimeout(this.watchdogTimer);
    this.clock.clearTimeout(this.connectTimer);
    this.cancelJoinRetries();
    // Only a connection that stayed up starts the backoff over: a server
    // that accepts and closes at once (draining, overloaded) is not hammered.
    if (opened && this.clock.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    const again = this.current !== "stopped" && closeAction(code) === "reconnect";
    const resend: Call[] = [];
    for (const [id, call] of this.pending) {
      this.clock.clearTimeout(call.timer);
      this.pending.delete(id);
      // An idempotent call may have run: its key makes the server answer a
      // second sending as the first instead of running it twice.
      if (again && call.idempotent) resend.push(call);
      else call.reject(new ClosedError("the connection was lost before the answer came"));
    }
    // Ahead of any call made since: they were made first.
    for (const call of resend.reverse()) this.enqueue(call, true);
    if (this.current === "stopped") return;
    if (!again) {
      this.stop(code, reason || `closed by the server with ${code}`);
      return;
    }
    if (opened) this.emit("lost", { code, reason });
    if (!opened) {
      // A refused upgrade looks like 1006 to a WebSocket: ask over HTTP why,
      // with the very URL (and `since`) the socket asked for.
      const httpUrl = url.replace(/^ws/, "http");
      const session = this.session;
      this.refusal(httpUrl, this.options.token).then(
        (status) => {
          if (session !== this.session) return;
          if (status !== undefined && REFUSALS.includes(status)) {
            this.stop(undefined, `the server refused the upgrade: HTTP ${status}`);
          } else {
            this.retry();
          }
        },
        () => {
          if (session === this.session) this.retry();
        },
      );
      return;
    }
    this.retry();
  }

  private retry(): void {
    if (this.current === "stopped") return;
    const delay = backoffDelay(this.attempt, this.options.backoffMinMs, this.options.backoffMaxMs, this.options.random);
    this.attempt += 1;
    this.setState("reconnecting");
    this.retryTimer = this.clock.setTimeout(() => this.open(), delay);
  }

  private stop(code: number | undefined, reason: string): void {
    if (this.current === "stopped") return;
    this.current = "stopped";
    this.session += 1;
    this.clock.clearTimeout(this.retryTimer);
    this.clock.clearTimeout(this.watchdogTimer);
    this.clock.clearTimeout(this.connectTimer);
    this.cancelJoinRetries();
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    for (const [id, call] of this.pending) {
      this.clock.clearTimeout(call.timer);
      call.reject(new ClosedError(reason));
      this.pending.delete(id);
    }
    for (const call of this.queued.splice(0)) {
      this.clock.clearTimeout(call.timer);
      call.reject(new ClosedError(reason));
    }
    // Told last, when the bookkeeping is done.
    this.emit("state", { state: "stopped" });
    this.emit("stopped", code === undefined ? { reason } : { code, reason });
  }

  /** Something came from the server: the watchdog starts over. */
  private heard(): void {
    this.lastHeard = this.clock.now();
    this.clock.clearTimeout(this.watchdogTimer);
    this.watchdogTimer = this.clock.setTimeout(() => this.watch(), this.options.heartbeatMs);
  }

  /** Silence for a heartbeat: ask (`$ping`); silence past the margin: give up. */
  private watch(): void {
    const socket = this.socket;
    if (!socket || this.current !== "open") return;
    const silent = this.clock.now() - this.lastHeard;
    if (silent >= this.options.heartbeatMs + this.options.silenceMarginMs) {
      this.socket = null;
      socket.close(4000, "the server stayed silent");
      this.lost(1006, "the server stayed silent", true);
      return;
    }
    socket.send(JSON.stringify({ type: "$ping", id: this.nextId++ }));
    const left = this.options.heartbeatMs + this.options.silenceMarginMs - silent;
    this.watchdogTimer = this.clock.setTimeout(() => this.watch(), left);
  }

  private join(topic: string, followed: Followed): void {
    const socket = this.socket;
    const data: { [key: string]: Json } = { topic };
    if (followed.position) data.since = { offset: followed.position.offset, epoch: followed.position.epoch };
    const timeoutMs = this.options.callTimeoutMs;
    const join: Call = {
      request: { type: "$join", data },
      timeoutMs,
      deadline: this.clock.now() + timeoutMs,
      resolve: () => {},
      reject: (error) => {
        const still = this.topics.get(topic) === followed;
        if (error instanceof RealtimeError && (error.code === 403 || error.code === 400)) {
          // Forbidden stays forbidden: do not ask again after every reconnect.
          if (still) this.topics.delete(topic);
        } else if (still && socket !== null && this.socket === socket) {
          // A broker that could not subscribe now (503), or a lost answer:
          // without another try the topic stays silent as long as this
          // connection lives, while the application believes it follows it.
          const { backoffMinMs, backoffMaxMs, random } = this.options;
          const delay = backoffDelay(followed.joinAttempt, backoffMinMs, backoffMaxMs, random);
          followed.joinAttempt += 1;
          followed.joinTimer = this.clock.setTimeout(() => {
            followed.joinTimer = null;
            if (this.socket === socket && this.topics.get(topic) === followed) this.join(topic, followed);
          }, delay);
        }
        this.emit("error", { error, topic });
      },
      timer: null,
      idempotent: false,
    };
    this.send(join);
  }

  /** A new connection joins every topic anew; a closed one retries nothing. */
  private cancelJoinRetries(): void {
    for (const followed of this.topics.values()) {
      this.clock.clearTimeout(followed.joinTimer);
      followed.joinTimer = null;
    }
  }

  /** Makes a call wait for the next connection, until its deadline. */
  private enqueue(call: Call, first = false): void {
    call.timer = this.clock.setTimeout(
      () => {
        const at = this.queued.indexOf(call);
        if (at < 0) return;
        this.queued.splice(at, 1);
        call.reject(
          new TimeoutError(`no answer to \`${call.request.type}\` within ${call.timeoutMs} ms (not connected)`),
        );
      },
      Math.max(0, call.deadline - this.clock.now()),
    );
    if (first) this.queued.unshift(call);
    else this.queued.push(call);
  }

  private send(call: Call): void {
    const socket = this.socket;
    if (!socket) {
      call.reject(new ClosedError("not connected"));
      return;
    }
    const id = this.nextId++;
    call.timer = this.clock.setTimeout(
      () => {
        if (this.pending.delete(id)) {
          call.reject(new TimeoutError(`no answer to \`${call.request.type}\` within ${call.timeoutMs} ms`));
        }
      },
      Math.max(1, call.deadline - this.clock.now()),
    );
    this.pending.set(id, call);
    socket.send(JSON.stringify({ ...call.request, id }));
  }

  /** A key for an idempotent call: random enough that two calls never share one. */
  private idempotencyKey(): string {
    // `randomUUID` is missing where pages are served over plain HTTP (it
    // needs a secure context), and in older runtimes.
    const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
    if (typeof crypto?.randomUUID === "function") return crypto.randomUUID();
    let key = "";
    for (let n = 0; n < 32; n++) key += Math.floor(this.options.random() * 16).toString(16);
    return key;
  }

  private receive(text: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      this.emit("error", { error: new Error("the server sent a frame that is not JSON") });
      return;
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
      this.emit("error", { error: new Error("the server sent a frame that is not a JSON object") });
      return;
    }
    // Trusted to follow the protocol past this point; unknown frames fall through.
    const frame = parsed as ServerFrame;
    if ("reply_to" in frame) {
      const id = frame.reply_to;
      const call = typeof id === "number" ? this.pending.get(id) : undefined;
      if (!call || typeof id !== "number") return; // a `$ping`'s, or too late
      this.pending.delete(id);
      this.clock.clearTimeout(call.timer);
      if (frame.error) call.reject(new RealtimeError(frame.error.code, frame.error.message));
      else call.resolve(frame.ok ?? null);
      return;
    }
    if ("error" in frame) {
      this.emit("error", { error: new RealtimeError(frame.error.code, frame.error.message) });
      return;
    }
    const topic = frame.topic;
    if (typeof topic !== "string") return;
    const followed = this.topics.get(topic);
    if ("subscribed" in frame) {
      const live = frame.subscribed;
      if (followed) followed.position = { offset: live.offset, epoch: live.epoch };
      this.emit("subscribed", { topic, ...live });
      return;
    }
    if ("reset" in frame) {
      const reset = frame.reset;
      if (followed) followed.position = { offset: reset.offset, epoch: reset.epoch };
      this.emit("reset", { topic, ...reset });
      return;
    }
    if ("join" in frame) {
      this.emit("join", { topic, user: frame.join.user });
      return;
    }
    if ("leave" in frame) {
      this.emit("leave", { topic, user: frame.leave.user });
      return;
    }
    if ("presence" in frame) {
      this.emit("presence", { topic, presence: frame.presence });
      return;
    }
    if (!("event" in frame) || !followed) return;
    const meta: EventMeta = { topic };
    if (typeof frame.offset === "number") {
      meta.offset = frame.offset;
      if (followed.position) followed.position.offset = frame.offset;
    }
    for (const handler of followed.handlers) handler(frame.event, meta);
  }
}

/**
 * The HTTP status of a plain GET of `url` with the token, if `fetch` exists.
 * In a browser this works for a page of the same origin as the server (the
 * token header needs CORS otherwise); where it fails, the client retries.
 */
async function fetchStatus(url: string, token: string | undefined): Promise<number | undefined> {
  if (typeof fetch !== "function") return undefined;
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(5_000) });
  return response.status;
}

/** Reports an application listener's error as a browser reports one of an event listener. */
function reportLater(error: unknown): void {
  const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
  if (typeof report === "function") {
    report(error);
    return;
  }
  setTimeout(() => {
    throw error;
  }, 0);
}
