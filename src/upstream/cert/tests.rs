//! SNs checked against values computed independently with OpenSSL. For a
//! fixture F under tests/fixtures/certs/ (regenerate them with its make.sh),
//! every expected SN below was produced by:
//!
//! ```sh
//! issuer=$(openssl x509 -in F -noout -issuer -nameopt RFC2253 | sed 's/^issuer=//')
//! serial=$(openssl x509 -in F -noout -serial | sed 's/^serial=//')
//! printf '%s%s' "$issuer" "$(python3 -c "print(int('$serial',16))")" | md5sum
//! ```
//!
//! (OpenSSL 3.0.19; the DN it printed is quoted beside each value.) The real
//! Alipay certificates of the Node SDK's test fixtures give the SNs that SDK's
//! tests expect (checked by hand with `cert-sn`; not committed here).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/certs")
        .join(name)
}

fn one(name: &str) -> Certificate {
    let mut certs = read_pem_file(&fixture(name)).unwrap();
    assert_eq!(certs.len(), 1, "{name}");
    certs.remove(0)
}

#[test]
fn sn_of_a_root_with_four_rdns_and_an_escaped_comma() {
    // CN=Zhima Test Root R1,OU=Certification Authority,O=Zhima Test\, Inc.,C=CN + "1"
    assert_eq!(one("root_rsa.crt").sn(), "9098519e37a071850e7280dd9e0460f6");
}

#[test]
fn sn_of_a_serial_over_64_bits_with_a_leading_zero_byte() {
    // CN=Zhima Test Class 2 R1,OU=Certification Authority,O=Zhima Test,C=CN
    // + 183574552716694439010320730699203078393 (0x8A1B...E8F9, 17 DER bytes)
    assert_eq!(one("leaf.crt").sn(), "bb3cda92e16d34e98405afc0ced667da");
    // CN=Zhima Test Root E1,O=Zhima Test,C=CN + 1208925819614629174706176 (2^80)
    assert_eq!(one("leaf_ec.crt").sn(), "b790392de4bad7152c4a3916cff9202b");
}

#[test]
fn sn_of_a_root_with_st_and_l_and_a_72_bit_serial() {
    // CN=Zhima Test Root R2,O=Zhima Test,L=Hangzhou,ST=Zhejiang,C=CN + 2361183241434822606847
    assert_eq!(
        one("root_rsa2.crt").sn(),
        "128bd16a2df8c6b7c742e16bfc5ec6e1"
    );
}

#[test]
fn root_sn_joins_the_rsa_roots_in_file_order_and_skips_the_ec_root() {
    // roots.crt = root_rsa.crt, root_ec.crt (ecdsa-with-SHA256), root_rsa2.crt
    let roots = read_pem_file(&fixture("roots.crt")).unwrap();
    assert_eq!(roots.len(), 3);
    assert!(!roots[1].is_rsa_signed());
    assert_eq!(
        root_sn(&roots).unwrap(),
        "9098519e37a071850e7280dd9e0460f6_128bd16a2df8c6b7c742e16bfc5ec6e1"
    );
}

#[test]
fn a_bundle_with_no_rsa_root_is_refused() {
    let roots = read_pem_file(&fixture("root_ec.crt")).unwrap();
    assert!(matches!(root_sn(&roots), Err(CertError::NoRsaRoot)));
}

#[test]
fn the_sn_is_the_md5_of_the_dn_and_the_decimal_serial() {
    // printf '%s' 'CN=a,C=CN123' | md5sum
    assert_eq!(
        sn_from_parts("CN=a,C=CN", "123"),
        "30b870fe90818cae8db8f4af9029ec2f"
    );
}

#[test]
fn rfc2253_escaping_follows_java() {
    assert_eq!(escape_rfc2253("Ant, Inc."), "Ant\\, Inc.");
    assert_eq!(
        escape_rfc2253("a=b+c;d<e>f\"g\\h#i"),
        "a\\=b\\+c\\;d\\<e\\>f\\\"g\\\\h\\#i"
    );
    assert_eq!(escape_rfc2253(" lead trail "), "\\ lead trail\\ ");
    assert_eq!(escape_rfc2253("nul\0"), "nul\\00");
    assert_eq!(escape_rfc2253("蚂蚁金服"), "蚂蚁金服");
}

#[test]
fn chains_through_an_intermediate_to_an_rsa_root_and_directly_to_an_ec_root() {
    let roots = read_pem_file(&fixture("roots.crt")).unwrap();
    let now = chrono::Utc::now().timestamp();
    let chain = read_pem_file(&fixture("leaf_chain.crt")).unwrap();
    assert_eq!(check_chain(&chain, &roots, now), Ok(()));
    let leaf_ec = read_pem_file(&fixture("leaf_ec.crt")).unwrap();
    assert_eq!(check_chain(&leaf_ec, &roots, now), Ok(()));
    // The leaf alone, without its intermediate, cannot be checked: its
    // issuer is nowhere.
    let leaf = read_pem_file(&fixture("leaf.crt")).unwrap();
    assert_eq!(
        check_chain(&leaf, &roots, now),
        Err(ChainError::IssuerMissing {
            sn: "bb3cda92e16d34e98405afc0ced667da".into(),
            issuer: "CN=Zhima Test Class 2 R1,OU=Certification Authority,O=Zhima Test,C=CN".into(),
        })
    );
}

#[test]
fn a_root_with_the_same_name_but_another_key_is_not_trusted() {
    // stranger.crt has the RSA root's name and serial (hence its SN) but
    // its own key: the name matches, the signature does not.
    let stranger = read_pem_file(&fixture("stranger.crt")).unwrap();
    let root = read_pem_file(&fixture("root_rsa.crt")).unwrap();
    assert_eq!(stranger[0].sn(), root[0].sn());
    let chain = read_pem_file(&fixture("leaf_chain.crt")).unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(matches!(
        check_chain(&chain, &stranger, now),
        Err(ChainError::Untrusted { .. })
    ));
}

#[test]
fn validity_is_checked_on_every_certificate_of_the_chain() {
    let roots = read_pem_file(&fixture("roots.crt")).unwrap();
    let chain = read_pem_file(&fixture("leaf_chain.crt")).unwrap();
    let leaf = &chain[0];
    assert_eq!(
        check_chain(&chain, &roots, leaf.not_after() + 1),
        Err(ChainError::Expired {
            sn: leaf.sn().to_owned()
        })
    );
    assert_eq!(
        check_chain(&chain, &roots, leaf.not_before() - 1),
        Err(ChainError::NotYetValid {
            sn: leaf.sn().to_owned()
        })
    );
    assert_eq!(leaf.validity_at(leaf.not_before()), Validity::Valid);
}

#[test]
fn the_public_key_of_a_certificate_verifies_what_its_private_key_signs() {
    use super::super::signing::{PrivateKey, SignType};
    let key = PrivateKey::from_file(&fixture("leaf.key")).unwrap();
    let signature = key.sign(SignType::Rsa2, b"hello").unwrap();
    let leaf = one("leaf.crt");
    leaf.public_key()
        .unwrap()
        .verify(SignType::Rsa2, b"hello", &signature)
        .unwrap();
    let other = one("root_rsa.crt");
    assert!(
        other
            .public_key()
            .unwrap()
            .verify(SignType::Rsa2, b"hello", &signature)
            .is_err()
    );
    // An EC certificate has no RSA key.
    assert!(matches!(
        one("root_ec.crt").public_key(),
        Err(CertError::PublicKey(_))
    ));
}

#[test]
fn pem_round_trips() {
    let leaf = one("leaf.crt");
    let again = parse_pem_bundle(leaf.to_pem().as_bytes()).unwrap();
    assert_eq!(again[0].der(), leaf.der());
    assert_eq!(again[0].sn(), leaf.sn());
}

#[test]
fn hostile_files_are_refused_with_a_named_reason() {
    assert!(matches!(
        parse_pem_bundle(b"not a certificate at all"),
        Err(CertError::NoCertificate)
    ));
    assert!(matches!(
        parse_pem_bundle(b""),
        Err(CertError::NoCertificate)
    ));
    let key = std::fs::read(fixture("leaf.key")).unwrap();
    let error = parse_pem_bundle(&key).unwrap_err();
    assert!(matches!(error, CertError::PrivateKey), "{error}");
    assert!(!error.to_string().contains("MII"));
    let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        parse_pem_bundle(garbage),
        Err(CertError::Malformed { index: 0, .. })
    ));
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(parse_pem_bundle(broken).is_err());
    let public = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    assert!(matches!(
        parse_pem_bundle(public),
        Err(CertError::NotACertificate { .. })
    ));
    let leaf = one("leaf.crt").to_pem();
    let many = leaf.repeat(MAX_CERTS_PER_FILE + 1);
    assert!(matches!(
        parse_pem_bundle(many.as_bytes()),
        Err(CertError::TooMany)
    ));
    let missing = read_pem_file(&fixture("no-such.crt")).unwrap_err();
    assert!(missing.to_string().contains("no-such.crt"), "{missing}");
}

#[test]
fn an_sn_has_32_lowercase_hex_digits() {
    assert!(looks_like_sn("9098519e37a071850e7280dd9e0460f6"));
    assert!(!looks_like_sn("9098519E37A071850E7280DD9E0460F6"));
    assert!(!looks_like_sn(&"a".repeat(10_000)));
    assert!(!looks_like_sn(""));
    assert!(!looks_like_sn("9098519e37a071850e7280dd9e0460g6"));
}

#[test]
fn an_attribute_without_an_rfc_2253_keyword_is_written_as_java_writes_it() {
    // What a Java test (X509Certificate.getIssuerX500Principal().getName())
    // asserts for this DN: the OID and the DER value in lowercase hex.
    // OpenSSL writes `emailAddress=jerboaa@redhat.com,...` instead, and the
    // Node SDK joins its parser's attribute names without escaping: for such
    // DNs the tools disagree, and we follow Java.
    let cert = one("email.crt");
    let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
    assert_eq!(
        issuer_rfc2253(parsed.issuer()).unwrap(),
        "1.2.840.113549.1.9.1=#16126a6572626f6161407265646861742e636f6d,CN=test.example.com,\
         O=Red Hat Inc.,L=Saalfelden,ST=Salzburg,C=AT"
    );
}

#[test]
fn a_certificate_issued_by_a_non_ca_certificate_does_not_chain() {
    // forged_chain.crt: a certificate signed with leaf.key, then leaf.crt (a
    // v1 end-entity certificate, not a CA) and inter.crt: every signature
    // verifies, but the holder of an end-entity certificate (any merchant's
    // app certificate) must not be able to mint an Alipay certificate.
    let roots = read_pem_file(&fixture("roots.crt")).unwrap();
    let forged = read_pem_file(&fixture("forged_chain.crt")).unwrap();
    assert!(
        forged[0].is_signed_by(&forged[1]),
        "the signature itself verifies"
    );
    let now = chrono::Utc::now().timestamp();
    assert!(matches!(
        check_chain(&forged, &roots, now),
        Err(ChainError::Untrusted { .. })
    ));
    // The intermediate of the genuine chain is a CA and is accepted.
    let chain = read_pem_file(&fixture("leaf_chain.crt")).unwrap();
    assert!(chain[1].is_ca());
    assert!(!chain[0].is_ca());
    assert_eq!(check_chain(&chain, &roots, now), Ok(()));
}
