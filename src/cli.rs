//! The subcommands of DESIGN.md, each a thin call into the library.
//!
//! Exit codes: 0 success, 1 error, 2 `enqueue` found invalid records,
//! 3 `reconcile` found discrepancies, 64 usage error. Logs go to stderr,
//! results to stdout. No business logic lives here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::upstream::response::{self, SignTypeChoice};
use crate::upstream::signing::{self, PrivateKey, PublicKey};

/// Exit code for a command line that cannot be understood (BSD's EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "zhima-worker",
    version,
    about = "Contact-verification jobs from RabbitMQ \
    checked against Zhima Credit's zhima.credit.relation.query"
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
    Run {
        /// Exit 0 once the main and delay queues are empty and nothing is in flight.
        #[arg(long)]
        until_idle: bool,
    },
    /// Apply the database migrations for database.url.
    Migrate,
    /// Run the simulated gateway.do (for tests and demos).
    Sandbox(crate::sandbox::SandboxArgs),
    /// Sign request parameters exactly as given (debugging signature mismatches).
    Sign {
        /// A flat JSON object of string values: every request parameter but `sign`.
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// The app private key (PKCS#1 or PKCS#8, PEM or bare base64).
        #[arg(long, value_name = "FILE")]
        private_key: PathBuf,
    },
    /// Check a gateway response's signature over its raw bytes.
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
    },
    /// Job counts by status and queue depths (main, retry, dead).
    Status,
    /// Move dead-lettered jobs back to the main queue, resetting their rows to retrying.
    RequeueDead {
        /// Requeue at most N jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
}

impl Cli {
    /// Parses the command line; usage errors exit 64, `--help` and `--version` 0.
    pub fn parse_or_exit() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
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
    pub async fn run(self, settings: Settings) -> anyhow::Result<ExitCode> {
        match self {
            Command::Run { until_idle } => {
                crate::app::run(settings, crate::app::RunOptions { until_idle }).await?;
                Ok(ExitCode::SUCCESS)
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
            } => operator::enqueue(&settings, &file, format, strict).await,
            Command::Status => operator::status(&settings).await,
            Command::RequeueDead { limit } => operator::requeue_dead(&settings, limit).await,
        }
    }
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
    use std::path::Path;
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

    pub async fn enqueue(
        settings: &Settings,
        file: &Path,
        format: Option<InputFormat>,
        strict: bool,
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
        let input = open_input(file, is_stdin)?;
        let progress = std::io::stderr().is_terminal().then(progress_bar);
        let mut observer = |event: EnqueueEvent<'_>| print_event(progress.as_ref(), event);
        let options = EnqueueOptions {
            strict,
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

    fn open_input(file: &Path, is_stdin: bool) -> anyhow::Result<Box<dyn BufRead + Send>> {
        if is_stdin {
            return Ok(Box::new(BufReader::new(std::io::stdin())));
        }
        let opened = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, opened)))
    }

    fn progress_bar() -> ProgressBar {
        let bar = ProgressBar::new_spinner();
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {pos} jobs published ({per_sec})")
        {
            bar.set_style(style);
        }
        bar
    }

    /// Invalid lines go to stderr, assigned ids to stdout (the producer needs
    /// them to find its results); both above the progress bar, if any.
    fn print_event(progress: Option<&ProgressBar>, event: EnqueueEvent<'_>) {
        let print = || match event {
            EnqueueEvent::Invalid { line, reason } => eprintln!("line {line}: invalid: {reason}"),
            EnqueueEvent::Assigned {
                line,
                transaction_id,
            } => println!("line {line}: assigned transaction_id {transaction_id}"),
            EnqueueEvent::Published { .. } => {}
        };
        match (progress, event) {
            (Some(bar), EnqueueEvent::Published { total }) => bar.set_position(total),
            (Some(bar), _) => bar.suspend(print),
            (None, _) => print(),
        }
    }

    pub async fn status(settings: &Settings) -> anyhow::Result<ExitCode> {
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

    pub async fn requeue_dead(settings: &Settings, limit: Option<u64>) -> anyhow::Result<ExitCode> {
        let store = JobStore::connect(settings.database.url.expose_secret(), 1)
            .await
            .context("connecting to the database")?;
        let report = admin::requeue_dead(settings, &store, limit)
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
            report.requeued,
            report.invalid.len()
        );
        Ok(ExitCode::SUCCESS)
    }
}
