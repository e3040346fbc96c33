//! Handlers of the dead-letter tools: `dead list`, `dead show`, `dead purge
//! --invalid` and `requeue-dead`. They check the arguments, print (masked
//! personal data only) and choose exit codes; reading and moving messages is
//! `crate::queue::{dead, admin}`, which never loses one (see
//! `crate::queue::dead`).

use std::collections::HashSet;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::Context;
use secrecy::ExposeSecret;

use super::EXIT_USAGE;
use super::lookup::printable;
use crate::config::Settings;
use crate::job::TransactionId;
use crate::queue::admin::{self, RequeueFilter, Selection};
use crate::queue::dead::{self, DeadEntry};
use crate::store::JobStore;

pub(super) const DEAD: &str = "\
Exit codes:
  0   success
  1   error: configuration, broker unreachable; dead show: the job has no
      dead message
  64  usage error (each subcommand's --help has the details)

Environment:
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__AMQP__DEAD_QUEUE            the dead queue (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker dead list --group-by reason";

pub(super) const DEAD_LIST: &str = "\
Exit codes:
  0   listed (an empty or missing dead queue lists nothing)
  1   error: configuration, broker unreachable
  64  usage error

Every message is read and handed back: the dead queue is left exactly as it
was. Personal fields are shown masked (640202********4686).

Environment:
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__AMQP__DEAD_QUEUE            the queue read (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker dead list --group-by reason
  zhima-worker dead list --limit 20 --json | jq '.entries[].transaction_id'";

pub(super) const DEAD_SHOW: &str = "\
Exit codes:
  0   the job has a message in the dead queue (each copy is shown)
  1   it has none, or an error: configuration, broker unreachable
  64  usage error, or a TRANSACTION_ID that breaks its rule

Environment:
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__AMQP__DEAD_QUEUE            the queue read (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker dead show loan8812_c1";

pub(super) const DEAD_PURGE: &str = "\
Exit codes:
  0   purged (each removed message is listed first, masked); nothing else moved
  1   error: configuration, broker unreachable
  64  usage error (--invalid is required)

Only messages that can never succeed are removed: bodies that are not a valid
job (not JSON, a field breaking the API's rules, over 64 KiB). Jobs that ran
out of attempts stay: requeue-dead them.

Environment:
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__AMQP__DEAD_QUEUE            the queue cleaned (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker dead purge --invalid --dry-run && zhima-worker dead purge --invalid";

pub(super) const REQUEUE_DEAD: &str = "\
Exit codes:
  0   requeued (still-invalid messages stay in the dead queue and are listed;
      a --transaction-id with no dead message is named on stderr)
  1   error: configuration, database or broker unreachable
  64  usage error, or a --transaction-id or --reason that breaks its rule

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__AMQP__DEAD_QUEUE            the queue read from (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker requeue-dead --limit 100
  zhima-worker requeue-dead --reason SYSTEM_ERROR --dry-run
  zhima-worker requeue-dead --transaction-id loan8812_c1 --transaction-id loan8812_c2";

/// The longest `--reason` text accepted (the stored reasons are shorter).
const REASON_MAX_CHARS: usize = 1000;

#[derive(Debug, clap::Subcommand)]
pub enum DeadCommand {
    /// The dead messages, masked, with their reasons; counts per reason.
    #[command(after_help = DEAD_LIST)]
    List {
        /// Print only the count per reason (grouped by cause, e.g. "gave up: SYSTEM_ERROR").
        #[arg(long, value_name = "FIELD", value_parser = ["reason"])]
        group_by: Option<String>,
        /// List at most N messages (all are counted). Default 100.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// One JSON object {"total","by_reason","entries"} instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every dead copy of one job, masked, with its reason and attempt.
    #[command(after_help = DEAD_SHOW)]
    Show {
        /// The job's transaction_id.
        #[arg(value_name = "TRANSACTION_ID")]
        transaction_id: String,
        /// A JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the dead messages that can never succeed (invalid bodies).
    #[command(after_help = DEAD_PURGE)]
    Purge {
        /// Remove the messages that are not a valid job (required: the only kind purged).
        #[arg(long, required = true)]
        invalid: bool,
        /// List what would be removed and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    /// Requeue at most N jobs.
    #[arg(long, value_name = "N", conflicts_with = "transaction_id")]
    limit: Option<u64>,
    /// Requeue only this job (repeatable); each is moved at most once.
    #[arg(long, value_name = "ID")]
    transaction_id: Vec<String>,
    /// Requeue only jobs whose dead-letter reason contains this text
    /// (case-insensitive), e.g. SYSTEM_ERROR or HTTP_502.
    #[arg(long, value_name = "SUBSTRING")]
    reason: Option<String>,
    /// List what would be requeued and move nothing.
    #[arg(long)]
    dry_run: bool,
}

pub(super) async fn dead(settings: &Settings, command: DeadCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadCommand::List {
            group_by,
            limit,
            json,
        } => list(settings, group_by.is_some(), limit, json).await,
        DeadCommand::Show {
            transaction_id,
            json,
        } => show(settings, &transaction_id, json).await,
        DeadCommand::Purge { dry_run, .. } => purge(settings, dry_run).await,
    }
}

async fn list(
    settings: &Settings,
    grouped: bool,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let listing = dead::list_dead(settings, if grouped { 0 } else { limit })
        .await
        .context("reading the dead queue")?;
    if json {
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !grouped {
        for entry in &listing.entries {
            println!("{}", entry_line(entry));
        }
        if listing.entries.len() as u64 != listing.total {
            println!("(listed {} of {})", listing.entries.len(), listing.total);
        }
        println!();
    }
    let width = listing
        .by_reason
        .values()
        .map(|n| n.to_string().len())
        .max();
    println!("COUNT  REASON");
    for (reason, count) in &listing.by_reason {
        println!(
            "{count:>width$}  {}",
            printable(reason),
            width = width.unwrap_or(1).max(5)
        );
    }
    println!(
        "{} dead messages in {}",
        listing.total, settings.amqp.dead_queue
    );
    Ok(ExitCode::SUCCESS)
}

async fn show(settings: &Settings, transaction_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let id = match TransactionId::from_str(transaction_id) {
        Ok(id) => id,
        Err(error) => {
            eprintln!("error: TRANSACTION_ID {}", error.rule);
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let found = dead::find_dead(settings, &id.to_string())
        .await
        .context("reading the dead queue")?;
    if json {
        println!("{}", serde_json::to_string(&found)?);
    } else {
        for entry in &found {
            print!("{}", entry_details(entry));
        }
    }
    if found.is_empty() {
        eprintln!(
            "no message of transaction_id {id} in the dead queue {}",
            settings.amqp.dead_queue
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Each message is printed before it is removed (stdout is flushed per
/// line), so a purge that dies half-way has reported everything it removed.
async fn purge(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let verb = if dry_run { "would remove" } else { "removing" };
    let mut report = |entry: &DeadEntry| println!("{verb}: {}", entry_line(entry));
    let count = dead::purge_invalid(settings, dry_run, &mut report)
        .await
        .context("purging invalid dead messages")?;
    let done = if dry_run { "would remove" } else { "removed" };
    println!("{done} {count} invalid dead messages");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn requeue(settings: &Settings, args: RequeueArgs) -> anyhow::Result<ExitCode> {
    let (selection, filter) = match requeue_plan(args) {
        Ok(plan) => plan,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let wanted: Vec<String> = match &selection {
        Selection::Only(ids) => ids.iter().cloned().collect(),
        Selection::All { .. } => Vec::new(),
    };
    let dry_run = filter.dry_run;
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let report = admin::requeue_dead_filtered(settings, &store, selection, filter)
        .await
        .context("requeueing dead jobs")?;
    for invalid in &report.invalid {
        let id = invalid.message_id.as_deref().unwrap_or("(no message_id)");
        eprintln!(
            "still invalid, left in the dead queue: {}: {}",
            printable(id),
            invalid.reason
        );
    }
    let moved: HashSet<&str> = report
        .requeued
        .iter()
        .chain(&report.would_requeue)
        .map(String::as_str)
        .collect();
    let mut missing: Vec<&String> = wanted
        .iter()
        .filter(|id| !moved.contains(id.as_str()))
        .collect();
    missing.sort();
    for id in missing {
        eprintln!("not requeued: no valid message of transaction_id {id} in the dead queue");
    }
    if dry_run {
        for id in &report.would_requeue {
            println!("would requeue {id}");
        }
        println!(
            "dry run: would requeue {}, left {} invalid; nothing moved",
            report.would_requeue.len(),
            report.invalid.len()
        );
    } else {
        println!(
            "requeued {}, left {} invalid",
            report.requeued.len(),
            report.invalid.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the flags: every id by the job message's rule, the reason as
/// non-empty printable text.
fn requeue_plan(args: RequeueArgs) -> Result<(Selection, RequeueFilter), String> {
    let mut ids = HashSet::new();
    for id in &args.transaction_id {
        let id = TransactionId::from_str(id).map_err(|e| format!("--transaction-id {}", e.rule))?;
        ids.insert(id.to_string());
    }
    if let Some(reason) = &args.reason {
        if reason.trim().is_empty() {
            return Err("--reason must not be blank".into());
        }
        if reason.chars().count() > REASON_MAX_CHARS {
            return Err(format!(
                "--reason must be at most {REASON_MAX_CHARS} characters"
            ));
        }
        if reason.chars().any(char::is_control) {
            return Err("--reason must not contain control characters".into());
        }
    }
    let selection = if ids.is_empty() {
        Selection::All { limit: args.limit }
    } else {
        Selection::Only(ids)
    };
    let filter = RequeueFilter {
        reason: args.reason,
        dry_run: args.dry_run,
    };
    Ok((selection, filter))
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".into(), printable)
}

/// One line: id, reference, masked contact, reason.
fn entry_line(entry: &DeadEntry) -> String {
    let state = if entry.invalid.is_some() {
        "invalid"
    } else {
        "valid"
    };
    format!(
        "{}  {}  ref={}  cert_no={}  phone={}  reason={}",
        or_dash(entry.transaction_id.as_deref()),
        state,
        or_dash(entry.external_ref.as_deref()),
        or_dash(entry.cert_no.as_deref()),
        or_dash(entry.relation_phone.as_deref()),
        or_dash(entry.reason.as_deref()),
    )
}

fn entry_details(entry: &DeadEntry) -> String {
    let fields = [
        ("transaction_id", entry.transaction_id.as_deref()),
        ("message_id", entry.message_id.as_deref()),
        ("external_ref", entry.external_ref.as_deref()),
        ("reason", entry.reason.as_deref()),
        ("reason_group", Some(entry.reason_group.as_str())),
        ("invalid", entry.invalid.as_deref()),
        ("cert_no", entry.cert_no.as_deref()),
        ("name", entry.name.as_deref()),
        ("relation_phone", entry.relation_phone.as_deref()),
        ("relation_name", entry.relation_name.as_deref()),
        ("relation", entry.relation.as_deref()),
        ("product_code", entry.product_code.as_deref()),
    ];
    let mut out = String::new();
    for (label, value) in fields {
        out.push_str(&format!("{label:<16}{}\n", or_dash(value)));
    }
    let attempt = entry.attempt.map_or_else(|| "-".into(), |a| a.to_string());
    out.push_str(&format!("{:<16}{attempt}\n\n", "attempt"));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn args(ids: &[&str], reason: Option<&str>) -> RequeueArgs {
        RequeueArgs {
            limit: None,
            transaction_id: ids.iter().map(|id| (*id).to_owned()).collect(),
            reason: reason.map(str::to_owned),
            dry_run: false,
        }
    }

    #[test]
    fn requeue_flags_breaking_their_rules_are_refused_by_name() {
        let long = "x".repeat(10_000);
        for (ids, reason, expected) in [
            (vec![""], None, "--transaction-id must not be empty"),
            (
                vec!["ok_1", "t\u{1b}"],
                None,
                "--transaction-id may contain only",
            ),
            (
                vec![long.as_str()],
                None,
                "--transaction-id must be at most 64",
            ),
            (vec![], Some(" "), "--reason must not be blank"),
            (vec![], Some("a\u{0}b"), "--reason must not contain control"),
            (vec![], Some(long.as_str()), "--reason must be at most 1000"),
        ] {
            let error = requeue_plan(args(&ids, reason)).unwrap_err();
            assert!(error.starts_with(expected), "{error}");
        }
        let (selection, filter) =
            requeue_plan(args(&["a_1", "a_1", "b_2"], Some("HTTP_502"))).unwrap();
        assert_eq!(
            selection,
            Selection::Only(["a_1".to_owned(), "b_2".to_owned()].into())
        );
        assert_eq!(filter.reason.as_deref(), Some("HTTP_502"));
        let (selection, _) = requeue_plan(args(&[], None)).unwrap();
        assert_eq!(selection, Selection::All { limit: None });
    }
}
