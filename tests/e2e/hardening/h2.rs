//! A minimal HTTP/2 client (prior knowledge, cleartext, one request per connection) that can send
//! request trailers, which no HTTP client among the workspace's dependencies exposes. It speaks
//! just enough of RFC 9113: the preface, SETTINGS and PING acknowledgements, one stream with
//! HEADERS, DATA (within the peer's flow-control windows) and trailing HEADERS, and the answer's
//! `:status` and body. Header blocks are
//! encoded as HPACK literals without indexing and without Huffman coding; of the answer's
//! header block only the leading `:status` is decoded.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// The default SETTINGS_MAX_FRAME_SIZE, which every peer accepts.
const MAX_FRAME: usize = 16_384;
/// The initial flow-control window of a connection and of a stream, until SETTINGS change it.
const DEFAULT_WINDOW: i64 = 65_535;

/// How one HTTP/2 request ended.
#[derive(Debug)]
pub(crate) enum H2Answer {
    /// A response: its status and body.
    Response { status: u16, body: Vec<u8> },
    /// The stream was reset (RST_STREAM) with this error code before a response.
    Reset(u32),
    /// The connection ended (GOAWAY or EOF) before a response.
    Closed(String),
}

impl H2Answer {
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            H2Answer::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub(crate) fn text(&self) -> String {
        match self {
            H2Answer::Response { body, .. } => String::from_utf8_lossy(body).into_owned(),
            H2Answer::Reset(code) => format!("stream reset with error code {code}"),
            H2Answer::Closed(why) => format!("connection ended: {why}"),
        }
    }
}

/// Sends one request on a fresh HTTP/2 connection to `addr`: `headers` (pseudo-headers first,
/// names lower-case), then `body` in DATA frames as the peer's flow-control windows allow, then
/// `trailers` as a final HEADERS frame with END_STREAM (none: the last DATA frame ends the
/// stream). Bounded by `timeout` overall.
pub(crate) async fn request(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
    timeout: Duration,
) -> H2Answer {
    tokio::time::timeout(timeout, exchange(addr, headers, body, trailers))
        .await
        .unwrap_or_else(|_| H2Answer::Closed(format!("no answer within {timeout:?}")))
}

/// The one stream's state on its connection.
struct Exchange {
    sock: TcpStream,
    /// What this client may still send (RFC 9113 6.9): the connection's and the stream's window.
    conn_window: i64,
    stream_window: i64,
    initial_window: i64,
    status: Option<u16>,
    answer: Vec<u8>,
    /// Set once the exchange is over: the stream ended, was reset, or the connection closed.
    outcome: Option<H2Answer>,
}

const STREAM: u32 = 1;

impl Exchange {
    async fn send(&mut self, bytes: &[u8]) -> bool {
        if let Err(e) = self.sock.write_all(bytes).await {
            self.outcome = Some(H2Answer::Closed(format!("write: {e}")));
            return false;
        }
        true
    }

    /// Reads and handles one frame.
    async fn read_frame(&mut self) {
        let mut head = [0u8; 9];
        if let Err(e) = self.sock.read_exact(&mut head).await {
            self.outcome = Some(H2Answer::Closed(format!("read: {e}")));
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if let Err(e) = self.sock.read_exact(&mut payload).await {
            self.outcome = Some(H2Answer::Closed(format!("read: {e}")));
            return;
        }
        let word = |at: usize| {
            payload
                .get(at..at + 4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        match kind {
            SETTINGS if flags & ACK == 0 => {
                for setting in payload.chunks(6) {
                    if setting.len() == 6 && u16::from_be_bytes([setting[0], setting[1]]) == 0x4 {
                        let value = i64::from(u32::from_be_bytes([
                            setting[2], setting[3], setting[4], setting[5],
                        ]));
                        self.stream_window += value - self.initial_window;
                        self.initial_window = value;
                    }
                }
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                self.send(&ack).await;
            }
            WINDOW_UPDATE => {
                let increment = i64::from(word(0) & 0x7fff_ffff);
                if id == 0 {
                    self.conn_window += increment;
                } else if id == STREAM {
                    self.stream_window += increment;
                }
            }
            PING if flags & ACK == 0 => {
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload);
                self.send(&pong).await;
            }
            HEADERS if id == STREAM => {
                // A trailing HEADERS frame after the body carries no status.
                if self.status.is_none() {
                    self.status = Some(leading_status(&payload, flags));
                }
                if flags & END_STREAM != 0 {
                    self.finish();
                }
            }
            DATA if id == STREAM => {
                self.answer.extend_from_slice(&unpadded(&payload, flags));
                if flags & END_STREAM != 0 {
                    self.finish();
                }
            }
            RST_STREAM if id == STREAM => {
                if self.status.is_some() {
                    self.finish();
                } else {
                    self.outcome = Some(H2Answer::Reset(word(0)));
                }
            }
            GOAWAY if self.status.is_none() => {
                self.outcome = Some(H2Answer::Closed(format!(
                    "GOAWAY {}",
                    String::from_utf8_lossy(payload.get(8..).unwrap_or_default())
                )));
            }
            _ => {}
        }
    }

    fn finish(&mut self) {
        self.outcome = Some(H2Answer::Response {
            status: self.status.expect("a response HEADERS frame came first"),
            body: std::mem::take(&mut self.answer),
        });
    }
}

async fn exchange(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
    trailers: &[(&str, &str)],
) -> H2Answer {
    let sock = TcpStream::connect(addr).await.expect("connect to Envoy");
    sock.set_nodelay(true).expect("TCP_NODELAY");
    let mut x = Exchange {
        sock,
        conn_window: DEFAULT_WINDOW,
        stream_window: DEFAULT_WINDOW,
        initial_window: DEFAULT_WINDOW,
        status: None,
        answer: Vec::new(),
        outcome: None,
    };
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    let head_flags = if body.is_empty() && trailers.is_empty() {
        END_HEADERS | END_STREAM
    } else {
        END_HEADERS
    };
    frame(
        &mut out,
        HEADERS,
        head_flags,
        STREAM,
        &header_block(headers),
    );
    x.send(&out).await;

    let mut sent = 0;
    while sent < body.len() && x.outcome.is_none() && x.status.is_none() {
        let window = usize::try_from(x.conn_window.min(x.stream_window)).unwrap_or(0);
        let size = window.min(MAX_FRAME).min(body.len() - sent);
        if size == 0 {
            x.read_frame().await;
            continue;
        }
        let last = sent + size == body.len() && trailers.is_empty();
        let mut data = Vec::new();
        frame(
            &mut data,
            DATA,
            if last { END_STREAM } else { 0 },
            STREAM,
            &body[sent..sent + size],
        );
        x.send(&data).await;
        sent += size;
        let size = i64::try_from(size).expect("frame size");
        x.conn_window -= size;
        x.stream_window -= size;
    }
    if !trailers.is_empty() && x.outcome.is_none() && x.status.is_none() {
        let mut end = Vec::new();
        frame(
            &mut end,
            HEADERS,
            END_HEADERS | END_STREAM,
            STREAM,
            &header_block(trailers),
        );
        x.send(&end).await;
    }
    while x.outcome.is_none() {
        x.read_frame().await;
    }
    x.outcome.expect("the loop ends with an outcome")
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("frame fits");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK "literal header field without indexing, new name" for every field (RFC 7541 6.2.2).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        for s in [name.as_bytes(), value.as_bytes()] {
            integer(&mut block, s.len(), 7, 0x00);
            block.extend_from_slice(s);
        }
    }
    block
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1), `high` holding the prefix's other bits.
fn integer(out: &mut Vec<u8>, mut value: usize, n: u32, high: u8) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(high | u8::try_from(value).expect("below the prefix"));
        return;
    }
    out.push(high | u8::try_from(max).expect("prefix fits a byte"));
    value -= max;
    while value >= 128 {
        out.push(u8::try_from(value % 128).expect("7 bits") | 0x80);
        value /= 128;
    }
    out.push(u8::try_from(value).expect("7 bits"));
}

fn read_integer(block: &[u8], pos: &mut usize, n: u32) -> usize {
    let max = (1usize << n) - 1;
    let mut value = usize::from(block[*pos]) & max;
    *pos += 1;
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let b = block[*pos];
        *pos += 1;
        value += (usize::from(b) & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return value;
        }
    }
}

fn unpadded(payload: &[u8], flags: u8) -> Vec<u8> {
    const PADDED: u8 = 0x8;
    if flags & PADDED == 0 {
        return payload.to_vec();
    }
    let pad = usize::from(payload[0]);
    payload[1..payload.len() - pad].to_vec()
}

/// The `:status` that leads a response header block: an indexed field of the static table
/// (200, 204, 206, 304, 400, 404, 500) or a literal whose name is static entry 8, its value
/// plain or Huffman-coded digits.
fn leading_status(payload: &[u8], flags: u8) -> u16 {
    const PRIORITY: u8 = 0x20;
    let mut block = unpadded(payload, flags);
    if flags & PRIORITY != 0 {
        block.drain(..5);
    }
    let mut pos = 0;
    // Dynamic table size updates may come first.
    while block[pos] & 0xe0 == 0x20 {
        read_integer(&block, &mut pos, 5);
    }
    let first = block[pos];
    if first & 0x80 != 0 {
        let index = read_integer(&block, &mut pos, 7);
        return match index {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            other => panic!("response starts with indexed field {other}, not a static :status"),
        };
    }
    let prefix = if first & 0x40 != 0 { 6 } else { 4 };
    let name = read_integer(&block, &mut pos, prefix);
    assert_eq!(name, 8, "response header block does not start with :status");
    let huffman = block[pos] & 0x80 != 0;
    let len = read_integer(&block, &mut pos, 7);
    let raw = &block[pos..pos + len];
    let digits = if huffman {
        huffman_digits(raw)
    } else {
        String::from_utf8_lossy(raw).into_owned()
    };
    digits
        .parse()
        .unwrap_or_else(|_| panic!("unreadable :status {digits:?}"))
}

/// Decodes a Huffman-coded string made of digits only (RFC 7541 Appendix B: `0`-`2` are the
/// 5-bit codes 0-2, `3`-`9` the 6-bit codes 0x19-0x1f); the padding is a prefix of EOS (ones).
fn huffman_digits(raw: &[u8]) -> String {
    let mut bits = raw
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1));
    let mut out = String::new();
    loop {
        let mut code = 0u8;
        let mut taken = 0;
        for bit in bits.by_ref().take(5) {
            code = code << 1 | bit;
            taken += 1;
        }
        if taken < 5 || code == 0x1f {
            return out;
        }
        if code <= 2 {
            out.push(char::from(b'0' + code));
            continue;
        }
        let Some(bit) = bits.next() else { return out };
        let code6 = code << 1 | bit;
        assert!(
            (0x19..=0x1f).contains(&code6),
            "Huffman code {code6:#x} is not a digit"
        );
        out.push(char::from(b'3' + (code6 - 0x19)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_digits_decode() {
        // "201": 00010 00000 00001, padded with ones.
        assert_eq!(huffman_digits(&[0b0001_0000, 0b0000_0011]), "201");
        // "413": 011010 00001 011001 + padding.
        assert_eq!(
            huffman_digits(&[0b0110_1000, 0b0010_1100, 0b1111_1111]),
            "413"
        );
    }
}
