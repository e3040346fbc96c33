//! Scale-out: several `zhima-worker run` replicas on one PostgreSQL database
//! share the merchant's `rate_limit.qps`, measured at the sandbox, while
//! replicas die and leave.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::http::{free_local_addr, scrape, value_of};
use crate::support::worker::throttled_calls;
use crate::support::{
    Db, TestWorker, count_values, exits_zero_within, job, sigterm, spawn_worker, spawn_worker_with,
    succeeded, until,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use zhima_worker::sandbox::Faults;

const LIMIT: Duration = Duration::from_secs(120);
/// How long a replica may take to exit after SIGTERM.
const REPLICA_EXIT: Duration = Duration::from_secs(30);

fn shared_limit(qps: &'static str, burst: &'static str) -> [(&'static str, &'static str); 3] {
    [
        ("ZHIMA__RATE_LIMIT__QPS", qps),
        ("ZHIMA__RATE_LIMIT__BURST", burst),
        ("ZHIMA__WORKER__CONCURRENCY", "8"),
    ]
}

/// Leases the database still counts as live (by its own clock).
async fn live_leases(worker: &TestWorker) -> i64 {
    worker
        .count("SELECT COUNT(*) FROM worker_leases WHERE expires_at > now()")
        .await
}

async fn wait_for_live_leases(worker: &TestWorker, expected: i64) {
    let what = format!("expected {expected} live leases");
    until(Duration::from_secs(20), &what, || async {
        live_leases(worker).await == expected
    })
    .await;
}

/// Waits until the replica serving `metrics_url` counts `replicas` live
/// replicas and permits `per_second` calls per second (its share).
async fn wait_for_share(metrics_url: &str, replicas: f64, per_second: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = scrape(metrics_url).await.unwrap_or_default();
        let live = value_of(&metrics, "zhima_replicas_live");
        let permits = value_of(&metrics, "zhima_rate_limit_permits_per_second");
        if live == Some(replicas) && permits == Some(per_second) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {replicas} replicas and {per_second}/s, saw {live:?} and {permits:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_replicas_hold_the_shared_limit_while_one_is_killed_mid_run() {
    const JOBS: u32 = 450;
    let worker = spawn_worker(Db::Postgres).await;
    for n in 0..JOBS {
        worker.publish_job(&job("scale", n)).await;
    }
    let env = shared_limit("30", "3");
    let mut replicas: Vec<Child> = (0..3).map(|_| worker.start_run(&env)).collect();
    wait_for_live_leases(&worker, 3).await;
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) >= (JOBS / 3) as usize)
        .await;
    replicas[0].start_kill().expect("SIGKILL");
    let killed_at = tokio::time::Instant::now();
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == JOBS as usize)
        .await;
    let after_kill = killed_at.elapsed();
    let stats = worker.sandbox.stats();
    eprintln!(
        "3 replicas, qps 30 burst 3: busiest second {} (bound 31.5 + 3); \
         the last two thirds took {:.1} s after the kill",
        stats.max_requests_per_second,
        after_kill.as_secs_f64()
    );
    assert!(
        stats.max_requests_per_second as f64 <= 30.0 * 1.05 + 3.0,
        "highest one-second count {}",
        stats.max_requests_per_second
    );
    assert_eq!(
        succeeded(&statuses),
        JOBS as usize,
        "{:?}",
        count_values(&statuses)
    );
    for n in 0..JOBS {
        assert_eq!(
            worker.sandbox.billed_for(&format!("scale_{n}")),
            1,
            "scale_{n}"
        );
    }
    for replica in &replicas[1..] {
        sigterm(replica);
    }
    for replica in &mut replicas[1..] {
        exits_zero_within(replica, REPLICA_EXIT).await;
    }
    assert_eq!(
        worker.count("SELECT COUNT(*) FROM worker_leases").await,
        1,
        "clean exits delete their leases; only the killed replica's is left"
    );
    assert_eq!(live_leases(&worker).await, 0);
    worker.cleanup().await;
}

#[tokio::test]
async fn a_replica_waits_for_its_share_and_a_leaving_one_hands_it_back() {
    let worker = spawn_worker(Db::Postgres).await;
    let env = shared_limit("20", "2");
    let listen = free_local_addr();
    let metrics = format!("http://{listen}/metrics");
    let mut first_env = env.to_vec();
    first_env.push(("ZHIMA__HTTP__LISTEN", &listen));
    let mut first = worker.start_run(&first_env);
    wait_for_live_leases(&worker, 1).await;
    wait_for_share(&metrics, 1.0, 20.0).await;
    let mut second = worker.start_run(&env);
    wait_for_live_leases(&worker, 2).await;
    wait_for_share(&metrics, 2.0, 10.0).await;
    sigterm(&second);
    exits_zero_within(&mut second, REPLICA_EXIT).await;
    assert_eq!(
        live_leases(&worker).await,
        1,
        "a clean exit deletes its lease at once"
    );
    wait_for_share(&metrics, 1.0, 20.0).await;
    for n in 0..60 {
        worker.publish_job(&job("handover", n)).await;
    }
    let started = tokio::time::Instant::now();
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 60)
        .await;
    let rate = 60.0 / started.elapsed().as_secs_f64();
    eprintln!(
        "handover, qps 20 burst 2: busiest second {} (bound 22), {rate:.1} jobs/s",
        worker.sandbox.stats().max_requests_per_second
    );
    assert!(
        worker.sandbox.stats().max_requests_per_second <= 20 + 2,
        "{:?}",
        worker.sandbox.stats().max_requests_per_second
    );
    sigterm(&first);
    exits_zero_within(&mut first, REPLICA_EXIT).await;
    worker.cleanup().await;
}

#[tokio::test]
async fn throttled_answers_slow_the_replica_down_without_failing_a_job() {
    let faults = Faults {
        qps_cap: Some(8),
        ..Faults::default()
    };
    let worker = spawn_worker_with(Db::Postgres, faults).await;
    for n in 0..80 {
        worker.publish_job(&job("throttled", n)).await;
    }
    let env = shared_limit("40", "4");
    let mut replica = worker.start_run(&env);
    let statuses = worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 80)
        .await;
    assert_eq!(count_values(&statuses).get("failed"), None);
    let stats = worker.sandbox.stats();
    let throttled = throttled_calls(&stats);
    eprintln!("qps 40 against a cap of 8: {throttled} throttled calls for 80 jobs");
    assert!(throttled > 0, "the cap was hit: {:?}", stats.errors);
    assert!(
        throttled < 80,
        "back-off keeps throttled calls well below the job count: {throttled}"
    );
    for n in 0..80 {
        assert_eq!(worker.sandbox.billed_for(&format!("throttled_{n}")), 1);
    }
    sigterm(&replica);
    exits_zero_within(&mut replica, REPLICA_EXIT).await;
    worker.cleanup().await;
}

/// A TCP relay in front of `target` that holds every connection opened in the
/// first `hold` after the first one, and lets them through together when it
/// ends: calls permitted during that time reach the upstream at once, as they
/// do after a slow connection set-up or a stalled thread.
async fn holding_relay(target: SocketAddr, hold: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut release = None;
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let at = *release.get_or_insert_with(|| tokio::time::Instant::now() + hold);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn calls_held_up_on_the_way_do_not_push_the_upstream_past_the_bound() {
    let worker = spawn_worker(Db::Sqlite).await;
    let relay = holding_relay(worker.sandbox.addr, Duration::from_millis(500)).await;
    let gateway = format!("http://{relay}/gateway.do");
    for n in 0..40 {
        worker.publish_job(&job("held", n)).await;
    }
    let mut env = shared_limit("20", "2").to_vec();
    env.push(("ZHIMA__UPSTREAM__GATEWAY_URL", &gateway));
    let mut replica = worker.start_run(&env);
    worker
        .wait_for_statuses(LIMIT, |s| succeeded(s) == 40)
        .await;
    let busiest = worker.sandbox.stats().max_requests_per_second;
    eprintln!("calls held 0.5 s on the way, qps 20 burst 2: busiest second {busiest} (bound 22)");
    assert!(busiest <= 20 + 2, "busiest second {busiest}");
    for n in 0..40 {
        assert_eq!(worker.sandbox.billed_for(&format!("held_{n}")), 1);
    }
    sigterm(&replica);
    exits_zero_within(&mut replica, REPLICA_EXIT).await;
    worker.cleanup().await;
}
