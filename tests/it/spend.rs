//! The daily budget (`spend.daily_limit`) end to end: two `zhima-worker run`
//! replicas on one PostgreSQL database share the limit exactly, the jobs past
//! it wait in the queue, `/readyz` says why, and a raised limit (`SIGHUP`
//! with an edited `--config` file) lets them finish; `spend` reports it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Child;

use crate::support::http::{free_local_addr, get_text};
use crate::support::{
    Db, TestWorker, count_values, exits_zero_within, job, send_signal, sigterm, spawn_worker,
    spawn_worker_with, succeeded, until,
};
use zhima_worker::sandbox::Faults;

const LIMIT: Duration = Duration::from_secs(120);
const REPLICA_EXIT: Duration = Duration::from_secs(30);

fn write_config(path: &Path, daily_limit: u32) {
    std::fs::write(
        path,
        format!("[spend]\ndaily_limit = {daily_limit}\nrecheck_interval_s = 1\n"),
    )
    .expect("config written");
}

fn start_replica(worker: &TestWorker, config: &Path, extra_env: &[(&str, &str)]) -> Child {
    let config = config.display().to_string();
    let mut command = worker.command(&["--config", &config, "run"]);
    command.envs(extra_env.iter().copied());
    command.env("ZHIMA__WORKER__CONCURRENCY", "8");
    command.spawn().expect("worker starts")
}

/// Puts the statement day's midnight (`reconcile.utc_offset_hours`) about
/// twelve hours away, so that the day, and with it the budget, cannot change
/// while a test runs, whenever it runs.
fn pin_statement_day(worker: &mut TestWorker) {
    use chrono::Timelike;
    let hour = i32::try_from(chrono::Utc::now().hour()).expect("an hour");
    // Local time 12:xx: the offset 12 - hour lies in -11..=12, inside the
    // accepted -12..=14.
    worker.env.insert(
        "ZHIMA__RECONCILE__UTC_OFFSET_HOURS".into(),
        (12 - hour).to_string(),
    );
}

async fn readiness(listen: &str) -> (u16, String) {
    get_text(&format!("http://{listen}/readyz")).await
}

#[tokio::test]
async fn two_replicas_bill_exactly_the_daily_limit_then_finish_once_it_is_raised() {
    const JOBS: u32 = 150;
    let mut worker = spawn_worker(Db::Postgres).await;
    pin_statement_day(&mut worker);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("spend.toml");
    write_config(&config, 100);
    for n in 0..JOBS {
        worker.publish_job(&job("spend", n)).await;
    }
    let listen = free_local_addr();
    let mut replicas = vec![
        start_replica(&worker, &config, &[("ZHIMA__HTTP__LISTEN", &listen)]),
        start_replica(&worker, &config, &[]),
    ];
    let queue = worker.topology.names.queue.clone();
    until(
        LIMIT,
        "both replicas held with 50 jobs back in the queue",
        || async {
            let (status, reason) = readiness(&listen).await;
            status == 503
                && reason.contains("daily spend limit reached")
                && worker.ready(&queue).await == JOBS - 100
        },
    )
    .await;
    let (_, reason) = readiness(&listen).await;
    assert!(reason.contains("100 of 100"), "{reason}");
    assert!(reason.contains("resumes at"), "{reason}");
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 100)
        .await;
    // Held, the replicas re-check the shared count every second: a few
    // rounds must not bill one more query nor fail a job.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker.sandbox.stats().billed, 100);
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), 100, "{:?}", count_values(&statuses));
    assert!(
        statuses.values().all(|status| status == "succeeded"),
        "waiting jobs have no row, failed or otherwise: {:?}",
        count_values(&statuses)
    );
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 0);
    assert_eq!(worker.ready(&queue).await, JOBS - 100);

    write_config(&config, 150);
    for replica in &replicas {
        send_signal(replica, "HUP");
    }
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == JOBS as usize)
        .await;
    assert_eq!(succeeded(&statuses), JOBS as usize);
    assert_eq!(worker.sandbox.stats().billed, u64::from(JOBS));
    for n in 0..JOBS {
        assert_eq!(worker.sandbox.billed_for(&format!("spend_{n}")), 1);
    }
    until(LIMIT, "ready again", || async {
        readiness(&listen).await.0 == 200
    })
    .await;

    let output = worker
        .command(&[
            "--config",
            &config.display().to_string(),
            "spend",
            "--days",
            "1",
            "--json",
        ])
        .output()
        .await
        .expect("spend runs");
    assert!(output.status.success(), "{output:?}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(rows[0]["billed"], 150, "{rows}");
    assert_eq!(rows[0]["budget_used"], 150, "{rows}");
    assert_eq!(rows[0]["daily_limit"], 150, "{rows}");
    let refused = rows[0]["refused_for_budget"].as_i64().expect("a count");
    assert!((1..=50).contains(&refused), "{rows}");

    for replica in &replicas {
        sigterm(replica);
    }
    for replica in &mut replicas {
        exits_zero_within(replica, REPLICA_EXIT).await;
    }
    worker.cleanup().await;
}

#[tokio::test]
async fn spend_refuses_a_bad_date_and_an_out_of_range_day_count() {
    let mut worker = spawn_worker(Db::Sqlite).await;
    pin_statement_day(&mut worker);
    for (args, said) in [
        (&["spend", "--date", "2026-02-30"][..], "YYYY-MM-DD"),
        (&["spend", "--date", "yesterday"][..], "YYYY-MM-DD"),
        (&["spend", "--days", "0"][..], "--days"),
        (&["spend", "--days", "367"][..], "--days"),
        (&["spend", "--days", "many"][..], "--days"),
    ] {
        let mut command = worker.command(args);
        command.stderr(std::process::Stdio::piped());
        let output = command.output().await.expect("spend runs");
        assert_eq!(output.status.code(), Some(64), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let output = worker
        .command(&["spend", "--date", "2026-12-01", "--days", "2"])
        .output()
        .await
        .expect("spend runs");
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(
        table.contains("2026-11-30") && table.contains("2026-12-01"),
        "{table}"
    );
    worker.cleanup().await;
}

/// A replica SIGKILLed with calls in flight leaves their units `held`: the
/// limit still holds (never more billed than it allows), and the redelivered
/// jobs settle those units instead of taking new ones.
#[tokio::test]
async fn a_replica_killed_mid_call_neither_exceeds_nor_leaks_the_budget() {
    const JOBS: u32 = 100;
    let faults = Faults {
        latency_ms: 150,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    pin_statement_day(&mut worker);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("spend.toml");
    write_config(&config, 60);
    for n in 0..JOBS {
        worker.publish_job(&job("crash", n)).await;
    }
    let listen = free_local_addr();
    let mut doomed = start_replica(&worker, &config, &[]);
    let mut survivor = start_replica(&worker, &config, &[("ZHIMA__HTTP__LISTEN", &listen)]);
    until(LIMIT, "20 queries billed", || async {
        worker.sandbox.stats().billed >= 20
    })
    .await;
    doomed.start_kill().expect("SIGKILL");
    let _ = doomed.wait().await;
    let mut replacement = start_replica(&worker, &config, &[]);
    until(LIMIT, "held at the limit", || async {
        let (status, reason) = readiness(&listen).await;
        status == 503 && reason.contains("daily spend limit reached")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let billed = worker.sandbox.stats().billed;
    assert!(billed <= 60, "{billed} billed past a limit of 60");

    write_config(&config, 100);
    for replica in [&survivor, &replacement] {
        send_signal(replica, "HUP");
    }
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == JOBS as usize)
        .await;
    assert_eq!(worker.sandbox.stats().billed, u64::from(JOBS));
    for n in 0..JOBS {
        assert_eq!(worker.sandbox.billed_for(&format!("crash_{n}")), 1);
    }
    let units = worker
        .query_rows("SELECT state, CAST(count(*) AS TEXT) FROM spend_reservations GROUP BY state")
        .await;
    assert_eq!(units, vec![("billed".to_owned(), JOBS.to_string())]);
    for replica in [&survivor, &replacement] {
        sigterm(replica);
    }
    exits_zero_within(&mut survivor, REPLICA_EXIT).await;
    exits_zero_within(&mut replacement, REPLICA_EXIT).await;
    worker.cleanup().await;
}

/// One SQLite replica: held at the limit it still stops cleanly on SIGTERM,
/// its gauges show the hold, and a restart with a higher limit finishes the rest.
#[tokio::test]
async fn a_held_sqlite_worker_stops_cleanly_and_a_restart_with_a_higher_limit_finishes() {
    const JOBS: u32 = 8;
    let mut worker = spawn_worker(Db::Sqlite).await;
    pin_statement_day(&mut worker);
    for n in 0..JOBS {
        worker.publish_job(&job("solo", n)).await;
    }
    let listen = free_local_addr();
    let queue = worker.topology.names.queue.clone();
    let mut first = worker.start_run(&[
        ("ZHIMA__SPEND__DAILY_LIMIT", "5"),
        ("ZHIMA__HTTP__LISTEN", &listen),
    ]);
    until(LIMIT, "held with 3 jobs back in the queue", || async {
        readiness(&listen).await.0 == 503 && worker.ready(&queue).await == JOBS - 5
    })
    .await;
    // The last reserved call may still be on its way back.
    until(LIMIT, "5 billed", || async {
        worker.sandbox.stats().billed == 5
    })
    .await;
    let metrics = crate::support::http::scrape_when_up(&format!("http://{listen}/metrics")).await;
    for (series, value) in [
        ("zhima_spend_billed_today", 5.0),
        ("zhima_spend_daily_limit", 5.0),
        ("zhima_spend_held", 1.0),
    ] {
        assert_eq!(
            crate::support::http::value_of(&metrics, series),
            Some(value),
            "{series}"
        );
    }
    assert!(crate::support::http::sample(&metrics, "zhima_spend_refused_total") >= 1.0);
    assert_eq!(worker.sandbox.stats().billed, 5);
    sigterm(&first);
    exits_zero_within(&mut first, REPLICA_EXIT).await;
    assert_eq!(worker.ready(&queue).await, JOBS - 5);

    let mut second = worker.start_run(&[("ZHIMA__SPEND__DAILY_LIMIT", "8")]);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == JOBS as usize)
        .await;
    assert_eq!(worker.sandbox.stats().billed, u64::from(JOBS));
    sigterm(&second);
    exits_zero_within(&mut second, REPLICA_EXIT).await;
    worker.cleanup().await;
}

/// With a limit of one unit per paying job (and one to spare), failures must
/// not use it up: a SYSTEM_ERROR (not billed) gives its unit back and its retry takes a
/// new one; a 5xx (maybe billed) keeps it for the retry, which takes no second
/// one; a permanent business error (not billed) gives it back for good. Every
/// job ends without a hold and each remaining unit is billed.
#[tokio::test]
async fn unbilled_answers_give_their_unit_back_and_uncertain_ones_keep_it_for_the_retry() {
    const PAYING: u32 = 30;
    const REFUSED: u32 = 10;
    let faults = Faults {
        system_error_rate: 0.2,
        http_5xx_before_rate: 0.1,
        http_5xx_after_billing_rate: 0.1,
        ..Faults::default()
    };
    let mut worker = spawn_worker_with(Db::Postgres, faults).await;
    pin_statement_day(&mut worker);
    // About a third of the calls fault, so with the harness's 8 attempts a
    // job gives up now and then (0.35^8 per job, ~1 % of runs): a refused
    // job whose last attempt was a 5xx then keeps its unit, rightly (maybe
    // billed), and the one spare unit below is gone. Enough attempts that
    // every job reaches its real answer; the schedule still fits the window.
    worker
        .env
        .insert("ZHIMA__RETRY__MAX_ATTEMPTS".into(), "40".into());
    for n in 0..PAYING + REFUSED {
        let mut body = job("faulty", n);
        if n >= PAYING {
            body["product_code"] = "w1_not_our_product".into();
        }
        worker.publish_job(&body).await;
    }
    // One unit to spare, for the refused jobs' calls (which give it back):
    // without the spare, a refused job coming after the 30 paying ones
    // would rightly wait for the next day.
    let mut replica = worker.start_run(&[("ZHIMA__SPEND__DAILY_LIMIT", "31")]);
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| {
            s.len() == (PAYING + REFUSED) as usize
                && s.values()
                    .all(|status| status == "succeeded" || status == "failed")
        })
        .await;
    assert_eq!(
        succeeded(&statuses),
        PAYING as usize,
        "{:?}",
        count_values(&statuses)
    );
    assert_eq!(worker.sandbox.stats().billed, u64::from(PAYING));
    assert!(
        worker.count("SELECT COUNT(*) FROM upstream_calls").await > i64::from(PAYING + REFUSED),
        "the faults were injected"
    );
    let units = worker
        .query_rows("SELECT state, CAST(count(*) AS TEXT) FROM spend_reservations GROUP BY state")
        .await;
    assert_eq!(units, vec![("billed".to_owned(), PAYING.to_string())]);
    assert_eq!(
        worker.count("SELECT used FROM spend_days").await,
        i64::from(PAYING)
    );
    // A paying job may have found the last unit taken by a refused job's
    // call not yet settled: it was deferred (counted), never failed.
    sigterm(&replica);
    exits_zero_within(&mut replica, REPLICA_EXIT).await;
    worker.cleanup().await;
}
