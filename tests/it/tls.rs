//! Encrypted transport (issue 13 item 4): `amqps://` through stunnel in front
//! of the real RabbitMQ, PostgreSQL with `sslmode=verify-full` against a
//! cluster of the test's own that refuses plain-text connections, both with a
//! CA made by the test (`support::tls`). A job runs end to end over both TLS
//! links; a server certificate that does not verify (another CA, another
//! name, expired), or a port without TLS, is a start-up error naming the
//! connection and the reason.

use std::process::Stdio;
use std::time::Duration;

use sqlx::Connection;
use zhima_worker::config;
use zhima_worker::queue::{self, QueueError};
use zhima_worker::store::{JobStore, StoreError};

use crate::support::tls::{Stunnel, TestCa, TlsPostgres, Validity};
use crate::support::{Db, TestWorker, job, spawn_worker};

const LIMIT: Duration = Duration::from_secs(90);

/// Runs `zhima-worker ARGS` with the worker's environment plus `env`; its
/// exit code and stderr. It must exit within [`LIMIT`].
async fn run_cli(worker: &TestWorker, args: &[&str], env: &[(&str, String)]) -> (i32, String) {
    let mut command = worker.command(args);
    command
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stderr(Stdio::piped());
    let child = command.spawn().expect("spawn");
    let output = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not exit within {LIMIT:?}"))
        .expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_end_to_end_over_amqps_and_postgres_verify_full() {
    let ca = TestCa::new("zhima test CA");
    let server = ca.issue(&["localhost", "127.0.0.1"], Validity::Current);
    let postgres = TlsPostgres::start(&server);
    let stunnel = Stunnel::start(&server);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path(), "ca.pem").display().to_string();

    let worker = spawn_worker(Db::Sqlite).await;
    for n in 0..3 {
        worker.publish_job(&job("tls", n)).await;
    }
    let database_url = postgres.url("127.0.0.1", "sslmode=verify-full");
    let env = [
        ("ZHIMA__AMQP__URL", stunnel.url("127.0.0.1")),
        ("ZHIMA__AMQP__TLS_CA_PATH", ca_path.clone()),
        ("DATABASE_URL", database_url.clone()),
        ("ZHIMA__DATABASE__TLS_CA_PATH", ca_path.clone()),
    ];
    let (code, stderr) = run_cli(&worker, &["run", "--until-idle"], &env).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, status) = run_cli(&worker, &["status"], &env).await;
    assert_eq!(code, 0, "status over both TLS links: {status}");

    assert_eq!(worker.ready(&worker.topology.names.queue).await, 0);
    // The cluster rejects plain-text connections (hostnossl ... reject), so
    // the worker's rows got there over TLS; this connection is TLS too.
    let checked = format!("{database_url}&sslrootcert={ca_path}");
    let mut connection = sqlx::PgConnection::connect(&checked).await.unwrap();
    let succeeded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM relation_checks WHERE status = 'succeeded'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(succeeded, 3);
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert!(ssl);
    let plain = postgres.url("127.0.0.1", "sslmode=disable");
    let refused = sqlx::PgConnection::connect(&plain).await.err();
    assert!(refused.is_some(), "the cluster must refuse plain text");
    connection.close().await.unwrap();
    worker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_another_ca_stop_start_up_naming_the_connection() {
    let ca = TestCa::new("zhima test CA");
    let other = TestCa::new("some other CA");
    let server = ca.issue(&["localhost", "127.0.0.1"], Validity::Current);
    let postgres = TlsPostgres::start(&server);
    let stunnel = Stunnel::start(&server);
    let dir = tempfile::tempdir().unwrap();
    let other_path = other.write(dir.path(), "other.pem").display().to_string();
    let worker = spawn_worker(Db::Sqlite).await;

    let broker = [
        ("ZHIMA__AMQP__URL", stunnel.url("127.0.0.1")),
        ("ZHIMA__AMQP__TLS_CA_PATH", other_path.clone()),
    ];
    for args in [&["run"][..], &["status"]] {
        let (code, stderr) = run_cli(&worker, args, &broker).await;
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "TLS to the broker (amqp.url) failed: the server's certificate does not \
                 verify: unknown issuer"
            ),
            "{args:?}: {stderr}"
        );
    }

    let database = [
        (
            "DATABASE_URL",
            postgres.url("127.0.0.1", "sslmode=verify-full"),
        ),
        ("ZHIMA__DATABASE__TLS_CA_PATH", other_path.clone()),
    ];
    for args in [&["run"][..], &["migrate"]] {
        let (code, stderr) = run_cli(&worker, args, &database).await;
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(
                "TLS to the database (database.url) failed: the server's certificate does \
                 not verify: unknown issuer"
            ),
            "{args:?}: {stderr}"
        );
    }
    worker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_mismatch_and_an_expired_certificate_are_named() {
    let ca = TestCa::new("zhima test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write(dir.path(), "ca.pem").display().to_string();

    // PostgreSQL's certificate names only `localhost`; the URL says 127.0.0.1.
    let postgres = TlsPostgres::start(&ca.issue(&["localhost"], Validity::Current));
    let full = postgres.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca_path}"),
    );
    for error in [
        JobStore::migrate(&full).await.unwrap_err(),
        JobStore::connect(&full, 1).await.unwrap_err(),
    ] {
        let text = error.to_string();
        assert!(matches!(error, StoreError::Tls { .. }), "{error:?}");
        assert!(
            text.contains("does not verify: name mismatch") && text.contains("127.0.0.1"),
            "{text}"
        );
    }
    // verify-ca checks the CA, not the name; require only encrypts.
    let ca_only = postgres.url(
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca_path}"),
    );
    JobStore::migrate(&ca_only).await.expect("verify-ca");
    let require = postgres.url("127.0.0.1", "sslmode=require");
    JobStore::connect(&require, 1).await.expect("require");
    // No sslmode: plain text, which this cluster refuses.
    let error = JobStore::connect(&postgres.url("127.0.0.1", "application_name=plain"), 1)
        .await
        .unwrap_err();
    let cause = std::error::Error::source(&error).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|text| text.contains("no encryption")),
        "{error:?}"
    );

    let stunnel = Stunnel::start(&ca.issue(&["127.0.0.1"], Validity::Expired));
    let mut settings = config::load(None).unwrap();
    settings.amqp.url = stunnel.url("127.0.0.1").into();
    settings.amqp.tls_ca_path = ca_path.clone().into();
    let error = queue::connect(&settings.amqp, "test").await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, QueueError::Tls { .. }), "{error:?}");
    assert!(text.contains("does not verify: expired"), "{text}");

    // amqps:// to the broker's plain-text port.
    settings.amqp.url = "amqps://guest:guest@127.0.0.1:5672/%2f".to_owned().into();
    let error = queue::connect(&settings.amqp, "test").await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, QueueError::Tls { .. }), "{error:?}");
    assert!(
        text.contains("the server does not speak TLS on this port"),
        "{text}"
    );
}
