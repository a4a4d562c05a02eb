//! A client's answers, sent in the order of its frames, though a
//! broadcast's answer waits for its publish.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use crate::outbox::Outbox;
use crate::protocol::Frame;

/// A broadcast's answer: its publish, then the ack or the error frame.
pub(super) type Publish<'a> = Pin<Box<dyn Future<Output = Option<Frame>> + Send + 'a>>;

/// A client's answers, in the order of its frames. A broadcast's answer
/// waits for its publish; while one waits, the answers after it wait behind
/// it, so the client reads them in the order it sent the frames.
#[derive(Default)]
pub(super) struct Answers<'a> {
    /// Made at the first publish that has to wait: the list allocates when it
    /// is made, and a connection that never publishes needs none. Boxed, so
    /// that until then it takes a pointer's room in the read loop's future.
    waiting: Option<Box<FuturesOrdered<Answer<'a>>>>,
}

impl<'a> Answers<'a> {
    /// How many answers wait.
    pub(super) fn len(&self) -> usize {
        self.waiting.as_ref().map_or(0, |waiting| waiting.len())
    }

    /// The next answer in order, once it is known; `None` if none waits.
    pub(super) async fn next(&mut self) -> Option<Option<Frame>> {
        match &mut self.waiting {
            Some(waiting) => waiting.next().await,
            None => None,
        }
    }

    fn push(&mut self, answer: Answer<'a>) {
        self.waiting
            .get_or_insert_with(Box::default)
            .push_back(answer);
    }

    /// An answer known now: sent at once unless others wait before it.
    pub(super) fn ready(&mut self, outbox: &Outbox, answer: Option<Frame>) {
        if self.len() == 0 {
            if let Some(frame) = answer {
                outbox.push(frame);
            }
        } else {
            self.push(Answer::Ready(answer));
        }
    }

    /// Sends every waiting answer, once each is known.
    pub(super) async fn flush(&mut self, outbox: &Outbox) {
        while let Some(answer) = self.next().await {
            if let Some(frame) = answer {
                outbox.push(frame);
            }
        }
    }

    /// A publish and the answer it leads to.
    pub(super) async fn publish(&mut self, outbox: &Outbox, mut publish: Publish<'a>) {
        // Polled once now, before the next frame is read, so that the broker
        // has queued this publish before the next one: a Redis connection
        // keeps its commands in order, so events keep the order of frames.
        let first = poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(answer) => self.ready(outbox, answer),
            Poll::Pending => self.push(Answer::Publish(publish)),
        }
    }
}

/// One answer in [`Answers`].
enum Answer<'a> {
    Ready(Option<Frame>),
    Publish(Publish<'a>),
}

impl Future for Answer<'_> {
    type Output = Option<Frame>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Frame>> {
        match self.get_mut() {
            Answer::Ready(answer) => Poll::Ready(answer.take()),
            Answer::Publish(publish) => publish.as_mut().poll(cx),
        }
    }
}
