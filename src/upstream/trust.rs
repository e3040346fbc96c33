//! Certificate mode at run time: the app certificate's and the root bundle's
//! SNs sent with every request, and the Alipay keys that verify answers, by
//! certificate SN.
//!
//! Loaded and checked at start-up ([`CertMode::load`]): the app certificate
//! holds the public half of `upstream.private_key_path`, every certificate is
//! within its validity, the Alipay certificate chains to the root bundle.
//! Later certificates (Alipay rotated its own) come from
//! `alipay.open.app.alipaycert.download` and are accepted by
//! [`CertMode::accept`] only if they chain to the same roots.
//!
//! Must not: do network or database I/O (the client does, and hands the bytes
//! here), or keep a certificate it could not chain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use super::cert::{self, Certificate, ChainError, Validity};
use super::signing::{PrivateKey, PublicKey, SignType};
use super::{ClientSetupError, UpstreamError};
use crate::config::CertificatePaths;

/// A certificate whose end of validity the worker watches: its role (the
/// label of `zhima_certificate_expiry_seconds`) and its end, Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub role: &'static str,
    pub sn: String,
    pub not_after: i64,
}

/// The certificate-mode state of one client.
pub(crate) struct CertMode {
    pub(crate) app_cert_sn: String,
    pub(crate) root_sn: String,
    roots: Vec<Certificate>,
    alipay_sn: String,
    keys: RwLock<HashMap<String, PublicKey>>,
    expiries: Vec<Expiry>,
    /// One download at a time in this process (the database lock does the
    /// same across replicas), and the last fetch that failed.
    pub(crate) fetching: tokio::sync::Mutex<Option<FailedFetch>>,
}

impl std::fmt::Debug for CertMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertMode")
            .field("app_cert_sn", &self.app_cert_sn)
            .field("root_sn", &self.root_sn)
            .field("alipay_sn", &self.alipay_sn)
            .finish_non_exhaustive()
    }
}

/// How long a failed certificate fetch is not retried for the same SN.
pub(crate) const FETCH_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A certificate fetch that failed, remembered for [`FETCH_RETRY_AFTER`].
#[derive(Debug, Clone)]
pub(crate) struct FailedFetch {
    sn: String,
    at: std::time::Instant,
    untrusted: bool,
    reason: String,
}

impl FailedFetch {
    /// Remembers a fetch or trust failure (other errors are not fetch
    /// failures and are not remembered).
    pub(crate) fn of(sn: &str, error: &UpstreamError) -> Option<Self> {
        let (untrusted, reason) = match error {
            UpstreamError::CertificateUntrusted { reason, .. } => (true, reason),
            UpstreamError::CertificateFetch { reason, .. } => (false, reason),
            _ => return None,
        };
        Some(Self {
            sn: sn.to_owned(),
            at: std::time::Instant::now(),
            untrusted,
            reason: reason.clone(),
        })
    }

    /// The same error again, if it concerns `sn` and is recent.
    pub(crate) fn still_for(&self, sn: &str) -> Option<UpstreamError> {
        if self.sn != sn || self.at.elapsed() >= FETCH_RETRY_AFTER {
            return None;
        }
        let sn = sn.to_owned();
        let reason = self.reason.clone();
        Some(if self.untrusted {
            UpstreamError::CertificateUntrusted { sn, reason }
        } else {
            UpstreamError::CertificateFetch { sn, reason }
        })
    }
}

/// Why a downloaded (or stored) certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("it is not a PEM certificate: {0}")]
    Unreadable(String),
    #[error("it is certificate {found}, not the one asked for")]
    OtherCertificate { found: String },
    #[error("{0}")]
    Chain(#[from] ChainError),
    #[error("its public key is unusable: {0}")]
    Key(String),
}

impl CertMode {
    /// Reads and checks the three files of certificate mode at `now` (Unix
    /// seconds); every error names its configuration key.
    pub(crate) fn load(
        paths: CertificatePaths<'_>,
        private_key: &PrivateKey,
        now: i64,
    ) -> Result<Self, ClientSetupError> {
        const APP: &str = "upstream.app_cert_path";
        const ALIPAY: &str = "upstream.alipay_cert_path";
        const ROOT: &str = "upstream.alipay_root_cert_path";
        let roots = read(ROOT, paths.alipay_root_cert)?;
        let root_sn = cert::root_sn(&roots)
            .map_err(|source| ClientSetupError::CertificateFile { key: ROOT, source })?;
        let app_chain = read(APP, paths.app_cert)?;
        let app_cert = leaf_of(APP, &app_chain)?;
        check_validity(APP, app_cert, now)?;
        let app_key = app_cert
            .public_key()
            .map_err(|source| ClientSetupError::CertificateFile { key: APP, source })?;
        if !holds_public_half(private_key, &app_key) {
            return Err(ClientSetupError::CertificateCheck {
                key: APP,
                reason: format!(
                    "certificate {} does not hold the public half of \
                     upstream.private_key_path: give the certificate Alipay issued for \
                     this app's current key (appCertPublicKey_<app_id>.crt)",
                    app_cert.sn()
                ),
            });
        }
        let alipay_chain = read(ALIPAY, paths.alipay_cert)?;
        let alipay_cert = leaf_of(ALIPAY, &alipay_chain)?;
        match cert::check_chain(&alipay_chain, &roots, now) {
            Ok(()) => {}
            // The console's alipayCertPublicKey_RSA2.crt holds the leaf only,
            // without the intermediate that links it to the root bundle: a
            // configured file (trusted like a key in key mode) whose issuer
            // is simply absent is accepted, with the reason logged.
            // Downloaded certificates get no such leniency.
            Err(error @ ChainError::IssuerMissing { .. }) => tracing::warn!(
                reason = %error,
                "upstream.alipay_cert_path is used without a chain check; append the \
                 intermediate certificate to the file to have it checked"
            ),
            Err(error) => {
                return Err(ClientSetupError::CertificateCheck {
                    key: ALIPAY,
                    reason: format!(
                        "{error}: give Alipay's certificate (alipayCertPublicKey_RSA2.crt) \
                         and the root bundle (alipayRootCert.crt) from the same console"
                    ),
                });
            }
        }
        check_validity(ALIPAY, alipay_cert, now)?;
        let alipay_key =
            alipay_cert
                .public_key()
                .map_err(|source| ClientSetupError::CertificateFile {
                    key: ALIPAY,
                    source,
                })?;
        let expiries = vec![
            Expiry {
                role: "app",
                sn: app_cert.sn().to_owned(),
                not_after: app_cert.not_after(),
            },
            Expiry {
                role: "alipay",
                sn: alipay_cert.sn().to_owned(),
                not_after: alipay_cert.not_after(),
            },
        ]
        .into_iter()
        .chain(
            roots
                .iter()
                .filter(|root| root.is_rsa_signed())
                .map(|root| Expiry {
                    role: "root",
                    sn: root.sn().to_owned(),
                    not_after: root.not_after(),
                }),
        )
        .collect();
        let alipay_sn = alipay_cert.sn().to_owned();
        Ok(Self {
            app_cert_sn: app_cert.sn().to_owned(),
            root_sn,
            roots,
            keys: RwLock::new(HashMap::from([(alipay_sn.clone(), alipay_key)])),
            alipay_sn,
            expiries,
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// The configured Alipay certificate's key: for answers that name no
    /// certificate (unsigned gateway errors).
    pub(crate) fn configured_key(&self) -> Option<PublicKey> {
        self.known_key(&self.alipay_sn)
    }

    /// The key of certificate `sn`, if configured or already accepted.
    pub(crate) fn known_key(&self, sn: &str) -> Option<PublicKey> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sn)
            .cloned()
    }

    /// Checks a downloaded (or stored) PEM said to be certificate `sn`: it
    /// must be that certificate, within its validity at `now`, and chain to a
    /// configured root. Returns the leaf.
    pub(crate) fn accept(&self, sn: &str, pem: &[u8], now: i64) -> Result<Certificate, Refusal> {
        let chain = cert::parse_pem_bundle(pem).map_err(|e| Refusal::Unreadable(e.to_string()))?;
        let leaf = leaf(&chain)
            .map_err(|e| Refusal::Unreadable(e.to_string()))?
            .clone();
        if leaf.sn() != sn {
            return Err(Refusal::OtherCertificate {
                found: leaf.sn().to_owned(),
            });
        }
        cert::check_chain(&chain, &self.roots, now)?;
        leaf.public_key().map_err(|e| Refusal::Key(e.to_string()))?;
        Ok(leaf)
    }

    /// Adds an accepted certificate's key.
    pub(crate) fn remember(&self, leaf: &Certificate) -> Result<PublicKey, Refusal> {
        let key = leaf.public_key().map_err(|e| Refusal::Key(e.to_string()))?;
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(leaf.sn().to_owned(), key.clone());
        Ok(key)
    }

    /// The configured certificates' ends of validity.
    pub(crate) fn expiries(&self) -> &[Expiry] {
        &self.expiries
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<Certificate>, ClientSetupError> {
    cert::read_pem_file(path).map_err(|source| ClientSetupError::CertificateFile { key, source })
}

/// The first certificate of a file (the leaf when it holds a chain).
fn leaf(chain: &[Certificate]) -> Result<&Certificate, cert::CertError> {
    chain.first().ok_or(cert::CertError::NoCertificate)
}

fn leaf_of<'a>(
    key: &'static str,
    chain: &'a [Certificate],
) -> Result<&'a Certificate, ClientSetupError> {
    leaf(chain).map_err(|source| ClientSetupError::CertificateFile { key, source })
}

fn check_validity(key: &'static str, cert: &Certificate, now: i64) -> Result<(), ClientSetupError> {
    let reason = match cert.validity_at(now) {
        Validity::Valid => return Ok(()),
        Validity::NotYetValid => "is not yet valid",
        Validity::Expired => "has expired",
    };
    Err(ClientSetupError::CertificateCheck {
        key,
        reason: format!(
            "certificate {} {reason} (valid {} to {}): download the current one from \
             the Alipay open platform console",
            cert.sn(),
            format_time(cert.not_before()),
            format_time(cert.not_after())
        ),
    })
}

fn format_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// Whether `public` verifies what `private` signs: the certificate holds the
/// app key's public half.
fn holds_public_half(private: &PrivateKey, public: &PublicKey) -> bool {
    const PROBE: &[u8] = b"zhima-worker certificate key check";
    private
        .sign(SignType::Rsa2, PROBE)
        .is_ok_and(|signature| public.verify(SignType::Rsa2, PROBE, &signature).is_ok())
}
