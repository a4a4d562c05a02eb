// The client's options with their defaults filled in.
import { fetchStatus } from "./close.js";
/** The system's timers. */
const systemClock = {
    now: () => Date.now(),
    setTimeout: (callback, ms) => setTimeout(callback, ms),
    clearTimeout: (handle) => clearTimeout(handle),
};
/** The options with their defaults; throws when there is no WebSocket to use. */
export function settings(options) {
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocketImpl) {
        throw new Error("no WebSocket constructor: pass `WebSocket`, or run Node with --experimental-websocket");
    }
    return {
        url: options.url,
        token: options.token,
        getToken: options.getToken,
        WebSocket: WebSocketImpl,
        callTimeoutMs: options.callTimeoutMs ?? 10_000,
        backoffMinMs: options.backoffMinMs ?? 500,
        backoffMaxMs: options.backoffMaxMs ?? 20_000,
        random: options.random ?? Math.random,
        clock: options.clock ?? systemClock,
        heartbeatMs: options.heartbeatMs ?? 30_000,
        silenceMarginMs: options.silenceMarginMs ?? 10_000,
        offline: options.offline ?? "queue",
        maxQueued: options.maxQueued ?? 100,
        refusal: options.refusal ?? fetchStatus,
    };
}
