// The heartbeat watchdog: a connection that stays silent is asked (`$ping`),
// then given up, since a half-open TCP connection may never tell.
/** Silence for `heartbeatMs`: a `$ping`; silence past `marginMs` more: the socket is given up. */
export class Watchdog {
    clock;
    heartbeatMs;
    marginMs;
    watched;
    lastHeard = 0;
    timer = null;
    constructor(clock, heartbeatMs, marginMs, watched) {
        this.clock = clock;
        this.heartbeatMs = heartbeatMs;
        this.marginMs = marginMs;
        this.watched = watched;
    }
    /** Something came from the server: the watchdog starts over. */
    heard() {
        this.lastHeard = this.clock.now();
        this.clock.clearTimeout(this.timer);
        this.timer = this.clock.setTimeout(() => this.watch(), this.heartbeatMs);
    }
    stop() {
        this.clock.clearTimeout(this.timer);
    }
    /** Silence for a heartbeat: ask (`$ping`); silence past the margin: give up. */
    watch() {
        const socket = this.watched.socket();
        if (!socket)
            return;
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
