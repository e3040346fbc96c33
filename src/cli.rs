//! The subcommands (README "Commands", or `zhima-worker --help`), each a
//! thin call into the library.
//!
//! Exit codes: 0 success, 1 error, 2 `enqueue` found invalid records,
//! 3 `reconcile` found discrepancies, 4 `run` stayed paused longer than
//! `--max-wait`, 64 usage error. Logs go to stderr,
//! results to stdout. No business logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::upstream::response::{self, SignTypeChoice};
use crate::upstream::signing::{self, PrivateKey, PublicKey};

/// Exit code for a command line that cannot be understood (BSD's EX_USAGE).
pub(crate) const EXIT_USAGE: u8 = 64;
/// `run`'s exit code when consumption stayed paused longer than `--max-wait`.
pub(crate) const EXIT_PAUSED_TOO_LONG: u8 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "zhima-worker",
    version,
    about = "Contact-verification jobs from RabbitMQ \
    checked against Zhima Credit's zhima.credit.relation.query",
    after_help = help::TOP
)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume and process jobs until SIGINT/SIGTERM.
    ///
    /// Once the components are up, every exit logs one INFO line, "run
    /// summary": the jobs this process finished by outcome, the duration and
    /// the rate.
    #[command(after_help = help::RUN)]
    Run {
        /// Exit 0 once the main and delay queues are empty and nothing is in flight.
        #[arg(long)]
        until_idle: bool,
        /// Exit 4 once consumption has stayed paused on a configuration fault
        /// this long without a break (the clock is the time paused
        /// continuously; it restarts after a resume). The jobs stay queued.
        /// A whole number with a unit: 90s, 15m, 2h.
        #[arg(long, value_name = "DURATION", value_parser = crate::app::parse_max_wait)]
        max_wait: Option<std::time::Duration>,
    },
    /// Apply the database migrations for database.url.
    #[command(after_help = help::MIGRATE)]
    Migrate,
    /// Run the simulated gateway.do (for tests and demos).
    #[command(after_help = help::SANDBOX)]
    Sandbox(crate::sandbox::SandboxArgs),
    /// Sign request parameters exactly as given (debugging signature mismatches).
    #[command(after_help = help::SIGN)]
    Sign {
        /// A flat JSON object of string values: every request parameter but `sign`.
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// The app private key (PKCS#1 or PKCS#8, PEM or bare base64).
        #[arg(long, value_name = "FILE")]
        private_key: PathBuf,
    },
    /// Check a gateway response's signature over its raw bytes.
    #[command(after_help = help::VERIFY_RESPONSE)]
    VerifyResponse {
        /// The raw response body as received.
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// The Alipay public key (SPKI or PKCS#1, PEM or bare base64).
        #[arg(long, value_name = "FILE")]
        alipay_public_key: PathBuf,
        /// The API method whose `<method>_response` node is verified.
        #[arg(long, default_value = "zhima.credit.relation.query")]
        method: String,
        /// RSA2, RSA or auto (RSA2 first, then RSA).
        #[arg(long, default_value = "auto", value_parser = parse_sign_type_choice)]
        sign_type: SignTypeChoice,
    },
    /// Validate job records (JSON Lines or CSV) and publish the valid ones; exit 2 if any is invalid.
    #[command(after_help = help::ENQUEUE)]
    Enqueue {
        /// The records; `-` reads standard input.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Default: from the extension (.jsonl, .json, .ndjson or .csv); jsonl for stdin.
        #[arg(long, value_enum)]
        format: Option<crate::queue::enqueue::InputFormat>,
        /// Publish nothing if any record is invalid.
        #[arg(long)]
        strict: bool,
        /// Write the rejected records, with their reasons, to this new file.
        /// JSON Lines input: one object per rejected line, {"line",
        /// "transaction_id", "external_ref", "reason", "record"} (`record`:
        /// the line as read; `jq -r .record` gives it back). CSV input: the
        /// header and each rejected row as read, plus the columns
        /// reject_line and reject_reason, which enqueue ignores, so the
        /// corrected file can be enqueued as it is. The file holds personal
        /// data: it is created with mode 0600, and an existing file is
        /// refused (exit 1), never overwritten.
        #[arg(long, value_name = "FILE")]
        rejects: Option<PathBuf>,
    },
    /// Job counts by status and queue depths (main, retry, dead).
    #[command(after_help = help::STATUS)]
    Status,
    /// Move dead-lettered jobs back to the main queue, resetting their rows to retrying.
    #[command(after_help = help::REQUEUE_DEAD)]
    RequeueDead {
        /// Requeue at most N jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Compare the upstream's statement with stored results by biz_no; exit 3 on discrepancies.
    #[command(after_help = help::RECONCILE)]
    Reconcile(reconciliation::ReconcileArgs),
    /// Our side of a day as CSV (biz_no, transaction_id, external_ref, status, completed_at).
    #[command(after_help = help::EXPORT)]
    Export {
        /// The day, YYYY-MM-DD in reconcile.utc_offset_hours (default: yesterday there).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<String>,
    },
    /// Inspect the configuration.
    #[command(after_help = help::CONFIG)]
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
        /// The global `--config`, copied here by `Cli::parse_or_exit`.
        #[arg(skip)]
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// The effective configuration, secrets redacted, each key with its source.
    #[command(after_help = help::CONFIG_SHOW)]
    Show {
        /// One JSON array of {"key", "value", "source"} instead of TOML-like lines.
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// Parses the command line; usage errors exit 64, `--help` and `--version` 0.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(mut cli) => {
                if let Command::Config { file, .. } = &mut cli.command {
                    file.clone_from(&cli.config);
                }
                cli
            }
            Err(error) => {
                let code = if error.use_stderr() {
                    i32::from(EXIT_USAGE)
                } else {
                    0
                };
                let _ = error.print();
                std::process::exit(code);
            }
        }
    }
}

impl Command {
    /// The log filter for this command: `status` silences the client
    /// library's channel errors, since probing a queue that does not exist
    /// yet closes a channel (which lapin logs at ERROR) and `status` reports
    /// missing queues itself.
    pub fn log_filter(&self, configured: &str) -> String {
        match self {
            Command::Status => format!("{configured},lapin::channel=off"),
            _ => configured.to_owned(),
        }
    }

    pub async fn run(self, settings: Settings) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run {
                until_idle,
                max_wait,
            } => {
                let options = crate::app::RunOptions {
                    until_idle,
                    max_wait,
                };
                Ok(match crate::app::run(settings, options).await? {
                    crate::app::RunEnd::Stopped => ExitCode::SUCCESS,
                    crate::app::RunEnd::PausedTooLong => ExitCode::from(EXIT_PAUSED_TOO_LONG),
                })
            }
            Command::Migrate => migrate(&settings).await,
            Command::Sandbox(args) => {
                crate::sandbox::run_cli(args).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Sign {
                params,
                private_key,
            } => sign(&params, &private_key),
            Command::VerifyResponse {
                body,
                alipay_public_key,
                method,
                sign_type,
            } => verify_response(&body, &alipay_public_key, &method, sign_type),
            Command::Enqueue {
                file,
                format,
                strict,
                rejects,
            } => operator::enqueue(&settings, &file, format, strict, rejects).await,
            Command::Status => operator::status(&settings).await,
            Command::RequeueDead { limit } => operator::requeue_dead(&settings, limit).await,
            Command::Reconcile(args) => reconciliation::reconcile(&settings, args).await,
            Command::Export { date } => reconciliation::export(&settings, date.as_deref()).await,
            Command::Config { action, file } => match action {
                ConfigCommand::Show { json } => config_show(file.as_deref(), json),
            },
        }
    }
}

/// `settings` were loaded already (an invalid configuration stopped there);
/// this loads the layers again to know where each value came from.
fn config_show(file: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let values = crate::config::effective(file).context("loading configuration")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(ExitCode::SUCCESS);
    }
    let width = values
        .iter()
        .map(|entry| entry.key.len() + entry.value.len())
        .max()
        .unwrap_or(0);
    for entry in &values {
        let line = format!("{} = {}", entry.key, entry.value);
        println!("{line:<pad$}  # from: {}", entry.source, pad = width + 3);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_sign_type_choice(value: &str) -> Result<SignTypeChoice, String> {
    match value.to_ascii_uppercase().as_str() {
        "RSA2" => Ok(SignTypeChoice::Rsa2),
        "RSA" => Ok(SignTypeChoice::Rsa),
        "AUTO" => Ok(SignTypeChoice::Auto),
        _ => Err("expected RSA2, RSA or auto".into()),
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    use secrecy::ExposeSecret;
    crate::store::JobStore::migrate(settings.database.url.expose_secret())
        .await
        .context("migrating the database")?;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

fn sign(params: &Path, private_key: &Path) -> anyhow::Result<ExitCode> {
    let key = PrivateKey::from_file(private_key)?;
    let text = std::fs::read_to_string(params)
        .with_context(|| format!("reading --params {}", params.display()))?;
    let signature = signing::sign_debug(&text, &key)?;
    let line = serde_json::json!({
        "string_to_sign": signature.string_to_sign,
        "sign": signature.sign,
    });
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

fn verify_response(
    body: &Path,
    public_key: &Path,
    method: &str,
    choice: SignTypeChoice,
) -> anyhow::Result<ExitCode> {
    let key = PublicKey::from_file(public_key)?;
    let bytes =
        std::fs::read(body).with_context(|| format!("reading --body {}", body.display()))?;
    match response::verify_response_body(&bytes, method, &key, choice) {
        Ok(report) => {
            println!(
                "verified: {} signature over the {} node",
                report.sign_type.as_str(),
                match report.node {
                    response::NodeKind::Method => response::response_node_name(method),
                    response::NodeKind::Error => "error_response".to_string(),
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            println!("not verified: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Handlers of the operator commands around the worker: `enqueue`, `status`,
/// `requeue-dead`. They open inputs, print, and choose exit codes; the work is
/// in `crate::queue::{enqueue, admin}`.
mod operator {
    use std::fs::File;
    use std::io::{BufRead, BufReader, IsTerminal};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use anyhow::Context;
    use indicatif::{ProgressBar, ProgressStyle};
    use secrecy::ExposeSecret;

    use super::EXIT_USAGE;
    use crate::config::Settings;
    use crate::queue::admin;
    use crate::queue::enqueue::{self, EnqueueEvent, EnqueueOptions, EnqueueReport, InputFormat};
    use crate::store::JobStore;

    /// `enqueue`'s exit code when some records were invalid.
    const EXIT_INVALID: u8 = 2;

    pub(crate) async fn enqueue(
        settings: &Settings,
        file: &Path,
        format: Option<InputFormat>,
        strict: bool,
        rejects: Option<PathBuf>,
    ) -> anyhow::Result<ExitCode> {
        let is_stdin = file == Path::new("-");
        let guessed = if is_stdin {
            Some(InputFormat::Jsonl)
        } else {
            InputFormat::from_path(file)
        };
        let Some(format) = format.or(guessed) else {
            eprintln!(
                "error: cannot tell the format of {} from its extension; pass --format jsonl or --format csv",
                file.display()
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        };
        let progress = std::io::stderr()
            .is_terminal()
            .then(|| progress_bar(input_size(file, is_stdin)));
        let input = open_input(file, is_stdin, progress.as_ref())?;
        let mut observer = |event: EnqueueEvent<'_>| print_event(progress.as_ref(), event);
        let options = EnqueueOptions {
            strict,
            rejects,
            ..EnqueueOptions::default()
        };
        let outcome = enqueue::enqueue(input, format, settings, &options, &mut observer).await;
        if let Some(bar) = &progress {
            bar.finish_and_clear();
        }
        let report = outcome.context("enqueueing jobs")?;
        print_summary(&report);
        Ok(if report.invalid > 0 {
            ExitCode::from(EXIT_INVALID)
        } else {
            ExitCode::SUCCESS
        })
    }

    fn print_summary(report: &EnqueueReport) {
        let withheld = if report.withheld > 0 {
            format!(
                " (--strict: {} valid records not published)",
                report.withheld
            )
        } else {
            String::new()
        };
        println!(
            "enqueued {}, invalid {}, assigned {} transaction_ids{withheld}",
            report.published, report.invalid, report.assigned
        );
    }

    /// A bar with a length advances as the input is read (see
    /// [`progress_bar`]).
    fn open_input(
        file: &Path,
        is_stdin: bool,
        progress: Option<&ProgressBar>,
    ) -> anyhow::Result<Box<dyn BufRead + Send>> {
        if is_stdin {
            return Ok(Box::new(BufReader::new(std::io::stdin())));
        }
        let opened = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        Ok(match progress {
            Some(bar) if bar.length().is_some() => {
                Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(opened)))
            }
            _ => Box::new(BufReader::with_capacity(1 << 16, opened)),
        })
    }

    /// The size of a regular file; `None` for stdin, pipes and devices,
    /// whose end is not known in advance.
    fn input_size(file: &Path, is_stdin: bool) -> Option<u64> {
        let metadata = std::fs::metadata(file).ok().filter(|_| !is_stdin)?;
        metadata.is_file().then_some(metadata.len())
    }

    const FILE_TEMPLATE: &str = "{bar:30} {percent:>3}% of {total_bytes} read, {msg} (ETA {eta})";
    const STREAM_TEMPLATE: &str = "{spinner} {pos} jobs published ({per_sec})";

    /// For a file of known size, a bar over its bytes (position: bytes read)
    /// with the percentage and an ETA, the published count as its message;
    /// otherwise a spinner counting published jobs.
    fn progress_bar(total_bytes: Option<u64>) -> ProgressBar {
        let (bar, template) = match total_bytes {
            Some(total) => (ProgressBar::new(total), FILE_TEMPLATE),
            None => (ProgressBar::new_spinner(), STREAM_TEMPLATE),
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message("0 jobs published");
        bar
    }

    /// Invalid lines go to stderr, assigned ids to stdout (the producer needs
    /// them to find its results); both above the progress bar, if any.
    fn print_event(progress: Option<&ProgressBar>, event: EnqueueEvent<'_>) {
        let print = || match event {
            EnqueueEvent::Invalid {
                line,
                reason,
                transaction_id,
                external_ref,
            } => eprintln!(
                "line {line}: invalid: {reason}{}",
                naming(transaction_id, external_ref)
            ),
            EnqueueEvent::Assigned {
                line,
                transaction_id,
            } => println!("line {line}: assigned transaction_id {transaction_id}"),
            EnqueueEvent::Published { .. } => {}
        };
        match (progress, event) {
            (Some(bar), EnqueueEvent::Published { total }) if bar.length().is_some() => {
                bar.set_message(format!("{total} jobs published"));
            }
            (Some(bar), EnqueueEvent::Published { total }) => bar.set_position(total),
            (Some(bar), _) => bar.suspend(print),
            (None, _) => print(),
        }
    }

    /// ` (transaction_id t_1, external_ref "loan-1")`, or what of it is known.
    fn naming(transaction_id: Option<&str>, external_ref: Option<&str>) -> String {
        let names: Vec<String> = [
            transaction_id.map(|id| format!("transaction_id {id}")),
            external_ref.map(|reference| format!("external_ref {reference:?}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    }

    pub(crate) async fn status(settings: &Settings) -> anyhow::Result<ExitCode> {
        let store = JobStore::connect(settings.database.url.expose_secret(), 1)
            .await
            .context("connecting to the database")?;
        let counts = store
            .counts_by_status()
            .await
            .context("counting jobs (has `zhima-worker migrate` run?)")?;
        let depths = admin::queue_depths(settings)
            .await
            .context("reading queue depths")?;
        print!("{}", admin::render_status(&counts, &depths));
        Ok(ExitCode::SUCCESS)
    }

    pub(crate) async fn requeue_dead(
        settings: &Settings,
        limit: Option<u64>,
    ) -> anyhow::Result<ExitCode> {
        let store = JobStore::connect(settings.database.url.expose_secret(), 1)
            .await
            .context("connecting to the database")?;
        let report = admin::requeue_dead(settings, &store, admin::Selection::All { limit })
            .await
            .context("requeueing dead jobs")?;
        for invalid in &report.invalid {
            let id = invalid.message_id.as_deref().unwrap_or("(no message_id)");
            eprintln!(
                "still invalid, left in the dead queue: {id}: {}",
                invalid.reason
            );
        }
        println!(
            "requeued {}, left {} invalid",
            report.requeued.len(),
            report.invalid.len()
        );
        Ok(ExitCode::SUCCESS)
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

        use std::io::Read;

        use super::*;

        #[test]
        fn enqueue_progress_for_a_file_is_a_bar_over_its_bytes_that_advances_as_it_is_read() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("jobs.jsonl");
            std::fs::write(&path, "x".repeat(200_000)).unwrap();
            let bar = progress_bar(input_size(&path, false));
            assert_eq!(bar.length(), Some(200_000));
            let mut input = open_input(&path, false, Some(&bar)).unwrap();
            let mut first = [0u8; 10];
            input.read_exact(&mut first).unwrap();
            assert!(bar.position() > 0 && bar.position() < 200_000);
            std::io::copy(&mut input, &mut std::io::sink()).unwrap();
            assert_eq!(bar.position(), 200_000);
        }

        #[test]
        fn enqueue_progress_for_stdin_and_pipes_stays_a_spinner() {
            assert_eq!(input_size(Path::new("-"), true), None);
            assert_eq!(input_size(Path::new("/dev/null"), false), None);
            assert_eq!(progress_bar(None).length(), None);
        }

        #[test]
        fn enqueue_progress_templates_parse() {
            for template in [FILE_TEMPLATE, STREAM_TEMPLATE] {
                assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
            }
        }
    }
}

/// Handlers of `reconcile` and `export`: parse the day, open files, print,
/// choose exit codes. The work is in `crate::reconcile`.
mod reconciliation {
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

    fn write_report(
        result: &Reconciliation,
        out: &Path,
        format: ReportFormat,
    ) -> anyhow::Result<()> {
        let file = std::fs::File::create(out)
            .with_context(|| format!("creating --out {}", out.display()))?;
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

    pub(crate) async fn export(
        settings: &Settings,
        date: Option<&str>,
    ) -> anyhow::Result<ExitCode> {
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
}

/// The text after each subcommand's `--help`: its exit codes, the environment
/// variables it reads and one example, so that the help stands alone. A test
/// (`tests/it/help.rs`) walks clap's subcommand list and fails a subcommand
/// without these three sections.
mod help {
    pub(super) const TOP: &str = "\
Exit codes:
  0 success, 1 error, 2 enqueue found invalid records, 3 reconcile found
  discrepancies, 64 usage error (each subcommand's --help lists its own)

Environment:
  ZHIMA__<SECTION>__<KEY>            any key of config/default.toml, e.g. ZHIMA__RATE_LIMIT__QPS=20
  DATABASE_URL, AMQP_URL             shortcuts for database.url and amqp.url
  RUST_LOG                           log filter, overrides log.filter

Example:
  zhima-worker --config prod.toml config show";

    pub(super) const RUN: &str = "\
Exit codes:
  0   stopped by SIGINT/SIGTERM after draining, or idle with --until-idle
  1   error (configuration, broker, database, keys); the message says which
  4   paused on a configuration fault for longer than --max-wait
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key, e.g. ZHIMA__RATE_LIMIT__QPS=20
  RUST_LOG                           log filter, overrides log.filter

Example:
  ZHIMA__WORKER__CONCURRENCY=16 zhima-worker --config /etc/zhima/prod.toml run
  zhima-worker run --until-idle --max-wait 15m     # a cron job or a Kubernetes Job";

    pub(super) const MIGRATE: &str = "\
Exit codes:
  0   migrations applied (or nothing to do)
  1   error: configuration, or the database refused
  64  usage error

Environment:
  DATABASE_URL                       shortcut for database.url (postgres:// or sqlite:)
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  DATABASE_URL=postgres://zhima@db/zhima zhima-worker migrate";

    pub(super) const SANDBOX: &str = "\
Exit codes:
  0   stopped by SIGINT/SIGTERM
  1   error: cannot listen, or a key file cannot be read
  64  usage error

Environment:
  RUST_LOG                           log filter (the configuration is loaded as for every command)
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  zhima-worker sandbox --listen 127.0.0.1:8480 --system-error-rate 0.1 --seed 7";

    pub(super) const SIGN: &str = "\
Exit codes:
  0   signed; one JSON line {\"string_to_sign\", \"sign\"} on stdout
  1   error: unreadable params or key
  64  usage error

Environment:
  none of its own (the configuration is loaded as for every command)

Example:
  zhima-worker sign --params params.json --private-key config/keys/test_merchant_private.pem";

    pub(super) const VERIFY_RESPONSE: &str = "\
Exit codes:
  0   verified
  1   not verified (the reason is printed), or an unreadable body or key
  64  usage error

Environment:
  none of its own (the configuration is loaded as for every command)

Example:
  zhima-worker verify-response --body body.json --alipay-public-key config/keys/test_sandbox_public.pem";

    pub(super) const ENQUEUE: &str = "\
Exit codes:
  0   every record valid and published
  1   error: configuration, broker, unreadable input, --rejects file exists
  2   some records invalid (the valid ones published, unless --strict)
  64  usage error, or a format that cannot be told from the extension

Environment:
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__AMQP__EXCHANGE              where jobs are published (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker enqueue jobs.csv --rejects rejects.csv";

    pub(super) const STATUS: &str = "\
Exit codes:
  0   counts printed
  1   error: configuration, database or broker unreachable
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  DATABASE_URL=postgres://zhima@db/zhima zhima-worker status";

    pub(super) const REQUEUE_DEAD: &str = "\
Exit codes:
  0   requeued (records still invalid stay in the dead queue and are listed)
  1   error: configuration, database or broker unreachable
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__AMQP__DEAD_QUEUE            the queue read from (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker requeue-dead --limit 100";

    pub(super) const RECONCILE: &str = "\
Exit codes:
  0   the statement and our rows agree
  1   error: configuration, database, unreadable statement
  3   discrepancies found (see the summary and --out)
  64  usage error

Environment:
  DATABASE_URL                       shortcut for database.url
  ZHIMA__RECONCILE__UTC_OFFSET_HOURS the statement's time zone (default 8)
  AMQP_URL                           for --repair only

Example:
  zhima-worker reconcile --bill bill-2026-11-30.csv --date 2026-11-30 --out report.json";

    pub(super) const EXPORT: &str = "\
Exit codes:
  0   the day's rows written to stdout as CSV
  1   error: configuration, database, bad --date
  64  usage error

Environment:
  DATABASE_URL                       shortcut for database.url
  ZHIMA__RECONCILE__UTC_OFFSET_HOURS the time zone of the day (default 8)

Example:
  zhima-worker export --date 2026-11-30 > ours-2026-11-30.csv";

    pub(super) const CONFIG: &str = "\
Exit codes:
  0   success
  1   invalid configuration (the same message as every other command)
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  zhima-worker --config prod.toml config show";

    pub(super) const CONFIG_SHOW: &str = "\
Prints `key = value  # from: default | file <path> | env <VARIABLE>` for every
key. Passwords in URLs and secrets (app_auth_token) are shown as ***; key files
are named by path, their contents never read.

Exit codes:
  0   printed
  1   invalid configuration (the same message as every other command)
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key, e.g. ZHIMA__UPSTREAM__APP_ID

Example:
  ZHIMA__RATE_LIMIT__QPS=20 zhima-worker --config prod.toml config show --json";
}
