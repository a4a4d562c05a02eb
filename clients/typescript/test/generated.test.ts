// The files generated from the chat's handler (`cargo run --example chat --
// generate clients/typescript/generated`): the typed client works against
// the chat, and the AsyncAPI document is valid for the AsyncAPI parser.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { Parser } from "@asyncapi/parser";

import { ChatClient, type ChatEvent, type Line } from "../generated/chat.js";
import { Client, RealtimeError, type Position } from "../src/index.js";
import { assertAck, Chat, until } from "./support.js";

const generated = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../generated");

describe("the generated chat client", () => {
  let chat: Chat;

  before(async () => {
    chat = await Chat.start();
  });

  after(async () => {
    await chat.stop();
  });

  it("calls the chat with typed messages, replies and events", async () => {
    const client = new Client({ url: `ws://127.0.0.1:${chat.port}/ws/typed`, token: "alice" });
    const typed = new ChatClient(client);
    const heard: ChatEvent[] = [];
    typed.onEvent("typed", (event) => heard.push(event));
    client.connect();
    await until("open", () => client.state === "open");
    // Typed `null` by generators before acknowledgements carried a position.
    const ack: Position | null = await typed.say({ text: "typed hello" });
    assertAck(ack);
    await until("the event", () => heard.length === 1);
    assert.equal(heard[0]?.from, "alice");
    const lines: Line[] = await typed.history({ limit: 10 });
    assert.deepEqual(
      lines.map((line) => [line.from, line.text]),
      [["alice", "typed hello"]],
    );
    await assert.rejects(typed.say({ text: "" }), RealtimeError);
    client.close();
  });
});

describe("the AsyncAPI document", () => {
  it("is valid AsyncAPI 3.0", async () => {
    const text = await readFile(path.join(generated, "chat.asyncapi.json"), "utf8");
    const { document, diagnostics } = await new Parser().parse(text);
    const errors = diagnostics.filter((diagnostic) => diagnostic.severity === 0);
    assert.deepEqual(errors, [], "no errors");
    assert.ok(document, "it parses");
    assert.equal(document.version(), "3.0.0");
    const operations = document.operations().all().map((operation) => operation.id());
    assert.deepEqual(operations.sort(), [
      "receive_event",
      "receive_expiring",
      "receive_heartbeat",
      "receive_position",
      "receive_presence",
      "receive_unsubscribed",
      "send_history",
      "send_invite",
      "send_kick",
      "send_say",
    ]);
  });
});
