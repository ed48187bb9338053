//! `vmfleet vm console`: the terminal attached to a guest's serial console over the WebSocket
//! API. The terminal is put in raw mode (every key goes to the guest, Ctrl-C included) and is
//! restored on every way out: detach (`Ctrl-]`), the console closing, an error, SIGTERM or
//! SIGHUP, and a panic (the guard's `Drop` and a panic hook both restore it).

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::sync::Mutex;
use std::time::Duration;

use rustix::termios::{OptionalActions, Termios, tcgetattr, tcsetattr};
use vmfleet_client::WsSession;
use vmfleet_wire::ws::{ConsoleData, ErrorData, WsBody, WsMessage};

use crate::CliError;

/// The byte `Ctrl-]` sends: detach.
pub const DETACH: u8 = 0x1d;

/// The terminal's settings before raw mode, for the panic hook.
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

fn restore_saved() {
    let saved = SAVED
        .lock()
        .map(|mut s| s.take())
        .unwrap_or_else(|p| p.into_inner().take());
    if let Some(t) = saved {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &t);
    }
}

/// Raw mode on stdin while it lives; the terminal as it was once dropped.
pub struct RawMode(());

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` when stdin is not a terminal.
    pub fn enable() -> Result<Option<Self>, CliError> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let saved = tcgetattr(&stdin).map_err(|e| CliError::Terminal(e.into()))?;
        let mut raw = saved.clone();
        raw.make_raw();
        if let Ok(mut s) = SAVED.lock() {
            *s = Some(saved);
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_saved();
            previous(info);
        }));
        if let Err(e) = tcsetattr(&stdin, OptionalActions::Now, &raw) {
            restore_saved();
            return Err(CliError::Terminal(e.into()));
        }
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore_saved();
    }
}

/// Why the console session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `Ctrl-]`.
    Detached,
    /// The guest stopped (the console's `eof`) or the server closed the connection.
    Closed,
    /// Stdin ended (not a terminal).
    InputEnded,
    /// SIGTERM, SIGHUP or SIGINT: its number (the same on every Unix: XSI fixes them).
    Signal(u8),
}

/// Copies the console to stdout and stdin to the console until one of [`Ended`]'s reasons;
/// a signal is returned as [`CliError::Interrupted`] (exit code 128 plus its number, as
/// shells expect).
/// The scrollback arrives first, as the server sends it.
pub async fn attach(mut session: WsSession, name: &str) -> Result<Ended, CliError> {
    let raw = RawMode::enable()?;
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    eprint!("Connected to {name}'s console. Detach with Ctrl-]{nl}");
    // Stdin is read on a thread of its own: a blocking read cannot hold up the runtime's end.
    let (tx, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stdout = std::io::stdout();
    let mut shown = false;
    let ended = loop {
        tokio::select! {
            msg = session.next() => match msg? {
                Some(WsMessage { body: WsBody::Console(ConsoleData { content, eof, replay }), .. }) => {
                    // The scrollback again, after this client fell behind: it replaces the
                    // screen.
                    if replay && shown {
                        let _ = stdout.write_all(b"\x1b[2J\x1b[H");
                    }
                    shown = true;
                    let _ = stdout.write_all(content.as_bytes());
                    let _ = stdout.flush();
                    if eof {
                        break Ended::Closed;
                    }
                }
                Some(WsMessage { body: WsBody::Error(ErrorData { code, message }), .. }) => {
                    eprint!("{nl}vmfleet: {message} ({code:?}){nl}");
                }
                Some(_) => {}
                None => break Ended::Closed,
            },
            bytes = input.recv() => match bytes {
                Some(bytes) => {
                    let (keep, detach) = match bytes.iter().position(|&b| b == DETACH) {
                        Some(at) => (&bytes[..at], true),
                        None => (&bytes[..], false),
                    };
                    if !keep.is_empty() {
                        session.send_input(String::from_utf8_lossy(keep).into_owned()).await?;
                    }
                    if detach {
                        break Ended::Detached;
                    }
                }
                None => {
                    // Piped input has ended: let the guest answer it, then leave.
                    let grace = tokio::time::sleep(Duration::from_secs(1));
                    tokio::pin!(grace);
                    loop {
                        tokio::select! {
                            _ = &mut grace => break,
                            msg = session.next() => match msg? {
                                Some(WsMessage { body: WsBody::Console(c), .. }) => {
                                    let _ = stdout.write_all(c.content.as_bytes());
                                    let _ = stdout.flush();
                                }
                                Some(_) => {}
                                None => break,
                            },
                        }
                    }
                    break Ended::InputEnded;
                }
            },
            _ = term.recv() => break Ended::Signal(15),
            _ = hup.recv() => break Ended::Signal(1),
            _ = int.recv() => break Ended::Signal(2),
        }
    };
    drop(raw);
    let why = match ended {
        Ended::Detached => "detached",
        Ended::Closed => "the console closed",
        Ended::InputEnded => "input ended",
        Ended::Signal(signal) => {
            session.close().await;
            // Said by whoever prints the error, on a line of its own.
            eprintln!();
            return Err(CliError::Interrupted {
                what: format!("{name}'s console"),
                signal,
            });
        }
    };
    eprintln!("\nvmfleet: {why} from {name}'s console");
    session.close().await;
    Ok(ended)
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(kind).map_err(CliError::Terminal)
}
