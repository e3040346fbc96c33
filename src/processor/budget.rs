//! The processor's side of the daily budget (`crate::spend`): the gate
//! before a job's row is touched, and the settlement of the call's unit with
//! what the call cost. What a call costs and when to hold is `spend`'s.

use super::{Attempt, Disposition, Handled, Instead, JobOutcome, Processor, count_job};
use crate::spend::{Cost, Pass, SpendGate};
use crate::store::JobKey;
use crate::upstream::UpstreamError;

impl Processor {
    /// The call's unit of the daily budget ([`Pass::Unlimited`] without
    /// one); at the limit, how to handle the delivery instead: handed back,
    /// to wait in the queue while consumption is held, or (while jobs in
    /// progress hold units) sent to the back of the queue after a delay.
    pub(super) async fn spend_pass(
        &self,
        key: &JobKey<'_>,
        attempt: Attempt,
    ) -> Result<Pass, Instead> {
        let Some(gate) = &self.spend else {
            return Ok(Pass::Unlimited);
        };
        let pass = self
            .persist("reserve the call's budget", || {
                gate.pass(key.transaction_id)
            })
            .await?;
        if matches!(pass, Pass::Refused | Pass::Deferred) {
            return Err(Instead(
                self.refused_for_budget(gate, key, pass, attempt).await,
            ));
        }
        Ok(pass)
    }

    /// At the daily limit, a job that needs no call is settled as ever (a
    /// final row: a redelivery, a batch enqueued twice; a transaction_id of
    /// other business fields), read-only up to that point; any other waits
    /// in the queue, with no row written, so its window has not begun: a
    /// deferred one goes through a delay queue with its counters unchanged.
    async fn refused_for_budget(
        &self,
        gate: &SpendGate,
        key: &JobKey<'_>,
        pass: Pass,
        attempt: Attempt,
    ) -> Handled {
        let existing = match self
            .persist("look the job up", || self.store.find(key.transaction_id))
            .await
        {
            Ok(existing) => existing,
            Err(Instead(handled)) => return handled,
        };
        if let Some(existing) = existing.filter(|existing| {
            existing.status.is_final() || existing.conflicts_with(key.fingerprint)
        }) {
            if let Err(Instead(handled)) = self.join_new_batch(&existing, key).await {
                return handled;
            }
            if let Some(handled) = Self::settled_without_call(&existing, key) {
                return handled;
            }
        }
        gate.note_refused(key.transaction_id).await;
        if pass != Pass::Deferred {
            count_job(JobOutcome::HandedBack);
            return Handled::handed_back();
        }
        count_job(JobOutcome::Retried);
        Handled {
            disposition: Disposition::Retry {
                delay: gate.defer_delay(),
                next_attempt: attempt.number,
                throttled: attempt.throttled,
            },
            outcome: JobOutcome::Retried,
        }
    }

    pub(super) async fn spend_unused(&self, pass: Pass, key: &JobKey<'_>) {
        if let Some(gate) = &self.spend {
            gate.unused(pass, key.transaction_id).await;
        }
    }

    pub(super) async fn spend_settle<A>(
        &self,
        pass: Pass,
        key: &JobKey<'_>,
        outcome: &Result<A, UpstreamError>,
    ) {
        if let Some(gate) = &self.spend {
            gate.settle(pass, key.transaction_id, Cost::of(outcome))
                .await;
        }
    }
}
