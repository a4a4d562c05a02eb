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
    let mut socket = TcpStream::connect(server.server.addr())
        .await
        .expect("connect");
    let request = "GET /ws/lobby?token=alice HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                   Upgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    socket.write_all(request.as_bytes()).await.expect("write");
    // Read the response head byte by byte, so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        socket.read_exact(&mut byte).await.expect("the response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("an HTTP head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    socket
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
