// The client's events (`Client.on`), and why a listener's error does not
// reach the client.

import type { ClientEvents, Listener } from "./types.js";

/** Listeners by kind of event. */
export class Emitter {
  private readonly listeners = new Map<keyof ClientEvents, Set<(event: never) => void>>();

  /** Listens to one kind of client event; returns the function that stops it. */
  on<K extends keyof ClientEvents>(kind: K, listener: Listener<K>): () => void {
    let set = this.listeners.get(kind);
    if (!set) {
      set = new Set();
      this.listeners.set(kind, set);
    }
    set.add(listener as (event: never) => void);
    return () => set.delete(listener as (event: never) => void);
  }

  emit<K extends keyof ClientEvents>(kind: K, event: ClientEvents[K]): void {
    for (const listener of this.listeners.get(kind) ?? []) {
      try {
        (listener as Listener<K>)(event);
      } catch (error) {
        // An application's listener must not break the client's bookkeeping.
        reportLater(error);
      }
    }
  }
}

/** Reports an application listener's error as a browser reports one of an event listener. */
function reportLater(error: unknown): void {
  const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
  if (typeof report === "function") {
    report(error);
    return;
  }
  setTimeout(() => {
    throw error;
  }, 0);
}
