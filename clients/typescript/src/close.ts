// What the client does when a connection ends: the close-code rules, and
// for an upgrade that failed before the socket opened, the HTTP probe that
// asks why.

/** What the client does after the server closed the connection. */
export type CloseAction = "reconnect" | "stop";

/**
 * The close-code rules, in one table. `reconnect`: the server went away or
 * is overloaded, and trying again later works. `stop`: trying again would
 * be refused the same way; the client stops and reports why.
 *
 * | code | meaning | action |
 * | --- | --- | --- |
 * | 1000 | normal close | stop |
 * | 1001 | the server is shutting down | reconnect |
 * | 1002 | protocol error | stop |
 * | 1003 | binary frame | stop |
 * | 1006 | connection lost, no close frame | reconnect |
 * | 1007 | text that is not UTF-8 | stop |
 * | 1008 | policy: flood, or silent past the idle timeout | stop |
 * | 1009 | frame too large | stop |
 * | 1011 | server error | reconnect |
 * | 1012 | service restart | reconnect |
 * | 1013 | try again later (a reader too slow) | reconnect |
 * | 3000 | the token expired | reconnect with a token from `getToken`; stop without it |
 * | 3003 | the server ended this user's sessions | stop |
 * | HTTP 400, 401, 403 on the upgrade | bad topic or `since`, bad token, forbidden topic | stop |
 * | HTTP 426 on the upgrade | the upgrade would be accepted: it failed on the way | reconnect |
 * | HTTP 429, 503, other 5xx on the upgrade | refused for now: overloaded, broker down, shutting down | reconnect |
 * | no HTTP status (network error, no `fetch`) | | reconnect |
 * | any other | | reconnect |
 *
 * The HTTP rows apply to a socket that failed before it opened: a browser's
 * WebSocket hides the status, so the client asks with a plain GET of the
 * same URL (the `refusal` option), which the server answers as it would
 * the upgrade. Only the three refusals that the same request would meet
 * again stop the client.
 */
export const CLOSE_RULES: Readonly<Record<number, CloseAction>> = Object.freeze({
  1000: "stop",
  1001: "reconnect",
  1002: "stop",
  1003: "stop",
  1006: "reconnect",
  1007: "stop",
  1008: "stop",
  1009: "stop",
  1011: "reconnect",
  1012: "reconnect",
  1013: "reconnect",
  3000: "stop",
  3003: "stop",
});

/** The close code of an expired token: reconnecting needs a fresh one. */
export const TOKEN_EXPIRED = 3000;

/** HTTP statuses of a refused upgrade that stop the client: bad request, token, topic. Any other retries. */
const REFUSALS: readonly number[] = [400, 401, 403];

/** The action for a close code (see {@link CLOSE_RULES}). */
export function closeAction(code: number): CloseAction {
  return CLOSE_RULES[code] ?? "reconnect";
}

/** Whether the probe's status is a refusal that the same request would meet again (see {@link CLOSE_RULES}). */
export function refused(status: number | undefined): status is number {
  return status !== undefined && REFUSALS.includes(status);
}

/** The socket's URL over HTTP, for the probe: the very URL (and `since`) the socket asked for. */
export function probeUrl(socketUrl: string): string {
  return socketUrl.replace(/^ws/, "http");
}

/**
 * The HTTP status of a plain GET of `url` with the token, if `fetch` exists.
 * In a browser this works for a page of the same origin as the server (the
 * token header needs CORS otherwise); where it fails, the client retries.
 */
export async function fetchStatus(url: string, token: string | undefined): Promise<number | undefined> {
  if (typeof fetch !== "function") return undefined;
  const headers: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(5_000) });
  return response.status;
}
