//! The clients: publishers and subscribers of the rooms, each one task
//! with its own seeded schedule (drawn from the run's seed).
//!
//! Every client is subscribed to its room (a connection to `/ws/room:N` is)
//! and checks the stream it receives. A subscriber disconnects now and
//! then (a close frame, or the socket dropped) and resumes with `since` =
//! the last position it was given, on the other instance. A publisher
//! sends `say` with a unique text, which is also its idempotency key, and
//! sends it again, with the same key, after an error, a timeout or a lost
//! connection, until it is acknowledged; now and then it cuts its socket
//! right after a `say`, and sends an acknowledged one again to check that
//! the answer is the same position.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::check::{Checker, Pos, PresenceList, Step, Stream, Who};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a `say` may wait for its answer before the connection is
/// counted as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after the upgrade the `subscribed` frame may take.
const SUBSCRIBED_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the run stands; clients follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Faults, churn, publishing.
    Chaos,
    /// No churn, no new publishes: every client connects and waits; the
    /// publishers finish what they started.
    Settle,
    /// Each room's first publisher sends the room's final event.
    Final,
    /// Every client asks `$presence` once more.
    Check,
    /// Close and end.
    Done,
}

/// What the clients share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) checker: Arc<Mutex<Checker>>,
    pub(crate) ports: Vec<u16>,
    pub(crate) phase: watch::Receiver<Phase>,
    /// Set to end every client at once (a violation stopped the run).
    pub(crate) abort: Arc<AtomicBool>,
    /// Events per second of each publisher.
    pub(crate) rate: f64,
}

/// Who a client is.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) id: usize,
    pub(crate) room: usize,
    pub(crate) name: String,
    /// The publisher's index in its room; `None` for a subscriber.
    pub(crate) publisher: Option<usize>,
    pub(crate) seed: u64,
}

/// The text (and key) of a room's final event.
pub(crate) fn final_text(room: usize) -> String {
    format!("final-r{room}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Normal,
    /// An acknowledged text sent again: its answer must be this position.
    Probe(Pos),
    Final,
}

#[derive(Debug)]
struct Pending {
    text: String,
    kind: Kind,
    /// The `id` of the latest try, while it waits for its answer.
    id: Option<u64>,
    sent_at: Instant,
    resend_at: Instant,
    tries: u32,
}

#[derive(Debug)]
struct Publisher {
    index: usize,
    seq: u64,
    pending: Option<Pending>,
    next_send_at: Instant,
    last_acked: Option<(String, Pos)>,
    final_done: bool,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Connect again (a churn, a lost connection, a cut).
    Again,
    /// The run is over.
    Stop,
}

struct Client {
    spec: Spec,
    ctx: Arc<Ctx>,
    rng: StdRng,
    node: usize,
    stream: Stream,
    presence: PresenceList,
    next_id: u64,
    publisher: Option<Publisher>,
}

/// Runs one client until the run is over.
pub(crate) async fn run(spec: Spec, ctx: Arc<Ctx>) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let node = rng.random_range(0..ctx.ports.len());
    let publisher = spec.publisher.map(|index| Publisher {
        index,
        seq: 0,
        pending: None,
        next_send_at: Instant::now() + Duration::from_millis(rng.random_range(200..1000)),
        last_acked: None,
        final_done: false,
    });
    let mut client = Client {
        spec,
        ctx,
        rng,
        node,
        stream: Stream::default(),
        presence: PresenceList::default(),
        next_id: 1,
        publisher,
    };
    client.run().await;
}

impl Client {
    fn phase(&self) -> Phase {
        *self.ctx.phase.borrow()
    }

    fn stopping(&self) -> bool {
        self.ctx.abort.load(Ordering::Relaxed) || self.phase() == Phase::Done
    }

    fn checker(&self) -> std::sync::MutexGuard<'_, Checker> {
        self.ctx.checker.lock().expect("checker lock")
    }

    fn log(&self, text: String) {
        self.checker().log(Who::Client(self.spec.id), text);
    }

    fn violation(&self, message: &str) {
        let message = format!("{}: {message}", self.spec.name);
        self.checker().violation(vec![self.spec.id], message);
    }

    async fn run(&mut self) {
        while !self.stopping() {
            // Drawn every time, so that the schedule does not depend on
            // the phase.
            let fresh = self.rng.random_bool(0.1);
            let since = match (fresh && self.phase() == Phase::Chaos, &self.stream.at) {
                (false, Some(at)) => Some(at.clone()),
                _ => None,
            };
            let port = self.ctx.ports[self.node];
            let mut url = format!(
                "ws://127.0.0.1:{port}/ws/room:{}?token={}",
                self.spec.room, self.spec.name
            );
            if let Some(since) = &since {
                url.push_str(&format!("&since={}.{}", since.offset, since.epoch));
            }
            self.log(format!(
                "connect node{}{}",
                self.node,
                since
                    .as_ref()
                    .map_or(" (no since)".to_owned(), |since| format!(" since={since}"))
            ));
            let connecting = tokio_tungstenite::connect_async(url.as_str());
            let end = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                Ok(Ok((socket, _))) => {
                    self.checker().counts.sessions += 1;
                    self.stream.connect(since);
                    let end = self.session(socket).await;
                    self.end_session();
                    end
                }
                Ok(Err(WsError::Http(response))) => {
                    let status = response.status().as_u16();
                    self.checker().refused(self.spec.id, status, &url);
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(100..400)))
                        .await;
                    End::Again
                }
                Ok(Err(error)) => {
                    self.log(format!("connect failed: {error}"));
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(100..400)))
                        .await;
                    End::Again
                }
                Err(_) => {
                    self.log("connect timed out".to_owned());
                    End::Again
                }
            };
            if end == End::Stop {
                break;
            }
            // Alternate the instances.
            self.node = (self.node + 1) % self.ctx.ports.len();
            let pause = self.rng.random_range(0..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn end_session(&mut self) {
        let id = self.spec.id;
        let mut checker = self.checker();
        let view = &mut checker.views[id];
        view.connected = false;
        view.presence = None;
        view.presence_overtaken.clear();
        drop(checker);
        self.presence.clear();
        if let Some(pending) = self
            .publisher
            .as_mut()
            .and_then(|publisher| publisher.pending.as_mut())
        {
            // Sent again, with its key, on the next connection.
            pending.id = None;
            pending.resend_at = Instant::now();
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, socket: &mut Socket, frame: Value) -> Result<(), String> {
        let text = frame.to_string();
        self.checker().frame(self.spec.id, '>', &text);
        tokio::time::timeout(Duration::from_secs(2), socket.send(Message::text(text)))
            .await
            .map_err(|_| "send timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// One connection, until it ends.
    async fn session(&mut self, mut socket: Socket) -> End {
        let opened = Instant::now();
        let is_publisher = self.publisher.is_some();
        let lifetime = if is_publisher {
            self.rng.random_range(3000..8000)
        } else {
            self.rng.random_range(1000..5000)
        };
        let churn_at = opened + Duration::from_millis(lifetime);
        let mut presence_id = None;
        let mut presence_retry = Some(Instant::now());
        let mut check_id = None;
        let mut told_late = false;
        loop {
            let now = Instant::now();
            let phase = self.phase();
            if self.ctx.abort.load(Ordering::Relaxed) {
                return End::Stop;
            }
            if phase == Phase::Done {
                close(socket).await;
                return End::Stop;
            }
            if phase == Phase::Chaos && now >= churn_at {
                return self.churn(socket).await;
            }
            if !self.stream.subscribed && now > opened + SUBSCRIBED_TIMEOUT && !told_late {
                told_late = true;
                self.violation(&format!(
                    "no `subscribed` frame within {SUBSCRIBED_TIMEOUT:?} of the upgrade"
                ));
            }
            if let Some(at) = presence_retry
                && now >= at
            {
                presence_retry = None;
                let id = self.take_id();
                presence_id = Some(id);
                let frame = json!({"type": "$presence", "data": {"topic": self.topic()}, "id": id});
                if self.send(&mut socket, frame).await.is_err() {
                    return End::Again;
                }
            }
            if phase == Phase::Check && check_id.is_none() {
                let id = self.take_id();
                check_id = Some(id);
                let frame = json!({"type": "$presence", "data": {"topic": self.topic()}, "id": id});
                if self.send(&mut socket, frame).await.is_err() {
                    return End::Again;
                }
            }
            match self.publish_step(&mut socket, phase).await {
                Ok(true) => {}
                Ok(false) => return End::Again,
                Err(error) => {
                    self.log(format!("connection lost while sending: {error}"));
                    return End::Again;
                }
            }
            let next = tokio::time::timeout(Duration::from_millis(50), socket.next()).await;
            let message = match next {
                Err(_) => continue,
                Ok(None) => {
                    self.log("connection closed (no close frame)".to_owned());
                    return End::Again;
                }
                Ok(Some(Err(error))) => {
                    self.log(format!("connection lost: {error}"));
                    return End::Again;
                }
                Ok(Some(Ok(message))) => message,
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => {
                    let code = frame.as_ref().map_or(1005, |frame| u16::from(frame.code));
                    let mut checker = self.checker();
                    *checker.counts.server_closes.entry(code).or_default() += 1;
                    checker.log(
                        Who::Client(self.spec.id),
                        format!("closed by the server: {frame:?}"),
                    );
                    return End::Again;
                }
                _ => continue,
            };
            self.checker().frame(self.spec.id, '<', text.as_str());
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                self.violation(&format!("a frame that is not JSON: {}", text.as_str()));
                continue;
            };
            if let Some(reply_to) = frame.get("reply_to").and_then(Value::as_u64) {
                if Some(reply_to) == presence_id {
                    presence_id = None;
                    match frame["ok"].get("users") {
                        Some(users) => {
                            let overtaken = self.presence.answer(users);
                            if !overtaken.is_empty() {
                                self.log(format!(
                                    "the $presence answer contradicts frames that came before it: {}",
                                    overtaken.join(", ")
                                ));
                            }
                            let id = self.spec.id;
                            self.checker().views[id].presence_overtaken = overtaken;
                            self.show_presence();
                        }
                        None => {
                            self.log(format!("$presence failed: {}", frame["error"]));
                            presence_retry = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                } else if Some(reply_to) == check_id {
                    let id = self.spec.id;
                    self.checker().views[id].presence_answer = Some(frame);
                } else {
                    self.answer(reply_to, &frame);
                }
                continue;
            }
            if frame.get("error").is_some() {
                self.log(format!("an error frame without reply_to: {frame}"));
                continue;
            }
            self.topic_frame(&frame);
        }
    }

    fn topic(&self) -> String {
        format!("room:{}", self.spec.room)
    }

    /// A voluntary disconnect: a close frame, or the socket dropped.
    async fn churn(&mut self, socket: Socket) -> End {
        if self.rng.random_bool(0.6) {
            self.log("disconnect: close frame".to_owned());
            close(socket).await;
        } else {
            self.log("disconnect: socket dropped".to_owned());
            drop(socket);
        }
        End::Again
    }

    fn show_presence(&self) {
        let id = self.spec.id;
        let users = self.presence.users.clone();
        self.checker().views[id].presence = users;
    }

    /// A frame about the room: an event, `subscribed`, `reset`, presence.
    fn topic_frame(&mut self, frame: &Value) {
        if frame.get("topic").and_then(Value::as_str) != Some(self.topic().as_str()) {
            self.violation(&format!("a frame of another topic: {frame}"));
            return;
        }
        let step = if let Some(event) = frame.get("event") {
            let text = event["text"].as_str().unwrap_or_default().to_owned();
            let Some(offset) = frame.get("offset").and_then(Value::as_u64) else {
                self.violation(&format!("an event without an offset: {frame}"));
                return;
            };
            self.stream.event(offset, &text).inspect_err(|_| {
                self.stream.resync(offset);
            })
        } else if let Some(subscribed) = frame.get("subscribed") {
            let Some(pos) = Pos::from_json(subscribed) else {
                self.violation(&format!("a malformed `subscribed` frame: {frame}"));
                return;
            };
            let recovered = subscribed.get("recovered").and_then(Value::as_bool);
            let at = pos.clone();
            self.stream.subscribed(pos, recovered).inspect_err(|_| {
                self.stream.force(at);
            })
        } else if let Some(reset) = frame.get("reset") {
            let Some(pos) = Pos::from_json(reset) else {
                self.violation(&format!("a malformed `reset` frame: {frame}"));
                return;
            };
            self.stream.reset(pos)
        } else {
            if let Some(user) = frame["join"]["user"].as_str() {
                self.presence.join(user);
            } else if let Some(user) = frame["leave"]["user"].as_str() {
                self.presence.leave(user);
            } else if let Some(users) = frame["presence"].get("users") {
                self.presence.replace(users);
            } else {
                self.log(format!("an unknown frame: {frame}"));
                return;
            }
            self.show_presence();
            return;
        };
        match step {
            Ok(step) => self.apply(step),
            Err(broken) => self.violation(&broken),
        }
        let (id, room) = (self.spec.id, self.spec.room);
        let (at, subscribed) = (self.stream.at.clone(), self.stream.subscribed);
        let mut checker = self.checker();
        if let Some(at) = &at {
            checker.epoch(room, &at.epoch, id);
        }
        checker.views[id].at = at;
        checker.views[id].connected = subscribed;
    }

    fn apply(&mut self, step: Step) {
        let (id, room) = (self.spec.id, self.spec.room);
        let final_text = final_text(room);
        let mut checker = self.checker();
        if let Some((kind, needless, text)) = step.told {
            checker.told(id, kind, needless, text);
        }
        for (pos, text) in step.delivered {
            checker.delivered(room, id, &text, &pos);
            if text == final_text {
                checker.views[id].final_seen = Some(pos);
            }
        }
    }

    /// An answer to a `say`.
    fn answer(&mut self, reply_to: u64, frame: &Value) {
        let (id, room) = (self.spec.id, self.spec.room);
        let rate = self.ctx.rate;
        let shared = Arc::clone(&self.ctx.checker);
        let Some(publisher) = self.publisher.as_mut() else {
            let note = format!("an answer nobody waits for: {frame}");
            shared
                .lock()
                .expect("checker lock")
                .log(Who::Client(id), note);
            return;
        };
        let Some(pending) = publisher
            .pending
            .as_mut()
            .filter(|pending| pending.id == Some(reply_to))
        else {
            let note = format!("an answer to an earlier try: {frame}");
            shared
                .lock()
                .expect("checker lock")
                .log(Who::Client(id), note);
            return;
        };
        if let Some(error) = frame.get("error") {
            let code = error["code"].as_u64().unwrap_or(0);
            pending.id = None;
            pending.resend_at =
                Instant::now() + Duration::from_millis(self.rng.random_range(100..400));
            let text = pending.text.clone();
            let mut checker = shared.lock().expect("checker lock");
            checker.counts.publish_errors += 1;
            checker.log(
                Who::Client(id),
                format!("`{text}` refused: {error}; again with its key"),
            );
            if !(500..600).contains(&code) {
                let message = format!("{}: `{text}` refused with {error}", self.spec.name);
                checker.violation(vec![id], message);
            }
            return;
        }
        let Some(pos) = Pos::from_json(&frame["ok"]) else {
            let message = format!(
                "{}: an acknowledgement without a position: {frame}",
                self.spec.name
            );
            shared
                .lock()
                .expect("checker lock")
                .violation(vec![id], message);
            return;
        };
        let pending = publisher.pending.take().expect("matched above");
        let mut checker = shared.lock().expect("checker lock");
        checker.log(
            Who::Client(id),
            format!(
                "`{}` acknowledged at {pos}{} (try {})",
                pending.text,
                match &pending.kind {
                    Kind::Normal => String::new(),
                    Kind::Probe(first) => format!(", sent again after its ack at {first}"),
                    Kind::Final => " (the final event)".to_owned(),
                },
                pending.tries
            ),
        );
        if matches!(pending.kind, Kind::Probe(_)) {
            checker.counts.duplicate_probes += 1;
        }
        checker.acked(room, id, &pending.text, &pos);
        checker.views[id].idle = true;
        drop(checker);
        match pending.kind {
            Kind::Final => publisher.final_done = true,
            Kind::Normal => publisher.last_acked = Some((pending.text, pos)),
            Kind::Probe(_) => {}
        }
        let every = 1.0 / rate.max(0.1);
        let mut wait = every * self.rng.random_range(0.5..1.5);
        // Now and then a quiet spell.
        if self.rng.random_bool(0.05) {
            wait += self.rng.random_range(2.0..4.0);
        }
        publisher.next_send_at = Instant::now() + Duration::from_secs_f64(wait);
    }

    /// A publisher's turn: send what is due. False: the session must end
    /// (a cut, or an answer that never came).
    async fn publish_step(&mut self, socket: &mut Socket, phase: Phase) -> Result<bool, String> {
        let id = self.spec.id;
        let now = Instant::now();
        let room = self.spec.room;
        let Some(publisher) = self.publisher.as_mut() else {
            return Ok(true);
        };
        if let Some(pending) = &publisher.pending {
            if pending.id.is_some() && now > pending.sent_at + ANSWER_TIMEOUT {
                let text = pending.text.clone();
                self.log(format!(
                    "no answer to `{text}` within {ANSWER_TIMEOUT:?}; reconnecting"
                ));
                return Ok(false);
            }
            if pending.id.is_some() || now < pending.resend_at {
                return Ok(true);
            }
        } else {
            let next = match phase {
                Phase::Chaos if now >= publisher.next_send_at => {
                    let probe = self.rng.random_bool(0.08);
                    match (&publisher.last_acked, probe) {
                        (Some((text, pos)), true) => Some((text.clone(), Kind::Probe(pos.clone()))),
                        _ => {
                            publisher.seq += 1;
                            Some((
                                format!("r{room}.p{}.n{}", publisher.index, publisher.seq),
                                Kind::Normal,
                            ))
                        }
                    }
                }
                Phase::Final if publisher.index == 0 && !publisher.final_done => {
                    Some((final_text(room), Kind::Final))
                }
                _ => None,
            };
            let Some((text, kind)) = next else {
                return Ok(true);
            };
            publisher.pending = Some(Pending {
                text,
                kind,
                id: None,
                sent_at: now,
                resend_at: now,
                tries: 0,
            });
            self.checker().views[id].idle = false;
        }
        // Send (or send again) the pending one.
        let say_id = self.take_id();
        let publisher = self.publisher.as_mut().expect("a publisher");
        let pending = publisher.pending.as_mut().expect("pending");
        pending.id = Some(say_id);
        pending.sent_at = now;
        pending.tries += 1;
        let text = pending.text.clone();
        let tries = pending.tries;
        let frame = json!({
            "type": "say",
            "data": {"text": text},
            "id": say_id,
            "idempotency_key": text,
        });
        if tries > 1 {
            self.log(format!("`{text}` sent again (try {tries})"));
        }
        self.send(socket, frame).await?;
        let cut = phase == Phase::Chaos && self.rng.random_bool(0.03);
        if cut {
            self.log(format!("socket cut right after sending `{text}`"));
            return Ok(false);
        }
        Ok(true)
    }
}

impl Stream {
    /// After a broken event: go on from it, so that one fault is reported
    /// once (with `--keep-going`).
    pub(crate) fn resync(&mut self, offset: u64) {
        if let Some(at) = self.at.as_mut() {
            at.offset = offset;
        }
    }

    /// After a broken `subscribed` frame: take its position.
    pub(crate) fn force(&mut self, pos: Pos) {
        self.subscribed = true;
        self.at = Some(pos);
    }
}

/// A close frame, then what the server still sends, briefly.
async fn close(mut socket: Socket) {
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.close(None)).await;
    let drain = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}
