// The protocol's frames (realtime/docs/protocol.md): the request the client
// sends, and one union of every frame a server sends, read in one place.

import type { Json, Position, Presence } from "./types.js";

/** What the client sends, but for the `id` each sending gets. */
export interface Request {
  type: string;
  data?: Json;
  topic?: string;
  idempotency_key?: string;
}

/** A request's frame: the request with the id its answer will name. */
export function encodeRequest(request: Request, id: number): string {
  return JSON.stringify({ ...request, id });
}

/** What an error says: `{"code": 400, "message": "..."}`. */
export interface ErrorBody {
  code: number;
  message: string;
}

/** The answer to a request: its `ok` value, or its `error`. */
export interface ReplyFrame {
  reply_to: number | string;
  ok?: Json;
  error?: ErrorBody;
}

/** An error that answers no request. */
export interface ErrorFrame {
  error: ErrorBody;
}

/** An event of a topic; `offset` on a topic with history. */
export interface EventFrame {
  topic: string;
  event: Json;
  offset?: number;
}

/**
 * A subscription is live; `recovered` when it resumed from `since`. A
 * position on a topic with history; none when the server subscribed the
 * connection to a topic without (`Service::subscribe_user`).
 */
export interface SubscribedFrame {
  topic: string;
  subscribed: { offset?: number; epoch?: string; recovered?: boolean };
}

/** The server took the connection out of the topic (`Service::unsubscribe_user`). */
export interface UnsubscribedFrame {
  topic: string;
  unsubscribed: Record<string, never>;
}

/** Events of a topic were lost; the subscription goes on from here. */
export interface ResetFrame {
  topic: string;
  reset: Position;
}

/** A user's first connection subscribed to the topic. */
export interface JoinFrame {
  topic: string;
  join: { user: Json };
}

/** A user's last connection left the topic. */
export interface LeaveFrame {
  topic: string;
  leave: { user: Json };
}

/** The whole list of who is in the topic. */
export interface PresenceFrame {
  topic: string;
  presence: Presence;
}

/** The connection's token runs out in `expires_in` seconds. */
export interface ExpiringFrame {
  expiring: { expires_in: number };
}

/** The server's heartbeat, sent as text because the client asks (`?heartbeat=text`). */
export interface HeartbeatFrame {
  heartbeat: Record<string, never>;
}

/** The frames a server sends (realtime/docs/protocol.md, "Server to client"). */
export type ServerFrame =
  | HeartbeatFrame
  | ReplyFrame
  | ErrorFrame
  | ExpiringFrame
  | EventFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | ResetFrame
  | JoinFrame
  | LeaveFrame
  | PresenceFrame;

/** The frames about a topic: all but answers and errors. */
export type TopicFrame = Exclude<ServerFrame, HeartbeatFrame | ReplyFrame | ErrorFrame | ExpiringFrame>;

/**
 * Reads a text frame of the server: the frame, or the error to report when
 * it is not a JSON object.
 */
export function readFrame(text: string): ServerFrame | Error {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return new Error("the server sent a frame that is not JSON");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return new Error("the server sent a frame that is not a JSON object");
  }
  // Trusted to follow the protocol past this point; unknown frames fall through.
  return parsed as ServerFrame;
}
