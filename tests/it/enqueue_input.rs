//! `enqueue`'s handling of its input, run as the built binary against the
//! local RabbitMQ: line numbers, reasons, the names of rejected records, and
//! the `--rejects` file. Each test has its own randomly named exchange and
//! queues (deleted at the end); the fixture is kept apart from `enqueue.rs`.

use std::path::PathBuf;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use zhima_worker::queue::Topology;

use crate::support;
use crate::support::broker::{UniqueQueues, unique_queues};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const VALID: &str = r#"{"transaction_id": "t_valid_1", "cert_no": "640202199007164686", "name": "张三", "relation_phone": "15843991158", "relation_name": "李四", "external_ref": "loan-1/contact-1"}"#;

/// One test's broker names and scratch directory.
struct Input {
    exchange: String,
    queue: String,
    dead_queue: String,
    topology: Topology,
    dir: tempfile::TempDir,
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Input {
    fn new() -> Self {
        let UniqueQueues {
            exchange,
            queue,
            dead_queue,
            topology,
        } = unique_queues();
        Self {
            exchange,
            queue,
            dead_queue,
            topology,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn enqueue(&self, args: &[&str]) -> Outcome {
        let database_url = format!("sqlite:{}?mode=rwc", self.path("x.sqlite").display());
        let output = tokio::process::Command::new(support::BIN)
            .arg("enqueue")
            .args(args)
            .env("ZHIMA__AMQP__EXCHANGE", &self.exchange)
            .env("ZHIMA__AMQP__QUEUE", &self.queue)
            .env("ZHIMA__AMQP__DEAD_QUEUE", &self.dead_queue)
            .env("DATABASE_URL", database_url)
            .env_remove("ZHIMA__DATABASE__URL")
            .env_remove("AMQP_URL")
            .env_remove("ZHIMA__AMQP__URL")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Ready messages in the main queue (`None` before it is declared). The
    /// publishes were confirmed before `enqueue` exited, so no waiting.
    async fn depth(&self, connection: &Connection) -> Option<u32> {
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(self.queue.as_str().into(), options, FieldTable::default())
            .await;
        declared.ok().map(|queue| queue.message_count())
    }

    async fn cleanup(self) {
        let connection = connect().await;
        let channel = connection.create_channel().await.unwrap();
        support::broker::delete_topology(&channel, &self.topology).await;
        let _ = connection.close(200, "test done".into()).await;
    }
}

async fn connect() -> Connection {
    Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn enqueue_csv_line_numbers_count_the_header_in_a_crlf_file_with_blank_lines() {
    let input = Input::new();
    let csv = "transaction_id,name,cert_no,relation_phone,relation_name\r\n\
               c_1,张三,640202199007164686,15843991158,李四\r\n\
               \r\n\
               c_2,张三,640202199007164686,158,李四\r\n";
    let path = input.write("jobs.csv", csv);

    let outcome = input.enqueue(&[path.to_str().unwrap()]).await;

    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome
            .stderr
            .contains("line 4: invalid: field `relation_phone`"),
        "{}",
        outcome.stderr
    );
    input.cleanup().await;
}

#[tokio::test]
async fn enqueue_reports_a_blank_field_alike_in_csv_and_jsonl() {
    let input = Input::new();
    let csv = input.write(
        "jobs.csv",
        "transaction_id,name,cert_no,relation_phone,relation_name\n\
         c_1,,640202199007164686,15843991158,李四\n",
    );
    let jsonl = input.write("jobs.jsonl", &(VALID.replace("张三", "") + "\n"));

    let from_csv = input.enqueue(&[csv.to_str().unwrap()]).await;
    let from_jsonl = input.enqueue(&[jsonl.to_str().unwrap()]).await;

    let reason = "invalid: field `name`: is blank; a value is required";
    assert!(
        from_csv.stderr.contains(&format!("line 2: {reason}")),
        "{}",
        from_csv.stderr
    );
    assert!(
        from_jsonl.stderr.contains(&format!("line 1: {reason}")),
        "{}",
        from_jsonl.stderr
    );
    input.cleanup().await;
}

#[tokio::test]
async fn enqueue_names_a_rejected_line_by_its_transaction_id_and_external_ref() {
    let input = Input::new();
    let bad = VALID.replace("4686", "4685");
    let path = input.write("jobs.jsonl", &format!("{bad}\n"));

    let outcome = input.enqueue(&[path.to_str().unwrap()]).await;

    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let named = r#"(transaction_id t_valid_1, external_ref "loan-1/contact-1")"#;
    assert!(outcome.stderr.contains(named), "{}", outcome.stderr);
    assert!(
        !outcome.stderr.contains("640202199007164685"),
        "{}",
        outcome.stderr
    );
    input.cleanup().await;
}

#[tokio::test]
async fn enqueue_rejects_file_holds_the_rejected_records_and_is_never_overwritten() {
    let input = Input::new();
    let connection = connect().await;
    let bad = VALID
        .replace("4686", "4685")
        .replace("t_valid_1", "t_bad_1");
    let path = input.write("jobs.jsonl", &format!("{VALID}\n{bad}\n"));
    let rejects = input.path("rejects.jsonl");
    let args = [
        "--rejects",
        rejects.to_str().unwrap(),
        path.to_str().unwrap(),
    ];

    let outcome = input.enqueue(&args).await;

    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stdout.contains("enqueued 1, invalid 1"),
        "{}",
        outcome.stdout
    );
    let written = std::fs::read_to_string(&rejects).unwrap();
    let entry: serde_json::Value = serde_json::from_str(written.trim_end()).unwrap();
    assert_eq!(entry["line"], 2);
    assert_eq!(entry["transaction_id"], "t_bad_1");
    assert_eq!(entry["record"], bad);
    assert!(entry["reason"].as_str().unwrap().contains("cert_no"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&rejects).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(input.depth(&connection).await, Some(1));

    let again = input.enqueue(&args).await;

    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&rejects).unwrap(), written);
    assert_eq!(input.depth(&connection).await, Some(1));
    let _ = connection.close(200, "test done".into()).await;
    input.cleanup().await;
}
