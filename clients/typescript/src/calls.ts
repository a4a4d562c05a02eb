// Calls until they are answered: sent and pending an answer, or queued for
// the next connection; their timeouts; idempotency keys, and sending an
// idempotent call again after a dropped connection.

import { ClosedError, RealtimeError, TimeoutError } from "./errors.js";
import { encodeRequest, type ReplyFrame, type Request } from "./frames.js";
import type { Clock, Json, WebSocketLike } from "./types.js";

/** A call until it is answered: sent and pending, or queued for a connection. */
export interface Call {
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

/** A call made now: its timeout starts running. */
export function newCall(
  clock: Clock,
  request: Request,
  timeoutMs: number,
  idempotent: boolean,
  resolve: (value: Json) => void,
  reject: (error: Error) => void,
): Call {
  return { request, timeoutMs, deadline: clock.now() + timeoutMs, resolve, reject, timer: null, idempotent };
}

/** A key for an idempotent call: random enough that two calls never share one. */
export function idempotencyKey(random: () => number): string {
  // `randomUUID` is missing where pages are served over plain HTTP (it
  // needs a secure context), and in older runtimes.
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (typeof crypto?.randomUUID === "function") return crypto.randomUUID();
  let key = "";
  for (let n = 0; n < 32; n++) key += Math.floor(random() * 16).toString(16);
  return key;
}

/** Why the server would refuse `key` (1 to 64 bytes of UTF-8), if it would. */
export function badIdempotencyKey(key: string): RangeError | undefined {
  const bytes = new TextEncoder().encode(key).length;
  if (bytes === 0 || bytes > 64) return new RangeError(`an idempotency key has 1 to 64 bytes, not ${bytes}`);
  return undefined;
}

/** The calls of one client: those sent and waiting for their answer, and those waiting for a connection. */
export class Calls {
  /** Calls and `$ping`s share the ids: a `$ping`'s answer matches no pending call. */
  private nextId = 1;
  private readonly pending = new Map<number, Call>();
  private readonly queued: Call[] = [];

  constructor(
    private readonly clock: Clock,
    /** The client's socket, or null between connections. */
    private readonly socket: () => WebSocketLike | null,
  ) {}

  /** How many calls wait for a connection. */
  get waiting(): number {
    return this.queued.length;
  }

  /** Sends a call on the socket; without one, it fails. */
  send(call: Call): void {
    const socket = this.socket();
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
    socket.send(encodeRequest(call.request, id));
  }

  /** Asks the server for a sign of life; nothing waits for the answer. */
  ping(socket: WebSocketLike): void {
    socket.send(encodeRequest({ type: "$ping" }, this.nextId++));
  }

  /** Makes a call wait for the next connection, until its deadline. */
  enqueue(call: Call, first = false): void {
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

  /** A connection opened: sends the queued calls, in their order. */
  flush(): void {
    for (const call of this.queued.splice(0)) {
      this.clock.clearTimeout(call.timer);
      this.send(call);
    }
  }

  /** Settles the call an answer names; an answer to a `$ping`, or one too late, is dropped. */
  answer(frame: ReplyFrame): void {
    const id = frame.reply_to;
    const call = typeof id === "number" ? this.pending.get(id) : undefined;
    if (!call || typeof id !== "number") return; // a `$ping`'s, or too late
    this.pending.delete(id);
    this.clock.clearTimeout(call.timer);
    if (frame.error) call.reject(new RealtimeError(frame.error.code, frame.error.message));
    else call.resolve(frame.ok ?? null);
  }

  /**
   * The connection was lost before the pending calls were answered. They
   * fail, but for the idempotent ones when the client reconnects (`again`):
   * those wait for the next connection.
   */
  lost(again: boolean): void {
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
  }

  /** The client stopped: every call fails with `reason`. */
  fail(reason: string): void {
    for (const [id, call] of this.pending) {
      this.clock.clearTimeout(call.timer);
      call.reject(new ClosedError(reason));
      this.pending.delete(id);
    }
    for (const call of this.queued.splice(0)) {
      this.clock.clearTimeout(call.timer);
      call.reject(new ClosedError(reason));
    }
  }
}
