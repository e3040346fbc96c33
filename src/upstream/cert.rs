//! Public-key certificate mode (公钥证书模式): certificate SNs, root SNs,
//! validity and chain checks.
//!
//! Responsible for: reading PEM certificates and bundles, the certificate SN
//! Alipay uses to name a certificate (lowercase hex MD5 of the issuer DN in
//! RFC 2253 order followed by the serial number in decimal), the root SN (the
//! SNs of the RSA-signed roots of a bundle joined by `_`, in file order), and
//! checking that a certificate is within its validity and chains to a root.
//!
//! The issuer DN is formatted as Java's `X500Principal.getName()` does (the
//! Java SDK's reference): RFC 2253 keywords `CN`, `C`, `L`, `ST`, `O`, `OU`,
//! `STREET`, `DC`, `UID`; any other attribute as its dotted OID with the DER
//! value in `#hex`; `,=+<>#;"\` escaped with a backslash, as are leading and
//! trailing spaces; the RDNs in reverse DER order, the values of a
//! multi-valued RDN joined by `+`. For the DNs Alipay issues (CN, OU, O, C,
//! plain text) this is also what the Node SDK computes.
//!
//! Must not: do I/O (the `from_file` constructors are the one exception), or
//! trust a certificate it could not chain.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Digest as _;
use x509_parser::prelude::{FromDer as _, X509Certificate, X509Name};

use super::signing::{KeyError, PublicKey};

/// A certificate file holds a handful of certificates of a few KiB each; the
/// bound keeps a wrong path (`/dev/zero`, a log file) from being read whole.
pub const MAX_CERT_FILE_BYTES: u64 = 1024 * 1024;

/// More certificates than this in one file is not a root bundle.
pub const MAX_CERTS_PER_FILE: usize = 64;

/// The signature-algorithm OID prefix of RSA-signed certificates
/// (`1.2.840.113549.1.1.*`): only those roots count in the root SN.
const RSA_SIGNATURE_OID_PREFIX: &str = "1.2.840.113549.1.1.";

/// Why a certificate (or a bundle) is unusable. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not read the certificate file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the certificate file {} is larger than {MAX_CERT_FILE_BYTES} bytes: not a certificate file",
        path.display()
    )]
    FileTooLarge { path: PathBuf },
    #[error("the certificate file {} is unusable", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<CertError>,
    },
    #[error(
        "this holds a private key, not a certificate: give the certificate (.crt) \
         downloaded from the Alipay console"
    )]
    PrivateKey,
    #[error("this holds a {label:?} PEM block, not a certificate")]
    NotACertificate { label: String },
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate,
    #[error("more than {MAX_CERTS_PER_FILE} certificates in one file")]
    TooMany,
    #[error("the PEM armour is broken: {reason}")]
    Pem { reason: String },
    #[error("certificate {index} is not a valid X.509 certificate: {reason}")]
    Malformed { index: usize, reason: String },
    #[error(
        "no root in the bundle is RSA-signed (OID 1.2.840.113549.1.1.*): the root SN \
         would be empty; give Alipay's root certificate bundle (alipayRootCert.crt)"
    )]
    NoRsaRoot,
    #[error("the certificate's public key is not a usable RSA key")]
    PublicKey(#[source] KeyError),
}

/// One parsed certificate, with what certificate mode needs of it.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    sn: String,
    not_before: i64,
    not_after: i64,
    signature_oid: String,
    /// The raw DER of the issuer and subject names, to find an issuer.
    issuer_der: Vec<u8>,
    subject_der: Vec<u8>,
    /// The issuer DN as the SN uses it (for messages).
    issuer_dn: String,
    /// Basic constraints say CA, and key usage (if present) allows signing
    /// certificates: only such a certificate may issue others in a chain.
    is_ca: bool,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("sn", &self.sn)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses one DER certificate; `index` (0-based, in its file) only names
    /// it in errors.
    pub fn from_der(der: &[u8], index: usize) -> Result<Self, CertError> {
        let malformed = |reason: String| CertError::Malformed { index, reason };
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(malformed(format!(
                "{} bytes after the certificate",
                rest.len()
            )));
        }
        let issuer_dn = issuer_rfc2253(cert.issuer()).map_err(malformed)?;
        let sn = sn_of(&cert).map_err(malformed)?;
        let validity = cert.validity();
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(constraints)) if constraints.value.ca)
            && match cert.key_usage() {
                Ok(Some(usage)) => usage.value.key_cert_sign(),
                Ok(None) => true,
                Err(_) => false,
            };
        Ok(Self {
            der: der.to_vec(),
            sn,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            signature_oid: cert.signature_algorithm.algorithm.to_id_string(),
            issuer_der: cert.issuer().as_raw().to_vec(),
            subject_der: cert.subject().as_raw().to_vec(),
            issuer_dn,
            is_ca,
        })
    }

    /// The certificate SN: lowercase hex MD5 of issuer DN (RFC 2253) + serial.
    pub fn sn(&self) -> &str {
        &self.sn
    }

    /// Start of validity, Unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of validity, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM armour of the DER, 64 columns.
    pub fn to_pem(&self) -> String {
        let body = BASE64.encode(&self.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// Whether it may issue certificates (basic constraints `cA`, and
    /// `keyCertSign` when key usage is given).
    pub fn is_ca(&self) -> bool {
        self.is_ca
    }

    /// Whether the certificate itself is signed with an RSA algorithm.
    pub fn is_rsa_signed(&self) -> bool {
        self.signature_oid.starts_with(RSA_SIGNATURE_OID_PREFIX)
    }

    /// The subject's RSA public key (the key that verifies what this
    /// certificate's holder signs). At least 2048 bits, like a bare key.
    pub fn public_key(&self) -> Result<PublicKey, CertError> {
        let parsed = self.parsed()?;
        let spki = parsed.public_key().raw;
        PublicKey::from_pem_or_base64(&BASE64.encode(spki)).map_err(CertError::PublicKey)
    }

    /// Whether `now` (Unix seconds) is within the validity period.
    pub fn validity_at(&self, now: i64) -> Validity {
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Whether `issuer` signed this certificate: its subject is our issuer and
    /// its public key verifies our signature. RSA (SHA-1/256/384/512) and
    /// ECDSA (P-256/P-384) issuers; anything else (SM2) never verifies.
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        let (Ok(child), Ok(parent)) = (self.parsed(), issuer.parsed()) else {
            return false;
        };
        if child.issuer().as_raw() != parent.subject().as_raw() {
            return false;
        }
        let Some(algorithm) = verification_algorithm(&child, &parent) else {
            return false;
        };
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            algorithm,
            &*parent.public_key().subject_public_key.data,
        );
        key.verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
            .is_ok()
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, CertError> {
        X509Certificate::from_der(&self.der)
            .map(|(_, cert)| cert)
            .map_err(|e| CertError::Malformed {
                index: 0,
                reason: e.to_string(),
            })
    }
}

/// Where a time falls relative to a certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    NotYetValid,
    Expired,
}

/// Why a certificate does not chain to the roots.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("certificate {sn} is not yet valid")]
    NotYetValid { sn: String },
    #[error("certificate {sn} has expired")]
    Expired { sn: String },
    #[error(
        "certificate {sn} does not chain to any root of upstream.alipay_root_cert_path \
         (no path through the certificates given)"
    )]
    Untrusted { sn: String },
    /// No certificate given (chain or roots) has the name of the issuer the
    /// path needs next: the chain cannot be checked, rather than shown wrong.
    #[error(
        "certificate {sn} cannot be checked against upstream.alipay_root_cert_path: its \
         issuer {issuer:?} is neither in the file nor in the root bundle"
    )]
    IssuerMissing { sn: String, issuer: String },
}

/// Checks that `chain[0]` (the leaf) is valid at `now` and chains, through
/// the other certificates of `chain` (intermediates, in any order, each a CA
/// and valid at `now`), to a certificate of `roots` (trust anchors, taken as
/// they are). Depth is bounded by the number of certificates given.
pub fn check_chain(
    chain: &[Certificate],
    roots: &[Certificate],
    now: i64,
) -> Result<(), ChainError> {
    let Some(leaf) = chain.first() else {
        return Err(ChainError::Untrusted { sn: String::new() });
    };
    let mut current = leaf;
    for _ in 0..=chain.len() {
        match current.validity_at(now) {
            Validity::Valid => {}
            Validity::NotYetValid => {
                return Err(ChainError::NotYetValid {
                    sn: current.sn.clone(),
                });
            }
            Validity::Expired => {
                return Err(ChainError::Expired {
                    sn: current.sn.clone(),
                });
            }
        }
        if roots
            .iter()
            .any(|root| root.der == current.der || current.is_signed_by(root))
        {
            return Ok(());
        }
        // An intermediate must be a CA: the holder of an end-entity
        // certificate (any merchant's app certificate) cannot issue one.
        let next = chain.iter().skip(1).find(|candidate| {
            candidate.der != current.der && candidate.is_ca() && current.is_signed_by(candidate)
        });
        match next {
            Some(next) => current = next,
            None => {
                let named = |cert: &Certificate| cert.subject_der == current.issuer_der;
                if !roots.iter().any(named) && !chain.iter().any(named) {
                    return Err(ChainError::IssuerMissing {
                        sn: leaf.sn.clone(),
                        issuer: current.issuer_dn.clone(),
                    });
                }
                break;
            }
        }
    }
    Err(ChainError::Untrusted {
        sn: leaf.sn.clone(),
    })
}

/// Every certificate of a PEM text, in order. Refuses private keys and other
/// PEM blocks (named), a text with no certificate, and more than
/// [`MAX_CERTS_PER_FILE`].
pub fn parse_pem_bundle(bytes: &[u8]) -> Result<Vec<Certificate>, CertError> {
    let mut certificates = Vec::new();
    for (index, block) in x509_parser::pem::Pem::iter_from_buffer(bytes).enumerate() {
        let block = block.map_err(|e| CertError::Pem {
            reason: e.to_string(),
        })?;
        if block.label.contains("PRIVATE KEY") {
            return Err(CertError::PrivateKey);
        }
        if block.label != "CERTIFICATE" {
            return Err(CertError::NotACertificate { label: block.label });
        }
        if certificates.len() == MAX_CERTS_PER_FILE {
            return Err(CertError::TooMany);
        }
        certificates.push(Certificate::from_der(&block.contents, index)?);
    }
    if certificates.is_empty() {
        return Err(CertError::NoCertificate);
    }
    Ok(certificates)
}

/// [`parse_pem_bundle`] of a file; errors name the path.
pub fn read_pem_file(path: &Path) -> Result<Vec<Certificate>, CertError> {
    use std::io::Read as _;
    let read_error = |source| CertError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CERT_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_CERT_FILE_BYTES {
        return Err(CertError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    parse_pem_bundle(&bytes).map_err(|source| CertError::InFile {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// The root SN of a bundle: the SNs of its RSA-signed certificates joined by
/// `_`, in file order. A bundle without one is refused (the SN would be empty).
pub fn root_sn(roots: &[Certificate]) -> Result<String, CertError> {
    let sns: Vec<&str> = roots
        .iter()
        .filter(|cert| cert.is_rsa_signed())
        .map(Certificate::sn)
        .collect();
    if sns.is_empty() {
        return Err(CertError::NoRsaRoot);
    }
    Ok(sns.join("_"))
}

/// Whether `text` has the shape of a certificate SN: 32 lowercase hex digits.
/// Bounds what an answer may make us look up or download.
pub fn looks_like_sn(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn sn_of(cert: &X509Certificate<'_>) -> Result<String, String> {
    let issuer = issuer_rfc2253(cert.issuer())?;
    let serial = x509_parser::num_bigint::BigInt::from_signed_bytes_be(cert.raw_serial());
    Ok(sn_from_parts(&issuer, &serial.to_string()))
}

/// MD5(issuer DN + decimal serial), lowercase hex.
pub(crate) fn sn_from_parts(issuer_dn: &str, serial_decimal: &str) -> String {
    let mut hasher = md5::Md5::new();
    hasher.update(issuer_dn.as_bytes());
    hasher.update(serial_decimal.as_bytes());
    hex::encode(hasher.finalize())
}

/// The DN as Java's `X500Principal.getName()` (RFC 2253) writes it.
fn issuer_rfc2253(name: &X509Name<'_>) -> Result<String, String> {
    let rdns: Vec<_> = name.iter().collect();
    let mut parts = Vec::with_capacity(rdns.len());
    for rdn in rdns.iter().rev() {
        let mut avas = rdn
            .iter()
            .map(|ava| {
                let oid = ava.attr_type().to_id_string();
                let keyword = rfc2253_keyword(&oid);
                let value = ava.attr_value();
                format_ava(keyword, &oid, value)
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Java sorts the values of a multi-valued RDN: keyword ones first,
        // then by their text (case-insensitively).
        avas.sort_by(|(a_keyword, a_text), (b_keyword, b_text)| {
            b_keyword
                .cmp(a_keyword)
                .then_with(|| a_text.to_lowercase().cmp(&b_text.to_lowercase()))
        });
        let joined: Vec<String> = avas.into_iter().map(|(_, text)| text).collect();
        parts.push(joined.join("+"));
    }
    Ok(parts.join(","))
}

fn rfc2253_keyword(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// `(has keyword, "TYPE=value")`.
fn format_ava(
    keyword: Option<&'static str>,
    oid: &str,
    value: &x509_parser::der_parser::asn1_rs::Any<'_>,
) -> Result<(bool, String), String> {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer as _};
    let text = match value.tag() {
        Tag::PrintableString | Tag::Ia5String | Tag::Utf8String => {
            Some(std::str::from_utf8(value.data).map_err(|_| "a DN value is not valid text")?)
        }
        // T61String and GeneralString: Java reads them as Latin-1-ish bytes;
        // only their ASCII form is taken as text here.
        Tag::TeletexString | Tag::GeneralString if value.data.is_ascii() => {
            Some(std::str::from_utf8(value.data).map_err(|_| "a DN value is not valid text")?)
        }
        _ => None,
    };
    match (keyword, text) {
        (Some(keyword), Some(text)) => Ok((true, format!("{keyword}={}", escape_rfc2253(text)))),
        (keyword, _) => {
            let der = value.to_der_vec().map_err(|e| e.to_string())?;
            Ok((
                keyword.is_some(),
                format!("{}=#{}", keyword.unwrap_or(oid), hex::encode(der)),
            ))
        }
    }
}

/// Java's RFC 2253 escaping: `,=+<>#;"\` anywhere, NUL as `\00`, leading and
/// trailing spaces (and carriage returns).
fn escape_rfc2253(value: &str) -> String {
    const ESCAPED: &str = ",=+<>#;\"\\";
    let mut body = String::with_capacity(value.len());
    for c in value.chars() {
        if ESCAPED.contains(c) {
            body.push('\\');
            body.push(c);
        } else if c == '\0' {
            body.push_str("\\00");
        } else {
            body.push(c);
        }
    }
    let chars: Vec<char> = body.chars().collect();
    let is_blank = |c: &char| *c == ' ' || *c == '\r';
    let lead = chars.iter().take_while(|c| is_blank(c)).count();
    let trail = chars.iter().rev().take_while(|c| is_blank(c)).count();
    let mut out = String::with_capacity(body.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if i < lead || i + trail >= chars.len() {
            out.push('\\');
        }
        out.push(*c);
    }
    out
}

fn verification_algorithm(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
) -> Option<&'static dyn aws_lc_rs::signature::VerificationAlgorithm> {
    use aws_lc_rs::signature as sig;
    let curve = parent
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    let algorithm: &'static dyn sig::VerificationAlgorithm = match (
        child.signature_algorithm.algorithm.to_id_string().as_str(),
        curve.as_deref(),
    ) {
        ("1.2.840.113549.1.1.5", _) => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ("1.2.840.113549.1.1.11", _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", _) => &sig::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", _) => &sig::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", Some("1.2.840.10045.3.1.7")) => &sig::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.2.840.10045.3.1.7")) => &sig::ECDSA_P256_SHA384_ASN1,
        ("1.2.840.10045.4.3.2", Some("1.3.132.0.34")) => &sig::ECDSA_P384_SHA256_ASN1,
        ("1.2.840.10045.4.3.3", Some("1.3.132.0.34")) => &sig::ECDSA_P384_SHA384_ASN1,
        _ => return None,
    };
    Some(algorithm)
}

#[cfg(test)]
mod tests;
