//! The write task: drains the outbound queue into the socket in batches.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFuture;

use super::{Outbound, Shared};
use crate::protocol::close_reason;

type Sink = SplitSink<WebSocket, Message>;

/// Runs until a close frame is sent, the queue closes, a write fails or the
/// connection is aborted. On its way out it aborts the connection, so the
/// read loop stops too.
pub(super) async fn write(
    mut sink: Sink,
    mut queue: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    batch: usize,
    close_timeout: Duration,
) {
    let closed = drain(&mut sink, &mut queue, &shared, batch).await;
    if !closed {
        let code = shared.abort_code.load(Ordering::Acquire);
        if code != 0 {
            // Best effort: a client that stopped reading may never take it.
            let _ = tokio::time::timeout(close_timeout, send_close(&mut sink, code)).await;
        }
    }
    let _ = tokio::time::timeout(close_timeout, sink.close()).await;
    shared.abort(0);
}

/// Writes queued frames until the end; returns whether a close frame was sent.
async fn drain(
    sink: &mut Sink,
    queue: &mut mpsc::Receiver<Outbound>,
    shared: &Shared,
    batch: usize,
) -> bool {
    // Made once and polled only when the queue or the socket makes us wait:
    // each poll takes a lock. Between frames the flag is checked instead.
    let aborted = shared.abort.fired();
    tokio::pin!(aborted);
    loop {
        if shared.abort.is_fired() {
            return false;
        }
        let first = tokio::select! {
            biased;
            next = queue.recv() => next,
            () = &mut aborted => return false,
        };
        let Some(first) = first else { return false };
        let mut next = Some(first);
        let mut fed = 0;
        // Feed up to `batch` frames that are already waiting, then flush once.
        while let Some(item) = next.take() {
            let message = match item {
                Outbound::Frame(text) => Message::Text(text),
                Outbound::Ping => Message::Ping(bytes::Bytes::new()),
                Outbound::Close(code) => {
                    return tokio::select! {
                        biased;
                        () = &mut aborted => false,
                        sent = send_close(sink, code) => sent,
                    };
                }
            };
            // The socket takes a frame at once unless its buffer is full; an
            // abort (the client's queue filled up meanwhile) must still end
            // a wait for a client that does not read.
            if !unless_aborted(aborted.as_mut(), |cx| sink.poll_ready_unpin(cx)).await {
                return false;
            }
            if sink.start_send_unpin(message).is_err() {
                return false;
            }
            fed += 1;
            if fed < batch {
                next = queue.try_recv().ok();
            }
        }
        if !unless_aborted(aborted.as_mut(), |cx| sink.poll_flush_unpin(cx)).await {
            return false;
        }
    }
}

/// Drives a sink operation to its end; false if it failed or the connection
/// was aborted first. The abort is polled only while the sink is not ready.
async fn unless_aborted<E>(
    mut aborted: Pin<&mut WaitForCancellationFuture<'_>>,
    mut operation: impl FnMut(&mut Context<'_>) -> Poll<Result<(), E>>,
) -> bool {
    poll_fn(|cx| {
        if let Poll::Ready(result) = operation(cx) {
            return Poll::Ready(result.is_ok());
        }
        if aborted.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

async fn send_close(sink: &mut Sink, code: u16) -> bool {
    let frame = CloseFrame {
        code,
        reason: close_reason(code).into(),
    };
    sink.send(Message::Close(Some(frame))).await.is_ok()
}
