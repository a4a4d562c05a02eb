// What the tests share: the chat example as a child process on a free
// port, a loopback proxy the test can cut or freeze, and waits with a
// deadline.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const chatBinary = process.env.CHAT_BIN ?? path.resolve(here, "../../../../target/debug/examples/chat");
const DEADLINE_MS = 15_000;

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

async function waitForPort(port: number): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await sleep(20);
  }
}

/**
 * A broadcast's acknowledgement on a chat room (a topic with history): its
 * event's position, or `null` from a chat built before acknowledgements
 * carried one.
 */
export function assertAck(ack: unknown): void {
  if (ack === null) return;
  const position = ack as { offset?: unknown; epoch?: unknown };
  assert.equal(typeof position.offset, "number", `an acknowledgement: ${JSON.stringify(ack)}`);
  assert.equal(typeof position.epoch, "string", `an acknowledgement: ${JSON.stringify(ack)}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Waits until `condition` holds. */
export async function until(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await sleep(10);
  }
}

/** The chat example on a free port. */
export class Chat {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  /** `env` adds to the chat's environment (`PING_MS`, for one). */
  static async start(port?: number, more: Record<string, string> = {}): Promise<Chat> {
    const listen = port ?? (await freePort());
    // The memory broker: no REDIS_URL.
    const { REDIS_URL: _, ...env } = process.env;
    const child = spawn(chatBinary, [], {
      env: { ...env, ...more, PORT: String(listen), RUST_LOG: "warn" },
      stdio: "ignore",
    });
    await waitForPort(listen);
    return new Chat(listen, child);
  }

  /** SIGTERM: the chat closes every socket with 1001, then exits. */
  async stop(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGTERM");
    await exited;
  }
}

/** A loopback TCP proxy in front of a port, which the test can cut. */
export class Proxy {
  private readonly sockets = new Set<net.Socket>();
  private readonly pairs: [net.Socket, net.Socket][] = [];
  private server: net.Server | null = null;

  private constructor(
    readonly port: number,
    private readonly target: number,
  ) {}

  static async start(target: number): Promise<Proxy> {
    const proxy = new Proxy(await freePort(), target);
    await proxy.listen();
    return proxy;
  }

  listen(): Promise<void> {
    const server = net.createServer((inbound) => {
      const outbound = net.connect(this.target, "127.0.0.1");
      for (const socket of [inbound, outbound]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {});
      }
      inbound.pipe(outbound);
      outbound.pipe(inbound);
      this.pairs.push([inbound, outbound]);
    });
    this.server = server;
    return new Promise((resolve) => server.listen(this.port, "127.0.0.1", () => resolve()));
  }

  /** Stops forwarding on the open connections, without closing them: a server gone silent. */
  freeze(): void {
    for (const [inbound, outbound] of this.pairs) {
      inbound.unpipe(outbound);
      outbound.unpipe(inbound);
      inbound.pause();
      outbound.pause();
    }
  }

  /** Cuts every connection (no close frame: the client sees 1006) and stops listening. */
  async cut(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const socket of this.sockets) socket.destroy();
    if (server) await new Promise((resolve) => server.close(resolve));
  }
}

