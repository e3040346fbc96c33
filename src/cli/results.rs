//! Handler of `results`: every final job of a batch or a day, with the
//! fields of its result event, as JSON Lines or CSV, streamed from the
//! database (a million rows in bounded memory). The help texts of the
//! results commands are here too.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use futures_util::TryStreamExt;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::reconcile::Day;
use crate::reconcile::export::spreadsheet_safe;
use crate::results::event::ResultEvent;
use crate::store::{JobStore, ResultFilter};

/// The layout of `results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultFormat {
    /// One result event body per line.
    Jsonl,
    /// A header, then one row per job (spreadsheet-safe cells).
    Csv,
}

/// `--batch ID` or `--date D`: exactly one.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ResultSelection {
    /// The jobs of this batch (as printed by `enqueue`).
    #[arg(long, value_name = "ID", value_parser = super::parse_batch_id)]
    pub batch: Option<String>,
    /// The jobs completed on this day, YYYY-MM-DD in reconcile.utc_offset_hours.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub date: Option<String>,
}

pub(crate) async fn results(
    settings: &Settings,
    selection: &ResultSelection,
    format: ResultFormat,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let day = match &selection.date {
        Some(text) => Some(Day::parse(text, settings.reconcile.utc_offset_hours)?),
        None => None,
    };
    let filter = match (&selection.batch, &day) {
        (Some(batch_id), _) => ResultFilter::Batch(batch_id),
        (None, Some(day)) => ResultFilter::Completed {
            start: day.start(),
            end: day.end(),
        },
        (None, None) => anyhow::bail!("pass --batch ID or --date YYYY-MM-DD"),
    };
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let to_stdout = out == Path::new("-");
    let mut sink: Box<dyn Write> = match to_stdout {
        true => Box::new(BufWriter::new(std::io::stdout().lock())),
        false => Box::new(BufWriter::new(create_new(out)?)),
    };
    let count = write_results(&store, filter, format, &mut sink)
        .await
        .context("writing the results")?;
    sink.flush().context("writing the results")?;
    if !to_stdout {
        eprintln!("{count} results written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--out FILE` is created new: an existing file is never overwritten.
fn create_new(path: &Path) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating --out {} (an existing file is never overwritten)",
                path.display()
            )
        })
}

/// Streams the selected rows to `out`; returns how many.
pub(crate) async fn write_results(
    store: &JobStore,
    filter: ResultFilter<'_>,
    format: ResultFormat,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let mut rows = store.results(filter);
    let mut count = 0;
    match format {
        ResultFormat::Jsonl => {
            while let Some(event) = rows.try_next().await? {
                serde_json::to_writer(&mut *out, &event)?;
                out.write_all(b"\n")?;
                count += 1;
            }
        }
        ResultFormat::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(ResultEvent::CSV_HEADER)?;
            while let Some(event) = rows.try_next().await? {
                let cells = event.csv_record();
                writer
                    .write_record(cells.iter().map(|cell| spreadsheet_safe(cell).into_owned()))?;
                count += 1;
            }
            writer.flush()?;
        }
    }
    Ok(count)
}

pub(super) const RESULTS: &str = "\
Fields (the body of each job's result event): event, transaction_id,
external_ref, batch_id, status (succeeded|failed), biz_no, relation_rank,
recency, relation_score, error_code, error_message, attempts, first_call_at,
completed_at (UTC, RFC 3339 with milliseconds), reused_from (the transaction_id
whose paid answer the job was given by answer reuse, reuse.max_age_days; then
biz_no is empty). Only final jobs are listed, in completion order. No personal
data.

Exit codes:
  0   results written
  1   error: configuration, database, bad --date, --out file exists
  64  usage error (neither or both of --batch and --date, a bad batch id)

Environment:
  DATABASE_URL                       shortcut for database.url
  ZHIMA__RECONCILE__UTC_OFFSET_HOURS the time zone of --date (default 8)

Example:
  zhima-worker results --batch b_20261201T140712Z_k3J9xQ2a --format csv --out results.csv";
