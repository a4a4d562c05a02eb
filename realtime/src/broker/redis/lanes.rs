//! Cluster mode only: one topic's publishes reach its master in the order
//! they were made.
//!
//! The cluster client does not keep the order of the commands it is given
//! at once: it starts each in a set of futures that it polls newest first,
//! so a burst goes out reversed (measured: one connection's 200 broadcasts
//! to one topic arrived at Redis as 81, 65, 64, 63, ...). A single Redis
//! connection keeps its commands in order, and the read loop relies on
//! that to keep a client's events in the order it sent them.
//!
//! So each topic gets a lane: publishes queue in it in the order they are
//! made, and one task per busy lane sends what has queued as one pipeline
//! (a pipeline goes to one node, in order), waits for its answers, then
//! sends what queued meanwhile. Topics do not wait for each other. Under
//! load a lane's batches grow, so it costs about one round trip per batch,
//! not per publish; an idle topic has no lane and no task.

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, RedisError, RedisResult, Value};
use tokio::sync::oneshot;

use crate::util::Mutex;

/// Where a publish's answer goes.
type Reply = oneshot::Sender<RedisResult<Value>>;

/// The publishes waiting in one topic's lane, in the order they were made.
type Waiting = Vec<(Cmd, Reply)>;

/// The busy topics and what waits in each. A topic is here exactly while
/// a task sends its publishes.
#[derive(Default)]
pub(super) struct Lanes {
    lanes: Mutex<HashMap<Box<str>, Waiting>>,
}

impl Lanes {
    /// Sends `cmd`, a publish to `topic`, after every publish to `topic`
    /// made before it, and returns Redis's answer.
    ///
    /// The command joins the lane when this future is first polled, before
    /// it waits, so two publishes polled one after the other keep their
    /// order.
    pub(super) async fn send(
        self: &Arc<Self>,
        conn: &ClusterConnection,
        topic: &str,
        cmd: Cmd,
    ) -> RedisResult<Value> {
        let (reply, answer) = oneshot::channel();
        let idle = {
            let mut lanes = self.lanes.lock();
            match lanes.get_mut(topic) {
                Some(waiting) => {
                    waiting.push((cmd, reply));
                    false
                }
                None => {
                    lanes.insert(topic.into(), vec![(cmd, reply)]);
                    true
                }
            }
        };
        if idle {
            tokio::spawn(Arc::clone(self).drain(conn.clone(), topic.into()));
        }
        match answer.await {
            Ok(answer) => answer,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the publish was dropped before it was sent",
            ))),
        }
    }

    /// Sends `topic`'s waiting publishes, a batch at a time, until none
    /// waits; then the lane goes.
    async fn drain(self: Arc<Self>, mut conn: ClusterConnection, topic: Box<str>) {
        loop {
            let batch = {
                let mut lanes = self.lanes.lock();
                let Some(waiting) = lanes.get_mut(&topic) else {
                    return;
                };
                if waiting.is_empty() {
                    lanes.remove(&topic);
                    return;
                }
                std::mem::take(waiting)
            };
            let mut pipe = ::redis::pipe();
            // One publish's error (an expired deadline, a missing script)
            // is its own answer, not the batch's.
            pipe.ignore_errors();
            let mut replies = Vec::with_capacity(batch.len());
            for (cmd, reply) in batch {
                pipe.add_command(cmd);
                replies.push(reply);
            }
            match pipe.query_async::<Vec<Value>>(&mut conn).await {
                Ok(answers) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer.extract_error());
                    }
                }
                Ok(answers) => {
                    let error = RedisError::from((
                        ::redis::ErrorKind::UnexpectedReturnType,
                        "a pipeline answered with another number of replies",
                        format!("{} for {}", answers.len(), replies.len()),
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
                Err(error) => {
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}
