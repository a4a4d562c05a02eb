//! The chat example as a child process, for the tests that run it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use realtime::testing::TestClient;

use super::{DEADLINE, free_port, subscribed};

/// A child process killed when dropped.
pub(crate) struct Process(pub(crate) Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cargo test` builds the examples next to the test binaries.
pub(crate) fn chat_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().unwrap().parent().unwrap();
    let binary = profile.join("examples").join("chat");
    assert!(
        binary.exists(),
        "{} is missing: run through `cargo test`",
        binary.display()
    );
    binary
}

pub(crate) fn start_chat(redis_url: &str) -> (Process, u16) {
    let port = free_port();
    (start_chat_on(redis_url, port), port)
}

pub(crate) fn start_chat_on(redis_url: &str, port: u16) -> Process {
    start_chat_with(redis_url, port, &[])
}

/// The chat on `port` with more environment variables.
pub(crate) fn start_chat_with(redis_url: &str, port: u16, env: &[(&str, &str)]) -> Process {
    let child = Command::new(chat_binary())
        .envs(env.iter().copied())
        .env("PORT", port.to_string())
        .env("REDIS_URL", redis_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the chat example");
    let process = Process(child);
    wait_for_port(port, "the chat example");
    process
}

/// A client of `user` in `room` on the chat at `port`, past its
/// `subscribed` frame.
pub(crate) async fn enter(port: u16, room: &str, user: &str) -> TestClient {
    let url = format!("ws://127.0.0.1:{port}/ws/{room}");
    let mut client = TestClient::connect(&url, user)
        .await
        .unwrap_or_else(|error| panic!("connect {user} to the chat: {error}"));
    subscribed(&mut client).await;
    client
}

/// Sends SIGTERM and waits for the process to exit by itself.
pub(crate) fn terminate(mut process: Process) {
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "the chat exits cleanly on SIGTERM, got {status}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the chat did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
