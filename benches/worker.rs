//! End-to-end worker benchmark: jobs per second through `zhima-worker run
//! --until-idle` against the in-process sandbox, with the real RabbitMQ and
//! PostgreSQL, plus the worker's CPU seconds per 1 000 jobs and peak RSS
//! (read from /proc while it runs).
//!
//! Scenarios: a zero-latency sandbox with no effective rate limit (the
//! worker's own ceiling), with result events off and on (the outbox row in
//! each outcome transaction and the relay publishing it: CPU per job on is
//! to stay within 15 % of off), and a 200 ms sandbox under
//! `rate_limit.qps = 100` (the target is ≥ 97 jobs/s), events off and on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use rand::Rng;
use support::{BIN, ProcUsage};
use zhima_worker::config;
use zhima_worker::queue::publisher::Outgoing;
use zhima_worker::queue::{self, Publisher, Topology};
use zhima_worker::sandbox::{self, Faults, SandboxConfig};

struct Scenario {
    name: &'static str,
    jobs: u32,
    latency_ms: u64,
    qps: u32,
    burst: u32,
    concurrency: u32,
    /// Result events on (a results exchange of the run's own) or off.
    events: bool,
}

#[tokio::main]
async fn main() {
    let scenarios = [
        Scenario {
            name: "zero-latency sandbox, qps unlimited, events off",
            jobs: 5000,
            latency_ms: 0,
            qps: 100_000,
            burst: 100,
            concurrency: 64,
            events: false,
        },
        Scenario {
            name: "zero-latency sandbox, qps unlimited, events on",
            jobs: 5000,
            latency_ms: 0,
            qps: 100_000,
            burst: 100,
            concurrency: 64,
            events: true,
        },
        Scenario {
            name: "200 ms sandbox, qps 100, events off",
            jobs: 1500,
            latency_ms: 200,
            qps: 100,
            burst: 5,
            concurrency: 64,
            events: false,
        },
        Scenario {
            name: "200 ms sandbox, qps 100, events on",
            jobs: 1500,
            latency_ms: 200,
            qps: 100,
            burst: 5,
            concurrency: 64,
            events: true,
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
    let database_url = support::postgres::create_migrated_database(&format!("zb_{id}")).await;
    let mut settings = config::load(None).expect("settings");
    settings.amqp.exchange = format!("b_{id}.jobs");
    settings.amqp.queue = format!("b_{id}.verify");
    settings.amqp.dead_queue = format!("b_{id}.dead");
    let results_exchange = match scenario.events {
        true => format!("b_{id}.results"),
        false => String::new(),
    };
    let topology = Topology::from_settings(&settings).expect("topology");
    let connection = queue::connect(&settings.amqp, "bench")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    topology.declare(&channel).await.expect("declare");
    publish_jobs(&connection, &topology, scenario.jobs).await;

    let key_dir = tempfile::tempdir().expect("tempdir");
    let key_path = key_dir.path().join("pii_hmac.key");
    std::fs::write(&key_path, rand::random::<[u8; 32]>()).expect("PII key");
    let started = Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--until-idle"])
        .env("ZHIMA__PII__HMAC_KEY_PATH", &key_path)
        .env("ZHIMA__UPSTREAM__GATEWAY_URL", sandbox.gateway_url())
        .env("ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE", "true")
        .env("DATABASE_URL", &database_url)
        .env("ZHIMA__AMQP__EXCHANGE", &settings.amqp.exchange)
        .env("ZHIMA__AMQP__QUEUE", &settings.amqp.queue)
        .env("ZHIMA__AMQP__DEAD_QUEUE", &settings.amqp.dead_queue)
        .env("ZHIMA__RESULTS__EXCHANGE", &results_exchange)
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
    let sent = sent_events(&database_url).await;
    let expected_events = if scenario.events { scenario.jobs } else { 0 };
    assert_eq!(sent, i64::from(expected_events), "every event sent once");
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
        usage.process.cpu_seconds * 1000.0 / jobs,
        usage.process.peak_rss_kib as f64 / 1024.0,
        stats.max_requests_per_second,
    );
    support::broker::delete_topology(&channel, &topology).await;
    if scenario.events {
        let _ = channel
            .exchange_delete(
                results_exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
    }
    support::postgres::drop_database(&format!("zb_{id}")).await;
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

/// Result events marked sent in the outbox (`run --until-idle` exits only
/// once it is drained).
async fn sent_events(database_url: &str) -> i64 {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(database_url)
        .await
        .expect("database");
    sqlx::query_scalar("SELECT count(*) FROM result_events WHERE sent_at IS NOT NULL")
        .fetch_one(&mut connection)
        .await
        .expect("count events")
}

fn cert_no(n: u32) -> String {
    support::with_check_character(&format!("310101198805{:02}{:03}", 1 + n % 28, n % 1000))
}

struct Usage {
    process: ProcUsage,
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

/// Samples /proc and the sandbox's billed count until the child exits; the
/// last sample is within 20 ms of its end.
async fn watch(
    mut child: tokio::process::Child,
    sandbox: &sandbox::RunningSandbox,
    jobs: u64,
) -> Usage {
    let (mut first_billed, mut all_billed) = (None, None);
    let (status, process) = support::watch_until_exit(&mut child, || {
        let billed = sandbox.stats().billed;
        if billed > 0 && first_billed.is_none() {
            first_billed = Some(Instant::now());
        }
        if billed >= jobs && all_billed.is_none() {
            all_billed = Some(Instant::now());
        }
    })
    .await;
    assert!(status.success(), "worker exited {status}");
    Usage {
        process,
        first_billed,
        all_billed,
    }
}
