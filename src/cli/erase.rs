//! `erase`: deletes one person's data on request (PIPL art. 47): the rows
//! found through the blind index or the producer's reference, their ledger
//! entries and outbox events, and their messages in the dead queue and the
//! delay queues. Prints counts by category, never the value asked for.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args};
use secrecy::ExposeSecret;

use super::EXIT_USAGE;
use crate::config::Settings;
use crate::job;
use crate::pii::{self, PiiKey};
use crate::queue::dead;
use crate::store::{Erased, JobStore, PersonKey};

pub(super) const ERASE: &str = "\
Exit codes:
  0   erased (or nothing matched: erasing again is harmless)
  1   error: configuration, PII key, database or broker unreachable
  64  usage error: none or several of --cert-no/--phone/--external-ref, or a
      value that breaks its rule (the value itself is never echoed)

A billed row leaves a tombstone (transaction_id and biz_no only) so that the
day's `reconcile` counts it as erased instead of billed_not_stored. One log
line per erase names the kind of key, never its value.

Environment:
  DATABASE_URL                       shortcut for database.url
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__PII__HMAC_KEY_PATH          the PII key (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker erase --cert-no 11010519800101018X --dry-run
  zhima-worker erase --phone 15843991158";

/// Arguments of `erase`: exactly one key.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("who").required(true).args(["cert_no", "phone", "external_ref"])))]
pub struct EraseArgs {
    /// The person's resident ID number (18 characters; x or X).
    #[arg(long, value_name = "N")]
    cert_no: Option<String>,
    /// The contact's mainland mobile number (11 digits).
    #[arg(long, value_name = "P")]
    phone: Option<String>,
    /// The producer's reference (every row and message carrying it).
    #[arg(long, value_name = "R")]
    external_ref: Option<String>,
    /// Count what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The longest external_ref a job may carry (see `job`).
const EXTERNAL_REF_MAX_CHARS: usize = 256;

/// What the operator asked to erase, checked.
enum Target {
    CertNo(String),
    Phone(String),
    ExternalRef(String),
}

impl Target {
    fn kind(&self) -> &'static str {
        match self {
            Self::CertNo(_) => "cert_no",
            Self::Phone(_) => "phone",
            Self::ExternalRef(_) => "external_ref",
        }
    }
}

/// Checks the one key given; the message names the flag and the rule only.
fn target(args: &EraseArgs) -> Result<Target, String> {
    match (&args.cert_no, &args.phone, &args.external_ref) {
        (Some(cert_no), None, None) => {
            let normalized = pii::normalize_cert_no(cert_no);
            job::validate_cert_no(&normalized).map_err(|e| format!("--cert-no: {}", e.rule))?;
            Ok(Target::CertNo(normalized))
        }
        (None, Some(phone), None) => {
            let normalized = pii::normalize_phone(phone);
            job::validate_mobile(&normalized).map_err(|e| format!("--phone: {}", e.rule))?;
            Ok(Target::Phone(normalized))
        }
        (None, None, Some(reference)) => {
            if reference.is_empty() {
                return Err("--external-ref must not be empty".into());
            }
            if reference.chars().count() > EXTERNAL_REF_MAX_CHARS {
                return Err(format!(
                    "--external-ref must be at most {EXTERNAL_REF_MAX_CHARS} characters"
                ));
            }
            if reference.chars().any(char::is_control) {
                return Err("--external-ref must not contain control characters".into());
            }
            Ok(Target::ExternalRef(reference.clone()))
        }
        _ => Err("give exactly one of --cert-no, --phone, --external-ref".into()),
    }
}

pub(super) async fn erase(settings: &Settings, args: EraseArgs) -> anyhow::Result<ExitCode> {
    let target = match target(&args) {
        Ok(target) => target,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let key = PiiKey::load(&settings.pii.hmac_key_path).context("loading the PII key")?;
    let person = match &target {
        Target::CertNo(v) => PersonKey::CertNo(key.cert_no_index(v)),
        Target::Phone(v) => PersonKey::Phone(key.phone_index(v)),
        Target::ExternalRef(v) => PersonKey::ExternalRef(v.clone()),
    };
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let dry_run = args.dry_run;
    let erased = store
        .erase(&person, dry_run)
        .await
        .context("erasing rows")?;
    let queues = erase_queued(settings, &key, &person, &erased, dry_run).await?;
    print!("{}", render(&erased, &queues, settings, dry_run));
    let queued: u64 = queues.values().sum();
    tracing::info!(
        by = target.kind(),
        dry_run,
        rows = erased.rows,
        ledger_entries = erased.ledger_entries,
        outbox_events = erased.outbox_events,
        tombstones = erased.tombstones,
        queued_messages = queued,
        "erase done"
    );
    Ok(ExitCode::SUCCESS)
}

/// Removes the person's messages from the dead queue and the delay queues:
/// a message matches when the same keyed hash of its field (read from an
/// invalid body too) equals the one asked for, when it carries the reference, or when it belongs to an erased
/// row's transaction_id.
async fn erase_queued(
    settings: &Settings,
    key: &PiiKey,
    person: &PersonKey,
    erased: &Erased,
    dry_run: bool,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut queues = dead::delay_queue_names(settings).context("naming the delay queues")?;
    queues.push(settings.amqp.dead_queue.clone());
    let ids: HashSet<&str> = erased.transaction_ids.iter().map(String::as_str).collect();
    let mut matches = |message: &dead::QueuedMessage| {
        if message.transaction_id().is_some_and(|id| ids.contains(id)) {
            return true;
        }
        match person {
            PersonKey::CertNo(hash) => message
                .cert_no()
                .is_some_and(|cert_no| key.cert_no_index(cert_no) == *hash),
            PersonKey::Phone(hash) => message
                .relation_phone()
                .is_some_and(|phone| key.phone_index(phone) == *hash),
            PersonKey::ExternalRef(reference) => message.external_ref() == Some(reference),
        }
    };
    dead::remove_where(settings, "erase", &queues, dry_run, &mut matches)
        .await
        .context("removing queued messages")
}

fn render(
    erased: &Erased,
    queues: &BTreeMap<String, u64>,
    settings: &Settings,
    dry_run: bool,
) -> String {
    let verb = if dry_run { "would erase" } else { "erased" };
    let dead_queue = &settings.amqp.dead_queue;
    let dead = queues.get(dead_queue).copied().unwrap_or(0);
    let delay: u64 = queues
        .iter()
        .filter(|(queue, _)| *queue != dead_queue)
        .map(|(_, count)| *count)
        .sum();
    let kept = if dry_run { "would keep" } else { "kept" };
    format!(
        "{verb}:\n  rows                    {}\n  ledger entries          {}\n  \
         outbox events           {}\n  dead-queue messages     {dead}\n  \
         delay-queue messages    {delay}\n{kept}: {} tombstones (biz_no, transaction_id) \
         for the reconciliation\n",
        erased.rows, erased.ledger_entries, erased.outbox_events, erased.tombstones
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn args(cert_no: Option<&str>, phone: Option<&str>, reference: Option<&str>) -> EraseArgs {
        EraseArgs {
            cert_no: cert_no.map(str::to_owned),
            phone: phone.map(str::to_owned),
            external_ref: reference.map(str::to_owned),
            dry_run: false,
        }
    }

    fn refused(args: &EraseArgs) -> String {
        match target(args) {
            Ok(_) => panic!("must be refused"),
            Err(message) => message,
        }
    }

    #[test]
    fn hostile_keys_are_refused_naming_the_flag_and_never_the_value() {
        let cases = [
            args(Some("11010519800101018"), None, None),
            args(Some("110105198001010181"), None, None),
            args(Some(""), None, None),
            args(Some("11010519800101018X\u{0}"), None, None),
            args(None, Some("1584399115"), None),
            args(None, Some("158439911\u{7}8"), None),
            args(None, Some(""), None),
            args(None, None, Some("")),
            args(None, None, Some("loan\n1")),
            args(None, None, Some(&"r".repeat(257))),
        ];
        for case in &cases {
            let message = refused(case);
            let flag = if case.cert_no.is_some() {
                "--cert-no"
            } else if case.phone.is_some() {
                "--phone"
            } else {
                "--external-ref"
            };
            assert!(message.starts_with(flag), "{message}");
            for value in [&case.cert_no, &case.phone].into_iter().flatten() {
                if !value.is_empty() {
                    assert!(!message.contains(value.as_str()), "{message}");
                }
            }
        }
        assert!(
            refused(&args(Some("11010519800101018X"), Some("15843991158"), None))
                .contains("exactly one")
        );
    }

    #[test]
    fn keys_are_normalized_like_the_stored_index() {
        match target(&args(Some(" 11010519800101018x "), None, None)).unwrap() {
            Target::CertNo(v) => assert_eq!(v, "11010519800101018X"),
            _ => panic!("cert_no"),
        }
        match target(&args(None, Some("15843991158 "), None)).unwrap() {
            Target::Phone(v) => assert_eq!(v, "15843991158"),
            _ => panic!("phone"),
        }
    }
}
