//! [`MemoryBroker`]: fan-out between the services of one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::{Broker, BrokerError, Incoming};
use crate::protocol::Frame;

/// The embedded broker: delivers frames to every service in this process that
/// shares it. The default of [`Service`](crate::Service).
///
/// Clones share one hub, and each clone is a node of its own: two services
/// built with clones of one `MemoryBroker` behave like two instances on one
/// Redis. Publishing delivers synchronously into the subscribed services:
/// a publish has reached every one when it returns. One topic's publishes
/// reach every node in one order: each holds the topic's lock while it
/// delivers, so two publishers cannot interleave differently per node.
///
/// # Examples
///
/// ```
/// use realtime::MemoryBroker;
///
/// let hub = MemoryBroker::new();
/// let for_node_a = hub.clone();
/// let for_node_b = hub;
/// # let _ = (for_node_a, for_node_b);
/// ```
#[derive(Debug, Default)]
pub struct MemoryBroker {
    hub: Arc<Hub>,
    /// This handle's place in the hub, set by `attach`.
    member: OnceLock<usize>,
}

/// The members subscribed to one topic, with where to deliver to each.
type Members = Vec<(usize, Incoming)>;

#[derive(Debug, Default)]
struct Hub {
    /// Every attached service, by member index.
    members: Mutex<Vec<Incoming>>,
    /// Topic -> members subscribed to it. Read on every publish, written on
    /// the first and last subscriber of a topic per member. Each topic's
    /// lock is held while a publish delivers, which gives the topic one order.
    topics: RwLock<HashMap<Box<str>, Mutex<Members>>>,
}

impl MemoryBroker {
    /// A new hub with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    fn member(&self) -> Result<(usize, Incoming), BrokerError> {
        let index = *self.member.get().ok_or_else(|| {
            BrokerError::Unavailable("the memory broker is not attached to a service".into())
        })?;
        let members = self
            .hub
            .members
            .lock()
            .expect("memory broker lock poisoned");
        Ok((index, members[index].clone()))
    }
}

impl Clone for MemoryBroker {
    /// Another node on the same hub, to attach to another service.
    fn clone(&self) -> Self {
        Self {
            hub: Arc::clone(&self.hub),
            member: OnceLock::new(),
        }
    }
}

impl Broker for MemoryBroker {
    fn attach(&self, incoming: Incoming) {
        let mut members = self
            .hub
            .members
            .lock()
            .expect("memory broker lock poisoned");
        members.push(incoming);
        let index = members.len() - 1;
        // A handle attached twice keeps its first place: `Service` attaches once.
        let _ = self.member.set(index);
    }

    async fn publish(&self, topic: &str, frame: Frame) -> Result<(), BrokerError> {
        let topics = self.hub.topics.read().expect("memory broker lock poisoned");
        if let Some(members) = topics.get(topic) {
            // Delivery only puts the frame in each node's ring: short, and
            // never waits, so holding the topic's lock across it is cheap.
            let members = members.lock().expect("memory broker lock poisoned");
            for (_, incoming) in members.iter() {
                incoming.deliver(topic, frame.clone());
            }
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        let (index, incoming) = self.member()?;
        let mut topics = self
            .hub
            .topics
            .write()
            .expect("memory broker lock poisoned");
        let members = topics
            .entry(topic.into())
            .or_default()
            .get_mut()
            .expect("memory broker lock poisoned");
        if !members.iter().any(|(member, _)| *member == index) {
            members.push((index, incoming));
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError> {
        let (index, _) = self.member()?;
        let mut topics = self
            .hub
            .topics
            .write()
            .expect("memory broker lock poisoned");
        if let Some(members) = topics.get_mut(topic) {
            let members = members.get_mut().expect("memory broker lock poisoned");
            members.retain(|(member, _)| *member != index);
            if members.is_empty() {
                topics.remove(topic);
            }
        }
        Ok(())
    }
}

impl MemoryBroker {
    /// Topics this handle's node is subscribed to, sorted; for tests and
    /// diagnostics.
    pub fn subscribed_topics(&self) -> Vec<String> {
        let Some(index) = self.member.get() else {
            return Vec::new();
        };
        let topics = self.hub.topics.read().expect("memory broker lock poisoned");
        let mut names: Vec<String> = topics
            .iter()
            .filter(|(_, members)| {
                members
                    .lock()
                    .expect("memory broker lock poisoned")
                    .iter()
                    .any(|(member, _)| member == index)
            })
            .map(|(topic, _)| topic.to_string())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting() -> (Incoming, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        (
            Incoming::new(move |_, _| {
                seen.fetch_add(1, Ordering::Relaxed);
            }),
            count,
        )
    }

    #[tokio::test]
    async fn delivers_to_subscribed_nodes_only() {
        let hub = MemoryBroker::new();
        let (a, b) = (hub.clone(), hub.clone());
        let (incoming_a, count_a) = counting();
        let (incoming_b, count_b) = counting();
        a.attach(incoming_a);
        b.attach(incoming_b);
        a.subscribe("t").await.unwrap();
        b.publish("t", Frame::from("x".to_owned())).await.unwrap();
        assert_eq!(count_a.load(Ordering::Relaxed), 1);
        assert_eq!(count_b.load(Ordering::Relaxed), 0);
        a.unsubscribe("t").await.unwrap();
        b.publish("t", Frame::from("x".to_owned())).await.unwrap();
        assert_eq!(count_a.load(Ordering::Relaxed), 1);
        assert!(a.subscribed_topics().is_empty());
    }
}
