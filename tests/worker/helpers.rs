//! Test harness for the worker: a sandbox gateway on port 0, a fresh database
//! (PostgreSQL database or SQLite file), uniquely named queues on the real
//! RabbitMQ, and the real `zhima-worker run` binary as a child process so that
//! tests can SIGKILL and SIGTERM it. Other test binaries include it too, each
//! using a part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::{QueueDeleteOptions, QueuePurgeOptions};
use rand::Rng;
use sqlx::Connection;
use tokio::process::{Child, Command};
use zhima_worker::config::{self, Settings};
use zhima_worker::queue::publisher::Outgoing;
use zhima_worker::queue::{self, Publisher, Topology};
use zhima_worker::sandbox::{self, Faults, RunningSandbox, SandboxConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_zhima-worker");
/// The role `scripts/ensure-services.sh` creates (CREATEDB, not superuser);
/// `ZHIMA_TEST_POSTGRES_URL` names another server or role.
pub const PG_SERVER: &str = "postgres://zhima_test:zhima_test@127.0.0.1:5432";

fn pg_url(database: &str) -> String {
    let server = std::env::var("ZHIMA_TEST_POSTGRES_URL")
        .map(|url| url.trim_end_matches("/postgres").to_owned())
        .unwrap_or_else(|_| PG_SERVER.to_owned());
    format!("{server}/{database}")
}

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
    let mut sandbox_config = SandboxConfig::with_test_keys().expect("test keys");
    sandbox_config.faults = faults;
    sandbox_config.seed = Some(7);
    let sandbox = sandbox::start(sandbox_config)
        .await
        .expect("sandbox starts");
    build(db, sandbox).await
}

pub async fn build(db: Db, sandbox: RunningSandbox) -> TestWorker {
    let id = random_id();
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match db {
        Db::Postgres => create_pg_database(&id).await,
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

fn random_id() -> String {
    let mut rng = rand::rng();
    (0..10)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

async fn create_pg_database(id: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(&pg_url("postgres"))
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE zw_{id}")))
        .execute(&mut admin)
        .await
        .expect("create database");
    pg_url(&format!("zw_{id}"))
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
        match self.db {
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .expect("pg");
                sqlx::query_as(sql)
                    .fetch_all(&mut conn)
                    .await
                    .expect("query")
            }
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .expect("sqlite");
                sqlx::query_as(sql)
                    .fetch_all(&mut conn)
                    .await
                    .expect("query")
            }
        }
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        match self.db {
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .expect("pg");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect("query")
            }
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .expect("sqlite");
                sqlx::query_scalar(sql)
                    .fetch_one(&mut conn)
                    .await
                    .expect("query")
            }
        }
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
        let mut names = vec![
            self.topology.names.queue.clone(),
            self.topology.names.dead_queue.clone(),
        ];
        names.extend(self.topology.delay_queues());
        for name in names {
            let _ = channel
                .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                .await;
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.topology.names.exchange.as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
        if self.db == Db::Postgres {
            let mut admin = sqlx::PgConnection::connect(&pg_url("postgres"))
                .await
                .expect("postgres");
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS zw_{} WITH (FORCE)",
                self.id
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

pub fn count_values(map: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in map.values() {
        *counts.entry(value.clone()).or_insert(0) += 1;
    }
    counts
}

/// A valid 18-digit ID for birth date `yyyymmdd` (ISO 7064 MOD 11-2 check).
pub fn cert_no(region: &str, birth: &str, sequence: u32) -> String {
    let body = format!("{region}{birth}{:03}", sequence % 1000);
    let weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .chars()
        .zip(weights)
        .map(|(c, w)| c.to_digit(10).expect("digit") * w)
        .sum();
    let check = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'][(sum % 11) as usize];
    format!("{body}{check}")
}

/// A valid job message numbered `n`, with transaction_id `{prefix}_{n}`.
pub fn job(prefix: &str, n: u32) -> serde_json::Value {
    serde_json::json!({
        "transaction_id": format!("{prefix}_{n}"),
        "cert_no": cert_no("110101", "19900307", n),
        "name": "张三",
        "relation_phone": format!("138{:08}", n),
        "relation_name": "李四",
        "relation": "family",
        "external_ref": format!("loan-{n}/contact-1"),
    })
}

pub fn succeeded(statuses: &BTreeMap<String, String>) -> usize {
    statuses.values().filter(|s| *s == "succeeded").count()
}
