//! Personal data (issue 13): `erase` removes one person's rows, ledger
//! entries, outbox events and dead-queue messages, keeps the others and the
//! day's reconciliation clean; `purge` removes exactly what is past its
//! retention; hostile keys are refused without echoing them.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime, TimeDelta, Utc};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use zhima_worker::sandbox::{Faults, SandboxClock};

use crate::lookup::zhima;
use crate::support::{Db, TestWorker, cert_no, job, spawn_worker_with_clock};

const LIMIT: Duration = Duration::from_secs(60);

fn utc8() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap()
}

fn pinned_noon() -> DateTime<Utc> {
    let today = Utc::now().with_timezone(&utc8()).date_naive();
    today
        .and_time(NaiveTime::from_hms_opt(12, 0, 0).unwrap())
        .and_local_timezone(utc8())
        .unwrap()
        .to_utc()
}

/// The one person asked about: every job of theirs carries this ID number.
fn person_cert_no() -> String {
    cert_no("110101", "19850615", 777)
}

fn person_job(prefix: &str, n: u32) -> serde_json::Value {
    let mut message = job(prefix, n);
    message["cert_no"] = person_cert_no().into();
    message
}

/// Publishes `body` straight into `queue` (as the worker's dead-lettering
/// would), with the dead-lettered-at header when given.
async fn put_in_queue(queue: &str, body: &serde_json::Value, dead_at: Option<DateTime<Utc>>) {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    if let Some(at) = dead_at {
        headers.insert(
            ShortString::from("x-zhima-dead-lettered-at"),
            AMQPValue::LongString(LongString::from(at.to_rfc3339())),
        );
    }
    channel
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).unwrap(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

/// A delay queue of a 60 s tier, declared without its TTL so the planted
/// messages wait there for the test; `erase` sees it under the same retry
/// settings ([`LONG_TIER`]).
async fn declare_long_delay_queue(worker: &TestWorker) -> String {
    let name = worker
        .topology
        .names
        .delay_queue(Duration::from_millis(60_000));
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            ShortString::from(name.as_str()),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
    name
}

async fn delete_queue(name: &str) {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(ShortString::from(name), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
}

/// Retry settings whose one tier is the 60 s delay queue above.
const LONG_TIER: [(&str, &str); 2] = [
    ("ZHIMA__RETRY__INITIAL_DELAY_MS", "60000"),
    ("ZHIMA__RETRY__MAX_DELAY_MS", "60000"),
];

async fn dead_ids(worker: &TestWorker) -> Vec<String> {
    let listed = zhima(worker, &["dead", "list", "--json"], &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listing: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let mut ids: Vec<String> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap_or("-").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn erase_one_person_among_others(db: Db) {
    let pinned = pinned_noon();
    let worker = spawn_worker_with_clock(db, Faults::default(), SandboxClock::Fixed(pinned)).await;
    // The person: two succeeded jobs (one later failed by hand, as a billed
    // failed row), one dead-lettered; the others: three succeeded, one dead.
    for n in 0..2 {
        worker.publish_job(&person_job("pd", n)).await;
    }
    for n in 10..13 {
        worker.publish_job(&job("pd", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    worker
        .execute("UPDATE relation_checks SET status = 'failed' WHERE transaction_id = 'pd_1'")
        .await;
    let dead_queue = worker.topology.names.dead_queue.clone();
    put_in_queue(&dead_queue, &person_job("pd", 2), Some(Utc::now())).await;
    put_in_queue(&dead_queue, &job("pd", 13), Some(Utc::now())).await;
    // The person's invalid message (a relation the gateway does not know),
    // dead-lettered before any row was written for it.
    let mut invalid = person_job("pd", 4);
    invalid["relation"] = "cousin".into();
    put_in_queue(&dead_queue, &invalid, Some(Utc::now())).await;
    assert_eq!(dead_ids(&worker).await, ["pd_13", "pd_2", "pd_4"]);
    let delay_queue = declare_long_delay_queue(&worker).await;
    put_in_queue(&delay_queue, &person_job("pd", 3), None).await;
    put_in_queue(&delay_queue, &job("pd", 14), None).await;

    let cert = person_cert_no();
    let dry = zhima(
        &worker,
        &["erase", "--cert-no", &cert, "--dry-run"],
        &LONG_TIER,
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("would erase"), "{}", dry.stdout);
    assert_eq!(
        worker.statuses().await.len(),
        5,
        "a dry run changes nothing"
    );
    assert_eq!(dead_ids(&worker).await, ["pd_13", "pd_2", "pd_4"]);

    let lower = cert.to_ascii_lowercase();
    assert!(
        dry.stdout.contains("delay-queue messages    1"),
        "{}",
        dry.stdout
    );
    assert_eq!(worker.ready(&delay_queue).await, 2);
    let erased = zhima(&worker, &["erase", "--cert-no", &lower], &LONG_TIER).await;
    assert_eq!(erased.code, 0, "{}", erased.stderr);
    let out = &erased.stdout;
    for line in [
        "rows                    2",
        "ledger entries          2",
        "dead-queue messages     2",
        "delay-queue messages    1",
        "kept: 2 tombstones",
    ] {
        assert!(out.contains(line), "{line}:\n{out}");
    }
    assert!(!out.contains(&cert) && !erased.stderr.contains(&cert));
    assert!(!erased.stderr.contains(&lower), "{}", erased.stderr);

    let left: Vec<String> = worker.statuses().await.into_keys().collect();
    assert_eq!(left, ["pd_10", "pd_11", "pd_12"]);
    assert_eq!(
        worker
            .count("SELECT count(*) FROM upstream_calls WHERE transaction_id IN ('pd_0', 'pd_1')")
            .await,
        0
    );
    assert_eq!(
        worker
            .count("SELECT count(*) FROM result_events WHERE message_id IN ('pd_0', 'pd_1')")
            .await,
        0
    );
    assert_eq!(
        worker
            .count("SELECT count(*) FROM upstream_calls WHERE transaction_id LIKE 'pd_1_'")
            .await,
        3
    );
    assert_eq!(worker.count("SELECT count(*) FROM erased_checks").await, 2);
    assert_eq!(dead_ids(&worker).await, ["pd_13"]);
    assert_eq!(
        worker.ready(&delay_queue).await,
        1,
        "the other's message stays"
    );
    delete_queue(&delay_queue).await;

    let again = zhima(&worker, &["erase", "--cert-no", &cert], &[]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("rows                    0"),
        "{}",
        again.stdout
    );

    // The day's statement still bills the erased rows: erased, not missing.
    let day = pinned.with_timezone(&utc8()).date_naive();
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(&bill, worker.sandbox.bill_csv(day)).unwrap();
    let (bill_text, date) = (bill.display().to_string(), day.to_string());
    let report = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", &date],
        &[],
    )
    .await;
    assert_eq!(report.code, 0, "{}\n{}", report.stdout, report.stderr);
    assert!(
        report.stdout.trim_end().ends_with("clean"),
        "{}",
        report.stdout
    );
    let erased_line = report
        .stdout
        .lines()
        .find(|l| l.starts_with("erased on request (tombstone)"))
        .unwrap();
    assert_eq!(
        erased_line.split_whitespace().last(),
        Some("2"),
        "{}",
        report.stdout
    );
    worker.cleanup().await;
}

#[tokio::test]
async fn erase_by_cert_no_removes_one_person_everywhere_and_reconcile_stays_clean_on_sqlite() {
    erase_one_person_among_others(Db::Sqlite).await;
}

#[tokio::test]
async fn erase_by_cert_no_removes_one_person_everywhere_and_reconcile_stays_clean_on_postgres() {
    erase_one_person_among_others(Db::Postgres).await;
}

async fn purge_removes_exactly_the_expired(db: Db) {
    let worker = spawn_worker_with_clock(db, Faults::default(), SandboxClock::System).await;
    for n in 0..4 {
        worker.publish_job(&job("pg", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let stamp = |days: i64| {
        (Utc::now() - TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    // pg_0: 200 days old (row goes); pg_1: 40 days (body goes, row stays);
    // pg_2: 20 days, pg_3: today (both untouched).
    for (id, days) in [("pg_0", 200), ("pg_1", 40), ("pg_2", 20)] {
        worker
            .execute(&format!(
                "UPDATE relation_checks SET created_at = '{0}', updated_at = '{0}' \
                 WHERE transaction_id = '{id}'",
                stamp(days)
            ))
            .await;
        worker
            .execute(&format!(
                "UPDATE upstream_calls SET started_at = '{}' WHERE transaction_id = '{id}'",
                stamp(days)
            ))
            .await;
    }
    let dead_queue = worker.topology.names.dead_queue.clone();
    put_in_queue(
        &dead_queue,
        &job("pg", 10),
        Some(Utc::now() - TimeDelta::days(8)),
    )
    .await;
    put_in_queue(
        &dead_queue,
        &job("pg", 11),
        Some(Utc::now() - TimeDelta::days(6)),
    )
    .await;
    put_in_queue(&dead_queue, &job("pg", 12), None).await;

    let dry = zhima(&worker, &["purge", "--dry-run"], &[]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("rows                    1"),
        "{}",
        dry.stdout
    );
    assert_eq!(worker.statuses().await.len(), 4);
    assert_eq!(dead_ids(&worker).await.len(), 3);

    let purged = zhima(&worker, &["purge"], &[]).await;
    assert_eq!(purged.code, 0, "{}", purged.stderr);
    let out = &purged.stdout;
    for line in [
        "response bodies         2",
        "rows                    1",
        "ledger entries          1",
        "dead-queue messages     1",
        "kept: 1 dead-queue messages without",
    ] {
        assert!(out.contains(line), "{line}:\n{out}");
    }
    let left: Vec<String> = worker.statuses().await.into_keys().collect();
    assert_eq!(left, ["pg_1", "pg_2", "pg_3"]);
    let bodies = worker
        .query_rows(
            "SELECT transaction_id, CASE WHEN response_body IS NULL THEN 'none' ELSE 'kept' END \
             FROM relation_checks ORDER BY transaction_id",
        )
        .await;
    assert_eq!(
        bodies,
        [
            ("pg_1".to_owned(), "none".to_owned()),
            ("pg_2".to_owned(), "kept".to_owned()),
            ("pg_3".to_owned(), "kept".to_owned()),
        ]
    );
    assert_eq!(dead_ids(&worker).await, ["pg_11", "pg_12"]);
    worker.cleanup().await;
}

#[tokio::test]
async fn purge_removes_exactly_the_expired_rows_bodies_and_dead_messages_on_sqlite() {
    purge_removes_exactly_the_expired(Db::Sqlite).await;
}

#[tokio::test]
async fn purge_removes_exactly_the_expired_rows_bodies_and_dead_messages_on_postgres() {
    purge_removes_exactly_the_expired(Db::Postgres).await;
}

#[tokio::test]
async fn erase_by_phone_and_by_external_ref_remove_only_the_matching_jobs() {
    let worker = spawn_worker_with_clock(Db::Sqlite, Faults::default(), SandboxClock::System).await;
    for n in 0..4 {
        worker.publish_job(&job("ph", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let phone = job("ph", 1)["relation_phone"].as_str().unwrap().to_owned();
    let by_phone = zhima(&worker, &["erase", "--phone", &phone], &[]).await;
    assert_eq!(by_phone.code, 0, "{}", by_phone.stderr);
    assert!(
        by_phone.stdout.contains("rows                    1"),
        "{}",
        by_phone.stdout
    );
    assert!(!by_phone.stdout.contains(&phone) && !by_phone.stderr.contains(&phone));
    let reference = job("ph", 2)["external_ref"].as_str().unwrap().to_owned();
    let by_ref = zhima(&worker, &["erase", "--external-ref", &reference], &[]).await;
    assert_eq!(by_ref.code, 0, "{}", by_ref.stderr);
    assert!(
        by_ref.stdout.contains("rows                    1"),
        "{}",
        by_ref.stdout
    );
    let left: Vec<String> = worker.statuses().await.into_keys().collect();
    assert_eq!(left, ["ph_0", "ph_3"]);
    worker.cleanup().await;
}

#[tokio::test]
async fn the_worker_stamps_the_time_it_dead_letters_a_message() {
    let worker = spawn_worker_with_clock(Db::Sqlite, Faults::default(), SandboxClock::System).await;
    let before = Utc::now() - TimeDelta::seconds(1);
    worker.publish_raw(b"this is not json").await;
    worker.run_until_idle(LIMIT).await;
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            ShortString::from(worker.topology.names.dead_queue.as_str()),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("a dead message");
    let header = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-zhima-dead-lettered-at").cloned());
    message
        .delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let Some(AMQPValue::LongString(text)) = header else {
        panic!("no x-zhima-dead-lettered-at header: {header:?}");
    };
    let at = DateTime::parse_from_rfc3339(&String::from_utf8_lossy(text.as_bytes())).unwrap();
    assert!(at >= before && at <= Utc::now(), "{at}");
    connection.close(200, "done".into()).await.unwrap();
    worker.cleanup().await;
}

#[tokio::test]
async fn hostile_erase_keys_exit_64_naming_the_flag_and_a_bad_retention_names_its_key() {
    let worker = spawn_worker_with_clock(Db::Sqlite, Faults::default(), SandboxClock::System).await;
    let cases: [&[&str]; 6] = [
        &["erase", "--cert-no", "11010519800101018"],
        &["erase", "--cert-no", ""],
        &["erase", "--phone", "1380000\u{1b}0001"],
        &["erase", "--external-ref", ""],
        &["erase", "--external-ref", "a\nb"],
        &[
            "erase",
            "--cert-no",
            "110101198506157770",
            "--phone",
            "13800000001",
        ],
    ];
    for args in cases {
        let outcome = zhima(&worker, args, &[]).await;
        assert_ne!(outcome.code, 0, "{args:?}");
        assert!(outcome.stdout.is_empty(), "{args:?}: {}", outcome.stdout);
    }
    let bad = zhima(&worker, &["erase", "--cert-no", "11010519800101018"], &[]).await;
    assert_eq!(bad.code, 64, "{}", bad.stderr);
    assert!(bad.stderr.contains("--cert-no"), "{}", bad.stderr);
    for (key, value) in [
        ("ROW_DAYS", "0"),
        ("ROW_DAYS", "-1"),
        ("RESPONSE_BODY_DAYS", "abc"),
        ("DEAD_LETTER_DAYS", "1.5"),
        ("DEAD_LETTER_DAYS", "99999"),
    ] {
        let variable = format!("ZHIMA__RETENTION__{key}");
        let refused = zhima(&worker, &["purge"], &[(variable.as_str(), value)]).await;
        assert_eq!(refused.code, 1, "{variable}={value}: {}", refused.stderr);
        let named = format!("retention.{}", key.to_ascii_lowercase());
        assert!(refused.stderr.contains(&named), "{}", refused.stderr);
    }
    worker.cleanup().await;
}
