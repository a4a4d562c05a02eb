//! Serving an axum app with the guards a public WebSocket server needs
//! before any socket is upgraded: a deadline for the request head, a bound
//! on connections not yet upgraded, a pause on accept errors, the file
//! limit raised at start, `TCP_NODELAY` and a bounded send buffer on every
//! socket, and one deadline for the whole shutdown.
//!
//! `axum::serve` has none of these: a client that opens connections and
//! sends nothing holds a file descriptor each for as long as it likes, and
//! once the process runs out of descriptors nobody else gets in; a request
//! head sent halfway holds a graceful shutdown forever.

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::handler::MessageHandler;
use crate::service::Service;
use crate::util::{Backoff, Jitter};

/// Serves `app` on `listener` with the guards of this module; see [`Serve`]
/// for the settings and their defaults.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
///
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
/// realtime::serve(listener, app)
///     .header_timeout(Duration::from_secs(5))
///     .with_graceful_shutdown(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await
/// # }
/// ```
pub fn serve(listener: TcpListener, app: Router) -> Serve {
    Serve {
        listener,
        app,
        header_timeout: Duration::from_secs(10),
        max_pending: 1024,
        send_buffer: Some(64 * 1024),
        shutdown_timeout: Duration::from_secs(10),
        signal: Box::pin(std::future::pending()),
        drain_delay: Duration::ZERO,
        on_signal: Vec::new(),
        drains: Vec::new(),
    }
}

type Drain = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server being set up; `.await` it to run. Made by [`serve`].
#[must_use = "a server does nothing until awaited"]
pub struct Serve {
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    max_pending: usize,
    send_buffer: Option<usize>,
    shutdown_timeout: Duration,
    signal: Drain,
    drain_delay: Duration,
    /// Run at the signal, before the drain delay.
    on_signal: Vec<Box<dyn FnOnce() + Send>>,
    drains: Vec<Box<dyn FnOnce() -> Drain + Send>>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("header_timeout", &self.header_timeout)
            .field("max_pending", &self.max_pending)
            .field("send_buffer", &self.send_buffer)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// How long a client has to send a request's line and headers. Default:
    /// 10 s. A connection that takes longer is closed, so that silent
    /// connections cannot pile up.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Connections accepted and not yet upgraded (or answered and closed)
    /// at once. Default: 1024. Past it the server stops accepting until one
    /// ends, and new ones wait in the kernel's backlog, where they hold no
    /// file descriptor of this process. Upgraded WebSockets are bounded by
    /// `Config::max_connections` instead; keep the file limit above the
    /// sum of the two.
    pub fn max_pending(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// The kernel's send buffer of each socket (`SO_SNDBUF`, which Linux
    /// doubles for its own bookkeeping). Default: 64 KiB; `None` leaves the
    /// kernel's autotuning, which grows a buffer up to `tcp_wmem`'s maximum
    /// (4 MiB by default).
    ///
    /// A client that stops reading leaves the server's side of its socket
    /// full: with autotuning, about a mebibyte of kernel memory each, so
    /// that a few thousand such sockets (clients resuming a long history and
    /// never reading it, say) push the machine into TCP memory pressure.
    /// Realtime frames are small; 64 KiB is many of them, and the
    /// connection's own queue holds what does not fit.
    pub fn send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// Shuts down once `signal` resolves and the
    /// [`drain_delay`](Self::drain_delay) has passed: stops accepting, lets
    /// requests in flight finish, and runs the drains of
    /// [`with_service`](Self::with_service), all within
    /// [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.signal = Box::pin(signal);
        self
    }

    /// Closes `service`'s WebSockets with 1001 at shutdown
    /// ([`Service::shutdown`]), within the same deadline as the rest; from
    /// the signal on, the service is draining ([`Service::drain`]: `/ready`
    /// answers 503).
    pub fn with_service<H: MessageHandler, B: Broker>(mut self, service: Service<H, B>) -> Self {
        let draining = service.clone();
        self.on_signal.push(Box::new(move || draining.drain()));
        self.drains.push(Box::new(move || {
            Box::pin(async move { service.shutdown().await })
        }));
        self
    }

    /// How long to go on serving after the signal before shutting down:
    /// the services are draining meanwhile (`/ready` answers 503
    /// `draining`), so that a load balancer takes the instance out before
    /// its connections close. Default: none. Not counted in
    /// [`shutdown_timeout`](Self::shutdown_timeout).
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// The one deadline of a shutdown, from the end of the drain delay (the
    /// signal, without one) to the return:
    /// requests in flight and half-sent request heads are dropped at it,
    /// and the wait for [`with_service`](Self::with_service)'s 1001 closes
    /// ends there. Default: 10 s. WebSockets run in tasks of their own: one
    /// still open at the deadline ends when the runtime does (when `main`
    /// returns).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    async fn run(self) -> io::Result<()> {
        raise_file_limit();
        let Self {
            listener,
            app,
            header_timeout,
            max_pending,
            send_buffer,
            shutdown_timeout,
            signal,
            drain_delay,
            on_signal,
            drains,
        } = self;
        // The signal, then the drain delay, during which the server goes
        // on accepting while the services say they are draining.
        let mut signal = Box::pin(async move {
            signal.await;
            for draining in on_signal {
                draining();
            }
            if !drain_delay.is_zero() {
                tracing::info!(?drain_delay, "draining before the shutdown");
                tokio::time::sleep(drain_delay).await;
            }
        });
        let pending = Arc::new(Semaphore::new(max_pending));
        let (stopping, stop) = watch::channel(false);
        let mut connections = JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        loop {
            // A place first, then a connection: past the bound, clients wait
            // in the backlog instead of holding a descriptor here.
            let permit = tokio::select! {
                () = &mut signal => break,
                permit = Arc::clone(&pending).acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let accepted = tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    backoff.reset();
                    // Realtime frames are small and written as they come:
                    // with Nagle's algorithm on, a frame written while an
                    // earlier one is unacknowledged waits for the client's
                    // delayed ACK (up to 40 ms on Linux). The writer already
                    // batches what is ready into one flush.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    if let Some(bytes) = send_buffer
                        && let Err(error) =
                            socket2::SockRef::from(&stream).set_send_buffer_size(bytes)
                    {
                        tracing::debug!(%error, "could not set SO_SNDBUF");
                    }
                    stream
                }
                Err(error) => {
                    // The pause gives way to the signal: a shutdown starts
                    // when asked, not after the pause.
                    tokio::select! {
                        () = &mut signal => break,
                        () = backoff.pause(&error) => continue,
                    }
                }
            };
            // Finished connections are reaped as we go, so the set stays
            // the size of what is open.
            while connections.try_join_next().is_some() {}
            let service = TowerToHyperService::new(app.clone());
            let mut stop = stop.clone();
            connections.spawn(async move {
                let _permit = permit;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                tokio::pin!(connection);
                let stopped = async move {
                    // The guard `wait_for` returns is not `Send`; only
                    // whether it came matters.
                    let _ = stop.wait_for(|stop| *stop).await.is_ok();
                };
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = stopped => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        drop(listener);
        let _ = stopping.send(true);
        let drains = drains.into_iter().map(|drain| drain());
        let everything = async {
            futures_util::future::join_all(drains).await;
            while connections.join_next().await.is_some() {}
        };
        if tokio::time::timeout(shutdown_timeout, everything)
            .await
            .is_err()
        {
            tracing::warn!(
                ?shutdown_timeout,
                "shutdown deadline passed; dropping what is still open"
            );
        }
        // Whatever is still open is dropped here, with the set.
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Raises this process's soft limit of open files to its hard limit, and
/// logs the limit it got. Called by [`serve`] at start: the default soft
/// limit (often 1024) is far below what a WebSocket server holds.
fn raise_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open file limit"),
    }
}

/// The pause after a failed accept. Running out of descriptors or memory
/// fails every accept at once; retrying without a pause spins a core and
/// floods the log, so the pause doubles up to a second, and the warning
/// is written once per streak.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failed accepts in the current streak; `None` outside one.
    failures: Option<u32>,
}

impl AcceptBackoff {
    const PAUSES: Backoff = Backoff::new(
        Duration::from_millis(10),
        Duration::from_secs(1),
        Jitter::None,
    );

    async fn pause(&mut self, error: &io::Error) {
        // One client's connection failing before it was accepted says
        // nothing about the server: take the next one at once.
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::Interrupted
        ) {
            return;
        }
        let failures = match self.failures {
            None => {
                tracing::warn!(%error, "accept failed; pausing before the next one");
                0
            }
            Some(failures) => failures.saturating_add(1),
        };
        self.failures = Some(failures);
        tokio::time::sleep(Self::PAUSES.wait(failures)).await;
    }

    fn reset(&mut self) {
        if self.failures.take().is_some() {
            tracing::info!("accepting again");
        }
    }
}
