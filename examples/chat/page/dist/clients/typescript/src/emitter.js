// The client's events (`Client.on`), and why a listener's error does not
// reach the client.
/** Listeners by kind of event. */
export class Emitter {
    listeners = new Map();
    /** Listens to one kind of client event; returns the function that stops it. */
    on(kind, listener) {
        let set = this.listeners.get(kind);
        if (!set) {
            set = new Set();
            this.listeners.set(kind, set);
        }
        set.add(listener);
        return () => set.delete(listener);
    }
    emit(kind, event) {
        for (const listener of this.listeners.get(kind) ?? []) {
            try {
                listener(event);
            }
            catch (error) {
                // An application's listener must not break the client's bookkeeping.
                reportLater(error);
            }
        }
    }
}
/** Reports an application listener's error as a browser reports one of an event listener. */
function reportLater(error) {
    const report = globalThis.reportError;
    if (typeof report === "function") {
        report(error);
        return;
    }
    setTimeout(() => {
        throw error;
    }, 0);
}
