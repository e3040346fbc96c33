//! The operator commands `enqueue`, `status` and `requeue-dead`, run as the
//! built binary against the local RabbitMQ, each test on its own randomly
//! named exchange and queues (deleted at the end) and its own SQLite file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use zhima_worker::queue::Topology;

use crate::support;
use crate::support::broker::{UniqueQueues, unique_queues};
use zhima_worker::store::{JobStatus, JobStore};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEADLINE: Duration = Duration::from_secs(10);

const VALID_1: &str = r#"{"transaction_id": "t_valid_1", "cert_no": "640202199007164686", "name": "张三", "relation_phone": "15843991158", "relation_name": "李四", "relation": "family", "external_ref": "loan-1/contact-1"}"#;
const VALID_2: &str = r#"{"transaction_id": "t_valid_2", "cert_no": "110105198001010016", "name": "王伟", "relation_phone": "13912345678", "relation_name": "刘芳", "relation": "friend"}"#;
const NO_ID: &str = r#"{"cert_no": "11010519800101018X", "name": "欧阳娜娜", "relation_phone": "18600001111", "relation_name": "陈静"}"#;
const BAD_CHECK_DIGIT: &str = r#"{"transaction_id": "t_bad_1", "cert_no": "640202199007164685", "name": "张三", "relation_phone": "15843991158", "relation_name": "李四"}"#;

/// Output of one run of the binary.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// One test's broker names, SQLite file and AMQP connection.
struct Fixture {
    exchange: String,
    queue: String,
    dead_queue: String,
    topology: Topology,
    database_url: String,
    dir: tempfile::TempDir,
    connection: Connection,
}

impl Fixture {
    async fn new() -> Self {
        let UniqueQueues {
            exchange,
            queue,
            dead_queue,
            topology,
        } = unique_queues();
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite:{}?mode=rwc", dir.path().join("x.sqlite").display());
        let properties = ConnectionProperties::default();
        let connection = Connection::connect(AMQP_URL, properties).await.unwrap();
        Self {
            exchange,
            queue,
            dead_queue,
            topology,
            database_url,
            dir,
            connection,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(support::BIN);
        command
            .args(args)
            .env("ZHIMA__AMQP__EXCHANGE", &self.exchange)
            .env("ZHIMA__AMQP__QUEUE", &self.queue)
            .env("ZHIMA__AMQP__DEAD_QUEUE", &self.dead_queue)
            .env("DATABASE_URL", &self.database_url)
            .env_remove("ZHIMA__DATABASE__URL")
            .env_remove("AMQP_URL")
            .env_remove("ZHIMA__AMQP__URL")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Outcome {
        collect(self.command(args).output().await.unwrap())
    }

    async fn run_with_stdin(&self, args: &[&str], input: &str) -> Outcome {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        collect(child.wait_with_output().await.unwrap())
    }

    fn write_input(&self, name: &str, lines: &[&str]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    async fn channel(&self) -> Channel {
        self.connection.create_channel().await.unwrap()
    }

    /// Ready messages (passive declare); `None` if the queue does not exist.
    async fn depth(&self, queue: &str) -> Option<u32> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = self
            .channel()
            .await
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        declared.ok().map(|queue| queue.message_count())
    }

    /// Polls until `queue` holds exactly `expected` ready messages.
    async fn wait_for_depth(&self, queue: &str, expected: u32) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let depth = self.depth(queue).await;
            if depth == Some(expected) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {depth:?} messages, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, queue: &str) -> lapin::message::Delivery {
        let options = BasicGetOptions { no_ack: true };
        let message = self.channel().await.basic_get(queue.into(), options).await;
        message.unwrap().expect("a message").delivery
    }

    async fn store(&self) -> JobStore {
        JobStore::connect(&self.database_url, 1).await.unwrap()
    }

    async fn cleanup(self) {
        let channel = self.channel().await;
        support::broker::delete_topology(&channel, &self.topology).await;
        let _ = self.connection.close(200, "test done".into()).await;
    }
}

fn collect(output: std::process::Output) -> Outcome {
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn path_arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

#[tokio::test]
async fn jsonl_with_invalid_lines_exits_2_names_them_and_publishes_only_the_valid_ones() {
    let fixture = Fixture::new().await;
    let input = fixture.write_input(
        "jobs.jsonl",
        &[VALID_1, BAD_CHECK_DIGIT, VALID_2, "{not json", NO_ID],
    );

    let outcome = fixture.run(&["enqueue", path_arg(&input)]).await;

    assert_eq!(outcome.code, 2, "stderr: {}", outcome.stderr);
    assert!(
        outcome.stderr.contains("line 2: invalid: field `cert_no`"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("line 4: invalid: not valid JSON"),
        "{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("640202199007164685"),
        "PII in {}",
        outcome.stderr
    );
    assert!(
        outcome
            .stdout
            .contains("line 5: assigned transaction_id zw_"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome
            .stdout
            .contains("enqueued 3, invalid 2, assigned 1 transaction_ids")
    );
    fixture.wait_for_depth(&fixture.queue, 3).await;
    let first = fixture.get(&fixture.queue).await;
    assert_eq!(first.properties.delivery_mode(), &Some(2));
    let message_id = first
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    assert_eq!(message_id.as_deref(), Some("t_valid_1"));
    let body: serde_json::Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(body["product_code"], "w1010100001000001200");
    fixture.cleanup().await;
}

#[tokio::test]
async fn a_reused_transaction_id_exits_2_naming_both_lines_and_an_oversized_line_is_skipped() {
    let fixture = Fixture::new().await;
    let other_contact = VALID_1.replace("李四", "王五");
    let oversized = format!("\u{feff}{{\"pad\": \"{}\"}}", "x".repeat(70 * 1024));
    let input = fixture.write_input(
        "jobs.jsonl",
        &[&oversized, VALID_1, VALID_2, &other_contact],
    );

    let outcome = fixture.run(&["enqueue", path_arg(&input)]).await;

    assert_eq!(outcome.code, 2, "stderr: {}", outcome.stderr);
    assert!(
        outcome
            .stderr
            .contains("line 1: invalid: line is over the 65536-byte"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains(
            "line 4: invalid: field `transaction_id`: t_valid_1 is already used on line 2"
        ),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stdout.contains("enqueued 2, invalid 2"),
        "{}",
        outcome.stdout
    );
    fixture.wait_for_depth(&fixture.queue, 2).await;
    fixture.cleanup().await;
}

#[tokio::test]
async fn strict_mode_publishes_nothing_when_a_line_is_invalid() {
    let fixture = Fixture::new().await;
    let input = fixture.write_input("jobs.ndjson", &[VALID_1, BAD_CHECK_DIGIT, VALID_2]);

    let outcome = fixture
        .run(&["enqueue", "--strict", path_arg(&input)])
        .await;

    assert_eq!(outcome.code, 2, "stderr: {}", outcome.stderr);
    assert!(outcome.stderr.contains("line 2:"), "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("enqueued 0, invalid 1"),
        "{}",
        outcome.stdout
    );
    assert_eq!(fixture.depth(&fixture.queue).await, Some(0));
    fixture.cleanup().await;
}

#[tokio::test]
async fn csv_columns_map_by_header_name_and_empty_cells_are_absent() {
    let fixture = Fixture::new().await;
    let input = fixture.write_input(
        "jobs.csv",
        &[
            "relation_name,name,cert_no,relation_phone,relation,transaction_id,external_ref",
            "李四,张三,640202199007164686,15843991158,,c_1,loan-1/contact-1",
            "刘芳,王伟,110105198001010016,1391234567,friend,c_2,",
            "陈静,王伟,110105198001010016,13912345678,workmate,,loan-1/contact-3",
        ],
    );

    let outcome = fixture.run(&["enqueue", path_arg(&input)]).await;

    assert_eq!(outcome.code, 2, "stderr: {}", outcome.stderr);
    assert!(
        outcome
            .stderr
            .contains("line 3: invalid: field `relation_phone`"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome
            .stdout
            .contains("line 4: assigned transaction_id zw_"),
        "{}",
        outcome.stdout
    );
    fixture.wait_for_depth(&fixture.queue, 2).await;
    let first = fixture.get(&fixture.queue).await;
    let body: serde_json::Value = serde_json::from_slice(&first.data).unwrap();
    assert_eq!(body["transaction_id"], "c_1");
    assert_eq!(body["relation_name"], "李四");
    assert!(body.get("relation").is_none(), "{body}");
    fixture.cleanup().await;
}

/// `--fresh` marks every published job `"fresh": true` (CSV has no column
/// for it); without it a record's own `fresh` is kept as it is.
#[tokio::test]
async fn fresh_marks_every_published_job_and_without_it_records_keep_their_own() {
    let fixture = Fixture::new().await;
    let csv = fixture.write_input(
        "fresh.csv",
        &[
            "relation_name,name,cert_no,relation_phone,transaction_id",
            "李四,张三,640202199007164686,15843991158,f_1",
        ],
    );
    let outcome = fixture.run(&["enqueue", "--fresh", path_arg(&csv)]).await;
    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    let jsonl = concat!(
        r#"{"transaction_id":"f_2","cert_no":"640202199007164686","name":"张三","relation_phone":"15843991158","relation_name":"李四"}"#,
        "\n",
        r#"{"transaction_id":"f_3","cert_no":"640202199007164686","name":"张三","relation_phone":"15843991158","relation_name":"李四","fresh":true}"#,
        "\n"
    );
    let outcome = fixture.run_with_stdin(&["enqueue", "-"], jsonl).await;
    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    fixture.wait_for_depth(&fixture.queue, 3).await;
    let mut fresh = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let delivery = fixture.get(&fixture.queue).await;
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        let id = body["transaction_id"].as_str().unwrap().to_owned();
        fresh.insert(id, body.get("fresh").cloned());
    }
    assert_eq!(fresh["f_1"], Some(serde_json::Value::Bool(true)), "--fresh");
    assert_eq!(fresh["f_2"], None, "absent stays absent");
    assert_eq!(fresh["f_3"], Some(serde_json::Value::Bool(true)), "its own");
    fixture.cleanup().await;
}

#[tokio::test]
async fn empty_input_on_stdin_declares_the_topology_and_exits_0() {
    let fixture = Fixture::new().await;
    assert_eq!(fixture.depth(&fixture.queue).await, None);

    let outcome = fixture.run_with_stdin(&["enqueue", "-"], "\n\n").await;

    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    assert!(
        outcome.stdout.contains("enqueued 0, invalid 0, assigned 0"),
        "{}",
        outcome.stdout
    );
    assert_eq!(fixture.depth(&fixture.queue).await, Some(0));
    assert_eq!(fixture.depth(&fixture.dead_queue).await, Some(0));
    for delay_queue in &fixture.topology.delay_queues() {
        assert_eq!(fixture.depth(delay_queue).await, Some(0), "{delay_queue}");
    }
    fixture.cleanup().await;
}

#[tokio::test]
async fn status_prints_job_counts_and_queue_depths() {
    let fixture = Fixture::new().await;
    assert_eq!(fixture.run(&["migrate"]).await.code, 0);
    let input = fixture.write_input("jobs.jsonl", &[VALID_1, VALID_2]);
    assert_eq!(fixture.run(&["enqueue", path_arg(&input)]).await.code, 0);
    fixture.wait_for_depth(&fixture.queue, 2).await;

    let outcome = fixture.run(&["status"]).await;

    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    let line = |label: &str| {
        let found = outcome.stdout.lines().find(|l| l.starts_with(label));
        found.unwrap_or_else(|| panic!("no {label} row in {}", outcome.stdout))
    };
    for status in ["pending", "retrying", "succeeded", "failed"] {
        assert!(line(status).ends_with(" 0"), "{}", outcome.stdout);
    }
    // QUEUE, NAME, READY, CONSUMERS
    let cells = |label: &str| {
        line(label)
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(cells("main"), ["main", fixture.queue.as_str(), "2", "0"]);
    assert!(line("retry ").ends_with(" 0"), "{}", outcome.stdout);
    assert_eq!(
        cells("dead"),
        ["dead", fixture.dead_queue.as_str(), "0", "0"]
    );
    fixture.cleanup().await;
}

#[tokio::test]
async fn requeue_dead_moves_a_valid_dead_job_back_with_fresh_headers() {
    let fixture = Fixture::new().await;
    assert_eq!(fixture.run(&["migrate"]).await.code, 0);
    assert_eq!(fixture.run_with_stdin(&["enqueue", "-"], "").await.code, 0);
    let store = fixture.store().await;
    store
        .record_rejected(
            "t_valid_1",
            None,
            None,
            "SYSTEM_ERROR",
            "attempts exhausted",
        )
        .await
        .unwrap();
    publish_dead(&fixture, VALID_1.as_bytes(), Some("t_valid_1")).await;
    publish_dead(&fixture, b"{broken", None).await;
    fixture.wait_for_depth(&fixture.dead_queue, 2).await;

    let outcome = fixture.run(&["requeue-dead"]).await;

    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    assert!(
        outcome.stdout.contains("requeued 1, left 1 invalid"),
        "{}",
        outcome.stdout
    );
    fixture.wait_for_depth(&fixture.queue, 1).await;
    fixture.wait_for_depth(&fixture.dead_queue, 1).await;
    let requeued = fixture.get(&fixture.queue).await;
    assert_eq!(requeued.data, VALID_1.as_bytes());
    for stale in [
        "x-zhima-attempt",
        "x-zhima-throttled",
        "x-zhima-error",
        "x-death",
        "x-first-death-reason",
    ] {
        assert!(header(&requeued, stale).is_none(), "{stale} was kept");
    }
    assert!(
        header(&requeued, "tenant").is_some(),
        "producer header dropped"
    );
    let row = store.find("t_valid_1").await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Retrying);
    fixture.cleanup().await;
}

/// Publishes to the dead queue as the worker and the broker leave messages
/// there: with retry bookkeeping and death headers.
async fn publish_dead(fixture: &Fixture, body: &[u8], message_id: Option<&str>) {
    let mut headers = FieldTable::default();
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    headers.insert("x-zhima-attempt".into(), AMQPValue::LongLongInt(8));
    headers.insert("x-zhima-throttled".into(), AMQPValue::LongLongInt(1));
    headers.insert("x-zhima-error".into(), text("attempts exhausted"));
    headers.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
    headers.insert("x-first-death-reason".into(), text("delivery_limit"));
    headers.insert("tenant".into(), text("acme"));
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    let channel = fixture.channel().await;
    let options = BasicPublishOptions::default();
    let publish = channel.basic_publish(
        "".into(),
        fixture.dead_queue.as_str().into(),
        options,
        body,
        properties,
    );
    publish.await.unwrap();
}
