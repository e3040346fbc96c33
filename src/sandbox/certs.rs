//! Certificate mode (公钥证书模式) in the sandbox: which apps sign in
//! certificate mode and with which certificate SN, the root SN requests must
//! carry, the Alipay certificates that sign answers (the current one and every
//! earlier one, all downloadable), and issuing certificates for `--cert-dir`
//! and `POST /admin/rotate-alipay-cert`.
//!
//! Certificates are issued with rcgen. Their SNs are computed with the
//! client's `upstream::cert` (checked against OpenSSL in its own tests).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, RsaKeySize, SerialNumber, SignatureAlgorithm,
};

use crate::upstream::cert::{self, Certificate};
use crate::upstream::signing::{self, PrivateKey};

/// The download method the sandbox answers in certificate mode.
pub(crate) const DOWNLOAD_METHOD: &str = "alipay.open.app.alipaycert.download";
/// Its answer node.
pub(crate) const DOWNLOAD_NODE: &str = "alipay_open_app_alipaycert_download_response";

/// Why certificate mode could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxCertError {
    #[error("{flag}: {source}")]
    Certificate {
        flag: &'static str,
        #[source]
        source: cert::CertError,
    },
    #[error("{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error("could not issue a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("could not write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An Alipay certificate the sandbox has signed answers with.
#[derive(Clone)]
pub(crate) struct AlipayCert {
    pub(crate) sn: String,
    pub(crate) pem: String,
    pub(crate) key: PrivateKey,
}

/// The root that issues the sandbox's certificates, kept to issue more.
struct RootIssuer {
    issuer: Issuer<'static, KeyPair>,
}

/// Certificate mode's state.
pub struct SandboxCertificates {
    root_sns: Vec<String>,
    /// `(app_id, app_cert_sn)` of the apps that sign in certificate mode.
    app_sns: Vec<(String, String)>,
    /// Every Alipay certificate served; the last one signs answers.
    alipay: Vec<AlipayCert>,
    issuer: Option<RootIssuer>,
    rotations: u32,
}

impl std::fmt::Debug for SandboxCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxCertificates")
            .field("root_sns", &self.root_sns)
            .field("app_sns", &self.app_sns)
            .field(
                "alipay",
                &self.alipay.iter().map(|c| &c.sn).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What the gateway says about a request's certificate SNs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertCheck {
    /// The app signs in key mode, or its SNs are right.
    Fine,
    MissingAppCertSn,
    AppCertNotExist,
    /// `alipay_root_cert_sn` missing, or without the sandbox's root.
    InvalidRootCertSn,
}

/// An app's public key as a certificate subject key (PKCS#1 RSAPublicKey).
struct RsaPublicKey(Vec<u8>);

impl PublicKeyData for RsaPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl SandboxCertificates {
    /// From files (`--root-cert`, `--alipay-cert`, `--alipay-cert-key`,
    /// `--app-cert`). Without the root's key, rotation is refused.
    pub fn from_files(
        root_cert: &Path,
        alipay_cert: &Path,
        alipay_cert_key: &Path,
        app_certs: &[(String, PathBuf)],
    ) -> Result<Self, SandboxCertError> {
        let roots = read("--root-cert", root_cert)?;
        let root_sns = rsa_root_sns("--root-cert", &roots)?;
        let alipay = read("--alipay-cert", alipay_cert)?;
        let key =
            PrivateKey::from_file(alipay_cert_key).map_err(|e| SandboxCertError::Invalid {
                flag: "--alipay-cert-key",
                reason: format!("{e:#}"),
            })?;
        let pem: String = alipay.iter().map(Certificate::to_pem).collect();
        let leaf = first("--alipay-cert", &alipay)?;
        let app_sns = app_certs
            .iter()
            .map(|(app_id, path)| {
                let certs = read("--app-cert", path)?;
                Ok((app_id.clone(), first("--app-cert", &certs)?.sn().to_owned()))
            })
            .collect::<Result<_, SandboxCertError>>()?;
        Ok(Self {
            root_sns,
            app_sns,
            alipay: vec![AlipayCert {
                sn: leaf.sn().to_owned(),
                pem,
                key,
            }],
            issuer: None,
            rotations: 0,
        })
    }

    /// Issues a root bundle (an RSA root, then an EC root), an Alipay
    /// certificate and its key, and a certificate for each `(app_id, public
    /// key file)`, and writes them into `dir` (created if needed):
    /// `alipayRootCert.crt`, `alipayCertPublicKey_RSA2.crt`,
    /// `alipayCertPrivateKey.pem` (mode 0600), `appCertPublicKey_<app_id>.crt`.
    pub fn generate(dir: &Path, apps: &[(String, PathBuf)]) -> Result<Self, SandboxCertError> {
        std::fs::create_dir_all(dir).map_err(|source| SandboxCertError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let rsa_root_key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let rsa_root_params = ca_params("Zhima Sandbox Root R1");
        let rsa_root = rsa_root_params.self_signed(&rsa_root_key)?;
        let ec_root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let ec_root = ca_params("Zhima Sandbox Root E1").self_signed(&ec_root_key)?;
        let bundle = format!("{}{}", rsa_root.pem(), ec_root.pem());
        write(dir, "alipayRootCert.crt", &bundle, false)?;
        let roots = cert::parse_pem_bundle(bundle.as_bytes()).map_err(|source| {
            SandboxCertError::Certificate {
                flag: "--cert-dir",
                source,
            }
        })?;
        let root_sns = rsa_root_sns("--cert-dir", &roots)?;
        let issuer = RootIssuer {
            issuer: Issuer::new(rsa_root_params, rsa_root_key),
        };
        let mut app_sns = Vec::with_capacity(apps.len());
        for (app_id, key_file) in apps {
            let text =
                std::fs::read_to_string(key_file).map_err(|e| SandboxCertError::Invalid {
                    flag: "--app",
                    reason: format!("reading {}: {e}", key_file.display()),
                })?;
            let pkcs1 =
                signing::public_key_pkcs1_der(&text).map_err(|e| SandboxCertError::Invalid {
                    flag: "--app",
                    reason: format!("{}: {e}", key_file.display()),
                })?;
            let params = leaf_params(app_id, "Zhima Sandbox Merchant");
            let issued = params.signed_by(&RsaPublicKey(pkcs1), &issuer.issuer)?;
            write(
                dir,
                &format!("appCertPublicKey_{app_id}.crt"),
                &issued.pem(),
                false,
            )?;
            app_sns.push((app_id.clone(), sn_of("--cert-dir", &issued.pem())?));
        }
        let mut certs = Self {
            root_sns,
            app_sns,
            alipay: Vec::new(),
            issuer: Some(issuer),
            rotations: 0,
        };
        let (alipay, key_pem) = certs.issue_alipay(None)?;
        write(dir, "alipayCertPublicKey_RSA2.crt", &alipay.pem, false)?;
        write(dir, "alipayCertPrivateKey.pem", &key_pem, true)?;
        certs.alipay.push(alipay);
        Ok(certs)
    }

    /// `POST /admin/rotate-alipay-cert`: answers are signed from now on with
    /// a freshly issued certificate and key; the earlier ones stay
    /// downloadable. `untrusted`: issued by a throwaway root outside the
    /// bundle, to drill a download that does not chain. Returns the new SN.
    pub(crate) fn rotate(&mut self, untrusted: bool) -> Result<String, SandboxCertError> {
        if self.issuer.is_none() {
            return Err(SandboxCertError::Invalid {
                flag: "rotate-alipay-cert",
                reason: "the sandbox has no root key to issue with: start it with --cert-dir"
                    .into(),
            });
        }
        let stranger = if untrusted {
            let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?;
            Some(Issuer::new(ca_params("Zhima Sandbox Root R1"), key))
        } else {
            None
        };
        let (alipay, _) = self.issue_alipay(stranger.as_ref())?;
        let sn = alipay.sn.clone();
        self.alipay.push(alipay);
        Ok(sn)
    }

    fn issue_alipay(
        &mut self,
        by: Option<&Issuer<'static, KeyPair>>,
    ) -> Result<(AlipayCert, String), SandboxCertError> {
        let Some(root) = by.or(self.issuer.as_ref().map(|root| &root.issuer)) else {
            return Err(SandboxCertError::Invalid {
                flag: "--cert-dir",
                reason: "no issuer".into(),
            });
        };
        self.rotations += 1;
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?;
        let params = leaf_params(
            &format!("Zhima Sandbox Alipay {}", self.rotations),
            "Zhima Sandbox",
        );
        let issued = params.signed_by(&key, root)?;
        let key_pem = key.serialize_pem();
        let private =
            PrivateKey::from_pem_or_base64(&key_pem).map_err(|e| SandboxCertError::Invalid {
                flag: "--cert-dir",
                reason: e.to_string(),
            })?;
        let pem = issued.pem();
        Ok((
            AlipayCert {
                sn: sn_of("--cert-dir", &pem)?,
                pem,
                key: private,
            },
            key_pem,
        ))
    }

    /// The certificate that signs answers now.
    pub(crate) fn current(&self) -> Option<&AlipayCert> {
        self.alipay.last()
    }

    /// The root SN a request must carry (the bundle's RSA roots joined).
    pub fn root_sn(&self) -> String {
        self.root_sns.join("_")
    }

    /// `app_cert_sn` of an app in certificate mode.
    pub fn app_cert_sn(&self, app_id: &str) -> Option<&str> {
        self.app_sns
            .iter()
            .find(|(id, _)| id == app_id)
            .map(|(_, sn)| sn.as_str())
    }

    /// The SN of the certificate signing answers now.
    pub fn current_sn(&self) -> Option<&str> {
        self.current().map(|cert| cert.sn.as_str())
    }

    /// Checks a request's SNs for `app_id`. Apps without a certificate sign
    /// in key mode and are not checked.
    pub(crate) fn check(
        &self,
        app_id: &str,
        app_cert_sn: Option<&str>,
        root_cert_sn: Option<&str>,
    ) -> CertCheck {
        let Some(expected) = self.app_cert_sn(app_id) else {
            return CertCheck::Fine;
        };
        match app_cert_sn {
            None | Some("") => return CertCheck::MissingAppCertSn,
            Some(sn) if sn != expected => return CertCheck::AppCertNotExist,
            Some(_) => {}
        }
        let root_ok = root_cert_sn.is_some_and(|sns| {
            sns.split('_')
                .any(|sn| self.root_sns.iter().any(|root| root == sn))
        });
        if root_ok {
            CertCheck::Fine
        } else {
            CertCheck::InvalidRootCertSn
        }
    }

    /// The PEM of an Alipay certificate the sandbox has served, base64
    /// encoded as `alipay_cert_content` carries it.
    pub(crate) fn download(&self, sn: &str) -> Option<String> {
        self.alipay
            .iter()
            .find(|cert| cert.sn == sn)
            .map(|cert| BASE64.encode(cert.pem.as_bytes()))
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<Certificate>, SandboxCertError> {
    cert::read_pem_file(path).map_err(|source| SandboxCertError::Certificate { flag, source })
}

fn first<'a>(
    flag: &'static str,
    certs: &'a [Certificate],
) -> Result<&'a Certificate, SandboxCertError> {
    certs.first().ok_or(SandboxCertError::Certificate {
        flag,
        source: cert::CertError::NoCertificate,
    })
}

fn rsa_root_sns(
    flag: &'static str,
    roots: &[Certificate],
) -> Result<Vec<String>, SandboxCertError> {
    let sn =
        cert::root_sn(roots).map_err(|source| SandboxCertError::Certificate { flag, source })?;
    Ok(sn.split('_').map(str::to_owned).collect())
}

fn sn_of(flag: &'static str, pem: &str) -> Result<String, SandboxCertError> {
    let certs = cert::parse_pem_bundle(pem.as_bytes())
        .map_err(|source| SandboxCertError::Certificate { flag, source })?;
    Ok(first(flag, &certs)?.sn().to_owned())
}

fn name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "CN");
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::OrganizationalUnitName, "Certification Authority");
    name.push(DnType::CommonName, common_name);
    name
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER serials must be; the first byte keeps it 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, "Zhima Sandbox");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    params
}

fn leaf_params(common_name: &str, organization: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, organization);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    params
}

fn write(dir: &Path, file: &str, text: &str, secret: bool) -> Result<(), SandboxCertError> {
    let path = dir.join(file);
    let written = std::fs::write(&path, text).and_then(|()| {
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    });
    written.map_err(|source| SandboxCertError::Write { path, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn app_key() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keys/test_merchant_public.pem")
    }

    #[test]
    fn generated_certificates_chain_and_name_the_registered_apps() {
        let dir = tempfile::tempdir().unwrap();
        let apps = vec![("2014072300007148".to_owned(), app_key())];
        let mut certs = SandboxCertificates::generate(dir.path(), &apps).unwrap();
        let roots = cert::read_pem_file(&dir.path().join("alipayRootCert.crt")).unwrap();
        assert_eq!(roots.len(), 2);
        assert!(roots[0].is_rsa_signed() && !roots[1].is_rsa_signed());
        assert_eq!(certs.root_sn(), cert::root_sn(&roots).unwrap());
        let now = chrono::Utc::now().timestamp();
        let alipay = cert::read_pem_file(&dir.path().join("alipayCertPublicKey_RSA2.crt")).unwrap();
        cert::check_chain(&alipay, &roots, now).unwrap();
        assert_eq!(certs.current_sn(), Some(alipay[0].sn()));
        let app =
            cert::read_pem_file(&dir.path().join("appCertPublicKey_2014072300007148.crt")).unwrap();
        cert::check_chain(&app, &roots, now).unwrap();
        assert_eq!(certs.app_cert_sn("2014072300007148"), Some(app[0].sn()));
        // The app certificate holds the registered key.
        let merchant = crate::upstream::signing::test_support::merchant_private_pkcs8();
        let signature = merchant
            .sign(crate::upstream::signing::SignType::Rsa2, b"x")
            .unwrap();
        app[0]
            .public_key()
            .unwrap()
            .verify(crate::upstream::signing::SignType::Rsa2, b"x", &signature)
            .unwrap();

        let first = certs.current_sn().unwrap().to_owned();
        let second = certs.rotate(false).unwrap();
        assert_ne!(first, second);
        assert!(certs.download(&first).is_some() && certs.download(&second).is_some());
        let pem = BASE64.decode(certs.download(&second).unwrap()).unwrap();
        let rotated = cert::parse_pem_bundle(&pem).unwrap();
        cert::check_chain(&rotated, &roots, now).unwrap();
        let third = certs.rotate(true).unwrap();
        let pem = BASE64.decode(certs.download(&third).unwrap()).unwrap();
        let stranger = cert::parse_pem_bundle(&pem).unwrap();
        assert!(cert::check_chain(&stranger, &roots, now).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("alipayCertPrivateKey.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }

    #[test]
    fn sns_are_checked_only_for_apps_in_certificate_mode() {
        let dir = tempfile::tempdir().unwrap();
        let apps = vec![("2014072300007148".to_owned(), app_key())];
        let certs = SandboxCertificates::generate(dir.path(), &apps).unwrap();
        let app_sn = certs.app_cert_sn("2014072300007148").unwrap().to_owned();
        let root = certs.root_sn();
        let check = |app: &str, sn: Option<&str>, root: Option<&str>| certs.check(app, sn, root);
        assert_eq!(
            check("2014072300007148", Some(&app_sn), Some(&root)),
            CertCheck::Fine
        );
        assert_eq!(check("other", None, None), CertCheck::Fine);
        assert_eq!(
            check("2014072300007148", None, Some(&root)),
            CertCheck::MissingAppCertSn
        );
        assert_eq!(
            check("2014072300007148", Some("0123"), Some(&root)),
            CertCheck::AppCertNotExist
        );
        assert_eq!(
            check("2014072300007148", Some(&app_sn), Some("0123_4567")),
            CertCheck::InvalidRootCertSn
        );
        assert_eq!(
            check("2014072300007148", Some(&app_sn), None),
            CertCheck::InvalidRootCertSn
        );
        let long = "a".repeat(10_000);
        assert_eq!(
            check("2014072300007148", Some(&long), Some(&root)),
            CertCheck::AppCertNotExist
        );
    }
}
