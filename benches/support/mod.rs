//! What the benchmarks share: sampling a child process's CPU time and peak
//! RSS from /proc, valid 18-digit IDs, throwaway PostgreSQL databases and
//! queues, and stopping worker replicas.
//!
//! Each bench includes it with `mod support;` and uses a part of it; being a
//! `mod.rs` in a subdirectory, it is not a bench target of its own. Only for
//! benches: it panics on setup failures and treats clean-up as best effort.
#![allow(dead_code)]

use std::process::ExitStatus;
use std::time::Duration;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use sqlx::Connection;
use tokio::process::Child;
use zhima_worker::queue::Topology;

/// The role `scripts/ensure-services.sh` creates (CREATEDB, not superuser).
pub const PG_SERVER: &str = "postgres://zhima_test:zhima_test@127.0.0.1:5432";
pub const PG_ADMIN_URL: &str = "postgres://zhima_test:zhima_test@127.0.0.1:5432/postgres";

/// /proc/{pid}/stat counts CPU time in clock ticks, USER_HZ = 100 on Linux.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What /proc showed of a process while it ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// VmHWM: the highest resident set size.
    pub peak_rss_kib: u64,
}

impl ProcUsage {
    /// Folds in one reading of /proc/{pid}. Both figures only grow, so a
    /// reading that fails (the process is exiting) keeps the earlier ones.
    pub fn sample(&mut self, pid: u32) {
        if let Some(cpu_seconds) = cpu_seconds(pid) {
            self.cpu_seconds = self.cpu_seconds.max(cpu_seconds);
        }
        if let Some(peak_rss_kib) = peak_rss_kib(pid) {
            self.peak_rss_kib = self.peak_rss_kib.max(peak_rss_kib);
        }
    }
}

/// utime + stime, fields 14 and 15 of /proc/{pid}/stat; counted after the
/// `)` that closes the command name, which may itself contain spaces.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    if fields.len() <= 13 {
        return None;
    }
    let utime: f64 = fields[11].parse().unwrap_or(0.0);
    let stime: f64 = fields[12].parse().unwrap_or(0.0);
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// Samples /proc every 20 ms until `child` exits, calling `on_tick` before
/// each sample; the last sample is within 20 ms of the exit.
pub async fn watch_until_exit(
    child: &mut Child,
    mut on_tick: impl FnMut(),
) -> (ExitStatus, ProcUsage) {
    let pid = child.id().expect("pid");
    let mut usage = ProcUsage::default();
    loop {
        on_tick();
        usage.sample(pid);
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, usage);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// Appends the ISO 7064 MOD 11-2 check character to the 17 digits of `body`,
/// making an ID that job validation accepts.
pub fn with_check_character(body: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).expect("digit") * w)
        .sum();
    format!("{body}{}", CHECK[(sum % 11) as usize])
}

/// Creates database `name` and runs the migrations; returns its URL.
pub async fn create_pg_database(name: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let url = format!("{PG_SERVER}/{name}");
    zhima_worker::store::JobStore::migrate(&url)
        .await
        .expect("migrate");
    url
}

/// Best effort: a bench that already printed its numbers should not fail on
/// clean-up.
pub async fn drop_pg_database(name: &str) {
    let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN_URL).await else {
        return;
    };
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
}

/// Purges and deletes the main, dead and delay queues and the exchange, best
/// effort.
pub async fn delete_topology(channel: &lapin::Channel, topology: &Topology) {
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
            ExchangeDeleteOptions::default(),
        )
        .await;
}

/// Asks every replica to drain and stop (SIGTERM); the caller waits.
pub fn send_sigterm(replicas: &[Child]) {
    for replica in replicas {
        if let Some(pid) = replica.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
