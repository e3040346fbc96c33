//! `export --date D`: our side of a day as CSV, for lenders who reconcile in
//! their own tools. Every row completed in the day (in the reconcile zone),
//! `succeeded` and `failed` alike, in completion order, streamed.
//!
//! Columns: `biz_no,transaction_id,external_ref,status,completed_at`, with
//! `completed_at` as `yyyy-MM-dd HH:mm:ss` in the reconcile zone (the
//! statement's own form, so the two join without conversion), then the
//! result fields `relation_rank,recency,relation_score,error_code,
//! error_message,attempts,batch_id,reused_from` (empty when absent;
//! `reused_from` names the paying transaction_id of a row answered by answer
//! reuse, which has no biz_no since the upstream billed nothing for it). The first five stay
//! first and in that order, so a consumer reading columns by position keeps
//! working. No personal data: the masked columns are not exported, and
//! `error_message` is stored already masked.
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

/// The header, in order; the first five are the original columns.
pub(crate) const EXPORT_HEADER: [&str; 13] = [
    "biz_no",
    "transaction_id",
    "external_ref",
    "status",
    "completed_at",
    "relation_rank",
    "recency",
    "relation_score",
    "error_code",
    "error_message",
    "attempts",
    "batch_id",
    "reused_from",
];

/// Writes the day's rows to `out` and returns how many there were.
pub(crate) async fn export_day(
    store: &JobStore,
    day: &Day,
    out: &mut dyn Write,
) -> Result<u64, ReconcileError> {
    let mut writer = csv::Writer::from_writer(out);
    writer.write_record(EXPORT_HEADER).map_err(csv_failed)?;
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
    let text =
        |value: &Option<String>| spreadsheet_safe(value.as_deref().unwrap_or("")).into_owned();
    let result = &row.result;
    writer
        .write_record([
            text(&row.biz_no).as_str(),
            &spreadsheet_safe(&row.transaction_id),
            &text(&row.external_ref),
            row.status.as_str(),
            &completed_at,
            &text(&result.relation_rank),
            &text(&result.recency),
            &result
                .relation_score
                .map(|score| score.to_string())
                .unwrap_or_default(),
            &text(&result.error_code),
            &text(&result.error_message),
            &result.attempts.to_string(),
            &text(&result.batch_id),
            &text(&result.reused_from),
        ])
        .map_err(csv_failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::store::{ExportResult, JobStatus};

    fn exported(external_ref: &str, transaction_id: &str) -> Vec<String> {
        exported_row(ExportRow {
            biz_no: Some("ZM1".into()),
            transaction_id: transaction_id.into(),
            external_ref: Some(external_ref.into()),
            status: JobStatus::Succeeded,
            completed_at: Day::parse("2024-05-21", 8).unwrap().start(),
            result: ExportResult::default(),
        })
    }

    fn exported_row(row: ExportRow) -> Vec<String> {
        let day = Day::parse("2024-05-21", 8).unwrap();
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

    #[test]
    fn export_keeps_the_original_columns_first_and_adds_the_result_fields() {
        assert_eq!(
            EXPORT_HEADER[..5],
            [
                "biz_no",
                "transaction_id",
                "external_ref",
                "status",
                "completed_at"
            ]
        );
        let completed_at = Day::parse("2024-05-21", 8).unwrap().start();
        let succeeded = exported_row(ExportRow {
            biz_no: Some("ZM1".into()),
            transaction_id: "t1".into(),
            external_ref: None,
            status: JobStatus::Succeeded,
            completed_at,
            result: ExportResult {
                relation_rank: Some("A".into()),
                recency: Some("R1".into()),
                relation_score: Some(87),
                attempts: 3,
                batch_id: Some("b_7".into()),
                ..ExportResult::default()
            },
        });
        assert_eq!(succeeded.len(), EXPORT_HEADER.len());
        assert_eq!(succeeded[5..], ["A", "R1", "87", "", "", "3", "b_7", ""]);
        let failed = exported_row(ExportRow {
            biz_no: None,
            transaction_id: "t2".into(),
            external_ref: None,
            status: JobStatus::Failed,
            completed_at,
            result: ExportResult {
                error_code: Some("INVALID_PARAMETER".into()),
                error_message: Some("=cmd|' /C calc'!A0".into()),
                attempts: 1,
                ..ExportResult::default()
            },
        });
        assert_eq!(
            failed[5..],
            [
                "",
                "",
                "",
                "INVALID_PARAMETER",
                "'=cmd|' /C calc'!A0",
                "1",
                "",
                ""
            ]
        );
    }

    #[test]
    fn a_reused_row_is_exported_without_a_biz_no_and_names_its_payer() {
        let reused = exported_row(ExportRow {
            biz_no: None,
            transaction_id: "t3".into(),
            external_ref: None,
            status: JobStatus::Succeeded,
            completed_at: Day::parse("2024-05-21", 8).unwrap().start(),
            result: ExportResult {
                relation_rank: Some("A".into()),
                reused_from: Some("t1".into()),
                ..ExportResult::default()
            },
        });
        assert_eq!(reused[0], "");
        assert_eq!(reused[12], "t1");
        assert_eq!(EXPORT_HEADER[12], "reused_from");
    }
}
