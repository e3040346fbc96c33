//! `show`: one job's row (masked), its calls from the ledger and the queue
//! its message waits in; `show --external-ref`; unknown and hostile ids.

use std::process::Stdio;
use std::time::Duration;

use zhima_worker::sandbox::SandboxReply;

use crate::support::{Db, TestWorker, exits_zero_within, job, sigterm, spawn_worker, until};

const LIMIT: Duration = Duration::from_secs(60);

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary against `worker`'s database and queues, with `extra`
/// environment on top.
pub async fn zhima(worker: &TestWorker, args: &[&str], extra: &[(&str, &str)]) -> Outcome {
    let output = worker
        .command(args)
        .envs(extra.iter().copied())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn json(outcome: &Outcome) -> serde_json::Value {
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    serde_json::from_str(&outcome.stdout).unwrap()
}

#[tokio::test]
async fn show_of_a_job_that_succeeded_after_retries_lists_each_call_from_the_ledger() {
    for db in [Db::Postgres, Db::Sqlite] {
        let worker = spawn_worker(db).await;
        worker.sandbox.respond_next(2, SandboxReply::SystemError);
        let message = job("shown", 1);
        worker.publish_job(&message).await;
        worker.run_until_idle(LIMIT).await;

        let shown = json(&zhima(&worker, &["show", "shown_1", "--json"], &[]).await);
        assert_eq!(shown["transaction_id"], "shown_1", "{db:?}");
        assert_eq!(shown["status"], "succeeded");
        assert_eq!(shown["attempts"], 3);
        assert_eq!(shown["external_ref"], "loan-1/contact-1");
        assert!(shown["biz_no"].as_str().is_some_and(|b| !b.is_empty()));
        assert!(shown["relation_rank"].is_string(), "{shown}");
        assert!(shown["completed_at"].is_string());
        let calls = shown["calls"].as_array().unwrap();
        let attempts: Vec<u64> = calls
            .iter()
            .map(|c| c["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(attempts, [1, 2, 3], "{shown}");
        let outcomes: Vec<&str> = calls
            .iter()
            .map(|c| c["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["retryable", "retryable", "succeeded"]);
        assert_eq!(calls[2]["code"], "10000");
        assert_eq!(calls[2]["http_status"], 200);
        assert_eq!(shown["location"]["state"], "final");

        let text = zhima(&worker, &["show", "shown_1"], &[]).await;
        assert_eq!(text.code, 0, "{}", text.stderr);
        assert!(text.stdout.contains("calls (3):"), "{}", text.stdout);
        assert!(
            text.stdout
                .lines()
                .any(|l| l.starts_with("status") && l.ends_with("succeeded")),
            "{}",
            text.stdout
        );
        let cert_no = message["cert_no"].as_str().unwrap();
        let phone = message["relation_phone"].as_str().unwrap();
        for output in [&text.stdout, &shown.to_string()] {
            assert!(!output.contains(cert_no), "full ID shown: {output}");
            assert!(!output.contains(phone), "full phone shown: {output}");
            assert!(!output.contains("张三"), "full name shown: {output}");
        }
        assert!(text.stdout.contains(&format!("{}********", &cert_no[..6])));
        worker.cleanup().await;
    }
}

#[tokio::test]
async fn show_by_external_ref_shows_every_job_carrying_it() {
    let worker = spawn_worker(Db::Sqlite).await;
    for n in [1, 2] {
        let mut message = job("shared_ref", n);
        message["external_ref"] = "loan-77/both".into();
        worker.publish_job(&message).await;
    }
    worker.publish_job(&job("other_ref", 3)).await;
    worker.run_until_idle(LIMIT).await;

    let shown = json(
        &zhima(
            &worker,
            &["show", "--external-ref", "loan-77/both", "--json"],
            &[],
        )
        .await,
    );
    let ids: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["transaction_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{shown}");
    assert!(ids.contains(&"shared_ref_1") && ids.contains(&"shared_ref_2"));

    let values: Vec<String> = (0..101)
        .map(|n| format!("('many_{n}', 'loan-many', 'pending')"))
        .collect();
    let inserted = worker
        .execute(&format!(
            "INSERT INTO relation_checks (transaction_id, external_ref, status) VALUES {}",
            values.join(", ")
        ))
        .await;
    assert_eq!(inserted, 101);
    let many = zhima(
        &worker,
        &["show", "--external-ref", "loan-many", "--json"],
        &[],
    )
    .await;
    assert_eq!(json(&many).as_array().unwrap().len(), 100);
    assert!(
        many.stderr
            .contains("more than 100 jobs carry this external_ref"),
        "{}",
        many.stderr
    );

    let missing = zhima(&worker, &["show", "--external-ref", "loan-404"], &[]).await;
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("no job with external_ref"),
        "{}",
        missing.stderr
    );
    worker.cleanup().await;
}

/// A delay long enough that the retry copy is still waiting when `show`
/// looks; the queue is this test's own (deleted at the end).
const LONG_DELAY_MS: &str = "60000";

#[tokio::test]
async fn show_of_a_job_waiting_for_its_retry_names_the_delay_queue_and_leaves_it_there() {
    let worker = spawn_worker(Db::Postgres).await;
    let delays = [
        ("ZHIMA__RETRY__INITIAL_DELAY_MS", LONG_DELAY_MS),
        ("ZHIMA__RETRY__MAX_DELAY_MS", LONG_DELAY_MS),
    ];
    let delay_queue = worker
        .topology
        .names
        .delay_queue(Duration::from_millis(LONG_DELAY_MS.parse().unwrap()));
    worker.sandbox.respond_next(1, SandboxReply::SystemError);
    worker.publish_job(&job("waiting", 1)).await;
    let mut run = worker.start_run(&delays);
    let (worker_ref, queue_ref) = (&worker, &delay_queue);
    until(
        LIMIT,
        "the retry copy waits in the delay queue",
        || async move {
            let statuses = worker_ref.statuses().await;
            statuses.get("waiting_1").map(String::as_str) == Some("retrying")
                && worker_ref.ready(queue_ref).await == 1
        },
    )
    .await;
    sigterm(&run);
    exits_zero_within(&mut run, LIMIT).await;

    let shown = json(&zhima(&worker, &["show", "waiting_1", "--json"], &delays).await);
    assert_eq!(shown["status"], "retrying");
    assert_eq!(shown["calls"].as_array().unwrap().len(), 1);
    assert_eq!(shown["location"]["state"], "queued", "{shown}");
    let queues = shown["location"]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{shown}");
    assert_eq!(queues[0]["queue"], delay_queue.as_str());
    assert_eq!(queues[0]["kind"], "delay");
    assert_eq!(queues[0]["attempt"], 2);

    let text = zhima(&worker, &["show", "waiting_1"], &delays).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout
            .contains(&format!("delay queue {delay_queue} (attempt 2)")),
        "{}",
        text.stdout
    );
    assert_eq!(worker.ready(&delay_queue).await, 1, "show moved nothing");
    assert_eq!(worker.ready(&worker.topology.names.queue).await, 0);
    delete_queue(&worker, &delay_queue).await;
    worker.cleanup().await;
}

async fn delete_queue(worker: &TestWorker, name: &str) {
    let settings = zhima_worker::config::load(None).unwrap();
    let connection = zhima_worker::queue::connect(&settings.amqp, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(name.into(), lapin::options::QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    let _ = worker;
}

#[tokio::test]
async fn show_of_an_unknown_id_exits_1_and_hostile_ids_exit_64_without_being_echoed() {
    let worker = spawn_worker(Db::Sqlite).await;
    let unknown = zhima(&worker, &["show", "never_seen_1"], &[]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stdout);
    assert!(unknown.stdout.is_empty());
    assert!(
        unknown
            .stderr
            .contains("no job with transaction_id never_seen_1"),
        "{}",
        unknown.stderr
    );

    let no_broker = [("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")];
    let unreadable = zhima(&worker, &["show", "never_seen_1"], &no_broker).await;
    assert_eq!(unreadable.code, 1);
    assert!(
        unreadable.stderr.contains("the queues could not be read"),
        "{}",
        unreadable.stderr
    );

    let long = "a".repeat(10_000);
    for (id, rule) in [
        ("", "must not be empty"),
        ("t\u{1b}]0;pwned\u{7}", "letters, digits and underscores"),
        (
            "x'; DROP TABLE relation_checks; --",
            "letters, digits and underscores",
        ),
        (long.as_str(), "at most 64 characters"),
    ] {
        let refused = zhima(&worker, &["show", id], &[]).await;
        assert_eq!(refused.code, 64, "{id:?}: {}", refused.stderr);
        assert!(
            refused.stderr.contains("TRANSACTION_ID"),
            "{}",
            refused.stderr
        );
        assert!(refused.stderr.contains(rule), "{}", refused.stderr);
        assert!(!refused.stderr.contains("pwned") && refused.stderr.len() < 300);
    }
    for reference in ["", "a\u{1}b", long.as_str()] {
        let refused = zhima(&worker, &["show", "--external-ref", reference], &[]).await;
        assert_eq!(refused.code, 64, "{}", refused.stderr);
        assert!(
            refused.stderr.contains("--external-ref"),
            "{}",
            refused.stderr
        );
    }
    let both = zhima(&worker, &["show", "t_1", "--external-ref", "r"], &[]).await;
    assert_eq!(both.code, 64, "{}", both.stderr);
    assert_eq!(
        worker.count("SELECT COUNT(*) FROM relation_checks").await,
        0,
        "nothing was written"
    );
    worker.cleanup().await;
}
