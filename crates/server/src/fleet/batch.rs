//! Batching of the `/fleet` thread's wake-ups under load.
//!
//! Every message from an agent wakes the thread that serves direct connections out of
//! `epoll_wait`. At 10,000 agents that is about 2,000 wake-ups a second, and a wake-up (the
//! context switch and the scheduler's work around it) costs about as much CPU as handling
//! the heartbeat it brings. While the connections bring more than [`BUSY_MESSAGES`] messages
//! a second and no console is watched, the thread waits the batch window
//! ([`set_window`], `--fleet-batch-ms`) before it sleeps, so that one wake-up finds every
//! message of that window: less CPU per heartbeat, for at most the window added to a message
//! (or a command to an agent) that arrives meanwhile, against a heartbeat acknowledgement's
//! budget of 50 ms at p99. A console is interactive: while one is watched the thread never
//! waits.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Messages a second from which the thread batches its wake-ups: 5,000 agents heartbeating
/// every 5 s bring this many.
pub const BUSY_MESSAGES: u64 = 1_000;

/// The batch window when none is set.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(2);

/// How often the load is measured again.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

static WINDOW_MICROS: AtomicU64 = AtomicU64::new(DEFAULT_WINDOW.as_micros() as u64);
/// Messages read by direct connections.
static MESSAGES: AtomicU64 = AtomicU64::new(0);
/// Consoles watched: [`Watching`]s alive.
static WATCHED: AtomicUsize = AtomicUsize::new(0);

/// Sets the batch window for the process's `/fleet` thread; zero turns batching off.
pub fn set_window(window: Duration) {
    let micros = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    WINDOW_MICROS.store(micros, Ordering::Relaxed);
}

/// Counts a message read from an agent.
pub(crate) fn message() {
    MESSAGES.fetch_add(1, Ordering::Relaxed);
}

/// A console being watched, for as long as this lives: no batching meanwhile.
pub(crate) struct Watching(());

impl Watching {
    pub(crate) fn start() -> Self {
        WATCHED.fetch_add(1, Ordering::Relaxed);
        Watching(())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        WATCHED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The load as the thread last measured it.
#[derive(Clone, Copy)]
struct Load {
    since: Instant,
    messages: u64,
    busy: bool,
}

thread_local! {
    static LOAD: Cell<Option<Load>> = const { Cell::new(None) };
}

/// Whether `messages` more messages in `elapsed` are a busy load.
fn busy(messages: u64, elapsed: Duration) -> bool {
    messages as f64 / elapsed.as_secs_f64().max(1e-3) > BUSY_MESSAGES as f64
}

/// The load at `now`, when `messages` were read in all: measured again once `last` is
/// [`MEASURE_EVERY`] old.
fn measure(last: Option<Load>, now: Instant, messages: u64) -> Load {
    match last {
        Some(l) if now.duration_since(l.since) < MEASURE_EVERY => l,
        Some(l) => Load {
            since: now,
            messages,
            busy: busy(
                messages.saturating_sub(l.messages),
                now.duration_since(l.since),
            ),
        },
        None => Load {
            since: now,
            messages,
            busy: false,
        },
    }
}

/// How long to wait before sleeping: the window, while busy and no console is watched.
fn window_to_wait(load: Load, consoles_watched: usize, window: Duration) -> Option<Duration> {
    (load.busy && consoles_watched == 0 && !window.is_zero()).then_some(window)
}

/// Runs on the `/fleet` thread each time it is about to sleep.
pub(crate) fn before_park() {
    let now = Instant::now();
    let messages = MESSAGES.load(Ordering::Relaxed);
    let load = LOAD.with(|cell| {
        let load = measure(cell.get(), now, messages);
        cell.set(Some(load));
        load
    });
    let window = Duration::from_micros(WINDOW_MICROS.load(Ordering::Relaxed));
    if let Some(window) = window_to_wait(load, WATCHED.load(Ordering::Relaxed), window) {
        std::thread::sleep(window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_waits_only_while_busy_and_no_console_is_watched() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        // The first measure: not busy yet.
        let first = measure(None, start, 0);
        assert!(!first.busy);
        // Not measured again within a second, whatever was read meanwhile.
        assert!(!measure(Some(first), start + ms(500), 5_000).busy);
        // 1,500 messages in 1.5 s: 1,000 a second, not more.
        assert!(!measure(Some(first), start + ms(1_500), 1_500).busy);
        let busy = measure(Some(first), start + ms(1_000), 5_000);
        assert!(busy.busy);
        assert_eq!(window_to_wait(busy, 0, ms(2)), Some(ms(2)));
        // A console watched, or no window: no waiting.
        assert_eq!(window_to_wait(busy, 1, ms(2)), None);
        assert_eq!(window_to_wait(busy, 0, Duration::ZERO), None);
        // Quiet for the next second: no more waiting.
        let quiet = measure(Some(busy), start + ms(2_000), 5_100);
        assert_eq!(window_to_wait(quiet, 0, ms(2)), None);
    }
}
