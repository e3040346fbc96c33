//! Handlers of `reconcile` and `export`: parse the day, open files, print,
//! choose exit codes. The work is in `crate::reconcile`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::reconcile::{
    self, ColumnMap, Day, EncodingChoice, ReconcileOptions, Reconciliation, ReportFormat,
};
use crate::store::JobStore;

/// `reconcile`'s exit code when the statement and our rows disagree.
const EXIT_DISCREPANCIES: u8 = 3;

#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// The upstream's statement (CSV, UTF-8 or GBK).
    #[arg(long, value_name = "FILE")]
    bill: PathBuf,
    /// The day, YYYY-MM-DD in reconcile.utc_offset_hours (default: yesterday there).
    #[arg(long, value_name = "YYYY-MM-DD")]
    date: Option<String>,
    /// Write the full report here; `-` is stdout (the summary then goes to stderr).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Report format (default: json for a .json --out, else csv). Without
    /// --out, the report in this format goes to stdout.
    #[arg(long, value_enum)]
    format: Option<ReportFormat>,
    /// Header names of the statement's columns, e.g. biz_no=业务流水号,transaction_id=商户订单号,time=计费时间
    #[arg(long, value_name = "MAP")]
    columns: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    encoding: EncodingChoice,
    /// Re-publish billed-but-not-stored jobs still in the dead queue (same transaction_id).
    #[arg(long)]
    repair: bool,
}

fn day(settings: &Settings, date: Option<&str>) -> anyhow::Result<Day> {
    let hours = settings.reconcile.utc_offset_hours;
    Ok(match date {
        Some(text) => Day::parse(text, hours)?,
        None => Day::yesterday(hours, chrono::Utc::now())?,
    })
}

async fn open_store(settings: &Settings) -> anyhow::Result<JobStore> {
    JobStore::connect(settings.database.url.expose_secret(), 2)
        .await
        .context("connecting to the database")
}

pub(crate) async fn reconcile(
    settings: &Settings,
    args: ReconcileArgs,
) -> anyhow::Result<ExitCode> {
    let columns = match &args.columns {
        Some(text) => text.parse()?,
        None => ColumnMap::default(),
    };
    let window = settings.upstream.safe_call_window();
    let options = ReconcileOptions {
        bill: args.bill.clone(),
        day: day(settings, args.date.as_deref())?,
        columns,
        encoding: args.encoding,
        replay_window: chrono::TimeDelta::from_std(window).unwrap_or(chrono::TimeDelta::MAX),
        now: chrono::Utc::now(),
    };
    let store = open_store(settings).await?;
    let bar = std::io::stderr().is_terminal().then(progress_bar);
    let mut progress = |read: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(read);
        }
    };
    let outcome = reconcile::reconcile(&store, &options, &mut progress).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let result = outcome.with_context(|| format!("reconciling {}", args.bill.display()))?;
    let target = report_target(&args);
    // With the report on stdout, everything meant for people goes to stderr.
    let mut human: Box<dyn Write> = match target {
        Some((ReportTo::Stdout, _)) => Box::new(std::io::stderr()),
        _ => Box::new(std::io::stdout()),
    };
    write!(human, "{}", result.render_summary()).context("writing the summary")?;
    match target {
        Some((ReportTo::Stdout, format)) => {
            let stdout = std::io::stdout();
            let mut writer = std::io::BufWriter::new(stdout.lock());
            result
                .write_report(format, &mut writer)
                .and_then(|()| writer.flush())
                .context("writing the report to stdout")?;
        }
        Some((ReportTo::File(out), format)) => write_report(&result, out, format)?,
        None => {}
    }
    if args.repair {
        repair(settings, &store, &result, &mut *human).await?;
    }
    Ok(if result.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DISCREPANCIES)
    })
}

/// Where the full report goes.
enum ReportTo<'a> {
    Stdout,
    File(&'a Path),
}

/// `--out -` or `--format` alone: stdout; `--out FILE`: that file;
/// neither: no report (the summary only).
fn report_target(args: &ReconcileArgs) -> Option<(ReportTo<'_>, ReportFormat)> {
    match (&args.out, args.format) {
        (Some(out), format) if out.as_os_str() == "-" => {
            Some((ReportTo::Stdout, format.unwrap_or(ReportFormat::Csv)))
        }
        (Some(out), format) => Some((
            ReportTo::File(out),
            format.unwrap_or(ReportFormat::for_path(out)),
        )),
        (None, Some(format)) => Some((ReportTo::Stdout, format)),
        (None, None) => None,
    }
}

fn write_report(result: &Reconciliation, out: &Path, format: ReportFormat) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(out).with_context(|| format!("creating --out {}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    result
        .write_report(format, &mut writer)
        .and_then(|()| writer.flush())
        .with_context(|| format!("writing --out {}", out.display()))
}

async fn repair(
    settings: &Settings,
    store: &JobStore,
    result: &Reconciliation,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let report = reconcile::repair::repair(settings, store, &result.repairable)
        .await
        .context("repairing from the dead queue")?;
    let mut lines = String::new();
    for id in &report.requeued {
        lines.push_str(&format!(
            "repair: re-published {id} from the dead queue (same transaction_id)\n"
        ));
    }
    for id in &report.not_in_dead_queue {
        lines.push_str(&format!(
            "repair: {id} is not in the dead queue: re-submit it from the producer with the same transaction_id\n"
        ));
    }
    lines.push_str(&format!(
        "repair: re-published {}, not recoverable here {}\n",
        report.requeued.len(),
        report.not_in_dead_queue.len()
    ));
    out.write_all(lines.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the repair lines")
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} of the statement ({eta})")
    {
        bar.set_style(style);
    }
    bar
}

pub(crate) async fn export(settings: &Settings, date: Option<&str>) -> anyhow::Result<ExitCode> {
    let day = day(settings, date)?;
    let store = open_store(settings).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    reconcile::export::export_day(&store, &day, &mut out)
        .await
        .context("exporting the day's rows")?;
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
