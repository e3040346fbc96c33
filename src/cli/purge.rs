//! `purge`: applies the retention periods (`[retention]`, PIPL art. 19).
//! Clears raw response bodies, deletes rows with their ledger entries and
//! outbox events, and removes dead-queue messages past their period. Meant to
//! run nightly (README "Personal data" has cron, systemd and Kubernetes
//! examples).

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::queue::dead;
use crate::store::{JobStore, PurgeCutoffs, Purged};

pub(super) const PURGE: &str = "\
Exit codes:
  0   purged (or nothing was old enough)
  1   error: configuration, database or broker unreachable

Periods (whole days, [retention] in the configuration):
  retention.response_body_days (30)  raw response bodies, by the row's last change
  retention.row_days (180)           rows, ledger entries, outbox events, tombstones
  retention.dead_letter_days (7)     dead-queue messages, by the x-zhima-dead-lettered-at
                                     header the worker sets; a message without it
                                     (dead-lettered by an older version or by the
                                     broker) is kept and counted: remove it with
                                     `dead list` / `requeue-dead` / `erase`

Environment:
  DATABASE_URL                       shortcut for database.url
  AMQP_URL                           shortcut for amqp.url
  ZHIMA__RETENTION__ROW_DAYS         (any ZHIMA__<SECTION>__<KEY> works)

Example:
  zhima-worker purge --dry-run
  zhima-worker purge";

/// Arguments of `purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Count what would be removed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// The cut-off times for `now` under the configured periods.
fn cutoffs(settings: &Settings, now: DateTime<Utc>) -> (PurgeCutoffs, DateTime<Utc>) {
    let days = |n: u32| now - TimeDelta::days(i64::from(n));
    let retention = &settings.retention;
    (
        PurgeCutoffs {
            response_body_before: days(retention.response_body_days),
            row_before: days(retention.row_days),
        },
        days(retention.dead_letter_days),
    )
}

pub(super) async fn purge(settings: &Settings, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let dry_run = args.dry_run;
    let (database_cutoffs, dead_before) = cutoffs(settings, Utc::now());
    let store = JobStore::connect(settings.database.url.expose_secret(), 1)
        .await
        .context("connecting to the database")?;
    let purged = store
        .purge(database_cutoffs, dry_run)
        .await
        .context("purging the database")?;
    let mut undated = 0_u64;
    let mut expired = |message: &dead::QueuedMessage| match message.dead_lettered_at() {
        Some(at) => at < dead_before,
        None => {
            undated += 1;
            false
        }
    };
    let queues = [settings.amqp.dead_queue.clone()];
    let removed = dead::remove_where(settings, "purge", &queues, dry_run, &mut expired)
        .await
        .context("purging the dead queue")?;
    let dead_messages: u64 = removed.values().sum();
    print!("{}", render(&purged, dead_messages, undated, dry_run));
    tracing::info!(
        dry_run,
        response_bodies = purged.response_bodies,
        rows = purged.rows,
        ledger_entries = purged.ledger_entries,
        outbox_events = purged.outbox_events,
        tombstones = purged.tombstones,
        dead_messages,
        dead_messages_undated = undated,
        "purge done"
    );
    Ok(ExitCode::SUCCESS)
}

fn render(purged: &Purged, dead_messages: u64, undated: u64, dry_run: bool) -> String {
    let verb = if dry_run { "would purge" } else { "purged" };
    format!(
        "{verb}:\n  response bodies         {}\n  rows                    {}\n  \
         ledger entries          {}\n  outbox events           {}\n  \
         tombstones              {}\n  dead-queue messages     {dead_messages}\n\
         kept: {undated} dead-queue messages without a dead-lettered-at header\n",
        purged.response_bodies,
        purged.rows,
        purged.ledger_entries,
        purged.outbox_events,
        purged.tombstones,
    )
}
