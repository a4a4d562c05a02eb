// The protocol's frames (realtime/docs/protocol.md): the request the client
// sends, and one union of every frame a server sends, read in one place.
/** A request's frame: the request with the id its answer will name. */
export function encodeRequest(request, id) {
    return JSON.stringify({ ...request, id });
}
/**
 * Reads a text frame of the server: the frame, or the error to report when
 * it is not a JSON object.
 */
export function readFrame(text) {
    let parsed;
    try {
        parsed = JSON.parse(text);
    }
    catch {
        return new Error("the server sent a frame that is not JSON");
    }
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        return new Error("the server sent a frame that is not a JSON object");
    }
    // Trusted to follow the protocol past this point; unknown frames fall through.
    return parsed;
}
