//! The dead-letter tools: `dead list` (grouped by reason), `dead show`,
//! `dead purge --invalid` and `requeue-dead --transaction-id / --reason /
//! --dry-run`. Personal data is shown masked only, and every message a
//! command does not remove stays in the dead queue exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use zhima_worker::sandbox::{self, Faults};

use crate::lookup::zhima;
use crate::support::{Db, TestWorker, job, spawn_worker_with};

const LIMIT: Duration = Duration::from_secs(60);

/// A worker whose upstream answers SYSTEM_ERROR to everything and which
/// gives up after 2 attempts, with `gave_up` jobs and two invalid messages
/// (a body that is not JSON, and a job whose ID has a wrong check digit) in
/// its dead queue once it has run.
async fn worker_with_dead_letters(db: Db, prefix: &str, gave_up: u32) -> TestWorker {
    let faults = Faults {
        system_error_rate: 1.0,
        system_error_style: sandbox::SystemErrorStyle::Business40004,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(db, faults).await;
    worker
        .env
        .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "2".into());
    for n in 0..gave_up {
        worker.publish_job(&job(prefix, n)).await;
    }
    worker.publish_raw(b"this is not json").await;
    worker.publish_job(&invalid_job(prefix)).await;
    worker.run_until_idle(LIMIT).await;
    assert_eq!(
        worker.ready(&worker.topology.names.dead_queue).await,
        gave_up + 2
    );
    worker
}

/// A job whose ID number's check digit is wrong: never sent, dead-lettered.
fn invalid_job(prefix: &str) -> serde_json::Value {
    let mut message = job(prefix, 99);
    let cert_no = message["cert_no"].as_str().unwrap().to_owned();
    let last = if cert_no.ends_with('0') { '1' } else { '0' };
    message["cert_no"] = format!("{}{last}", &cert_no[..17]).into();
    message["transaction_id"] = format!("{prefix}_bad").into();
    message
}

/// The personal values of the jobs `prefix` 0..n and of the invalid one.
fn personal_values(prefix: &str, n: u32) -> Vec<String> {
    let mut values = Vec::new();
    for message in (0..n).map(|i| job(prefix, i)).chain([invalid_job(prefix)]) {
        for field in ["cert_no", "relation_phone"] {
            values.push(message[field].as_str().unwrap().to_owned());
        }
    }
    values
}

fn dead_ids(listing: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["transaction_id"].as_str().unwrap_or("-").to_owned())
        .collect();
    ids.sort();
    ids
}

async fn listing(worker: &TestWorker) -> serde_json::Value {
    let listed = zhima(worker, &["dead", "list", "--json"], &[]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    serde_json::from_str(&listed.stdout).unwrap()
}

#[tokio::test]
async fn dead_list_show_and_purge_show_masked_data_and_remove_only_invalid_messages() {
    let worker = worker_with_dead_letters(Db::Sqlite, "dl", 3).await;
    let dead_queue = worker.topology.names.dead_queue.clone();
    let secrets = personal_values("dl", 3);

    let grouped = zhima(&worker, &["dead", "list", "--group-by", "reason"], &[]).await;
    assert_eq!(grouped.code, 0, "{}", grouped.stderr);
    assert!(
        grouped.stdout.contains("gave up: SYSTEM_ERROR"),
        "{}",
        grouped.stdout
    );
    assert!(
        grouped.stdout.contains("5 dead messages"),
        "{}",
        grouped.stdout
    );
    let plain = zhima(&worker, &["dead", "list"], &[]).await;
    let listed = listing(&worker).await;
    let by_reason: BTreeMap<String, u64> =
        serde_json::from_value(listed["by_reason"].clone()).unwrap();
    assert_eq!(by_reason["gave up: SYSTEM_ERROR"], 3, "{by_reason:?}");
    assert_eq!(by_reason.values().sum::<u64>(), 5, "{by_reason:?}");
    assert_eq!(listed["total"], 5);
    assert_eq!(
        dead_ids(&listed),
        ["-", "dl_0", "dl_1", "dl_2", "dl_bad"],
        "each message once"
    );
    let entry = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["transaction_id"] == "dl_1")
        .unwrap();
    assert_eq!(entry["relation_phone"], "138****0001");

    let shown = zhima(&worker, &["dead", "show", "dl_1"], &[]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.contains("gave up after 2 attempts"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("138****0001"), "{}", shown.stdout);
    for output in [
        &grouped.stdout,
        &plain.stdout,
        &listed.to_string(),
        &shown.stdout,
    ] {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{secret} shown:\n{output}"
            );
        }
        assert!(
            !output.contains("张三") && !output.contains("李四"),
            "{output}"
        );
    }
    let located = zhima(&worker, &["show", "dl_1", "--json"], &[]).await;
    assert_eq!(located.code, 0, "{}", located.stderr);
    let located: serde_json::Value = serde_json::from_str(&located.stdout).unwrap();
    assert_eq!(located["status"], "failed");
    let queues = located["location"]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{located}");
    assert_eq!(queues[0]["kind"], "dead");
    assert_eq!(queues[0]["queue"], dead_queue.as_str());
    assert!(
        queues[0]["reason"]
            .as_str()
            .unwrap()
            .contains("SYSTEM_ERROR")
    );
    let unknown = zhima(&worker, &["dead", "show", "nobody_1"], &[]).await;
    assert_eq!(unknown.code, 1);
    assert!(
        unknown
            .stderr
            .contains("no message of transaction_id nobody_1")
    );
    for hostile in ["", "a\u{1b}[2J", &"x".repeat(10_000)] {
        let refused = zhima(&worker, &["dead", "show", hostile], &[]).await;
        assert_eq!(refused.code, 64, "{}", refused.stderr);
        assert!(
            refused.stderr.contains("TRANSACTION_ID"),
            "{}",
            refused.stderr
        );
    }
    assert_eq!(worker.ready(&dead_queue).await, 5, "reading moved nothing");

    let dry = zhima(&worker, &["dead", "purge", "--invalid", "--dry-run"], &[]).await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("would remove 2 invalid"),
        "{}",
        dry.stdout
    );
    assert_eq!(worker.ready(&dead_queue).await, 5);
    let purged = zhima(&worker, &["dead", "purge", "--invalid"], &[]).await;
    assert_eq!(purged.code, 0, "{}", purged.stderr);
    assert!(
        purged.stdout.contains("removed 2 invalid"),
        "{}",
        purged.stdout
    );
    assert!(
        purged.stdout.contains("dl_bad"),
        "reported: {}",
        purged.stdout
    );
    for secret in &secrets {
        assert!(
            !purged.stdout.contains(secret.as_str()),
            "{}",
            purged.stdout
        );
    }
    assert_eq!(worker.ready(&dead_queue).await, 3);
    assert_eq!(dead_ids(&listing(&worker).await), ["dl_0", "dl_1", "dl_2"]);
    let without_flag = zhima(&worker, &["dead", "purge"], &[]).await;
    assert_eq!(without_flag.code, 64);
    assert_eq!(worker.ready(&dead_queue).await, 3);
    worker.cleanup().await;
}

#[tokio::test]
async fn requeue_dead_by_id_by_reason_and_as_a_dry_run_moves_exactly_what_was_chosen() {
    let worker = worker_with_dead_letters(Db::Postgres, "rq", 4).await;
    let (main, dead_queue) = (
        worker.topology.names.queue.clone(),
        worker.topology.names.dead_queue.clone(),
    );

    let dry = zhima(
        &worker,
        &["requeue-dead", "--reason", "system_error", "--dry-run"],
        &[],
    )
    .await;
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(dry.stdout.contains("would requeue 4"), "{}", dry.stdout);
    assert!(dry.stdout.contains("nothing moved"), "{}", dry.stdout);
    assert_eq!(worker.ready(&dead_queue).await, 6, "dry run moved nothing");
    assert_eq!(worker.ready(&main).await, 0);
    assert_eq!(
        worker
            .count("SELECT COUNT(*) FROM relation_checks WHERE status = 'retrying'")
            .await,
        0,
        "dry run reset no row"
    );

    let by_id = zhima(
        &worker,
        &[
            "requeue-dead",
            "--transaction-id",
            "rq_1",
            "--transaction-id",
            "rq_404",
        ],
        &[],
    )
    .await;
    assert_eq!(by_id.code, 0, "{}", by_id.stderr);
    assert!(by_id.stdout.contains("requeued 1,"), "{}", by_id.stdout);
    assert!(by_id.stderr.contains("rq_404"), "{}", by_id.stderr);
    assert_eq!(worker.ready(&main).await, 1);
    assert_eq!(worker.ready(&dead_queue).await, 5);
    let statuses = worker.statuses().await;
    assert_eq!(statuses["rq_1"], "retrying");
    assert_eq!(statuses["rq_2"], "failed");

    let no_match = zhima(&worker, &["requeue-dead", "--reason", "HTTP_502"], &[]).await;
    assert!(
        no_match.stdout.contains("requeued 0,"),
        "{}",
        no_match.stdout
    );
    assert_eq!(worker.ready(&dead_queue).await, 5);

    let by_reason = zhima(
        &worker,
        &["requeue-dead", "--reason", "SYSTEM_ERROR", "--limit", "2"],
        &[],
    )
    .await;
    assert!(
        by_reason.stdout.contains("requeued 2,"),
        "{}",
        by_reason.stdout
    );
    assert_eq!(worker.ready(&main).await, 3);
    assert_eq!(worker.ready(&dead_queue).await, 3);
    let left = dead_ids(&listing(&worker).await);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.contains(&"-".to_owned()) && left.contains(&"rq_bad".to_owned()));

    for (flags, named) in [
        (vec!["--transaction-id", ""], "--transaction-id"),
        (vec!["--transaction-id", "a b"], "--transaction-id"),
        (vec!["--reason", ""], "--reason"),
        (vec!["--reason", "a\u{7}"], "--reason"),
    ] {
        let mut args = vec!["requeue-dead"];
        args.extend(flags);
        let refused = zhima(&worker, &args, &[]).await;
        assert_eq!(refused.code, 64, "{args:?}: {}", refused.stderr);
        assert!(refused.stderr.contains(named), "{}", refused.stderr);
    }
    assert_eq!(
        worker.ready(&dead_queue).await,
        3,
        "refused flags moved nothing"
    );
    worker.cleanup().await;
}

/// Enough dead messages that a scan takes a while to read them all.
const MANY: u32 = 3000;

/// Publishes `count` valid jobs `{prefix}_{n}` straight into the dead queue
/// (as the worker dead-letters them: `message_id` = transaction_id), with
/// confirms.
async fn fill_dead_queue(worker: &TestWorker, prefix: &str, count: u32) -> lapin::Connection {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let settings = zhima_worker::config::load(None).unwrap();
    let connection = zhima_worker::queue::connect(&settings.amqp, "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let dead_queue = worker.topology.names.dead_queue.as_str();
    let mut confirms = Vec::new();
    for n in 0..count {
        let body = serde_json::to_vec(&job(prefix, n)).unwrap();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(format!("{prefix}_{n}").into());
        let confirm = channel
            .basic_publish(
                "".into(),
                dead_queue.into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await
            .unwrap();
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    connection
}

/// Every message id in `queue`, taken for good (the test's own queue).
async fn drain_ids(connection: &lapin::Connection, queue: &str) -> Vec<String> {
    use lapin::options::BasicGetOptions;
    let channel = connection.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let id = message.delivery.properties.message_id().clone().unwrap();
        ids.push(id.to_string());
    }
    ids
}

/// Waits (polling every 5 ms, so that a scan of [`MANY`] messages is caught
/// half-way) until `condition` holds for the ready counts of (main, dead).
async fn wait_for_depths(worker: &TestWorker, what: &str, condition: impl Fn(u32, u32) -> bool) {
    let names = &worker.topology.names;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (main, dead) = (
            worker.ready(&names.queue).await,
            worker.ready(&names.dead_queue).await,
        );
        if condition(main, dead) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: main {main}, dead {dead}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_scan_or_a_requeue_killed_half_way_loses_no_dead_message_and_doubles_none() {
    let worker = crate::support::spawn_worker(Db::Sqlite).await;
    let connection = fill_dead_queue(&worker, "kill", MANY).await;
    let (main, dead_queue) = (
        worker.topology.names.queue.clone(),
        worker.topology.names.dead_queue.clone(),
    );
    wait_for_depths(&worker, "the dead queue is full", |_, dead| dead == MANY).await;

    let no_row = zhima(&worker, &["show", "kill_7", "--json"], &[]).await;
    assert_eq!(no_row.code, 0, "{}", no_row.stderr);
    let no_row: serde_json::Value = serde_json::from_str(&no_row.stdout).unwrap();
    assert_eq!(no_row["status"], serde_json::Value::Null, "no row yet");
    assert_eq!(no_row["location"]["queues"][0]["kind"], "dead", "{no_row}");
    assert_eq!(worker.ready(&dead_queue).await, MANY, "show moved nothing");

    let mut listing = worker.command(&["dead", "list"]).spawn().unwrap();
    wait_for_depths(&worker, "the scan holds messages", |_, dead| dead < MANY).await;
    listing.start_kill().unwrap();
    let killed = listing.wait().await.unwrap();
    assert!(!killed.success(), "killed before it finished: {killed}");
    wait_for_depths(&worker, "every message is back", |_, dead| dead == MANY).await;

    let mut requeue = worker.command(&["requeue-dead"]).spawn().unwrap();
    wait_for_depths(&worker, "some jobs moved", |main, _| main > 0).await;
    requeue.start_kill().unwrap();
    let killed = requeue.wait().await.unwrap();
    assert!(!killed.success(), "killed before it finished: {killed}");
    wait_for_depths(&worker, "every message is in a queue", |main, dead| {
        main + dead >= MANY
    })
    .await;

    let mut dead_ids = drain_ids(&connection, &dead_queue).await;
    let main_ids = drain_ids(&connection, &main).await;
    assert!(
        !main_ids.is_empty() && !dead_ids.is_empty(),
        "killed half-way"
    );
    let dead_count = dead_ids.len();
    dead_ids.sort();
    dead_ids.dedup();
    assert_eq!(dead_ids.len(), dead_count, "no dead message doubled");
    let mut all: Vec<String> = dead_ids.iter().chain(&main_ids).cloned().collect();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), MANY as usize, "every job is in a queue");
    assert!(
        total <= MANY as usize + 1,
        "at most the one job being moved at the kill is in both queues: {total}"
    );
    let _ = connection.close(200, "done".into()).await;
    worker.cleanup().await;
}
