//! WebSocket framing (RFC 6455, section 5) of a direct `/fleet` connection, the server's
//! side, without IO. A client's frames are unmasked and parsed where they lie in the
//! connection's read buffer, and a message is handed out as a borrow of it; answers are
//! framed into the connection's write buffer. No allocation or copy per message, unlike a
//! general WebSocket library (tungstenite zeroes its read buffer before every read and
//! allocates each message): a heartbeat is one read, one parse, one write.
//!
//! No extension is negotiated (the opening handshake in [`super::direct`] answers none), so
//! the reserved bits must be clear.

use std::ops::Range;
use std::str::Utf8Error;

/// Opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Close codes (RFC 6455 7.4.1).
pub(crate) const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL: u16 = 1002;
const CLOSE_NOT_UTF8: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
/// A buffer grown past this for one big message is given back once it is empty again.
const KEEP_AT_MOST: usize = 64 * 1024;

/// Why a client's bytes are not a WebSocket conversation: the connection is closed with
/// [`FrameError::close_code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("{0}")]
    Protocol(&'static str),
    #[error("a message is over the limit of {0} bytes")]
    TooBig(usize),
    #[error("a text message is not UTF-8")]
    NotUtf8,
}

impl FrameError {
    /// The close code that tells the client why.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => CLOSE_PROTOCOL,
            FrameError::TooBig(_) => CLOSE_TOO_BIG,
            FrameError::NotUtf8 => CLOSE_NOT_UTF8,
        }
    }
}

impl From<Utf8Error> for FrameError {
    fn from(_: Utf8Error) -> Self {
        FrameError::NotUtf8
    }
}

/// What a frame (or, for data, a whole message) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Binary,
    Ping,
    Pong,
    /// A close, with the client's code if it gave one.
    Close(Option<u16>),
}

/// A message parsed in the read buffer; [`Reader::payload`] and [`Reader::text`] lend its
/// bytes until the next read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) kind: Kind,
    /// Where its payload is: in the read buffer, or in the fragments put together.
    at: Range<usize>,
    assembled: bool,
}

/// The read side of a connection: its buffer, and a fragmented message being put together.
pub(crate) struct Reader {
    /// Initialised once, so a read needs no zeroing; `start..end` are bytes not parsed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The buffer's size when nothing big is on its way.
    size: usize,
    /// The bytes the frame being received needs in the buffer, header included.
    need: usize,
    /// The largest message accepted.
    max: usize,
    /// The opcode of a fragmented message being put together.
    fragments: Option<u8>,
    /// That message's payloads so far, or, once it is whole, the message handed out.
    assembled: Vec<u8>,
}

impl Reader {
    /// A reader with a buffer of `size` bytes that accepts messages up to `max` bytes.
    pub(crate) fn new(size: usize, max: usize) -> Self {
        Reader {
            buf: vec![0; size],
            start: 0,
            end: 0,
            size,
            need: 0,
            max,
            fragments: None,
            assembled: Vec::new(),
        }
    }

    /// Room to read the client's next bytes into, with the bytes not parsed yet moved to
    /// the front and the buffer grown to hold the frame on its way.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == 0 && self.buf.len() > KEEP_AT_MOST && self.need <= self.size {
            self.buf = vec![0; self.size];
        }
        // A frame's header fits in any buffer; a frame whose length is known, in one grown
        // to hold it whole.
        let want = self.need.max(self.size);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Reader::spare`].
    pub(crate) fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The payload of `message`.
    pub(crate) fn payload(&self, message: &Message) -> &[u8] {
        let from = if message.assembled {
            &self.assembled
        } else {
            &self.buf
        };
        from.get(message.at.clone()).unwrap_or_default()
    }

    /// The payload of a text `message` (checked UTF-8 when it was parsed).
    pub(crate) fn text(&self, message: &Message) -> &str {
        std::str::from_utf8(self.payload(message)).unwrap_or_default()
    }

    /// The next whole message in the buffer, if one is there: data messages are put together
    /// from their fragments, control frames come as they are (between fragments too).
    pub(crate) fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            let [b0, b1, ..] = *avail else {
                return Ok(None);
            };
            if b0 & 0x70 != 0 {
                return Err(FrameError::Protocol(
                    "a frame has reserved bits set, and no extension was negotiated",
                ));
            }
            if b1 & 0x80 == 0 {
                return Err(FrameError::Protocol("a client's frame must be masked"));
            }
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            let (len, header) = match b1 & 0x7f {
                126 => match avail.get(2..4) {
                    Some(n) => (u64::from(u16::from_be_bytes([n[0], n[1]])), 4),
                    None => return Ok(None),
                },
                127 => match avail.get(2..10).and_then(|n| <[u8; 8]>::try_from(n).ok()) {
                    Some(n) => (u64::from_be_bytes(n), 10),
                    None => return Ok(None),
                },
                n => (u64::from(n), 2),
            };
            let control = opcode & 0x08 != 0;
            if control && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
                return Err(FrameError::Protocol(
                    "a control frame must be whole and at most 125 bytes",
                ));
            }
            let so_far = if opcode == CONTINUATION {
                self.assembled.len()
            } else {
                0
            };
            if len > self.max.saturating_sub(so_far) as u64 {
                return Err(FrameError::TooBig(self.max));
            }
            let len = len as usize;
            let frame = header + 4 + len;
            if avail.len() < frame {
                self.need = frame;
                return Ok(None);
            }
            self.need = 0;
            let mask = [
                avail[header],
                avail[header + 1],
                avail[header + 2],
                avail[header + 3],
            ];
            let at = self.start + header + 4..self.start + frame;
            self.start += frame;
            unmask(&mut self.buf[at.clone()], mask);
            if self.fragments.is_none() && !self.assembled.is_empty() {
                // The last message handed out was put together: it was read by now.
                if self.assembled.capacity() > KEEP_AT_MOST {
                    self.assembled = Vec::new();
                } else {
                    self.assembled.clear();
                }
            }
            let kind = match opcode {
                TEXT | BINARY => {
                    if self.fragments.is_some() {
                        return Err(FrameError::Protocol(
                            "a message began before the fragmented one before it ended",
                        ));
                    }
                    if !fin {
                        self.fragments = Some(opcode);
                        self.assembled.extend_from_slice(&self.buf[at]);
                        continue;
                    }
                    if opcode == TEXT {
                        std::str::from_utf8(&self.buf[at.clone()])?;
                        Kind::Text
                    } else {
                        Kind::Binary
                    }
                }
                CONTINUATION => {
                    let Some(first) = self.fragments else {
                        return Err(FrameError::Protocol(
                            "a continuation frame came with no message to continue",
                        ));
                    };
                    self.assembled.extend_from_slice(&self.buf[at]);
                    if !fin {
                        continue;
                    }
                    self.fragments = None;
                    let kind = if first == TEXT {
                        std::str::from_utf8(&self.assembled)?;
                        Kind::Text
                    } else {
                        Kind::Binary
                    };
                    return Ok(Some(Message {
                        kind,
                        at: 0..self.assembled.len(),
                        assembled: true,
                    }));
                }
                CLOSE => match self.buf[at.clone()] {
                    [] => Kind::Close(None),
                    [_] => {
                        return Err(FrameError::Protocol("a close frame's code is two bytes"));
                    }
                    [hi, lo, ref reason @ ..] => {
                        std::str::from_utf8(reason)?;
                        Kind::Close(Some(u16::from_be_bytes([hi, lo])))
                    }
                },
                PING => Kind::Ping,
                PONG => Kind::Pong,
                _ => return Err(FrameError::Protocol("a frame has an unknown opcode")),
            };
            return Ok(Some(Message {
                kind,
                at,
                assembled: false,
            }));
        }
    }
}

/// Undoes a client's masking (RFC 6455 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a server's (unmasked, whole) frame to `out`.
fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a text message to `out`.
pub(crate) fn text(out: &mut Vec<u8>, payload: &str) {
    frame(out, TEXT, payload.as_bytes());
}

/// Appends the pong that answers a ping with `payload`.
pub(crate) fn pong(out: &mut Vec<u8>, payload: &[u8]) {
    frame(
        out,
        PONG,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    );
}

/// Appends a close frame with `code` and a reason (cut to fit a control frame).
pub(crate) fn close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(out, CLOSE, &payload);
}

/// Error codes a close may carry from a client; the rest are refused (RFC 6455 7.4).
pub(crate) fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A client's frame: masked with `mask`.
    fn client(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `bytes` to `reader` `step` bytes per read and collects the messages, as text
    /// (lossy) for data.
    fn feed(reader: &mut Reader, bytes: &[u8], step: usize) -> Vec<(Kind, Vec<u8>)> {
        let mut got = Vec::new();
        for piece in bytes.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let spare = reader.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                reader.filled(n);
                rest = &rest[n..];
                while let Some(m) = reader.next_message().unwrap() {
                    got.push((m.kind, reader.payload(&m).to_vec()));
                }
            }
        }
        got
    }

    #[test]
    fn rfc_6455_examples_parse_in_any_split() {
        // RFC 6455 5.7: a masked "Hello", then the same in two fragments, a ping between.
        let mut bytes = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        bytes.extend(client(0x01, b"Hel", [1, 2, 3, 4]));
        bytes.extend(client(0x89, b"ping!", [9, 9, 9, 9]));
        bytes.extend(client(0x80, b"lo", [5, 6, 7, 8]));
        bytes.extend(client(0x82, &[0u8; 300], [1, 1, 1, 1]));
        bytes.extend(client(0x81, "é".repeat(40_000).as_bytes(), [3, 1, 4, 1]));
        bytes.extend(client(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], [7, 7, 7, 7]));
        for step in [1, 2, 3, 7, 64, 4096, bytes.len()] {
            let mut reader = Reader::new(64, 1 << 20);
            let got = feed(&mut reader, &bytes, step);
            assert_eq!(
                got,
                vec![
                    (Kind::Text, b"Hello".to_vec()),
                    (Kind::Ping, b"ping!".to_vec()),
                    (Kind::Text, b"Hello".to_vec()),
                    (Kind::Binary, vec![0u8; 300]),
                    (Kind::Text, "é".repeat(40_000).into_bytes()),
                    (Kind::Close(Some(1000)), b"\x03\xe8bye".to_vec()),
                ],
                "read {step} bytes at a time"
            );
            // A big message's buffer is given back once it is read.
            reader.spare();
            assert!(reader.buf.len() <= KEEP_AT_MOST, "{}", reader.buf.len());
        }
    }

    #[test]
    fn broken_frames_are_refused_with_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            // Not masked.
            (vec![0x81, 0x02, b'h', b'i'], CLOSE_PROTOCOL),
            // A reserved bit.
            (client(0xc1, b"hi", [1, 2, 3, 4]), CLOSE_PROTOCOL),
            // An unknown opcode.
            (client(0x83, b"hi", [1, 2, 3, 4]), CLOSE_PROTOCOL),
            // A fragmented ping, and one too long.
            (client(0x09, b"hi", [1, 2, 3, 4]), CLOSE_PROTOCOL),
            (client(0x89, &[0; 126], [1, 2, 3, 4]), CLOSE_PROTOCOL),
            // A continuation with nothing to continue; a new message inside a fragmented one.
            (client(0x80, b"hi", [1, 2, 3, 4]), CLOSE_PROTOCOL),
            (
                [client(0x01, b"h", [1; 4]), client(0x81, b"i", [1; 4])].concat(),
                CLOSE_PROTOCOL,
            ),
            // Text that is not UTF-8, whole or in fragments.
            (client(0x81, &[0xff, 0xfe], [1, 2, 3, 4]), CLOSE_NOT_UTF8),
            (
                [client(0x01, &[0xc3], [1; 4]), client(0x80, &[0x28], [1; 4])].concat(),
                CLOSE_NOT_UTF8,
            ),
            // Over the limit, in one frame (refused from its header) or in fragments.
            (vec![0x81, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 1], CLOSE_TOO_BIG),
            (
                [
                    client(0x01, &[b'a'; 600], [1; 4]),
                    client(0x80, &[b'a'; 600], [1; 4]),
                ]
                .concat(),
                CLOSE_TOO_BIG,
            ),
        ];
        for (i, (bytes, code)) in cases.into_iter().enumerate() {
            let mut reader = Reader::new(64, 1000);
            let mut result = Ok(None);
            let mut rest = &bytes[..];
            while !rest.is_empty() && result.is_ok() {
                let spare = reader.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                reader.filled(n);
                rest = &rest[n..];
                result = reader.next_message();
            }
            let err = result.expect_err(&format!("case {i} was accepted"));
            assert_eq!(err.close_code(), code, "case {i}: {err}");
        }
    }

    #[test]
    fn server_frames_are_whole_unmasked_and_sized_as_rfc_6455_says() {
        let mut out = Vec::new();
        text(&mut out, "Hello");
        assert_eq!(out, [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        for (n, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let mut out = Vec::new();
            text(&mut out, &"x".repeat(n));
            assert_eq!(out.len(), n + header, "{n}");
        }
        let mut out = Vec::new();
        close(&mut out, 1009, &"é".repeat(100));
        assert_eq!(&out[..4], &[0x88, 124, 0x03, 0xf1]);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        let mut out = Vec::new();
        pong(&mut out, b"abc");
        assert_eq!(out, [0x8a, 3, b'a', b'b', b'c']);
        assert!(valid_close_code(1000) && valid_close_code(4000));
        assert!(!valid_close_code(1005) && !valid_close_code(999));
    }
}
