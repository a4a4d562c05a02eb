//! What an application's messages look like, for generated clients and
//! documents: [`Api`], from `#[realtime_handler(describe)]`'s
//! `describe()`, written out as a typed TypeScript client module
//! ([`Api::typescript`]) or an AsyncAPI 3.0 document ([`Api::asyncapi`]).
//!
//! Types are described by JSON Schema from [`schemars`], which reads serde's
//! attributes (renames, `Option`, enum tagging, nested structs), so the
//! description says what the handler really accepts and sends. Every
//! argument, reply and event type of a described handler derives
//! `schemars::JsonSchema` (re-exported here as [`JsonSchema`]).
//!
//! Limits, known: replies and events are described as serde reads their
//! types, not as it writes them, so a field with `skip_serializing_if`
//! shows as always present; 64-bit integers are TypeScript `number`s, exact
//! up to 2^53; a field with serde's `with = "module"` needs
//! `#[schemars(with = "Type")]` beside it.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// The derive that a described handler's types need.
pub use schemars::JsonSchema;

/// A handler's messages and events: wire names, kinds, and the JSON Schema
/// of every argument, reply and event.
///
/// # Examples
///
/// ```
/// use realtime::describe::JsonSchema;
/// use realtime::prelude::*;
/// use serde::Serialize;
///
/// #[derive(Serialize, JsonSchema)]
/// struct Said { from: String, text: String }
///
/// struct Chat;
///
/// #[realtime_handler(describe)]
/// impl Chat {
///     /// Posts a line to the room.
///     #[broadcast]
///     async fn say(&self, ctx: &Context<(), String>, text: String) -> Result<Said, HandlerError> {
///         Ok(Said { from: ctx.user_id().clone(), text })
///     }
/// }
///
/// let api = Chat::describe();
/// assert_eq!(api.messages[0].name, "say");
/// assert!(api.typescript("@realtime/client").contains("say(data: { text: string; }"));
/// assert_eq!(api.asyncapi("1.0.0")["asyncapi"], "3.0.0");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Api {
    /// The handler's type name (`Chat`).
    pub name: String,
    /// Its `#[direct]` and `#[broadcast]` methods, in source order.
    pub messages: Vec<Message>,
    /// The schema of the event its topics carry, if any method broadcasts.
    pub event: Option<Value>,
    /// The named types the schemas refer to (`#/definitions/<name>`).
    pub definitions: Map<String, Value>,
}

/// One message a client can send.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// The wire name, the frame's `type`.
    pub name: String,
    /// Whether it is answered to the sender or broadcast.
    pub kind: Kind,
    /// The method's doc comment.
    pub docs: String,
    /// The schema of the frame's `data` (the arguments by name).
    pub data: Value,
    /// The schema of the answer: the reply of a direct method; `null` (the
    /// acknowledgement) for a broadcast.
    pub reply: Value,
}

/// `#[direct]` or `#[broadcast]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Answered to the sender.
    Direct,
    /// Turned into an event for every subscriber of the topic.
    Broadcast,
}

/// The schema generator a described handler uses: JSON Schema draft 7,
/// whose named types live under `#/definitions/`, which AsyncAPI's schema
/// format reads too.
#[doc(hidden)]
pub fn generator() -> schemars::SchemaGenerator {
    schemars::generate::SchemaSettings::draft07().into_generator()
}

impl Api {
    /// Assembles a description; the handler macro calls this. `messages`
    /// holds `(wire name, kind, docs, reply schema)`; each message's `data`
    /// schema is read from `client_message`, the schema of the
    /// client-message enum (adjacently tagged by `type` and `data`).
    #[doc(hidden)]
    pub fn new(
        name: &str,
        event: Option<schemars::Schema>,
        messages: Vec<(&str, Kind, &str, schemars::Schema)>,
        client_message: &schemars::Schema,
        mut generator: schemars::SchemaGenerator,
    ) -> Self {
        // Draft 7's shape for the inline schemas too (the definitions get it
        // from `take_definitions`): tuples as `items` arrays, and so on.
        let mut transform = |mut schema: schemars::Schema| {
            for each in generator.transforms_mut() {
                each.transform(&mut schema);
            }
            schema
        };
        let event = event.map(&mut transform);
        let messages: Vec<_> = messages
            .into_iter()
            .map(|(wire, kind, docs, reply)| (wire, kind, docs, transform(reply)))
            .collect();
        let mut definitions = generator.take_definitions(true);
        let enum_schema = resolve(client_message.as_value(), &definitions).clone();
        let variants = enum_schema
            .get("oneOf")
            .or_else(|| enum_schema.get("anyOf"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let data_of = |wire: &str| {
            variants
                .iter()
                .find(|variant| {
                    let tag = &variant["properties"]["type"];
                    tag.get("const").and_then(Value::as_str) == Some(wire)
                        || tag["enum"]
                            .as_array()
                            .is_some_and(|names| names.len() == 1 && names[0] == wire)
                })
                .map(|variant| without_generated_docs(variant["properties"]["data"].clone()))
                .unwrap_or_else(|| json!({"type": "object"}))
        };
        let messages = messages
            .into_iter()
            .map(|(wire, kind, docs, reply)| Message {
                name: wire.to_owned(),
                kind,
                docs: docs.trim().to_owned(),
                data: data_of(wire),
                reply: reply.to_value(),
            })
            .collect();
        // The enum itself is not part of the application's vocabulary.
        if let Some(reference) = client_message
            .as_value()
            .get("$ref")
            .and_then(Value::as_str)
            && let Some(name) = reference.strip_prefix("#/definitions/")
        {
            definitions.remove(name);
        }
        Self {
            name: name.to_owned(),
            messages,
            event: event.map(schemars::Schema::to_value),
            definitions,
        }
    }

    /// A TypeScript module: the named types, `<Name>Event`, and a
    /// `<Name>Client` class with one typed method per message and a typed
    /// `onEvent`, over the client library (`clients/typescript` in this
    /// repository) imported from `client_import`. It passes `tsc --strict`.
    pub fn typescript(&self, client_import: &str) -> String {
        let name = &self.name;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "// The `{name}` handler's messages, as `#[realtime_handler(describe)]` describes them.\n\
             // Generated by realtime::describe; do not edit: regenerate it.\n"
        );
        // One namespace: no definition of the application's can clash with
        // the library's names.
        let _ = writeln!(out, "import * as realtime from {};\n", json!(client_import));
        for (type_name, schema) in &self.definitions {
            let docs = schema.get("description").and_then(Value::as_str);
            push_doc(&mut out, "", docs);
            let _ = writeln!(
                out,
                "export type {} = {};\n",
                ts_name(type_name),
                ts_type(schema, "")
            );
        }
        let event = self
            .event
            .as_ref()
            .map_or("never".to_owned(), |event| ts_type(event, ""));
        let event_name = format!("{name}Event");
        // An event type of that very name is exported already.
        if event != event_name {
            let _ = writeln!(
                out,
                "/** The event every subscriber of a `{name}` topic receives. */\nexport type {event_name} = {event};\n"
            );
        }
        let _ = writeln!(
            out,
            "/** A typed front of a `Client` connected to a `{name}` endpoint. */\nexport class {name}Client {{\n  constructor(readonly client: realtime.Client) {{}}\n"
        );
        for message in &self.messages {
            let reply = match message.kind {
                Kind::Direct => ts_type(&message.reply, "  "),
                Kind::Broadcast => "realtime.Position | null".to_owned(),
            };
            // A broadcast carries an idempotency key and is sent again after
            // a reconnect: published once whatever the connection does.
            let options = match message.kind {
                Kind::Direct => "options",
                Kind::Broadcast => "{ idempotent: true, ...options }",
            };
            let data = ts_type(&message.data, "  ");
            let docs = match message.kind {
                Kind::Direct => message.docs.clone(),
                Kind::Broadcast => format!(
                    "{}{}Broadcast: resolves once the server acknowledged it, with the event's\nposition on a topic with history (`null` on one without). Sent with an\nidempotency key, and again after a reconnect: published once.",
                    message.docs,
                    if message.docs.is_empty() { "" } else { "\n\n" }
                ),
            };
            push_doc(&mut out, "  ", Some(&docs));
            let _ = writeln!(
                out,
                "  {method}(data: {data}, options?: realtime.CallOptions): Promise<{reply}> {{\n    \
                 return this.client.call({wire}, data as unknown as realtime.Json, {options}) as Promise<{reply}>;\n  }}\n",
                method = ts_method(&message.name),
                wire = json!(message.name),
            );
        }
        let _ = writeln!(
            out,
            "  /** Follows `topic` (`$join`ed unless it is the URL's) with a typed handler. */\n  \
             onEvent(topic: string, handler: (event: {name}Event, meta: realtime.EventMeta) => void): () => void {{\n    \
             return this.client.subscribe(topic, (event, meta) => handler(event as unknown as {name}Event, meta));\n  }}\n}}"
        );
        out
    }

    /// An AsyncAPI 3.0 document: one channel (`/ws/{topic}`), a `send_<name>`
    /// operation per message with its answer as the reply, `receive_event`
    /// for the topic's events, `receive_position` for `subscribed` and
    /// `reset`, `receive_presence` for `join`, `leave` and the whole list
    /// (`presence`), and the named
    /// types under `components.schemas`.
    pub fn asyncapi(&self, version: &str) -> Value {
        let mut messages = Map::new();
        let mut operations = Map::new();
        let channel_ref = json!({"$ref": "#/channels/topic"});
        let frame = |wire: &str, data: &Value| {
            json!({
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"const": wire},
                    "data": data,
                    "id": {"description": "echoed as `reply_to` in the answer", "type": ["integer", "string"]},
                    "topic": {"description": "a `$join`ed topic; left out: the URL's", "type": "string"},
                    "idempotency_key": {
                        "description": "a broadcast sent again under this key within the server's window (default 2 minutes) is acknowledged again and published once",
                        "type": "string",
                        "minLength": 1,
                        "maxLength": crate::protocol::MAX_IDEMPOTENCY_KEY_BYTES
                    }
                }
            })
        };
        let acknowledged = json!({
            "description": "the event's position on a topic with history; null on one without",
            "oneOf": [
                {"type": "null"},
                {"type": "object", "required": ["offset", "epoch"], "properties": {"offset": {"type": "integer"}, "epoch": {"type": "string"}}}
            ]
        });
        for message in &self.messages {
            let id = asyncapi_id(&message.name);
            let key = format!("send_{id}");
            messages.insert(
                key.clone(),
                json!({
                    "name": message.name,
                    "summary": message.docs,
                    "payload": refs_to_components(frame(&message.name, &message.data)),
                }),
            );
            let reply_key = format!("answer_{id}");
            messages.insert(
                reply_key.clone(),
                json!({
                    "name": format!("{} answer", message.name),
                    "payload": refs_to_components(json!({
                        "type": "object",
                        "properties": {
                            "reply_to": {"type": ["integer", "string"]},
                            "ok": match message.kind {
                                Kind::Direct => message.reply.clone(),
                                Kind::Broadcast => acknowledged.clone(),
                            }
                        }
                    })),
                }),
            );
            operations.insert(
                key.clone(),
                json!({
                    "action": "send",
                    "summary": message.docs,
                    "channel": channel_ref,
                    "messages": [{"$ref": format!("#/channels/topic/messages/{key}")}],
                    "reply": {
                        "channel": channel_ref,
                        "messages": [{"$ref": format!("#/channels/topic/messages/{reply_key}")}]
                    }
                }),
            );
        }
        if let Some(event) = &self.event {
            messages.insert(
                "event".to_owned(),
                json!({
                    "name": "event",
                    "summary": "An event of the topic, received by every subscriber on every instance.",
                    "payload": refs_to_components(json!({
                        "type": "object",
                        "required": ["topic", "event"],
                        "properties": {
                            "topic": {"type": "string"},
                            "offset": {"type": "integer", "description": "for a topic with history"},
                            "event": event
                        }
                    })),
                }),
            );
            operations.insert(
                "receive_event".to_owned(),
                json!({
                    "action": "receive",
                    "channel": channel_ref,
                    "messages": [{"$ref": "#/channels/topic/messages/event"}]
                }),
            );
        }
        let position = json!({
            "type": "object",
            "required": ["offset", "epoch"],
            "properties": {"offset": {"type": "integer"}, "epoch": {"type": "string"}, "recovered": {"type": "boolean"}}
        });
        let user = json!({
            "type": "object",
            "required": ["user"],
            "properties": {"user": {"description": "the user's id, as the server writes it in JSON"}}
        });
        // Frames of a topic that are not events: `{"topic": .., "<key>": body}`,
        // received in pairs by one operation each.
        let frames = [
            (
                "receive_position",
                [
                    (
                        "subscribed",
                        "A subscription is live: to a topic with history, at its position (after the missed events, when it resumed); or one the server made (`Service::subscribe_user`), with no position on a topic without history. A client that did not ask for the topic follows it from then on.",
                    ),
                    (
                        "reset",
                        "Events of a live subscription were lost; the client reloads the topic's state.",
                    ),
                ],
                &position,
            ),
            (
                "receive_presence",
                [
                    (
                        "join",
                        "A user's first connection subscribed to a topic that announces presence.",
                    ),
                    (
                        "leave",
                        "A user's last connection left a topic that announces presence.",
                    ),
                ],
                &user,
            ),
        ];
        // A subscription the server made to a topic without history says
        // so with no position.
        let mut live = position.clone();
        live["required"] = json!([]);
        for (operation, pair, body) in frames {
            for (key, summary) in pair {
                let body = if key == "subscribed" { &live } else { body };
                messages.insert(
                    key.to_owned(),
                    json!({
                        "name": key,
                        "summary": summary,
                        "payload": {
                            "type": "object",
                            "required": ["topic", key],
                            "properties": {"topic": {"type": "string"}, key: body}
                        }
                    }),
                );
            }
            let refs: Vec<Value> = pair
                .iter()
                .map(|(key, _)| json!({"$ref": format!("#/channels/topic/messages/{key}")}))
                .collect();
            operations.insert(
                operation.to_owned(),
                json!({"action": "receive", "channel": channel_ref, "messages": refs}),
            );
        }
        messages.insert(
            "presence".to_owned(),
            json!({
                "name": "presence",
                "summary": "The whole of a topic's presence, sent when the server's instance relinked to its broker (joins and leaves published meanwhile were lost): the client replaces its list with it.",
                "payload": {
                    "type": "object",
                    "required": ["topic", "presence"],
                    "properties": {
                        "topic": {"type": "string"},
                        "presence": {
                            "type": "object",
                            "required": ["clients", "users"],
                            "properties": {
                                "clients": {"type": "integer"},
                                "users": {"type": "object", "additionalProperties": {"type": "integer"}}
                            }
                        }
                    }
                }
            }),
        );
        if let Some(Value::Array(refs)) = operations
            .get_mut("receive_presence")
            .and_then(|operation| operation.get_mut("messages"))
        {
            refs.push(json!({"$ref": "#/channels/topic/messages/presence"}));
        }
        messages.insert(
            "unsubscribed".to_owned(),
            json!({
                "name": "unsubscribed",
                "summary": "The server took the connection out of the topic (`Service::unsubscribe_user`): no event of it follows, and the client follows it no more.",
                "payload": {
                    "type": "object",
                    "required": ["topic", "unsubscribed"],
                    "properties": {"topic": {"type": "string"}, "unsubscribed": {"type": "object"}}
                }
            }),
        );
        operations.insert(
            "receive_unsubscribed".to_owned(),
            json!({
                "action": "receive",
                "channel": channel_ref,
                "messages": [{"$ref": "#/channels/topic/messages/unsubscribed"}]
            }),
        );
        messages.insert(
            "expiring".to_owned(),
            json!({
                "name": "expiring",
                "summary": "The connection's token runs out in `expires_in` seconds: the client sends `$refresh` with a fresh one, or is closed with 3000 then.",
                "payload": {
                    "type": "object",
                    "required": ["expiring"],
                    "properties": {
                        "expiring": {
                            "type": "object",
                            "required": ["expires_in"],
                            "properties": {"expires_in": {"type": "integer"}}
                        }
                    }
                }
            }),
        );
        operations.insert(
            "receive_expiring".to_owned(),
            json!({
                "action": "receive",
                "channel": channel_ref,
                "messages": [{"$ref": "#/channels/topic/messages/expiring"}]
            }),
        );
        messages.insert(
            "heartbeat".to_owned(),
            json!({
                "name": "heartbeat",
                "summary": "The server's heartbeat, every `Config::ping_interval`, to a connection opened with `?heartbeat=text` (in place of a WebSocket ping, which a page cannot see): the client answers `{\"type\": \"$ping\"}` without an id, or is closed with 1008 at the idle timeout.",
                "payload": {
                    "type": "object",
                    "required": ["heartbeat"],
                    "properties": {"heartbeat": {"type": "object"}}
                }
            }),
        );
        operations.insert(
            "receive_heartbeat".to_owned(),
            json!({
                "action": "receive",
                "channel": channel_ref,
                "messages": [{"$ref": "#/channels/topic/messages/heartbeat"}]
            }),
        );
        let channel_messages: Map<String, Value> = messages
            .keys()
            .map(|key| {
                (
                    key.clone(),
                    json!({"$ref": format!("#/components/messages/{key}")}),
                )
            })
            .collect();
        let schemas: Map<String, Value> = self
            .definitions
            .iter()
            .map(|(name, schema)| (name.clone(), refs_to_components(schema.clone())))
            .collect();
        json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": self.name,
                "version": version,
                "description": "Protocol version 1 of realtime: JSON text frames over a WebSocket opened on a topic's URL; `$join` and `$leave` add and remove topics on the same connection; `$presence` answers who is in a topic; `$refresh` (`{\"token\": ..}`, answered `{\"expires_in\": ..}`) replaces an expiring token; `?heartbeat=text` makes the server's heartbeat the frame `{\"heartbeat\": {}}`, answered `{\"type\": \"$ping\"}`."
            },
            "channels": {
                "topic": {
                    "address": "/ws/{topic}",
                    "parameters": {"topic": {"description": "the topic the connection follows"}},
                    "messages": channel_messages
                }
            },
            "operations": operations,
            "components": {"messages": messages, "schemas": schemas}
        })
    }
}

/// Drops the doc lines the macro writes on undocumented arguments
/// ("Argument `x` of `T::m`."): they say nothing a generated client's reader
/// needs.
fn without_generated_docs(mut data: Value) -> Value {
    if let Some(properties) = data.get_mut("properties").and_then(Value::as_object_mut) {
        for property in properties.values_mut() {
            let generated = property
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|docs| docs.starts_with("Argument `"));
            if generated && let Some(property) = property.as_object_mut() {
                property.remove("description");
            }
        }
    }
    data
}

/// A wire name as an AsyncAPI key (`^[A-Za-z0-9_.-]+$`).
fn asyncapi_id(wire: &str) -> String {
    wire.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The schema `schema` stands for: itself, or the definition its `$ref` names.
fn resolve<'a>(schema: &'a Value, definitions: &'a Map<String, Value>) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix("#/definitions/"))
        .and_then(|name| definitions.get(name))
        .unwrap_or(schema)
}

/// Rewrites `#/definitions/X` references to `#/components/schemas/X`.
fn refs_to_components(mut schema: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, item) in map.iter_mut() {
                    if key == "$ref"
                        && let Some(reference) = item.as_str()
                        && let Some(name) = reference.strip_prefix("#/definitions/")
                    {
                        *item = Value::String(format!("#/components/schemas/{name}"));
                    } else {
                        walk(item);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut schema);
    schema
}

/// A JSON Schema as a TypeScript type; `indent` is the indentation of the
/// line the type starts on.
fn ts_type(schema: &Value, indent: &str) -> String {
    let object = match schema {
        Value::Bool(true) => return "unknown".to_owned(),
        Value::Bool(false) => return "never".to_owned(),
        Value::Object(object) => object,
        _ => return "unknown".to_owned(),
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        return reference
            .strip_prefix("#/definitions/")
            .map_or("unknown".to_owned(), ts_name);
    }
    if let Some(value) = object.get("const") {
        return value.to_string();
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        return union(values.iter().map(Value::to_string).collect());
    }
    // Keywords beside `oneOf`/`anyOf`/`allOf` (a flattened struct's own
    // fields, an internally tagged variant's tag) hold for every option.
    let own = own_object(object);
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = object.get(key).and_then(Value::as_array) {
            let options = union(
                options
                    .iter()
                    .map(|option| ts_type(&merge(object, option), indent))
                    .collect(),
            );
            return match &own {
                Some(own) => format!("{} & ({options})", ts_object(own, indent)),
                None => options,
            };
        }
    }
    if let Some(parts) = object.get("allOf").and_then(Value::as_array) {
        let mut types: Vec<String> = parts
            .iter()
            .map(|part| format!("({})", ts_type(part, indent)))
            .collect();
        if let Some(own) = &own {
            types.push(ts_object(own, indent));
        }
        return types.join(" & ");
    }
    match object.get("type") {
        Some(Value::Array(types)) => union(
            types
                .iter()
                .map(|kind| {
                    let mut single = object.clone();
                    single.insert("type".to_owned(), kind.clone());
                    ts_type(&Value::Object(single), indent)
                })
                .collect(),
        ),
        Some(Value::String(kind)) => match kind.as_str() {
            "string" => "string".to_owned(),
            "integer" | "number" => "number".to_owned(),
            "boolean" => "boolean".to_owned(),
            "null" => "null".to_owned(),
            "array" => ts_array(object, indent),
            "object" => ts_object(object, indent),
            _ => "unknown".to_owned(),
        },
        _ if object.contains_key("properties") => ts_object(object, indent),
        _ => "unknown".to_owned(),
    }
}

/// The object keywords beside a `oneOf`, `anyOf` or `allOf`, if they name
/// any properties.
fn own_object(object: &Map<String, Value>) -> Option<Map<String, Value>> {
    let has_properties = object
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|properties| !properties.is_empty());
    let combined = ["oneOf", "anyOf", "allOf"]
        .iter()
        .any(|key| object.contains_key(*key));
    if !combined || !has_properties {
        return None;
    }
    let mut own = object.clone();
    for key in ["oneOf", "anyOf", "allOf"] {
        own.remove(key);
    }
    Some(own)
}

/// A `oneOf` option with the keywords of its parent that it lacks (serde's
/// internally tagged enums put `type: object` beside the options).
fn merge(parent: &Map<String, Value>, option: &Value) -> Value {
    let Value::Object(option) = option else {
        return option.clone();
    };
    let mut merged = option.clone();
    // Properties beside the options are written once, as an intersection.
    let keys: &[&str] = if own_object(parent).is_some() {
        &["type"]
    } else {
        &["type", "properties", "required"]
    };
    for &key in keys {
        if let (Some(value), false) = (parent.get(key), merged.contains_key(key)) {
            merged.insert(key.to_owned(), value.clone());
        }
    }
    Value::Object(merged)
}

fn ts_array(object: &Map<String, Value>, indent: &str) -> String {
    if let Some(items) = object.get("items") {
        if let Value::Array(tuple) = items {
            let parts: Vec<String> = tuple.iter().map(|item| ts_type(item, indent)).collect();
            return format!("[{}]", parts.join(", "));
        }
        return format!("Array<{}>", ts_type(items, indent));
    }
    "unknown[]".to_owned()
}

fn ts_object(object: &Map<String, Value>, indent: &str) -> String {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let properties = object.get("properties").and_then(Value::as_object);
    let named = properties.is_some_and(|properties| !properties.is_empty());
    let pattern = object
        .get("patternProperties")
        .and_then(Value::as_object)
        .and_then(|patterns| patterns.values().next());
    let extra = match (object.get("additionalProperties"), pattern) {
        (_, Some(schema)) => Some(ts_type(schema, indent)),
        (Some(Value::Bool(false)), _) | (None, _) if named => None,
        (Some(Value::Bool(false)), _) => None,
        (Some(schema @ Value::Object(_)), _) => Some(ts_type(schema, indent)),
        _ => Some("unknown".to_owned()),
    };
    // An index signature must admit every named property's type too.
    let extra = extra.map(|extra| if named { "unknown".to_owned() } else { extra });
    let inner = format!("{indent}  ");
    let mut fields = Vec::new();
    for (name, schema) in properties.into_iter().flatten() {
        let optional = if required.contains(&name.as_str()) {
            ""
        } else {
            "?"
        };
        let docs = schema.get("description").and_then(Value::as_str);
        let mut field = String::new();
        push_doc(&mut field, &inner, docs);
        let _ = write!(
            field,
            "{inner}{}{optional}: {};",
            ts_key(name),
            ts_type(schema, &inner)
        );
        fields.push(field);
    }
    if let Some(extra) = extra {
        fields.push(format!("{inner}[key: string]: {extra};"));
    }
    if fields.is_empty() {
        return "Record<string, never>".to_owned();
    }
    if fields.len() == 1 && !fields[0].contains('\n') && fields[0].len() < 60 {
        return format!("{{ {} }}", fields[0].trim());
    }
    format!("{{\n{}\n{indent}}}", fields.join("\n"))
}

fn union(mut parts: Vec<String>) -> String {
    parts.dedup();
    if parts.is_empty() {
        return "never".to_owned();
    }
    parts.join(" | ")
}

/// A property name, quoted unless it is a plain identifier.
fn ts_key(name: &str) -> String {
    let plain = name.chars().enumerate().all(|(at, c)| {
        c == '_' || c == '$' || c.is_ascii_alphabetic() || (at > 0 && c.is_ascii_digit())
    });
    if plain && !name.is_empty() {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}

/// A definition's name as a TypeScript type name: a reference's
/// percent-escapes decoded, then anything but letters, digits and `_` as `_`.
fn ts_name(name: &str) -> String {
    let mut decoded = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A wire name as a method name: `send_message` -> `sendMessage`; other
/// characters than letters and digits start a new word; a name the class
/// has already (`client`, `onEvent`, `constructor`) or one that starts with
/// a digit gets a `_`.
fn ts_method(wire: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in wire.chars() {
        if !(c.is_ascii_alphanumeric() || c == '$') {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    if out.is_empty()
        || out.starts_with(|c: char| c.is_ascii_digit())
        || ["client", "onEvent", "constructor"].contains(&out.as_str())
    {
        out.insert(0, '_');
    }
    out
}

fn push_doc(out: &mut String, indent: &str, docs: Option<&str>) {
    let Some(docs) = docs.map(str::trim).filter(|docs| !docs.is_empty()) else {
        return;
    };
    let _ = writeln!(out, "{indent}/**");
    for line in docs.lines() {
        let line = line.replace("*/", "*\\/");
        let line = line.trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{indent} *");
        } else {
            let _ = writeln!(out, "{indent} * {line}");
        }
    }
    let _ = writeln!(out, "{indent} */");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_become_typescript() {
        let schema = json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "age": {"type": ["integer", "null"]},
                "tags": {"type": "array", "items": {"$ref": "#/definitions/Tag"}},
                "kind": {"enum": ["a", "b"]}
            }
        });
        assert_eq!(
            ts_type(&schema, ""),
            "{\n  age?: number | null;\n  kind?: \"a\" | \"b\";\n  name: string;\n  tags?: Array<Tag>;\n}"
        );
    }

    #[test]
    fn wire_names_become_method_names() {
        assert_eq!(ts_method("send_message"), "sendMessage");
        assert_eq!(ts_method("say"), "say");
        assert_eq!(ts_key("reply-to"), "\"reply-to\"");
        assert_eq!(ts_method("chat/say"), "chatSay");
        assert_eq!(ts_method("client"), "_client");
        assert_eq!(ts_name("Said%20Event"), "Said_Event");
    }

    #[test]
    fn own_fields_beside_options_are_intersected() {
        let flattened = json!({
            "type": "object",
            "required": ["from"],
            "properties": {"from": {"type": "string"}},
            "oneOf": [
                {"type": "object", "required": ["kind", "text"], "properties": {"kind": {"const": "text"}, "text": {"type": "string"}}},
                {"type": "object", "required": ["kind", "url"], "properties": {"kind": {"const": "image"}, "url": {"type": "string"}}}
            ]
        });
        let ts = ts_type(&flattened, "");
        assert!(ts.starts_with("{ from: string; } & ("), "{ts}");
        assert!(ts.contains("kind: \"image\""), "{ts}");
        let map = json!({"type": "object", "properties": {"id": {"type": "integer"}}, "additionalProperties": {"type": "string"}});
        assert!(ts_type(&map, "").contains("[key: string]: unknown;"));
    }
}
