//! A guest's serial console, shared: many readers each get the scrollback (the last
//! [`SCROLLBACK_BYTES`]) and then every byte after it, in order; writers are serialised.
//!
//! A backend feeds output with [`Console::push`] and provides the input side as an async
//! writer. The console outlives guest reboots because it belongs to the process, not the boot.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex as AsyncMutex, broadcast};

/// How much output a new reader gets replayed.
pub const SCROLLBACK_BYTES: usize = 64 * 1024;

/// How many chunks a slow reader may fall behind before it is told it lagged.
const CHANNEL_CHUNKS: usize = 1024;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    out: Mutex<Output>,
    input: AsyncMutex<Option<Writer>>,
}

struct Output {
    scrollback: VecDeque<u8>,
    tx: broadcast::Sender<Bytes>,
    closed: bool,
}

/// A reader of the console: the scrollback at the time it subscribed, then live output.
pub struct ConsoleReader {
    pub scrollback: Bytes,
    pub live: broadcast::Receiver<Bytes>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the console has no input side")]
    NoInput,
    #[error("the console is closed")]
    Closed,
    #[error("writing to the console failed")]
    Write(#[source] std::io::Error),
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Console")
    }
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Console {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CHUNKS);
        Console {
            inner: Arc::new(Inner {
                out: Mutex::new(Output {
                    scrollback: VecDeque::with_capacity(SCROLLBACK_BYTES),
                    tx,
                    closed: false,
                }),
                input: AsyncMutex::new(None),
            }),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, Output> {
        // A panic while holding this lock leaves only bytes behind; keep going.
        self.inner.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends guest output: kept in the scrollback and sent to every reader.
    pub fn push(&self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let mut out = self.out();
        let sb = &mut out.scrollback;
        if chunk.len() >= SCROLLBACK_BYTES {
            sb.clear();
            sb.extend(&chunk[chunk.len() - SCROLLBACK_BYTES..]);
        } else {
            let overflow = (sb.len() + chunk.len()).saturating_sub(SCROLLBACK_BYTES);
            sb.drain(..overflow);
            sb.extend(chunk);
        }
        // No receivers is fine: the scrollback keeps the bytes.
        let _ = out.tx.send(Bytes::copy_from_slice(chunk));
    }

    /// Subscribes: the scrollback and the live stream start at the same byte, so a reader
    /// sees no gap and no duplicate.
    pub fn subscribe(&self) -> ConsoleReader {
        let out = self.out();
        let (a, b) = out.scrollback.as_slices();
        let mut sb = Vec::with_capacity(a.len() + b.len());
        sb.extend_from_slice(a);
        sb.extend_from_slice(b);
        ConsoleReader {
            scrollback: Bytes::from(sb),
            live: out.tx.subscribe(),
        }
    }

    /// The scrollback alone.
    pub fn scrollback(&self) -> Bytes {
        self.subscribe().scrollback
    }

    /// Installs (or replaces, after a reconnect) the writer that reaches the guest's input.
    pub async fn set_input(&self, w: Writer) {
        *self.inner.input.lock().await = Some(w);
    }

    /// Sends bytes to the guest. Concurrent writers are serialised whole-write by whole-write.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), ConsoleError> {
        if self.out().closed {
            return Err(ConsoleError::Closed);
        }
        let mut input = self.inner.input.lock().await;
        let w = input.as_mut().ok_or(ConsoleError::NoInput)?;
        w.write_all(bytes).await.map_err(ConsoleError::Write)?;
        w.flush().await.map_err(ConsoleError::Write)
    }

    /// Marks the console ended (the process exited): readers' streams end after the last byte.
    pub fn close(&self) {
        let mut out = self.out();
        out.closed = true;
        let (tx, _) = broadcast::channel(1);
        // Dropping the old sender ends every live receiver once it has read what was sent.
        out.tx = tx;
    }

    pub fn is_closed(&self) -> bool {
        self.out().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scrollback_then_live_without_gap() {
        let c = Console::new();
        c.push(b"hello ");
        let mut r = c.subscribe();
        assert_eq!(&r.scrollback[..], b"hello ");
        c.push(b"world");
        assert_eq!(&r.live.recv().await.unwrap()[..], b"world");
        let r2 = c.subscribe();
        assert_eq!(&r2.scrollback[..], b"hello world");
    }

    #[test]
    fn scrollback_keeps_the_last_64k() {
        let c = Console::new();
        for i in 0..100u8 {
            c.push(&[i; 1000]);
        }
        let sb = c.scrollback();
        assert_eq!(sb.len(), SCROLLBACK_BYTES);
        assert_eq!(*sb.last().unwrap(), 99);
        c.push(&vec![7u8; SCROLLBACK_BYTES + 10]);
        assert!(c.scrollback().iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn writes_are_serialised_and_close_ends_readers() {
        let c = Console::new();
        let (client, mut server) = tokio::io::duplex(1024);
        c.set_input(Box::new(client)).await;
        let (a, b) = tokio::join!(c.write(b"aaaa"), c.write(b"bbbb"));
        a.unwrap();
        b.unwrap();
        let mut buf = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
            .await
            .unwrap();
        assert!(&buf == b"aaaabbbb" || &buf == b"bbbbaaaa");
        let mut r = c.subscribe();
        c.close();
        assert!(r.live.recv().await.is_err());
        assert!(matches!(c.write(b"x").await, Err(ConsoleError::Closed)));
    }
}
