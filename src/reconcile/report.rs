//! The reconciliation's findings: counts per category, and the discrepancies
//! themselves, spilled to temporary files as they are found so that a
//! statement full of surprises cannot fill memory. At the end they are
//! written as one JSON object or one CSV table, and a summary table is
//! rendered for stdout.
//!
//! Entries carry `biz_no`, `transaction_id` and a `detail` text only (neither
//! key is personal data). Matched rows are only counted. This module writes
//! files; it does not decide categories.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::export::spreadsheet_safe;

/// A kind of discrepancy; each has its own array in the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Category {
    /// The upstream billed a biz_no we hold no `succeeded` row for: money
    /// spent on an answer we do not have.
    BilledNotStored,
    /// A `succeeded` row of ours the statement does not bill.
    StoredNotBilled,
    /// A biz_no billed twice, or one transaction_id billed under two biz_nos.
    DuplicateBizNo,
    /// The statement's transaction_id for a biz_no is not ours.
    TransactionIdMismatch,
}

impl Category {
    pub(crate) const ALL: [Category; 4] = [
        Category::BilledNotStored,
        Category::StoredNotBilled,
        Category::DuplicateBizNo,
        Category::TransactionIdMismatch,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::BilledNotStored => "billed_not_stored",
            Self::StoredNotBilled => "stored_not_billed",
            Self::DuplicateBizNo => "duplicate_biz_no",
            Self::TransactionIdMismatch => "transaction_id_mismatch",
        }
    }

    fn slot(self) -> usize {
        match self {
            Self::BilledNotStored => 0,
            Self::StoredNotBilled => 1,
            Self::DuplicateBizNo => 2,
            Self::TransactionIdMismatch => 3,
        }
    }
}

/// One discrepancy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) biz_no: String,
    pub(crate) transaction_id: String,
    pub(crate) detail: String,
}

/// Counts for the report's `summary` and the stdout table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub(crate) matched: u64,
    pub(crate) billed_not_stored: u64,
    pub(crate) stored_not_billed: u64,
    pub(crate) duplicate_biz_no: u64,
    pub(crate) transaction_id_mismatch: u64,
    /// Of `matched`: rows whose row completed on another day than billed
    /// (a retry across midnight).
    pub(crate) matched_completed_other_day: u64,
    /// Billed rows erased on request since (`zhima-worker erase`): their
    /// tombstone matches the statement; not a discrepancy.
    #[serde(default)]
    pub(crate) erased: u64,
    /// Every data row of the statement, in the day or not.
    pub(crate) statement_rows: u64,
    /// Statement rows billed outside the day: counted here, not checked.
    pub(crate) statement_rows_outside_day: u64,
    /// Our `succeeded` rows completed in the day.
    pub(crate) stored_rows: u64,
}

impl Summary {
    pub(crate) fn count(&self, category: Category) -> u64 {
        match category {
            Category::BilledNotStored => self.billed_not_stored,
            Category::StoredNotBilled => self.stored_not_billed,
            Category::DuplicateBizNo => self.duplicate_biz_no,
            Category::TransactionIdMismatch => self.transaction_id_mismatch,
        }
    }

    fn count_mut(&mut self, category: Category) -> &mut u64 {
        match category {
            Category::BilledNotStored => &mut self.billed_not_stored,
            Category::StoredNotBilled => &mut self.stored_not_billed,
            Category::DuplicateBizNo => &mut self.duplicate_biz_no,
            Category::TransactionIdMismatch => &mut self.transaction_id_mismatch,
        }
    }

    pub(crate) fn discrepancies(&self) -> u64 {
        Category::ALL.iter().map(|c| self.count(*c)).sum()
    }
}

/// The discrepancies found so far, one JSON line each in a per-category file
/// under a private temporary directory (removed on drop).
pub(crate) struct Findings {
    dir: PathBuf,
    writers: Vec<BufWriter<File>>,
    pub(crate) summary: Summary,
}

impl Findings {
    /// The directory is created 0700 and its files 0600 (whatever the
    /// umask): the entries name our customers' transactions.
    pub(crate) fn create() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "zhima-reconcile-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let mut findings = Self {
            dir,
            writers: Vec::with_capacity(Category::ALL.len()),
            summary: Summary::default(),
        };
        for category in Category::ALL {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(findings.path_of(category))?;
            findings.writers.push(BufWriter::new(file));
        }
        Ok(findings)
    }

    fn path_of(&self, category: Category) -> PathBuf {
        self.dir.join(format!("{}.jsonl", category.as_str()))
    }

    pub(crate) fn add(&mut self, category: Category, entry: &Entry) -> io::Result<()> {
        *self.summary.count_mut(category) += 1;
        let writer = self
            .writers
            .get_mut(category.slot())
            .ok_or_else(|| io::Error::other("no spill file for the category"))?;
        serde_json::to_writer(&mut *writer, entry)?;
        writer.write_all(b"\n")
    }

    /// Flushes the spill files so they can be read back.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.writers.iter_mut().try_for_each(Write::flush)
    }

    /// Reads one category back, in the order found.
    pub(crate) fn entries(
        &self,
        category: Category,
    ) -> io::Result<impl Iterator<Item = io::Result<Entry>>> {
        let file = BufReader::new(File::open(self.path_of(category))?);
        Ok(file.lines().map(|line| {
            let line = line?;
            serde_json::from_str(&line).map_err(io::Error::from)
        }))
    }

    /// The JSON report: one object, `summary` then one array per category.
    pub(crate) fn write_json(&self, header: &ReportHeader, out: &mut dyn Write) -> io::Result<()> {
        write!(
            out,
            "{{\"date\":{},\"utc_offset_hours\":{},\"summary\":{}",
            serde_json::to_string(&header.date)?,
            header.utc_offset_hours,
            serde_json::to_string(&self.summary)?
        )?;
        for category in Category::ALL {
            write!(out, ",\n\"{}\":[", category.as_str())?;
            for (at, entry) in self.entries(category)?.enumerate() {
                let separator = if at == 0 { "\n" } else { ",\n" };
                write!(out, "{separator}{}", serde_json::to_string(&entry?)?)?;
            }
            out.write_all(b"]")?;
        }
        out.write_all(b"}\n")
    }

    /// The CSV report: `category,biz_no,transaction_id,detail`, grouped by
    /// category; cells that would start a spreadsheet formula get a leading
    /// `'` (see `export`).
    pub(crate) fn write_csv(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut writer = csv::Writer::from_writer(out);
        writer.write_record(["category", "biz_no", "transaction_id", "detail"])?;
        for category in Category::ALL {
            for entry in self.entries(category)? {
                let entry = entry?;
                writer.write_record([
                    category.as_str(),
                    &spreadsheet_safe(&entry.biz_no),
                    &spreadsheet_safe(&entry.transaction_id),
                    &spreadsheet_safe(&entry.detail),
                ])?;
            }
        }
        writer.flush()
    }
}

impl Drop for Findings {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the report says about its own scope.
#[derive(Debug, Clone)]
pub(crate) struct ReportHeader {
    pub(crate) date: String,
    pub(crate) utc_offset_hours: i8,
}

/// `--format`; without it, a `.json` output file means JSON, anything else CSV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    Csv,
    Json,
}

impl ReportFormat {
    pub(crate) fn for_path(path: &Path) -> Self {
        let is_json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        if is_json { Self::Json } else { Self::Csv }
    }
}

/// The stdout table: scope, then one line per category, counts right-aligned.
pub(crate) fn render_summary(header: &ReportHeader, encoding: &str, summary: &Summary) -> String {
    let mut rows: Vec<(String, u64)> = vec![
        ("statement rows".into(), summary.statement_rows),
        (
            "  outside the day (not checked)".into(),
            summary.statement_rows_outside_day,
        ),
        (
            "stored rows (succeeded in the day)".into(),
            summary.stored_rows,
        ),
        // The day's bill side by side: the statement's and the worker's
        // (`zhima-worker spend` shows the same worker count per day).
        (
            "billed in the day: statement".into(),
            summary
                .statement_rows
                .saturating_sub(summary.statement_rows_outside_day),
        ),
        ("billed in the day: worker".into(), summary.stored_rows),
        ("matched".into(), summary.matched),
        (
            "  of which completed on another day".into(),
            summary.matched_completed_other_day,
        ),
        ("erased on request (tombstone)".into(), summary.erased),
    ];
    rows.extend(
        Category::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), summary.count(*c))),
    );
    let label_width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let number_width = rows
        .iter()
        .map(|(_, n)| n.to_string().len())
        .max()
        .unwrap_or(1);
    let sign = if header.utc_offset_hours < 0 {
        '-'
    } else {
        '+'
    };
    let mut out = format!(
        "reconcile {} (UTC{sign}{:02}:00), statement in {encoding}\n",
        header.date,
        header.utc_offset_hours.unsigned_abs()
    );
    for (label, number) in rows {
        let _ = writeln!(out, "{label:<label_width$}  {number:>number_width$}");
    }
    let verdict = match summary.discrepancies() {
        0 => "clean".to_owned(),
        n => format!("{n} discrepancies"),
    };
    let _ = writeln!(out, "{verdict}");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            biz_no: format!("ZM{n}"),
            transaction_id: format!("t{n}"),
            detail: "why, \"quoted\"".into(),
        }
    }

    #[test]
    fn the_json_report_is_one_object_with_a_summary_and_an_array_per_category() {
        let mut findings = Findings::create().unwrap();
        findings.summary.matched = 7;
        findings.add(Category::BilledNotStored, &entry(1)).unwrap();
        findings.add(Category::BilledNotStored, &entry(2)).unwrap();
        findings.add(Category::DuplicateBizNo, &entry(3)).unwrap();
        findings.flush().unwrap();
        let header = ReportHeader {
            date: "2024-05-21".into(),
            utc_offset_hours: 8,
        };
        let mut out = Vec::new();
        findings.write_json(&header, &mut out).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(report["summary"]["matched"], 7);
        assert_eq!(report["summary"]["billed_not_stored"], 2);
        assert_eq!(report["billed_not_stored"][1]["biz_no"], "ZM2");
        assert_eq!(report["duplicate_biz_no"][0]["transaction_id"], "t3");
        assert_eq!(report["stored_not_billed"], serde_json::json!([]));
        assert_eq!(report["transaction_id_mismatch"], serde_json::json!([]));

        let mut csv = Vec::new();
        findings.write_csv(&mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.contains("duplicate_biz_no,ZM3,t3,\"why, \"\"quoted\"\"\""),
            "{csv}"
        );
        let dir = findings.dir.clone();
        drop(findings);
        assert!(!dir.exists(), "spill files are removed");
    }

    #[test]
    fn the_spill_directory_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let findings = Findings::create().unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&findings.dir), 0o700, "the work directory");
        for category in Category::ALL {
            assert_eq!(mode(&findings.path_of(category)), 0o600, "{category:?}");
        }
    }

    #[test]
    fn report_csv_cells_cannot_start_a_spreadsheet_formula() {
        let mut findings = Findings::create().unwrap();
        let hostile = Entry {
            biz_no: "=cmd|' /C calc'!A0".into(),
            transaction_id: "t1".into(),
            detail: "plain".into(),
        };
        findings.add(Category::BilledNotStored, &hostile).unwrap();
        findings.flush().unwrap();
        let mut csv = Vec::new();
        findings.write_csv(&mut csv).unwrap();
        let csv = String::from_utf8(csv).unwrap();
        assert!(
            csv.contains("billed_not_stored,'=cmd|' /C calc'!A0,t1,plain"),
            "{csv}"
        );
    }

    #[test]
    fn the_summary_table_says_clean_only_without_discrepancies() {
        let header = ReportHeader {
            date: "2024-05-21".into(),
            utc_offset_hours: 8,
        };
        let mut summary = Summary {
            matched: 3,
            ..Summary::default()
        };
        let table = render_summary(&header, "UTF-8", &summary);
        assert!(
            table.starts_with("reconcile 2024-05-21 (UTC+08:00)"),
            "{table}"
        );
        assert!(table.ends_with("clean\n"), "{table}");
        summary.stored_not_billed = 2;
        let table = render_summary(&header, "UTF-8", &summary);
        assert!(table.contains("stored_not_billed"), "{table}");
        assert!(table.ends_with("2 discrepancies\n"), "{table}");
    }

    #[test]
    fn the_summary_puts_the_statement_s_and_the_worker_s_billed_counts_side_by_side() {
        let header = ReportHeader {
            date: "2024-05-21".into(),
            utc_offset_hours: 8,
        };
        let summary = Summary {
            statement_rows: 105,
            statement_rows_outside_day: 5,
            stored_rows: 98,
            ..Summary::default()
        };
        let table = render_summary(&header, "UTF-8", &summary);
        let line = |label: &str| {
            table
                .lines()
                .find(|line| line.starts_with(label))
                .map(|line| line.split_whitespace().last().unwrap_or("").to_owned())
        };
        assert_eq!(line("billed in the day: statement").as_deref(), Some("100"));
        assert_eq!(line("billed in the day: worker").as_deref(), Some("98"));
    }
}
