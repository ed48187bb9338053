//! Per-caller rate limits (seed 002: 100 requests a minute for standard users, 1,000 for
//! privileged ones).
//!
//! The algorithm is GCRA, the generic cell rate algorithm: a token bucket kept as one instant
//! per key, its *theoretical arrival time* (TAT). A limit of `n` a minute admits one request
//! every `60 s / n` on average, with bursts of up to `n` at once. A request at `now` is
//! admitted when `max(TAT, now) + interval - now <= 60 s`, and then moves the TAT there. A key
//! whose TAT has passed is in the same state as a key never seen, so it can be forgotten at
//! no cost to correctness: that is how memory stays bounded. The table holds at most
//! [`RateLimits::max_keys`] keys; when a shard is full its idle keys are swept, and if none is
//! idle the key closest to idle goes (which only ever errs in the caller's favour).
//!
//! Keys: the subject of a verified bearer token (a wallet or an operator), whatever the
//! token's role; requests without a valid token are keyed by the client's IP address (the
//! connection's peer, never a forwarded header), or share one bucket when it is unknown.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmfleet_auth::{Role, Subject};

/// The window limits are expressed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Shards of the key table, each behind its own lock.
const SHARDS: usize = 16;

/// How many checks a shard takes between sweeps of its idle keys.
const SWEEP_EVERY: u32 = 1024;

/// Requests a minute for each kind of caller; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub standard: Option<NonZeroU32>,
    pub privileged: Option<NonZeroU32>,
    pub admin: Option<NonZeroU32>,
    /// Requests without a valid bearer token, per client IP address.
    pub anonymous: Option<NonZeroU32>,
    /// The most keys tracked at once (rounded up to a multiple of the shard count).
    pub max_keys: usize,
}

impl Default for RateLimits {
    /// Seed 002's limits; admins unlimited; 60 a minute per address without a token.
    fn default() -> Self {
        RateLimits {
            standard: NonZeroU32::new(100),
            privileged: NonZeroU32::new(1000),
            admin: None,
            anonymous: NonZeroU32::new(60),
            max_keys: 100_000,
        }
    }
}

impl RateLimits {
    /// No limit for anyone.
    pub fn unlimited() -> Self {
        RateLimits {
            standard: None,
            privileged: None,
            admin: None,
            anonymous: None,
            ..RateLimits::default()
        }
    }

    /// The limit for a token of `role`.
    pub fn for_role(&self, role: Role) -> Option<NonZeroU32> {
        match role {
            Role::Standard => self.standard,
            Role::Privileged => self.privileged,
            Role::Admin => self.admin,
        }
    }
}

/// Whose bucket a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Subject(Subject),
    Ip(IpAddr),
    /// Requests without a token whose peer address is unknown (an in-process router).
    Anonymous,
}

/// What a check decided, with what the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests a minute.
    pub limit: u32,
    /// Requests that may still be made at once.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until a request would be admitted.
    pub retry_after_secs: u64,
}

/// The key table: GCRA state per key, sharded.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
}

#[derive(Debug, Default)]
struct Shard {
    tat: HashMap<RateKey, Instant>,
    checks: u32,
}

impl Shard {
    /// Forgets the keys whose bucket is full again.
    fn sweep(&mut self, now: Instant) {
        self.tat.retain(|_, tat| *tat > now);
    }

    /// Makes room for one more key, keeping at most `cap`.
    fn make_room(&mut self, cap: usize, now: Instant) {
        if self.tat.len() < cap {
            return;
        }
        self.sweep(now);
        while self.tat.len() >= cap {
            let Some(oldest) = self
                .tat
                .iter()
                .min_by_key(|(_, tat)| **tat)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.tat.remove(&oldest);
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    fn per_shard_cap(&self) -> usize {
        self.limits.max_keys.div_ceil(SHARDS).max(1)
    }

    fn shard(&self, key: &RateKey) -> &Mutex<Shard> {
        let i = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        &self.shards[i]
    }

    /// Counts one request of `key` under `limit` a minute at `now`.
    pub fn check(&self, key: &RateKey, limit: NonZeroU32, now: Instant) -> Decision {
        let interval = WINDOW / limit.get();
        let cap = self.per_shard_cap();
        let mut shard = match self.shard(key).lock() {
            Ok(s) => s,
            // A panic elsewhere cannot leave a TAT table inconsistent: keep going.
            Err(poisoned) => poisoned.into_inner(),
        };
        shard.checks = shard.checks.wrapping_add(1);
        if shard.checks % SWEEP_EVERY == 0 {
            shard.sweep(now);
        }
        let tat = shard.tat.get(key).copied().unwrap_or(now).max(now);
        let next = tat + interval;
        let ahead = next - now;
        if ahead <= WINDOW {
            if !shard.tat.contains_key(key) {
                shard.make_room(cap, now);
            }
            shard.tat.insert(key.clone(), next);
            let left = WINDOW - ahead;
            Decision {
                allowed: true,
                limit: limit.get(),
                remaining: u32::try_from(left.as_nanos() / interval.as_nanos().max(1))
                    .unwrap_or(u32::MAX),
                reset_secs: ceil_secs(ahead),
                retry_after_secs: 0,
            }
        } else {
            let wait = ahead - WINDOW;
            Decision {
                allowed: false,
                limit: limit.get(),
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: ceil_secs(wait).max(1),
            }
        }
    }

    #[cfg(test)]
    fn tracks(&self, key: &RateKey) -> bool {
        match self.shard(key).lock() {
            Ok(s) => s.tat.contains_key(key),
            Err(poisoned) => poisoned.into_inner().tat.contains_key(key),
        }
    }

    /// How many keys are tracked now.
    pub fn tracked_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| match s.lock() {
                Ok(s) => s.tat.len(),
                Err(poisoned) => poisoned.into_inner().tat.len(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
    }

    fn ip(n: u8) -> RateKey {
        RateKey::Ip(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn a_burst_of_the_limit_then_refusal_then_refill() {
        let rl = RateLimiter::new(RateLimits::default());
        let t0 = Instant::now();
        let key = ip(1);
        for i in 0..10 {
            let d = rl.check(&key, limit(10), t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.limit, 10);
        }
        let d = rl.check(&key, limit(10), t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_secs, 6);
        assert_eq!(d.reset_secs, 60);
        // One interval (6 s) later, one more.
        let t1 = t0 + Duration::from_secs(6);
        assert!(rl.check(&key, limit(10), t1).allowed);
        assert!(!rl.check(&key, limit(10), t1).allowed);
        // A minute later the bucket is full again.
        let t2 = t1 + WINDOW;
        let d = rl.check(&key, limit(10), t2);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }

    #[test]
    fn keys_are_independent() {
        let rl = RateLimiter::new(RateLimits::default());
        let now = Instant::now();
        assert!(rl.check(&ip(1), limit(1), now).allowed);
        assert!(!rl.check(&ip(1), limit(1), now).allowed);
        assert!(rl.check(&ip(2), limit(1), now).allowed);
        assert!(rl.check(&RateKey::Anonymous, limit(1), now).allowed);
    }

    #[test]
    fn memory_stays_under_the_cap() {
        let rl = RateLimiter::new(RateLimits {
            max_keys: 256,
            ..RateLimits::default()
        });
        let now = Instant::now();
        for i in 0..10_000u32 {
            let key = RateKey::Ip(IpAddr::from(i.to_be_bytes()));
            // Busy keys: none is idle, the oldest go.
            assert!(rl.check(&key, limit(100), now).allowed);
        }
        assert!(rl.tracked_keys() <= 256, "{}", rl.tracked_keys());
        // Once idle, the old keys are swept as new ones come.
        let later = now + WINDOW * 2;
        for i in 0..10_000u32 {
            let key = RateKey::Ip(IpAddr::from((i + 1_000_000).to_be_bytes()));
            assert!(rl.check(&key, limit(100), later).allowed);
        }
        assert!(rl.tracked_keys() <= 256, "{}", rl.tracked_keys());
        let old =
            (9_000..10_000u32).filter(|i| rl.tracks(&RateKey::Ip(IpAddr::from(i.to_be_bytes()))));
        assert_eq!(old.count(), 0);
    }

    #[test]
    fn default_limits_follow_the_seed() {
        let l = RateLimits::default();
        assert_eq!(l.for_role(Role::Standard).map(NonZeroU32::get), Some(100));
        assert_eq!(
            l.for_role(Role::Privileged).map(NonZeroU32::get),
            Some(1000)
        );
        assert_eq!(l.for_role(Role::Admin), None);
    }
}
