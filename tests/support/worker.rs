//! The end-to-end harness: a sandbox gateway on port 0, a fresh database
//! (PostgreSQL database or SQLite file), uniquely named queues on the real
//! RabbitMQ, and the real `zhima-worker run` binary as a child process so that
//! tests can SIGKILL and SIGTERM it. For scenarios that need no broker and no
//! child process, see `in_process`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use rand::Rng;
use sqlx::Connection;
use tokio::process::{Child, Command};
use zhima_worker::config::{self, Settings};
use zhima_worker::queue::publisher::Outgoing;
use zhima_worker::queue::{self, Publisher, Topology};
use zhima_worker::sandbox::{self, Faults, RunningSandbox, SandboxClock, SandboxConfig};

use super::jobs::count_values;
use super::{BIN, broker, postgres};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Postgres,
    Sqlite,
}

pub struct TestWorker {
    pub id: String,
    pub sandbox: RunningSandbox,
    pub env: BTreeMap<String, String>,
    pub database_url: String,
    db: Db,
    _dir: tempfile::TempDir,
    connection: lapin::Connection,
    publisher: Publisher,
    pub topology: Topology,
}

/// Env overrides on top of the default config, as a user would set them.
fn base_env(id: &str, gateway_url: &str, database_url: &str) -> BTreeMap<String, String> {
    let pairs = [
        ("ZHIMA__UPSTREAM__GATEWAY_URL", gateway_url.to_owned()),
        ("DATABASE_URL", database_url.to_owned()),
        ("ZHIMA__AMQP__EXCHANGE", format!("t_{id}.jobs")),
        ("ZHIMA__AMQP__QUEUE", format!("t_{id}.verify")),
        ("ZHIMA__AMQP__DEAD_QUEUE", format!("t_{id}.dead")),
        ("ZHIMA__RETRY__INITIAL_DELAY_MS", "100".into()),
        ("ZHIMA__RETRY__MAX_DELAY_MS", "400".into()),
        ("ZHIMA__RETRY__MAX_ATTEMPTS", "8".into()),
        ("ZHIMA__RATE_LIMIT__QPS", "2000".into()),
        ("ZHIMA__RATE_LIMIT__BURST", "20".into()),
        ("ZHIMA__WORKER__CONCURRENCY", "16".into()),
        ("ZHIMA__WORKER__SHUTDOWN_GRACE_S", "10".into()),
        ("ZHIMA__WORKER__PROBE_INTERVAL_S", "1".into()),
        ("ZHIMA__LOG__FORMAT", "json".into()),
        // The published test key is 0644 on a fresh clone and is not secret.
        ("ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE", "true".into()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

pub async fn spawn_worker(db: Db) -> TestWorker {
    spawn_worker_with(db, Faults::default()).await
}

pub async fn spawn_worker_with(db: Db, faults: Faults) -> TestWorker {
    spawn_worker_with_clock(db, faults, SandboxClock::System).await
}

/// With the sandbox's billing clock pinned (see [`SandboxClock`]): the
/// worker and the database keep the real clock.
pub async fn spawn_worker_with_clock(db: Db, faults: Faults, clock: SandboxClock) -> TestWorker {
    build(db, start_sandbox(faults, clock).await).await
}

/// A sandbox gateway on port 0 with the test keys, injecting `faults` from a
/// fixed seed (7), so that a test's fault pattern is the same every run.
pub async fn start_sandbox(faults: Faults, clock: SandboxClock) -> RunningSandbox {
    let mut sandbox_config = SandboxConfig::with_test_keys().expect("test keys");
    sandbox_config.faults = faults;
    sandbox_config.clock = clock;
    sandbox_config.seed = Some(7);
    sandbox::start(sandbox_config)
        .await
        .expect("sandbox starts")
}

pub async fn build(db: Db, sandbox: RunningSandbox) -> TestWorker {
    let id = random_id();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match db {
        Db::Postgres => postgres::create_database(&database_name(&id)).await,
        Db::Sqlite => format!("sqlite:{}/jobs.sqlite?mode=rwc", dir.path().display()),
    };
    let mut env = base_env(&id, &sandbox.gateway_url(), &database_url);
    let key_path = write_pii_key(dir.path());
    env.insert(
        "ZHIMA__PII__HMAC_KEY_PATH".into(),
        key_path.display().to_string(),
    );
    let settings = settings_for(&env);
    let connection = queue::connect(&settings.amqp, "test")
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let topology = Topology::from_settings(&settings).expect("topology");
    topology.declare(&channel).await.expect("declare");
    zhima_worker::store::JobStore::migrate(&database_url)
        .await
        .expect("migrate");
    let publisher = Publisher::open(&connection).await.expect("publisher");
    TestWorker {
        id,
        sandbox,
        env,
        database_url,
        db,
        _dir: dir,
        connection,
        publisher,
        topology,
    }
}

/// The defaults with this test's queue names (all the harness needs to
/// declare and inspect the same topology as the worker).
fn settings_for(env: &BTreeMap<String, String>) -> Settings {
    let mut settings = config::load(None).expect("default settings");
    settings.amqp.exchange = env["ZHIMA__AMQP__EXCHANGE"].clone();
    settings.amqp.queue = env["ZHIMA__AMQP__QUEUE"].clone();
    settings.amqp.dead_queue = env["ZHIMA__AMQP__DEAD_QUEUE"].clone();
    settings.retry.initial_delay_ms = env["ZHIMA__RETRY__INITIAL_DELAY_MS"].parse().expect("ms");
    settings.retry.max_delay_ms = env["ZHIMA__RETRY__MAX_DELAY_MS"].parse().expect("ms");
    settings
}

/// A fresh PII key (32 random bytes, mode 0600) in `dir`, as an operator
/// would make one; every worker of one test shares it, like replicas do.
pub fn write_pii_key(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("pii_hmac.key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .expect("create the PII key");
    let key: [u8; 32] = rand::rng().random();
    file.write_all(&key).expect("write the PII key");
    path
}

/// Ten random lowercase letters, for names no other test uses.
pub fn random_id() -> String {
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

/// The sandbox's throttling answers (`40005`, any sub-code): calls refused
/// for going over the merchant's rate.
pub fn throttled_calls(stats: &sandbox::Stats) -> u64 {
    stats
        .errors
        .iter()
        .filter(|(code, _)| code.starts_with("40005"))
        .map(|(_, count)| count)
        .sum()
}

/// The PostgreSQL database of the worker with this id.
pub fn database_name(id: &str) -> String {
    format!("zw_{id}")
}

/// Runs `$query` (a sqlx query on `&mut $conn`) on a fresh connection to
/// the worker's database, PostgreSQL or SQLite; the query must succeed.
/// A macro because the two connection types share no trait the query takes.
macro_rules! on_either_database {
    ($worker:expr, |$conn:ident| $query:expr) => {
        match $worker.db {
            Db::Postgres => {
                let mut connection = sqlx::PgConnection::connect(&$worker.database_url)
                    .await
                    .expect("pg");
                let $conn = &mut connection;
                $query.await.expect("query")
            }
            Db::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&$worker.database_url)
                    .await
                    .expect("sqlite");
                let $conn = &mut connection;
                $query.await.expect("query")
            }
        }
    };
}

impl TestWorker {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .envs(&self.env)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(Stdio::null());
        }
        command
    }

    pub fn start_run(&self, extra_env: &[(&str, &str)]) -> Child {
        let mut command = self.command(&["run"]);
        command.envs(extra_env.iter().copied());
        command.spawn().expect("worker starts")
    }

    /// `run --until-idle`, which must exit 0 within `limit`.
    pub async fn run_until_idle(&self, limit: Duration) {
        let mut child = self
            .command(&["run", "--until-idle"])
            .spawn()
            .expect("spawn");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .expect("worker finished in time")
            .expect("wait");
        assert!(status.success(), "run --until-idle exited {status}");
    }

    pub async fn publish_job(&self, job: &serde_json::Value) {
        let body = serde_json::to_vec(job).expect("json");
        self.publish_raw(&body).await;
    }

    pub async fn publish_raw(&self, body: &[u8]) {
        let message = Outgoing::job(&self.topology.names, body, None);
        self.publisher.publish(message).await.expect("published");
    }

    pub async fn ready(&self, queue_name: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        queue::topology::ready_messages(&channel, queue_name)
            .await
            .expect("queue exists")
    }

    pub async fn statuses(&self) -> BTreeMap<String, String> {
        let rows: Vec<(String, String)> = self
            .query_rows("SELECT transaction_id, status FROM relation_checks")
            .await;
        rows.into_iter().collect()
    }

    /// Runs a query returning two text columns on either database.
    pub async fn query_rows(&self, sql: &'static str) -> Vec<(String, String)> {
        on_either_database!(self, |conn| sqlx::query_as(sql).fetch_all(conn))
    }

    /// Runs a statement built by the test (trusted text) on either database;
    /// the rows it changed.
    pub async fn execute(&self, sql: &str) -> u64 {
        on_either_database!(self, |conn| async {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(conn)
                .await?;
            Ok::<_, sqlx::Error>(done.rows_affected())
        })
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        on_either_database!(self, |conn| sqlx::query_scalar(sql).fetch_one(conn))
    }

    /// Waits until `condition` holds for the statuses, or fails after `limit`.
    pub async fn wait_for_statuses(
        &self,
        limit: Duration,
        condition: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let statuses = self.statuses().await;
            if condition(&statuses) {
                return statuses;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached in {limit:?}; statuses: {:?}",
                count_values(&statuses)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes this test's queues and database.
    pub async fn cleanup(self) {
        let channel = self.connection.create_channel().await.expect("channel");
        broker::delete_topology(&channel, &self.topology).await;
        if self.db == Db::Postgres {
            postgres::drop_database(&database_name(&self.id)).await;
        }
    }
}
