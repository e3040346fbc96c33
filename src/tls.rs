//! TLS of the two connections the worker opens itself: the broker
//! (`amqps://`, through lapin) and PostgreSQL (`sslmode=`, through sqlx), both
//! on rustls. This module reads CA files (for `amqp.tls_ca_path`,
//! `database.tls_ca_path` and a database URL's `sslrootcert`) and tells in
//! words why a server certificate did not verify.
//!
//! It opens no connection and holds no key: the handshakes are lapin's and
//! sqlx's.

use std::error::Error as StdError;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, RootCertStore};

/// Longest CA file read: a bundle of a few hundred roots fits.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// A CA file that cannot serve as trust anchors.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than 1 MiB; a CA file holds PEM certificates only", .path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not a PEM file: {detail}", .path.display())]
    NotPem { path: PathBuf, detail: String },
    #[error("{} holds no `-----BEGIN CERTIFICATE-----` block", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("certificate {index} of {} cannot be a trust anchor: {detail}", .path.display())]
    BadCertificate {
        path: PathBuf,
        /// 1-based, in file order.
        index: usize,
        detail: String,
    },
}

/// The certificates of a CA file, checked: at least one, each usable as a
/// trust anchor.
#[derive(Debug, Clone)]
pub struct CaBundle {
    /// The file's text (PEM is ASCII), as lapin takes it.
    pub pem: String,
    /// How many certificates it holds.
    pub count: usize,
}

/// Reads and checks the CA file at `path` (PEM certificates, at most 1 MiB).
pub fn read_ca_file(path: &Path) -> Result<CaBundle, CaFileError> {
    let read_error = |source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    // A directory, a FIFO or a device would fail late or block: refused.
    if !file.metadata().map_err(read_error)?.is_file() {
        return Err(CaFileError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(CaFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let pem = String::from_utf8(bytes).map_err(|_| CaFileError::NotPem {
        path: path.to_path_buf(),
        detail: "it is not text (a DER file? convert it with `openssl x509 -inform der`)"
            .to_owned(),
    })?;
    let mut roots = RootCertStore::empty();
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|error| CaFileError::NotPem {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
        count += 1;
        roots
            .add(certificate)
            .map_err(|error| CaFileError::BadCertificate {
                path: path.to_path_buf(),
                index: count,
                detail: error.to_string(),
            })?;
    }
    if count == 0 {
        return Err(CaFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(CaBundle { pem, count })
}

/// Makes aws-lc-rs rustls's process-wide crypto provider, once, unless one
/// is installed already. sqlx's `sslmode=verify-ca` asks rustls for the
/// process default, which rustls cannot choose by itself here (both aws-lc-rs
/// and ring are linked) and panics instead; every database connection calls
/// this first.
pub(crate) fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another provider was installed first, which serves as well.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Why a TLS handshake failed, in words for the operator, when `error` or one
/// of its causes is a rustls error; `None` otherwise (refused, unreachable,
/// timed out). A certificate that does not verify names the reason first:
/// `unknown issuer`, `name mismatch`, `expired`, `not valid yet`, `revoked`.
pub fn handshake_failure(error: &(dyn StdError + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = rustls_error(error) {
            return Some(describe(tls));
        }
        current = error.source();
    }
    None
}

/// The rustls error `error` is, or wraps as an `io::Error` (whose `source`
/// skips the error it wraps).
fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = error.downcast_ref::<io::Error>()?.get_ref()?;
    inner.downcast_ref::<rustls::Error>()
}

fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(certificate) => format!(
            "the server's certificate does not verify: {}",
            certificate_reason(certificate)
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!("the server does not speak TLS on this port ({error})")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

fn certificate_reason(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "unknown issuer (not signed by a trusted CA)".to_owned(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("name mismatch: {error}")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("expired: {error}")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("not valid yet: {error}")
        }
        CertificateError::Revoked => "revoked".to_owned(),
        CertificateError::BadSignature => {
            "bad signature: it is not correctly signed by its issuer".to_owned()
        }
        other => other.to_string(),
    }
}

/// A self-signed CA certificate, PEM, for tests of CA files.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_file_of_ca_certificates_is_read_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let two = format!("{}{}", test_ca_pem(), test_ca_pem());
        let bundle = read_ca_file(&write(&dir, "ca.pem", two.as_bytes())).unwrap();
        assert_eq!(bundle.count, 2);
        assert_eq!(bundle.pem, two);
    }

    #[test]
    fn hostile_ca_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.pem");
        let cases: [(PathBuf, &str); 5] = [
            (missing, "cannot read"),
            (
                write(&dir, "empty.pem", b""),
                "no `-----BEGIN CERTIFICATE-----`",
            ),
            (
                write(
                    &dir,
                    "key.pem",
                    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
                "no `-----BEGIN CERTIFICATE-----`",
            ),
            (
                write(&dir, "der.pem", &[0x30, 0x82, 0xff, 0xfe]),
                "not text",
            ),
            (
                write(
                    &dir,
                    "junk.pem",
                    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
                "certificate 1 of",
            ),
        ];
        for (path, expected) in cases {
            let error = read_ca_file(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{}: {error}", path.display());
        }
        for not_a_file in [dir.path(), Path::new("/dev/null")] {
            let error = read_ca_file(not_a_file).unwrap_err();
            assert!(matches!(error, CaFileError::NotAFile { .. }), "{error}");
        }
        let mut huge = vec![b'#'; (MAX_CA_FILE_BYTES + 1) as usize];
        huge.extend_from_slice(test_ca_pem().as_bytes());
        let error = read_ca_file(&write(&dir, "huge.pem", &huge)).unwrap_err();
        assert!(matches!(error, CaFileError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn a_certificate_failure_is_found_through_an_io_error_and_named() {
        let cases = [
            (CertificateError::UnknownIssuer, "unknown issuer"),
            (CertificateError::NotValidForName, "name mismatch"),
            (CertificateError::Expired, "expired"),
            (CertificateError::NotValidYet, "not valid yet"),
        ];
        for (certificate, expected) in cases {
            let wrapped = io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::InvalidCertificate(certificate),
            );
            let outer = anyhow::Error::new(wrapped).context("connecting");
            let text = handshake_failure(outer.as_ref()).unwrap();
            assert!(
                text.starts_with("the server's certificate does not verify: ")
                    && text.contains(expected),
                "{text}"
            );
        }
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(handshake_failure(&refused), None);
    }
}
