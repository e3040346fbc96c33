//! Fault scenarios for the processor alone, with no broker: the worker's own
//! `Processor` against SQLite and the sandbox (`support::in_process`). Each
//! checks the dispositions the consumer would act on, the row, the ledger of
//! upstream calls and what the sandbox saw or billed.

use zhima_worker::processor::Disposition;
use zhima_worker::sandbox::{Faults, SandboxReply};

use crate::support::in_process::{self, FIRST_ATTEMPT};
use crate::support::job;

fn is_retry(disposition: &Disposition) -> bool {
    matches!(disposition, Disposition::Retry { .. })
}

fn row(status: &str, error_code: Option<&str>) -> Option<(String, Option<String>)> {
    Some((status.to_owned(), error_code.map(str::to_owned)))
}

#[tokio::test]
async fn a_system_error_is_retried_then_succeeds_with_two_ledger_calls_and_one_bill() {
    let harness = in_process::start(Faults::default()).await;
    harness.sandbox.respond_next(1, SandboxReply::SystemError);
    let dispositions = harness.deliver_until_settled(&job("flaky", 1)).await;
    assert!(
        matches!(
            dispositions.as_slice(),
            [
                Disposition::Retry {
                    next_attempt: 2,
                    throttled: 0,
                    ..
                },
                Disposition::Ack
            ]
        ),
        "{dispositions:?}"
    );
    assert_eq!(harness.row("flaky_1").await, row("succeeded", None));
    assert_eq!(harness.ledger_calls("flaky_1").await, 2);
    assert_eq!(harness.sandbox.calls_for("flaky_1"), 2);
    assert_eq!(harness.sandbox.billed_for("flaky_1"), 1);
}

#[tokio::test]
async fn a_permanent_business_error_fails_the_row_and_acks_after_one_call() {
    let harness = in_process::start(Faults::default()).await;
    let mut wrong_product = job("perm", 1);
    wrong_product["product_code"] = "w0000000000000000000".into();
    let dispositions = harness.deliver_until_settled(&wrong_product).await;
    assert_eq!(dispositions, vec![Disposition::Ack]);
    assert_eq!(
        harness.row("perm_1").await,
        row("failed", Some("API_PRODUCT_NOT_MATCH"))
    );
    assert_eq!(harness.ledger_calls("perm_1").await, 1);
    assert_eq!(harness.sandbox.calls_for("perm_1"), 1);
}

#[tokio::test]
async fn a_5xx_on_every_attempt_is_dead_lettered_after_the_last_attempt() {
    let faults = Faults {
        http_5xx_before_rate: 1.0,
        ..Faults::default()
    };
    let harness = in_process::start_with(faults, 3).await;
    let dispositions = harness.deliver_until_settled(&job("down", 1)).await;
    assert_eq!(dispositions.len(), 3, "{dispositions:?}");
    assert!(dispositions[..2].iter().all(is_retry), "{dispositions:?}");
    assert!(
        matches!(dispositions[2], Disposition::DeadLetter { .. }),
        "{dispositions:?}"
    );
    assert_eq!(
        harness.row("down_1").await.map(|(status, _)| status),
        Some("failed".into())
    );
    assert_eq!(harness.ledger_calls("down_1").await, 3);
    let stats = harness.sandbox.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.billed, 0);
}

#[tokio::test]
async fn a_redelivered_final_job_is_acked_without_another_call() {
    let harness = in_process::start(Faults::default()).await;
    let done = job("done", 1);
    assert_eq!(
        harness.deliver(&done, FIRST_ATTEMPT).await,
        Disposition::Ack
    );
    assert_eq!(
        harness.deliver(&done, FIRST_ATTEMPT).await,
        Disposition::Ack
    );
    assert_eq!(harness.row("done_1").await, row("succeeded", None));
    assert_eq!(harness.ledger_calls("done_1").await, 1);
    assert_eq!(harness.sandbox.stats().requests, 1);
}

#[tokio::test]
async fn a_transaction_id_reused_for_another_contact_is_dead_lettered_without_a_call() {
    let harness = in_process::start(Faults::default()).await;
    assert_eq!(
        harness.deliver(&job("reused", 1), FIRST_ATTEMPT).await,
        Disposition::Ack
    );
    let mut other_contact = job("reused", 1);
    other_contact["relation_phone"] = "13900000000".into();
    let disposition = harness.deliver(&other_contact, FIRST_ATTEMPT).await;
    assert!(
        matches!(disposition, Disposition::DeadLetter { .. }),
        "{disposition:?}"
    );
    assert_eq!(harness.row("reused_1").await, row("succeeded", None));
    assert_eq!(harness.sandbox.stats().requests, 1);
}

#[tokio::test]
async fn an_invalid_message_is_dead_lettered_without_a_call() {
    let harness = in_process::start(Faults::default()).await;
    let disposition = harness.deliver_raw(b"not json at all", FIRST_ATTEMPT).await;
    assert!(
        matches!(disposition, Disposition::DeadLetter { .. }),
        "{disposition:?}"
    );
    assert_eq!(harness.sandbox.stats().requests, 0);
    assert_eq!(harness.rows().await, 0);
}
