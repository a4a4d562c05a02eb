//! The checker: what every client saw and every publisher was acknowledged,
//! held in one place and checked as it comes, and the trace that explains a
//! violation.
//!
//! Two kinds of state:
//!
//! - [`Stream`], per client connection (in the client's own task): the
//!   order of what it received between two points where it was told
//!   (`subscribed` without `since`, `recovered: false`, `reset`);
//! - [`Checker`], shared: every position an event was seen or acknowledged
//!   at, by text (the text is the idempotency key), the trace, the
//!   violations and the counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Frames kept per client for a violation's report.
const LAST_FRAMES: usize = 40;
/// A data-losing fault this close before an epoch was first seen may have
/// caused it (an epoch is only seen once someone reads it).
const LOSS_SLACK: Duration = Duration::from_secs(2);
/// Without a fault for this long, Redis is up and the nodes are linked
/// again: an upgrade refused with 503 is then a violation.
pub(crate) const QUIET_AFTER_FAULT: Duration = Duration::from_secs(5);

/// A topic's position: an offset in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pos {
    pub(crate) offset: u64,
    pub(crate) epoch: String,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.offset, self.epoch)
    }
}

impl Pos {
    /// `{"offset": .., "epoch": ..}`.
    pub(crate) fn from_json(value: &serde_json::Value) -> Option<Self> {
        Some(Self {
            offset: value.get("offset")?.as_u64()?,
            epoch: value.get("epoch")?.as_str()?.to_owned(),
        })
    }
}

/// Who a trace line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    /// The fault injector.
    Fault,
    /// The run itself: setup, phases, probes.
    Run,
    /// A client, by index.
    Client(usize),
}

#[derive(Debug)]
struct Line {
    at: Duration,
    who: Who,
    text: String,
}

/// A broken promise.
#[derive(Debug, Clone)]
pub(crate) struct Violation {
    pub(crate) at: Duration,
    pub(crate) clients: Vec<usize>,
    pub(crate) message: String,
}

/// What the run knows of one client, for the end checks and the report.
#[derive(Debug, Default)]
pub(crate) struct View {
    pub(crate) name: String,
    pub(crate) room: usize,
    /// Subscribed (the `subscribed` frame came) on a session still open.
    pub(crate) connected: bool,
    /// A publisher with nothing left to be acknowledged.
    pub(crate) idle: bool,
    /// The last position given to it.
    pub(crate) at: Option<Pos>,
    /// Where it received its room's final event.
    pub(crate) final_seen: Option<Pos>,
    /// The list of users it built from presence frames, `None` until a
    /// `$presence` answer came on this session.
    pub(crate) presence: Option<BTreeSet<String>>,
    /// Joins and leaves that came before this session's `$presence`
    /// answer, which the answer then contradicted.
    pub(crate) presence_overtaken: Vec<String>,
    /// The answer to the `$presence` asked in the check phase.
    pub(crate) presence_answer: Option<serde_json::Value>,
    /// Its last frames, both ways (`<` received, `>` sent).
    pub(crate) frames: VecDeque<(Duration, String)>,
}

/// One sighting of an event (an acknowledgement or a delivery).
#[derive(Debug, Clone)]
struct Sighting {
    pos: Pos,
    client: usize,
    acked: bool,
    at: Duration,
}

/// Counts for the summary.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) faults: BTreeMap<&'static str, u64>,
    pub(crate) acked: u64,
    pub(crate) duplicate_probes: u64,
    pub(crate) publish_errors: u64,
    pub(crate) checked: u64,
    pub(crate) told: BTreeMap<&'static str, u64>,
    /// Tells where nothing was lost: a reset within the epoch, a resume in
    /// the same epoch answered `recovered: false`.
    pub(crate) needless_tells: u64,
    pub(crate) refused_503: u64,
    pub(crate) server_closes: BTreeMap<u16, u64>,
    pub(crate) sessions: u64,
    /// A key published again in a later epoch after Redis lost it.
    pub(crate) republished_after_loss: u64,
}

/// The shared state of the checker.
#[derive(Debug)]
pub(crate) struct Checker {
    start: Instant,
    lines: Vec<Line>,
    pub(crate) violations: Vec<Violation>,
    /// (room, epoch, offset) → the text seen or acknowledged there, and by whom.
    positions: HashMap<(usize, String, u64), (String, usize, bool)>,
    /// text → where it was seen or acknowledged.
    texts: HashMap<String, Vec<Sighting>>,
    /// (room, epoch) → when it was first seen.
    epochs: HashMap<(usize, String), Duration>,
    /// When a fault that loses data in Redis (a restart without its
    /// writes) happened.
    losses: Vec<Duration>,
    /// When a fault that may start new epochs happened, and for which
    /// room (`None`: any).
    epoch_changes: Vec<(Duration, Option<usize>)>,
    /// Each room's latest new epoch, and when it was first seen.
    latest_epoch: HashMap<usize, (String, Duration)>,
    /// Whether a fault is being injected now, and when the last one ended.
    fault_active: bool,
    last_fault_end: Duration,
    pub(crate) counts: Counts,
    pub(crate) views: Vec<View>,
}

impl Checker {
    pub(crate) fn new(start: Instant, views: Vec<View>) -> Mutex<Self> {
        Mutex::new(Self {
            start,
            lines: Vec::new(),
            violations: Vec::new(),
            positions: HashMap::new(),
            texts: HashMap::new(),
            epochs: HashMap::new(),
            losses: Vec::new(),
            epoch_changes: Vec::new(),
            latest_epoch: HashMap::new(),
            fault_active: false,
            last_fault_end: Duration::ZERO,
            counts: Counts::default(),
            views,
        })
    }

    pub(crate) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn log(&mut self, who: Who, text: impl Into<String>) {
        let at = self.now();
        self.lines.push(Line {
            at,
            who,
            text: text.into(),
        });
    }

    pub(crate) fn violation(&mut self, mut clients: Vec<usize>, message: impl Into<String>) {
        let message = message.into();
        let mut seen = BTreeSet::new();
        clients.retain(|client| seen.insert(*client));
        let at = self.now();
        let who = clients
            .first()
            .map_or(Who::Run, |client| Who::Client(*client));
        self.log(who, format!("VIOLATION: {message}"));
        self.violations.push(Violation {
            at,
            clients,
            message,
        });
    }

    /// A frame to or from `client`, kept for the report.
    pub(crate) fn frame(&mut self, client: usize, direction: char, text: &str) {
        let at = self.now();
        let frames = &mut self.views[client].frames;
        if frames.len() == LAST_FRAMES {
            frames.pop_front();
        }
        frames.push_back((at, format!("{direction} {text}")));
    }

    pub(crate) fn fault_started(&mut self, kind: &'static str, detail: &str) {
        self.fault_active = true;
        *self.counts.faults.entry(kind).or_default() += 1;
        self.log(Who::Fault, format!("{kind}: {detail}"));
    }

    pub(crate) fn fault_ended(&mut self, note: &str) {
        self.fault_active = false;
        self.last_fault_end = self.now();
        if !note.is_empty() {
            self.log(Who::Fault, note.to_owned());
        }
    }

    /// Redis lost writes just now (a restart without them).
    pub(crate) fn lost_data(&mut self) {
        let at = self.now();
        self.losses.push(at);
    }

    /// A fault that may start new epochs (of `room`, or of every room)
    /// happened just now.
    pub(crate) fn epochs_may_change(&mut self, room: Option<usize>) {
        let at = self.now();
        self.epoch_changes.push((at, room));
    }

    /// `client` was given a position in `epoch` of `room`. A room's new
    /// epoch must follow a fault that may start one: nothing else loses
    /// a topic's history.
    pub(crate) fn epoch(&mut self, room: usize, epoch: &str, client: usize) {
        if self.epochs.contains_key(&(room, epoch.to_owned())) {
            return;
        }
        let now = self.now();
        self.epochs.insert((room, epoch.to_owned()), now);
        let previous = self.latest_epoch.insert(room, (epoch.to_owned(), now));
        let Some((previous, since)) = previous else {
            return;
        };
        let explained = self.epoch_changes.iter().any(|(at, which)| {
            which.is_none_or(|which| which == room) && *at + LOSS_SLACK >= since && *at <= now
        });
        if !explained {
            let message = format!(
                "room {room} moved from epoch {previous} (first seen at {:.3} s) to {epoch}, seen first by {}, with no fault that may lose its history in between",
                since.as_secs_f64(),
                self.views[client].name
            );
            self.violation(vec![client], message);
        }
    }

    /// Whether Redis has been up, untouched, for a while.
    pub(crate) fn quiet(&self) -> bool {
        !self.fault_active && self.now() >= self.last_fault_end + QUIET_AFTER_FAULT
    }

    fn epoch_seen(&mut self, room: usize, epoch: &str, client: usize) -> Duration {
        self.epoch(room, epoch, client);
        self.epochs[&(room, epoch.to_owned())]
    }

    /// Whether Redis may have lost an idempotency key between the first
    /// sightings of two epochs.
    fn loss_between(&self, first: Duration, second: Duration) -> bool {
        let (low, high) = if first <= second {
            (first, second)
        } else {
            (second, first)
        };
        self.losses
            .iter()
            .any(|loss| *loss + LOSS_SLACK >= low && *loss <= high)
    }

    /// `text` was acknowledged, or delivered, at `pos` of `room`.
    fn sighting(&mut self, room: usize, client: usize, text: &str, pos: &Pos, acked: bool) {
        let first_seen = self.epoch_seen(room, &pos.epoch, client);
        let key = (room, pos.epoch.clone(), pos.offset);
        match self.positions.get(&key) {
            Some((other, by, other_acked)) if other != text => {
                let (other, by, other_acked) = (other.clone(), *by, *other_acked);
                let mut involved = vec![client, by];
                involved.extend(self.publisher_of(&other));
                involved.extend(self.publisher_of(text));
                let message = format!(
                    "room {room}: position {pos} holds two events: `{other}` ({} by {}) and `{text}` ({} by {})",
                    if other_acked {
                        "acknowledged"
                    } else {
                        "delivered"
                    },
                    self.views[by].name,
                    if acked { "acknowledged" } else { "delivered" },
                    self.views[client].name,
                );
                self.violation(involved, message);
            }
            Some(_) => {}
            None => {
                self.positions.insert(key, (text.to_owned(), client, acked));
            }
        }
        let now = self.now();
        let earlier: Vec<Sighting> = self.texts.get(text).cloned().unwrap_or_default();
        let mut republished = false;
        for seen in &earlier {
            if seen.pos == *pos {
                continue;
            }
            let other_first = self.epochs[&(room, seen.pos.epoch.clone())];
            if seen.pos.epoch != pos.epoch && self.loss_between(other_first, first_seen) {
                republished = true;
                continue;
            }
            let message = format!(
                "room {room}: `{text}` (one idempotency key) {} at {} by {} ({:.3} s) and {} at {pos} by {}",
                if seen.acked {
                    "acknowledged"
                } else {
                    "delivered"
                },
                seen.pos,
                self.views[seen.client].name,
                seen.at.as_secs_f64(),
                if acked { "acknowledged" } else { "delivered" },
                self.views[client].name,
            );
            let mut involved = vec![client, seen.client];
            involved.extend(self.publisher_of(text));
            self.violation(involved, message);
            break;
        }
        let sightings = self.texts.entry(text.to_owned()).or_default();
        if !sightings.iter().any(|seen| seen.pos == *pos) {
            if republished {
                self.counts.republished_after_loss += 1;
            }
            sightings.push(Sighting {
                pos: pos.clone(),
                client,
                acked,
                at: now,
            });
        }
    }

    /// The client that publishes `text`: `r<room>.p<index>.n<seq>` is
    /// `p<room>.<index>`'s, `final-r<room>` is `p<room>.0`'s.
    fn publisher_of(&self, text: &str) -> Option<usize> {
        let name = if let Some(room) = text.strip_prefix("final-r") {
            format!("p{room}.0")
        } else {
            let mut parts = text.strip_prefix('r')?.split('.');
            let room = parts.next()?;
            let index = parts.next()?.strip_prefix('p')?;
            format!("p{room}.{index}")
        };
        self.views.iter().position(|view| view.name == name)
    }

    /// A publisher's `text` was acknowledged at `pos`.
    pub(crate) fn acked(&mut self, room: usize, client: usize, text: &str, pos: &Pos) {
        self.counts.acked += 1;
        self.sighting(room, client, text, pos, true);
    }

    /// A client received `text` at `pos`, in order (its stream checked it).
    pub(crate) fn delivered(&mut self, room: usize, client: usize, text: &str, pos: &Pos) {
        self.counts.checked += 1;
        self.sighting(room, client, text, pos, false);
    }

    pub(crate) fn told(&mut self, client: usize, kind: &'static str, needless: bool, text: String) {
        *self.counts.told.entry(kind).or_default() += 1;
        if needless {
            self.counts.needless_tells += 1;
        }
        self.log(Who::Client(client), text);
    }

    /// An upgrade of `client` was refused with `status`.
    pub(crate) fn refused(&mut self, client: usize, status: u16, url: &str) {
        self.log(
            Who::Client(client),
            format!("upgrade refused: {status} ({url})"),
        );
        if status != 503 {
            let message = format!(
                "{} was refused with {status}: {url}",
                self.views[client].name
            );
            self.violation(vec![client], message);
        } else {
            self.counts.refused_503 += 1;
            if self.quiet() {
                let message = format!(
                    "{} was refused with 503 while Redis was up ({:.1} s after the last fault): {url}",
                    self.views[client].name,
                    (self.now() - self.last_fault_end).as_secs_f64()
                );
                self.violation(vec![client], message);
            }
        }
    }

    /// The whole trace, one line per action.
    pub(crate) fn dump(&self, names: &[String]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        for line in &self.lines {
            let who = match line.who {
                Who::Fault => "FAULT",
                Who::Run => "run",
                Who::Client(client) => names[client].as_str(),
            };
            let _ = writeln!(
                out,
                "{:>9.3} s  {who:<8} {}",
                line.at.as_secs_f64(),
                line.text
            );
        }
        out
    }

    /// The report of the first violation: the faults and the involved
    /// clients' actions up to it, then their last frames.
    pub(crate) fn report(&self, violation: &Violation, names: &[String]) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let involved = |who: Who| match who {
            Who::Fault | Who::Run => true,
            Who::Client(client) => violation.clients.contains(&client),
        };
        let lines: Vec<&Line> = self
            .lines
            .iter()
            .filter(|line| line.at <= violation.at && involved(line.who))
            .collect();
        // The faults and the run's steps in full; a client's actions from
        // its last 60 lines.
        let mut keep = vec![false; lines.len()];
        let mut per_client: HashMap<usize, usize> = HashMap::new();
        for (n, line) in lines.iter().enumerate().rev() {
            keep[n] = match line.who {
                Who::Fault | Who::Run => true,
                Who::Client(client) => {
                    let count = per_client.entry(client).or_default();
                    *count += 1;
                    *count <= 60
                }
            };
        }
        let _ = writeln!(
            out,
            "trace (faults, the run's steps, and the actions of {}), up to the violation:",
            violation
                .clients
                .iter()
                .map(|client| names[*client].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (line, kept) in lines.iter().zip(keep) {
            if !kept {
                continue;
            }
            let who = match line.who {
                Who::Fault => "FAULT".to_owned(),
                Who::Run => "run".to_owned(),
                Who::Client(client) => names[client].clone(),
            };
            let _ = writeln!(
                out,
                "  {:>9.3} s  {who:<8} {}",
                line.at.as_secs_f64(),
                line.text
            );
        }
        for client in &violation.clients {
            let view = &self.views[*client];
            let _ = writeln!(out, "last frames of {} (room {}):", view.name, view.room);
            for (at, frame) in &view.frames {
                let _ = writeln!(out, "  {:>9.3} s  {frame}", at.as_secs_f64());
            }
        }
        out
    }
}

/// Why a stream check failed: the message of a violation.
pub(crate) type Broken = String;

/// One client connection's stream of a topic with history: the positions
/// it was given, checked as they come.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// The last position it was given (an event's, or a told point's).
    pub(crate) at: Option<Pos>,
    /// The `since` of this connection, until its `subscribed` frame.
    since: Option<Pos>,
    /// Whether the `subscribed` frame of this connection came.
    pub(crate) subscribed: bool,
    /// Events before the `subscribed` frame: the catch-up.
    catch_up: Vec<(u64, String)>,
}

/// What a frame did to a stream: events to record once their epoch is
/// known, and whether the client was told.
#[derive(Debug, Default)]
pub(crate) struct Step {
    pub(crate) delivered: Vec<(Pos, String)>,
    pub(crate) told: Option<(&'static str, bool, String)>,
}

impl Stream {
    /// A new connection, resuming from `since` or not.
    pub(crate) fn connect(&mut self, since: Option<Pos>) {
        self.since = since;
        self.subscribed = false;
        self.catch_up.clear();
    }

    /// An event frame at `offset`.
    pub(crate) fn event(&mut self, offset: u64, text: &str) -> Result<Step, Broken> {
        if !self.subscribed {
            let Some(since) = &self.since else {
                return Err(format!(
                    "event {offset} (`{text}`) before the `subscribed` frame of a connection without `since`"
                ));
            };
            let expected = self.catch_up.last().map_or(since.offset, |(last, _)| *last) + 1;
            if offset != expected {
                return Err(format!(
                    "catch-up from {since}: event {offset} (`{text}`) where {expected} was due"
                ));
            }
            self.catch_up.push((offset, text.to_owned()));
            return Ok(Step::default());
        }
        let at = self
            .at
            .as_ref()
            .expect("a subscribed stream has a position");
        if offset != at.offset + 1 {
            let what = if offset <= at.offset {
                "again or out of order"
            } else {
                "after a gap, without being told"
            };
            return Err(format!(
                "event {offset} (`{text}`) of epoch {} {what}: the last one given was {}",
                at.epoch, at.offset
            ));
        }
        let pos = Pos {
            offset,
            epoch: at.epoch.clone(),
        };
        self.at = Some(pos.clone());
        Ok(Step {
            delivered: vec![(pos, text.to_owned())],
            told: None,
        })
    }

    /// The `subscribed` frame.
    pub(crate) fn subscribed(&mut self, pos: Pos, recovered: Option<bool>) -> Result<Step, Broken> {
        if self.subscribed {
            return Err(format!(
                "a second `subscribed` frame ({pos}) on one connection"
            ));
        }
        self.subscribed = true;
        let since = self.since.take();
        let catch_up = std::mem::take(&mut self.catch_up);
        let mut step = Step::default();
        match (since, recovered) {
            (None, None) => {
                step.told = Some(("subscribe", false, format!("subscribed at {pos}")));
            }
            (None, Some(recovered)) => {
                return Err(format!(
                    "`subscribed` at {pos} says recovered: {recovered} to a connection without `since`"
                ));
            }
            (Some(since), None) => {
                return Err(format!(
                    "`subscribed` at {pos} after a resume from {since} says nothing of `recovered`"
                ));
            }
            (Some(since), Some(true)) => {
                if pos.epoch != since.epoch {
                    return Err(format!(
                        "resumed from {since}: `recovered: true` in another epoch ({pos})"
                    ));
                }
                if pos.offset < since.offset {
                    return Err(format!(
                        "resumed from {since}: `recovered: true` at an earlier position ({pos})"
                    ));
                }
                let got: Vec<u64> = catch_up.iter().map(|(offset, _)| *offset).collect();
                let due: Vec<u64> = (since.offset + 1..=pos.offset).collect();
                if got != due {
                    return Err(format!(
                        "resumed from {since}: `recovered: true` at {pos} after events {} ({} of them), where {}..={} were due",
                        short_list(&got),
                        got.len(),
                        since.offset + 1,
                        pos.offset
                    ));
                }
                step.delivered = catch_up
                    .into_iter()
                    .map(|(offset, text)| {
                        (
                            Pos {
                                offset,
                                epoch: pos.epoch.clone(),
                            },
                            text,
                        )
                    })
                    .collect();
            }
            (Some(since), Some(false)) => {
                if !catch_up.is_empty() {
                    return Err(format!(
                        "resumed from {since}: `recovered: false` at {pos} after {} replayed events",
                        catch_up.len()
                    ));
                }
                // Nothing was lost when the epoch is the same and the gap
                // small: the history (100 000 events) held it.
                let needless = pos.epoch == since.epoch
                    && pos.offset >= since.offset
                    && pos.offset - since.offset < 500;
                step.told = Some((
                    "recovered:false",
                    needless,
                    format!(
                        "resumed from {since}: recovered: false at {pos}{}",
                        if needless {
                            " (same epoch: needless)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
        self.at = Some(pos);
        Ok(step)
    }

    /// A `reset` frame.
    pub(crate) fn reset(&mut self, pos: Pos) -> Result<Step, Broken> {
        if !self.subscribed {
            return Err(format!("`reset` to {pos} before the `subscribed` frame"));
        }
        let needless = self.at.as_ref().is_some_and(|at| at.epoch == pos.epoch);
        let text = format!(
            "reset from {} to {pos}{}",
            self.at.as_ref().map_or("-".to_owned(), ToString::to_string),
            if needless {
                " (same epoch: needless)"
            } else {
                ""
            }
        );
        self.at = Some(pos);
        Ok(Step {
            delivered: Vec::new(),
            told: Some(("reset", needless, text)),
        })
    }
}

fn short_list(offsets: &[u64]) -> String {
    if offsets.len() <= 12 {
        return format!("{offsets:?}");
    }
    format!(
        "[{}, .., {}]",
        offsets[..5]
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        offsets[offsets.len() - 5..]
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A client's list of users in its room, built from presence frames.
#[derive(Debug, Default)]
pub(crate) struct PresenceList {
    /// `None` until the first `$presence` answer of the connection.
    pub(crate) users: Option<BTreeSet<String>>,
    /// The joins (true) and leaves that came before the answer.
    before_answer: Vec<(bool, String)>,
}

fn users_of(users: &serde_json::Value) -> BTreeSet<String> {
    users
        .as_object()
        .map(|users| users.keys().cloned().collect())
        .unwrap_or_default()
}

impl PresenceList {
    pub(crate) fn clear(&mut self) {
        self.users = None;
        self.before_answer.clear();
    }

    /// A `presence` frame: the whole list, in order with the joins and
    /// leaves.
    pub(crate) fn replace(&mut self, users: &serde_json::Value) {
        self.users = Some(users_of(users));
    }

    /// The answer to `$presence`: the whole list, as a page takes it.
    /// Returns the joins and leaves that came before it and that it
    /// contradicts (the events overtook the answer).
    pub(crate) fn answer(&mut self, users: &serde_json::Value) -> Vec<String> {
        let list = users_of(users);
        let mut contradicted = Vec::new();
        for (joined, user) in std::mem::take(&mut self.before_answer) {
            // Only a user's last frame before the answer counts.
            contradicted.retain(|seen: &String| !seen.ends_with(&format!(" {user}")));
            if joined != list.contains(&user) {
                contradicted.push(format!("{} {user}", if joined { "join" } else { "leave" }));
            }
        }
        self.users = Some(list);
        contradicted
    }

    pub(crate) fn join(&mut self, user: &str) {
        match self.users.as_mut() {
            Some(users) => {
                users.insert(user.to_owned());
            }
            None => self.before_answer.push((true, user.to_owned())),
        }
    }

    pub(crate) fn leave(&mut self, user: &str) {
        match self.users.as_mut() {
            Some(users) => {
                users.remove(user);
            }
            None => self.before_answer.push((false, user.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: u64, epoch: &str) -> Pos {
        Pos {
            offset,
            epoch: epoch.to_owned(),
        }
    }

    #[test]
    fn a_resume_must_replay_exactly_the_gap() {
        let mut stream = Stream::default();
        stream.connect(Some(pos(3, "e")));
        stream.event(4, "a").unwrap();
        stream.event(5, "b").unwrap();
        let step = stream.subscribed(pos(5, "e"), Some(true)).unwrap();
        assert_eq!(step.delivered.len(), 2);
        stream.event(6, "c").unwrap();
        assert!(stream.event(8, "d").is_err(), "a gap");

        let mut stream = Stream::default();
        stream.connect(Some(pos(3, "e")));
        stream.event(4, "a").unwrap();
        assert!(stream.subscribed(pos(5, "e"), Some(true)).is_err());
    }

    #[test]
    fn a_reset_is_a_new_start() {
        let mut stream = Stream::default();
        stream.connect(None);
        assert!(stream.subscribed(pos(7, "e"), None).unwrap().told.is_some());
        stream.event(8, "a").unwrap();
        stream.reset(pos(0, "f")).unwrap();
        stream.event(1, "b").unwrap();
        assert!(stream.event(1, "b").is_err(), "a duplicate");
    }
}
