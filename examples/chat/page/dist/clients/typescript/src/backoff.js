// Full-jitter exponential backoff, for reconnecting and for `$join` retries.
/**
 * Full-jitter exponential backoff: a random wait between 0 and
 * `min(max, min * 2^attempt)` milliseconds.
 */
export function backoffDelay(attempt, minMs, maxMs, random) {
    const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return random() * ceiling;
}
/** How long a connection must stay up before the backoff starts over. */
export const STABLE_MS = 5_000;
/** One sequence of tries: each failure waits longer, up to the bound, until `reset`. */
export class Backoff {
    bounds;
    tries = 0;
    constructor(bounds) {
        this.bounds = bounds;
    }
    /** Failed tries since the last reset. */
    get attempt() {
        return this.tries;
    }
    /** The wait before the next try; counts one more failure. */
    next() {
        const delay = backoffDelay(this.tries, this.bounds.minMs, this.bounds.maxMs, this.bounds.random);
        this.tries += 1;
        return delay;
    }
    reset() {
        this.tries = 0;
    }
}
