//! Answer reuse (`reuse.max_age_days`, issue 17): before a new job takes a
//! rate-limit permit, look for a paid `succeeded` answer to the same
//! question (its keyed hash, [`crate::pii::PiiKey::question_hash`]) no older
//! than the configured age, and if there is one complete the job from it:
//! no upstream call, nothing billed, its row and result event name the
//! payer in `reused_from`. While reuse is on, a job's own successful call
//! is indexed (its `question_hmac`) with its outcome, in the outcome's own
//! transaction, so later jobs can reuse its answer; with reuse off
//! nothing here runs (no statement, no cost), so answers paid while it was
//! off are not reusable later.
//!
//! When a job is NOT answered from a stored answer:
//! - reuse is off (`max_age_days = 0`), or the message says `"fresh": true`;
//! - the transaction_id already has a row: a redelivery of a final job stays
//!   a duplicate, another contact's id stays a conflict, and a job that has
//!   called the upstream before (a retry, a `requeue-dead`) keeps calling
//!   under its transaction_id, because that earlier call may have been
//!   billed and only the same transaction_id replays its answer unbilled
//!   (answering it from elsewhere would leave a billed biz_no without a row);
//!   a delivery whose attempt header is past 1 is such a job and skips the
//!   lookup;
//! - no paid answer to the question is recent enough, or the only ones
//!   failed (failed answers are never reused).
//!
//! The row, the copied answer and the result event are written in one
//! transaction (`JobStore::reuse_answer`) before the delivery is acked.

use chrono::{DateTime, TimeDelta, Utc};

use super::{Attempt, Disposition, Handled, Instead, JobOutcome, Processor, count_job};
use crate::job::Job;
use crate::store::JobKey;

impl Processor {
    /// Reuses answers up to `max_age` old (by the time of the paid answer);
    /// None (the default) leaves reuse off.
    pub fn with_answer_reuse(mut self, max_age: Option<TimeDelta>) -> Self {
        self.reuse_max_age = max_age;
        self
    }

    /// The job completed from a stored answer, or None: go on and call.
    pub(super) async fn try_reuse(
        &self,
        job: &Job,
        key: &JobKey<'_>,
        attempt: Attempt,
        question: Option<&str>,
    ) -> Option<Handled> {
        let (max_age, question) = self.reuse_max_age.zip(question)?;
        if job.fresh || attempt.number > 1 {
            return None;
        }
        let answered_since = Utc::now()
            .checked_sub_signed(max_age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let reused = self
            .persist("reuse a stored answer", || {
                self.store.reuse_answer(key, question, answered_since)
            })
            .await;
        match reused {
            Ok(Some(payer)) => {
                count_job(JobOutcome::Reused);
                // The `job processed` line says `outcome=reused`; `show` names the payer.
                tracing::debug!(reused_from = %payer, "answered from a stored answer; no upstream call");
                Some(Handled {
                    disposition: Disposition::Ack,
                    outcome: JobOutcome::Reused,
                })
            }
            Ok(None) => None,
            Err(Instead(handled)) => Some(handled),
        }
    }

    /// With reuse on, the question's keyed hash (computed once per job):
    /// what [`Self::try_reuse`] looks up, and what the job's successful
    /// outcome (`RowUpdate::Succeeded`) writes in its transaction so that
    /// its paid answer can be reused; None with reuse off (answers paid then
    /// are not indexed).
    pub(super) fn question_to_index(&self, job: &Job) -> Option<String> {
        self.reuse_max_age
            .map(|_| self.pii_key.question_hash(&job.query))
    }
}
