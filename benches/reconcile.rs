//! Reconciliation benchmark: `zhima-worker reconcile` (release binary, as a
//! child process) over a generated 1 000 000-row statement against a database
//! holding the matching 1 000 000 `succeeded` rows, on SQLite and on
//! PostgreSQL. Reports wall time and peak RSS (VmHWM from /proc, sampled
//! every 20 ms). Targets: ≤ 10 s and ≤ 100 MiB.
//!
//! The statement is written in a scrambled order (statements are not sorted)
//! and carries a few planted discrepancies, so the slow paths run too: rows
//! left out (stored but not billed: a second pass over our side), bogus rows
//! (billed but not stored: database lookups), and repeated rows.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use sqlx::Connection;
use support::BIN;

const ROWS: u64 = 1_000_000;
/// The day, in UTC+8; its rows complete from 16:00 UTC the day before.
const DAY: &str = "2024-05-21";
const LEFT_OUT: u64 = 1_000;
const BOGUS: u64 = 100;
const REPEATED: u64 = 100;
/// Coprime with ROWS, so `i * STRIDE % ROWS` visits every row once, unsorted.
const STRIDE: u64 = 7_919;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bill = dir.path().join("bill.csv");
    let started = Instant::now();
    write_statement(&bill);
    let size = std::fs::metadata(&bill).unwrap().len();
    println!(
        "reconcile: statement of {ROWS} rows (+{BOGUS} bogus, +{REPEATED} repeated, \
         -{LEFT_OUT} left out), {:.1} MiB, written in {:.1} s",
        size as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );
    let sqlite_url = format!("sqlite:{}/bench.sqlite?mode=rwc", dir.path().display());
    let started = Instant::now();
    fill_sqlite(&sqlite_url).await;
    println!(
        "reconcile: SQLite filled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    measure("SQLite", &sqlite_url, &bill, dir.path()).await;

    let pg_database = format!("zr_{}", rand::random::<u32>());
    let pg_url = support::postgres::create_migrated_database(&pg_database).await;
    let started = Instant::now();
    fill_postgres(&pg_url).await;
    println!(
        "reconcile: PostgreSQL filled in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    measure("PostgreSQL", &pg_url, &bill, dir.path()).await;
    support::postgres::drop_database(&pg_database).await;
}

fn biz_no(i: u64) -> String {
    format!("ZM20240521{i:022}")
}

/// Billed at 00:00:00 + (i mod 86400) s local time, the same second the row
/// completed.
fn billed_at(i: u64) -> String {
    let second = i % 86_400;
    format!(
        "{DAY} {:02}:{:02}:{:02}",
        second / 3600,
        second / 60 % 60,
        second % 60
    )
}

fn write_statement(path: &Path) {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    writeln!(out, "biz_no,transaction_id,app_id,billed_at").unwrap();
    for k in 0..ROWS {
        let i = k * STRIDE % ROWS;
        if i % (ROWS / LEFT_OUT) == 7 {
            continue;
        }
        let line = format!(
            "{},bench_{i},2014072300007148,{}\n",
            biz_no(i),
            billed_at(i)
        );
        out.write_all(line.as_bytes()).unwrap();
        if i % (ROWS / REPEATED) == 3 {
            out.write_all(line.as_bytes()).unwrap();
        }
    }
    for b in 0..BOGUS {
        let i = ROWS + b;
        writeln!(
            out,
            "{},bogus_{b},2014072300007148,{}",
            biz_no(i),
            billed_at(i)
        )
        .unwrap();
    }
    out.flush().unwrap();
}

async fn fill_sqlite(url: &str) {
    zhima_worker::store::JobStore::migrate(url)
        .await
        .expect("migrate");
    let mut conn = sqlx::SqliteConnection::connect(url).await.expect("sqlite");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}) \
         INSERT INTO relation_checks (transaction_id, status, attempts, biz_no, relation_rank, \
             created_at, updated_at, completed_at, first_call_at) \
         SELECT 'bench_' || i, 'succeeded', 1, 'ZM20240521' || printf('%022d', i), 'high', \
             t, t, t, t \
         FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%fZ', '2024-05-20T16:00:00', \
             '+' || (i % 86400) || ' seconds') AS t FROM n)",
        last = ROWS - 1
    )))
    .execute(&mut conn)
    .await
    .expect("fill sqlite");
}

async fn fill_postgres(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("pg");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO relation_checks (transaction_id, status, attempts, biz_no, relation_rank, \
             created_at, updated_at, completed_at, first_call_at) \
         SELECT 'bench_' || i, 'succeeded', 1, 'ZM20240521' || lpad(i::text, 22, '0'), 'high', \
             t, t, t, t \
         FROM (SELECT i, timestamptz '2024-05-20T16:00:00Z' + (i % 86400) * interval '1 second' \
               AS t FROM generate_series(0, {}) AS i) AS g",
        ROWS - 1
    )))
    .execute(&mut conn)
    .await
    .expect("fill postgres");
    sqlx::query("ANALYZE relation_checks")
        .execute(&mut conn)
        .await
        .expect("analyze");
}

async fn measure(backend: &str, url: &str, bill: &Path, dir: &Path) {
    let out = dir.join("report.json");
    let started = Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(["reconcile", "--date", DAY, "--bill"])
        .arg(bill)
        .arg("--out")
        .arg(&out)
        .env("DATABASE_URL", url)
        .env("ZHIMA__LOG__FILTER", "warn,sqlx::query=error")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("reconcile starts");
    let (code, peak_kib, stdout) = watch(child).await;
    let elapsed = started.elapsed();
    assert_eq!(code, 3, "planted discrepancies exit 3:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("json report");
    let summary = &report["summary"];
    assert_eq!(summary["matched"], ROWS - LEFT_OUT, "{summary}");
    assert_eq!(summary["stored_not_billed"], LEFT_OUT, "{summary}");
    assert_eq!(summary["billed_not_stored"], BOGUS, "{summary}");
    assert_eq!(summary["duplicate_biz_no"], REPEATED, "{summary}");
    println!(
        "reconcile [{backend}]: {ROWS} rows in {:.2} s, peak RSS {:.1} MiB (targets: ≤ 10 s, ≤ 100 MiB)",
        elapsed.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
}

/// Samples VmHWM until the child exits; returns its exit code, the peak in
/// KiB and its stdout.
async fn watch(mut child: tokio::process::Child) -> (i32, u64, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .ok();
        text
    });
    let (status, usage) = support::watch_until_exit(&mut child, || {}).await;
    let text = reader.await.unwrap_or_default();
    (status.code().unwrap_or(-1), usage.peak_rss_kib, text)
}
