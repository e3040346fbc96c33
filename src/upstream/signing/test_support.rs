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
    pub request_vectors: Vec<RequestVector>,
    pub response_vectors: Vec<ResponseVector>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RequestVector {
    pub id: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub string_to_sign: String,
    /// The exact bytes signed, where a vector records them (v13: GBK).
    pub string_to_sign_bytes_b64: Option<String>,
    pub sign: String,
}

impl RequestVector {
    pub fn param_pairs(&self) -> Vec<(&str, &str)> {
        self.params
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str().expect("string param")))
            .collect()
    }

    pub fn param(&self, key: &str) -> &str {
        self.params[key].as_str().expect("string param")
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ResponseVector {
    pub id: String,
    pub charset: String,
    pub sign_type: String,
    pub body: String,
    pub signed_content: Option<String>,
    pub expect_verify: bool,
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
