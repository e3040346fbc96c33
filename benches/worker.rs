//! End-to-end worker benchmark: jobs per second through `zhima-worker run
//! --until-idle` against the in-process sandbox, with the real RabbitMQ and
//! PostgreSQL, plus the worker's CPU seconds per 1 000 jobs and peak RSS
//! (read from /proc while it runs).
//!
//! Scenarios: a zero-latency sandbox with no effective rate limit (the
//! worker's own ceiling), and a 200 ms sandbox under `rate_limit.qps = 100`
//! (the target is ≥ 97 jobs/s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
use rand::Rng;
use sqlx::Connection;
use zhima_worker::config;
use zhima_worker::queue::publisher::Outgoing;
use zhima_worker::queue::{self, Publisher, Topology};
use zhima_worker::sandbox::{self, Faults, SandboxConfig};

const BIN: &str = env!("CARGO_BIN_EXE_zhima-worker");
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Scenario {
    name: &'static str,
    jobs: u32,
    latency_ms: u64,
    qps: u32,
    burst: u32,
    concurrency: u32,
}

#[tokio::main]
async fn main() {
    let scenarios = [
        Scenario {
            name: "zero-latency sandbox, qps unlimited",
            jobs: 5000,
            latency_ms: 0,
            qps: 100_000,
            burst: 100,
            concurrency: 64,
        },
        Scenario {
            name: "200 ms sandbox, qps 100",
            jobs: 1500,
            latency_ms: 200,
            qps: 100,
            burst: 5,
            concurrency: 64,
        },
    ];
    for scenario in scenarios {
        run(&scenario).await;
    }
}

async fn run(scenario: &Scenario) {
    let id: String = {
        let mut rng = rand::rng();
        (0..10)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect()
    };
    let mut sandbox_config = SandboxConfig::with_test_keys().expect("test keys");
    sandbox_config.faults = Faults {
        latency_ms: scenario.latency_ms,
        ..Faults::default()
    };
    let sandbox = sandbox::start(sandbox_config).await.expect("sandbox");
    let database_url = create_database(&id).await;
    let mut settings = config::load(None).expect("settings");
    settings.amqp.exchange = format!("b_{id}.jobs");
    settings.amqp.queue = format!("b_{id}.verify");
    settings.amqp.dead_queue = format!("b_{id}.dead");
    let topology = Topology::from_settings(&settings).expect("topology");
    let connection = queue::connect(&settings.amqp, "bench")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("declare");
    publish_jobs(&connection, &topology, scenario.jobs).await;

    let started = Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--until-idle"])
        .env("ZHIMA__UPSTREAM__GATEWAY_URL", sandbox.gateway_url())
        .env("DATABASE_URL", &database_url)
        .env("ZHIMA__AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("ZHIMA__AMQP__QUEUE", &settings.amqp.queue)
        .env("ZHIMA__AMQP__DEAD_QUEUE", &settings.amqp.dead_queue)
        .env("ZHIMA__RATE_LIMIT__QPS", scenario.qps.to_string())
        .env("ZHIMA__RATE_LIMIT__BURST", scenario.burst.to_string())
        .env(
            "ZHIMA__WORKER__CONCURRENCY",
            scenario.concurrency.to_string(),
        )
        .env("ZHIMA__LOG__FILTER", "warn")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("worker");
    let usage = watch(child, &sandbox, u64::from(scenario.jobs)).await;
    let elapsed = started.elapsed();
    let stats = sandbox.stats();
    assert_eq!(
        stats.billed,
        u64::from(scenario.jobs),
        "every job billed once"
    );
    let jobs = f64::from(scenario.jobs);
    println!(
        "worker [{}]: {} jobs in {:.2} s = {:.0} jobs/s wall clock (incl. start-up and idle \
         detection), {:.1} jobs/s steady; worker CPU {:.2} s per 1000 jobs; \
         peak RSS {:.1} MiB; sandbox peak 1-s window {} req",
        scenario.name,
        scenario.jobs,
        elapsed.as_secs_f64(),
        jobs / elapsed.as_secs_f64(),
        usage.steady_rate(jobs),
        usage.cpu_seconds * 1000.0 / jobs,
        usage.peak_rss_kib as f64 / 1024.0,
        stats.max_requests_per_second,
    );
    cleanup(&channel, &topology, &id).await;
}

async fn publish_jobs(connection: &lapin::Connection, topology: &Topology, jobs: u32) {
    let publisher = Publisher::open(connection).await.expect("publisher");
    let mut pending = Vec::new();
    for n in 0..jobs {
        let body = serde_json::to_vec(&serde_json::json!({
            "transaction_id": format!("bench_{n}"),
            "cert_no": cert_no(n),
            "name": "张三",
            "relation_phone": format!("139{:08}", n),
            "relation_name": "李四",
            "relation": "friend",
        }))
        .expect("json");
        let message = Outgoing::job(&topology.names, &body, None);
        pending.push(publisher.send(message).await.expect("publish"));
    }
    for confirm in pending {
        Publisher::confirmed(confirm, "bench".into())
            .await
            .expect("confirmed");
    }
}

fn cert_no(n: u32) -> String {
    let body = format!("310101198805{:02}{:03}", 1 + n % 28, n % 1000);
    let weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(weights)
        .map(|(c, w)| c.to_digit(10).unwrap() * w)
        .sum();
    let check = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'][(sum % 11) as usize];
    format!("{body}{check}")
}

struct Usage {
    cpu_seconds: f64,
    peak_rss_kib: u64,
    first_billed: Option<Instant>,
    all_billed: Option<Instant>,
}

impl Usage {
    /// Jobs per second from the first billed call to the last (no process
    /// start-up, no idle detection).
    fn steady_rate(&self, jobs: f64) -> f64 {
        match (self.first_billed, self.all_billed) {
            (Some(first), Some(last)) if last > first => {
                (jobs - 1.0) / last.duration_since(first).as_secs_f64()
            }
            _ => f64::NAN,
        }
    }
}

/// Samples /proc until the child exits; the last sample is within 20 ms of
/// its end.
async fn watch(
    mut child: tokio::process::Child,
    sandbox: &sandbox::RunningSandbox,
    jobs: u64,
) -> Usage {
    let pid = child.id().expect("pid");
    let ticks_per_second = 100.0;
    let mut usage = Usage {
        cpu_seconds: 0.0,
        peak_rss_kib: 0,
        first_billed: None,
        all_billed: None,
    };
    loop {
        let billed = sandbox.stats().billed;
        if billed > 0 && usage.first_billed.is_none() {
            usage.first_billed = Some(Instant::now());
        }
        if billed >= jobs && usage.all_billed.is_none() {
            usage.all_billed = Some(Instant::now());
        }
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if fields.len() > 13 {
                let utime: f64 = fields[11].parse().unwrap_or(0.0);
                let stime: f64 = fields[12].parse().unwrap_or(0.0);
                usage.cpu_seconds = usage.cpu_seconds.max((utime + stime) / ticks_per_second);
            }
        }
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in status.lines().filter(|l| l.starts_with("VmHWM:")) {
                let kib: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                usage.peak_rss_kib = usage.peak_rss_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "worker exited {status}");
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_database(id: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE zb_{id}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let url = format!("postgres://postgres@127.0.0.1:5432/zb_{id}");
    zhima_worker::store::JobStore::migrate(&url)
        .await
        .expect("migrate");
    url
}

async fn cleanup(channel: &lapin::Channel, topology: &Topology, id: &str) {
    let mut names = vec![
        topology.names.queue.clone(),
        topology.names.dead_queue.clone(),
    ];
    names.extend(topology.delay_queues());
    for name in names {
        let _ = channel
            .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
            .await;
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(
            topology.names.exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await;
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("postgres");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS zb_{id} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}
