//! When to try a job again, and how long to wait: a pure function of the
//! attempt number and the kind of failure.
//!
//! Delays are served by RabbitMQ delay queues with a fixed TTL each (per-message
//! TTL in one queue blocks at the head), so every delay this policy returns is
//! one of its `RetryPolicy::tiers`: the initial delay doubled up to the cap.
//! Jitter is "full jitter" drawn in `[initial, cap(attempt)]` and rounded down to
//! a tier. This module does no I/O and knows nothing of AMQP or of the
//! configuration: `config` builds the one policy from its `[retry]` section.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    #[error("the initial delay must be greater than zero")]
    ZeroInitialDelay,
    #[error("the initial delay ({initial:?}) is greater than the maximum delay ({max:?})")]
    MinAboveMax { initial: Duration, max: Duration },
    #[error("max_attempts must be at least 1")]
    NoAttempts,
}

/// Why the last call did not settle the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// SYSTEM_ERROR, 20000, 5xx, timeouts, unverifiable answers.
    Transient,
    /// 40005 call-rate limited: the upstream asks us to slow down, so the wait
    /// starts longer and, since throttling says nothing about the job, it is
    /// not counted against `max_attempts`.
    Throttled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Decision {
    RetryAfter(Duration),
    GiveUp,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    tiers: Vec<Duration>,
}

/// Throttled jobs wait at least this many tiers above the first.
const THROTTLED_MIN_TIER: usize = 2;

impl RetryPolicy {
    pub fn new(
        initial: Duration,
        max: Duration,
        max_attempts: u32,
    ) -> Result<Self, RetryPolicyError> {
        if initial.is_zero() {
            return Err(RetryPolicyError::ZeroInitialDelay);
        }
        if initial > max {
            return Err(RetryPolicyError::MinAboveMax { initial, max });
        }
        if max_attempts == 0 {
            return Err(RetryPolicyError::NoAttempts);
        }
        let mut tiers = Vec::new();
        let mut delay = initial;
        while delay < max {
            tiers.push(delay);
            delay = delay.saturating_mul(2);
        }
        tiers.push(max);
        Ok(Self {
            max_attempts,
            tiers,
        })
    }

    /// Every delay `decide` can return, ascending: one delay queue each.
    pub(crate) fn tiers(&self) -> &[Duration] {
        &self.tiers
    }

    /// `attempts_made` counts the upstream calls already made for the job
    /// (throttled ones excluded), the failed one included.
    pub(crate) fn decide(
        &self,
        attempts_made: u32,
        kind: FailureKind,
        rng: &mut impl Rng,
    ) -> Decision {
        if kind == FailureKind::Transient && attempts_made >= self.max_attempts {
            return Decision::GiveUp;
        }
        let cap_index = self.cap_index(attempts_made, kind);
        let min_index = match kind {
            FailureKind::Transient => 0,
            FailureKind::Throttled => THROTTLED_MIN_TIER.min(cap_index),
        };
        let low = self.tiers[min_index];
        let high = self.tiers[cap_index];
        let drawn = if low < high {
            rng.random_range(low..=high)
        } else {
            low
        };
        Decision::RetryAfter(self.round_down_to_tier(drawn))
    }

    /// The longest a job can spend waiting in delay queues: the sum of the
    /// largest delay of every retry. Start-up checks it against the upstream's
    /// transaction_id validity.
    pub(crate) fn worst_case_schedule(&self) -> Duration {
        (1..self.max_attempts)
            .map(|attempt| self.tiers[self.cap_index(attempt, FailureKind::Transient)])
            .sum()
    }

    fn cap_index(&self, attempts_made: u32, kind: FailureKind) -> usize {
        let steps = usize::try_from(attempts_made.saturating_sub(1)).unwrap_or(usize::MAX);
        let steps = match kind {
            FailureKind::Transient => steps,
            FailureKind::Throttled => steps.saturating_add(THROTTLED_MIN_TIER),
        };
        steps.min(self.tiers.len() - 1)
    }

    fn round_down_to_tier(&self, delay: Duration) -> Duration {
        self.tiers
            .iter()
            .rev()
            .find(|tier| **tier <= delay)
            .copied()
            .unwrap_or(self.tiers[0])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::new(ms(1000), ms(10_000), 5).unwrap()
    }

    #[test]
    fn tiers_double_from_the_initial_delay_up_to_the_cap() {
        assert_eq!(
            policy().tiers(),
            &[ms(1000), ms(2000), ms(4000), ms(8000), ms(10_000)]
        );
    }

    #[test]
    fn equal_initial_and_max_give_a_single_tier() {
        let policy = RetryPolicy::new(ms(500), ms(500), 3).unwrap();
        assert_eq!(policy.tiers(), &[ms(500)]);
    }

    #[test]
    fn initial_above_max_is_rejected() {
        assert_eq!(
            RetryPolicy::new(ms(2000), ms(1000), 3).unwrap_err(),
            RetryPolicyError::MinAboveMax {
                initial: ms(2000),
                max: ms(1000)
            }
        );
    }

    #[test]
    fn zero_initial_delay_and_zero_attempts_are_rejected() {
        assert_eq!(
            RetryPolicy::new(ms(0), ms(1000), 3).unwrap_err(),
            RetryPolicyError::ZeroInitialDelay
        );
        assert_eq!(
            RetryPolicy::new(ms(10), ms(1000), 0).unwrap_err(),
            RetryPolicyError::NoAttempts
        );
    }

    #[test]
    fn transient_failure_gives_up_once_attempts_are_exhausted() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            policy().decide(5, FailureKind::Transient, &mut rng),
            Decision::GiveUp
        );
        assert!(matches!(
            policy().decide(4, FailureKind::Transient, &mut rng),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn throttling_never_exhausts_attempts() {
        let mut rng = StdRng::seed_from_u64(2);
        assert!(matches!(
            policy().decide(50, FailureKind::Throttled, &mut rng),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn delays_stay_within_the_attempts_cap_and_are_tiers() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(3);
        for attempt in 1..5 {
            let cap = policy.tiers()[(attempt as usize - 1).min(4)];
            for _ in 0..200 {
                let Decision::RetryAfter(delay) =
                    policy.decide(attempt, FailureKind::Transient, &mut rng)
                else {
                    panic!("should retry");
                };
                assert!(delay <= cap, "attempt {attempt}: {delay:?} > {cap:?}");
                assert!(policy.tiers().contains(&delay));
            }
        }
    }

    #[test]
    fn jitter_spreads_later_attempts_over_several_tiers() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(4);
        let seen: std::collections::BTreeSet<_> = (0..500)
            .map(|_| policy.decide(4, FailureKind::Transient, &mut rng))
            .collect();
        assert!(seen.len() >= 3, "{seen:?}");
    }

    #[test]
    fn throttled_delay_starts_above_the_first_tier() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..200 {
            let Decision::RetryAfter(delay) = policy.decide(1, FailureKind::Throttled, &mut rng)
            else {
                panic!("should retry");
            };
            assert!(delay >= ms(4000), "{delay:?}");
        }
    }

    #[test]
    fn worst_case_schedule_sums_the_caps_of_every_retry() {
        // retries after attempts 1..=4: caps 1 s, 2 s, 4 s, 8 s
        assert_eq!(policy().worst_case_schedule(), ms(15_000));
        let single = RetryPolicy::new(ms(1000), ms(1000), 1).unwrap();
        assert_eq!(single.worst_case_schedule(), Duration::ZERO);
    }
}

#[cfg(test)]
#[path = "retry_properties.rs"]
mod properties;
