// The client against a fake WebSocket and a fake clock: refusals by HTTP
// status, a `$join` the broker could not serve, a socket that dies between
// a call and its answer, frames the chat example cannot be made to send.

import { describe, it } from "node:test";
import assert from "node:assert/strict";

import {
  Client,
  ClosedError,
  TimeoutError,
  type CallOptions,
  type ClientEvents,
  type ClientOptions,
  type Json,
  type Position,
} from "../src/index.js";
import { FakeClock, fakeWebSocket, settle, track, type FakeSocket } from "./fake.js";

const URL_ = "ws://chat.test/ws/lobby";

function setup(options: Partial<ClientOptions> = {}) {
  const clock = new FakeClock();
  const { WebSocket, sockets } = fakeWebSocket();
  const probes: string[] = [];
  const client = new Client({
    url: URL_,
    token: "alice",
    WebSocket,
    clock,
    // Every backoff waits half its ceiling: 50 ms, 100 ms, 200 ms...
    random: () => 0.5,
    backoffMinMs: 100,
    backoffMaxMs: 1000,
    callTimeoutMs: 5000,
    refusal: async (url) => {
      probes.push(url);
      return 426;
    },
    ...options,
  });
  const errors: ClientEvents["error"][] = [];
  client.on("error", (event) => errors.push(event));
  const socket = (n: number): FakeSocket => {
    const found = sockets[n];
    if (!found) throw new Error(`no socket #${n}; ${sockets.length} opened`);
    return found;
  };
  return { client, clock, sockets, socket, probes, errors };
}

describe("refused upgrades", () => {
  const retried: [string, () => Promise<number | undefined>][] = [
    ["426 (it would be accepted)", async () => 426],
    ["503 (broker down, full, draining)", async () => 503],
    ["429", async () => 429],
    ["500", async () => 500],
    ["no status", async () => undefined],
    ["a network error", async () => Promise.reject(new TypeError("fetch failed"))],
  ];
  for (const [what, refusal] of retried) {
    it(`retries after ${what}, and opens once the server accepts`, async () => {
      const { client, clock, sockets, socket } = setup({ refusal });
      const stopped: ClientEvents["stopped"][] = [];
      client.on("stopped", (event) => stopped.push(event));
      client.connect();
      socket(0).refuse();
      await settle();
      assert.equal(client.state, "reconnecting");
      clock.advance(1000);
      assert.equal(sockets.length, 2);
      socket(1).refuse();
      await settle();
      clock.advance(1000);
      socket(2).accept();
      assert.equal(client.state, "open");
      assert.deepEqual(stopped, []);
      client.close();
    });
  }

  for (const status of [400, 401, 403]) {
    it(`stops after HTTP ${status}: the same request would meet it again`, async () => {
      const { client, clock, sockets, socket } = setup({ refusal: async () => status });
      const stopped: ClientEvents["stopped"][] = [];
      client.on("stopped", (event) => stopped.push(event));
      client.connect();
      socket(0).refuse();
      await settle();
      assert.equal(client.state, "stopped");
      assert.match(stopped[0]?.reason ?? "", new RegExp(`HTTP ${status}`));
      clock.advance(60_000);
      assert.equal(sockets.length, 1, "no other try");
    });
  }

  it("asks over HTTP with the URL the socket asked for, `since` included", async () => {
    const { client, clock, socket, probes } = setup();
    client.connect();
    socket(0).accept();
    socket(0).receive({ topic: "lobby", subscribed: { offset: 5, epoch: "e1" } });
    socket(0).drop(1006);
    clock.advance(1000);
    assert.equal(socket(1).url, `${URL_}?heartbeat=text&since=5.e1`);
    socket(1).refuse();
    await settle();
    assert.deepEqual(probes, ["http://chat.test/ws/lobby?heartbeat=text&since=5.e1"]);
    client.close();
  });
});

describe("$join retries", () => {
  it("joins again after a 503 on the same connection, and the subscription becomes live", () => {
    const { client, clock, sockets, socket, errors } = setup();
    const heard: Json[] = [];
    const live: string[] = [];
    client.on("subscribed", ({ topic }) => live.push(topic));
    client.connect();
    socket(0).accept();
    client.subscribe("side", (event) => heard.push(event));
    assert.equal(socket(0).frames("$join").length, 1);
    socket(0).answer("$join", { error: { code: 503, message: "cannot subscribe to `side` now: broker unavailable" } });
    assert.equal(errors.length, 1, "each failure is told");
    assert.equal(errors[0]?.topic, "side");
    clock.advance(49);
    assert.equal(socket(0).frames("$join").length, 1, "not before the backoff");
    clock.advance(1);
    assert.equal(socket(0).frames("$join").length, 2);
    // A lost answer counts as a failure too.
    clock.advance(5000);
    assert.equal(errors.length, 2);
    assert.ok(errors[1]?.error instanceof TimeoutError);
    clock.advance(100);
    assert.equal(socket(0).frames("$join").length, 3, "the second wait is twice the first");
    socket(0).receive({ topic: "side", subscribed: { offset: 3, epoch: "e1" } });
    socket(0).answer("$join", { ok: null });
    socket(0).receive({ topic: "side", offset: 4, event: { text: "hi" } });
    assert.deepEqual(live, ["side"]);
    assert.deepEqual(heard, [{ text: "hi" }]);
    clock.advance(10_000);
    assert.equal(socket(0).frames("$join").length, 3, "no more once live");
    assert.equal(sockets.length, 1, "no reconnect needed");
    client.close();
  });

  it("stops retrying once the topic is no longer followed", () => {
    const { client, clock, socket } = setup();
    client.connect();
    socket(0).accept();
    const leave = client.subscribe("side", () => {});
    socket(0).answer("$join", { error: { code: 503, message: "broker unavailable" } });
    leave();
    assert.equal(socket(0).frames("$leave").length, 1);
    clock.advance(10_000);
    assert.equal(socket(0).frames("$join").length, 1);
    client.close();
  });

  it("drops a topic refused with 403 or 400, even after a reconnect", () => {
    const { client, clock, socket } = setup();
    client.connect();
    socket(0).accept();
    client.subscribe("admin", () => {});
    socket(0).answer("$join", { error: { code: 403, message: "forbidden topic `admin`" } });
    clock.advance(10_000);
    assert.equal(socket(0).frames("$join").length, 1);
    socket(0).drop(1006);
    clock.advance(1000);
    socket(1).accept();
    assert.equal(socket(1).frames("$join").length, 0);
    client.close();
  });

  it("leaves the retries to the next connection, which starts the attempts over", () => {
    const { client, clock, socket } = setup();
    client.connect();
    socket(0).accept();
    client.subscribe("side", () => {});
    socket(0).answer("$join", { error: { code: 503, message: "broker unavailable" } });
    clock.advance(50);
    socket(0).answer("$join", { error: { code: 503, message: "broker unavailable" } });
    // The next try would be in 100 ms; the connection goes first.
    socket(0).drop(1006);
    assert.equal(socket(0).frames("$join").length, 2);
    clock.advance(50);
    socket(1).accept();
    assert.equal(socket(1).frames("$join").length, 1, "joined at once by the reconnect");
    socket(1).answer("$join", { error: { code: 503, message: "broker unavailable" } });
    clock.advance(100);
    assert.equal(socket(0).frames("$join").length, 2, "nothing more on the old socket");
    assert.equal(socket(1).frames("$join").length, 2, "after 50 ms, as a first retry");
    client.close();
  });
});

describe("idempotent calls", () => {
  it("survive a dropped connection: sent again with the same key after the $joins", async () => {
    const { client, clock, socket } = setup();
    client.connect();
    socket(0).accept();
    client.subscribe("side", () => {});
    socket(0).answer("$join", { ok: null });
    const idempotent = track(client.call("say", { text: "once" }, { idempotent: true }));
    const plain = track(client.call("say", { text: "maybe" }));
    const [first] = socket(0).frames("say");
    const key = first?.idempotency_key;
    assert.equal(typeof key, "string");
    assert.ok(new TextEncoder().encode(key).length <= 64);
    assert.equal(socket(0).frames("say")[1]?.idempotency_key, undefined, "only idempotent calls carry a key");
    socket(0).drop(1006);
    await settle();
    assert.ok(plain.settled && plain.error instanceof ClosedError, "a plain call may have run: it fails");
    assert.equal(idempotent.settled, false);
    clock.advance(1000);
    socket(1).accept();
    assert.deepEqual(
      socket(1).sent.map((frame) => frame.type),
      ["$join", "say"],
    );
    const again = socket(1).frames("say")[0];
    assert.equal(again?.idempotency_key, key);
    assert.deepEqual(again?.data, { text: "once" });
    socket(1).answer("say", { ok: { offset: 12, epoch: "x7Fq" } });
    await settle();
    assert.deepEqual(idempotent.value, { offset: 12, epoch: "x7Fq" });
    client.close();
  });

  it("keep only what is left of their time while they wait again", async () => {
    const { client, clock, socket } = setup();
    client.connect();
    socket(0).accept();
    const call = track(client.call("say", { text: "slow" }, { idempotent: true, timeoutMs: 1000 }));
    clock.advance(400);
    socket(0).drop(1006);
    clock.advance(599);
    await settle();
    assert.equal(call.settled, false);
    clock.advance(1);
    await settle();
    assert.ok(call.error instanceof TimeoutError);
    client.close();
  });

  it("fail when the client stops, by a close code or by close()", async () => {
    const { client, socket } = setup();
    client.connect();
    socket(0).accept();
    const flooded = track(client.call("say", { text: "a" }, { idempotent: true }));
    socket(0).drop(1008, "rate limit");
    await settle();
    assert.ok(flooded.error instanceof ClosedError);

    const other = setup();
    other.client.connect();
    other.socket(0).accept();
    const waiting = track(other.client.call("say", { text: "b" }, { idempotent: true }));
    other.socket(0).drop(1006);
    await settle();
    assert.equal(waiting.settled, false);
    other.client.close();
    await settle();
    assert.ok(waiting.error instanceof ClosedError);
    client.close();
  });

  it("send the application's own key, and refuse one past 64 bytes", async () => {
    const { client, socket } = setup();
    client.connect();
    socket(0).accept();
    void client.call("say", { text: "mine" }, { idempotencyKey: "order-17" }).catch(() => {});
    assert.equal(socket(0).frames("say")[0]?.idempotency_key, "order-17");
    void client.call("say", { text: "not" }, { idempotencyKey: "order-18", idempotent: false }).catch(() => {});
    assert.equal(socket(0).frames("say")[1]?.idempotency_key, undefined);
    await assert.rejects(client.call("say", {}, { idempotencyKey: "é".repeat(33) }), RangeError);
    await assert.rejects(client.call("say", {}, { idempotencyKey: "" }), RangeError);
    assert.equal(socket(0).frames("say").length, 2, "a refused key sends nothing");
    client.close();
  });

  it("make their key from the random source where crypto.randomUUID is missing", () => {
    const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
    Object.defineProperty(globalThis, "crypto", { value: undefined, configurable: true });
    try {
      let n = 0;
      const { client, socket } = setup({ random: () => (n++ % 16) / 16 });
      client.connect();
      socket(0).accept();
      void client.call("say", { text: "x" }, { idempotent: true }).catch(() => {});
      assert.equal(socket(0).frames("say")[0]?.idempotency_key, "0123456789abcdef0123456789abcdef");
      client.close();
    } finally {
      if (saved) Object.defineProperty(globalThis, "crypto", saved);
    }
  });

  it("type as the generated clients call broadcasts", async () => {
    const { client, socket } = setup();
    client.connect();
    socket(0).accept();
    // What `realtime::describe` generates for a broadcast.
    const say = (data: { text: string }, options?: CallOptions): Promise<Position | null> =>
      client.call("say", data as unknown as Json, { idempotent: true, ...options }) as Promise<Position | null>;
    const acked = say({ text: "hi" }, { timeoutMs: 100 });
    assert.equal(typeof socket(0).frames("say")[0]?.idempotency_key, "string");
    socket(0).answer("say", { ok: null });
    assert.equal(await acked, null, "a topic without history acknowledges with null");
    client.close();
  });
});

describe("server frames", () => {
  it("tells a presence snapshot as a `presence` event", () => {
    const { client, socket } = setup();
    const snapshots: ClientEvents["presence"][] = [];
    client.on("presence", (event) => snapshots.push(event));
    client.connect();
    socket(0).accept();
    socket(0).receive({ topic: "lobby", presence: { clients: 3, users: { alice: 2, bob: 1 } } });
    assert.deepEqual(snapshots, [{ topic: "lobby", presence: { clients: 3, users: { alice: 2, bob: 1 } } }]);
    client.close();
  });

  it("answers the server's text heartbeat, and asks with `$ping` only when it stops", () => {
    const { client, clock, socket, errors } = setup({ callTimeoutMs: 120_000 });
    client.connect();
    assert.equal(socket(0).url, `${URL_}?heartbeat=text`);
    socket(0).accept();
    // The server's default interval, 25 s, under the default 30 s watchdog.
    for (let beat = 0; beat < 4; beat++) {
      clock.advance(25_000);
      socket(0).receive({ heartbeat: {} });
    }
    const pings = socket(0).frames("$ping");
    assert.equal(pings.length, 4, "each heartbeat answered");
    assert.ok(pings.every((ping) => ping.id === undefined), "with no id: the server answers none");
    assert.equal(errors.length, 0);
    // The heartbeats stop: after 30 s the watchdog asks, with an id.
    clock.advance(30_000);
    assert.equal(socket(0).frames("$ping").at(-1)?.id !== undefined, true);
    assert.equal(client.state, "open");
    client.close();
  });

  it("reports a frame that is not a JSON object, and goes on", () => {
    const { client, socket, errors } = setup();
    client.connect();
    socket(0).accept();
    socket(0).onmessage?.({ data: "7" });
    socket(0).onmessage?.({ data: "{oops" });
    assert.equal(errors.length, 2);
    assert.equal(client.state, "open");
    client.close();
  });
});

describe("expiring tokens", () => {
  it("sends a fresh token with $refresh when told the token runs out, and reconnects with it", async () => {
    let n = 0;
    const { client, clock, socket } = setup({ getToken: async () => `fresh-${++n}` });
    const refreshed: ClientEvents["refreshed"][] = [];
    client.on("refreshed", (event) => refreshed.push(event));
    client.connect();
    socket(0).accept();
    socket(0).receive({ expiring: { expires_in: 29 } });
    // A notice while the refresh is out is that refresh's.
    socket(0).receive({ expiring: { expires_in: 28 } });
    await settle();
    const sent = socket(0).frames("$refresh");
    assert.deepEqual(sent.map((frame) => frame.data), [{ token: "fresh-1" }]);
    socket(0).answer("$refresh", { ok: { expires_in: 3600 } });
    await settle();
    assert.deepEqual(refreshed, [{ expiresIn: 3600 }]);
    // A later connection sends the fresh token.
    socket(0).drop(1006);
    clock.advance(1000);
    assert.deepEqual(socket(1).protocols, ["bearer", "fresh-1"]);
    client.close();
  });

  it("gets a fresh token before reconnecting after 3000, and stops after 3000 without getToken", async () => {
    const { client, clock, socket } = setup({ getToken: () => "next" });
    client.connect();
    socket(0).accept();
    socket(0).drop(3000, "token expired");
    await settle();
    assert.equal(client.state, "reconnecting");
    clock.advance(1000);
    assert.deepEqual(socket(1).protocols, ["bearer", "next"]);
    client.close();

    const plain = setup();
    const stopped: ClientEvents["stopped"][] = [];
    plain.client.on("stopped", (event) => stopped.push(event));
    plain.client.connect();
    plain.socket(0).accept();
    plain.socket(0).receive({ expiring: { expires_in: 5 } });
    await settle();
    assert.equal(plain.socket(0).frames("$refresh").length, 0, "nothing to refresh with");
    plain.socket(0).drop(3000, "token expired");
    await settle();
    assert.equal(plain.client.state, "stopped");
    assert.equal(stopped[0]?.code, 3000);
  });

  it("stops after 3003 with the server's reason, and reports a refused refresh", async () => {
    const { client, clock, sockets, socket, errors } = setup({ getToken: () => "bobs" });
    const stopped: ClientEvents["stopped"][] = [];
    client.on("stopped", (event) => stopped.push(event));
    client.connect();
    socket(0).accept();
    socket(0).receive({ expiring: { expires_in: 10 } });
    await settle();
    socket(0).answer("$refresh", { error: { code: 403, message: "the token is another user's" } });
    await settle();
    assert.match(String(errors[0]?.error), /another user/);
    socket(0).drop(3003, "kicked by admin");
    await settle();
    assert.equal(client.state, "stopped");
    assert.deepEqual(stopped, [{ code: 3003, reason: "kicked by admin" }]);
    clock.advance(60_000);
    assert.equal(sockets.length, 1, "no other try");
  });
});

describe("server subscriptions", () => {
  it("adopts a topic the server subscribed it to, joins it again after a reconnect, and drops it when told", () => {
    const { client, clock, socket } = setup();
    const live: ClientEvents["subscribed"][] = [];
    const gone: string[] = [];
    const heard: Json[] = [];
    client.on("subscribed", (event) => {
      live.push(event);
      // The application takes the topic up as it would its own.
      if (event.server) client.subscribe(event.topic, (text) => heard.push(text));
    });
    client.on("unsubscribed", ({ topic }) => gone.push(topic));
    client.connect();
    socket(0).accept();
    socket(0).receive({ topic: "room:9", subscribed: { offset: 4, epoch: "e1" } });
    socket(0).receive({ topic: "plain", subscribed: {} });
    assert.deepEqual(live, [
      { topic: "room:9", offset: 4, epoch: "e1", server: true },
      { topic: "plain", server: true },
    ]);
    assert.equal(socket(0).frames("$join").length, 0, "already subscribed: nothing to ask");
    socket(0).receive({ topic: "room:9", offset: 5, event: { text: "welcome" } });
    socket(0).receive({ topic: "plain", event: { text: "plain" } });
    assert.deepEqual(heard, [{ text: "welcome" }, { text: "plain" }]);
    assert.deepEqual(client.position("room:9"), { offset: 5, epoch: "e1" });

    socket(0).drop(1006);
    clock.advance(1000);
    socket(1).accept();
    const joins = socket(1).sent.filter((frame) => frame.type === "$join").map((frame) => frame.data);
    assert.deepEqual(joins, [{ topic: "room:9", since: { offset: 5, epoch: "e1" } }, { topic: "plain" }]);

    socket(1).receive({ topic: "plain", unsubscribed: {} });
    assert.deepEqual(gone, ["plain"]);
    assert.equal(socket(1).frames("$leave").length, 0, "the server left it already");
    socket(1).receive({ topic: "plain", event: { text: "late" } });
    assert.equal(heard.length, 2);
    // The URL's topic is never dropped.
    socket(1).receive({ topic: "lobby", unsubscribed: {} });
    assert.deepEqual(gone, ["plain"]);
    socket(1).drop(1006);
    clock.advance(1000);
    socket(2).accept();
    assert.deepEqual(
      socket(2).sent.filter((frame) => frame.type === "$join").map((frame) => frame.data),
      [{ topic: "room:9", since: { offset: 5, epoch: "e1" } }],
    );
    client.close();
  });
});
