//! The nightly reconciliation: the upstream's statement of billed queries
//! against our stored results, by `biz_no`, for one day in the reconcile zone
//! (`reconcile.utc_offset_hours`, UTC+8 by default, the zone Alipay bills in).
//!
//! How it stays within bounded memory whatever the statement's size:
//!
//! 1. Our side of the day (`succeeded` rows completed in the day) is streamed
//!    from the database into a compact sorted index ([`index`]): 32 bytes per
//!    row, so a million-row day takes about 32 MB.
//! 2. The statement is streamed row by row ([`statement`]). A row whose biz_no
//!    and transaction_id match our index is counted and forgotten. The rest
//!    (normally few) are batched and settled by exact database lookups plus
//!    the `upstream_calls` ledger ([`judge`]). Statement duplicates are found
//!    through the index's "seen" flags and, for rows that are not ours, sets
//!    of 16-byte biz_no keys and 8-byte transaction_id hashes: those grow
//!    with the statement rows we have no row for, the one part that is not
//!    bounded by our own volume.
//! 3. Our rows still unseen are streamed again from the database and reported
//!    as stored but not billed.
//!
//! Discrepancies are spilled to temporary files as found ([`report`]), so the
//! report's size does not weigh on memory either.
//!
//! Statement rows billed outside the day are counted separately
//! (`statement_rows_outside_day`) and not checked: a statement covering
//! several days is reconciled one day at a time. A statement with rows of
//! which none (or under 1 %) fall in the day is the wrong statement for it
//! (or the wrong `--date`): that is an error naming the statement's days,
//! never a clean report.
//!
//! This module decides categories; it runs no SQL of its own (that is
//! `store`) and speaks AMQP only through `crate::queue` for `--repair`.

pub(crate) mod export;
mod index;
mod judge;
pub(crate) mod repair;
pub(crate) mod report;
pub(crate) mod statement;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeDelta, Utc};
use futures_util::TryStreamExt;

use crate::queue::QueueError;
use crate::store::{JobStore, StoreError, StoredCheck};
use index::{BizKey, Lookup, OurIndex};
use judge::{Clock, Found, Pending, Verdict};
pub(crate) use report::{Category, Entry, Findings, ReportFormat, ReportHeader, Summary};
pub(crate) use statement::{ColumnMap, EncodingChoice, Statement, TextEncoding};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("cannot read the statement {path}")]
    ReadStatement {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the statement {path} has no header line")]
    NoHeader { path: PathBuf },
    #[error(
        "statement line {line}: the header has no column `{column}` (found: {found}); \
         name the columns with --columns biz_no=…,transaction_id=…,time=…"
    )]
    MissingColumn {
        line: u64,
        column: String,
        found: String,
    },
    #[error("statement line {line}: {reason}")]
    MalformedLine { line: u64, reason: String },
    #[error("bad date `{0}`: expected YYYY-MM-DD")]
    BadDate(String),
    #[error("bad --columns `{0}`: expected biz_no=NAME,transaction_id=NAME,time=NAME")]
    BadColumns(String),
    #[error("reconcile.utc_offset_hours {0} is not a valid offset")]
    BadOffset(i8),
    #[error(
        "the statement bills {statement_days}, but the day checked is {checked} \
         ({in_day} of its {rows} rows in it): pass --date with the statement's day"
    )]
    WrongDay {
        checked: String,
        statement_days: String,
        in_day: u64,
        rows: u64,
    },
    #[error("could not write the report's temporary files")]
    Spill(#[source] std::io::Error),
    #[error("could not write the output")]
    Output(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// One calendar day in the reconcile zone, as a half-open UTC interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Day {
    pub(crate) date: NaiveDate,
    pub(crate) offset: FixedOffset,
}

impl Day {
    pub(crate) fn new(date: NaiveDate, utc_offset_hours: i8) -> Result<Self, ReconcileError> {
        let offset = FixedOffset::east_opt(i32::from(utc_offset_hours) * 3600)
            .ok_or(ReconcileError::BadOffset(utc_offset_hours))?;
        Ok(Self { date, offset })
    }

    /// `--date YYYY-MM-DD`.
    pub(crate) fn parse(text: &str, utc_offset_hours: i8) -> Result<Self, ReconcileError> {
        let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map_err(|_| ReconcileError::BadDate(text.to_owned()))?;
        Self::new(date, utc_offset_hours)
    }

    /// The default `--date`: the day before `now`'s date in the zone.
    pub(crate) fn yesterday(
        utc_offset_hours: i8,
        now: DateTime<Utc>,
    ) -> Result<Self, ReconcileError> {
        let today = Self::new(now.date_naive(), utc_offset_hours)?;
        let local_today = now.with_timezone(&today.offset).date_naive();
        let date = local_today
            .pred_opt()
            .ok_or_else(|| ReconcileError::BadDate(local_today.to_string()))?;
        Self::new(date, utc_offset_hours)
    }

    pub(crate) fn start(&self) -> DateTime<Utc> {
        let local_midnight = self.date.and_time(NaiveTime::MIN);
        (local_midnight - TimeDelta::seconds(i64::from(self.offset.local_minus_utc()))).and_utc()
    }

    pub(crate) fn end(&self) -> DateTime<Utc> {
        self.start() + TimeDelta::days(1)
    }

    pub(crate) fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start() <= at && at < self.end()
    }

    pub(crate) fn header(&self) -> ReportHeader {
        ReportHeader {
            date: self.date.format("%Y-%m-%d").to_string(),
            utc_offset_hours: i8::try_from(self.offset.local_minus_utc() / 3600).unwrap_or(0),
        }
    }
}

/// Everything one reconciliation needs besides the store.
#[derive(Debug, Clone)]
pub(crate) struct ReconcileOptions {
    pub(crate) bill: PathBuf,
    pub(crate) day: Day,
    pub(crate) columns: ColumnMap,
    pub(crate) encoding: EncodingChoice,
    /// How long after billing the upstream still replays an answer unbilled
    /// (`upstream.transaction_validity_s` minus `transaction_margin_s`).
    pub(crate) replay_window: TimeDelta,
    pub(crate) now: DateTime<Utc>,
}

/// The result: counts, the spilled discrepancies, and the transaction_ids
/// whose billed answer `--repair` may still recover.
pub(crate) struct Reconciliation {
    pub(crate) day: Day,
    pub(crate) encoding: TextEncoding,
    pub(crate) findings: Findings,
    pub(crate) repairable: Vec<String>,
}

impl Reconciliation {
    pub(crate) fn summary(&self) -> &Summary {
        &self.findings.summary
    }

    pub(crate) fn is_clean(&self) -> bool {
        self.summary().discrepancies() == 0
    }

    /// The table printed on stdout.
    pub(crate) fn render_summary(&self) -> String {
        report::render_summary(&self.day.header(), self.encoding.name(), self.summary())
    }

    /// The full report (every discrepancy) in `format`.
    pub(crate) fn write_report(
        &self,
        format: ReportFormat,
        out: &mut dyn std::io::Write,
    ) -> std::io::Result<()> {
        match format {
            ReportFormat::Json => self.findings.write_json(&self.day.header(), out),
            ReportFormat::Csv => self.findings.write_csv(out),
        }
    }
}

/// Statement rows settled per round of database lookups.
const BATCH: usize = 500;
/// How often (in statement rows) progress is reported.
const PROGRESS_EVERY: u64 = 16_384;

/// Runs the three passes described in the module docs. `progress` gets
/// `(bytes read, statement size)` now and then.
pub(crate) async fn reconcile(
    store: &JobStore,
    options: &ReconcileOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Reconciliation, ReconcileError> {
    let (start, end) = (options.day.start(), options.day.end());
    let mut statement = Statement::open(
        &options.bill,
        options.encoding,
        &options.columns,
        options.day.offset,
    )?;
    let mut index = load_index(store, start, end).await?;
    let mut pass = Pass::new(store, options)?;
    pass.findings.summary.stored_rows = u64::try_from(index.rows()).unwrap_or(u64::MAX);
    let mut other_days = StatementDays::default();
    while let Some(row) = statement.next_row()? {
        if !options.day.contains(row.billed_at) {
            other_days.add(
                row.billed_at
                    .with_timezone(&options.day.offset)
                    .date_naive(),
            );
        }
        pass.check(&mut index, row).await?;
        if pass.findings.summary.statement_rows % PROGRESS_EVERY == 0 {
            progress(statement.bytes_read(), statement.total_bytes());
        }
    }
    progress(statement.total_bytes(), statement.total_bytes());
    check_day_covered(&options.day, &pass.findings.summary, &other_days)?;
    pass.settle().await?;
    if index.unseen() > 0 {
        pass.report_unbilled(&index, start, end).await?;
    }
    pass.findings.flush().map_err(ReconcileError::Spill)?;
    Ok(Reconciliation {
        day: options.day,
        encoding: statement.encoding(),
        findings: pass.findings,
        repairable: pass.repairable,
    })
}

/// Under this share of its rows in the day (1 %), a statement is taken as
/// another day's.
const MIN_IN_DAY_PERCENT: u64 = 1;
/// Days listed one by one in the wrong-day error; more are shown as a range.
const DAYS_LISTED: usize = 8;

/// The local days of the statement rows outside the day checked: a count per
/// day for the first few days, then only the range (bounded memory).
#[derive(Debug, Default)]
struct StatementDays {
    counts: BTreeMap<NaiveDate, u64>,
    first: Option<NaiveDate>,
    last: Option<NaiveDate>,
    is_truncated: bool,
}

impl StatementDays {
    fn add(&mut self, date: NaiveDate) {
        self.first = Some(self.first.map_or(date, |first| first.min(date)));
        self.last = Some(self.last.map_or(date, |last| last.max(date)));
        if let Some(count) = self.counts.get_mut(&date) {
            *count += 1;
        } else if self.counts.len() < DAYS_LISTED {
            self.counts.insert(date, 1);
        } else {
            self.is_truncated = true;
        }
    }
}

/// Refuses a statement that does not cover the day: without this, the wrong
/// `--date` (or the default, yesterday, run on today's statement) would
/// report every row "outside the day" and exit 0, a false all-clear. An
/// empty statement (a day without billed queries) is not refused.
fn check_day_covered(
    day: &Day,
    summary: &Summary,
    other_days: &StatementDays,
) -> Result<(), ReconcileError> {
    let rows = summary.statement_rows;
    let in_day = rows.saturating_sub(summary.statement_rows_outside_day);
    if rows == 0 || in_day.saturating_mul(100) >= rows.saturating_mul(MIN_IN_DAY_PERCENT) {
        return Ok(());
    }
    let plural = |n: u64| if n == 1 { "row" } else { "rows" };
    let mut listed: Vec<String> = other_days
        .counts
        .iter()
        .map(|(date, count)| format!("{date} ({count} {})", plural(*count)))
        .collect();
    if other_days.is_truncated
        && let (Some(first), Some(last)) = (other_days.first, other_days.last)
    {
        listed.push(format!("and other days between {first} and {last}"));
    }
    let header = day.header();
    let sign = if header.utc_offset_hours < 0 {
        '-'
    } else {
        '+'
    };
    Err(ReconcileError::WrongDay {
        checked: format!(
            "{} (UTC{sign}{:02}:00)",
            header.date,
            header.utc_offset_hours.unsigned_abs()
        ),
        statement_days: listed.join(", "),
        in_day,
        rows,
    })
}

async fn load_index(
    store: &JobStore,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<OurIndex, ReconcileError> {
    let expected = store.count_billable(start, end).await?;
    let mut index = OurIndex::with_capacity(usize::try_from(expected).unwrap_or(0));
    let mut rows = store.billable_rows(start, end);
    while let Some(row) = rows.try_next().await? {
        index.push(&row.biz_no, &row.transaction_id);
    }
    index.seal();
    Ok(index)
}

/// The state of one pass over the statement.
struct Pass<'a> {
    store: &'a JobStore,
    day: Day,
    clock: Clock,
    findings: Findings,
    /// Keys of statement biz_nos that are not ours, to catch their repeats.
    foreign_biz: HashSet<BizKey>,
    /// Hashed transaction_ids of the rows sent to lookups: a second biz_no
    /// for one of them is "one transaction_id with two biz_nos".
    unsettled_transactions: HashSet<u64>,
    batch: Vec<Pending>,
    repairable: Vec<String>,
}

impl<'a> Pass<'a> {
    fn new(store: &'a JobStore, options: &ReconcileOptions) -> Result<Self, ReconcileError> {
        Ok(Self {
            store,
            day: options.day,
            clock: Clock {
                now: options.now,
                replay_window: options.replay_window,
            },
            findings: Findings::create().map_err(ReconcileError::Spill)?,
            foreign_biz: HashSet::new(),
            unsettled_transactions: HashSet::new(),
            batch: Vec::with_capacity(BATCH),
            repairable: Vec::new(),
        })
    }

    async fn check(
        &mut self,
        index: &mut OurIndex,
        row: &statement::StatementRow,
    ) -> Result<(), ReconcileError> {
        let summary = &mut self.findings.summary;
        summary.statement_rows += 1;
        if !self.day.contains(row.billed_at) {
            summary.statement_rows_outside_day += 1;
            return Ok(());
        }
        let biz = BizKey::of(&row.biz_no);
        let lookup = index.check(biz, index::hash(&row.transaction_id));
        let is_repeat = match lookup {
            Lookup::Matched => {
                summary.matched += 1;
                return Ok(());
            }
            Lookup::SeenAgain => true,
            Lookup::NotOurs => !self.foreign_biz.insert(biz),
            Lookup::OtherTransaction => false,
        };
        if is_repeat {
            let detail = format!(
                "line {}: this biz_no is already billed on an earlier line",
                row.line
            );
            return self.add(Category::DuplicateBizNo, row, detail);
        }
        if !self
            .unsettled_transactions
            .insert(index::hash(&row.transaction_id))
        {
            let detail = format!(
                "line {}: one transaction_id with two biz_nos: it is already billed on an \
                 earlier line under another biz_no",
                row.line
            );
            return self.add(Category::DuplicateBizNo, row, detail);
        }
        self.batch.push(Pending {
            line: row.line,
            biz_no: row.biz_no.clone(),
            transaction_id: row.transaction_id.clone(),
            billed_at: row.billed_at,
        });
        if self.batch.len() >= BATCH {
            self.settle().await?;
        }
        Ok(())
    }

    fn add(
        &mut self,
        category: Category,
        row: &statement::StatementRow,
        detail: String,
    ) -> Result<(), ReconcileError> {
        let entry = Entry {
            biz_no: row.biz_no.clone(),
            transaction_id: row.transaction_id.clone(),
            detail,
        };
        self.findings
            .add(category, &entry)
            .map_err(ReconcileError::Spill)
    }

    /// Looks the batched rows up and records their verdicts.
    async fn settle(&mut self) -> Result<(), ReconcileError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let lookups = Lookups::fetch(self.store, &batch).await?;
        for row in &batch {
            match judge::judge(row, lookups.found(row), self.clock) {
                Verdict::MatchedOtherDay => {
                    self.findings.summary.matched += 1;
                    self.findings.summary.matched_completed_other_day += 1;
                }
                Verdict::Erased => self.findings.summary.erased += 1,
                Verdict::Discrepancy {
                    category,
                    entry,
                    is_repairable,
                } => {
                    if is_repairable {
                        self.repairable.push(entry.transaction_id.clone());
                    }
                    self.findings
                        .add(category, &entry)
                        .map_err(ReconcileError::Spill)?;
                }
            }
        }
        self.batch = batch;
        self.batch.clear();
        Ok(())
    }

    /// The second read of our side: every row the statement did not bill.
    async fn report_unbilled(
        &mut self,
        index: &OurIndex,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(), ReconcileError> {
        let mut rows = self.store.billable_rows(start, end);
        while let Some(row) = rows.try_next().await? {
            if index.is_seen(BizKey::of(&row.biz_no)) {
                continue;
            }
            let detail = if row.first_call_before_day {
                "succeeded but not on the statement; its first call was before the day, \
                 so the upstream may have billed it on the previous day's statement"
            } else {
                "succeeded but not on the statement"
            };
            let entry = Entry {
                biz_no: row.biz_no,
                transaction_id: row.transaction_id,
                detail: detail.to_owned(),
            };
            self.findings
                .add(Category::StoredNotBilled, &entry)
                .map_err(ReconcileError::Spill)?;
        }
        Ok(())
    }
}

/// The exact lookups for one batch.
struct Lookups {
    by_biz_no: HashMap<String, StoredCheck>,
    by_transaction_id: HashMap<String, StoredCheck>,
    ledger_calls: HashMap<String, i64>,
    /// biz_no → transaction_id of the rows erased on request.
    erased: HashMap<String, String>,
}

impl Lookups {
    async fn fetch(store: &JobStore, batch: &[Pending]) -> Result<Self, ReconcileError> {
        let biz_nos: Vec<String> = batch.iter().map(|row| row.biz_no.clone()).collect();
        let transaction_ids: Vec<String> =
            batch.iter().map(|row| row.transaction_id.clone()).collect();
        let by_biz_no = store
            .checks_by_biz_no(&biz_nos)
            .await?
            .into_iter()
            .filter_map(|check| Some((check.biz_no.clone()?, check)))
            .collect();
        let by_transaction_id = store
            .checks_by_transaction_id(&transaction_ids)
            .await?
            .into_iter()
            .map(|check| (check.transaction_id.clone(), check))
            .collect();
        let ledger_calls = store
            .ledger_counts(&transaction_ids)
            .await?
            .into_iter()
            .map(|count| (count.transaction_id, count.calls))
            .collect();
        let erased = store
            .erased_by_biz_no(&biz_nos)
            .await?
            .into_iter()
            .collect();
        Ok(Self {
            by_biz_no,
            by_transaction_id,
            ledger_calls,
            erased,
        })
    }

    fn found(&self, row: &Pending) -> Found<'_> {
        Found {
            by_biz_no: self.by_biz_no.get(&row.biz_no),
            by_transaction_id: self.by_transaction_id.get(&row.transaction_id),
            ledger_calls: self
                .ledger_calls
                .get(&row.transaction_id)
                .copied()
                .unwrap_or(0),
            erased: self.erased.get(&row.biz_no).map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_utc8_day_starts_at_16_00_utc_the_day_before() {
        let day = Day::parse("2024-05-21", 8).unwrap();
        assert_eq!(day.start().to_rfc3339(), "2024-05-20T16:00:00+00:00");
        assert_eq!(day.end().to_rfc3339(), "2024-05-21T16:00:00+00:00");
        assert!(day.contains(day.start()));
        assert!(!day.contains(day.end()));
        assert!(Day::parse("2024-02-30", 8).is_err());
        assert!(Day::parse("yesterday", 8).is_err());
    }

    #[test]
    fn a_statement_mostly_of_other_days_is_refused_naming_them() {
        let day = Day::parse("2024-05-21", 8).unwrap();
        let mut days = StatementDays::default();
        let next = NaiveDate::from_ymd_opt(2024, 5, 22).unwrap();
        for _ in 0..199 {
            days.add(next);
        }
        let summary = |rows, outside| Summary {
            statement_rows: rows,
            statement_rows_outside_day: outside,
            ..Summary::default()
        };
        let error = check_day_covered(&day, &summary(200, 199), &days).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("2024-05-22 (199 rows)"), "{text}");
        assert!(text.contains("2024-05-21 (UTC+08:00)"), "{text}");
        assert!(text.contains("1 of its 200 rows"), "{text}");
        assert!(check_day_covered(&day, &summary(100, 99), &days).is_ok());
        assert!(check_day_covered(&day, &summary(0, 0), &days).is_ok());

        let mut many = StatementDays::default();
        for offset in 0..30 {
            many.add(next + TimeDelta::days(offset));
        }
        let text = check_day_covered(&day, &summary(30, 30), &many)
            .unwrap_err()
            .to_string();
        assert!(text.contains("between 2024-05-22 and 2024-06-20"), "{text}");
    }

    #[test]
    fn yesterday_is_taken_in_the_reconcile_zone() {
        let now = DateTime::parse_from_rfc3339("2024-05-21T17:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            Day::yesterday(8, now).unwrap().date.to_string(),
            "2024-05-21"
        );
        assert_eq!(
            Day::yesterday(0, now).unwrap().date.to_string(),
            "2024-05-20"
        );
        assert_eq!(
            Day::yesterday(-5, now).unwrap().date.to_string(),
            "2024-05-20"
        );
    }
}
