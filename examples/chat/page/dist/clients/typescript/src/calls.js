// Calls until they are answered: sent and pending an answer, or queued for
// the next connection; their timeouts; idempotency keys, and sending an
// idempotent call again after a dropped connection.
import { ClosedError, RealtimeError, TimeoutError } from "./errors.js";
import { encodeRequest } from "./frames.js";
/** A call made now: its timeout starts running. */
export function newCall(clock, request, timeoutMs, idempotent, resolve, reject) {
    return { request, timeoutMs, deadline: clock.now() + timeoutMs, resolve, reject, timer: null, idempotent };
}
/** A key for an idempotent call: random enough that two calls never share one. */
export function idempotencyKey(random) {
    // `randomUUID` is missing where pages are served over plain HTTP (it
    // needs a secure context), and in older runtimes.
    const crypto = globalThis.crypto;
    if (typeof crypto?.randomUUID === "function")
        return crypto.randomUUID();
    let key = "";
    for (let n = 0; n < 32; n++)
        key += Math.floor(random() * 16).toString(16);
    return key;
}
/** Why the server would refuse `key` (1 to 64 bytes of UTF-8), if it would. */
export function badIdempotencyKey(key) {
    const bytes = new TextEncoder().encode(key).length;
    if (bytes === 0 || bytes > 64)
        return new RangeError(`an idempotency key has 1 to 64 bytes, not ${bytes}`);
    return undefined;
}
/** The calls of one client: those sent and waiting for their answer, and those waiting for a connection. */
export class Calls {
    clock;
    socket;
    /** Calls and `$ping`s share the ids: a `$ping`'s answer matches no pending call. */
    nextId = 1;
    pending = new Map();
    queued = [];
    constructor(clock, 
    /** The client's socket, or null between connections. */
    socket) {
        this.clock = clock;
        this.socket = socket;
    }
    /** How many calls wait for a connection. */
    get waiting() {
        return this.queued.length;
    }
    /** Sends a call on the socket; without one, it fails. */
    send(call) {
        const socket = this.socket();
        if (!socket) {
            call.reject(new ClosedError("not connected"));
            return;
        }
        const id = this.nextId++;
        call.timer = this.clock.setTimeout(() => {
            if (this.pending.delete(id)) {
                call.reject(new TimeoutError(`no answer to \`${call.request.type}\` within ${call.timeoutMs} ms`));
            }
        }, Math.max(1, call.deadline - this.clock.now()));
        this.pending.set(id, call);
        socket.send(encodeRequest(call.request, id));
    }
    /** Asks the server for a sign of life; nothing waits for the answer. */
    ping(socket) {
        socket.send(encodeRequest({ type: "$ping" }, this.nextId++));
    }
    /** Makes a call wait for the next connection, until its deadline. */
    enqueue(call, first = false) {
        call.timer = this.clock.setTimeout(() => {
            const at = this.queued.indexOf(call);
            if (at < 0)
                return;
            this.queued.splice(at, 1);
            call.reject(new TimeoutError(`no answer to \`${call.request.type}\` within ${call.timeoutMs} ms (not connected)`));
        }, Math.max(0, call.deadline - this.clock.now()));
        if (first)
            this.queued.unshift(call);
        else
            this.queued.push(call);
    }
    /** A connection opened: sends the queued calls, in their order. */
    flush() {
        for (const call of this.queued.splice(0)) {
            this.clock.clearTimeout(call.timer);
            this.send(call);
        }
    }
    /** Settles the call an answer names; an answer to a `$ping`, or one too late, is dropped. */
    answer(frame) {
        const id = frame.reply_to;
        const call = typeof id === "number" ? this.pending.get(id) : undefined;
        if (!call || typeof id !== "number")
            return; // a `$ping`'s, or too late
        this.pending.delete(id);
        this.clock.clearTimeout(call.timer);
        if (frame.error)
            call.reject(new RealtimeError(frame.error.code, frame.error.message));
        else
            call.resolve(frame.ok ?? null);
    }
    /**
     * The connection was lost before the pending calls were answered. They
     * fail, but for the idempotent ones when the client reconnects (`again`):
     * those wait for the next connection.
     */
    lost(again) {
        const resend = [];
        for (const [id, call] of this.pending) {
            this.clock.clearTimeout(call.timer);
            this.pending.delete(id);
            // An idempotent call may have run: its key makes the server answer a
            // second sending as the first instead of running it twice.
            if (again && call.idempotent)
                resend.push(call);
            else
                call.reject(new ClosedError("the connection was lost before the answer came"));
        }
        // Ahead of any call made since: they were made first.
        for (const call of resend.reverse())
            this.enqueue(call, true);
    }
    /** The client stopped: every call fails with `reason`. */
    fail(reason) {
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
