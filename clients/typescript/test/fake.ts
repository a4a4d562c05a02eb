// A WebSocket and a clock under the test's hand, for what a real server
// cannot be made to do on cue: refuse an upgrade with a given status,
// answer a `$join` with 503, drop a socket between a call and its answer.

import type { Clock, WebSocketConstructor, WebSocketLike } from "../src/index.js";

/** A frame the client sent, parsed. */
export type Sent = { type: string; id?: number; data?: unknown; topic?: string; idempotency_key?: string };

/** Time that moves only when the test says so. */
export class FakeClock implements Clock {
  private time = 0;
  private nextHandle = 1;
  private readonly timers = new Map<number, { at: number; callback: () => void }>();

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const handle = this.nextHandle++;
    this.timers.set(handle, { at: this.time + ms, callback });
    return handle;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves time on by `ms`, running the timers due in their order, those they set included. */
  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      let next: [number, { at: number; callback: () => void }] | undefined;
      for (const entry of this.timers) {
        if (entry[1].at <= end && (!next || entry[1].at < next[1].at)) next = entry;
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = Math.max(this.time, next[1].at);
      next[1].callback();
    }
    this.time = end;
  }
}

/** One socket the client opened; the test plays the server. */
export class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Sent[] = [];
  closedWith: number | undefined;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {}

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Sent);
  }

  close(code?: number): void {
    this.readyState = 3;
    this.closedWith = code;
  }

  /** The upgrade succeeds. */
  accept(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** The upgrade fails: the WebSocket tells nothing but an error and 1006. */
  refuse(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }

  /** The connection ends, with a close frame's code or none (1006). */
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** A frame from the server. */
  receive(frame: unknown): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The frames sent of one type. */
  frames(type: string): Sent[] {
    return this.sent.filter((frame) => frame.type === type);
  }

  /** Answers the last frame sent of `type`: `{"ok": ...}` or `{"error": ...}`. */
  answer(type: string, answer: { ok: unknown } | { error: { code: number; message: string } }): void {
    const frame = this.frames(type).at(-1);
    if (!frame || frame.id === undefined) throw new Error(`no \`${type}\` with an id was sent`);
    this.receive({ reply_to: frame.id, ...answer });
  }
}

/** A WebSocket constructor that records the sockets it made. */
export function fakeWebSocket(): { WebSocket: WebSocketConstructor; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  const WebSocket = class extends FakeSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  };
  return { WebSocket, sockets };
}

/** Lets promise callbacks (a refusal's answer, a call's settling) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Whether a promise has settled yet, and how, without waiting for it. */
export function track<T>(promise: Promise<T>): { settled: boolean; value?: T; error?: unknown } {
  const state: { settled: boolean; value?: T; error?: unknown } = { settled: false };
  promise.then(
    (value) => {
      state.settled = true;
      state.value = value;
    },
    (error: unknown) => {
      state.settled = true;
      state.error = error;
    },
  );
  return state;
}
