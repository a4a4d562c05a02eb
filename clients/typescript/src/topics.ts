// The topics a client follows: the URL's, and those it `$join`s (again
// after every reconnect, resuming with `since`, and retried with backoff on
// the same connection when a `$join` fails for now); where each stands;
// `$leave`; the topics the server subscribes the connection to, adopted as
// the client's own; and the frames about them.

import { Backoff, type BackoffBounds } from "./backoff.js";
import { newCall } from "./calls.js";
import type { Call } from "./calls.js";
import type { Emitter } from "./emitter.js";
import { RealtimeError } from "./errors.js";
import type { TopicFrame } from "./frames.js";
import type { Clock, EventHandler, EventMeta, Json, Position, WebSocketLike } from "./types.js";

/** One topic this client follows. */
interface Followed {
  handlers: Set<EventHandler>;
  position?: Position;
  /** The URL's topic, followed without `$join`. */
  home: boolean;
  /** Failed `$join`s on the current connection. */
  joins: Backoff;
  joinTimer: unknown;
}

/** What the topics need of their client. */
export interface TopicsHost {
  readonly clock: Clock;
  /** How long a `$join` waits for its answer. */
  readonly callTimeoutMs: number;
  /** The bounds of the `$join` retries' backoff. */
  readonly backoff: BackoffBounds;
  readonly events: Emitter;
  /** The client's socket, or null between connections. */
  socket(): WebSocketLike | null;
  /** Whether the connection is open: a topic followed now is `$join`ed now, else at the next open. */
  open(): boolean;
  /** Sends a call on the socket. */
  send(call: Call): void;
  /** Makes a call as the application would (`$leave`). */
  call(type: string, data: Json): Promise<Json>;
}

/** The followed topics of one client. */
export class Topics {
  private readonly followed = new Map<string, Followed>();

  constructor(
    /** The URL's topic. */
    private readonly home: string,
    private readonly host: TopicsHost,
  ) {
    this.followed.set(home, this.entry(true));
  }

  /** The last position seen on `topic` (topics with history), a copy. */
  position(topic: string): Position | undefined {
    const position = this.followed.get(topic)?.position;
    return position && { ...position };
  }

  /** The URL to open: the topic's, with `since` when it has a position. */
  socketUrl(url: string): string {
    const socketUrl = new URL(url);
    // The heartbeat as text, which a page sees (it sees no WebSocket ping):
    // the server's is the watchdog's sign of life, and the watchdog asks
    // only when that does not come.
    socketUrl.searchParams.set("heartbeat", "text");
    const position = this.followed.get(this.home)?.position;
    if (position) socketUrl.searchParams.set("since", `${position.offset}.${position.epoch}`);
    return socketUrl.toString();
  }

  /** Adds `handler` to `topic`; a topic not followed yet is `$join`ed now if connected. */
  follow(topic: string, handler: EventHandler): void {
    let followed = this.followed.get(topic);
    const fresh = !followed;
    if (!followed) {
      followed = this.entry(false);
      this.followed.set(topic, followed);
    }
    followed.handlers.add(handler);
    if (fresh && this.host.open()) this.join(topic, followed);
  }

  /** Removes `handler`; a topic left with none is given up (`$leave`), but the URL's. */
  unfollow(topic: string, handler: EventHandler): void {
    const current = this.followed.get(topic);
    if (!current) return;
    current.handlers.delete(handler);
    if (current.handlers.size === 0 && !current.home) {
      this.followed.delete(topic);
      this.host.clock.clearTimeout(current.joinTimer);
      if (this.host.open()) {
        this.host.call("$leave", { topic }).catch((error: Error) => this.host.events.emit("error", { error, topic }));
      }
    }
  }

  /** A connection opened: `$join`s every topic but the URL's, each with its backoff anew. */
  joinAll(): void {
    for (const [topic, followed] of this.followed) {
      if (followed.home) continue;
      followed.joins.reset();
      this.join(topic, followed);
    }
  }

  /** A new connection joins every topic anew; a closed one retries nothing. */
  cancelJoinRetries(): void {
    for (const followed of this.followed.values()) {
      this.host.clock.clearTimeout(followed.joinTimer);
      followed.joinTimer = null;
    }
  }

  /** A frame about a topic: positions, handlers, client events. */
  receive(frame: TopicFrame): void {
    const topic = frame.topic;
    if (typeof topic !== "string") return;
    const events = this.host.events;
    const followed = this.followed.get(topic);
    if ("subscribed" in frame) {
      const live = frame.subscribed;
      // Not asked for: the server subscribed this connection, and the topic
      // is followed from now on as if the application had subscribed.
      const adopted = followed ?? this.adopt(topic);
      if (live.offset !== undefined && live.epoch !== undefined) {
        adopted.position = { offset: live.offset, epoch: live.epoch };
      }
      events.emit("subscribed", followed ? { topic, ...live } : { topic, ...live, server: true });
      return;
    }
    if ("unsubscribed" in frame) {
      if (!followed || followed.home) return;
      this.followed.delete(topic);
      this.host.clock.clearTimeout(followed.joinTimer);
      events.emit("unsubscribed", { topic });
      return;
    }
    if ("reset" in frame) {
      const reset = frame.reset;
      if (followed) followed.position = { offset: reset.offset, epoch: reset.epoch };
      events.emit("reset", { topic, ...reset });
      return;
    }
    if ("join" in frame) {
      events.emit("join", { topic, user: frame.join.user });
      return;
    }
    if ("leave" in frame) {
      events.emit("leave", { topic, user: frame.leave.user });
      return;
    }
    if ("presence" in frame) {
      events.emit("presence", { topic, presence: frame.presence });
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

  private adopt(topic: string): Followed {
    const followed = this.entry(false);
    this.followed.set(topic, followed);
    return followed;
  }

  private entry(home: boolean): Followed {
    return { handlers: new Set(), home, joins: new Backoff(this.host.backoff), joinTimer: null };
  }

  private join(topic: string, followed: Followed): void {
    const { clock, callTimeoutMs } = this.host;
    const socket = this.host.socket();
    const data: { [key: string]: Json } = { topic };
    if (followed.position) data.since = { offset: followed.position.offset, epoch: followed.position.epoch };
    const reject = (error: Error): void => {
      const still = this.followed.get(topic) === followed;
      if (error instanceof RealtimeError && (error.code === 403 || error.code === 400)) {
        // Forbidden stays forbidden: do not ask again after every reconnect.
        if (still) this.followed.delete(topic);
      } else if (still && socket !== null && this.host.socket() === socket) {
        // A broker that could not subscribe now (503), or a lost answer:
        // without another try the topic stays silent as long as this
        // connection lives, while the application believes it follows it.
        const delay = followed.joins.next();
        followed.joinTimer = clock.setTimeout(() => {
          followed.joinTimer = null;
          if (this.host.socket() === socket && this.followed.get(topic) === followed) this.join(topic, followed);
        }, delay);
      }
      this.host.events.emit("error", { error, topic });
    };
    this.host.send(newCall(clock, { type: "$join", data }, callTimeoutMs, false, () => {}, reject));
  }
}
