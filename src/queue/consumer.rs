//! Turns one delivery into a processed job and carries out the processor's
//! [`Disposition`] on the broker: ack, a confirmed retry copy then ack, a
//! confirmed dead-letter copy then ack, or a nack that hands it back.
//!
//! A copy is always confirmed before the original is acked, so a crash in
//! between leaves two messages with the same transaction_id, never none; the
//! store's final-row check makes the extra one harmless.

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::Instrument;

use super::publisher::Outgoing;
use super::{
    ATTEMPT_HEADER, DEAD_AT_HEADER, ERROR_HEADER, Publisher, THROTTLED_HEADER, Topology, header_u32,
};
use crate::processor::{Attempt, Disposition, JobOutcome, Processor};

/// Reads our retry counters from the delivery's headers.
pub(crate) fn attempt_of(delivery: &Delivery) -> Attempt {
    let headers = delivery.properties.headers().as_ref();
    Attempt {
        number: header_u32(headers, ATTEMPT_HEADER).unwrap_or(1).max(1),
        throttled: header_u32(headers, THROTTLED_HEADER).unwrap_or(0),
    }
}

/// What answering a delivery on the broker needs.
#[derive(Clone, Copy)]
pub(crate) struct Broker<'a> {
    /// The channel the delivery came on: its ack goes there.
    pub(crate) channel: &'a Channel,
    pub(crate) publisher: &'a Publisher,
    pub(crate) topology: &'a Topology,
}

/// Processes one delivery inside its `process_job` span (transaction_id,
/// attempt, queue, outcome), so every log line of the job carries them.
/// Returns the processor's outcome for the job (a copy that could not be
/// published hands the delivery back, but the outcome stays the decided one,
/// as in `zhima_jobs_total`).
pub(crate) async fn handle(
    delivery: Delivery,
    processor: &Processor,
    broker: Broker<'_>,
) -> JobOutcome {
    let topology = broker.topology;
    let attempt = attempt_of(&delivery);
    let span = tracing::info_span!(
        "process_job",
        transaction_id = tracing::field::Empty,
        attempt = attempt.number,
        queue = %topology.names.queue,
        outcome = tracing::field::Empty,
    );
    handle_in_span(delivery, attempt, processor, broker)
        .instrument(span)
        .await
}

async fn handle_in_span(
    delivery: Delivery,
    attempt: crate::processor::Attempt,
    processor: &Processor,
    broker: Broker<'_>,
) -> JobOutcome {
    let Broker {
        channel,
        publisher,
        topology,
    } = broker;
    let (disposition, outcome) = processor
        .process_with_outcome(&delivery.data, attempt)
        .await;
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned());
    let forwarded = match &disposition {
        Disposition::Ack => Ok(()),
        Disposition::HandBack => {
            hand_back(&delivery).await;
            return outcome;
        }
        Disposition::Retry {
            delay,
            next_attempt,
            throttled,
        } => {
            let queue = topology.names.delay_queue(*delay);
            metrics::counter!(crate::telemetry::metric::RETRIES_SCHEDULED_TOTAL).increment(1);
            let copy = Outgoing::to_queue(&queue, &delivery.data, message_id.as_deref())
                .with_number_header(ATTEMPT_HEADER, *next_attempt)
                .with_number_header(THROTTLED_HEADER, *throttled);
            publisher.publish(copy).await
        }
        Disposition::DeadLetter { reason } => {
            let copy = Outgoing::to_queue(
                &topology.names.dead_queue,
                &delivery.data,
                message_id.as_deref(),
            )
            .with_number_header(ATTEMPT_HEADER, attempt.number)
            .with_text_header(ERROR_HEADER, &truncate(reason, 1000))
            .with_text_header(DEAD_AT_HEADER, &chrono::Utc::now().to_rfc3339());
            publisher.publish(copy).await
        }
    };
    match forwarded {
        Ok(()) => ack(&delivery, channel).await,
        Err(error) => {
            tracing::warn!(error.message = %error, error.cause_chain = ?error,
                "could not publish the job's copy; handing the delivery back");
            hand_back(&delivery).await;
        }
    }
    outcome
}

/// Acks on the delivery's channel directly: lapin's `Acker` takes the same
/// path through an internal task and a task spawned per ack, two extra
/// wake-ups per job. A channel that closed meanwhile refuses the ack (its
/// deliveries return to the queue), as the `Acker` would.
async fn ack(delivery: &Delivery, channel: &Channel) {
    let acked = channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await;
    if let Err(error) = acked {
        tracing::warn!(error.message = %error,
            "ack failed (channel closed?); the broker will redeliver and the stored outcome makes that harmless");
    }
}

/// Gives the message back to the broker without counting an attempt.
pub(crate) async fn hand_back(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(error) = delivery.acker.nack(options).await {
        tracing::debug!(error.message = %error, "nack failed; the channel closing returns the message anyway");
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
