//! Test-only access to the signature vectors and test keys in `tests/vectors/`
//! (a copy of `shared/vectors/`, kept in the repository so a clone is
//! self-contained). Must not be compiled outside `cfg(test)`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use serde::Deserialize;

use super::{PrivateKey, PublicKey};

pub(crate) fn vectors_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors"))
}

/// The original beside the repository (present in CI's layout and locally).
pub(crate) fn shared_vectors_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors"))
}

#[derive(Debug, Deserialize)]
pub(crate) struct Vectors {
    pub(crate) request_vectors: Vec<RequestVector>,
    pub(crate) response_vectors: Vec<ResponseVector>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RequestVector {
    pub(crate) id: String,
    pub(crate) params: serde_json::Map<String, serde_json::Value>,
    pub(crate) string_to_sign: String,
    /// The exact bytes signed, where a vector records them (v13: GBK).
    pub(crate) string_to_sign_bytes_b64: Option<String>,
    pub(crate) sign: String,
}

impl RequestVector {
    pub(crate) fn param_pairs(&self) -> Vec<(&str, &str)> {
        self.params
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str().expect("string param")))
            .collect()
    }

    pub(crate) fn param(&self, key: &str) -> &str {
        self.params[key].as_str().expect("string param")
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResponseVector {
    pub(crate) id: String,
    pub(crate) charset: String,
    pub(crate) sign_type: String,
    pub(crate) body: String,
    pub(crate) signed_content: Option<String>,
    pub(crate) expect_verify: bool,
}

pub(crate) fn vectors() -> Vectors {
    let text = std::fs::read_to_string(vectors_dir().join("signature-vectors.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn key_text(name: &str) -> String {
    std::fs::read_to_string(vectors_dir().join("keys").join(name)).unwrap()
}

pub(crate) fn merchant_private_pkcs8() -> PrivateKey {
    PrivateKey::from_pem_or_base64(&key_text("merchant_private_pkcs8.pem")).unwrap()
}

pub(crate) fn merchant_private_pkcs1() -> PrivateKey {
    PrivateKey::from_pem_or_base64(&key_text("merchant_private_pkcs1.pem")).unwrap()
}

pub(crate) fn merchant_public() -> PublicKey {
    PublicKey::from_pem_or_base64(&key_text("merchant_public.pem")).unwrap()
}

pub(crate) fn platform_public() -> PublicKey {
    PublicKey::from_pem_or_base64(&key_text("platform_public.pem")).unwrap()
}
