//! A loopback TCP proxy in front of a real server, whose connections a test
//! can freeze one by one: the bytes stop in both directions while both
//! sockets stay open, as when one TCP path is cut and the other is not.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards `127.0.0.1:<port>` to a target address; stops when dropped.
#[derive(Debug)]
pub(crate) struct Proxy {
    port: u16,
    /// One flag per accepted connection, in the order they came.
    frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding a free port to `target` (`127.0.0.1:<port>`).
    pub(crate) async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("an address").port();
        let frozen: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let flags = Arc::clone(&frozen);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                flags.lock().unwrap().push(Arc::clone(&flag));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, Arc::clone(&flag)));
                tokio::spawn(pipe(server_read, client_write, flag));
            }
        });
        Self { port, frozen, task }
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// How many connections it has accepted.
    pub(crate) fn connections(&self) -> usize {
        self.frozen.lock().unwrap().len()
    }

    /// Stops the bytes of connection `index` (0 for the first accepted).
    pub(crate) fn freeze(&self, index: usize) {
        self.frozen.lock().unwrap()[index].store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes; bytes read while `frozen`
/// are held back for good (the connection looks alive, and answers
/// nothing).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
