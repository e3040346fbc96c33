//! The text after each subcommand's `--help`: its exit codes, the environment
//! variables it reads and one example, so that the help stands alone. A test
//! (`tests/it/help.rs`) walks clap's subcommand list and fails a subcommand
//! without these three sections.

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
  zhima-worker sandbox --listen 127.0.0.1:8480 --system-error-rate 0.1 --seed 7
  zhima-worker sandbox --cert-dir target/sandbox-certs     # certificate mode (公钥证书模式)";

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
  1   error: configuration, broker, database, unreadable input, --rejects file
      exists, a --batch-id enqueued before
  2   some records invalid (the valid ones published, unless --strict)
  64  usage error, or a format that cannot be told from the extension

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__AMQP__EXCHANGE              where jobs are published (any ZHIMA__<SECTION>__<KEY> works)

Every run is one batch: its id (--batch-id, or a new one) is stamped on each
published job and printed on the summary line (\"; batch_id ID\"); follow it with
`zhima-worker results --batch ID`. enqueue records the batch in the database
(applying the migrations first, as `run` does).

Example:
  zhima-worker enqueue jobs.csv --rejects rejects.csv --batch-id loans-2026-12-01";

pub(super) const STATUS: &str = "\
Shows, from the database: jobs by status (a row exists once a worker took the
job; `(succeeded by reuse)` counts the succeeded ones answered from a stored
answer, reuse.max_age_days), the rate over the last minute (from completed_at) and the replicas (live
leases; SQLite keeps none). From the broker: each queue's READY messages and
CONSUMERS (a queue that does not exist reads `not declared`), the delay queues
of the current and of earlier configurations (those `run` registered), and the
dead queue's messages by reason (x-zhima-error), read without acknowledging
them and all given back. AMQP does not report unacknowledged messages: see
zhima_jobs_in_flight on /metrics. --batch ID shows one batch instead: total
(unknown until enqueue finishes), succeeded, failed, in progress, not yet
started, rate and ETA.

Exit codes:
  0   printed (with --watch: stopped with Ctrl-C)
  1   error: configuration, database or broker unreachable; --batch names an unknown batch
  64  usage error

Environment:
  AMQP_URL, DATABASE_URL             shortcuts for amqp.url and database.url
  ZHIMA__<SECTION>__<KEY>            any configuration key

Example:
  DATABASE_URL=postgres://zhima@db/zhima zhima-worker status --batch loans_0412 --watch 5";

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

pub(super) const SPEND: &str = "\
Columns (one line per statement day, midnight to midnight in reconcile.utc_offset_hours):
  billed               queries the worker stored as succeeded that day (the ledger; the
                       count `reconcile` matches against the statement)
  reused               jobs answered from a stored answer (reuse.max_age_days): no
                       call, nothing billed
  budget_used          units of spend.daily_limit taken that day: billed, plus calls
                       whose outcome is unknown (timeouts, 5xx), counted as billed
  refused_for_budget   jobs turned back at the limit (each once a day), left waiting in
                       the queue (not failed, not billed)
  daily_limit          the limit in force when the day's last unit was taken
                       (- when no budget was enforced that day)

Exit codes:
  0   printed
  1   error: configuration, or the database unreachable
  64  usage error (a bad --date or --days)

Environment:
  DATABASE_URL                       shortcut for database.url
  ZHIMA__RECONCILE__UTC_OFFSET_HOURS the statement day's zone (8: UTC+8)

Example:
  zhima-worker spend                         # the last 7 days up to today
  zhima-worker spend --date 2026-12-01 --days 1 --json";
