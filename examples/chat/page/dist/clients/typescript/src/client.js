// The Client: the connection's state, opening, losing and retrying it,
// stopping; it puts the calls, the topics and the watchdog together.
import { Backoff, STABLE_MS } from "./backoff.js";
import { badIdempotencyKey, Calls, idempotencyKey, newCall } from "./calls.js";
import { closeAction, probeUrl, refused, TOKEN_EXPIRED } from "./close.js";
import { Emitter } from "./emitter.js";
import { ClosedError, RealtimeError } from "./errors.js";
import { readFrame } from "./frames.js";
import { Watchdog } from "./heartbeat.js";
import { settings } from "./options.js";
import { Topics } from "./topics.js";
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
    options;
    socket = null;
    current = "idle";
    /** Failed connections since the last stable one. */
    backoff;
    events = new Emitter();
    calls;
    topics;
    watchdog;
    retryTimer = null;
    connectTimer = null;
    /** When the current connection opened, to tell a stable one from a flap. */
    openedAt = 0;
    /** Bumped by every `connect()` and `close()`: late answers of an earlier session are ignored. */
    session = 0;
    /** The topic of the URL. */
    topic;
    /** The token the next connection sends: the option's, then each fresh one. */
    token;
    /** A `$refresh` is out. */
    refreshing = false;
    constructor(options) {
        this.options = settings(options);
        this.token = this.options.token;
        const { clock, backoffMinMs, backoffMaxMs, random } = this.options;
        const bounds = { minMs: backoffMinMs, maxMs: backoffMaxMs, random };
        this.backoff = new Backoff(bounds);
        this.calls = new Calls(clock, () => this.socket);
        this.watchdog = new Watchdog(clock, this.options.heartbeatMs, this.options.silenceMarginMs, {
            socket: () => (this.current === "open" ? this.socket : null),
            ping: (socket) => this.calls.ping(socket),
            silent: (socket) => {
                this.socket = null;
                socket.close(4000, "the server stayed silent");
                this.lost(1006, "the server stayed silent", true);
            },
        });
        const path = new URL(options.url).pathname;
        this.topic = decodeURIComponent(path.slice(path.lastIndexOf("/") + 1));
        this.topics = new Topics(this.topic, {
            clock,
            callTimeoutMs: this.options.callTimeoutMs,
            backoff: bounds,
            events: this.events,
            socket: () => this.socket,
            open: () => this.current === "open",
            send: (call) => this.calls.send(call),
            call: (type, data) => this.call(type, data),
        });
    }
    /** The connection's state. */
    get state() {
        return this.current;
    }
    /** The last position seen on `topic` (topics with history). */
    position(topic) {
        return this.topics.position(topic);
    }
    /**
     * Who is in `topic` (default: the URL's), on every server instance: a
     * `$presence` call. Joins and leaves after it come as `join` and `leave`
     * client events, where the server announces them, and the whole list
     * again as a `presence` event when joins and leaves may have been lost.
     */
    async presence(topic = this.topic, options = {}) {
        return (await this.call("$presence", { topic }, options));
    }
    /** Listens to one kind of client event; returns the function that stops it. */
    on(kind, listener) {
        return this.events.on(kind, listener);
    }
    /** Opens the connection; from then on it comes back by itself until `close()`. */
    connect() {
        if (this.current !== "idle" && this.current !== "stopped")
            return;
        this.session += 1;
        this.backoff.reset();
        this.open();
    }
    /** Closes the connection for good; queued and pending calls fail. */
    close() {
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
    call(type, data, options = {}) {
        const timeoutMs = options.timeoutMs ?? this.options.callTimeoutMs;
        const request = { type };
        if (data !== undefined)
            request.data = data;
        if (options.topic !== undefined && options.topic !== this.topic)
            request.topic = options.topic;
        const idempotent = options.idempotent ?? options.idempotencyKey !== undefined;
        return new Promise((resolve, reject) => {
            if (idempotent) {
                const key = options.idempotencyKey ?? idempotencyKey(this.options.random);
                const bad = badIdempotencyKey(key);
                if (bad) {
                    reject(bad);
                    return;
                }
                request.idempotency_key = key;
            }
            const call = newCall(this.options.clock, request, timeoutMs, idempotent, resolve, reject);
            if (this.current === "stopped") {
                reject(new ClosedError("the client has stopped"));
                return;
            }
            if (this.current === "open") {
                this.calls.send(call);
                return;
            }
            if (this.options.offline === "fail") {
                reject(new ClosedError("not connected"));
                return;
            }
            if (this.calls.waiting >= this.options.maxQueued) {
                reject(new ClosedError(`not connected, and ${this.options.maxQueued} calls wait already`));
                return;
            }
            this.calls.enqueue(call);
        });
    }
    /**
     * Follows `topic`: `handler` gets each of its events. The URL's topic is
     * followed from the start; any other is `$join`ed, now if connected and
     * again (resuming with `since`) after every reconnect. Returns the
     * function that stops following (`$leave`).
     */
    subscribe(topic, handler) {
        this.topics.follow(topic, handler);
        return () => this.topics.unfollow(topic, handler);
    }
    setState(state) {
        if (this.current === state)
            return;
        this.current = state;
        this.events.emit("state", { state });
    }
    open() {
        const { clock } = this.options;
        this.setState(this.backoff.attempt === 0 ? "connecting" : "reconnecting");
        const protocols = this.token === undefined ? undefined : ["bearer", this.token];
        const url = this.topics.socketUrl(this.options.url);
        let socket;
        try {
            socket = new this.options.WebSocket(url, protocols);
        }
        catch (error) {
            this.stop(undefined, `cannot open a WebSocket: ${String(error)}`);
            return;
        }
        this.socket = socket;
        let opened = false;
        this.connectTimer = clock.setTimeout(() => {
            if (this.socket !== socket || opened)
                return;
            this.socket = null;
            socket.close();
            this.lost(1006, "the upgrade did not finish in time", false, url);
        }, this.options.callTimeoutMs);
        socket.onopen = () => {
            if (this.socket !== socket)
                return;
            opened = true;
            this.openedAt = clock.now();
            clock.clearTimeout(this.connectTimer);
            this.watchdog.heard();
            this.topics.joinAll();
            // Behind the `$join`s: the server handles a connection's frames in order.
            this.calls.flush();
            this.setState("open");
        };
        socket.onmessage = (message) => {
            if (this.socket !== socket)
                return;
            this.watchdog.heard();
            if (typeof message.data === "string")
                this.receive(message.data);
        };
        socket.onerror = () => {
            // Once open, a close event follows and says what to do. Before, some
            // implementations (Node 20's) send no close event at all.
            if (this.socket !== socket || opened)
                return;
            this.socket = null;
            this.lost(1006, "could not connect", false, url);
        };
        socket.onclose = (event) => {
            if (this.socket !== socket)
                return;
            this.socket = null;
            this.lost(event.code, event.reason, opened, url);
        };
    }
    /**
     * The connection ended: fail what was in flight (or queue it again), then
     * stop or retry. `url` is the socket's, asked over HTTP if it never opened.
     */
    lost(code, reason, opened, url = this.options.url) {
        const { clock } = this.options;
        this.watchdog.stop();
        clock.clearTimeout(this.connectTimer);
        this.topics.cancelJoinRetries();
        // Only a connection that stayed up starts the backoff over: a server
        // that accepts and closes at once (draining, overloaded) is not hammered.
        if (opened && clock.now() - this.openedAt >= STABLE_MS)
            this.backoff.reset();
        const getToken = this.options.getToken;
        const expired = code === TOKEN_EXPIRED && getToken !== undefined;
        const again = this.current !== "stopped" && (expired || closeAction(code) === "reconnect");
        this.calls.lost(again);
        if (this.current === "stopped")
            return;
        if (!again) {
            this.stop(code, reason || `closed by the server with ${code}`);
            return;
        }
        if (opened)
            this.events.emit("lost", { code, reason });
        if (expired) {
            // The old token would be refused: a fresh one first.
            const session = this.session;
            this.setState("reconnecting");
            this.freshToken(getToken).then((token) => {
                if (session !== this.session)
                    return;
                this.token = token;
                this.retry();
            }, (error) => {
                if (session === this.session)
                    this.stop(code, `the token expired, and getToken failed: ${String(error)}`);
            });
            return;
        }
        if (!opened) {
            // A refused upgrade looks like 1006 to a WebSocket: ask over HTTP why,
            // with the very URL (and `since`) the socket asked for.
            const session = this.session;
            this.options.refusal(probeUrl(url), this.token).then((status) => {
                if (session !== this.session)
                    return;
                if (refused(status)) {
                    this.stop(undefined, `the server refused the upgrade: HTTP ${status}`);
                }
                else {
                    this.retry();
                }
            }, () => {
                if (session === this.session)
                    this.retry();
            });
            return;
        }
        this.retry();
    }
    retry() {
        if (this.current === "stopped")
            return;
        const delay = this.backoff.next();
        this.setState("reconnecting");
        this.retryTimer = this.options.clock.setTimeout(() => this.open(), delay);
    }
    stop(code, reason) {
        if (this.current === "stopped")
            return;
        const { clock } = this.options;
        this.current = "stopped";
        this.session += 1;
        clock.clearTimeout(this.retryTimer);
        this.watchdog.stop();
        clock.clearTimeout(this.connectTimer);
        this.topics.cancelJoinRetries();
        const socket = this.socket;
        this.socket = null;
        if (socket)
            socket.close(1000);
        this.calls.fail(reason);
        // Told last, when the bookkeeping is done.
        this.events.emit("state", { state: "stopped" });
        this.events.emit("stopped", code === undefined ? { reason } : { code, reason });
    }
    /** A fresh token from `getToken`, which may throw or answer a promise. */
    async freshToken(getToken) {
        return await getToken();
    }
    /**
     * The server says the token runs out soon: send a fresh one with
     * `$refresh`. Without `getToken` nothing is done, and the server closes
     * with 3000 at the expiry.
     */
    refresh() {
        const getToken = this.options.getToken;
        // One refresh at a time: a notice that comes while one is out is its.
        if (getToken === undefined || this.refreshing)
            return;
        this.refreshing = true;
        const session = this.session;
        this.freshToken(getToken)
            .then(async (token) => {
            if (session !== this.session)
                return;
            const answer = (await this.call("$refresh", { token }));
            // Sent with the next connection too, should this one drop.
            this.token = token;
            this.events.emit("refreshed", { expiresIn: answer?.expires_in ?? null });
        })
            .catch((error) => {
            if (session !== this.session)
                return;
            const failed = error instanceof Error ? error : new Error(String(error));
            this.events.emit("error", { error: failed });
        })
            .finally(() => {
            this.refreshing = false;
        });
    }
    /** A text frame of the server: an answer, an error, or a frame about a topic. */
    receive(text) {
        const frame = readFrame(text);
        if (frame instanceof Error) {
            this.events.emit("error", { error: frame });
            return;
        }
        if ("heartbeat" in frame) {
            // Answered with a `$ping` that has no id: a sign of life the server
            // does not answer.
            this.socket?.send(JSON.stringify({ type: "$ping" }));
            return;
        }
        if ("expiring" in frame) {
            this.refresh();
            return;
        }
        if ("reply_to" in frame) {
            this.calls.answer(frame);
            return;
        }
        if ("error" in frame) {
            this.events.emit("error", { error: new RealtimeError(frame.error.code, frame.error.message) });
            return;
        }
        this.topics.receive(frame);
    }
}
