//! End-to-end tests of `zhima-worker reconcile` and `export`: a day's history
//! is built with the real worker against the sandbox (including answers lost
//! to HTTP 502 after billing), faults are planted in the database and the
//! statement, and the report must name exactly those; `--repair` must recover
//! the recoverable one without new billing.
//!
//! The wall clock never decides an outcome: the sandbox bills at a pinned
//! instant of the test's day, and rows the worker completes after that day
//! (a run across midnight UTC+8) are dated back into it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{Db, TestWorker, job, spawn_worker, spawn_worker_with_clock, succeeded};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, SecondsFormat, TimeDelta, Utc};
use zhima_worker::sandbox::SandboxClock;
use zhima_worker::sandbox::{Faults, SandboxReply};

const LIMIT: Duration = Duration::from_secs(90);

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn zhima(worker: &TestWorker, args: &[&str]) -> Outcome {
    let mut command = worker.command(args);
    command.stderr(Stdio::piped());
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("command finished in time")
        .expect("command runs");
    Outcome {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `run --until-idle` with extra settings (the harness's own takes none).
async fn run_until_idle_with(worker: &TestWorker, extra_env: &[(&str, &str)]) {
    let mut command = worker.command(&["run", "--until-idle"]);
    command.envs(extra_env.iter().copied());
    let mut child = command.spawn().expect("worker starts");
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("worker finished in time")
        .expect("wait");
    assert!(status.success(), "run --until-idle exited {status}");
}

fn utc8() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap()
}

/// `time` UTC+8 on the day (UTC+8) the test starts: the sandbox bills every
/// query at this instant, so the statement covers one day however long the
/// test runs. The day is the real one because the worker and the database
/// date their rows with the real clock, and `--repair` needs the billed
/// answer still replayable by it.
fn pinned_today_at(time: NaiveTime) -> DateTime<Utc> {
    let today = Utc::now().with_timezone(&utc8()).date_naive();
    today
        .and_time(time)
        .and_local_timezone(utc8())
        .unwrap()
        .to_utc()
}

/// The statement day of a pinned sandbox clock.
fn billing_day(pinned: DateTime<Utc>) -> NaiveDate {
    pinned.with_timezone(&utc8()).date_naive()
}

/// Rows the worker completed after `day` ended (the real clock passed
/// midnight UTC+8 during the test) are dated back to its last millisecond, as
/// if the worker had kept pace with the pinned sandbox: the stored side of the
/// day is then the same whenever the test runs. A no-op on any other run.
async fn keep_completions_within(worker: &TestWorker, day: NaiveDate) {
    let end = billing_day_end(day);
    let format = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let sql = format!(
        "UPDATE relation_checks SET completed_at = '{}' WHERE completed_at >= '{}'",
        format(end - TimeDelta::milliseconds(1)),
        format(end)
    );
    worker.execute(&sql).await;
}

fn billing_day_end(day: NaiveDate) -> DateTime<Utc> {
    day.succ_opt()
        .unwrap()
        .and_time(NaiveTime::MIN)
        .and_local_timezone(utc8())
        .unwrap()
        .to_utc()
}

fn transaction_ids(report: &serde_json::Value, category: &str) -> BTreeSet<String> {
    report[category]
        .as_array()
        .unwrap_or_else(|| panic!("{category} is an array"))
        .iter()
        .map(|entry| entry["transaction_id"].as_str().unwrap().to_owned())
        .collect()
}

fn detail_of(report: &serde_json::Value, category: &str, transaction_id: &str) -> String {
    report[category]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["transaction_id"] == transaction_id)
        .unwrap_or_else(|| panic!("{transaction_id} in {category}"))["detail"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// A job whose answer is lost to a 502 after billing and that then runs out
/// of attempts: its row is `failed` and its message sits in the dead queue.
async fn lose_one_billed_answer(worker: &TestWorker) {
    worker
        .sandbox
        .respond_next(1, SandboxReply::LostAfterBilling);
    worker.sandbox.respond_next(1, SandboxReply::SystemError);
    worker.publish_job(&job("lost", 1)).await;
    run_until_idle_with(worker, &[("ZHIMA__RETRY__MAX_ATTEMPTS", "2")]).await;
    assert_eq!(worker.statuses().await["lost_1"], "failed");
    assert_eq!(worker.sandbox.billed_for("lost_1"), 1);
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 1);
}

/// 30 jobs, a third of the fresh answers lost to 502 after billing and
/// recovered by the worker's retries (same transaction_id, replayed unbilled).
async fn run_a_flaky_day(worker: &TestWorker, prefix: &str, jobs: u32) {
    worker.sandbox.set_faults(Faults {
        http_5xx_after_billing_rate: 0.3,
        ..Faults::default()
    });
    for n in 0..jobs {
        worker.publish_job(&job(prefix, n)).await;
    }
    worker.run_until_idle(LIMIT).await;
    worker.sandbox.set_faults(Faults::default());
    let statuses = worker.statuses().await;
    assert_eq!(succeeded(&statuses), jobs as usize);
    let lost_then_recovered = worker
        .count("SELECT COUNT(*) FROM upstream_calls WHERE http_status = 502")
        .await;
    assert!(
        lost_then_recovered > 0,
        "some answers were lost after billing"
    );
}

/// The sandbox's statement with the planted faults: `day_9` left out, `day_5`
/// billed twice, `day_7` under another transaction_id, a bogus biz_no, and a
/// row of the next day (counted, not checked).
fn planted_statement(bill: &str, day: NaiveDate) -> String {
    let mut out = String::new();
    for line in bill.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        match fields[1] {
            "day_9" => continue,
            "day_7" => out.push_str(&line.replace(",day_7,", ",day_7_other,")),
            "day_5" => out.push_str(&format!("{line}\n{line}")),
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let compact = day.format("%Y%m%d");
    let next = day.succ_opt().unwrap();
    out.push_str(&format!(
        "ZM{compact}{},bogus_1,2014072300007148,{day} 12:00:00\n",
        "9".repeat(22)
    ));
    out.push_str(&format!(
        "ZM{}{},tomorrow_1,2014072300007148,{next} 00:00:01\n",
        next.format("%Y%m%d"),
        "8".repeat(22)
    ));
    out
}

async fn reconcile_json(
    worker: &TestWorker,
    bill: &Path,
    day: NaiveDate,
    extra: &[&str],
) -> (Outcome, serde_json::Value) {
    let out = bill.with_extension("report.json");
    let (bill, out_text, date) = (
        bill.display().to_string(),
        out.display().to_string(),
        day.to_string(),
    );
    let mut args = vec![
        "reconcile",
        "--bill",
        &bill,
        "--date",
        &date,
        "--out",
        &out_text,
    ];
    args.extend_from_slice(extra);
    let outcome = zhima(worker, &args).await;
    let report = std::fs::read(&out)
        .map(|bytes| serde_json::from_slice(&bytes).expect("the report is JSON"))
        .unwrap_or(serde_json::Value::Null);
    (outcome, report)
}

#[tokio::test]
async fn reconcile_reports_exactly_the_planted_discrepancies_and_repair_recovers_the_lost_answer_unbilled()
 {
    reconcile_a_planted_day(NaiveTime::from_hms_opt(12, 0, 0).unwrap()).await;
}

/// The same day billed in its last second: a real clock there would carry
/// most of the run's bills over to the next day's statement.
#[tokio::test]
async fn a_day_billed_in_its_last_second_reconciles_as_any_other_day() {
    reconcile_a_planted_day(NaiveTime::from_hms_opt(23, 59, 59).unwrap()).await;
}

/// The key scenario with the sandbox billing at `time` UTC+8: the report
/// names exactly the planted discrepancies and `--repair` recovers the lost
/// answer without new billing.
async fn reconcile_a_planted_day(time: NaiveTime) {
    let pinned = pinned_today_at(time);
    let worker =
        spawn_worker_with_clock(Db::Postgres, Faults::default(), SandboxClock::Fixed(pinned)).await;
    lose_one_billed_answer(&worker).await;
    run_a_flaky_day(&worker, "day", 30).await;
    let billed = worker.sandbox.stats().billed;
    assert_eq!(billed, 31, "every job billed once");
    let day = billing_day(pinned);
    keep_completions_within(&worker, day).await;
    let changed = worker.count("WITH d AS (DELETE FROM relation_checks WHERE transaction_id = 'day_3' RETURNING 1) SELECT COUNT(*) FROM d").await;
    assert_eq!(changed, 1);
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(&bill, planted_statement(&worker.sandbox.bill_csv(day), day)).unwrap();

    let (outcome, report) = reconcile_json(&worker, &bill, day, &[]).await;
    assert_eq!(outcome.code, 3, "{}\n{}", outcome.stdout, outcome.stderr);
    assert_eq!(
        transaction_ids(&report, "billed_not_stored"),
        set(&["lost_1", "day_3", "bogus_1"])
    );
    assert_eq!(
        transaction_ids(&report, "stored_not_billed"),
        set(&["day_9"])
    );
    assert_eq!(
        transaction_ids(&report, "duplicate_biz_no"),
        set(&["day_5"])
    );
    assert_eq!(
        transaction_ids(&report, "transaction_id_mismatch"),
        set(&["day_7_other"])
    );
    let summary = &report["summary"];
    assert_eq!(summary["matched"], 27, "{summary}");
    assert_eq!(summary["billed_not_stored"], 3);
    assert_eq!(summary["statement_rows_outside_day"], 1);
    assert_eq!(summary["matched_completed_other_day"], 0);
    assert!(detail_of(&report, "billed_not_stored", "lost_1").contains("--repair"));
    assert!(detail_of(&report, "billed_not_stored", "day_3").contains("not recoverable here"));
    assert!(detail_of(&report, "billed_not_stored", "bogus_1").contains("no call in our ledger"));
    assert!(detail_of(&report, "transaction_id_mismatch", "day_7_other").contains("day_7"));
    assert!(
        outcome.stdout.contains("6 discrepancies"),
        "{}",
        outcome.stdout
    );

    let (outcome, _) = reconcile_json(&worker, &bill, day, &["--repair"]).await;
    assert_eq!(outcome.code, 3, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stdout.contains("re-published lost_1"),
        "{}",
        outcome.stdout
    );
    assert_eq!(worker.ready(&worker.topology.names.dead_queue).await, 0);
    assert_eq!(worker.statuses().await["lost_1"], "retrying");
    worker.run_until_idle(LIMIT).await;
    assert_eq!(worker.statuses().await["lost_1"], "succeeded");
    assert_eq!(
        worker.sandbox.stats().billed,
        billed,
        "the repair billed nothing new"
    );

    let (outcome, report) = reconcile_json(&worker, &bill, day, &[]).await;
    assert_eq!(outcome.code, 3);
    assert_eq!(
        transaction_ids(&report, "billed_not_stored"),
        set(&["day_3", "bogus_1"])
    );
    assert_eq!(report["summary"]["matched"], 28);
    worker.cleanup().await;
}

/// The bill as Alipay's downloads look: GBK, banner and footer comments,
/// Chinese column names in another order, an extra column.
fn alipay_style_gbk(bill: &str) -> Vec<u8> {
    let mut text = String::from(
        "#支付宝业务明细查询\n#账号：[20881234]\n计费时间,业务流水号,备注,商户订单号\n",
    );
    for line in bill.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        text.push_str(&format!(
            "{},{}\t,联系人验证,{}\t\n",
            fields[3], fields[0], fields[1]
        ));
    }
    text.push_str("#-----业务明细列表结束-----\n");
    encoding_rs::GBK.encode(&text).0.into_owned()
}

#[tokio::test]
async fn a_clean_day_from_a_gbk_statement_with_mapped_columns_exits_0_and_export_lists_the_day() {
    let pinned = pinned_today_at(NaiveTime::from_hms_opt(12, 0, 0).unwrap());
    let worker =
        spawn_worker_with_clock(Db::Sqlite, Faults::default(), SandboxClock::Fixed(pinned)).await;
    run_a_flaky_day(&worker, "clean", 12).await;
    let day = billing_day(pinned);
    keep_completions_within(&worker, day).await;
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill-gbk.csv");
    std::fs::write(&bill, alipay_style_gbk(&worker.sandbox.bill_csv(day))).unwrap();
    let out = dir.path().join("report.csv");
    let (bill_text, out_text, date) = (
        bill.display().to_string(),
        out.display().to_string(),
        day.to_string(),
    );
    let outcome = zhima(
        &worker,
        &[
            "reconcile",
            "--bill",
            &bill_text,
            "--date",
            &date,
            "--out",
            &out_text,
            "--columns",
            "biz_no=业务流水号,transaction_id=商户订单号,time=计费时间",
        ],
    )
    .await;
    assert_eq!(outcome.code, 0, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stdout.contains("statement in GBK"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.trim_end().ends_with("clean"),
        "{}",
        outcome.stdout
    );
    let report = std::fs::read_to_string(&out).unwrap();
    assert_eq!(report, "category,biz_no,transaction_id,detail\n");

    let export = zhima(&worker, &["export", "--date", &date]).await;
    assert_eq!(export.code, 0, "{}", export.stderr);
    let lines: Vec<&str> = export.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "biz_no,transaction_id,external_ref,status,completed_at,relation_rank,recency,relation_score,error_code,error_message,attempts,batch_id,reused_from"
    );
    assert_eq!(lines.len(), 13);
    for row in worker.sandbox.bill_rows() {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&row.biz_no))
            .expect("exported");
        assert!(
            line.contains(&format!(",{},", row.transaction_id)),
            "{line}"
        );
        assert!(line.contains(",succeeded,"), "{line}");
        assert!(line.contains(&format!(",{date} ")), "{line}");
    }
    worker.cleanup().await;
}

#[tokio::test]
async fn a_malformed_statement_line_a_bad_date_or_a_missing_file_exits_1_naming_the_problem() {
    let worker = spawn_worker(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bad.csv");
    std::fs::write(
        &bill,
        "biz_no,transaction_id,app_id,billed_at\nZM1,t1,a,2024-05-21 10:00:00\nZM2,t2,a,21/05/2024\n",
    )
    .unwrap();
    let bill_text = bill.display().to_string();
    let bad_line = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", "2024-05-21"],
    )
    .await;
    assert_eq!(bad_line.code, 1);
    assert!(bad_line.stderr.contains("line 3"), "{}", bad_line.stderr);

    let bad_date = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", "2024-13-01"],
    )
    .await;
    assert_eq!(bad_date.code, 1);
    assert!(
        bad_date.stderr.contains("bad date `2024-13-01`"),
        "{}",
        bad_date.stderr
    );

    let missing = dir.path().join("missing.csv").display().to_string();
    let no_file = zhima(
        &worker,
        &["reconcile", "--bill", &missing, "--date", "2024-05-21"],
    )
    .await;
    assert_eq!(no_file.code, 1);
    assert!(no_file.stderr.contains("missing.csv"), "{}", no_file.stderr);
    worker.cleanup().await;
}

/// A statement billing `rows` queries on `date` (UTC+8), none of them ours.
fn statement_for(date: &str, rows: u32) -> String {
    let mut out = String::from("biz_no,transaction_id,app_id,billed_at\n");
    for n in 0..rows {
        out.push_str(&format!(
            "ZM{}{n:022},other_{n},2014072300007148,{date} 10:{:02}:00\n",
            date.replace('-', ""),
            n % 60
        ));
    }
    out
}

#[tokio::test]
async fn reconcile_of_a_day_the_statement_does_not_cover_exits_1_naming_both_days() {
    let worker = spawn_worker(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(&bill, statement_for("2024-05-22", 40)).unwrap();
    let bill_text = bill.display().to_string();
    let wrong_day = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", "2024-05-21"],
    )
    .await;
    assert_eq!(
        wrong_day.code, 1,
        "{}\n{}",
        wrong_day.stdout, wrong_day.stderr
    );
    assert!(
        wrong_day.stderr.contains("2024-05-22"),
        "{}",
        wrong_day.stderr
    );
    assert!(
        wrong_day.stderr.contains("2024-05-21"),
        "{}",
        wrong_day.stderr
    );

    // Without --date the day checked is yesterday, whatever the clock says:
    // a statement of 2099 is never that day.
    std::fs::write(&bill, statement_for("2099-01-01", 3)).unwrap();
    let default_day = zhima(&worker, &["reconcile", "--bill", &bill_text]).await;
    assert_eq!(default_day.code, 1, "{}", default_day.stdout);
    assert!(
        default_day.stderr.contains("2099-01-01"),
        "{}",
        default_day.stderr
    );

    // One row in the day among 200 is still the wrong statement (< 1 %).
    let mut mostly_other = statement_for("2024-05-22", 200);
    mostly_other.push_str(statement_for("2024-05-21", 1).lines().nth(1).unwrap());
    mostly_other.push('\n');
    std::fs::write(&bill, mostly_other).unwrap();
    let few = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", "2024-05-21"],
    )
    .await;
    assert_eq!(few.code, 1, "{}\n{}", few.stdout, few.stderr);
    assert!(few.stderr.contains("2024-05-22"), "{}", few.stderr);

    // The right day goes through (its rows are not ours: exit 3).
    std::fs::write(&bill, statement_for("2024-05-21", 5)).unwrap();
    let right_day = zhima(
        &worker,
        &["reconcile", "--bill", &bill_text, "--date", "2024-05-21"],
    )
    .await;
    assert_eq!(
        right_day.code, 3,
        "{}\n{}",
        right_day.stdout, right_day.stderr
    );
    worker.cleanup().await;
}

#[tokio::test]
async fn the_report_goes_to_stdout_with_out_dash_or_format_json_alone() {
    let worker = spawn_worker(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let bill = dir.path().join("bill.csv");
    std::fs::write(&bill, statement_for("2024-05-21", 2)).unwrap();
    let bill_text = bill.display().to_string();
    let base = ["reconcile", "--bill", &bill_text, "--date", "2024-05-21"];

    let json = zhima(&worker, &[&base[..], &["--format", "json"]].concat()).await;
    assert_eq!(json.code, 3, "{}", json.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("stdout is the JSON report alone");
    assert_eq!(report["summary"]["billed_not_stored"], 2);
    assert!(json.stderr.contains("2 discrepancies"), "{}", json.stderr);

    let csv = zhima(&worker, &[&base[..], &["--out", "-"]].concat()).await;
    assert_eq!(csv.code, 3, "{}", csv.stderr);
    assert!(
        csv.stdout
            .starts_with("category,biz_no,transaction_id,detail\n"),
        "{}",
        csv.stdout
    );
    assert_eq!(csv.stdout.lines().count(), 3, "{}", csv.stdout);
    let stray = Path::new(env!("CARGO_MANIFEST_DIR")).join("-");
    let created = stray.exists();
    let _ = std::fs::remove_file(&stray);
    assert!(!created, "--out - created a file named `-`");

    let json_dash = zhima(
        &worker,
        &[&base[..], &["--out", "-", "--format", "json"]].concat(),
    )
    .await;
    let report: serde_json::Value = serde_json::from_str(&json_dash.stdout).expect("JSON");
    assert_eq!(report["date"], "2024-05-21");
    worker.cleanup().await;
}
