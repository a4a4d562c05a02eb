// The chat page: the typed client generated from the chat's handler
// (`ChatClient`), over the protocol client of `clients/typescript`. One
// connection per tab: the room of its URL, and more rooms followed with
// `$join`. After a reconnect the client resumes every room where it stopped;
// the page reloads a room's lines only when the server could not resend
// them (`recovered: false`, `reset`). The list of people in the room comes
// from `$presence` at each (re)connect, then follows the `join` and `leave`
// events; a `presence` snapshot (the server's broker link came back, and
// joins and leaves may have been lost meanwhile) replaces it.
//
// Tokens come from the chat's `POST /login`: the name itself, or a JWT that
// runs out, which the client asks for again before it does (`getToken`) and
// sends on the open socket; each refresh is shown in the log. A room the
// user is invited to (`invite`) arrives as a `subscribed` event the page
// did not ask for, and is followed from then on. A kicked page stops, and
// says why.
//
// Compiled with `npm run build:page` in clients/typescript; the JavaScript
// is committed, so that `cargo run --example chat` needs no Node.

import { ChatClient, type Line, type Said } from "../../../clients/typescript/generated/chat.js";
import { Client, type Json, type Presence, type State } from "../../../clients/typescript/src/index.js";

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`the page has no #${id}`);
  return found as T;
}

const log = element<HTMLUListElement>("log");
const status = element<HTMLSpanElement>("status");
const errorLine = element<HTMLDivElement>("error");
const text = element<HTMLInputElement>("text");
const send = element<HTMLButtonElement>("send");
const follow = element<HTMLButtonElement>("follow");
const extra = element<HTMLInputElement>("extra");
const roomsLine = element<HTMLSpanElement>("rooms");
const people = element<HTMLUListElement>("users");
const who = element<HTMLInputElement>("who");
const invite = element<HTMLButtonElement>("invite");
const kick = element<HTMLButtonElement>("kick");

/** The connection of this tab, and what the page shows of each room. */
interface Session {
  client: Client;
  chat: ChatClient;
  room: string;
  /** Per room: the last offset shown, and live lines held while its history loads. */
  rooms: Map<string, { shown: number; held: { line: Said; offset?: number }[] | null }>;
  /** Who is in the URL's room; joins and leaves held while it loads. */
  users: Set<string>;
  heldPresence: { kind: "join" | "leave"; user: string }[] | null;
}

let session: Session | null = null;

function setStatus(state: State | "refused", message: string): void {
  status.dataset.state = state;
  status.textContent = message;
  const open = state === "open";
  text.disabled = !open;
  send.disabled = !open;
  follow.disabled = !open;
  invite.disabled = !open;
  kick.disabled = !open;
}

function showError(message: string): void {
  errorLine.textContent = message;
}

function time(at: number): string {
  return new Date(at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function addSystem(message: string): void {
  const item = document.createElement("li");
  item.className = "system";
  item.textContent = message;
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

function addLine(current: Session, room: string, line: Said): void {
  const item = document.createElement("li");
  item.dataset.room = room;
  const parts: HTMLSpanElement[] = [];
  if (room !== current.room) {
    const tag = document.createElement("span");
    tag.className = "room";
    tag.textContent = room;
    parts.push(tag);
  }
  for (const [name, value] of [
    ["at", time(line.at)],
    ["from", line.from],
    ["text", line.text],
  ] as const) {
    const part = document.createElement("span");
    part.className = name;
    part.textContent = value;
    parts.push(part);
  }
  item.append(...parts);
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

/** Shows a live line once: lines at or before the room's last shown offset are there already. */
function showLive(current: Session, room: string, line: Said, offset?: number): void {
  const state = current.rooms.get(room);
  if (!state) return;
  if (state.held) {
    state.held.push(offset === undefined ? { line } : { line, offset });
    return;
  }
  if (offset !== undefined && offset <= state.shown) return;
  addLine(current, room, line);
  if (offset !== undefined) state.shown = offset;
}

/** (Re)loads a room's last lines; its live lines wait meanwhile. */
async function loadHistory(current: Session, room: string, shown: number): Promise<void> {
  const state = current.rooms.get(room);
  if (!state) return;
  state.shown = shown;
  state.held = [];
  try {
    const lines: Line[] = await current.chat.history({ limit: 50 }, { topic: room });
    if (room === current.room) log.replaceChildren();
    else addSystem(`the last lines of ${room}:`);
    for (const line of lines) {
      addLine(current, room, line);
      state.shown = Math.max(state.shown, line.offset);
    }
    addSystem(`joined ${room}`);
  } catch (error) {
    showError(`history of ${room}: ${(error as Error).message}`);
  }
  const waiting = state.held ?? [];
  state.held = null;
  for (const { line, offset } of waiting) showLive(current, room, line, offset);
}

function showUsers(current: Session): void {
  const items = [...current.users].sort().map((user) => {
    const item = document.createElement("li");
    item.dataset.user = user;
    item.textContent = user;
    return item;
  });
  people.replaceChildren(...items);
}

function userName(user: Json): string {
  return typeof user === "string" ? user : JSON.stringify(user);
}

function applyPresence(current: Session, kind: "join" | "leave", user: string): void {
  if (current.heldPresence) {
    current.heldPresence.push({ kind, user });
    return;
  }
  if (kind === "join") current.users.add(user);
  else current.users.delete(user);
  showUsers(current);
}

/** Asks who is in the room; joins and leaves wait meanwhile. */
async function loadPresence(current: Session): Promise<void> {
  const held: { kind: "join" | "leave"; user: string }[] = [];
  current.heldPresence = held;
  let users: Set<string> | null = null;
  try {
    const presence = await current.client.presence(current.room);
    users = new Set(Object.keys(presence.users));
  } catch (error) {
    showError(`who is in ${current.room}: ${(error as Error).message}`);
  }
  // A snapshot, or a later `$presence`, took over meanwhile: theirs is the list.
  if (current.heldPresence !== held) return;
  current.heldPresence = null;
  if (users) current.users = users;
  for (const { kind, user } of held) applyPresence(current, kind, user);
  showUsers(current);
}

/** The whole list, from the server: it replaces the page's. */
function replacePresence(current: Session, presence: Presence): void {
  current.users = new Set(Object.keys(presence.users));
  // Joins and leaves after the snapshot come as events on top of it, so a
  // `$presence` in flight, and what was held for it, add nothing.
  current.heldPresence = null;
  showUsers(current);
}

function watch(current: Session, room: string): void {
  current.rooms.set(room, { shown: 0, held: null });
  current.chat.onEvent(room, (line, meta) => showLive(current, room, line, meta.offset));
  showRooms(current);
}

function showRooms(current: Session): void {
  roomsLine.textContent = [...current.rooms.keys()].filter((name) => name !== current.room).join(", ");
}

/** A token for `name` from the chat's login: the name, or a JWT. */
async function login(name: string): Promise<{ token: string; expires_in: number | null }> {
  const response = await fetch("/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!response.ok) throw new Error(`login refused: HTTP ${response.status} ${await response.text()}`);
  return (await response.json()) as { token: string; expires_in: number | null };
}

async function start(name: string, room: string): Promise<void> {
  session?.client.close();
  session = null;
  delete status.dataset.opens;
  log.replaceChildren();
  showError("");
  let first: { token: string; expires_in: number | null };
  try {
    first = await login(name);
  } catch (error) {
    setStatus("refused", "refused");
    showError((error as Error).message);
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = new Client({
    url: `${scheme}://${location.host}/ws/${encodeURIComponent(room)}`,
    token: first.token,
    // Asked before the token runs out, and before reconnecting after it did.
    getToken: async () => (await login(name)).token,
  });
  const current: Session = {
    client,
    chat: new ChatClient(client),
    room,
    rooms: new Map(),
    users: new Set(),
    heldPresence: null,
  };
  people.replaceChildren();
  session = current;
  client.on("state", ({ state }) => {
    if (session !== current) return;
    const message = {
      idle: "not connected",
      connecting: "connecting…",
      open: `connected to ${room} as ${name}`,
      reconnecting: "reconnecting…",
      stopped: "not connected",
    }[state];
    if (state === "open") {
      showError("");
      // How many times this session opened: 1 while it never reconnected.
      status.dataset.opens = String(Number(status.dataset.opens ?? "0") + 1);
    }
    if (state !== "stopped") setStatus(state, message);
  });
  client.on("lost", ({ code }) => {
    if (session !== current) return;
    showError(code === 1001 ? "the server went away; reconnecting" : `connection lost (${code}); reconnecting`);
  });
  client.on("stopped", ({ code, reason }) => {
    if (session !== current) return;
    const refused = /HTTP (400|401|403)/.test(reason);
    setStatus(refused ? "refused" : "stopped", refused ? "refused" : "not connected");
    if (refused) showError(`cannot join ${room}: ${reason}`);
    else if (code === 3003) showError(`stopped by the server: ${reason}`);
  });
  client.on("refreshed", ({ expiresIn }) => {
    if (session === current) addSystem(`token refreshed (good for ${expiresIn ?? "ever"} s)`);
  });
  client.on("subscribed", ({ topic, offset, recovered, server }) => {
    if (session !== current) return;
    if (server) {
      // Invited: the client follows the room now; so does the page.
      watch(current, topic);
      addSystem(`invited to ${topic}`);
    }
    // Who is here may have changed while the connection was away.
    if (topic === room) void loadPresence(current);
    // Resumed with every missed line: nothing to reload.
    if (recovered === true) return;
    void loadHistory(current, topic, offset ?? 0);
  });
  client.on("unsubscribed", ({ topic }) => {
    if (session !== current) return;
    current.rooms.delete(topic);
    showRooms(current);
    addSystem(`removed from ${topic}`);
  });
  for (const kind of ["join", "leave"] as const) {
    client.on(kind, ({ topic, user }) => {
      if (session === current && topic === room) applyPresence(current, kind, userName(user));
    });
  }
  client.on("presence", ({ topic, presence }) => {
    if (session === current && topic === room) replacePresence(current, presence);
  });
  client.on("reset", ({ topic, offset }) => {
    if (session !== current) return;
    void loadHistory(current, topic, offset);
  });
  client.on("error", ({ error, topic }) => {
    if (session !== current) return;
    showError(topic ? `${topic}: ${error.message}` : error.message);
  });
  watch(current, room);
  client.connect();
}

element<HTMLFormElement>("join").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = element<HTMLInputElement>("name").value.trim();
  const room = element<HTMLInputElement>("room").value.trim();
  if (name && room) void start(name, room);
});

/** `invite` or `kick` the user named in #who. */
async function moderate(action: "invite" | "kick"): Promise<void> {
  const current = session;
  const user = who.value.trim();
  if (!current || !user) return;
  try {
    if (action === "invite") await current.chat.invite({ user });
    else await current.chat.kick({ user });
    who.value = "";
    addSystem(action === "invite" ? `invited ${user} to ${current.room}` : `kicked ${user}`);
  } catch (error) {
    showError(`${action} ${user}: ${(error as Error).message}`);
  }
}

element<HTMLFormElement>("moderate").addEventListener("submit", (event) => {
  event.preventDefault();
  const submitter = (event as SubmitEvent).submitter;
  void moderate(submitter === kick ? "kick" : "invite");
});

element<HTMLFormElement>("more").addEventListener("submit", (event) => {
  event.preventDefault();
  const room = extra.value.trim();
  extra.value = "";
  if (session && room && !session.rooms.has(room)) watch(session, room);
});

element<HTMLFormElement>("post").addEventListener("submit", async (event) => {
  event.preventDefault();
  const current = session;
  const line = text.value;
  if (!current || !line.trim()) return;
  text.value = "";
  try {
    await current.chat.say({ text: line });
  } catch (error) {
    showError(`not sent: ${(error as Error).message}`);
  }
});
