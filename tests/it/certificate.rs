//! Certificate mode (公钥证书模式): the `cert-sn` debugging command against the
//! fixtures of tests/fixtures/certs/ (their SNs computed independently with
//! OpenSSL, see src/upstream/cert/tests.rs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::BIN;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/certs")
        .join(name)
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn cert_sn_prints_the_leaf_sn_and_the_root_sn() {
    let leaf = fixture("leaf_chain.crt");
    let output = zhima(&["cert-sn", leaf.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // printf '%s%s' 'CN=Zhima Test Class 2 R1,OU=Certification Authority,O=Zhima Test,C=CN' \
    //   183574552716694439010320730699203078393 | md5sum
    assert_eq!(stdout(&output), "bb3cda92e16d34e98405afc0ced667da\n");

    let roots = fixture("roots.crt");
    let output = zhima(&["cert-sn", "--root", roots.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "9098519e37a071850e7280dd9e0460f6_128bd16a2df8c6b7c742e16bfc5ec6e1\n"
    );
}

#[test]
fn cert_sn_refuses_hostile_files_with_exit_1_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let huge = dir.path().join("huge.crt");
    std::fs::write(&huge, vec![b'A'; 2 * 1024 * 1024]).unwrap();
    let key = fixture("leaf.key");
    let ec_only = fixture("root_ec.crt");
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["cert-sn", key.to_str().unwrap()],
            "holds a private key, not a certificate",
        ),
        (
            vec!["cert-sn", garbage.to_str().unwrap()],
            "not a valid X.509 certificate",
        ),
        (
            vec!["cert-sn", empty.to_str().unwrap()],
            "no PEM certificate",
        ),
        (vec!["cert-sn", huge.to_str().unwrap()], "larger than"),
        (
            vec!["cert-sn", "--root", ec_only.to_str().unwrap()],
            "no root in the bundle is RSA-signed",
        ),
        (vec!["cert-sn", "/nonexistent/x.crt"], "/nonexistent/x.crt"),
    ];
    for (args, reason) in cases {
        let output = zhima(&args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(stdout(&output).is_empty(), "{args:?}");
        assert!(
            stderr(&output).contains(reason),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("MII"), "key material in {args:?}");
    }
    let output = zhima(&["cert-sn"]);
    assert_eq!(output.status.code(), Some(64));
}
