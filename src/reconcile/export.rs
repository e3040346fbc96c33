//! `export --date D`: our side of a day as CSV, for lenders who reconcile in
//! their own tools. Every row completed in the day (in the reconcile zone),
//! `succeeded` and `failed` alike, in completion order, streamed.
//!
//! Columns: `biz_no,transaction_id,external_ref,status,completed_at`, with
//! `completed_at` as `yyyy-MM-dd HH:mm:ss` in the reconcile zone (the
//! statement's own form, so the two join without conversion). No personal
//! data: the masked columns are not exported.

use std::io::Write;

use futures_util::TryStreamExt;

use super::{Day, ReconcileError};
use crate::store::JobStore;

/// Writes the day's rows to `out` and returns how many there were.
pub async fn export_day(
    store: &JobStore,
    day: &Day,
    out: &mut dyn Write,
) -> Result<u64, ReconcileError> {
    let mut writer = csv::Writer::from_writer(out);
    let failed = |e: csv::Error| ReconcileError::Output(std::io::Error::other(e));
    writer
        .write_record([
            "biz_no",
            "transaction_id",
            "external_ref",
            "status",
            "completed_at",
        ])
        .map_err(failed)?;
    let mut rows = store.export_rows(day.start(), day.end());
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        let completed_at = row
            .completed_at
            .with_timezone(&day.offset)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        writer
            .write_record([
                row.biz_no.as_deref().unwrap_or(""),
                &row.transaction_id,
                row.external_ref.as_deref().unwrap_or(""),
                row.status.as_str(),
                &completed_at,
            ])
            .map_err(failed)?;
        count += 1;
    }
    writer.flush().map_err(ReconcileError::Output)?;
    Ok(count)
}
