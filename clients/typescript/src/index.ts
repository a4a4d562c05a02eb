// The client of the realtime protocol (version 1), for browsers and Node 20+:
// calls answered by promises, subscriptions with `$join`, resumption with
// `since`, reconnection with full-jitter backoff, the close-code rules, a
// heartbeat watchdog, a bounded queue for calls made while offline, and
// idempotent calls that are sent again after a reconnect.
// No runtime dependencies.
//
// The public names, re-exported from their modules (see README.md, "Layout").

export type {
  CallOptions,
  ClientEvents,
  ClientOptions,
  Clock,
  EventMeta,
  Json,
  Position,
  Presence,
  State,
  WebSocketConstructor,
  WebSocketLike,
} from "./types.js";
export { ClosedError, RealtimeError, TimeoutError } from "./errors.js";
export { CLOSE_RULES, closeAction, type CloseAction } from "./close.js";
export { backoffDelay } from "./backoff.js";
export { Client } from "./client.js";
