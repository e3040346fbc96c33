//! End-to-end tests of `zhima-worker run` against the real RabbitMQ, the real
//! PostgreSQL (and SQLite), and the sandbox gateway.

mod promises_faults;
mod promises_ops;

use std::time::Duration;

use crate::support::http::{free_local_addr, get_text, sample};
use crate::support::proxy::{database_through_switch, postgres_addr};
use crate::support::{Db, count_values, job, spawn_worker, spawn_worker_with, succeeded, until};
use zhima_worker::sandbox::{Faults, SystemErrorStyle};

const LIMIT: Duration = Duration::from_secs(60);

/// Declares each scenario as two tests, `on_postgres::NAME` and
/// `on_sqlite::NAME`: the production store and the single-replica one.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod on_postgres {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Db::Postgres).await;
            })*
        }
        mod on_sqlite {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Db::Sqlite).await;
            })*
        }
    };
}

on_both_databases!(
    every_job_succeeds_and_is_billed_once,
    system_errors_and_502_after_billing_end_succeeded_with_the_same_transaction_id,
    worker_killed_mid_batch_loses_and_double_bills_nothing,
    sigterm_drains_in_flight_jobs_and_exits_zero,
    exhausted_attempts_end_failed_in_the_dead_queue_and_requeue_dead_brings_them_back,
    permanent_error_fails_after_one_call,
    invalid_messages_are_dead_lettered_without_an_upstream_call,
    rate_limit_holds_the_highest_one_second_count,
    configuration_fault_pauses_without_failing_queued_jobs,
    many_unverifiable_answers_pause_then_the_probe_resumes_and_nothing_unverified_is_stored,
    a_transaction_id_reused_for_another_contact_is_dead_lettered_without_a_call,
);

async fn every_job_succeeds_and_is_billed_once(db: Db) {
    let worker = spawn_worker(db).await;
    for n in 0..40 {
        worker.publish_job(&job("ok", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 40, "{:?}", count_values(&statuses));
    for n in 0..40 {
        assert_eq!(worker.sandbox.billed_for(&format!("ok_{n}")), 1);
    }
    let with_biz_no = worker
        .count("SELECT COUNT(DISTINCT biz_no) FROM relation_checks WHERE biz_no IS NOT NULL")
        .await;
    assert_eq!(with_biz_no, 40);
    let masked = worker
        .count("SELECT COUNT(*) FROM relation_checks WHERE cert_no_masked LIKE '110101********%'")
        .await;
    assert_eq!(masked, 40, "cert_no is stored masked only");
    assert_eq!(
        worker.count("SELECT COUNT(*) FROM upstream_calls").await,
        40
    );
    worker.cleanup().await;
}

async fn system_errors_and_502_after_billing_end_succeeded_with_the_same_transaction_id(db: Db) {
    let faults = Faults {
        system_error_rate: 0.3,
        http_5xx_after_billing_rate: 0.2,
        ..Faults::default()
    };
    let worker = spawn_worker_with(db, faults).await;
    for n in 0..30 {
        worker.publish_job(&job("flaky", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 30, "{:?}", count_values(&statuses));
    let stats = worker.sandbox.stats();
    assert!(
        stats.requests > 30,
        "faults forced retries: {}",
        stats.requests
    );
    for n in 0..30 {
        assert_eq!(
            worker.sandbox.billed_for(&format!("flaky_{n}")),
            1,
            "flaky_{n}"
        );
    }
    let ledger = worker.count("SELECT COUNT(*) FROM upstream_calls").await;
    assert_eq!(ledger, i64::try_from(stats.requests).unwrap());
    let retried = worker
        .count("SELECT COUNT(*) FROM relation_checks WHERE attempts > 1")
        .await;
    assert!(retried > 0);
    worker.cleanup().await;
}

async fn exhausted_attempts_end_failed_in_the_dead_queue_and_requeue_dead_brings_them_back(db: Db) {
    let faults = Faults {
        system_error_rate: 1.0,
        system_error_style: SystemErrorStyle::Business40004,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(db, faults).await;
    worker
        .env
        .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "3".into());
    for n in 0..3 {
        worker.publish_job(&job("doomed", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(count_values(&statuses).get("failed"), Some(&3));
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 3);
    assert_eq!(worker.sandbox.calls_for("doomed_0"), 3);
    let codes = worker
        .query_rows("SELECT transaction_id, error_code FROM relation_checks")
        .await;
    assert!(
        codes.iter().all(|(_, code)| code == "SYSTEM_ERROR"),
        "{codes:?}"
    );

    // the upstream recovers; requeue-dead brings the jobs back and they finish
    worker.sandbox.set_faults(Faults::default());
    let requeued = worker.command(&["requeue-dead"]).output().await.unwrap();
    assert!(requeued.status.success(), "{requeued:?}");
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 0);
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 3, "{:?}", count_values(&statuses));
    for n in 0..3 {
        assert_eq!(worker.sandbox.billed_for(&format!("doomed_{n}")), 1);
    }
    worker.cleanup().await;
}

async fn permanent_error_fails_after_one_call(db: Db) {
    let worker = spawn_worker(db).await;
    let mut wrong_product = job("perm", 1);
    wrong_product["product_code"] = "w0000000000000000000".into();
    worker.publish_job(&wrong_product).await;
    worker.run_until_idle(LIMIT).await;
    let rows = worker
        .query_rows("SELECT status, error_code FROM relation_checks")
        .await;
    assert_eq!(
        rows,
        vec![("failed".into(), "API_PRODUCT_NOT_MATCH".into())]
    );
    assert_eq!(worker.sandbox.calls_for("perm_1"), 1);
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 0);
    worker.cleanup().await;
}

async fn invalid_messages_are_dead_lettered_without_an_upstream_call(db: Db) {
    let worker = spawn_worker(db).await;
    worker.publish_raw(b"not json at all").await;
    worker.publish_raw(&vec![b' '; 70 * 1024]).await;
    worker.publish_raw(b"[1,2,3]").await;
    let mut bad_check_digit = job("bad", 1);
    bad_check_digit["cert_no"] = "640202199007164687".into();
    worker.publish_job(&bad_check_digit).await;
    worker.publish_job(&job("good", 1)).await;
    worker.run_until_idle(LIMIT).await;
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 4);
    assert_eq!(
        worker.sandbox.stats().requests,
        1,
        "only the valid job was sent"
    );
    let statuses = worker.statuses().await;
    assert_eq!(statuses.get("bad_1").map(String::as_str), Some("failed"));
    assert_eq!(
        statuses.get("good_1").map(String::as_str),
        Some("succeeded")
    );
    worker.cleanup().await;
}

async fn rate_limit_holds_the_highest_one_second_count(db: Db) {
    let mut worker = spawn_worker(db).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "20".into());
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__BURST".into(), "2".into());
    for n in 0..60 {
        worker.publish_job(&job("paced", n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    let stats = worker.sandbox.stats();
    assert_eq!(stats.billed, 60);
    assert!(
        stats.max_requests_per_second <= 22,
        "highest one-second count {} > qps + burst",
        stats.max_requests_per_second
    );
    worker.cleanup().await;
}

async fn worker_killed_mid_batch_loses_and_double_bills_nothing(db: Db) {
    let faults = Faults {
        latency_ms: 30,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(db, faults).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "100".into());
    for n in 0..150 {
        worker.publish_job(&job("kill", n)).await;
    }
    let mut child = worker.start_run(&[]);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= 30)
        .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    let after_kill = succeeded(&worker.statuses().await);
    assert!(
        after_kill < 150,
        "the kill landed mid-batch ({after_kill} done)"
    );
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 150, "{:?}", count_values(&statuses));
    for n in 0..150 {
        assert_eq!(
            worker.sandbox.billed_for(&format!("kill_{n}")),
            1,
            "kill_{n}"
        );
    }
    worker.cleanup().await;
}

async fn sigterm_drains_in_flight_jobs_and_exits_zero(db: Db) {
    let faults = Faults {
        latency_ms: 200,
        ..Faults::default()
    };
    let worker = spawn_worker_with(db, faults).await;
    for n in 0..100 {
        worker.publish_job(&job("term", n)).await;
    }
    let mut child = worker.start_run(&[]);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= 10)
        .await;
    let pid = child.id().expect("pid");
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the grace")
        .expect("wait");
    assert!(status.success(), "exit status {status}");
    // No job left half-done: every job the upstream saw has its outcome; a
    // row still `pending` belongs to a job handed back before its call.
    let statuses = worker.statuses().await;
    for (transaction_id, status) in &statuses {
        if status == "pending" {
            assert_eq!(
                worker.sandbox.calls_for(transaction_id),
                0,
                "{transaction_id} was called but left pending"
            );
        }
    }
    let finished = statuses.values().filter(|s| *s == "succeeded").count();
    assert_eq!(
        finished as u64,
        worker.sandbox.stats().billed,
        "every billed job stored before exit"
    );
    worker.run_until_idle(LIMIT).await;
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 100);
    for n in 0..100 {
        assert_eq!(worker.sandbox.billed_for(&format!("term_{n}")), 1);
    }
    worker.cleanup().await;
}

async fn configuration_fault_pauses_without_failing_queued_jobs(db: Db) {
    let mut config = zhima_worker::sandbox::SandboxConfig::with_test_keys().unwrap();
    for app in &mut config.apps {
        app.has_contract = false;
    }
    let sandbox = zhima_worker::sandbox::start(config).await.unwrap();
    let worker = crate::support::worker::build(db, sandbox).await;
    for n in 0..20 {
        worker.publish_job(&job("paused", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let main_queue = worker.topology.names.queue.clone();
    let deadline = tokio::time::Instant::now() + LIMIT;
    // every prefetched job is handed back once the worker pauses
    while worker.sandbox.stats().requests == 0 || worker.ready(&main_queue).await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs were not handed back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls_when_paused = worker.sandbox.stats().requests;
    // the paused worker probes instead of consuming
    while worker.sandbox.stats().requests == calls_when_paused {
        assert!(tokio::time::Instant::now() < deadline, "no probe seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(worker.ready(&main_queue).await, 20, "still paused");
    let statuses = worker.statuses().await;
    assert!(
        statuses.values().all(|s| s != "failed" && s != "succeeded"),
        "no job burnt: {:?}",
        count_values(&statuses)
    );
    assert!(worker.sandbox.stats().billed == 0);
    let (ready, reason) = get_text(&format!("http://{listen}/readyz")).await;
    assert_eq!(ready, 503, "{reason}");
    assert!(reason.contains("NO_VALID_ARRANGEMENT"), "{reason}");
    let (_, metrics) = get_text(&format!("http://{listen}/metrics")).await;
    assert_eq!(sample(&metrics, "zhima_consumption_paused"), 1.0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

#[tokio::test]
async fn metrics_count_the_jobs_processed_and_readyz_reports_ready() {
    let faults = Faults {
        system_error_rate: 0.25,
        ..Faults::default()
    };
    let worker = spawn_worker_with(Db::Postgres, faults).await;
    for n in 0..25 {
        worker.publish_job(&job("metered", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let (status, _) = get_text(&format!("http://{listen}/healthz")).await;
    assert_eq!(status, 200);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 25)
        .await;
    let (ready, _) = get_text(&format!("http://{listen}/readyz")).await;
    assert_eq!(ready, 200);
    let (_, metrics) = get_text(&format!("http://{listen}/metrics")).await;
    let stats = worker.sandbox.stats();
    assert_eq!(
        sample(&metrics, r#"zhima_jobs_total{outcome="succeeded"}"#),
        25.0
    );
    let retried = sample(&metrics, r#"zhima_jobs_total{outcome="retried"}"#);
    assert_eq!(
        retried as u64,
        stats.requests - 25,
        "every extra call was a retry"
    );
    assert_eq!(sample(&metrics, "zhima_retries_scheduled_total"), retried);
    assert_eq!(
        sample(&metrics, "zhima_upstream_latency_seconds_count") as u64,
        stats.requests,
        "one latency sample per call"
    );
    assert_eq!(sample(&metrics, "zhima_consumption_paused"), 0.0);
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

/// Closes the broker connection that a process opened, as a broker restart or
/// a network cut would.
fn close_broker_connection_of(pid: u32) -> bool {
    let listing = std::process::Command::new("rabbitmqctl")
        .args(["list_connections", "-q", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&listing.stdout);
    let marker = format!("zhima-worker run pid {pid}");
    let Some(line) = text.lines().find(|line| line.contains(&marker)) else {
        return false;
    };
    let connection = line.split_whitespace().next().expect("pid column");
    std::process::Command::new("rabbitmqctl")
        .args(["close_connection", connection, "test closes the connection"])
        .status()
        .expect("rabbitmqctl")
        .success()
}

#[tokio::test]
async fn worker_reconnects_after_the_broker_drops_its_connection() {
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "40".into());
    for n in 0..80 {
        worker.publish_job(&job("reconnect", n)).await;
    }
    let mut child = worker.start_run(&[]);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= 10)
        .await;
    let pid = child.id().expect("pid");
    assert!(
        close_broker_connection_of(pid),
        "the worker's connection was found and closed"
    );
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 80)
        .await;
    assert_eq!(succeeded(&statuses), 80);
    for n in 0..80 {
        assert_eq!(worker.sandbox.billed_for(&format!("reconnect_{n}")), 1);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

async fn a_transaction_id_reused_for_another_contact_is_dead_lettered_without_a_call(db: Db) {
    let worker = spawn_worker(db).await;
    let first = job("reused", 1);
    worker.publish_job(&first).await;
    worker.run_until_idle(LIMIT).await;
    let before = worker
        .query_rows("SELECT name_masked, relation_phone_masked FROM relation_checks")
        .await;

    let mut other_contact = first.clone();
    other_contact["name"] = "王五".into();
    other_contact["relation_phone"] = "13900000000".into();
    worker.publish_job(&other_contact).await;
    worker.publish_job(&first).await;
    worker.run_until_idle(LIMIT).await;

    assert_eq!(worker.sandbox.calls_for("reused_1"), 1);
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 1);
    let after = worker
        .query_rows("SELECT name_masked, relation_phone_masked FROM relation_checks")
        .await;
    assert_eq!(before, after, "the stored job is left as it was");
    assert_eq!(after, vec![("张*".into(), "138****0001".into())]);
    let statuses = worker.statuses().await;
    assert_eq!(
        statuses.get("reused_1").map(String::as_str),
        Some("succeeded")
    );
    let fingerprints = worker
        .query_rows(
            "SELECT transaction_id, business_fingerprint FROM relation_checks \
             WHERE business_fingerprint IS NOT NULL",
        )
        .await;
    assert_eq!(fingerprints.len(), 1);
    assert_eq!(
        fingerprints[0].1.len(),
        64,
        "a hex HMAC-SHA256, not plaintext"
    );
    worker.cleanup().await;
}

/// The key must be shared by every replica, so `run` never makes one: a
/// missing file stops it at start-up with advice; other commands need no key.
#[tokio::test]
async fn run_without_the_pii_key_fails_at_start_up_and_other_commands_do_not_need_it() {
    let worker = spawn_worker(Db::Postgres).await;
    let missing = [("ZHIMA__PII__HMAC_KEY_PATH", "/nonexistent/pii_hmac.key")];
    let output = worker
        .command(&["run", "--until-idle"])
        .envs(missing)
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for part in [
        "pii.hmac_key_path",
        "/nonexistent/pii_hmac.key",
        "head -c 32 /dev/urandom",
    ] {
        assert!(stderr.contains(part), "{part} missing from: {stderr}");
    }
    let status = worker
        .command(&["status"])
        .envs(missing)
        .output()
        .await
        .unwrap();
    assert!(status.status.success(), "status must not need the PII key");
    worker.cleanup().await;
}

/// PostgreSQL refuses U+0000 in text (SQLSTATE 22021); the job must end in
/// the dead queue at once, not loop through the broker as "database down".
#[tokio::test]
async fn a_nul_in_a_name_is_dead_lettered_promptly_and_run_until_idle_ends() {
    let worker = spawn_worker(Db::Postgres).await;
    let mut nul_name = job("nul", 1);
    nul_name["name"] = "\u{0}张三".into();
    worker.publish_job(&nul_name).await;
    worker.publish_job(&job("after_nul", 1)).await;
    worker.run_until_idle(LIMIT).await;
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 1);
    assert_eq!(worker.sandbox.calls_for("nul_1"), 0);
    let statuses = worker.statuses().await;
    assert_eq!(statuses.get("nul_1").map(String::as_str), Some("failed"));
    assert_eq!(
        statuses.get("after_nul_1").map(String::as_str),
        Some("succeeded")
    );
    worker.cleanup().await;
}

#[tokio::test]
async fn job_log_lines_carry_transaction_id_and_attempt_and_no_pii() {
    let faults = Faults {
        system_error_rate: 0.3,
        ..Faults::default()
    };
    let worker = spawn_worker_with(Db::Postgres, faults).await;
    let jobs: Vec<_> = (0..10).map(|n| job("logged", n)).collect();
    for job in &jobs {
        worker.publish_job(job).await;
    }
    let mut invalid = job("logged", 99);
    invalid["relation"] = "colleague".into();
    worker.publish_job(&invalid).await;
    let output = worker
        .command(&["run", "--until-idle"])
        .env("ZHIMA__LOG__FILTER", "debug")
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let logs = String::from_utf8(output.stderr).unwrap();
    for job in jobs.iter().chain([&invalid]) {
        for field in ["cert_no", "relation_phone", "name", "relation_name"] {
            let value = job[field].as_str().unwrap();
            assert!(!logs.contains(value), "{field} leaked into the logs");
        }
    }
    let processed: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["fields"]["message"] == "job processed")
        .collect();
    assert!(
        processed.len() > 10,
        "retries logged too: {}",
        processed.len()
    );
    for line in &processed {
        let spans = line["spans"].as_array().unwrap();
        let span = spans
            .iter()
            .find(|span| span["name"] == "process_job")
            .unwrap_or_else(|| panic!("no process_job span in {line}"));
        assert!(
            span["transaction_id"]
                .as_str()
                .unwrap()
                .starts_with("logged_"),
            "{line}"
        );
        assert!(span["attempt"].as_u64().unwrap() >= 1, "{line}");
    }
    worker.cleanup().await;
}

#[tokio::test]
async fn database_outage_pauses_jobs_without_losing_or_failing_them() {
    let faults = Faults {
        latency_ms: 20,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    let switch = database_through_switch(&mut worker).await;
    worker
        .env
        .insert("ZHIMA__RATE_LIMIT__QPS".into(), "40".into());
    for n in 0..80 {
        worker.publish_job(&job("outage", n)).await;
    }
    let mut child = worker.start_run(&[]);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= 10)
        .await;
    switch.send_replace(None);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker survives the outage"
    );
    switch.send_replace(Some(postgres_addr()));
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 80)
        .await;
    assert_eq!(count_values(&statuses).get("failed"), None);
    for n in 0..80 {
        assert_eq!(
            worker.sandbox.billed_for(&format!("outage_{n}")),
            1,
            "outage_{n}"
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}

async fn many_unverifiable_answers_pause_then_the_probe_resumes_and_nothing_unverified_is_stored(
    db: Db,
) {
    let faults = Faults {
        broken_sign_rate: 1.0,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(db, faults).await;
    worker
        .env
        .insert("ZHIMA__WORKER__MAX_UNVERIFIED_IN_ROW".into(), "3".into());
    worker
        .env
        .insert("ZHIMA__WORKER__CONCURRENCY".into(), "2".into());
    for n in 0..20 {
        worker.publish_job(&job("unsigned", n)).await;
    }
    let listen = free_local_addr();
    let mut child = worker.start_run(&[("ZHIMA__HTTP__LISTEN", &listen)]);
    let readyz = format!("http://{listen}/readyz");
    let (readyz, sandbox) = (readyz.as_str(), &worker.sandbox);
    until(
        LIMIT,
        "paused after the unverifiable answers",
        || async move {
            let (status, _) = get_text(readyz).await;
            status == 503 && sandbox.stats().requests >= 3
        },
    )
    .await;
    assert_eq!(
        succeeded(&worker.statuses().await),
        0,
        "nothing unverified stored"
    );
    worker.sandbox.set_faults(Faults::default());
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 20)
        .await;
    assert_eq!(succeeded(&statuses), 20);
    let (status, _) = get_text(&format!("http://{listen}/readyz")).await;
    assert_eq!(status, 200, "resumed");
    for n in 0..20 {
        assert_eq!(worker.sandbox.billed_for(&format!("unsigned_{n}")), 1);
    }
    let key = zhima_worker::upstream::signing::PublicKey::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keys/test_sandbox_public.pem"
    )))
    .unwrap();
    let bodies = worker
        .query_rows("SELECT transaction_id, response_body FROM relation_checks")
        .await;
    for (transaction_id, body) in bodies {
        let verdict = zhima_worker::upstream::response::verify_response_body(
            body.as_bytes(),
            "zhima.credit.relation.query",
            &key,
            zhima_worker::upstream::response::SignTypeChoice::Rsa2,
        );
        assert!(
            verdict.is_ok(),
            "{transaction_id}: stored evidence verifies"
        );
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    worker.cleanup().await;
}
