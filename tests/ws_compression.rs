//! permessage-deflate (RFC 7692) over a raw TCP socket, since the test
//! client library (tungstenite) knows no extension: the offer and the
//! answer, compressed frames both ways, one compressed event shared by
//! every subscriber, and the codes of broken compressed messages.

mod support;

use realtime::Config;
use support::DEADLINE;
use support::room::RoomServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every permessage-deflate answer of the server says.
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Upgrades a raw socket to `/ws/lobby` as `user`, offering `extensions`;
/// returns the socket and the server's `Sec-WebSocket-Extensions`, if any.
async fn upgrade(
    server: &RoomServer,
    user: &str,
    extensions: Option<&str>,
) -> (TcpStream, Option<String>) {
    let offer = extensions
        .map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n"))
        .unwrap_or_default();
    let path = format!("/ws/lobby?token={user}");
    let (socket, head) = support::raw_upgrade(server.server.addr(), &path, &offer).await;
    let answer = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    });
    (socket, answer)
}

/// A masked client frame; `compressed` sets RSV1.
fn client_frame(fin: bool, compressed: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    support::masked_frame(
        u8::from(fin) << 7 | u8::from(compressed) << 6 | opcode,
        payload,
    )
}

/// DEFLATE as RFC 7692 sends it: a sync flush without its last 4 bytes.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, flate2::FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A compressed payload read back, with the 4 bytes put back, as a
/// browser reads it (a sync flush, no final block).
fn inflate(payload: &[u8]) -> String {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decompress = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(1 << 20);
    decompress
        .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .expect("inflate");
    assert_eq!(decompress.total_in(), input.len() as u64, "all of it read");
    String::from_utf8(out).expect("UTF-8")
}

/// One server frame: its first byte (FIN, RSV1, opcode) and payload.
async fn server_frame(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.expect("a frame");
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => {
                let mut len = [0u8; 2];
                socket.read_exact(&mut len).await.expect("a length");
                usize::from(u16::from_be_bytes(len))
            }
            127 => {
                let mut len = [0u8; 8];
                socket.read_exact(&mut len).await.expect("a length");
                usize::try_from(u64::from_be_bytes(len)).expect("a length")
            }
            len => usize::from(len),
        };
        let mut payload = vec![0; len];
        socket.read_exact(&mut payload).await.expect("a payload");
        (head[0], payload)
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("a frame within the deadline")
}

/// The next text message, read back whether it came compressed or not,
/// skipping pings; with whether it was compressed.
async fn next_text(socket: &mut TcpStream) -> (String, bool) {
    loop {
        let (first, payload) = server_frame(socket).await;
        assert_ne!(first & 0x80, 0, "one frame per message");
        match first & 0x0F {
            0x1 if first & 0x40 != 0 => return (inflate(&payload), true),
            0x1 => return (String::from_utf8(payload).expect("UTF-8"), false),
            0x9 => continue,
            opcode => panic!("opcode {opcode}: {payload:?}"),
        }
    }
}

/// The next text frame as it came, past pings.
async fn event(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    loop {
        let (first, payload) = server_frame(socket).await;
        if first & 0x0F == 0x1 {
            return (first, payload);
        }
    }
}

/// The code of the close frame the server sends next, past other frames.
async fn close_code(socket: &mut TcpStream) -> u16 {
    loop {
        let (first, payload) = server_frame(socket).await;
        if first & 0x0F == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// The text of an echo request, long enough to be compressed both ways.
fn long_text() -> String {
    "the quick brown fox jumps over the lazy dog; ".repeat(20)
}

#[tokio::test]
async fn the_extension_is_answered_only_to_an_offer_it_can_take() {
    let server = RoomServer::start().await;
    // The browsers', Node's and Python websockets' offer.
    let offer = "permessage-deflate; client_max_window_bits";
    let (_, answer) = upgrade(&server, "alice", Some(offer)).await;
    assert_eq!(answer.as_deref(), Some(ACCEPTED), "{offer}");
    // A server window named is accepted by naming it back (RFC 7692, 7.1.2.1).
    let offer = "permessage-deflate; server_max_window_bits=15; client_max_window_bits";
    let (_, answer) = upgrade(&server, "alice", Some(offer)).await;
    assert_eq!(
        answer.map(|answer| answer.replace(' ', "")).as_deref(),
        Some(
            "permessage-deflate;server_no_context_takeover;client_no_context_takeover;server_max_window_bits=15"
        )
    );
    // No offer; an offer whose window the server does not shrink; another
    // extension.
    for offer in [
        None,
        Some("permessage-deflate; server_max_window_bits=10"),
        Some("x-webkit-deflate-frame"),
    ] {
        let (_, answer) = upgrade(&server, "alice", offer).await;
        assert_eq!(answer, None, "{offer:?}");
    }
    // Compression off in the config: never.
    let mut config = Config::default();
    config.compression = false;
    let off = RoomServer::with_config(config).await;
    let (_, answer) = upgrade(&off, "alice", Some("permessage-deflate")).await;
    assert_eq!(answer, None);
}

#[tokio::test]
async fn a_compressed_request_is_read_and_a_long_answer_compressed() {
    let server = RoomServer::start().await;
    let (mut socket, answer) = upgrade(&server, "alice", Some("permessage-deflate")).await;
    assert_eq!(answer.as_deref(), Some(ACCEPTED));
    // A short request in one compressed frame: its answer is short, plain.
    let request = br#"{"type":"echo","data":{"text":"hi"},"id":1}"#;
    let frame = client_frame(true, true, 0x1, &deflate(request));
    socket.write_all(&frame).await.expect("write");
    let (reply, compressed) = next_text(&mut socket).await;
    assert!(reply.contains(r#""hi""#), "{reply}");
    assert!(!compressed, "below the threshold: {reply}");
    // A long one, compressed in three fragments with a ping between:
    // its long answer comes compressed.
    let text = long_text();
    let request = format!(r#"{{"type":"echo","data":{{"text":"{text}"}},"id":2}}"#);
    let deflated = deflate(request.as_bytes());
    let third = deflated.len() / 3;
    let mut bytes = client_frame(false, true, 0x1, &deflated[..third]);
    bytes.extend(client_frame(false, false, 0x0, &deflated[third..2 * third]));
    bytes.extend(client_frame(true, false, 0x9, b"ping"));
    bytes.extend(client_frame(true, false, 0x0, &deflated[2 * third..]));
    // And a plain request right after it, in the same write.
    bytes.extend(client_frame(
        true,
        false,
        0x1,
        br#"{"type":"echo","data":{"text":"plain"},"id":3}"#,
    ));
    socket.write_all(&bytes).await.expect("write");
    let (first, payload) = server_frame(&mut socket).await;
    assert_eq!(
        (first, payload.as_slice()),
        (0x8A, b"ping".as_slice()),
        "the pong"
    );
    let (reply, compressed) = next_text(&mut socket).await;
    assert!(reply.contains(&text), "{reply}");
    assert!(reply.contains(r#""reply_to":2"#), "{reply}");
    assert!(compressed, "a long answer is compressed");
    let (reply, _) = next_text(&mut socket).await;
    assert!(
        reply.contains(r#""plain""#) && reply.contains(r#""reply_to":3"#),
        "{reply}"
    );
}

#[tokio::test]
async fn an_event_is_compressed_once_for_every_subscriber_that_asked() {
    let server = RoomServer::start().await;
    let (mut first, _) = upgrade(&server, "alice", Some("permessage-deflate")).await;
    let (mut second, _) = upgrade(&server, "bob", Some("permessage-deflate")).await;
    let (mut plain, answer) = upgrade(&server, "carol", None).await;
    assert_eq!(answer, None);
    let text = long_text();
    let request = format!(r#"{{"type":"say","data":{{"text":"{text}"}}}}"#);
    plain
        .write_all(&client_frame(true, false, 0x1, request.as_bytes()))
        .await
        .expect("write");
    let (head, bytes) = event(&mut first).await;
    assert_eq!(head, 0xC1, "FIN, RSV1, text");
    assert_eq!(
        event(&mut second).await,
        (head, bytes.clone()),
        "the same bytes"
    );
    let event_text = inflate(&bytes);
    assert!(event_text.contains(&text), "{event_text}");
    assert!(
        bytes.len() * 3 < event_text.len(),
        "{} of {}",
        bytes.len(),
        event_text.len()
    );
    let (head, raw) = event(&mut plain).await;
    assert_eq!(head, 0x81, "plain for a client that did not ask");
    assert_eq!(String::from_utf8(raw).expect("UTF-8"), event_text);
}

#[tokio::test]
async fn data_that_is_not_deflate_closes_with_1007() {
    let server = RoomServer::start().await;
    let (mut socket, _) = upgrade(&server, "alice", Some("permessage-deflate")).await;
    let frame = client_frame(true, true, 0x1, &[0xff, 0xff, 0xff, 0xff]);
    socket.write_all(&frame).await.expect("write");
    assert_eq!(close_code(&mut socket).await, 1007);
}

#[tokio::test]
async fn a_message_that_inflates_past_the_limit_closes_with_1009_and_spares_the_others() {
    let server = RoomServer::start().await;
    let (mut bystander, _) = upgrade(&server, "bob", Some("permessage-deflate")).await;
    let (mut socket, _) = upgrade(&server, "alice", Some("permessage-deflate")).await;
    // 64 MiB of spaces inside a JSON string, in about 64 KiB on the wire:
    // a thousand times the 64 KiB message limit.
    let mut bomb = br#"{"type":"echo","data":{"text":""#.to_vec();
    bomb.resize(64 << 20, b' ');
    let compressed = deflate(&bomb);
    assert!(compressed.len() < 100 * 1024, "{}", compressed.len());
    socket
        .write_all(&client_frame(true, true, 0x1, &compressed))
        .await
        .expect("write");
    assert_eq!(close_code(&mut socket).await, 1009);
    // The other connection goes on.
    let request = br#"{"type":"echo","data":{"text":"still here"},"id":7}"#;
    bystander
        .write_all(&client_frame(true, true, 0x1, &deflate(request)))
        .await
        .expect("write");
    let (reply, _) = next_text(&mut bystander).await;
    assert!(reply.contains("still here"), "{reply}");
}

#[tokio::test]
async fn rsv2_or_rsv3_on_a_compressed_frame_closes_with_1002() {
    let server = RoomServer::start().await;
    let request = deflate(br#"{"type":"echo","data":{"text":"hi"}}"#);
    // RSV2 on the first frame; RSV3 on a continuation.
    let mut rsv2 = client_frame(true, true, 0x1, &request);
    rsv2[0] |= 0x20;
    let (half, rest) = request.split_at(request.len() / 2);
    let mut rsv3 = client_frame(false, true, 0x1, half);
    let mut continuation = client_frame(true, false, 0x0, rest);
    continuation[0] |= 0x10;
    rsv3.extend(continuation);
    for bytes in [rsv2, rsv3] {
        let (mut socket, _) = upgrade(&server, "alice", Some("permessage-deflate")).await;
        socket.write_all(&bytes).await.expect("write");
        assert_eq!(close_code(&mut socket).await, 1002);
    }
}

#[tokio::test]
async fn compressed_frames_without_the_extension_close_with_1002() {
    let server = RoomServer::start().await;
    let (mut socket, answer) = upgrade(&server, "alice", None).await;
    assert_eq!(answer, None);
    let request = br#"{"type":"echo","data":{"text":"hi"}}"#;
    socket
        .write_all(&client_frame(true, true, 0x1, &deflate(request)))
        .await
        .expect("write");
    assert_eq!(close_code(&mut socket).await, 1002);
}

#[tokio::test]
async fn python_websockets_negotiates_it_and_reads_compressed_events() {
    let server = RoomServer::start().await;
    let url = format!("ws://{}/ws/lobby?token=python", server.server.addr());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/websockets_deflate.py"
    );
    let text = long_text();
    // The client bounds its own waits (10 s each).
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &url, &text])
            .output()
    });
    let output = run
        .await
        .expect("the client's thread")
        .expect("python3 runs (with `websockets` installed, as .ci/run does)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), ACCEPTED);
}
