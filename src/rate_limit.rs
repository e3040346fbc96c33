//! The upstream rate limit of this process: a governor limiter shared by every
//! job task, with a permit taken right before each upstream call (never while
//! waiting for deliveries).
//!
//! The burst is always set explicitly: governor's default burst equals the
//! rate, which lets twice the rate through in the first second. The limiter can
//! be replaced when this process's share of the merchant's total changes; a new
//! governor limiter starts with a full burst, so replacing happens only on a
//! real change. No I/O here.

use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A rate in calls per second plus a burst, both non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

pub struct UpstreamLimiter {
    current: RwLock<(Rate, Arc<DefaultDirectRateLimiter>)>,
}

impl UpstreamLimiter {
    pub fn new(rate: Rate) -> Self {
        Self {
            current: RwLock::new((rate, Arc::new(build(rate)))),
        }
    }

    /// Waits for a permit; returns how long it waited (for the metrics).
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let limiter = self.limiter();
        limiter.until_ready().await;
        started.elapsed()
    }

    pub fn rate(&self) -> Rate {
        match self.current.read() {
            Ok(guard) => guard.0,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Swaps in a limiter for `rate`, unless it is already the rate in force.
    /// Returns whether it changed.
    pub fn set_rate(&self, rate: Rate) -> bool {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.0 == rate {
            return false;
        }
        *guard = (rate, Arc::new(build(rate)));
        true
    }

    fn limiter(&self) -> Arc<DefaultDirectRateLimiter> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard.1),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().1),
        }
    }
}

fn build(rate: Rate) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[tokio::test]
    async fn burst_passes_at_once_and_the_rest_is_paced() {
        let limiter = UpstreamLimiter::new(rate(20, 3));
        let started = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert!(started.elapsed() < Duration::from_millis(40));
        for _ in 0..4 {
            limiter.acquire().await;
        }
        // four more permits at 20/s need at least ~150 ms after the burst
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn setting_the_same_rate_keeps_the_limiter() {
        let limiter = UpstreamLimiter::new(rate(10, 2));
        assert!(!limiter.set_rate(rate(10, 2)));
        assert!(limiter.set_rate(rate(5, 2)));
        assert_eq!(limiter.rate(), rate(5, 2));
    }
}
