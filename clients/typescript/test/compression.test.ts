// permessage-deflate against the chat with the clients Node has: its
// built-in WebSocket (undici) and the `ws` package, each offering the
// extension as it does by default, and `ws` with it off. Each sends a long
// `say` (compressed when negotiated: `ws` is told to compress every
// message) and must read the event back, which the server compresses.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { WebSocket as WsSocket } from "ws";

import { Chat, until } from "./support.js";

const ACCEPTED = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/** What any of the sockets is, as the test uses it. */
interface Socket {
  readonly extensions: string;
  send(data: string): void;
  close(): void;
}

const long = "compressed on the wire, this line is far shorter than it looks; ".repeat(8).trim();

async function roundTrip(open: (url: string) => Promise<{ socket: Socket; received: string[] }>, port: number, room: string): Promise<string> {
  const { socket, received } = await open(`ws://127.0.0.1:${port}/ws/${room}?token=node`);
  socket.send(JSON.stringify({ type: "say", data: { text: long }, id: 1 }));
  await until("the long line comes back as an event", () => received.some((frame) => frame.includes(long) && frame.includes('"event"')));
  const extensions = socket.extensions;
  socket.close();
  return extensions;
}

function builtIn(url: string): Promise<{ socket: Socket; received: string[] }> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    const received: string[] = [];
    socket.onmessage = (message) => received.push(String(message.data));
    socket.onopen = () => resolve({ socket, received });
    socket.onerror = () => reject(new Error("the built-in WebSocket failed"));
  });
}

function wsPackage(compress: boolean): (url: string) => Promise<{ socket: Socket; received: string[] }> {
  return (url) =>
    new Promise((resolve, reject) => {
      // threshold 0: every message the client sends is compressed.
      const socket = new WsSocket(url, { perMessageDeflate: compress ? { threshold: 0 } : false });
      const received: string[] = [];
      socket.on("message", (data) => received.push(data.toString()));
      socket.on("open", () => resolve({ socket, received }));
      socket.on("error", reject);
    });
}

describe("permessage-deflate", () => {
  let chat: Chat;

  before(async () => {
    chat = await Chat.start();
  });

  after(async () => {
    await chat.stop();
  });

  it("is negotiated by Node's built-in WebSocket, which reads compressed events", async () => {
    assert.equal(await roundTrip(builtIn, chat.port, "deflate-builtin"), ACCEPTED);
  });

  it("is negotiated by the ws package, which sends compressed frames and reads compressed events", async () => {
    // `ws` names the extensions it negotiated, without their parameters.
    assert.equal(await roundTrip(wsPackage(true), chat.port, "deflate-ws"), "permessage-deflate");
  });

  it("stays off for a client that does not offer it", async () => {
    assert.equal(await roundTrip(wsPackage(false), chat.port, "deflate-off"), "");
  });
});
