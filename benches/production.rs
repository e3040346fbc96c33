//! Production-like benchmark: the sandbox gateway as a process of its own
//! (`zhima-worker sandbox`), the worker as another (`run --until-idle`,
//! release build, default logging: JSON lines at INFO into a file), the real
//! RabbitMQ and PostgreSQL, concurrency 64. Reports, for the worker process
//! only, CPU-ms per job (user + sys from /proc/PID/stat), jobs/s and peak RSS
//! (VmHWM).
//!
//! Scenarios:
//! - `clean`: a zero-latency sandbox without faults (`PERF_JOBS`, default
//!   2 000 jobs);
//! - `faults`: the same with 20 % SYSTEM_ERROR (business 40004) and 5 % HTTP
//!   502 before processing; retried jobs count once per job;
//! - `deep`: `PERF_DEEP_JOBS` (default 100 000) jobs queued before the worker
//!   starts, prefetch 64: the worker's peak RSS with a deep queue;
//! - `rate`: `PERF_RATE_JOBS` (default 12 000) jobs through a zero-latency
//!   sandbox with the worker's rate limit at `PERF_RATE_QPS` (default 1 000)
//!   calls per second: the worker's CPU share (cores) and CPU-ms per job in
//!   the steady part of the run (from 1 s after the first job completed to
//!   0.5 s before the last), and the rate it reached there.
//!
//! Each scenario also reports the worker's context switches per job, and the
//! first one the CPU time of the RSA2 signature alone on this machine (the
//! default key, measured in this process), which every job pays: the part of
//! the worker's CPU per job beyond it is what the worker's own design costs.
//!
//! `PERF_SCENARIOS=clean,faults` picks scenarios (default: all four);
//! `PERF_RECORD=/tmp/prof` also records the worker with `perf record -g`
//! (software clock) into `/tmp/prof.<scenario>.data`. `PERF_CALLGRIND=1`
//! runs the worker under `valgrind --tool=callgrind` instead and reports the
//! instructions per job spent signing, verifying and on everything else:
//! unlike CPU time, the same on a loaded machine as on a quiet one (use a
//! few hundred jobs: valgrind is ~50× slower).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zhima_worker::config;
use zhima_worker::queue::publisher::Outgoing;
use zhima_worker::queue::{self, Publisher, Topology};

struct Scenario {
    name: &'static str,
    jobs: u32,
    /// Extra `zhima-worker sandbox` flags (faults).
    sandbox_flags: &'static [&'static str],
    /// `rate_limit.qps` of the worker (burst 100 unless a rate point).
    qps: u32,
    /// Measure the steady part of the run (the rate point).
    steady: bool,
}

#[tokio::main]
async fn main() {
    let jobs = env_u32("PERF_JOBS", 2000);
    let deep_jobs = env_u32("PERF_DEEP_JOBS", 100_000);
    let rate_jobs = env_u32("PERF_RATE_JOBS", 12_000);
    let rate_qps = env_u32("PERF_RATE_QPS", 1000);
    let wanted =
        std::env::var("PERF_SCENARIOS").unwrap_or_else(|_| "clean,faults,deep,rate".into());
    let scenarios = [
        Scenario {
            name: "clean",
            jobs,
            sandbox_flags: &[],
            qps: 100_000,
            steady: false,
        },
        Scenario {
            name: "faults",
            jobs,
            sandbox_flags: &[
                "--system-error-rate",
                "0.2",
                "--system-error-style",
                "business-40004",
                "--http-5xx-before-rate",
                "0.05",
            ],
            qps: 100_000,
            steady: false,
        },
        Scenario {
            name: "deep",
            jobs: deep_jobs,
            sandbox_flags: &[],
            qps: 100_000,
            steady: false,
        },
        Scenario {
            name: "rate",
            jobs: rate_jobs,
            sandbox_flags: &[],
            qps: rate_qps,
            steady: true,
        },
    ];
    let signature_ms = signature_cpu_ms();
    println!(
        "production: one RSA2 signature of a request costs {signature_ms:.3} CPU-ms on this \
         machine (the default key, {SIGNATURES} signatures in this process)"
    );
    for scenario in scenarios {
        if wanted.split(',').any(|w| w.trim() == scenario.name) {
            run(&scenario, signature_ms).await;
        }
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, got {text:?}")),
        Err(_) => default,
    }
}

/// `zhima-worker sandbox` on a free port; its URL from the first stdout line.
async fn start_sandbox(flags: &[&str]) -> (Child, String) {
    let mut child = Command::new(support::BIN)
        .args(["sandbox", "--listen", "127.0.0.1:0", "--seed", "7"])
        .args(flags)
        .env("ZHIMA__LOG__FILTER", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sandbox starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .await
        .expect("sandbox prints its address");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected sandbox line {line:?}"))
        .to_owned();
    (child, format!("{base}/gateway.do"))
}

/// How many requests [`signature_cpu_ms`] signs.
const SIGNATURES: u32 = 500;

/// This thread's CPU time per RSA2 signature of a request-sized string
/// with the default configuration's key (the key the worker signs with).
fn signature_cpu_ms() -> f64 {
    use zhima_worker::upstream::signing::{PrivateKey, SignType};
    let settings = config::load(None).expect("settings");
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&settings.upstream.private_key_path);
    let text = std::fs::read_to_string(&path).expect("the default private key");
    let key = PrivateKey::from_pem_or_base64(&text).expect("a private key");
    let messages: Vec<String> = (0..SIGNATURES)
        .map(|n| {
            format!(
                "app_id=2014072300007148&biz_content={{\"product_code\":\"w1010100001000001200\",\
                 \"transaction_id\":\"sign_{n:08}\",\"cert_no\":\"640202199007164686\",\
                 \"name\":\"张三\",\"relation_phone\":\"15843991158\",\"relation_name\":\
                 \"李四\",\"relation\":\"family\"}}&charset=utf-8&format=JSON&method=\
                 zhima.credit.relation.query&sign_type=RSA2&timestamp=2026-12-01 10:30:00&\
                 version=1.0"
            )
        })
        .collect();
    for message in messages.iter().take(20) {
        std::hint::black_box(
            key.sign(SignType::Rsa2, message.as_bytes())
                .expect("signed"),
        );
    }
    let started = cpu_time::ThreadTime::now();
    for message in &messages {
        std::hint::black_box(
            key.sign(SignType::Rsa2, message.as_bytes())
                .expect("signed"),
        );
    }
    started.elapsed().as_secs_f64() * 1000.0 / f64::from(SIGNATURES)
}

async fn run(scenario: &Scenario, signature_ms: f64) {
    let id = support::worker::random_id();
    let (mut sandbox, gateway_url) = start_sandbox(scenario.sandbox_flags).await;
    let database_url = support::postgres::create_migrated_database(&format!("zp_{id}")).await;
    let mut settings = config::load(None).expect("settings");
    settings.amqp.exchange = format!("p_{id}.jobs");
    settings.amqp.queue = format!("p_{id}.verify");
    settings.amqp.dead_queue = format!("p_{id}.dead");
    let topology = Topology::from_settings(&settings).expect("topology");
    let connection = queue::connect(&settings.amqp, "bench")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("declare");
    publish_jobs(&connection, &topology, scenario.jobs, &id).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = support::worker::write_pii_key(dir.path());
    let log_path = dir.path().join("worker.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let callgrind_out = dir.path().join("callgrind.out");
    let mut command = match std::env::var_os("PERF_CALLGRIND") {
        Some(_) => {
            let mut valgrind = Command::new("valgrind");
            valgrind
                .arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", callgrind_out.display()))
                .arg(support::BIN);
            valgrind
        }
        None => Command::new(support::BIN),
    };
    let started = Instant::now();
    let mut child = command
        .args(["run", "--until-idle"])
        .env("ZHIMA__PII__HMAC_KEY_PATH", &key_path)
        .env("ZHIMA__UPSTREAM__GATEWAY_URL", &gateway_url)
        .env("ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE", "true")
        .env("DATABASE_URL", &database_url)
        .env("ZHIMA__AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("ZHIMA__AMQP__QUEUE", &settings.amqp.queue)
        .env("ZHIMA__AMQP__DEAD_QUEUE", &settings.amqp.dead_queue)
        .env("ZHIMA__RATE_LIMIT__QPS", scenario.qps.to_string())
        .env("ZHIMA__RATE_LIMIT__BURST", "100")
        .env("ZHIMA__WORKER__CONCURRENCY", "64")
        .env("ZHIMA__RETRY__INITIAL_DELAY_MS", "100")
        .env("ZHIMA__RETRY__MAX_DELAY_MS", "400")
        .env("ZHIMA__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("worker");
    let profiler = std::env::var("PERF_RECORD")
        .ok()
        .map(|prefix| record_profile(&child, &format!("{prefix}.{}.data", scenario.name)));
    let pid = child.id().expect("worker pid");
    let mut samples: Vec<(SystemTime, f64)> = Vec::new();
    let (status, usage) = support::watch_until_exit(&mut child, || {
        if let Some(cpu) = cpu_seconds(pid) {
            samples.push((SystemTime::now(), cpu));
        }
    })
    .await;
    if let Some(mut profiler) = profiler {
        let _ = profiler.wait().await;
    }
    let elapsed = started.elapsed();
    assert!(status.success(), "worker exited {status}");
    let _ = sandbox.kill().await;

    let statuses = status_counts(&database_url).await;
    let done: i64 = statuses
        .iter()
        .filter(|(s, _)| s == "succeeded" || s == "failed")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        done,
        i64::from(scenario.jobs),
        "every job finished: {statuses:?}"
    );
    let log_lines = std::fs::read_to_string(&log_path)
        .map(|text| text.matches("job processed").count())
        .unwrap_or(0);
    let jobs = f64::from(scenario.jobs);
    println!(
        "production [{}]: {} jobs in {:.2} s = {:.0} jobs/s (incl. start-up and idle detection); \
         worker CPU {:.3} ms per job ({:.2} s user+sys, {:.2} cores), {:.3} ms beyond the \
         signature; {:.1} context switches per job; peak RSS {:.1} MiB; statuses {:?}; \
         `job processed` lines {}",
        scenario.name,
        scenario.jobs,
        elapsed.as_secs_f64(),
        jobs / elapsed.as_secs_f64(),
        usage.cpu_seconds * 1000.0 / jobs,
        usage.cpu_seconds,
        usage.cpu_seconds / elapsed.as_secs_f64(),
        usage.cpu_seconds * 1000.0 / jobs - signature_ms,
        usage.context_switches as f64 / jobs,
        usage.peak_rss_kib as f64 / 1024.0,
        statuses,
        log_lines,
    );
    if scenario.steady {
        report_steady(scenario, &database_url, &samples, signature_ms).await;
    }
    if callgrind_out.exists() {
        report_instructions(scenario, &callgrind_out);
    }
    support::broker::delete_topology(&channel, &topology).await;
    support::postgres::drop_database(&format!("zp_{id}")).await;
}

/// The rate point: from 1 s after the first job completed to 0.5 s before
/// the last, the jobs completed (by `completed_at`), the worker's CPU time
/// (interpolated between /proc samples) and the wall time.
async fn report_steady(
    scenario: &Scenario,
    database_url: &str,
    samples: &[(SystemTime, f64)],
    signature_ms: f64,
) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("database");
    let (first, last): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(completed_at), max(completed_at) FROM relation_checks")
            .fetch_one(&mut connection)
            .await
            .expect("completion times");
    let from = first + chrono::Duration::seconds(1);
    let to = last - chrono::Duration::milliseconds(500);
    assert!(to > from, "the run is too short for a steady window");
    let (completed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM relation_checks WHERE completed_at >= $1 AND completed_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&mut connection)
    .await
    .expect("count");
    let cpu = cpu_at(samples, to.into()) - cpu_at(samples, from.into());
    let seconds = (to - from).as_seconds_f64();
    println!(
        "production [{}] steady window {:.1} s at rate limit {}/s: {:.0} jobs/s; worker {:.3} \
         cores, {:.3} CPU-ms per job ({:.3} beyond the signature)",
        scenario.name,
        seconds,
        scenario.qps,
        completed as f64 / seconds,
        cpu / seconds,
        cpu * 1000.0 / completed as f64,
        cpu * 1000.0 / completed as f64 - signature_ms,
    );
}

/// The worker's CPU seconds at `at`, interpolated between the two samples
/// around it.
fn cpu_at(samples: &[(SystemTime, f64)], at: SystemTime) -> f64 {
    let after = samples
        .iter()
        .position(|(time, _)| *time >= at)
        .expect("a sample after the window");
    assert!(after > 0, "no sample before the window");
    let (t0, c0) = samples[after - 1];
    let (t1, c1) = samples[after];
    let span = t1.duration_since(t0).unwrap_or_default().as_secs_f64();
    let into = at.duration_since(t0).unwrap_or_default().as_secs_f64();
    match span > 0.0 {
        true => c0 + (c1 - c0) * into / span,
        false => c1,
    }
}

/// utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat, after the
/// command name), in seconds (USER_HZ = 100).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn publish_jobs(connection: &lapin::Connection, topology: &Topology, jobs: u32, id: &str) {
    let publisher = Publisher::open(connection).await.expect("publisher");
    // Confirms awaited in windows, so that 100 000 pending ones are never
    // held at once.
    let mut pending = Vec::new();
    for n in 0..jobs {
        let body = serde_json::to_vec(&support::job(&format!("perf_{id}"), n)).expect("json");
        let message = Outgoing::job(&topology.names, &body, None);
        pending.push(publisher.send(message).await.expect("publish"));
        if pending.len() >= 1000 {
            for confirm in pending.drain(..) {
                Publisher::confirmed(confirm, "bench".into())
                    .await
                    .expect("confirmed");
            }
        }
    }
    for confirm in pending {
        Publisher::confirmed(confirm, "bench".into())
            .await
            .expect("confirmed");
    }
}

/// `PERF_CALLGRIND=1`: the worker ran under `valgrind --tool=callgrind`,
/// which counts instructions, not time: the same figures on a busy machine
/// as on a quiet one (its timings above are valgrind's, not the worker's).
/// Splits the count into signing, verifying and the rest. Valgrind hides
/// AVX-512, so the RSA code runs its AVX2 path and counts more than on the
/// machine itself; the rest is what the worker's own design costs. The
/// counts include start-up: two job counts tell the per-job part apart.
fn report_instructions(scenario: &Scenario, callgrind_out: &std::path::Path) {
    let output = std::process::Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--auto=no", "--threshold=100"])
        .arg(callgrind_out)
        .output()
        .expect("callgrind_annotate runs");
    let text = String::from_utf8_lossy(&output.stdout);
    // The first (largest) inclusive count of a line naming `needle`.
    let count = |needle: &str| -> f64 {
        text.lines()
            .find(|line| line.contains(needle))
            .and_then(|line| line.split_whitespace().next())
            .and_then(|number| number.replace(',', "").parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let total = count("PROGRAM TOTALS");
    let signing = count("pkey_rsa_sign ");
    // The first signature seeds aws-lc's random generator (jitter entropy).
    let seeding = count("__pthread_once_slow");
    let verifying = count("pkey_rsa_verify ");
    let jobs = f64::from(scenario.jobs);
    println!(
        "production [{}] instructions (callgrind): {:.1} M in all; per job {:.0} k signing, \
         {:.0} k verifying, {:.0} k everything else (start-up included: compare two job \
         counts for the per-job part); {:.1} M seeding the signer's random generator once",
        scenario.name,
        total / 1e6,
        (signing - seeding) / jobs / 1e3,
        verifying / jobs / 1e3,
        (total - signing - verifying) / jobs / 1e3,
        seeding / 1e6,
    );
}

/// `perf record` attached to the worker; it stops when the worker exits.
fn record_profile(worker: &Child, output: &str) -> Child {
    let pid = worker.id().expect("worker pid");
    Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-g", "-o", output, "-p"])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("perf starts")
}

async fn status_counts(database_url: &str) -> Vec<(String, i64)> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("database");
    sqlx::query_as("SELECT status, count(*) FROM relation_checks GROUP BY status ORDER BY status")
        .fetch_all(&mut connection)
        .await
        .expect("count statuses")
}
