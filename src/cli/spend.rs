//! `spend`: what the worker cost, per statement day (the reconciliation
//! statement's day, `reconcile.utc_offset_hours`): queries billed (from the
//! ledger: succeeded rows completed that day, as `reconcile` counts them),
//! jobs answered from a stored answer (answer reuse), units of the daily
//! budget used, jobs refused for budget, and the limit in
//! force. Read-only.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{NaiveDate, TimeDelta, Utc};
use clap::Args;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::Settings;
use crate::reconcile::Day;
use crate::spend::StatementDay;
use crate::store::{JobStore, SpendDayRow};

/// The longest `--days`: a year (and a leap day).
const MAX_DAYS: u32 = 366;

#[derive(Debug, Args)]
pub struct SpendArgs {
    /// The last statement day shown, YYYY-MM-DD (default: today in reconcile.utc_offset_hours).
    #[arg(long, value_name = "YYYY-MM-DD", value_parser = parse_date)]
    date: Option<NaiveDate>,
    /// How many days, ending with --date (1 to 366).
    #[arg(long, value_name = "N", default_value_t = 7,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
    days: u32,
    /// One JSON array instead of the table.
    #[arg(long)]
    json: bool,
}

/// `--date`: a calendar date, YYYY-MM-DD.
fn parse_date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("'{text}' is not a date: write YYYY-MM-DD, e.g. 2026-12-01"))
}

/// One statement day of the report. New columns are new fields and a new
/// entry in [`SpendRow::cells`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SpendRow {
    pub(crate) day: String,
    pub(crate) billed: i64,
    /// Jobs answered from a stored answer (answer reuse): not billed.
    pub(crate) reused: i64,
    pub(crate) budget_used: i64,
    pub(crate) refused_for_budget: i64,
    /// None: no budget was enforced that day.
    pub(crate) daily_limit: Option<i64>,
}

impl SpendRow {
    fn new(day: String, billed: i64, reused: i64, budget: Option<&SpendDayRow>) -> Self {
        Self {
            day,
            billed,
            reused,
            budget_used: budget.map_or(0, |row| row.used),
            refused_for_budget: budget.map_or(0, |row| row.refused),
            daily_limit: budget.map(|row| row.daily_limit).filter(|limit| *limit > 0),
        }
    }

    /// The table's columns, in order: header and text.
    fn cells(&self) -> Vec<(&'static str, String)> {
        vec![
            ("day", self.day.clone()),
            ("billed", self.billed.to_string()),
            ("reused", self.reused.to_string()),
            ("budget_used", self.budget_used.to_string()),
            ("refused_for_budget", self.refused_for_budget.to_string()),
            (
                "daily_limit",
                self.daily_limit
                    .map_or_else(|| "-".to_owned(), |limit| limit.to_string()),
            ),
        ]
    }
}

pub(super) async fn spend(settings: &Settings, args: SpendArgs) -> anyhow::Result<ExitCode> {
    let offset = settings.reconcile.utc_offset_hours;
    let last = args
        .date
        .unwrap_or_else(|| StatementDay::of(Utc::now(), offset).date);
    let first = last
        .checked_sub_signed(TimeDelta::days(i64::from(args.days) - 1))
        .context("--days reaches before the first representable date")?;
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("opening the database")?;
    let rows = spend_rows(&store, first, last, offset).await?;
    let mut out = std::io::stdout().lock();
    match args.json {
        true => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
        false => out.write_all(render_table(&rows).as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Every day from `first` to `last`, empty days included.
pub(crate) async fn spend_rows(
    store: &JobStore,
    first: NaiveDate,
    last: NaiveDate,
    utc_offset_hours: i8,
) -> anyhow::Result<Vec<SpendRow>> {
    let key = |date: NaiveDate| date.format("%Y-%m-%d").to_string();
    let budget = store
        .spend_days(&key(first), &key(last))
        .await
        .context("reading the budget tables")?;
    let mut rows = Vec::new();
    for date in first.iter_days().take_while(|date| *date <= last) {
        let day = Day::new(date, utc_offset_hours)?;
        let billed = store
            .count_billable(day.start(), day.end())
            .await
            .context("counting the day's billed queries")?;
        let reused = store
            .count_reused(day.start(), day.end())
            .await
            .context("counting the day's reused answers")?;
        let day_key = key(date);
        let spent = budget.iter().find(|row| row.day == day_key);
        rows.push(SpendRow::new(
            day_key,
            i64::try_from(billed).unwrap_or(i64::MAX),
            i64::try_from(reused).unwrap_or(i64::MAX),
            spent,
        ));
    }
    Ok(rows)
}

/// Right-aligned columns under their headers.
pub(crate) fn render_table(rows: &[SpendRow]) -> String {
    let lines: Vec<Vec<(&'static str, String)>> = rows.iter().map(SpendRow::cells).collect();
    let headers: Vec<&'static str> = match lines.first() {
        Some(cells) => cells.iter().map(|(header, _)| *header).collect(),
        None => return "no days\n".to_owned(),
    };
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(column, header)| {
            lines
                .iter()
                .map(|cells| cells[column].1.len())
                .chain([header.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    let row = |cells: Vec<&str>, text: &mut String| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:>width$}"))
            .collect();
        text.push_str(padded.join("  ").trim_end());
        text.push('\n');
    };
    row(headers.clone(), &mut text);
    for cells in &lines {
        row(
            cells.iter().map(|(_, value)| value.as_str()).collect(),
            &mut text,
        );
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn dates_must_be_calendar_dates() {
        assert_eq!(
            parse_date("2026-12-01").unwrap(),
            NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
        );
        for bad in [
            "2026-02-30",
            "20261201",
            "yesterday",
            "",
            "2026-12-01T00:00",
        ] {
            let error = parse_date(bad).unwrap_err();
            assert!(error.contains("YYYY-MM-DD"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_table_aligns_its_columns_and_marks_days_without_a_limit() {
        let budget = SpendDayRow {
            day: "2026-12-01".into(),
            used: 100,
            billed_units: 100,
            held: 0,
            refused: 12,
            daily_limit: 100,
        };
        let rows = [
            SpendRow::new("2026-11-30".into(), 7, 3, None),
            SpendRow::new("2026-12-01".into(), 100, 0, Some(&budget)),
        ];
        assert_eq!(
            render_table(&rows),
            "       day  billed  reused  budget_used  refused_for_budget  daily_limit\n\
             2026-11-30       7       3            0                   0            -\n\
             2026-12-01     100       0          100                  12          100\n"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[1]["refused_for_budget"], 12);
        assert_eq!(json[0]["reused"], 3);
        assert_eq!(json[0]["daily_limit"], serde_json::Value::Null);
        assert_eq!(render_table(&[]), "no days\n");
    }
}
