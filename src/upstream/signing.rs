//! Request signing and signature verification for the Alipay OpenAPI.
//!
//! Responsible for: the canonical string to sign (every non-empty parameter but
//! `sign`, sorted by key, `k=v` joined by `&`, raw values), encoding it in the
//! request charset, RSA2 (SHA256withRSA) and RSA (SHA1withRSA) PKCS#1 v1.5
//! signatures in standard base64, verifying such signatures, and loading RSA
//! keys in whichever of the usual formats an operator pastes (PKCS#1 or PKCS#8,
//! PEM or bare base64).
//!
//! Must not: do I/O (the `from_file` constructors are the one exception), log,
//! or ever print key material — `Debug` of a private key is redacted and no
//! error carries key bytes. Which crypto library does the work is decided in
//! the private `backend` module and invisible here.

mod backend;
#[cfg(test)]
pub(crate) mod test_support;

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Name of the library doing RSA2 signing and all verification in this build
/// (`"aws-lc-rs"` or `"rsa"`); legacy RSA signing always uses `rsa`.
pub const CRYPTO_BACKEND: &str = backend::NAME;

/// The `sign_type` request parameter; it also decides how the gateway signs
/// its answer, so the same value verifies the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignType {
    /// SHA256withRSA, the type Alipay recommends and the default.
    Rsa2,
    /// SHA1withRSA, kept for apps registered before RSA2 existed.
    Rsa,
}

impl SignType {
    /// The wire spelling: the gateway and the official SDKs use upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2 => "RSA2",
            Self::Rsa => "RSA",
        }
    }
}

impl fmt::Display for SignType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignType {
    type Err = SigningError;

    /// Case-insensitive, like the gateway.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("RSA2") {
            Ok(Self::Rsa2)
        } else if text.eq_ignore_ascii_case("RSA") {
            Ok(Self::Rsa)
        } else {
            Err(SigningError::UnknownSignType {
                value: text.to_owned(),
            })
        }
    }
}

impl<'de> serde::Deserialize<'de> for SignType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for SignType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The `charset` request parameter: the bytes that are signed, sent, and
/// answered are in this encoding, so signing must encode exactly as the wire does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    Utf8,
    Gbk,
    /// Signed and sent as GBK, a superset: the gateway (Java) does the same.
    Gb2312,
    Gb18030,
}

impl Charset {
    /// The spelling we send; the gateway accepts any case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Utf8 => "utf-8",
            Self::Gbk => "gbk",
            Self::Gb2312 => "gb2312",
            Self::Gb18030 => "gb18030",
        }
    }

    /// GB2312 maps to GBK, as the WHATWG label table (and Java) do: every GB2312
    /// byte sequence is valid GBK, and GBK also covers characters GB2312 lacks.
    pub(crate) fn encoding(self) -> &'static encoding_rs::Encoding {
        match self {
            Self::Utf8 => encoding_rs::UTF_8,
            Self::Gbk | Self::Gb2312 => encoding_rs::GBK,
            Self::Gb18030 => encoding_rs::GB18030,
        }
    }

    /// Never fails: a character the charset cannot hold becomes an HTML numeric
    /// character reference (encoding_rs behaviour), so a request with such a name
    /// is still signed over exactly the bytes that are sent.
    pub fn encode<'a>(self, text: &'a str) -> Cow<'a, [u8]> {
        let (bytes, _, _) = self.encoding().encode(text);
        bytes
    }

    /// Lossy: malformed input becomes U+FFFD. Only for display and parsing of
    /// bytes that were already verified; never decode before verifying.
    pub fn decode<'a>(self, bytes: &'a [u8]) -> Cow<'a, str> {
        let (text, _) = self.encoding().decode_without_bom_handling(bytes);
        text
    }

    /// Whether a byte in 0x81..=0xFE starts a multi-byte character whose next
    /// byte may be ASCII (`\`, `{`, `}` included): true for the GB family,
    /// false for UTF-8 where every byte of a multi-byte character is >= 0x80.
    pub(crate) fn has_ascii_trail_bytes(self) -> bool {
        !matches!(self, Self::Utf8)
    }
}

impl fmt::Display for Charset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Charset {
    type Err = SigningError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const NAMES: [(&str, Charset); 5] = [
            ("utf-8", Charset::Utf8),
            ("utf8", Charset::Utf8),
            ("gbk", Charset::Gbk),
            ("gb2312", Charset::Gb2312),
            ("gb18030", Charset::Gb18030),
        ];
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
            .map(|(_, charset)| *charset)
            .ok_or_else(|| SigningError::UnknownCharset {
                value: text.to_owned(),
            })
    }
}

impl<'de> serde::Deserialize<'de> for Charset {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Charset {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a key could not be loaded. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not read the key file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key in {} is unusable", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error(
        "this is a PUBLIC key where a PRIVATE key is needed: give the app's private key \
         (the one whose public half was uploaded to Alipay), not a public key"
    )]
    PublicKeyInPrivateSlot,
    #[error(
        "this is a PRIVATE key where a PUBLIC key is needed: give the Alipay public key \
         (downloaded from the Alipay console), not a private key"
    )]
    PrivateKeyInPublicSlot,
    #[error("encrypted private keys are not supported: export it unencrypted (PKCS#1 or PKCS#8)")]
    Encrypted,
    #[error(
        "this is a certificate, not a key: in key mode give the bare RSA public key; for \
         public-key certificate mode set upstream.app_cert_path, upstream.alipay_cert_path \
         and upstream.alipay_root_cert_path instead (README \"Certificate mode\")"
    )]
    Certificate,
    #[error("not an RSA key in PKCS#1 or PKCS#8 (PEM or bare base64): {reason}")]
    Malformed { reason: String },
    #[error(
        "the key has {bits} bits; at least {MIN_KEY_BITS} are required \
         (generate a 2048-bit key with the Alipay key tool and register its public half)"
    )]
    TooShort { bits: usize },
    #[error(
        "the key file {} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file",
        path.display()
    )]
    FileTooLarge { path: PathBuf },
    #[error("the key file {} is not text (PEM or base64)", path.display())]
    NotText { path: PathBuf },
}

/// Alipay issues 2048-bit keys; anything shorter is refused when loaded.
pub(crate) const MIN_KEY_BITS: usize = 2048;

/// A PEM key is a few KiB; the bound keeps `/dev/zero` or a log file given by
/// mistake from being read whole.
pub(crate) const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

fn check_key_bits(modulus_bits: usize) -> Result<(), KeyError> {
    if modulus_bits < MIN_KEY_BITS {
        return Err(KeyError::TooShort { bits: modulus_bits });
    }
    Ok(())
}

/// Why signing or verification could not be done (or did not succeed).
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("unknown sign_type {value:?}: expected RSA2 or RSA")]
    UnknownSignType { value: String },
    #[error("unknown charset {value:?}: expected utf-8, gbk, gb2312 or gb18030")]
    UnknownCharset { value: String },
    #[error("the signature is not valid base64")]
    InvalidBase64(#[source] base64::DecodeError),
    #[error("the signature does not verify with this public key")]
    BadSignature,
    #[error("the crypto library could not sign: {reason}")]
    SignFailed { reason: String },
    #[error("the parameters are not a JSON object of strings")]
    InvalidParamsJson(#[source] serde_json::Error),
    #[error("the parameters must be a JSON object, found {found}")]
    ParamsNotAnObject { found: &'static str },
    #[error(
        "parameter {key:?} is not a JSON string (every value, biz_content included, must be a string)"
    )]
    NonStringValue { key: String },
    #[error("parameter {field:?} is missing")]
    MissingField { field: &'static str },
}

/// The app's private key. Cheap to clone (shared), so every task can own one.
#[derive(Clone)]
pub struct PrivateKey {
    inner: Arc<backend::SigningKeys>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..redacted..)")
    }
}

impl PrivateKey {
    /// Accepts what operators paste: PKCS#1 or PKCS#8, PEM or the bare base64 the
    /// Alipay key tool prints (line breaks and spaces tolerated). The format is
    /// detected from the DER itself, so a mislabelled PEM still loads.
    pub fn from_pem_or_base64(text: &str) -> Result<Self, KeyError> {
        let der = der_from_text(text)?;
        match classify_der(&der)? {
            KeyDer::Pkcs8Private(key) => {
                Self::from_parsed(key, &der, backend::PrivateFormat::Pkcs8)
            }
            KeyDer::Pkcs1Private(key) => {
                Self::from_parsed(key, &der, backend::PrivateFormat::Pkcs1)
            }
            KeyDer::Public(_) => Err(KeyError::PublicKeyInPrivateSlot),
        }
    }

    /// The only I/O in this module; the error names the path.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_pem_or_base64(&text).map_err(|source| in_file(path, source))
    }

    fn from_parsed(
        key: rsa::RsaPrivateKey,
        der: &[u8],
        format: backend::PrivateFormat,
    ) -> Result<Self, KeyError> {
        use rsa::traits::PublicKeyParts as _;
        check_key_bits(key.n().bits())?;
        let keys = backend::SigningKeys::new(key, der, format)
            .map_err(|reason| KeyError::Malformed { reason })?;
        Ok(Self {
            inner: Arc::new(keys),
        })
    }

    /// PKCS#1 v1.5 is deterministic, so the same key and message always give the
    /// same string: the test vectors rely on it.
    pub fn sign(&self, sign_type: SignType, message: &[u8]) -> Result<String, SigningError> {
        let signature = self
            .inner
            .sign(sign_type, message)
            .map_err(|reason| SigningError::SignFailed { reason })?;
        Ok(BASE64.encode(signature))
    }
}

/// The Alipay public key (or, in the sandbox, an app's public key).
#[derive(Clone)]
pub struct PublicKey {
    inner: Arc<backend::VerifyingKeys>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits)", self.inner.bits())
    }
}

impl PublicKey {
    /// SPKI (`BEGIN PUBLIC KEY`, what the Alipay console hands out) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`), PEM or bare base64.
    pub fn from_pem_or_base64(text: &str) -> Result<Self, KeyError> {
        let der = der_from_text(text)?;
        match classify_der(&der)? {
            KeyDer::Public(key) => {
                use rsa::traits::PublicKeyParts as _;
                check_key_bits(key.n().bits())?;
                let keys = backend::VerifyingKeys::new(key)
                    .map_err(|reason| KeyError::Malformed { reason })?;
                Ok(Self {
                    inner: Arc::new(keys),
                })
            }
            KeyDer::Pkcs8Private(_) | KeyDer::Pkcs1Private(_) => {
                Err(KeyError::PrivateKeyInPublicSlot)
            }
        }
    }

    /// The only I/O in this module; the error names the path.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::from_pem_or_base64(&text).map_err(|source| in_file(path, source))
    }

    /// Every key of a file: one key (PEM or bare base64), or several PEM
    /// blocks one after the other, as during a key rotation (the old and the
    /// new Alipay public key). Never empty.
    pub fn all_from_file(path: &Path) -> Result<Vec<Self>, KeyError> {
        let text = read_key_file(path)?;
        let blocks = pem_blocks(&text);
        if blocks.len() < 2 {
            return Self::from_pem_or_base64(&text)
                .map(|key| vec![key])
                .map_err(|source| in_file(path, source));
        }
        blocks
            .into_iter()
            .map(|block| Self::from_pem_or_base64(block).map_err(|source| in_file(path, source)))
            .collect()
    }

    /// `signature_base64` is the `sign` value as received (standard base64).
    pub fn verify(
        &self,
        sign_type: SignType,
        message: &[u8],
        signature_base64: &str,
    ) -> Result<(), SigningError> {
        let signature = BASE64
            .decode(signature_base64.trim())
            .map_err(SigningError::InvalidBase64)?;
        if self.inner.verify(sign_type, message, &signature) {
            Ok(())
        } else {
            Err(SigningError::BadSignature)
        }
    }
}

/// The PKCS#1 `RSAPublicKey` DER of a public key file's text (SPKI or
/// PKCS#1, PEM or bare base64): what a certificate for that key embeds (the
/// sandbox issues app certificates for registered apps' keys).
pub(crate) fn public_key_pkcs1_der(text: &str) -> Result<Vec<u8>, KeyError> {
    use rsa::pkcs1::EncodeRsaPublicKey as _;
    match classify_der(&der_from_text(text)?)? {
        KeyDer::Public(key) => key
            .to_pkcs1_der()
            .map(|der| der.as_bytes().to_vec())
            .map_err(|e| KeyError::Malformed {
                reason: e.to_string(),
            }),
        KeyDer::Pkcs8Private(_) | KeyDer::Pkcs1Private(_) => Err(KeyError::PrivateKeyInPublicSlot),
    }
}

/// The `-----BEGIN …-----` to `-----END …-----` blocks of a text, in order.
fn pem_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN") {
        let from_begin = &rest[start..];
        let Some(end) = from_begin.find("-----END") else {
            break;
        };
        let after_end = &from_begin[end + "-----END".len()..];
        let Some(close) = after_end.find("-----") else {
            break;
        };
        let length = end + "-----END".len() + close + "-----".len();
        blocks.push(&from_begin[..length]);
        rest = &from_begin[length..];
    }
    blocks
}

/// Reads at most one byte more than [`MAX_KEY_FILE_BYTES`], so an endless
/// or huge file is refused without being read whole.
fn read_key_file(path: &Path) -> Result<String, KeyError> {
    use std::io::Read as _;
    let read_error = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > MAX_KEY_FILE_BYTES {
        return Err(KeyError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| KeyError::NotText {
        path: path.to_owned(),
    })
}

fn in_file(path: &Path, source: KeyError) -> KeyError {
    KeyError::InFile {
        path: path.to_owned(),
        source: Box::new(source),
    }
}

/// PEM armour (any label we know) or bare base64 -> DER bytes. Encrypted PEMs and
/// certificates are named as such, because "malformed" would send the operator
/// looking in the wrong place.
fn der_from_text(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(KeyError::Malformed {
            reason: "the key text is empty".to_owned(),
        });
    }
    let body = if text.contains("-----BEGIN") {
        pem_body(text)?
    } else {
        text.to_owned()
    };
    let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let padded = compact.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(padded)
        .map_err(|_| KeyError::Malformed {
            reason: "the key is neither PEM nor valid base64".to_owned(),
        })
}

fn pem_body(text: &str) -> Result<String, KeyError> {
    let start = text.find("-----BEGIN").unwrap_or(0);
    let armoured = &text[start..];
    let first_line_end = armoured.find('\n').unwrap_or(armoured.len());
    let label = armoured[..first_line_end]
        .trim()
        .trim_start_matches("-----BEGIN")
        .trim_end_matches('-')
        .trim();
    if label.contains("ENCRYPTED") || armoured.contains("Proc-Type:") {
        return Err(KeyError::Encrypted);
    }
    if label.contains("CERTIFICATE") {
        return Err(KeyError::Certificate);
    }
    let rest = &armoured[first_line_end..];
    let Some(end) = rest.find("-----END") else {
        return Err(KeyError::Malformed {
            reason: format!("PEM block {label:?} has no END line"),
        });
    };
    Ok(rest[..end].to_owned())
}

enum KeyDer {
    Pkcs8Private(rsa::RsaPrivateKey),
    Pkcs1Private(rsa::RsaPrivateKey),
    Public(rsa::RsaPublicKey),
}

/// Tries every structure an RSA key comes in; the first that parses wins (the
/// four are mutually exclusive ASN.1 shapes).
fn classify_der(der: &[u8]) -> Result<KeyDer, KeyError> {
    use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
    use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};

    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
        return Ok(KeyDer::Pkcs8Private(key));
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs1_der(der) {
        return Ok(KeyDer::Pkcs1Private(key));
    }
    if let Ok(key) = rsa::RsaPublicKey::from_public_key_der(der) {
        return Ok(KeyDer::Public(key));
    }
    if let Ok(key) = rsa::RsaPublicKey::from_pkcs1_der(der) {
        return Ok(KeyDer::Public(key));
    }
    Err(KeyError::Malformed {
        reason: "the decoded bytes are not an RSA key (PKCS#1, PKCS#8 or SubjectPublicKeyInfo)"
            .to_owned(),
    })
}

/// What the gateway rebuilds and verifies: a byte-level mismatch here is the
/// usual cause of `isv.invalid-signature`, so the rules are the SDKs' exactly —
/// empty values and `sign` left out, keys in byte order, values not URL-encoded.
pub fn string_to_sign<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut kept: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(key, value)| *key != "sign" && !key.is_empty() && !value.is_empty())
        .collect();
    kept.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(kept.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (index, (key, value)) in kept.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The string that was signed is kept beside the signature: when the gateway
/// rejects a signature, comparing it with the string the gateway quotes in
/// `sub_msg` is the fastest diagnosis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSignature {
    pub(crate) string_to_sign: String,
    pub sign: String,
}

/// Signs the bytes of the string to sign in `charset`, because the gateway
/// verifies the bytes it received, not characters.
pub fn sign_params<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    key: &PrivateKey,
    sign_type: SignType,
    charset: Charset,
) -> Result<RequestSignature, SigningError> {
    let string_to_sign = string_to_sign(params);
    let sign = key.sign(sign_type, &charset.encode(&string_to_sign))?;
    Ok(RequestSignature {
        string_to_sign,
        sign,
    })
}

/// For the `sign` debug command: signs exactly the given parameters (adding no
/// defaults), so an operator can reproduce what another client sent.
pub(crate) fn sign_debug(
    params_json: &str,
    key: &PrivateKey,
) -> Result<RequestSignature, SigningError> {
    let value: serde_json::Value =
        serde_json::from_str(params_json).map_err(SigningError::InvalidParamsJson)?;
    let serde_json::Value::Object(object) = value else {
        return Err(SigningError::ParamsNotAnObject {
            found: json_kind(&value),
        });
    };
    let mut params: Vec<(&str, &str)> = Vec::with_capacity(object.len());
    for (name, value) in &object {
        let serde_json::Value::String(text) = value else {
            return Err(SigningError::NonStringValue { key: name.clone() });
        };
        params.push((name.as_str(), text.as_str()));
    }
    let lookup = |field: &str| {
        params
            .iter()
            .find(|(name, value)| *name == field && !value.is_empty())
            .map(|(_, value)| *value)
    };
    let sign_type: SignType = lookup("sign_type")
        .ok_or(SigningError::MissingField { field: "sign_type" })?
        .parse()?;
    let charset = match lookup("charset") {
        Some(text) => text.parse()?,
        None => Charset::Utf8,
    };
    sign_params(params.iter().copied(), key, sign_type, charset)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::test_support::*;
    use super::*;

    fn sign_vector_with(key: &PrivateKey) {
        let vectors = vectors();
        assert!(vectors.request_vectors.len() >= 6);
        for vector in &vectors.request_vectors {
            let sign_type: SignType = vector.param("sign_type").parse().unwrap();
            let charset: Charset = vector.param("charset").parse().unwrap();
            let signed = sign_params(vector.param_pairs(), key, sign_type, charset).unwrap();
            assert_eq!(
                signed.string_to_sign, vector.string_to_sign,
                "{}",
                vector.id
            );
            assert_eq!(signed.sign, vector.sign, "{}", vector.id);
        }
    }

    #[test]
    fn every_request_vector_is_reproduced_with_the_pkcs8_key() {
        sign_vector_with(&merchant_private_pkcs8());
    }

    #[test]
    fn every_request_vector_is_reproduced_with_the_pkcs1_key() {
        sign_vector_with(&merchant_private_pkcs1());
    }

    #[test]
    fn every_request_vector_signature_verifies_with_the_merchant_public_key() {
        let public = merchant_public();
        for vector in &vectors().request_vectors {
            let sign_type: SignType = vector.param("sign_type").parse().unwrap();
            let charset: Charset = vector.param("charset").parse().unwrap();
            let bytes = charset.encode(&vector.string_to_sign);
            public.verify(sign_type, &bytes, &vector.sign).unwrap();
            let wrong = if sign_type == SignType::Rsa2 {
                SignType::Rsa
            } else {
                SignType::Rsa2
            };
            assert!(matches!(
                public.verify(wrong, &bytes, &vector.sign),
                Err(SigningError::BadSignature)
            ));
        }
    }

    #[test]
    fn the_bytes_signed_are_the_string_to_sign_in_the_request_charset() {
        use base64::Engine as _;
        let vectors = vectors();
        let recorded: Vec<_> = vectors
            .request_vectors
            .iter()
            .filter_map(|vector| Some((vector, vector.string_to_sign_bytes_b64.as_ref()?)))
            .collect();
        assert!(
            recorded
                .iter()
                .any(|(vector, _)| vector.id == "v13_gbk_chinese"),
            "v13 records its GBK bytes"
        );
        for (vector, b64) in recorded {
            let expected = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let charset: Charset = vector.param("charset").parse().unwrap();
            assert_eq!(
                charset.encode(&vector.string_to_sign).as_ref(),
                expected.as_slice(),
                "{}",
                vector.id
            );
        }
    }

    #[test]
    fn the_repository_copy_of_the_vectors_matches_the_shared_original() {
        let shared = shared_vectors_dir();
        if !shared.exists() {
            return;
        }
        for name in [
            "signature-vectors.json",
            "keys/merchant_private_pkcs8.pem",
            "keys/merchant_private_pkcs1.pem",
            "keys/merchant_public.pem",
            "keys/platform_public.pem",
        ] {
            let original = std::fs::read(shared.join(name)).unwrap();
            let copy = std::fs::read(vectors_dir().join(name)).unwrap();
            assert_eq!(
                original, copy,
                "tests/vectors/{name} differs from shared/vectors/{name}"
            );
        }
    }

    #[test]
    fn a_gbk_request_is_signed_over_its_gbk_bytes() {
        let key = merchant_private_pkcs8();
        let params = [("charset", "GBK"), ("name", "张三"), ("sign_type", "RSA2")];
        let signed = sign_params(params, &key, SignType::Rsa2, Charset::Gbk).unwrap();
        let gbk = encoding_rs::GBK.encode(&signed.string_to_sign).0;
        assert_ne!(gbk.as_ref(), signed.string_to_sign.as_bytes());
        merchant_public()
            .verify(SignType::Rsa2, &gbk, &signed.sign)
            .unwrap();
    }

    #[test]
    fn legacy_rsa_signatures_are_deterministic_despite_blinding() {
        let key = merchant_private_pkcs1();
        let first = key.sign(SignType::Rsa, b"same message").unwrap();
        let second = key.sign(SignType::Rsa, b"same message").unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn string_to_sign_leaves_out_sign_and_empty_values_and_sorts_by_key() {
        let params = [
            ("version", "1.0"),
            ("sign", "abc"),
            ("app_auth_token", ""),
            ("biz_content", "{\"a\":\"b&c=d\"}"),
            ("app_id", "1"),
        ];
        assert_eq!(
            string_to_sign(params),
            "app_id=1&biz_content={\"a\":\"b&c=d\"}&version=1.0"
        );
    }

    #[test]
    fn sign_debug_reproduces_the_seed_vector_from_its_json_params() {
        let vectors = vectors();
        let key = merchant_private_pkcs8();
        for vector in &vectors.request_vectors {
            let json = serde_json::to_string(&vector.params).unwrap();
            let signed = sign_debug(&json, &key).unwrap();
            assert_eq!(
                signed.string_to_sign, vector.string_to_sign,
                "{}",
                vector.id
            );
            assert_eq!(signed.sign, vector.sign, "{}", vector.id);
        }
    }

    #[test]
    fn sign_debug_adds_nothing_and_drops_empty_values() {
        let key = merchant_private_pkcs8();
        let json = r#"{"sign_type":"rsa2","app_id":"1","format":"","sign":"old"}"#;
        let signed = sign_debug(json, &key).unwrap();
        assert_eq!(signed.string_to_sign, "app_id=1&sign_type=rsa2");
        let bytes = signed.string_to_sign.as_bytes();
        merchant_public()
            .verify(SignType::Rsa2, bytes, &signed.sign)
            .unwrap();
    }

    #[test]
    fn sign_debug_reads_a_lower_case_sign_type_and_an_upper_case_charset() {
        let key = merchant_private_pkcs8();
        let json = r#"{"sign_type":"rsa","charset":"GB18030","name":"张三"}"#;
        let signed = sign_debug(json, &key).unwrap();
        let bytes = encoding_rs::GB18030.encode(&signed.string_to_sign).0;
        merchant_public()
            .verify(SignType::Rsa, &bytes, &signed.sign)
            .unwrap();
    }

    #[test]
    fn sign_debug_without_sign_type_names_the_missing_field() {
        let error = sign_debug(r#"{"app_id":"1"}"#, &merchant_private_pkcs8()).unwrap_err();
        assert!(matches!(
            error,
            SigningError::MissingField { field: "sign_type" }
        ));
        assert!(error.to_string().contains("sign_type"));
    }

    #[test]
    fn sign_debug_with_a_non_string_value_names_the_key() {
        let json = r#"{"sign_type":"RSA2","biz_content":{"a":1}}"#;
        let error = sign_debug(json, &merchant_private_pkcs8()).unwrap_err();
        assert!(error.to_string().contains("biz_content"), "{error}");
    }

    #[test]
    fn sign_debug_rejects_json_that_is_not_an_object() {
        let error = sign_debug("[1]", &merchant_private_pkcs8()).unwrap_err();
        assert!(matches!(error, SigningError::ParamsNotAnObject { .. }));
    }

    #[test]
    fn sign_type_and_charset_parse_case_insensitively() {
        assert_eq!("rsa2".parse::<SignType>().unwrap(), SignType::Rsa2);
        assert_eq!("Rsa".parse::<SignType>().unwrap(), SignType::Rsa);
        assert!("RSA3".parse::<SignType>().is_err());
        assert_eq!("UTF8".parse::<Charset>().unwrap(), Charset::Utf8);
        assert_eq!("GBK".parse::<Charset>().unwrap(), Charset::Gbk);
        assert_eq!("Gb2312".parse::<Charset>().unwrap(), Charset::Gb2312);
        assert_eq!("gb18030".parse::<Charset>().unwrap(), Charset::Gb18030);
        assert!("latin1".parse::<Charset>().is_err());
        let parsed: Charset = serde_json::from_str("\"GBK\"").unwrap();
        assert_eq!(parsed.as_str(), "gbk");
        let parsed: SignType = serde_json::from_str("\"rsa2\"").unwrap();
        assert_eq!(parsed.to_string(), "RSA2");
    }

    #[test]
    fn unmappable_characters_are_replaced_rather_than_failing() {
        let encoded = Charset::Gbk.encode("a😀b");
        assert!(encoded.starts_with(b"a") && encoded.ends_with(b"b"));
        assert_eq!(
            Charset::Gb18030.decode(&Charset::Gb18030.encode("😀")),
            "😀"
        );
    }

    fn pem_body_only(pem: &str) -> String {
        pem.lines()
            .filter(|line| !line.starts_with("-----"))
            .collect()
    }

    #[test]
    fn private_keys_load_from_pkcs1_and_pkcs8_pem_and_bare_base64() {
        let expected = vectors().request_vectors[0].sign.clone();
        let message = vectors().request_vectors[0].string_to_sign.clone();
        for name in ["merchant_private_pkcs1.pem", "merchant_private_pkcs8.pem"] {
            let pem = key_text(name);
            let reflowed = pem_body_only(&pem)
                .as_bytes()
                .chunks(50)
                .map(|chunk| std::str::from_utf8(chunk).unwrap())
                .collect::<Vec<_>>()
                .join(" \r\n ");
            for text in [pem.clone(), pem_body_only(&pem), reflowed] {
                let key = PrivateKey::from_pem_or_base64(&text).unwrap();
                assert_eq!(
                    key.sign(SignType::Rsa2, message.as_bytes()).unwrap(),
                    expected
                );
            }
        }
    }

    #[test]
    fn public_keys_load_from_spki_and_pkcs1_pem_and_bare_base64() {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        use rsa::pkcs8::DecodePublicKey as _;

        let vector = &vectors().request_vectors[0];
        let spki_pem = key_text("merchant_public.pem");
        let parsed = rsa::RsaPublicKey::from_public_key_pem(&spki_pem).unwrap();
        let pkcs1_pem = parsed.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).unwrap();
        assert!(pkcs1_pem.contains("BEGIN RSA PUBLIC KEY"));
        for text in [
            spki_pem.clone(),
            pem_body_only(&spki_pem),
            pkcs1_pem.clone(),
            pem_body_only(&pkcs1_pem),
        ] {
            let key = PublicKey::from_pem_or_base64(&text).unwrap();
            key.verify(
                SignType::Rsa2,
                vector.string_to_sign.as_bytes(),
                &vector.sign,
            )
            .unwrap();
        }
    }

    #[test]
    fn a_public_key_in_the_private_slot_is_named_as_such() {
        for text in [
            key_text("merchant_public.pem"),
            pem_body_only(&key_text("merchant_public.pem")),
        ] {
            let error = PrivateKey::from_pem_or_base64(&text).unwrap_err();
            assert!(matches!(error, KeyError::PublicKeyInPrivateSlot));
            assert!(
                error
                    .to_string()
                    .contains("PUBLIC key where a PRIVATE key is needed")
            );
        }
    }

    #[test]
    fn a_private_key_in_the_public_slot_is_named_as_such() {
        let error =
            PublicKey::from_pem_or_base64(&key_text("merchant_private_pkcs8.pem")).unwrap_err();
        assert!(matches!(error, KeyError::PrivateKeyInPublicSlot));
    }

    #[test]
    fn garbage_and_empty_key_text_are_malformed() {
        for text in [
            "",
            "not a key at all!",
            "aGVsbG8gd29ybGQ=",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
        ] {
            let error = PrivateKey::from_pem_or_base64(text).unwrap_err();
            assert!(
                matches!(error, KeyError::Malformed { .. }),
                "{text:?}: {error:?}"
            );
            let error = PublicKey::from_pem_or_base64(text).unwrap_err();
            assert!(
                matches!(error, KeyError::Malformed { .. }),
                "{text:?}: {error:?}"
            );
        }
    }

    #[test]
    fn encrypted_keys_and_certificates_are_named_as_such() {
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----";
        assert!(matches!(
            PrivateKey::from_pem_or_base64(encrypted),
            Err(KeyError::Encrypted)
        ));
        let certificate = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
        assert!(matches!(
            PublicKey::from_pem_or_base64(certificate),
            Err(KeyError::Certificate)
        ));
    }

    #[test]
    fn key_file_errors_name_the_path() {
        let missing = std::path::Path::new("/nonexistent/app_private_key.pem");
        let error = PrivateKey::from_file(missing).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/nonexistent/app_private_key.pem")
        );
        let public_as_private = vectors_dir().join("keys/merchant_public.pem");
        let error = PrivateKey::from_file(&public_as_private).unwrap_err();
        assert!(error.to_string().contains("merchant_public.pem"));
        let KeyError::InFile { source, .. } = error else {
            panic!("{error:?}")
        };
        assert!(matches!(*source, KeyError::PublicKeyInPrivateSlot));
        PublicKey::from_file(&public_as_private).unwrap();
    }

    /// Generated with `openssl genrsa 1024` for this test only.
    const PRIVATE_1024: &str = "-----BEGIN PRIVATE KEY-----
MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBAL/tTFrLbRG4xSH3
jZRWYG9SUAc2w4av3ys0Z+vu0wtQEOcZ2lPGrHisaxUtaE85qgkx1qErqghdn16k
1KnhzMzkgEJeCFk++ubWDw05BHHI/J00/d+m6OHYAuZ4Tzlp+28TuGs4T3wsQ/ja
SKilmPag0HgRQZmRxL80HBNvBht1AgMBAAECgYBoqyRR+9D+sjKoJJaMyFKNQ2mr
lX0qje16ZXkrXTKxX7foINxFhfr3UKiRgxL46ezGWOzBNsvjBhPtDJ2CDEegn6lT
1aZ9Opkflhw905pm9kMYPWE3Gfr+CHwhJlgVkg30MwH97mGiYGY/UpMQAjIbysdh
xjCoGlBoBUT+wcj/oQJBAO66jBbRUXzRbbf2hahtjuukLm4OlyQcKOm2BKg9eF+N
im3k9vwTEQzGIX+XFCIsP914p0+2SgNhXsOzMkOat7kCQQDNz/Gimc3TjOV8li1U
uO7vo2+ympa2FWMly5lYTRcKpcY2xmd2LYAaJqNXJw6/ymMVLMrr6lBfefVH+COu
+GedAkEAsBFXprCEaAlR4X7o/tqmsPZq4/LQ1+oI5q2+65JCiD6s3PYkjq9FQOWT
6TU0vStjguUsiKbKGYojyTQNmzytyQJBAISVoBlasbDFxJS0/jDlDe/Mvsk1Mz/L
mVqgxYGP7/cJAh8JQ19rQmoWWAVuAN9m1tuuRm8iPHK1U2DwprQyDDUCQEBOaOHQ
+QG5HCDryoWkEIYpCKewYEi/1GROlyIfwKC2zWxry2fP/0WlyOkoHGFUV4AjsiI1
2yFyC/Hx+pjRnRw=
-----END PRIVATE KEY-----";
    const PUBLIC_1024: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC/7Uxay20RuMUh942UVmBvUlAH
NsOGr98rNGfr7tMLUBDnGdpTxqx4rGsVLWhPOaoJMdahK6oIXZ9epNSp4czM5IBC
XghZPvrm1g8NOQRxyPydNP3fpujh2ALmeE85aftvE7hrOE98LEP42kiopZj2oNB4
EUGZkcS/NBwTbwYbdQIDAQAB
-----END PUBLIC KEY-----";

    #[test]
    fn keys_under_2048_bits_are_refused_on_both_sides() {
        assert!(matches!(
            PrivateKey::from_pem_or_base64(PRIVATE_1024),
            Err(KeyError::TooShort { bits: 1024 })
        ));
        assert!(matches!(
            PublicKey::from_pem_or_base64(PUBLIC_1024),
            Err(KeyError::TooShort { bits: 1024 })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.pem");
        std::fs::write(&path, PRIVATE_1024).unwrap();
        let error = PrivateKey::from_file(&path).unwrap_err();
        let chain = format!("{error}: {}", std::error::Error::source(&error).unwrap());
        assert!(
            chain.contains("1024 bits") && chain.contains("2048"),
            "{chain}"
        );
    }

    #[test]
    fn an_endless_key_file_is_refused_after_64_kib() {
        let error = PrivateKey::from_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(error, KeyError::FileTooLarge { .. }), "{error:?}");
        assert!(error.to_string().contains("/dev/zero"), "{error}");
        let error = PublicKey::from_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(error, KeyError::FileTooLarge { .. }), "{error:?}");
    }

    #[test]
    fn a_key_file_of_exactly_64_kib_is_read_and_judged_on_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("padded.pem");
        let key =
            std::fs::read_to_string(vectors_dir().join("keys/merchant_private_pkcs8.pem")).unwrap();
        let padding = usize::try_from(MAX_KEY_FILE_BYTES).unwrap() - key.len();
        std::fs::write(&path, format!("{key}{}", "\n".repeat(padding))).unwrap();
        PrivateKey::from_file(&path).unwrap();
        std::fs::write(&path, format!("{key}{}", "\n".repeat(padding + 1))).unwrap();
        assert!(matches!(
            PrivateKey::from_file(&path),
            Err(KeyError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn debug_output_of_a_private_key_is_redacted() {
        assert_eq!(
            format!("{:?}", merchant_private_pkcs8()),
            "PrivateKey(..redacted..)"
        );
    }

    #[test]
    fn an_invalid_base64_signature_is_reported_as_such() {
        let error = merchant_public()
            .verify(SignType::Rsa2, b"x", "not base64!")
            .unwrap_err();
        assert!(matches!(error, SigningError::InvalidBase64(_)));
    }
}
