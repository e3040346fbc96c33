//! What one gateway call means for its job: the row's new state, what the
//! consumer does with the delivery, the ledger word, and the signals for the
//! rest of the worker (the unverified-answer streak, slowing down, pausing).
//!
//! [`decide`] is pure: it reads the call's class, the delivery's attempt
//! counters and the retry policy, and returns a [`Settlement`]. The processor
//! applies it (store, control, limiter, metrics) in one place. This module
//! does no I/O and touches no shared state.

use std::time::Duration;

use rand::Rng;

use super::Attempt;
use super::outcome::{CallOutcome, JobOutcome};
use crate::retry::{Decision, FailureKind, RetryPolicy};
use crate::upstream::{CallReport, ErrorClass};

/// What the decision needs to know about one gateway call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallClass {
    Succeeded,
    Failed {
        class: ErrorClass,
        /// The gateway answered with a code (rather than a timeout or a
        /// transport failure).
        answered: bool,
    },
}

impl CallClass {
    pub(crate) fn of<A>(report: &CallReport<A>) -> Self {
        match &report.outcome {
            Ok(_) => Self::Succeeded,
            Err(error) => Self::Failed {
                class: error.class(),
                answered: report.code.is_some(),
            },
        }
    }
}

/// How a call settles its job. Built only by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settlement {
    pub(crate) row: RowChange,
    pub(crate) next: Next,
    pub(crate) ledger: CallOutcome,
    pub(crate) streak: StreakChange,
    /// The upstream asked us to slow down: lower the shared rate.
    pub(crate) slow_down: bool,
    /// Our set-up is wrong: pause consumption until a probe passes.
    pub(crate) pause: bool,
}

/// The job row's new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowChange {
    Succeeded,
    /// `retrying`; `with_evidence` keeps a verified gateway answer.
    Retrying {
        with_evidence: bool,
    },
    /// `failed`, final; a verified gateway answer is kept as evidence.
    Failed,
}

/// What happens to the delivery once the row is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Ack,
    Retry {
        delay: Duration,
        next_attempt: u32,
        throttled: u32,
    },
    /// Dead-letter: `attempts` counted calls failed, retries are used up.
    GiveUp {
        attempts: u32,
    },
    HandBack,
}

/// The run of answers with a missing or wrong signature, which reveals a
/// wrong Alipay public key once it reaches the configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreakChange {
    /// A gateway answer that was not unverified ends the run.
    Reset,
    /// One more unverified answer.
    Extend,
    /// No answer at all (timeout, transport failure) says nothing.
    Keep,
}

impl Settlement {
    /// The delivery's outcome for logs and metrics, if the commit succeeds.
    pub(crate) fn job_outcome(&self) -> JobOutcome {
        match self.next {
            Next::Ack if self.row == RowChange::Succeeded => JobOutcome::Succeeded,
            Next::Ack | Next::GiveUp { .. } => JobOutcome::Failed,
            Next::Retry { .. } => JobOutcome::Retried,
            Next::HandBack => JobOutcome::HandedBack,
        }
    }
}

/// The retry/ack decision for one call. `rng` draws the retry delay's jitter.
pub(crate) fn decide(
    call: CallClass,
    attempt: Attempt,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Settlement {
    let CallClass::Failed { class, answered } = call else {
        return Settlement {
            row: RowChange::Succeeded,
            next: Next::Ack,
            ledger: CallOutcome::Succeeded,
            streak: StreakChange::Reset,
            slow_down: false,
            pause: false,
        };
    };
    let streak = match class {
        ErrorClass::Unverified => StreakChange::Extend,
        _ if answered => StreakChange::Reset,
        _ => StreakChange::Keep,
    };
    let (row, next, ledger) = match class {
        ErrorClass::Permanent => (RowChange::Failed, Next::Ack, CallOutcome::Permanent),
        ErrorClass::Configuration => (
            RowChange::Retrying {
                with_evidence: false,
            },
            Next::HandBack,
            CallOutcome::Configuration,
        ),
        ErrorClass::Retryable | ErrorClass::Throttled | ErrorClass::Unverified => {
            let (row, next) = retry_or_give_up(class, attempt, policy, rng);
            (row, next, retry_ledger(class))
        }
    };
    Settlement {
        row,
        next,
        ledger,
        streak,
        slow_down: class == ErrorClass::Throttled,
        pause: class == ErrorClass::Configuration,
    }
}

/// Throttled calls do not count against `max_attempts`: they say nothing
/// about the job.
fn retry_or_give_up(
    class: ErrorClass,
    attempt: Attempt,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> (RowChange, Next) {
    let kind = match class {
        ErrorClass::Throttled => FailureKind::Throttled,
        _ => FailureKind::Transient,
    };
    let throttled = attempt
        .throttled
        .saturating_add(u32::from(kind == FailureKind::Throttled));
    let counted = attempt.number.saturating_sub(throttled);
    match policy.decide(counted, kind, rng) {
        Decision::RetryAfter(delay) => (
            RowChange::Retrying {
                with_evidence: true,
            },
            Next::Retry {
                delay,
                next_attempt: attempt.number.saturating_add(1),
                throttled,
            },
        ),
        Decision::GiveUp => (RowChange::Failed, Next::GiveUp { attempts: counted }),
    }
}

fn retry_ledger(class: ErrorClass) -> CallOutcome {
    match class {
        ErrorClass::Throttled => CallOutcome::Throttled,
        ErrorClass::Unverified => CallOutcome::Unverified,
        _ => CallOutcome::Retryable,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const SUCCEEDED: CallClass = CallClass::Succeeded;
    const RETRYABLE: CallClass = failed(ErrorClass::Retryable);
    const THROTTLED: CallClass = failed(ErrorClass::Throttled);
    const UNVERIFIED: CallClass = failed(ErrorClass::Unverified);
    const PERMANENT: CallClass = failed(ErrorClass::Permanent);
    const CONFIGURATION: CallClass = failed(ErrorClass::Configuration);
    /// A timeout: retryable, and no gateway answer.
    const TIMEOUT: CallClass = CallClass::Failed {
        class: ErrorClass::Retryable,
        answered: false,
    };

    const fn failed(class: ErrorClass) -> CallClass {
        CallClass::Failed {
            class,
            answered: true,
        }
    }

    /// Three counted attempts and a single 1 s tier: no jitter, so the
    /// table is exact.
    fn policy() -> RetryPolicy {
        RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(1), 3).unwrap()
    }

    fn attempt(number: u32, throttled: u32) -> Attempt {
        Attempt { number, throttled }
    }

    /// `row | next | ledger | signals`, one line a reader can check by eye.
    fn summary(settlement: &Settlement) -> String {
        let row = match settlement.row {
            RowChange::Succeeded => "succeeded",
            RowChange::Retrying {
                with_evidence: true,
            } => "retrying",
            RowChange::Retrying {
                with_evidence: false,
            } => "retrying without evidence",
            RowChange::Failed => "failed",
        };
        let next = match settlement.next {
            Next::Ack => "ack".to_owned(),
            Next::Retry {
                delay,
                next_attempt,
                throttled,
            } => format!(
                "retry in {}s as #{next_attempt} t{throttled}",
                delay.as_secs()
            ),
            Next::GiveUp { attempts } => format!("give up after {attempts}"),
            Next::HandBack => "hand back".to_owned(),
        };
        let streak = match settlement.streak {
            StreakChange::Reset => "reset",
            StreakChange::Extend => "extend",
            StreakChange::Keep => "keep",
        };
        let slow = if settlement.slow_down { " slow" } else { "" };
        let pause = if settlement.pause { " pause" } else { "" };
        format!(
            "{row} | {next} | {} | {streak}{slow}{pause}",
            settlement.ledger
        )
    }

    /// Every call class × first / middle / last counted attempt × no earlier
    /// throttling (t0) or two throttled attempts before (t2, which do not
    /// count: attempt 3 of which 2 were throttled is the first counted one).
    #[rustfmt::skip]
    const TABLE: &[(&str, CallClass, u32, u32, &str)] = &[
        ("succeeded first",        SUCCEEDED, 1, 0, "succeeded | ack | succeeded | reset"),
        ("succeeded middle",       SUCCEEDED, 2, 0, "succeeded | ack | succeeded | reset"),
        ("succeeded last",         SUCCEEDED, 3, 0, "succeeded | ack | succeeded | reset"),
        ("succeeded first t2",     SUCCEEDED, 3, 2, "succeeded | ack | succeeded | reset"),
        ("succeeded middle t2",    SUCCEEDED, 4, 2, "succeeded | ack | succeeded | reset"),
        ("succeeded last t2",      SUCCEEDED, 5, 2, "succeeded | ack | succeeded | reset"),

        ("retryable first",        RETRYABLE, 1, 0, "retrying | retry in 1s as #2 t0 | retryable | reset"),
        ("retryable middle",       RETRYABLE, 2, 0, "retrying | retry in 1s as #3 t0 | retryable | reset"),
        ("retryable last",         RETRYABLE, 3, 0, "failed | give up after 3 | retryable | reset"),
        ("retryable first t2",     RETRYABLE, 3, 2, "retrying | retry in 1s as #4 t2 | retryable | reset"),
        ("retryable middle t2",    RETRYABLE, 4, 2, "retrying | retry in 1s as #5 t2 | retryable | reset"),
        ("retryable last t2",      RETRYABLE, 5, 2, "failed | give up after 3 | retryable | reset"),

        ("timeout first",          TIMEOUT,   1, 0, "retrying | retry in 1s as #2 t0 | retryable | keep"),
        ("timeout middle",         TIMEOUT,   2, 0, "retrying | retry in 1s as #3 t0 | retryable | keep"),
        ("timeout last",           TIMEOUT,   3, 0, "failed | give up after 3 | retryable | keep"),
        ("timeout first t2",       TIMEOUT,   3, 2, "retrying | retry in 1s as #4 t2 | retryable | keep"),
        ("timeout middle t2",      TIMEOUT,   4, 2, "retrying | retry in 1s as #5 t2 | retryable | keep"),
        ("timeout last t2",        TIMEOUT,   5, 2, "failed | give up after 3 | retryable | keep"),

        ("throttled first",        THROTTLED, 1, 0, "retrying | retry in 1s as #2 t1 | throttled | reset slow"),
        ("throttled middle",       THROTTLED, 2, 0, "retrying | retry in 1s as #3 t1 | throttled | reset slow"),
        ("throttled last",         THROTTLED, 3, 0, "retrying | retry in 1s as #4 t1 | throttled | reset slow"),
        ("throttled first t2",     THROTTLED, 3, 2, "retrying | retry in 1s as #4 t3 | throttled | reset slow"),
        ("throttled middle t2",    THROTTLED, 4, 2, "retrying | retry in 1s as #5 t3 | throttled | reset slow"),
        ("throttled last t2",      THROTTLED, 5, 2, "retrying | retry in 1s as #6 t3 | throttled | reset slow"),

        ("unverified first",       UNVERIFIED, 1, 0, "retrying | retry in 1s as #2 t0 | unverified | extend"),
        ("unverified middle",      UNVERIFIED, 2, 0, "retrying | retry in 1s as #3 t0 | unverified | extend"),
        ("unverified last",        UNVERIFIED, 3, 0, "failed | give up after 3 | unverified | extend"),
        ("unverified first t2",    UNVERIFIED, 3, 2, "retrying | retry in 1s as #4 t2 | unverified | extend"),
        ("unverified middle t2",   UNVERIFIED, 4, 2, "retrying | retry in 1s as #5 t2 | unverified | extend"),
        ("unverified last t2",     UNVERIFIED, 5, 2, "failed | give up after 3 | unverified | extend"),

        ("permanent first",        PERMANENT, 1, 0, "failed | ack | permanent | reset"),
        ("permanent middle",       PERMANENT, 2, 0, "failed | ack | permanent | reset"),
        ("permanent last",         PERMANENT, 3, 0, "failed | ack | permanent | reset"),
        ("permanent first t2",     PERMANENT, 3, 2, "failed | ack | permanent | reset"),
        ("permanent middle t2",    PERMANENT, 4, 2, "failed | ack | permanent | reset"),
        ("permanent last t2",      PERMANENT, 5, 2, "failed | ack | permanent | reset"),

        ("configuration first",    CONFIGURATION, 1, 0, "retrying without evidence | hand back | configuration | reset pause"),
        ("configuration middle",   CONFIGURATION, 2, 0, "retrying without evidence | hand back | configuration | reset pause"),
        ("configuration last",     CONFIGURATION, 3, 0, "retrying without evidence | hand back | configuration | reset pause"),
        ("configuration first t2", CONFIGURATION, 3, 2, "retrying without evidence | hand back | configuration | reset pause"),
        ("configuration middle t2", CONFIGURATION, 4, 2, "retrying without evidence | hand back | configuration | reset pause"),
        ("configuration last t2",  CONFIGURATION, 5, 2, "retrying without evidence | hand back | configuration | reset pause"),
    ];

    #[test]
    fn every_call_class_and_attempt_settles_as_the_table_says() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(7);
        let mismatches: Vec<String> = TABLE
            .iter()
            .filter_map(|(name, call, number, throttled, expected)| {
                let got = summary(&decide(
                    *call,
                    attempt(*number, *throttled),
                    &policy,
                    &mut rng,
                ));
                (got != *expected).then(|| format!("{name}: expected {expected:?}, got {got:?}"))
            })
            .collect();
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn the_table_covers_every_error_class() {
        for class in [
            ErrorClass::Retryable,
            ErrorClass::Throttled,
            ErrorClass::Unverified,
            ErrorClass::Permanent,
            ErrorClass::Configuration,
        ] {
            let rows = TABLE
                .iter()
                .filter(|(_, call, ..)| matches!(call, CallClass::Failed { class: c, .. } if *c == class))
                .count();
            assert!(rows >= 6, "{class:?}: {rows} rows");
        }
    }

    #[test]
    fn the_job_outcome_follows_the_settlement() {
        let policy = policy();
        let mut rng = StdRng::seed_from_u64(8);
        let mut outcome =
            |call, number| decide(call, attempt(number, 0), &policy, &mut rng).job_outcome();
        assert_eq!(outcome(SUCCEEDED, 1), JobOutcome::Succeeded);
        assert_eq!(outcome(PERMANENT, 1), JobOutcome::Failed);
        assert_eq!(outcome(RETRYABLE, 3), JobOutcome::Failed);
        assert_eq!(outcome(RETRYABLE, 1), JobOutcome::Retried);
        assert_eq!(outcome(THROTTLED, 9), JobOutcome::Retried);
        assert_eq!(outcome(CONFIGURATION, 1), JobOutcome::HandedBack);
    }

    #[test]
    fn a_throttled_retry_waits_longer_than_a_transient_one() {
        let policy = RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(8), 5).unwrap();
        let mut rng = StdRng::seed_from_u64(9);
        let delay = |settlement: Settlement| match settlement.next {
            Next::Retry { delay, .. } => delay,
            other => panic!("expected a retry, got {other:?}"),
        };
        let transient = delay(decide(RETRYABLE, attempt(1, 0), &policy, &mut rng));
        let throttled = delay(decide(THROTTLED, attempt(1, 0), &policy, &mut rng));
        assert_eq!(transient, Duration::from_secs(1));
        assert!(throttled >= Duration::from_secs(4), "{throttled:?}");
    }
}
