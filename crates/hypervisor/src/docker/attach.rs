//! A container's output into a [`Console`], and the console's input into the container.
//!
//! Without a terminal, the engine multiplexes stdout and stderr on one stream in frames of an
//! 8-byte header (stream type, three zero bytes, big-endian length) and the payload; with a
//! terminal the stream is the raw bytes.

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::console::Console;

/// Splits the multiplexed attach stream into payloads, across reads of any size.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    const HEADER: usize = 8;

    /// Feeds bytes read from the stream; calls `out` with each complete frame's payload.
    pub fn feed(&mut self, data: &[u8], mut out: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            if rest.len() < Self::HEADER {
                break;
            }
            let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            if rest.len() < Self::HEADER + len {
                break;
            }
            out(&rest[Self::HEADER..Self::HEADER + len]);
            at += Self::HEADER + len;
        }
        self.buf.drain(..at);
    }
}

/// Copies a container's output into `console` until the stream ends, then closes the console.
pub(crate) async fn pump<R: AsyncRead + Unpin>(mut from: R, tty: bool, console: Console) {
    let mut demux = Demux::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) if tty => console.push(&buf[..n]),
            Ok(n) => demux.feed(&buf[..n], |payload| console.push(payload)),
            Err(e) => {
                tracing::debug!(error = %e, "reading a container's output failed");
                break;
            }
        }
    }
    console.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = frame(1, b"hello ");
        stream.extend(frame(2, b"world"));
        stream.extend(frame(1, b""));
        stream.extend(frame(1, b"!"));
        for cut in 0..stream.len() {
            let mut d = Demux::default();
            let mut out = Vec::new();
            d.feed(&stream[..cut], |p| out.extend_from_slice(p));
            d.feed(&stream[cut..], |p| out.extend_from_slice(p));
            assert_eq!(out, b"hello world!", "cut at {cut}");
            assert!(d.buf.is_empty());
        }
    }

    #[tokio::test]
    async fn pump_fills_the_console_and_closes_it() {
        let console = Console::new();
        let mut r = console.subscribe();
        let stream = frame(1, b"vmfleet");
        pump(&stream[..], false, console.clone()).await;
        assert_eq!(&console.scrollback()[..], b"vmfleet");
        assert!(console.is_closed());
        assert_eq!(
            &r.live.recv().await.ok().unwrap_or_default()[..],
            b"vmfleet"
        );

        let raw = Console::new();
        pump(&b"\x01raw"[..], true, raw.clone()).await;
        assert_eq!(&raw.scrollback()[..], b"\x01raw");
    }
}
