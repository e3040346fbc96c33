//! `status` and `status --batch`, run as the built binary against the local
//! RabbitMQ (each test on its own queues, deleted at the end) and its own
//! database: broker counts beside the rows, the dead queue by reason read
//! without losing a message, delay queues of earlier configurations, live
//! leases, a batch's progress, `--json` and `--watch`, and hostile flags.

use std::process::Stdio;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::Connection as _;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use crate::support::broker::{UniqueQueues, unique_queues};
use crate::support::postgres::{create_migrated_database, drop_database};
use crate::support::{self, eventually, worker::random_id};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const LIMIT: Duration = Duration::from_secs(30);

struct Fixture {
    names: UniqueQueues,
    database_url: String,
    pg_database: Option<String>,
    _dir: tempfile::TempDir,
    connection: Connection,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("s.sqlite").display());
        Self::with_database(url, None, dir).await
    }

    async fn postgres() -> Self {
        let name = format!("zhima_status_{}", random_id());
        let url = create_migrated_database(&name).await;
        Self::with_database(url, Some(name), tempfile::tempdir().unwrap()).await
    }

    async fn with_database(url: String, pg: Option<String>, dir: tempfile::TempDir) -> Self {
        let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .unwrap();
        let fixture = Self {
            names: unique_queues(),
            database_url: url,
            pg_database: pg,
            _dir: dir,
            connection,
        };
        assert_eq!(fixture.run(&["migrate"]).await.code, 0);
        fixture
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(support::BIN);
        command
            .args(args)
            .env("ZHIMA__AMQP__EXCHANGE", &self.names.exchange)
            .env("ZHIMA__AMQP__QUEUE", &self.names.queue)
            .env("ZHIMA__AMQP__DEAD_QUEUE", &self.names.dead_queue)
            .env("DATABASE_URL", &self.database_url)
            .env("ZHIMA__LOG__FORMAT", "json")
            .env_remove("ZHIMA__DATABASE__URL")
            .env_remove("AMQP_URL")
            .env_remove("ZHIMA__AMQP__URL")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Outcome {
        let output = self.command(args).output().await.unwrap();
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn json(&self, args: &[&str]) -> Value {
        let outcome = self.run(args).await;
        assert_eq!(outcome.code, 0, "{args:?}: {}", outcome.stderr);
        serde_json::from_str(outcome.stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}): {}", outcome.stdout))
    }

    async fn channel(&self) -> Channel {
        self.connection.create_channel().await.unwrap()
    }

    async fn publish(&self, queue: &str, reason: Option<&str>) {
        let mut headers = FieldTable::default();
        if let Some(reason) = reason {
            headers.insert(
                "x-zhima-error".into(),
                AMQPValue::LongString(LongString::from(reason)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        let channel = self.channel().await;
        channel.confirm_select(Default::default()).await.unwrap();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                b"{}",
                properties,
            )
            .await
            .unwrap();
        confirm.await.unwrap();
    }

    async fn ready(&self, queue: &str) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .channel()
            .await
            .queue_declare(queue.into(), options, FieldTable::default())
            .await
            .unwrap();
        declared.message_count()
    }

    async fn sql(&self, statements: &[String]) {
        if self.pg_database.is_some() {
            let mut db = sqlx::PgConnection::connect(&self.database_url)
                .await
                .unwrap();
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        } else {
            let mut db = sqlx::SqliteConnection::connect(&self.database_url)
                .await
                .unwrap();
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
    }

    async fn cleanup(self) {
        let channel = self.channel().await;
        support::broker::delete_topology(&channel, &self.names.topology).await;
        let _ = self.connection.close(200, "test done".into()).await;
        if let Some(name) = &self.pg_database {
            drop_database(name).await;
        }
    }
}

fn row(transaction_id: &str, batch: &str, status: &str, completed: bool) -> String {
    let completed_at = match completed {
        true => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-5 seconds')",
        false => "NULL",
    };
    format!(
        "INSERT INTO relation_checks (transaction_id, status, batch_id, completed_at) \
         VALUES ('{transaction_id}', '{status}', '{batch}', {completed_at})"
    )
}

#[tokio::test]
async fn status_shows_broker_counts_beside_the_rows_and_the_dead_queue_by_reason_losing_nothing() {
    let fixture = Fixture::sqlite().await;
    let names = &fixture.names;
    assert_eq!(
        fixture.run(&["enqueue", "-"]).await.code,
        0,
        "declares the topology"
    );
    for _ in 0..2 {
        fixture.publish(&names.queue, None).await;
    }
    let gave_up = "gave up after 8 attempts; last error SYSTEM_ERROR: busy";
    for reason in [
        Some(gave_up),
        Some(gave_up),
        Some("database error 22021: bad byte"),
        None,
    ] {
        fixture.publish(&names.dead_queue, reason).await;
    }
    // A quorum queue counts returned messages again shortly after the nack.
    let fixture_ref = &fixture;
    let dead_queue = names.dead_queue.as_str();
    let all_dead_ready = || async move {
        eventually(LIMIT, "every dead message ready", || async move {
            (fixture_ref.ready(dead_queue).await == 4).then_some(())
        })
        .await;
    };
    for _ in 0..2 {
        all_dead_ready().await;
        let status = fixture.json(&["status", "--json"]).await;
        assert_eq!(
            status["jobs"]["pending"], 0,
            "no row before a worker takes a job"
        );
        let main = &status["queues"]["main"];
        assert_eq!(
            (main["ready"].as_u64(), main["consumers"].as_u64()),
            (Some(2), Some(0))
        );
        assert_eq!(status["queues"]["dead"]["ready"], 4);
        let reasons = &status["queues"]["dead_reasons"];
        assert_eq!(reasons["read"], 4);
        assert_eq!(
            reasons["by_reason"]["gave up after 8 attempts; last error SYSTEM_ERROR"],
            2
        );
        assert_eq!(reasons["by_reason"]["database error 22021"], 1);
        assert_eq!(reasons["by_reason"]["(no x-zhima-error header)"], 1);
        assert_eq!(status["replicas"], Value::Null, "SQLite keeps no leases");
        assert_eq!(status["jobs_per_second_last_minute"], 0.0);
    }
    all_dead_ready().await;
    let text = fixture.run(&["status"]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    let main = text.stdout.lines().find(|l| l.starts_with("main")).unwrap();
    assert_eq!(
        main.split_whitespace().collect::<Vec<_>>(),
        ["main", names.queue.as_str(), "2", "0"]
    );
    assert!(text.stdout.contains("DEAD BY REASON"), "{}", text.stdout);
    assert!(
        text.stdout.contains("replicas: SQLite keeps no leases"),
        "{}",
        text.stdout
    );
    assert!(!text.stderr.contains("ERROR"), "{}", text.stderr);
    all_dead_ready().await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn before_the_topology_exists_queues_read_not_declared_and_nothing_is_logged_at_error() {
    let fixture = Fixture::sqlite().await;
    let text = fixture.run(&["status"]).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(!text.stderr.contains("ERROR"), "{}", text.stderr);
    let main = text.stdout.lines().find(|l| l.starts_with("main")).unwrap();
    assert!(main.ends_with("not declared"), "{}", text.stdout);
    assert!(
        text.stdout.contains("does not exist yet"),
        "{}",
        text.stdout
    );
    let status = fixture.json(&["status", "--json"]).await;
    assert_eq!(status["queues"]["main"]["exists"], false);
    assert_eq!(status["queues"]["main"]["ready"], Value::Null);
    fixture.cleanup().await;
}

#[tokio::test]
async fn a_delay_queue_of_an_earlier_configuration_is_listed_from_the_registry() {
    let fixture = Fixture::sqlite().await;
    assert_eq!(fixture.run(&["enqueue", "-"]).await.code, 0);
    let old = format!("{}.delay.777", fixture.names.queue);
    let channel = fixture.channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(old.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    fixture.publish(&old, None).await;
    let gone = format!("{}.delay.555", fixture.names.queue);
    fixture
        .sql(&[
            format!("INSERT INTO delay_queues (name, delay_ms) VALUES ('{old}', 777)"),
            format!("INSERT INTO delay_queues (name, delay_ms) VALUES ('{gone}', 555)"),
        ])
        .await;
    let status = fixture.json(&["status", "--json"]).await;
    let delays = status["queues"]["delays"].as_array().unwrap();
    let listed = delays.iter().find(|d| d["name"] == old.as_str()).unwrap();
    assert_eq!(
        (listed["ready"].as_u64(), &listed["current"]),
        (Some(1), &Value::Bool(false))
    );
    assert!(
        delays.iter().all(|d| d["name"] != gone.as_str()),
        "a registered queue that no longer exists is left out"
    );
    assert_eq!(
        delays.iter().filter(|d| d["current"] == true).count(),
        fixture.names.topology.delay_queues().len()
    );
    let text = fixture.run(&["status"]).await;
    assert!(
        text.stdout.contains("777ms (earlier config)"),
        "{}",
        text.stdout
    );
    assert!(
        !text.stderr.contains("ERROR"),
        "probing the vanished queue logs nothing: {}",
        text.stderr
    );
    let _ = channel
        .queue_delete(old.as_str().into(), QueueDeleteOptions::default())
        .await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn replicas_are_the_live_leases() {
    let fixture = Fixture::postgres().await;
    fixture
        .sql(
            &["INSERT INTO worker_leases (worker_id, expires_at) VALUES \
             ('a-1', now() + interval '1 minute'), ('b-2', now() + interval '1 minute'), \
             ('c-3', now() - interval '1 minute')"
                .to_owned()],
        )
        .await;
    let status = fixture.json(&["status", "--json"]).await;
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["replica_ids"], serde_json::json!(["a-1", "b-2"]));
    let text = fixture.run(&["status"]).await;
    assert!(
        text.stdout.contains("replicas (live leases): 2 (a-1, b-2)"),
        "{}",
        text.stdout
    );
    fixture.cleanup().await;
}

#[tokio::test]
async fn status_batch_reports_progress_rate_and_eta_from_the_rows() {
    let fixture = Fixture::sqlite().await;
    let mut statements = vec![
        "INSERT INTO batches (batch_id, size) VALUES ('b_1', 10)".to_owned(),
        "INSERT INTO batches (batch_id) VALUES ('b_open')".to_owned(),
    ];
    for n in 0..3 {
        statements.push(row(&format!("s{n}"), "b_1", "succeeded", true));
    }
    statements.push(row("f0", "b_1", "failed", true));
    statements.push(row("r0", "b_1", "retrying", false));
    statements.push(row("p0", "b_1", "pending", false));
    statements.push(row("other", "b_2", "succeeded", true));
    statements.push(row("o0", "b_open", "succeeded", true));
    fixture.sql(&statements).await;

    let batch = fixture.json(&["status", "--batch", "b_1", "--json"]).await;
    assert_eq!(batch["total"], 10);
    assert_eq!(batch["succeeded"], 3);
    assert_eq!(batch["failed"], 1);
    assert_eq!(batch["in_progress"], 2);
    assert_eq!(batch["not_started"], 4);
    assert_eq!(
        batch["jobs_per_second_last_minute"], 0.07,
        "4 in the last minute"
    );
    assert_eq!(batch["eta_seconds"], 90, "6 left at 4/min");
    let text = fixture.run(&["status", "--batch", "b_1"]).await;
    assert!(
        text.stdout.contains("ETA                 1m30s"),
        "{}",
        text.stdout
    );

    let open = fixture
        .json(&["status", "--batch", "b_open", "--json"])
        .await;
    assert_eq!(open["total"], Value::Null);
    let text = fixture.run(&["status", "--batch", "b_open"]).await;
    assert!(
        text.stdout.contains("unknown until enqueue finishes"),
        "{}",
        text.stdout
    );

    let unknown = fixture.run(&["status", "--batch", "nobody"]).await;
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no batch \"nobody\""),
        "{}",
        unknown.stderr
    );
    for hostile in ["", "a b", "x';DROP TABLE batches;--", &"b".repeat(65)] {
        let refused = fixture.run(&["status", "--batch", hostile]).await;
        assert_eq!(refused.code, 64, "{hostile:?}");
        assert!(refused.stderr.contains("--batch"), "{}", refused.stderr);
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn status_watch_prints_a_json_line_per_refresh_until_interrupted() {
    let fixture = Fixture::sqlite().await;
    fixture
        .sql(&["INSERT INTO batches (batch_id, size) VALUES ('w', 1)".to_owned()])
        .await;
    let mut child = fixture
        .command(&["status", "--batch", "w", "--json", "--watch", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = tokio::time::timeout(LIMIT, lines.next_line())
            .await
            .expect("a refresh within the limit")
            .unwrap()
            .expect("a line");
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["batch_id"], "w");
    }
    support::process::send_signal(&child, "INT");
    let status = eventually(LIMIT, "status --watch exits", || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(status.success(), "{status}");
    for hostile in ["0", "3601", "-1", "1.5", "x"] {
        let refused = fixture
            .run(&["status", &format!("--watch={hostile}")])
            .await;
        assert_eq!(refused.code, 64, "{hostile}");
        assert!(refused.stderr.contains("--watch"), "{}", refused.stderr);
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn reading_the_dead_reasons_stops_before_a_quorum_queue_could_drop_a_message() {
    let fixture = Fixture::sqlite().await;
    assert_eq!(fixture.run(&["enqueue", "-"]).await.code, 0);
    let dead_queue = fixture.names.dead_queue.clone();
    fixture
        .publish(&dead_queue, Some("invalid: field `cert_no`: bad"))
        .await;
    let fixture_ref = &fixture;
    let dead = dead_queue.as_str();
    let mut stopped = None;
    for _ in 0..15 {
        eventually(LIMIT, "the dead message ready", || async move {
            (fixture_ref.ready(dead).await == 1).then_some(())
        })
        .await;
        let status = fixture.json(&["status", "--json"]).await;
        let reasons = &status["queues"]["dead_reasons"];
        assert_eq!(reasons["by_reason"]["invalid"], 1, "{reasons}");
        if let Some(partial) = reasons["partial"].as_str() {
            stopped = Some(partial.to_owned());
            break;
        }
    }
    let stopped = stopped.expect("the reading stopped at a message returned many times");
    assert!(stopped.contains("x-delivery-count"), "{stopped}");
    eventually(LIMIT, "the message is still there", || async move {
        (fixture_ref.ready(dead).await == 1).then_some(())
    })
    .await;
    fixture.cleanup().await;
}
