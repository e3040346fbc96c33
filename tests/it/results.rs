//! Results back to the pipeline, end to end against the real RabbitMQ and
//! PostgreSQL/SQLite: result events from the transactional outbox, batches
//! and `batch.completed`, a crash between commit and publish, and the
//! `results` command.
//!
//! Each test binds its own queue to its own results exchange
//! (`t_<id>.results`), so concurrent tests never see each other's events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use zhima_worker::sandbox::Faults;

use crate::support::{
    self, Db, TestWorker, count_values, job, spawn_worker, spawn_worker_with, until,
};

const LIMIT: Duration = Duration::from_secs(120);

/// A results exchange of the test's own, with one queue bound to `#`
/// (also used by `reuse`).
pub(crate) struct ResultsQueue {
    connection: lapin::Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

/// One event as received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) message_id: String,
    pub(crate) routing_key: String,
    pub(crate) body: serde_json::Value,
}

impl ResultsQueue {
    /// Points the worker at `t_<id>.results` and binds a queue to it.
    pub(crate) async fn bind(worker: &mut TestWorker) -> Self {
        let exchange = format!("t_{}.results", worker.id);
        let queue = format!("t_{}.results.all", worker.id);
        worker
            .env
            .insert("ZHIMA__RESULTS__EXCHANGE".into(), exchange.clone());
        worker
            .env
            .insert("ZHIMA__RESULTS__POLL_INTERVAL_MS".into(), "200".into());
        let settings = zhima_worker::config::load(None).unwrap();
        let connection = zhima_worker::queue::connect(&settings.amqp, "test results reader")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            connection,
            channel,
            exchange,
            queue,
        }
    }

    /// Every event waiting in the queue (taken off it).
    pub(crate) async fn take_all(&self) -> Vec<Received> {
        let mut received = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let delivery = message.delivery;
            let properties = &delivery.properties;
            assert_eq!(
                properties.content_type().as_ref().map(|t| t.as_str()),
                Some("application/json")
            );
            assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
            received.push(Received {
                message_id: properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
                routing_key: delivery.routing_key.as_str().to_owned(),
                body: serde_json::from_slice(&delivery.data).unwrap(),
            });
        }
        received
    }

    /// The job events waiting (taken off the queue), by transaction_id: the
    /// last one of each; batch events left out.
    pub(crate) async fn take_results(&self) -> BTreeMap<String, serde_json::Value> {
        let mut events = BTreeMap::new();
        for received in self.take_all().await {
            if received.body["event"] == "relation.result" {
                let id = received.body["transaction_id"].as_str().unwrap().to_owned();
                events.insert(id, received.body);
            }
        }
        events
    }

    pub(crate) async fn delete(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Runs `zhima-worker enqueue` on `records` (JSON Lines) for `batch_id`.
async fn enqueue(worker: &TestWorker, records: &[serde_json::Value], batch_id: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.jsonl");
    let text: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    let output = worker
        .command(&["enqueue", path.to_str().unwrap(), "--batch-id", batch_id])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "enqueue: {stdout}");
    assert!(stdout.contains(&format!("batch_id {batch_id}")), "{stdout}");
    stdout
}

/// Result events committed but not yet published.
pub(crate) async fn unsent(worker: &TestWorker) -> i64 {
    worker
        .count("SELECT count(*) FROM result_events WHERE sent_at IS NULL")
        .await
}

/// `(transaction_id, biz_no)` of the succeeded rows.
async fn stored_biz_nos(worker: &TestWorker) -> BTreeMap<String, String> {
    worker
        .query_rows(
            "SELECT transaction_id, biz_no FROM relation_checks \
             WHERE status = 'succeeded' AND biz_no IS NOT NULL",
        )
        .await
        .into_iter()
        .collect()
}

/// The first done-when: a batch with faults (SYSTEM_ERROR, 502 after
/// billing, broken signatures) on PostgreSQL with two replicas, one of them
/// SIGKILLed mid-run: exactly one distinct event per job (by message_id),
/// its biz_no the row's and the sandbox bill's, and exactly one
/// batch.completed with the right counts.
#[tokio::test]
async fn two_replicas_one_killed_every_job_gets_one_distinct_event_and_the_batch_completes_once() {
    let faults = Faults {
        system_error_rate: 0.15,
        http_5xx_after_billing_rate: 0.15,
        broken_sign_rate: 0.1,
        latency_ms: 20,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "40".into());
    worker
        .env
        .insert("ZHIMA__WORKER__CONCURRENCY".into(), "4".into());
    let results = ResultsQueue::bind(&mut worker).await;
    let jobs: u32 = 80;
    let batch_id = format!("b-{}", worker.id);
    let mut records: Vec<serde_json::Value> = (0..jobs).map(|n| job("res", n)).collect();
    // Two the worker refuses (a bad check digit): failed rows, failed events.
    for n in [3, 7] {
        records[n as usize]["cert_no"] = "640202199007164687".into();
    }
    // enqueue validates too: publish those two directly, with the batch id.
    let (bad, good): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r["cert_no"] == "640202199007164687");
    enqueue(&worker, &good, &batch_id).await;
    for mut record in bad {
        record["batch_id"] = batch_id.clone().into();
        worker.publish_job(&record).await;
    }
    // The batch's size counts what enqueue published: the two direct ones
    // are in the batch but not in its size; raise it to the whole batch.
    let changed = worker
        .execute(&format!(
            "UPDATE batches SET size = {jobs} WHERE batch_id = '{batch_id}'"
        ))
        .await;
    assert_eq!(changed, 1);

    let mut doomed = worker.start_run(&[]);
    let mut survivor = worker.start_run(&[]);
    until(LIMIT, "some jobs final before the kill", || async {
        worker
            .count("SELECT count(*) FROM relation_checks WHERE status IN ('succeeded', 'failed')")
            .await
            >= i64::from(jobs / 4)
    })
    .await;
    doomed.start_kill().expect("SIGKILL");
    doomed.wait().await.expect("reaped");
    let finals = worker
        .count("SELECT count(*) FROM relation_checks WHERE status IN ('succeeded', 'failed')")
        .await;
    assert!(finals < i64::from(jobs), "killed mid-run: {finals} final");
    // A replacement replica, as an orchestrator would start.
    let mut replacement = worker.start_run(&[]);
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| {
            s.len() == jobs as usize && s.values().all(|v| v == "succeeded" || v == "failed")
        })
        .await;
    until(LIMIT, "the outbox drained", || async {
        unsent(&worker).await == 0
    })
    .await;
    for child in [&mut survivor, &mut replacement] {
        support::sigterm(child);
        support::exits_zero_within(child, LIMIT).await;
    }

    let received = results.take_all().await;
    let job_events: Vec<&Received> = received
        .iter()
        .filter(|e| e.routing_key.starts_with("relation."))
        .collect();
    let distinct: BTreeSet<&str> = job_events.iter().map(|e| e.message_id.as_str()).collect();
    let expected: BTreeSet<&str> = statuses.keys().map(String::as_str).collect();
    assert_eq!(distinct, expected, "one distinct event per job");
    let stored = stored_biz_nos(&worker).await;
    let billed: BTreeMap<String, String> = worker
        .sandbox
        .bill_rows()
        .into_iter()
        .map(|row| (row.transaction_id, row.biz_no))
        .collect();
    for event in &job_events {
        let id = event.message_id.as_str();
        assert_eq!(event.body["transaction_id"], id);
        assert_eq!(event.body["batch_id"], batch_id.as_str());
        assert_eq!(event.body["status"], statuses[id].as_str(), "{id}");
        assert_eq!(
            event.routing_key,
            format!("relation.{}", statuses[id]),
            "{id}"
        );
        match statuses[id].as_str() {
            "succeeded" => {
                let biz_no = event.body["biz_no"].as_str().unwrap();
                assert_eq!(biz_no, stored[id], "{id}: event vs row");
                assert_eq!(biz_no, billed[id], "{id}: event vs bill");
                assert_eq!(worker.sandbox.billed_for(id), 1, "{id} billed once");
            }
            _ => assert!(event.body["error_code"].is_string(), "{id}"),
        }
    }
    let counts = count_values(&statuses);
    let completed: Vec<&Received> = received
        .iter()
        .filter(|e| e.routing_key == "batch.completed")
        .collect();
    let completed_ids: BTreeSet<&str> = completed.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(completed_ids, BTreeSet::from([batch_id.as_str()]));
    for event in &completed {
        assert_eq!(event.body["size"], jobs);
        assert_eq!(
            event.body["succeeded"],
            counts.get("succeeded").copied().unwrap_or(0)
        );
        assert_eq!(
            event.body["failed"],
            counts.get("failed").copied().unwrap_or(0)
        );
    }
    assert!(
        counts.get("failed").copied().unwrap_or(0) >= 2,
        "{counts:?}"
    );
    // Exactly once where it is decided: one outbox row for the batch.
    let outbox_rows = worker
        .count("SELECT count(*) FROM result_events WHERE routing_key = 'batch.completed'")
        .await;
    assert_eq!(outbox_rows, 1);
    results.delete().await;
    worker.cleanup().await;
}

/// A crash between the commit and the publish (the relay held by the test
/// fault hook, as if the process died right after its commits): the events
/// wait in the outbox, and the next start sends them.
#[tokio::test]
async fn events_committed_but_not_published_go_out_after_restart() {
    let mut worker = spawn_worker(Db::Sqlite).await;
    let results = ResultsQueue::bind(&mut worker).await;
    // More than one relay round's worth of small joins: the relay sends a
    // round's publishes all at once, and they must still leave in outbox order.
    let jobs = 40;
    for n in 0..jobs {
        worker.publish_job(&job("held", n)).await;
    }
    let mut held = worker
        .command(&["run", "--until-idle"])
        .env("ZHIMA_TEST_HOLD_RESULT_EVENTS", "1")
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(LIMIT, held.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        support::succeeded(&worker.statuses().await),
        jobs as usize,
        "the outcomes are committed"
    );
    assert_eq!(unsent(&worker).await, i64::from(jobs));
    assert!(results.take_all().await.is_empty(), "nothing published yet");
    let outbox_order: Vec<String> = worker
        .query_rows("SELECT message_id, routing_key FROM result_events ORDER BY id")
        .await
        .into_iter()
        .map(|(message_id, _)| message_id)
        .collect();

    worker.run_until_idle(LIMIT).await;
    assert_eq!(unsent(&worker).await, 0, "--until-idle exits once drained");
    let taken = std::cell::RefCell::new(Vec::new());
    until(LIMIT, "every held event", || async {
        let got = results.take_all().await;
        let mut taken = taken.borrow_mut();
        taken.extend(got);
        taken.len() >= jobs as usize
    })
    .await;
    let received = taken.into_inner();
    let ids: BTreeSet<String> = received.iter().map(|e| e.message_id.clone()).collect();
    let expected: BTreeSet<String> = (0..jobs).map(|n| format!("held_{n}")).collect();
    assert_eq!(ids, expected);
    let arrival_order: Vec<String> = received.iter().map(|e| e.message_id.clone()).collect();
    assert_eq!(arrival_order, outbox_order, "published in outbox order");
    assert!(
        received
            .iter()
            .all(|e| e.routing_key == "relation.succeeded")
    );
    results.delete().await;
    worker.cleanup().await;
}

/// `results --batch` and `--date` stream the event fields of the final
/// jobs; a bad batch id or both selectors are usage errors, and `--out`
/// never overwrites.
#[tokio::test]
async fn the_results_command_lists_a_batch_as_jsonl_and_csv() {
    let mut worker = spawn_worker(Db::Sqlite).await;
    worker
        .env
        .insert("ZHIMA__RESULTS__EXCHANGE".into(), String::new());
    let records: Vec<serde_json::Value> = (0..4).map(|n| job("cmd", n)).collect();
    enqueue(&worker, &records, "cmd-batch").await;
    worker.run_until_idle(LIMIT).await;

    let output = worker
        .command(&["results", "--batch", "cmd-batch"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let stored = stored_biz_nos(&worker).await;
    for line in &lines {
        let id = line["transaction_id"].as_str().unwrap();
        assert_eq!(line["event"], "relation.result");
        assert_eq!(line["batch_id"], "cmd-batch");
        assert_eq!(line["biz_no"].as_str(), Some(stored[id].as_str()));
        assert!(line["relation_rank"].is_string());
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    let out_arg = out.to_str().unwrap();
    let args = [
        "results",
        "--batch",
        "cmd-batch",
        "--format",
        "csv",
        "--out",
        out_arg,
    ];
    let written = worker.command(&args).output().await.unwrap();
    assert!(written.status.success());
    let csv = std::fs::read_to_string(&out).unwrap();
    assert!(csv.starts_with("transaction_id,external_ref,batch_id,status,biz_no,"));
    assert_eq!(csv.lines().count(), 5);
    let again = worker.command(&args).output().await.unwrap();
    assert_eq!(again.status.code(), Some(1), "--out is never overwritten");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), csv);

    for bad in [
        vec!["results"],
        vec!["results", "--batch", "x", "--date", "2026-12-01"],
        vec!["results", "--batch", "no spaces"],
        vec!["results", "--batch", &"a".repeat(65)],
        vec!["results", "--batch", "x", "--format", "xml"],
    ] {
        let output = worker.command(&bad).output().await.unwrap();
        assert_eq!(output.status.code(), Some(64), "{bad:?}");
    }
    let bad_date = worker
        .command(&["results", "--date", "2026-13-01"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad_date.status.code(), Some(1));
    let bad_enqueue = worker
        .command(&["enqueue", "-", "--batch-id", "../etc"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad_enqueue.status.code(), Some(64));
    // The same jobs enqueued again in a new batch: already final, they
    // join it without a call, and it completes.
    enqueue(&worker, &records, "cmd-again").await;
    worker.run_until_idle(LIMIT).await;
    let again = worker
        .command(&["results", "--batch", "cmd-again"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().lines().count(), 4);
    let completed = worker
        .count("SELECT count(*) FROM batches WHERE batch_id = 'cmd-again' AND completed_at IS NOT NULL")
        .await;
    assert_eq!(completed, 1);
    assert_eq!(worker.sandbox.stats().billed, 4, "no job called twice");
    let reused = worker
        .command(&["enqueue", "-", "--batch-id", "cmd-batch"])
        .output()
        .await
        .unwrap();
    assert_eq!(reused.status.code(), Some(1), "a batch id enqueued before");
    worker.cleanup().await;
}

/// The relay's metrics exist at zero from start-up, then count the events
/// it published; the backlog returns to zero.
#[tokio::test]
async fn the_relay_metrics_count_published_events_and_the_backlog() {
    use crate::support::http::{free_local_addr, scrape, scrape_when_up, value_of};
    let mut worker = spawn_worker(Db::Sqlite).await;
    let results = ResultsQueue::bind(&mut worker).await;
    let listen = free_local_addr();
    let metrics_url = format!("http://{listen}/metrics");
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let metrics = scrape_when_up(&metrics_url).await;
    for series in [
        "zhima_result_events_published_total",
        "zhima_result_events_backlog",
    ] {
        assert_eq!(value_of(&metrics, series), Some(0.0), "{series}\n{metrics}");
    }
    for n in 0..3 {
        worker.publish_job(&job("metered", n)).await;
    }
    let url = &metrics_url;
    until(LIMIT, "three events published", || async move {
        let metrics = scrape(url).await.unwrap_or_default();
        value_of(&metrics, "zhima_result_events_published_total") == Some(3.0)
            && value_of(&metrics, "zhima_result_events_backlog") == Some(0.0)
    })
    .await;
    support::sigterm(&child);
    support::exits_zero_within(&mut child, LIMIT).await;
    assert_eq!(results.take_all().await.len(), 3);
    results.delete().await;
    worker.cleanup().await;
}
