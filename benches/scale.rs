//! Scale-out benchmark: the achieved upstream QPS of 1, 2 and 3 `zhima-worker
//! run` replicas on one PostgreSQL database against the configured total
//! (`rate_limit.qps = 30`), with the sandbox's highest one-second count; then 3
//! replicas with one killed (SIGKILL) mid-run, showing the throughput before,
//! right after, and once the dead replica's share is reclaimed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{Db, TestWorker, job, spawn_worker};
use tokio::process::Child;

const QPS: u32 = 30;
const BURST: &str = "3";
const LIMIT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    for replicas in 1..=3 {
        steady(replicas, 450).await;
    }
    killed_mid_run(900).await;
}

fn env() -> [(&'static str, String); 3] {
    [
        ("ZHIMA__RATE_LIMIT__QPS", QPS.to_string()),
        ("ZHIMA__RATE_LIMIT__BURST", BURST.to_string()),
        ("ZHIMA__WORKER__CONCURRENCY", "16".to_string()),
    ]
}

fn start(worker: &TestWorker) -> Child {
    let env = env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    worker.start_run(&pairs)
}

async fn publish(worker: &TestWorker, prefix: &str, jobs: u32) {
    for n in 0..jobs {
        worker.publish_job(&job(prefix, n)).await;
    }
}

/// Samples the sandbox's billed count every 20 ms until `jobs` are billed;
/// returns (instant, billed) samples.
async fn sample_billed(worker: &TestWorker, jobs: u64) -> Vec<(Instant, u64)> {
    let deadline = Instant::now() + LIMIT;
    let mut samples = Vec::new();
    loop {
        let billed = worker.sandbox.stats().billed;
        samples.push((Instant::now(), billed));
        if billed >= jobs {
            return samples;
        }
        assert!(Instant::now() < deadline, "only {billed} of {jobs} billed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Jobs per second between the first sample at or after `from` and the last
/// one before `to`.
fn rate_between(samples: &[(Instant, u64)], from: Instant, to: Instant) -> f64 {
    let inside: Vec<&(Instant, u64)> = samples
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .collect();
    match (inside.first(), inside.last()) {
        (Some(first), Some(last)) if last.0 > first.0 => {
            (last.1 - first.1) as f64 / last.0.duration_since(first.0).as_secs_f64()
        }
        _ => f64::NAN,
    }
}

fn first_billed(samples: &[(Instant, u64)]) -> Instant {
    samples
        .iter()
        .find(|(_, billed)| *billed > 0)
        .map(|(at, _)| *at)
        .expect("something billed")
}

async fn stop_all(replicas: &mut [Child]) {
    support::send_sigterm(replicas);
    for replica in replicas.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(30), replica.wait()).await;
    }
}

async fn steady(replicas: usize, jobs: u32) {
    let worker = spawn_worker(Db::Postgres).await;
    publish(&worker, "steady", jobs).await;
    let mut children: Vec<Child> = (0..replicas).map(|_| start(&worker)).collect();
    let samples = sample_billed(&worker, u64::from(jobs)).await;
    let Some(&(end, _)) = samples.last() else {
        panic!("no samples")
    };
    let achieved = rate_between(&samples, first_billed(&samples), end);
    let stats = worker.sandbox.stats();
    println!(
        "scale [{replicas} replica(s), qps {QPS} total, burst {BURST}]: {jobs} jobs, achieved \
         {achieved:.1} calls/s = {:.0}% of the configured total; sandbox peak 1-s window {} req",
        100.0 * achieved / f64::from(QPS),
        stats.max_requests_per_second
    );
    stop_all(&mut children).await;
    worker.cleanup().await;
}

async fn killed_mid_run(jobs: u32) {
    let worker = spawn_worker(Db::Postgres).await;
    publish(&worker, "kill", jobs).await;
    let mut children: Vec<Child> = (0..3).map(|_| start(&worker)).collect();
    let (kill_at, samples) = {
        let sampler = sample_billed(&worker, u64::from(jobs));
        tokio::pin!(sampler);
        let kill_at = tokio::select! {
            () = wait_billed(&worker, u64::from(jobs / 3)) => Instant::now(),
            _ = &mut sampler => panic!("finished before the kill"),
        };
        children[0].start_kill().expect("SIGKILL");
        (kill_at, sampler.await)
    };
    let Some(&(end, _)) = samples.last() else {
        panic!("no samples")
    };
    let before = rate_between(&samples, first_billed(&samples), kill_at);
    let reclaimed = kill_at + Duration::from_secs(3);
    let right_after = rate_between(&samples, kill_at, reclaimed);
    let after = rate_between(&samples, reclaimed, end);
    let overall = rate_between(&samples, first_billed(&samples), end);
    println!(
        "scale [3 replicas, qps {QPS}, one SIGKILLed after {} jobs]: {before:.1} calls/s before \
         the kill, {right_after:.1} in the 3 s after it, {after:.1} once its share was \
         reclaimed, {overall:.1} overall ({:.0}% of the total); sandbox peak 1-s window {} req",
        jobs / 3,
        100.0 * overall / f64::from(QPS),
        worker.sandbox.stats().max_requests_per_second
    );
    stop_all(&mut children).await;
    worker.cleanup().await;
}

async fn wait_billed(worker: &TestWorker, billed: u64) {
    while worker.sandbox.stats().billed < billed {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
