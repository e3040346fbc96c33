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
    Sandbox(Box<crate::sandbox::SandboxArgs>),
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
    /// Print a certificate's SN (app_cert_sn, alipay_cert_sn) or, with --root, a bundle's root SN.
    #[command(after_help = cert::CERT_SN_HELP)]
    CertSn {
        /// A PEM certificate (the first one counts when it holds a chain), or
        /// with --root the root bundle.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The SNs of the bundle's RSA-signed roots joined by `_`
        /// (alipay_root_cert_sn).
        #[arg(long)]
        root: bool,
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
        /// The run's batch id ([A-Za-z0-9_-]{1,64}), stamped on every
        /// published job; default: a new one (printed). A batch id whose
        /// size an earlier run recorded is refused.
        #[arg(long, value_name = "ID", value_parser = parse_batch_id)]
        batch_id: Option<String>,
        /// Mark every published job `"fresh": true`: answered by its own
        /// upstream call, never from a stored answer (reuse.max_age_days),
        /// whatever its record says (CSV has no column for it).
        #[arg(long)]
        fresh: bool,
    },
    /// Job counts and rate from the database, queue depths and consumers from
    /// the broker, the dead queue by reason; or one batch's progress.
    #[command(after_help = help::STATUS)]
    Status {
        /// One batch's progress: total, succeeded, failed, in progress, not
        /// yet started, the last minute's rate and an ETA.
        #[arg(long, value_name = "ID", value_parser = parse_batch_id)]
        batch: Option<String>,
        /// Print one JSON object (with --watch: one per refresh, a line each).
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (1 to 3600, default 2) until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1,
              default_missing_value = "2", value_parser = status::parse_watch)]
        watch: Option<std::time::Duration>,
    },
    /// Move dead-lettered jobs back to the main queue, resetting their rows to retrying.
    #[command(after_help = dead::REQUEUE_DEAD)]
    RequeueDead(dead::RequeueArgs),
    /// One job: its row (masked), its upstream calls, and the queue its message is in.
    #[command(after_help = lookup::SHOW)]
    Show(lookup::ShowArgs),
    /// Delete one person's rows, ledger entries, events and queued messages (PIPL).
    #[command(after_help = erase::ERASE)]
    Erase(erase::EraseArgs),
    /// Delete response bodies, rows and dead messages past their retention.
    #[command(after_help = purge::PURGE)]
    Purge(purge::PurgeArgs),
    /// The dead-letter queue: list, show one job, purge invalid messages.
    #[command(after_help = dead::DEAD)]
    Dead {
        #[command(subcommand)]
        action: dead::DeadCommand,
    },
    /// Compare the upstream's statement with stored results by biz_no; exit 3 on discrepancies.
    #[command(after_help = help::RECONCILE)]
    Reconcile(reconciliation::ReconcileArgs),
    /// Our side of a day as CSV (biz_no, transaction_id, external_ref, status,
    /// completed_at, then relation_rank, recency, relation_score, error_code,
    /// error_message, attempts, batch_id).
    #[command(after_help = help::EXPORT)]
    Export {
        /// The day, YYYY-MM-DD in reconcile.utc_offset_hours (default: yesterday there).
        #[arg(long, value_name = "YYYY-MM-DD")]
        date: Option<String>,
    },
    /// Every final job of a batch or a day, with its result event's fields (JSON Lines or CSV).
    #[command(after_help = results::RESULTS)]
    Results {
        #[command(flatten)]
        selection: results::ResultSelection,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: results::ResultFormat,
        /// Where to write; `-` is stdout. A file is created new (never overwritten).
        #[arg(long, value_name = "FILE", default_value = "-")]
        out: PathBuf,
    },
    /// Billed queries, budget used and jobs refused for budget, per statement day.
    #[command(after_help = help::SPEND)]
    Spend(spend::SpendArgs),
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
    /// The log filter for this command: `status`, `show` and `dead` silence
    /// the client library's channel errors, since probing a queue that does
    /// not exist yet closes a channel (which lapin logs at ERROR) and they
    /// report missing queues themselves.
    pub fn log_filter(&self, configured: &str) -> String {
        match self {
            Command::Status { .. }
            | Command::Show(_)
            | Command::Dead { .. }
            | Command::Erase(_)
            | Command::Purge(_) => {
                format!("{configured},lapin::channel=off")
            }
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
                crate::sandbox::run_cli(*args).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Sign {
                params,
                private_key,
            } => sign(&params, &private_key),
            Command::CertSn { file, root } => cert::cert_sn(&file, root),
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
                batch_id,
                fresh,
            } => {
                let input = operator::EnqueueInput {
                    file: &file,
                    format,
                    strict,
                    rejects,
                    batch_id,
                    fresh,
                };
                operator::enqueue(&settings, input).await
            }
            Command::Status { batch, json, watch } => {
                let options = status::StatusOptions { batch, json, watch };
                status::status(&settings, options).await
            }
            Command::RequeueDead(args) => dead::requeue(&settings, args).await,
            Command::Show(args) => lookup::show(&settings, args).await,
            Command::Dead { action } => dead::dead(&settings, action).await,
            Command::Erase(args) => erase::erase(&settings, args).await,
            Command::Purge(args) => purge::purge(&settings, args).await,
            Command::Reconcile(args) => reconciliation::reconcile(&settings, args).await,
            Command::Export { date } => reconciliation::export(&settings, date.as_deref()).await,
            Command::Results {
                selection,
                format,
                out,
            } => results::results(&settings, &selection, format, &out).await,
            Command::Spend(args) => spend::spend(&settings, args).await,
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

/// clap's parser for every batch id flag (`enqueue --batch-id`, `status
/// --batch`, `results --batch`): the job message's rule.
fn parse_batch_id(text: &str) -> Result<String, String> {
    crate::job::validate_batch_id(text)
        .map(|()| text.to_owned())
        .map_err(|_| crate::job::BATCH_ID_RULE.to_owned())
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

mod cert;
mod dead;
mod erase;
mod help;
mod lookup;
mod operator;
mod purge;
mod reconciliation;
mod results;
mod spend;
mod status;
