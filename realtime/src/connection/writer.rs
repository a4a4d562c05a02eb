//! The write task: drains the outbound queue into the socket in batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;

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
    loop {
        let first = tokio::select! {
            biased;
            () = shared.abort.cancelled() => return false,
            next = queue.recv() => next,
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
                        () = shared.abort.cancelled() => false,
                        sent = send_close(sink, code) => sent,
                    };
                }
            };
            // `feed` waits when the socket is full, like `flush`.
            let fed_ok = tokio::select! {
                biased;
                () = shared.abort.cancelled() => return false,
                fed = sink.feed(message) => fed.is_ok(),
            };
            if !fed_ok {
                return false;
            }
            fed += 1;
            if fed < batch {
                next = queue.try_recv().ok();
            }
        }
        // A client that does not read blocks the flush; an abort (its queue
        // filled up meanwhile) must still end the connection.
        let flushed = tokio::select! {
            biased;
            () = shared.abort.cancelled() => return false,
            flushed = sink.flush() => flushed,
        };
        if flushed.is_err() {
            return false;
        }
    }
}

async fn send_close(sink: &mut Sink, code: u16) -> bool {
    let frame = CloseFrame {
        code,
        reason: close_reason(code).into(),
    };
    sink.send(Message::Close(Some(frame))).await.is_ok()
}
