//! The debugging commands and the binary's conventions: `sign` and
//! `verify-response` reproduce every official-SDK vector, usage errors exit 64,
//! configuration errors name the key.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::BIN;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn vectors() -> serde_json::Value {
    let text = std::fs::read_to_string(vectors_dir().join("signature-vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn zhima(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .output()
        .expect("the binary runs")
}

#[test]
fn sign_command_reproduces_every_request_vector() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = vectors();
    let requests = vectors["request_vectors"].as_array().unwrap();
    assert!(requests.len() >= 6);
    for key in ["merchant_private_pkcs8.pem", "merchant_private_pkcs1.pem"] {
        let key_path = vectors_dir().join("keys").join(key);
        for vector in requests {
            let params = dir.path().join("params.json");
            std::fs::write(&params, vector["params"].to_string()).unwrap();
            let output = zhima(&[
                "sign",
                "--params",
                params.to_str().unwrap(),
                "--private-key",
                key_path.to_str().unwrap(),
            ]);
            assert!(output.status.success(), "{}: {output:?}", vector["id"]);
            let stdout = String::from_utf8(output.stdout).unwrap();
            let last: serde_json::Value =
                serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
            assert_eq!(
                last["string_to_sign"], vector["string_to_sign"],
                "{}",
                vector["id"]
            );
            assert_eq!(last["sign"], vector["sign"], "{} with {key}", vector["id"]);
        }
    }
}

#[test]
fn verify_response_command_gives_every_response_vector_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let key = vectors_dir().join("keys/platform_public.pem");
    let vectors = vectors();
    let responses = vectors["response_vectors"].as_array().unwrap();
    assert!(responses.len() >= 8);
    for vector in responses {
        let body = dir.path().join("body.json");
        std::fs::write(&body, vector["body"].as_str().unwrap()).unwrap();
        let output = zhima(&[
            "verify-response",
            "--body",
            body.to_str().unwrap(),
            "--alipay-public-key",
            key.to_str().unwrap(),
        ]);
        let expected = vector["expect_verify"].as_bool().unwrap();
        assert_eq!(
            output.status.success(),
            expected,
            "{}: {output:?}",
            vector["id"]
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        if expected {
            assert!(stdout.contains("RSA2"), "says which sign type: {stdout}");
        } else {
            assert_eq!(output.status.code(), Some(1));
            assert!(stdout.contains("not verified"), "says why: {stdout}");
        }
    }
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(zhima(&["no-such-command"]).status.code(), Some(64));
    assert_eq!(zhima(&["sign"]).status.code(), Some(64));
    assert_eq!(zhima(&["--help"]).status.code(), Some(0));
}

#[test]
fn a_bad_configuration_value_fails_naming_the_key() {
    let output = Command::new(BIN)
        .args(["migrate"])
        .env("ZHIMA__RATE_LIMIT__BURST", "0")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("rate_limit.burst"), "{stderr}");
}

#[test]
fn a_public_key_given_as_private_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let params = dir.path().join("params.json");
    std::fs::write(&params, r#"{"app_id":"1","sign_type":"RSA2"}"#).unwrap();
    let key = vectors_dir().join("keys/merchant_public.pem");
    let output = zhima(&[
        "sign",
        "--params",
        params.to_str().unwrap(),
        "--private-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap().to_lowercase();
    assert!(stderr.contains("public key"), "{stderr}");
}

/// `run` with a throwaway SQLite database and `env` on top: it stops at the
/// upstream client's set-up, before any broker is needed (the broker URL
/// points nowhere, so a regression cannot consume the machine's real queue).
/// It brings its own PII key: a fresh clone has no `data/pii_hmac.key`.
fn run_worker_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite:{}/jobs.sqlite?mode=rwc", dir.path().display());
    let pii_key = dir.path().join("pii_hmac.key");
    std::fs::write(&pii_key, [7u8; 32]).unwrap();
    let output = Command::new(BIN)
        .args(["run", "--until-idle"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env("ZHIMA__DATABASE__URL", database)
        .env("ZHIMA__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("ZHIMA__LOG__FILTER", "off")
        .env("ZHIMA__PII__HMAC_KEY_PATH", &pii_key)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn an_error_at_exit_shows_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_directory = dir.path().join("plain_file");
    std::fs::write(&not_a_directory, "x").unwrap();
    let unreachable = not_a_directory.join("app_private.pem");
    for path in [
        "/nonexistent/app_private.pem",
        unreachable.to_str().unwrap(),
    ] {
        let (code, stderr) = run_worker_with(&[
            ("ZHIMA__UPSTREAM__PRIVATE_KEY_PATH", path),
            ("ZHIMA__UPSTREAM__ALLOW_SHARED_KEY_FILE", "true"),
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        let line = stderr
            .lines()
            .find(|line| line.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(line.contains("upstream.private_key_path"), "{line}");
        assert_eq!(line.matches(path).count(), 1, "{line}");
        let causes: Vec<&str> = line.trim_start_matches("error: ").split(": ").collect();
        for (index, cause) in causes.iter().enumerate() {
            assert!(
                !causes[index + 1..]
                    .iter()
                    .any(|later| later.contains(cause)),
                "{cause:?} is repeated in {line}"
            );
        }
    }
}

#[test]
fn run_refuses_a_private_key_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app_private.pem");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keys/test_merchant_private.pem"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) =
        run_worker_with(&[("ZHIMA__UPSTREAM__PRIVATE_KEY_PATH", key.to_str().unwrap())]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains("allow_shared_key_file"), "{stderr}");
}
