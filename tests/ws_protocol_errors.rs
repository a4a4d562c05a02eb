//! Frames that break RFC 6455 itself, written byte by byte over a raw TCP
//! socket (a WebSocket client library would refuse to send them): the
//! server closes with the code the RFC gives, not with an empty close.

mod support;

use futures_util::StreamExt;
use support::DEADLINE;
use support::room::RoomServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Upgrades a raw socket to `/ws/lobby` by hand.
async fn upgraded(server: &RoomServer) -> TcpStream {
    support::raw_upgrade(server.server.addr(), "/ws/lobby?token=alice", "")
        .await
        .0
}

/// A client frame: FIN, `opcode`, masked with a fixed key unless `masked` is
/// false.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut bytes = vec![0x80 | opcode];
    if masked {
        bytes.push(0x80 | payload.len() as u8);
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    } else {
        bytes.push(payload.len() as u8);
        bytes.extend_from_slice(payload);
    }
    bytes
}

/// Writes `bytes` and returns the close code the server answers with.
async fn close_code_after(bytes: &[u8]) -> u16 {
    let server = RoomServer::start().await;
    let mut socket = upgraded(&server).await;
    socket.write_all(bytes).await.expect("write the frame");
    let mut client = WebSocketStream::from_raw_socket(socket, Role::Client, None).await;
    let read = async {
        while let Some(message) = client.next().await {
            if let Ok(Message::Close(close)) = message {
                return close.map(|close| u16::from(close.code));
            }
        }
        None
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a close within the deadline")
        .expect("a close frame with a code")
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    assert_eq!(
        close_code_after(&frame(0x1, &[0xff, 0xfe], true)).await,
        1007
    );
}

#[tokio::test]
async fn an_unmasked_frame_closes_with_1002() {
    assert_eq!(close_code_after(&frame(0x1, b"{}", false)).await, 1002);
}

#[tokio::test]
async fn a_reserved_opcode_closes_with_1002() {
    assert_eq!(close_code_after(&frame(0x3, b"", true)).await, 1002);
}

#[tokio::test]
async fn a_reserved_bit_closes_with_1002() {
    let mut bytes = frame(0x1, b"{}", true);
    bytes[0] |= 0x40; // RSV1, with no extension agreed
    assert_eq!(close_code_after(&bytes).await, 1002);
}

#[tokio::test]
async fn a_close_frame_with_a_one_byte_payload_closes_with_1002() {
    assert_eq!(close_code_after(&frame(0x8, &[0x03], true)).await, 1002);
}

#[tokio::test]
async fn a_request_and_a_close_in_one_write_get_the_answer_then_the_close() {
    // The close arrives in the same read as the request: the request's
    // answer is written before the server's answer to the close, and the
    // server echoes the client's code.
    let server = RoomServer::start().await;
    let mut socket = upgraded(&server).await;
    let mut bytes = frame(
        0x1,
        br#"{"type":"echo","data":{"text":"last"},"id":7}"#,
        true,
    );
    bytes.extend(frame(0x8, &1000u16.to_be_bytes(), true));
    socket.write_all(&bytes).await.expect("write the frames");
    let mut frames = Vec::new();
    let read = async {
        while let Some((opcode, payload)) = server_frame(&mut socket).await {
            frames.push((opcode, payload));
            if opcode == 0x8 {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the frames within the deadline");
    let text = |payload: &[u8]| String::from_utf8_lossy(payload).into_owned();
    assert_eq!(
        frames.len(),
        2,
        "{:?}",
        frames.iter().map(|(o, p)| (o, text(p))).collect::<Vec<_>>()
    );
    assert_eq!(frames[0].0, 0x1);
    assert_eq!(text(&frames[0].1), r#"{"reply_to":7,"ok":"last"}"#);
    assert_eq!(frames[1], (0x8, 1000u16.to_be_bytes().to_vec()));
    // Nothing after the close frame: the server ends the connection.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{} bytes after the close", rest.len());
}

/// A masked client frame of any length, FIN set or not.
fn raw_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    support::masked_frame(u8::from(fin) << 7 | opcode, payload)
}

/// The next server frame on a raw socket: its opcode and payload (server
/// frames are not masked).
async fn server_frame(socket: &mut (impl AsyncReadExt + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    socket.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7F {
        126 => {
            let mut len = [0u8; 2];
            socket.read_exact(&mut len).await.ok()?;
            u64::from(u16::from_be_bytes(len))
        }
        127 => {
            let mut len = [0u8; 8];
            socket.read_exact(&mut len).await.ok()?;
            u64::from_be_bytes(len)
        }
        len => u64::from(len),
    };
    let mut payload = vec![0; usize::try_from(len).ok()?];
    socket.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0F, payload))
}

/// The close code the server sends next on a raw socket, skipping other
/// frames; `None` if the socket ends first.
async fn raw_close_code(socket: &mut (impl AsyncReadExt + Unpin)) -> Option<u16> {
    while let Some((opcode, payload)) = server_frame(socket).await {
        if opcode == 0x8 {
            return payload
                .get(..2)
                .map(|code| u16::from_be_bytes([code[0], code[1]]));
        }
    }
    None
}

/// This process's CPU time so far (user and system), from `/proc`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the line, in clock ticks (100 per second).
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[tokio::test]
async fn a_length_with_its_top_bit_set_closes_with_1002() {
    // RFC 6455, 5.2: the most significant bit of a 64-bit length must be 0.
    let mut bytes = vec![0x81, 0x80 | 127];
    bytes.extend_from_slice(&u64::MAX.to_be_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(close_code_after(&bytes).await, 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_empty_continuation_frames_close_with_1008_and_cost_no_core() {
    // A message opened and fed empty continuation frames (6 bytes each)
    // never completes: no message for the rate limit, nothing toward the
    // size limit. Measured over a fixed window: before the fragment bound
    // the server parsed them for as long as they came, a core's worth.
    let server = RoomServer::start().await;
    let (mut read, mut write) = upgraded(&server).await.into_split();
    let empty = raw_frame(false, 0x0, b"");
    let burst: Vec<u8> = empty
        .iter()
        .copied()
        .cycle()
        .take(empty.len() * 4096)
        .collect();
    let window = std::time::Duration::from_secs(3);
    let started = tokio::time::Instant::now();
    let cpu_before = cpu_seconds();
    let attack = tokio::spawn(async move {
        write.write_all(&raw_frame(false, 0x1, b"{")).await.ok()?;
        let mut sent = 0u64;
        while started.elapsed() < window {
            if write.write_all(&burst).await.is_err() {
                break;
            }
            sent += 4096;
        }
        Some(sent)
    });
    let code = tokio::time::timeout(DEADLINE, raw_close_code(&mut read))
        .await
        .expect("closed within the deadline");
    assert_eq!(code, Some(1008));
    let _ = attack.await;
    tokio::time::sleep_until(started + window).await;
    let cpu = cpu_seconds() - cpu_before;
    assert!(
        cpu < 1.0,
        "{cpu:.2} CPU-seconds in a {window:?} window: the frames were parsed on"
    );
}

#[tokio::test]
async fn a_message_unfinished_past_the_fragment_timeout_closes_with_1008() {
    // A trickle: one fragment, then pings (which are not fragments, and
    // keep the socket past the idle timeout) until the deadline passes.
    let mut config = realtime::Config::default();
    config.fragment_timeout = std::time::Duration::from_secs(1);
    let server = RoomServer::with_config(config).await;
    let (mut read, mut write) = upgraded(&server).await.into_split();
    let started = tokio::time::Instant::now();
    let trickle = tokio::spawn(async move {
        write.write_all(&raw_frame(false, 0x1, b"{")).await?;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            write.write_all(&raw_frame(true, 0x9, b"")).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let code = tokio::time::timeout(DEADLINE, async {
        // The pongs come first.
        loop {
            match server_frame(&mut read).await {
                Some((0xA, _)) => {}
                Some((0x8, payload)) => return Some(u16::from_be_bytes([payload[0], payload[1]])),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("closed within the deadline");
    trickle.abort();
    assert_eq!(code, Some(1008));
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
}

/// `$ping` request `id` split into ten frames.
fn fragmented_ping(id: u64) -> Vec<u8> {
    let text = format!(r#"{{"type":"$ping","id":{id:>20}}}"#);
    let parts: Vec<&[u8]> = text.as_bytes().chunks(text.len().div_ceil(10)).collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .flat_map(|(n, part)| {
            let opcode = if n == 0 { 0x1 } else { 0x0 };
            raw_frame(n == last, opcode, part)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_past_the_frame_budget_wait_and_nobody_else_does() {
    // Messages in ten frames each: 15 messages are well within the message
    // limit (50 at once), 150 frames are three times the frame budget
    // (50 a second). A read that brings 150 leaves the socket 100 in debt:
    // the next batch is read two seconds later, however fast it was sent.
    let mut config = realtime::Config::default();
    config.max_frames_per_sec = 50;
    config.max_messages_per_sec = 50;
    config.rate_burst = 50;
    let server = RoomServer::with_config(config).await;
    let (mut read, mut write) = upgraded(&server).await.into_split();
    let started = tokio::time::Instant::now();
    let mut replies = 0;
    for batch in 0..2u64 {
        let messages: Vec<u8> = (0..15)
            .flat_map(|n| fragmented_ping(batch * 15 + n))
            .collect();
        write
            .write_all(&messages)
            .await
            .expect("write the messages");
        tokio::time::timeout(DEADLINE, async {
            let until = replies + 15;
            while replies < until {
                if let Some((0x1, _)) = server_frame(&mut read).await {
                    replies += 1;
                }
            }
        })
        .await
        .expect("every message answered within the deadline");
    }
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1500),
        "300 frames at 50/s read in {took:?}"
    );

    // The throttled socket's wait is its own: a bystander is answered
    // while it waits.
    let messages: Vec<u8> = (30..45).flat_map(fragmented_ping).collect();
    write.write_all(&messages).await.expect("write more");
    let mut bystander = server.connect("lobby", "bob").await;
    let reply = bystander
        .request("echo", serde_json::json!({"text": "hi"}), 1)
        .await;
    assert!(reply.get("reply_to").is_some(), "{reply}");
    assert!(
        server_frame(&mut read).await.is_some(),
        "the throttled socket is still open"
    );
}
