//! A token bucket: a burst at once, then a steady rate; the limit of a node's heartbeats and of
//! a WebSocket client's messages.

use std::time::Instant;

/// A token bucket: `burst` at once, refilled at `per_sec`.
pub(crate) struct Bucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
    /// Whether the current flood was logged already.
    logged: bool,
}

impl Bucket {
    pub(crate) fn full(burst: f64, per_sec: f64) -> Self {
        Bucket {
            tokens: burst,
            burst,
            per_sec,
            at: Instant::now(),
            logged: false,
        }
    }

    /// Takes one token if there is one. `Err(first)`: refused, `first` when this is the
    /// first refusal of a flood.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), bool> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.logged = false;
            Ok(())
        } else {
            Err(!std::mem::replace(&mut self.logged, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(5.0, 1.0);
        for _ in 0..5 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(true));
        assert_eq!(b.take(t0), Err(false), "a flood is logged once");
        assert_eq!(b.take(t0 + Duration::from_millis(1100)), Ok(()));
        assert_eq!(b.take(t0 + Duration::from_millis(1200)), Err(true));
        // Idle time refills up to the burst, no further.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }
}
