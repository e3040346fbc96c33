//! Answer reuse (`reuse.max_age_days`, issue 17) end to end: the real
//! `zhima-worker run` against the real RabbitMQ, PostgreSQL or SQLite, and
//! the sandbox's bill. With reuse on, questions already answered are not
//! billed again and their result events name the payer with the payer's
//! answer; with reuse off everything is billed; `"fresh": true`, failed
//! answers and answers older than the age are never reused; a hostile
//! `fresh` is refused; reconciliation of the day stays clean.

use std::process::Stdio;
use std::time::Duration;

use crate::results::{ResultsQueue, unsent};
use crate::support::{Db, TestWorker, job, spawn_worker, until};

const LIMIT: Duration = Duration::from_secs(180);
const PAID: u32 = 50;
const NEW: u32 = 20;

/// Runs the worker until the queues are empty and every event is out.
async fn drain(worker: &TestWorker) {
    worker.run_until_idle(LIMIT).await;
    until(LIMIT, "the outbox drained", || async {
        unsent(worker).await == 0
    })
    .await;
}

/// Runs the binary with `args`; (exit code, stdout).
async fn zhima(worker: &TestWorker, args: &[&str]) -> (i32, String) {
    let output = worker
        .command(args)
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let code = output.status.code().unwrap_or(-1);
    assert!(code != 64, "{args:?}: usage error: {stderr}");
    (code, stdout)
}

/// The done-when for reuse: 50 questions paid, then the same 50
/// under new transaction_ids plus 20 new ones. Reuse on: only the 20 are
/// billed, and every reused event names its payer and carries its answer.
/// Reuse off (the default): all 70 are billed.
#[tokio::test]
async fn with_reuse_on_only_new_questions_are_billed_and_reused_events_carry_the_payers_answer() {
    for reuse_days in ["30", "0"] {
        let day = today_utc8();
        let mut worker = spawn_worker(Db::Postgres).await;
        worker
            .env
            .insert("ZHIMA__REUSE__MAX_AGE_DAYS".into(), reuse_days.into());
        let events = ResultsQueue::bind(&mut worker).await;
        for n in 0..PAID {
            worker.publish_job(&job("paid", n)).await;
        }
        drain(&worker).await;
        assert_eq!(worker.sandbox.stats().billed, u64::from(PAID));
        let paid = events.take_results().await;
        assert_eq!(paid.len(), PAID as usize);

        for n in 0..PAID {
            worker.publish_job(&job("again", n)).await;
        }
        for n in PAID..PAID + NEW {
            worker.publish_job(&job("new", n)).await;
        }
        drain(&worker).await;
        let later = events.take_results().await;
        assert_eq!(later.len(), (PAID + NEW) as usize);
        let billed = worker.sandbox.stats().billed;
        let statuses = worker.statuses().await;
        assert!(statuses.values().all(|s| s == "succeeded"), "{statuses:?}");
        if reuse_days == "0" {
            assert_eq!(billed, u64::from(PAID * 2 + NEW), "reuse off: all billed");
            assert!(later.values().all(|e| e["reused_from"].is_null()));
            assert_eq!(reused_in_status(&worker).await, 0);
        } else {
            assert_eq!(billed, u64::from(PAID + NEW), "only the new ones billed");
            for n in 0..PAID {
                let (again, payer) = (format!("again_{n}"), format!("paid_{n}"));
                assert_eq!(worker.sandbox.calls_for(&again), 0, "{again} never sent");
                let event = &later[&again];
                assert_eq!(event["reused_from"], payer.as_str(), "{event}");
                assert_eq!(event["status"], "succeeded");
                assert_eq!(event["biz_no"], serde_json::Value::Null);
                assert_eq!(event["attempts"], 0);
                for field in ["relation_rank", "recency", "relation_score"] {
                    assert_eq!(event[field], paid[&payer][field], "{again}: {field}");
                }
                assert!(event["relation_rank"].is_string(), "{event}");
            }
            for n in PAID..PAID + NEW {
                let id = format!("new_{n}");
                assert_eq!(worker.sandbox.billed_for(&id), 1, "{id}");
                assert!(later[&id]["reused_from"].is_null());
            }
            assert_eq!(reused_in_status(&worker).await, i64::from(PAID));
            let (code, shown) = zhima(&worker, &["show", "again_7", "--json"]).await;
            assert_eq!(code, 0, "{shown}");
            let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(shown["reused_from"], "paid_7");
            assert_eq!(shown["calls"].as_array().map(Vec::len), Some(0));
            assert_reconciles_clean(&worker, day).await;
            let (code, spent) = zhima(&worker, &["spend", "--days", "1", "--json"]).await;
            assert_eq!(code, 0, "{spent}");
            let spent: serde_json::Value = serde_json::from_str(&spent).unwrap();
            // `spend` reports the statement day it runs in: judged only if
            // the jobs ran in it too (a run across 16:00 UTC would not).
            if today_utc8() == day {
                assert_eq!(spent[0]["billed"], PAID + NEW, "{spent}");
                assert_eq!(spent[0]["reused"], PAID, "{spent}");
            }
        }
        events.delete().await;
        worker.cleanup().await;
    }
}

fn today_utc8() -> chrono::NaiveDate {
    (chrono::Utc::now() + chrono::TimeDelta::hours(8)).date_naive()
}

async fn reused_in_status(worker: &TestWorker) -> i64 {
    let (code, text) = zhima(worker, &["status", "--json"]).await;
    assert_eq!(code, 0, "{text}");
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    status["reused"].as_i64().unwrap()
}

/// `reconcile` of today (UTC+8) against the sandbox's statement: the
/// reused rows, which have no biz_no and were never billed, are neither
/// missing from the statement nor extra. Skipped only if the day changed
/// during the test (the rows would then sit on two statements).
async fn assert_reconciles_clean(worker: &TestWorker, day: chrono::NaiveDate) {
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(&bill, worker.sandbox.bill_csv(day)).unwrap();
    let out = dir.path().join("report.json");
    let (bill_text, out_text, date) = (
        bill.display().to_string(),
        out.display().to_string(),
        day.to_string(),
    );
    let args = [
        "reconcile",
        "--bill",
        &bill_text,
        "--date",
        &date,
        "--out",
        &out_text,
        "--format",
        "json",
    ];
    let (code, stdout) = zhima(worker, &args).await;
    if today_utc8() != day {
        eprintln!("the UTC+8 day changed during the test: reconciliation not judged");
        return;
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(code, 0, "{stdout}\n{report}");
    for category in [
        "billed_not_stored",
        "stored_not_billed",
        "duplicate_biz_no",
        "transaction_id_mismatch",
    ] {
        assert_eq!(
            report[category],
            serde_json::json!([]),
            "{category}: {report}"
        );
    }
}

/// What is never reused, on both databases: a `"fresh": true` job, a
/// question whose only answer failed, and an answer older than the age;
/// a `fresh` that is not a boolean is refused as an invalid message; a
/// reused job delivered again is a duplicate.
#[tokio::test]
async fn fresh_jobs_failed_answers_and_old_answers_are_never_reused() {
    for db in [Db::Sqlite, Db::Postgres] {
        let mut worker = spawn_worker(db).await;
        worker
            .env
            .insert("ZHIMA__REUSE__MAX_AGE_DAYS".into(), "30".into());
        let events = ResultsQueue::bind(&mut worker).await;
        worker.publish_job(&job("paid", 0)).await;
        worker.publish_job(&job("paid", 1)).await;
        // The sandbox refuses this product code (40004 API_PRODUCT_NOT_MATCH):
        // a permanent failure, a failed row.
        let mut refused = job("paid", 2);
        refused["product_code"] = "w1010100001000009999".into();
        worker.publish_job(&refused).await;
        drain(&worker).await;
        let paid = events.take_results().await;
        assert_eq!(paid["paid_0"]["status"], "succeeded", "{db:?}");
        assert_eq!(paid["paid_2"]["status"], "failed", "{db:?}");
        // paid_1's answer is now 31 days old.
        let aged = worker
            .execute(
                "UPDATE relation_checks SET completed_at = '2020-01-01T00:00:00.000Z' \
                 WHERE transaction_id = 'paid_1'",
            )
            .await;
        assert_eq!(aged, 1);

        let mut fresh = job("fresh", 0);
        fresh["fresh"] = true.into();
        worker.publish_job(&fresh).await;
        worker.publish_job(&job("reused", 0)).await;
        worker.publish_job(&job("old", 1)).await;
        let mut failed_again = job("failed", 2);
        failed_again["product_code"] = "w1010100001000009999".into();
        worker.publish_job(&failed_again).await;
        for (n, hostile) in [
            serde_json::json!("true"),
            serde_json::json!(1),
            serde_json::Value::Null,
            serde_json::json!({"fresh": true}),
        ]
        .into_iter()
        .enumerate()
        {
            let mut message = job("hostile", 0);
            message["transaction_id"] = format!("hostile_{n}").into();
            message["fresh"] = hostile;
            worker.publish_job(&message).await;
        }
        drain(&worker).await;
        let later = events.take_results().await;

        assert_eq!(
            worker.sandbox.calls_for("fresh_0"),
            1,
            "{db:?}: fresh is sent"
        );
        assert!(later["fresh_0"]["reused_from"].is_null());
        // fresh_0 paid for the same question too, perhaps before reused_0
        // was looked up: then its newer answer is the one reused.
        let payer = later["reused_0"]["reused_from"]
            .as_str()
            .unwrap_or_default();
        assert!(["paid_0", "fresh_0"].contains(&payer), "{db:?}: {payer}");
        assert_eq!(worker.sandbox.calls_for("reused_0"), 0);
        assert_eq!(worker.sandbox.calls_for("old_1"), 1, "{db:?}: too old");
        assert!(later["old_1"]["reused_from"].is_null());
        assert_eq!(worker.sandbox.calls_for("failed_2"), 1, "{db:?}: failed");
        assert_eq!(later["failed_2"]["status"], "failed");
        for n in 0..4 {
            let id = format!("hostile_{n}");
            assert_eq!(worker.sandbox.calls_for(&id), 0, "{db:?}: {id}");
            let event = &later[&id];
            assert_eq!(event["status"], "failed", "{id}: {event}");
            assert_eq!(event["error_code"], "INVALID_PARAMETER");
            let message = event["error_message"].as_str().unwrap();
            assert!(message.contains("`fresh`"), "{message}");
        }
        assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 4);

        // The reused job delivered again: acknowledged, nothing new.
        let events_before = worker.count("SELECT count(*) FROM result_events").await;
        worker.publish_job(&job("reused", 0)).await;
        drain(&worker).await;
        assert_eq!(worker.sandbox.calls_for("reused_0"), 0);
        assert_eq!(
            worker.count("SELECT count(*) FROM result_events").await,
            events_before,
            "{db:?}: a duplicate writes no event"
        );
        // The same transaction_id for another contact is still refused.
        let mut conflict = job("other", 5);
        conflict["transaction_id"] = "reused_0".into();
        worker.publish_job(&conflict).await;
        drain(&worker).await;
        assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 5);
        let reused_rows = worker
            .count("SELECT count(*) FROM relation_checks WHERE reused_from IS NOT NULL")
            .await;
        assert_eq!(reused_rows, 1, "{db:?}");
        events.delete().await;
        worker.cleanup().await;
    }
}
