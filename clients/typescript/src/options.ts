// The client's options with their defaults filled in.

import { fetchStatus } from "./close.js";
import type { ClientOptions, Clock, WebSocketConstructor } from "./types.js";

/** The system's timers. */
const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Every option, the defaults filled in. */
export type Settings = Required<Omit<ClientOptions, "token" | "getToken" | "WebSocket" | "refusal">> & {
  token: string | undefined;
  getToken: (() => string | Promise<string>) | undefined;
  WebSocket: WebSocketConstructor;
  refusal: (httpUrl: string, token: string | undefined) => Promise<number | undefined>;
};

/** The options with their defaults; throws when there is no WebSocket to use. */
export function settings(options: ClientOptions): Settings {
  const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
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
