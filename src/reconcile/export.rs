//! `export --date D`: our side of a day as CSV, for lenders who reconcile in
//! their own tools. Every row completed in the day (in the reconcile zone),
//! `succeeded` and `failed` alike, in completion order, streamed.
//!
//! Columns: `biz_no,transaction_id,external_ref,status,completed_at`, with
//! `completed_at` as `yyyy-MM-dd HH:mm:ss` in the reconcile zone (the
//! statement's own form, so the two join without conversion). No personal
//! data: the masked columns are not exported.
//!
//! Text cells are made safe for spreadsheets (OWASP's CSV-injection advice):
//! a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
//! leading `'`, so Excel or LibreOffice shows it as text instead of running it
//! as a formula (`external_ref` comes from the producer). The reconcile
//! report's CSV does the same.

use std::borrow::Cow;

use std::io::Write;

use futures_util::TryStreamExt;

use super::{Day, ReconcileError};
use crate::store::{ExportRow, JobStore};

/// Writes the day's rows to `out` and returns how many there were.
pub(crate) async fn export_day(
    store: &JobStore,
    day: &Day,
    out: &mut dyn Write,
) -> Result<u64, ReconcileError> {
    let mut writer = csv::Writer::from_writer(out);
    writer
        .write_record([
            "biz_no",
            "transaction_id",
            "external_ref",
            "status",
            "completed_at",
        ])
        .map_err(csv_failed)?;
    let mut rows = store.export_rows(day.start(), day.end());
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        write_row(&mut writer, &row, day)?;
        count += 1;
    }
    writer.flush().map_err(ReconcileError::Output)?;
    Ok(count)
}

fn csv_failed(error: csv::Error) -> ReconcileError {
    ReconcileError::Output(std::io::Error::other(error))
}

/// `cell` as a spreadsheet shows it as text: with a leading `'` when its
/// first character would start a formula (or is a tab or CR, which some
/// spreadsheets skip before looking for one).
pub(crate) fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    match cell.as_bytes().first() {
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r') => Cow::Owned(format!("'{cell}")),
        _ => Cow::Borrowed(cell),
    }
}

fn write_row<W: Write>(
    writer: &mut csv::Writer<W>,
    row: &ExportRow,
    day: &Day,
) -> Result<(), ReconcileError> {
    let completed_at = row
        .completed_at
        .with_timezone(&day.offset)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    writer
        .write_record([
            spreadsheet_safe(row.biz_no.as_deref().unwrap_or("")).as_ref(),
            &spreadsheet_safe(&row.transaction_id),
            &spreadsheet_safe(row.external_ref.as_deref().unwrap_or("")),
            row.status.as_str(),
            &completed_at,
        ])
        .map_err(csv_failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::store::JobStatus;

    fn exported(external_ref: &str, transaction_id: &str) -> Vec<String> {
        let day = Day::parse("2024-05-21", 8).unwrap();
        let row = ExportRow {
            biz_no: Some("ZM1".into()),
            transaction_id: transaction_id.into(),
            external_ref: Some(external_ref.into()),
            status: JobStatus::Succeeded,
            completed_at: day.start(),
        };
        let mut writer = csv::Writer::from_writer(Vec::new());
        write_row(&mut writer, &row, &day).unwrap();
        let bytes = writer.into_inner().unwrap();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes.as_slice());
        let record = reader.records().next().unwrap().unwrap();
        record.iter().map(str::to_owned).collect()
    }

    #[test]
    fn export_neutralises_spreadsheet_formulas_in_text_cells() {
        for hostile in [
            "=HYPERLINK(\"http://evil\",\"x\")",
            "+1+cmd|' /C calc'!A0",
            "-2+3",
            "@SUM(A1:A2)",
            "\t=1",
            "\r=1",
        ] {
            let row = exported(hostile, "t1");
            assert_eq!(row[2], format!("'{hostile}"), "{hostile:?}");
        }
        let row = exported("loan-7/contact-1", "-t1");
        assert_eq!(row[2], "loan-7/contact-1", "harmless text is untouched");
        assert_eq!(row[1], "'-t1", "every text cell is checked");
        assert_eq!(row[4], "2024-05-21 00:00:00");
    }
}
