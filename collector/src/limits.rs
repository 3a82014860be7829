//! Per-agent request rate limits: a token bucket per client address, so that one runaway or
//! hostile sender cannot take the store's write capacity from the others. Pure: time is passed
//! in.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Client addresses with a bucket at most; beyond it, buckets that are full again (senders idle
/// for a burst's worth of time) are dropped, and if none is, the new sender is let through
/// without one (counted by the caller as any other accepted request).
const MAX_SENDERS: usize = 65_536;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    /// Requests per second refilled; 0 turns limiting off.
    rate: f64,
    /// Bucket size: the most requests a sender may make at once after being idle.
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(rate_per_s: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_s),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `who`'s bucket at `now`; when it is empty, how long until it
    /// holds one again (for `Retry-After`).
    pub fn check(&self, who: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SENDERS && !buckets.contains_key(&who) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_SENDERS {
                return Ok(());
            }
        }
        let b = buckets.entry(who).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let refill = now.saturating_duration_since(b.last).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }

    pub fn senders(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_then_the_rate_per_sender() {
        let l = RateLimiter::new(10, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        let wait = l.check(ip(1), t0).unwrap_err();
        assert!(
            (Duration::from_millis(99)..=Duration::from_millis(101)).contains(&wait),
            "{wait:?}"
        );
        // Another sender has its own bucket.
        assert_eq!(l.check(ip(2), t0), Ok(()));
        // 100 ms later one request more, then none.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(ip(1), t1), Ok(()));
        assert!(l.check(ip(1), t1).is_err());
        // Idle for long: back to a full burst, never more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(l.check(ip(1), t2), Ok(()));
        }
        assert!(l.check(ip(1), t2).is_err());
    }

    #[test]
    fn rate_zero_is_off() {
        let l = RateLimiter::new(0, 1);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.check(ip(1), t0), Ok(()));
        }
        assert_eq!(l.senders(), 0);
    }

    #[test]
    fn senders_are_bounded_and_idle_ones_forgotten() {
        let l = RateLimiter::new(1, 1);
        let t0 = Instant::now();
        for i in 0..MAX_SENDERS as u32 {
            let who = IpAddr::from(i.to_be_bytes());
            assert_eq!(l.check(who, t0), Ok(()));
        }
        assert_eq!(l.senders(), MAX_SENDERS);
        // Full map, nobody idle yet: a new sender passes without a bucket.
        assert_eq!(l.check(ip(200), t0), Ok(()));
        assert_eq!(l.senders(), MAX_SENDERS);
        // Once the others are full again they are dropped and the new one gets a bucket.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.check(IpAddr::from([192, 168, 0, 1]), t1), Ok(()));
        assert_eq!(l.senders(), 1);
    }
}
