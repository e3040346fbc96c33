//! `make chaos`: the fault run. Three `zhima-worker run` replicas on one
//! PostgreSQL database work through 2 000 jobs (plus 20 invalid ones) against
//! a sandbox answering 20 % SYSTEM_ERROR, 5 % HTTP 502 after billing and 2 %
//! broken signatures under a QPS cap equal to the configured total, while a
//! random replica is SIGKILLed and replaced every few seconds, RabbitMQ is
//! restarted once (`rabbitmqctl stop_app` / `start_app`) and PostgreSQL once.
//!
//! At the end it prints and checks: every valid job has a final row; no
//! transaction_id was billed twice; no answer with a broken signature was
//! stored as a success; the queues are empty but for the expected dead
//! letters; the sandbox's highest one-second count against the total.
//!
//! It restarts the machine's shared services: run it alone (it waits while
//! test binaries are running) and it always leaves both services running.
//! Not part of `make bench` (`bench = false` in Cargo.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::options::BasicGetOptions;
use rand::Rng;
use sqlx::Connection;
use support::{Db, TestWorker, job};
use tokio::process::Child;
use zhima_worker::config;
use zhima_worker::queue;
use zhima_worker::sandbox::{self, Faults, SandboxConfig};
use zhima_worker::upstream::response::{SignTypeChoice, verify_response_body};
use zhima_worker::upstream::signing::PublicKey;

const VALID_JOBS: u32 = 2000;
const INVALID_JOBS: u32 = 20;
const REPLICAS: usize = 3;
const QPS: u32 = 60;
const BURST: u32 = 6;
const DEADLINE: Duration = Duration::from_secs(600);
const METHOD: &str = "zhima.credit.relation.query";

/// Restarts RabbitMQ and PostgreSQL if they are down when dropped, even
/// after a failed check.
struct ServicesGuard;

impl Drop for ServicesGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("scripts/ensure-services.sh")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
}

#[derive(Default)]
struct Chaos {
    kills: u32,
    broker_restarted: bool,
    database_restarted: bool,
}

#[tokio::main]
async fn main() {
    wait_for_quiet_machine().await;
    let guard = ServicesGuard;
    let worker = setup().await;
    let started = Instant::now();
    let mut replicas: Vec<Child> = (0..REPLICAS).map(|_| start(&worker)).collect();
    let chaos = run_chaos(&worker, &mut replicas, started).await;
    let elapsed = started.elapsed();
    drain_and_stop(&worker, &mut replicas).await;
    let failures = check(&worker, &chaos, elapsed).await;
    cleanup(&worker).await;
    drop(guard);
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("chaos: FAILED: {failure}");
        }
        std::process::exit(1);
    }
    println!("chaos: PASSED");
}

/// Restarting the shared services would break whatever tests are running.
async fn wait_for_quiet_machine() {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let busy = std::process::Command::new("pgrep")
            .args(["-f", "^[^ ]*target/debug/deps/"])
            .output()
            .map(|out| !out.stdout.is_empty())
            .unwrap_or(false);
        if !busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "test binaries kept running for 15 min; not restarting shared services"
        );
        eprintln!("chaos: test binaries are running; waiting before restarting services");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

async fn setup() -> TestWorker {
    let mut sandbox_config = SandboxConfig::with_test_keys().expect("test keys");
    sandbox_config.faults = Faults {
        system_error_rate: 0.20,
        http_5xx_after_billing_rate: 0.05,
        broken_sign_rate: 0.02,
        qps_cap: Some(QPS),
        ..Faults::default()
    };
    let sandbox = sandbox::start(sandbox_config).await.expect("sandbox");
    let worker = support::worker::build(Db::Postgres, sandbox).await;
    for n in 0..VALID_JOBS {
        worker.publish_job(&job("ok", n)).await;
    }
    for n in 0..INVALID_JOBS {
        let mut invalid = job("bad", n);
        invalid["cert_no"] = serde_json::json!("123");
        worker.publish_job(&invalid).await;
    }
    worker
}

fn start(worker: &TestWorker) -> Child {
    let (qps, burst) = (QPS.to_string(), BURST.to_string());
    worker.start_run(&[
        ("ZHIMA__RATE_LIMIT__QPS", qps.as_str()),
        ("ZHIMA__RATE_LIMIT__BURST", burst.as_str()),
        ("ZHIMA__WORKER__CONCURRENCY", "16"),
        ("ZHIMA__WORKER__SHUTDOWN_GRACE_S", "20"),
    ])
}

/// Kills and replaces a replica every 3–6 s, restarts RabbitMQ after ~10 s
/// and PostgreSQL after ~30 s, until every valid job has a final row.
async fn run_chaos(worker: &TestWorker, replicas: &mut [Child], started: Instant) -> Chaos {
    let mut chaos = Chaos::default();
    let mut next_kill = Instant::now() + Duration::from_secs(4);
    loop {
        assert!(started.elapsed() < DEADLINE, "not done within {DEADLINE:?}");
        let elapsed = started.elapsed();
        if !chaos.broker_restarted && elapsed > Duration::from_secs(10) {
            chaos.broker_restarted = true;
            restart("RabbitMQ", "rabbitmqctl", &["stop_app"]).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            restart("RabbitMQ", "rabbitmqctl", &["start_app"]).await;
        }
        if !chaos.database_restarted && elapsed > Duration::from_secs(30) {
            chaos.database_restarted = true;
            let version = pg_version();
            let args = ["--skip-systemctl-redirect", &version, "main", "restart"];
            restart("PostgreSQL", "pg_ctlcluster", &args).await;
        }
        if Instant::now() >= next_kill {
            let victim = rand::rng().random_range(0..replicas.len());
            let _ = replicas[victim].start_kill();
            let _ = replicas[victim].wait().await;
            replicas[victim] = start(worker);
            chaos.kills += 1;
            next_kill =
                Instant::now() + Duration::from_millis(rand::rng().random_range(3000..6000));
        }
        if let Some(final_rows) = final_valid_rows(worker).await
            && final_rows >= i64::from(VALID_JOBS)
        {
            return chaos;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pg_version() -> String {
    std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .max()
        .expect("a PostgreSQL cluster")
}

async fn restart(service: &str, program: &str, args: &[&str]) {
    let at = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status(),
    )
    .await;
    eprintln!(
        "chaos: {service}: `{program} {}` -> {status:?} in {:.1} s",
        args.join(" "),
        at.elapsed().as_secs_f64()
    );
}

/// Final rows among the valid jobs; `None` while the database is away.
async fn final_valid_rows(worker: &TestWorker) -> Option<i64> {
    let mut conn = sqlx::PgConnection::connect(&worker.database_url)
        .await
        .ok()?;
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM relation_checks
         WHERE transaction_id LIKE 'ok%' AND status IN ('succeeded', 'failed')",
    )
    .fetch_one(&mut conn)
    .await
    .ok()
}

async fn amqp() -> lapin::Connection {
    let settings = config::load(None).expect("settings");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match queue::connect(&settings.amqp, "chaos").await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(Instant::now() < deadline, "broker unreachable: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Ready messages in the main and delay queues.
async fn backlog(worker: &TestWorker, channel: &lapin::Channel) -> u32 {
    let mut names = vec![worker.topology.names.queue.clone()];
    names.extend(worker.topology.delay_queues());
    let mut total = 0;
    for name in names {
        total += queue::topology::ready_messages(channel, &name)
            .await
            .unwrap_or(u32::MAX / 16);
    }
    total
}

/// Lets the survivors finish what the queues still hold (duplicates of
/// final jobs), then stops them with SIGTERM.
async fn drain_and_stop(worker: &TestWorker, replicas: &mut [Child]) {
    let connection = amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        quiet = if backlog(worker, &channel).await == 0 {
            quiet + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    support::send_sigterm(replicas);
    for replica in replicas.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(60), replica.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            other => eprintln!("chaos: a replica did not exit cleanly: {other:?}"),
        }
    }
}

async fn check(worker: &TestWorker, chaos: &Chaos, elapsed: Duration) -> Vec<String> {
    let mut failures = Vec::new();
    let mut conn = sqlx::PgConnection::connect(&worker.database_url)
        .await
        .expect("database");
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT transaction_id, status, response_body FROM relation_checks")
            .fetch_all(&mut conn)
            .await
            .expect("rows");
    let statuses: BTreeMap<&str, &str> = rows
        .iter()
        .map(|(id, status, _)| (id.as_str(), status.as_str()))
        .collect();
    let stats = worker.sandbox.stats();
    let report = Report::new(&statuses, &stats);
    report.print(chaos, elapsed);
    failures.extend(report.failures());
    failures.extend(check_signatures(&rows));
    failures.extend(check_dead_letters(worker, &statuses).await);
    let live: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM worker_leases WHERE expires_at > now()")
            .fetch_one(&mut conn)
            .await
            .expect("leases");
    if live != 0 {
        failures.push(format!(
            "{live} leases still live after every replica stopped"
        ));
    }
    failures
}

struct Report {
    final_valid: usize,
    succeeded: usize,
    failed_valid: usize,
    billed_twice: Vec<String>,
    requests: u64,
    billed: u64,
    repeats: u64,
    throttled: u64,
    broken_signatures: u64,
    peak: u64,
}

impl Report {
    fn new(statuses: &BTreeMap<&str, &str>, stats: &sandbox::Stats) -> Self {
        let valid = |id: &&str| id.starts_with("ok_");
        let of = |status: &str| {
            statuses
                .iter()
                .filter(|(id, s)| valid(id) && **s == status)
                .count()
        };
        Self {
            final_valid: of("succeeded") + of("failed"),
            succeeded: of("succeeded"),
            failed_valid: of("failed"),
            billed_twice: stats
                .transactions
                .iter()
                .filter(|(_, t)| t.billed > 1)
                .map(|(id, _)| id.clone())
                .collect(),
            requests: stats.requests,
            billed: stats.billed,
            repeats: stats.unbilled_repeats,
            throttled: stats
                .errors
                .iter()
                .filter(|(code, _)| code.starts_with("40005"))
                .map(|(_, n)| n)
                .sum(),
            broken_signatures: stats.broken_signatures,
            peak: stats.max_requests_per_second,
        }
    }

    fn print(&self, chaos: &Chaos, elapsed: Duration) {
        println!(
            "chaos: {REPLICAS} replicas, {VALID_JOBS} valid + {INVALID_JOBS} invalid jobs in {:.1} s; \
             {} replicas SIGKILLed and replaced; RabbitMQ restarted: {}; PostgreSQL restarted: {}",
            elapsed.as_secs_f64(),
            chaos.kills,
            chaos.broker_restarted,
            chaos.database_restarted
        );
        println!(
            "chaos: final rows {}/{VALID_JOBS} ({} succeeded, {} failed); sandbox: {} requests, \
             {} billed, {} unbilled repeats, {} throttled (40005), {} broken signatures sent; \
             transaction_ids billed more than once: {}",
            self.final_valid,
            self.succeeded,
            self.failed_valid,
            self.requests,
            self.billed,
            self.repeats,
            self.throttled,
            self.broken_signatures,
            self.billed_twice.len()
        );
        println!(
            "chaos: highest one-second request count at the sandbox {} vs configured total {QPS} \
             (bound {:.1} = total × 1.05 + burst {BURST})",
            self.peak,
            peak_bound()
        );
    }

    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.final_valid != VALID_JOBS as usize {
            failures.push(format!("only {} valid jobs are final", self.final_valid));
        }
        if !self.billed_twice.is_empty() {
            failures.push(format!("billed twice: {:?}", self.billed_twice));
        }
        if self.peak as f64 > peak_bound() {
            failures.push(format!(
                "peak one-second count {} over the bound",
                self.peak
            ));
        }
        failures
    }
}

fn peak_bound() -> f64 {
    f64::from(QPS) * 1.05 + f64::from(BURST)
}

/// Every stored success must carry a body whose signature verifies with the
/// sandbox's key: a broken-signature answer stored as success is a failure.
fn check_signatures(rows: &[(String, String, Option<String>)]) -> Vec<String> {
    let key_path = format!(
        "{}/config/keys/test_sandbox_public.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let key = PublicKey::from_file(std::path::Path::new(&key_path)).expect("sandbox key");
    let mut bad = Vec::new();
    let mut checked = 0;
    for (id, _, body) in rows.iter().filter(|(_, status, _)| status == "succeeded") {
        checked += 1;
        let verified = body.as_deref().is_some_and(|body| {
            verify_response_body(body.as_bytes(), METHOD, &key, SignTypeChoice::Rsa2).is_ok()
        });
        if !verified {
            bad.push(id.clone());
        }
    }
    println!(
        "chaos: stored successes whose signed answer does not verify: {} of {checked}",
        bad.len()
    );
    match bad.is_empty() {
        true => Vec::new(),
        false => vec![format!("successes with unverifiable answers: {bad:?}")],
    }
}

/// Main and delay queues empty; the dead queue holds the invalid jobs and the
/// valid ones that ran out of attempts, and nothing else.
async fn check_dead_letters(worker: &TestWorker, statuses: &BTreeMap<&str, &str>) -> Vec<String> {
    let connection = amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    let mut failures = Vec::new();
    let backlog = backlog(worker, &channel).await;
    if backlog != 0 {
        failures.push(format!(
            "{backlog} messages left in the main and delay queues"
        ));
    }
    let dead_ids = dead_letter_ids(&channel, &worker.topology.names.dead_queue).await;
    let expected: BTreeSet<&str> = statuses
        .iter()
        .filter(|(id, status)| id.starts_with("bad_") || **status == "failed")
        .map(|(id, _)| *id)
        .collect();
    let distinct: BTreeSet<&str> = dead_ids.iter().map(String::as_str).collect();
    let unexpected: Vec<&&str> = distinct.difference(&expected).collect();
    // A valid job can also fail permanently (a business answer): acked, not
    // dead-lettered. Only the invalid ones must all be there.
    let missing: Vec<&&str> = expected
        .difference(&distinct)
        .filter(|id| id.starts_with("bad_"))
        .collect();
    println!(
        "chaos: queues: main + delay {backlog} ready; dead {} messages ({} distinct), \
         expected {} (invalid {INVALID_JOBS} + failed valid)",
        dead_ids.len(),
        distinct.len(),
        expected.len()
    );
    if !unexpected.is_empty() || !missing.is_empty() {
        failures.push(format!(
            "dead letters: unexpected {unexpected:?}, missing {missing:?}"
        ));
    }
    let _ = connection.close(200, "chaos done".into()).await;
    failures
}

/// Reads the dead queue without acking; closing the channel puts it back.
async fn dead_letter_ids(channel: &lapin::Channel, dead_queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(Some(message)) = channel
        .basic_get(dead_queue.into(), BasicGetOptions { no_ack: false })
        .await
    {
        let body: serde_json::Value =
            serde_json::from_slice(&message.delivery.data).unwrap_or_default();
        ids.push(
            body["transaction_id"]
                .as_str()
                .unwrap_or("<none>")
                .to_owned(),
        );
        if ids.len() > 10_000 {
            break;
        }
    }
    ids
}

async fn cleanup(worker: &TestWorker) {
    let connection = amqp().await;
    let channel = connection.create_channel().await.expect("channel");
    support::broker::delete_topology(&channel, &worker.topology).await;
    support::postgres::drop_database(&support::worker::database_name(&worker.id)).await;
}
