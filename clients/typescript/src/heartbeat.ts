// The heartbeat watchdog: a connection that stays silent is asked (`$ping`),
// then given up, since a half-open TCP connection may never tell.

import type { Clock, WebSocketLike } from "./types.js";

/** What the watchdog watches, and what it does about silence. */
export interface Watched {
  /** The socket to watch: the open one, or null. */
  socket(): WebSocketLike | null;
  /** Asks the server for a sign of life. */
  ping(socket: WebSocketLike): void;
  /** Gives the silent socket up. */
  silent(socket: WebSocketLike): void;
}

/** Silence for `heartbeatMs`: a `$ping`; silence past `marginMs` more: the socket is given up. */
export class Watchdog {
  private lastHeard = 0;
  private timer: unknown = null;

  constructor(
    private readonly clock: Clock,
    private readonly heartbeatMs: number,
    private readonly marginMs: number,
    private readonly watched: Watched,
  ) {}

  /** Something came from the server: the watchdog starts over. */
  heard(): void {
    this.lastHeard = this.clock.now();
    this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => this.watch(), this.heartbeatMs);
  }

  stop(): void {
    this.clock.clearTimeout(this.timer);
  }

  /** Silence for a heartbeat: ask (`$ping`); silence past the margin: give up. */
  private watch(): void {
    const socket = this.watched.socket();
    if (!socket) return;
    const silent = this.clock.now() - this.lastHeard;
    if (silent >= this.heartbeatMs + this.marginMs) {
      this.watched.silent(socket);
      return;
    }
    this.watched.ping(socket);
    const left = this.heartbeatMs + this.marginMs - silent;
    this.timer = this.clock.setTimeout(() => this.watch(), left);
  }
}
