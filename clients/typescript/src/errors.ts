// The errors a call rejects with.

/** An error answer of the server: `{"error": {"code": 400, "message": "..."}}`. */
export class RealtimeError extends Error {
  override readonly name = "RealtimeError";
  constructor(
    /** The code (400, 403, 429, 500, 503, or the handler's own). */
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** A call that got no answer within its timeout. */
export class TimeoutError extends Error {
  override readonly name = "TimeoutError";
}

/**
 * A call that cannot be answered: the client stopped, the connection was
 * lost after the call was sent (it may or may not have run), or the client
 * is offline and fails calls at once.
 */
export class ClosedError extends Error {
  override readonly name = "ClosedError";
}
