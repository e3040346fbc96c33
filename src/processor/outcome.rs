//! The words the processor writes down: what one gateway call came to (the
//! ledger), and what became of one delivery (the `outcome` span field, the
//! `job processed` log line and the `zhima_jobs_total` label).
//!
//! Each concept is one enum with one `as_str`; nothing else spells these
//! words. The ledger words are stored and read back by `reconcile`, so they
//! must never change. No I/O.

use std::fmt;

/// What one upstream call came to, as the call ledger stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Succeeded,
    /// Failed in a way that usually clears (SYSTEM_ERROR, 5xx, timeout).
    Retryable,
    /// The upstream's call-rate limit.
    Throttled,
    /// The answer's signature was missing or wrong.
    Unverified,
    /// The job itself is wrong.
    Permanent,
    /// Our set-up is wrong.
    Configuration,
}

impl CallOutcome {
    #[cfg(test)]
    pub(crate) const ALL: [Self; 6] = [
        Self::Succeeded,
        Self::Retryable,
        Self::Throttled,
        Self::Unverified,
        Self::Permanent,
        Self::Configuration,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retryable => "retryable",
            Self::Throttled => "throttled",
            Self::Unverified => "unverified",
            Self::Permanent => "permanent",
            Self::Configuration => "configuration",
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    /// The answer is stored: acked.
    Succeeded,
    /// A final `failed` row (or a refusal by the store): acked or
    /// dead-lettered, never retried.
    Failed,
    /// A `retrying` row and a copy for a delay queue.
    Retried,
    /// Not processed (paused, shutting down, database unreachable, or a
    /// configuration fault): the broker redelivers it.
    HandedBack,
    /// The job was already final: acked without a call.
    Duplicate,
    /// The message is not a valid job: dead-lettered without a call.
    Invalid,
    /// The transaction_id belongs to another contact: dead-lettered without
    /// a call.
    Conflict,
    /// Answered from a stored paid answer to the same question (answer
    /// reuse): acked without a call, nothing billed.
    Reused,
}

impl JobOutcome {
    pub(crate) const ALL: [Self; 8] = [
        Self::Succeeded,
        Self::Failed,
        Self::Retried,
        Self::HandedBack,
        Self::Duplicate,
        Self::Invalid,
        Self::Conflict,
        Self::Reused,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Retried => "retried",
            Self::HandedBack => "handed_back",
            Self::Duplicate => "duplicate",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::Reused => "reused",
        }
    }
}

impl fmt::Display for JobOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ledger_words_are_the_stored_ones() {
        let words: Vec<_> = CallOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            words,
            [
                "succeeded",
                "retryable",
                "throttled",
                "unverified",
                "permanent",
                "configuration"
            ]
        );
    }

    #[test]
    fn job_outcome_words_are_the_metric_labels_the_readme_names() {
        let words: Vec<_> = JobOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            words,
            [
                "succeeded",
                "failed",
                "retried",
                "handed_back",
                "duplicate",
                "invalid",
                "conflict",
                "reused"
            ]
        );
    }
}
