//! Sustained throughput of the sandbox gateway, signing included.
//!
//! `cargo bench --bench sandbox` starts the sandbox in-process on port 0, signs
//! a pool of distinct requests up front (so client-side signing does not compete
//! for the CPU during the measurement), then drives it with N concurrent reqwest
//! clients for a bounded time and prints `sandbox: N req/s sustained`. The first
//! pass over the pool is billed, later passes are replays; every answer is
//! signed either way. `SANDBOX_BENCH_CLIENTS` (default 16) and
//! `SANDBOX_BENCH_SECONDS` (default 5, at most 10) tune the run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zhima_worker::sandbox::{self, SandboxConfig};
use zhima_worker::upstream::signing::{Charset, PrivateKey, SignType, sign_params};

const POOL: usize = 2_000;

fn env_number(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// A signed POST as (query string, form body), UTF-8.
fn signed_request(key: &PrivateKey, index: usize) -> (String, String) {
    let biz_content = format!(
        r#"{{"product_code":"w1010100001000001200","transaction_id":"bench_{index:06}","cert_no":"640202199007164686","name":"张三","relation_phone":"158{index:08}","relation_name":"李四","relation":"family"}}"#
    );
    let system = [
        ("app_id", "2014072300007148"),
        ("method", "zhima.credit.relation.query"),
        ("format", "JSON"),
        ("charset", "utf-8"),
        ("sign_type", "RSA2"),
        ("timestamp", "2024-05-20 10:30:00"),
        ("version", "1.0"),
    ];
    let all = system
        .iter()
        .copied()
        .chain([("biz_content", biz_content.as_str())]);
    let signature = sign_params(all, key, SignType::Rsa2, Charset::Utf8).unwrap();
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(system)
        .append_pair("sign", &signature.sign)
        .finish();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("biz_content", &biz_content)
        .finish();
    (query, body)
}

async fn drive(
    url: String,
    pool: Arc<Vec<(String, String)>>,
    start: usize,
    until: Instant,
    done: Arc<AtomicU64>,
) {
    let http = reqwest::Client::new();
    let mut index = start;
    while Instant::now() < until {
        let (query, body) = &pool[index % pool.len()];
        let response = http
            .post(format!("{url}?{query}"))
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let bytes = response.bytes().await.unwrap();
        let success = b"\"code\":\"10000\"";
        let is_success = bytes
            .windows(success.len())
            .any(|w| w == success.as_slice());
        assert!(is_success, "{}", String::from_utf8_lossy(&bytes));
        done.fetch_add(1, Ordering::Relaxed);
        index += 1;
    }
}

/// Runs `clients` tasks until `until` and returns how many requests succeeded.
async fn run_clients(
    url: String,
    pool: Arc<Vec<(String, String)>>,
    clients: u64,
    until: Instant,
) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let stride = POOL / usize::try_from(clients).unwrap();
    let tasks: Vec<_> = (0..usize::try_from(clients).unwrap())
        .map(|n| {
            tokio::spawn(drive(
                url.clone(),
                Arc::clone(&pool),
                n * stride,
                until,
                Arc::clone(&done),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let clients = env_number("SANDBOX_BENCH_CLIENTS", 16, 1_024);
    let seconds = env_number("SANDBOX_BENCH_SECONDS", 5, 10);
    let key_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/keys/test_merchant_private.pem"
    );
    let key = PrivateKey::from_file(key_path.as_ref()).unwrap();
    let pool = Arc::new(
        (0..POOL)
            .map(|i| signed_request(&key, i))
            .collect::<Vec<_>>(),
    );
    let running = sandbox::start(SandboxConfig::with_test_keys().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let total = run_clients(
        running.gateway_url(),
        pool,
        clients,
        started + Duration::from_secs(seconds),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let stats = running.stats();
    println!(
        "sandbox: {:.0} req/s sustained ({total} requests, {clients} clients, {elapsed:.1} s, {} billed, {} replayed, max {} in one second)",
        total as f64 / elapsed,
        stats.billed,
        stats.unbilled_repeats,
        stats.max_requests_per_second
    );
    running.shutdown().await;
}
