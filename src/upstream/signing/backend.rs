//! The one place that knows which crypto library signs and verifies.
//!
//! With the `aws-lc-rs` feature (the default) RSA2 signing and all verification
//! go through aws-lc-rs (about 6x faster, constant-time); legacy RSA
//! (SHA1withRSA) signing always goes through the `rsa` crate, blinded, because
//! aws-lc-rs cannot sign SHA1. Without the feature everything uses `rsa`.
//! Must not: parse key text, encode base64, or know about requests and
//! responses — it takes parsed keys and bytes and returns bytes or a verdict.

use rsa::pkcs1v15;
#[cfg(not(feature = "aws-lc-rs"))]
use rsa::signature::Verifier as _;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
use sha1::Sha1;
#[cfg(not(feature = "aws-lc-rs"))]
use sha2::Sha256;

use super::SignType;

#[cfg(feature = "aws-lc-rs")]
pub(super) const NAME: &str = "aws-lc-rs";
#[cfg(not(feature = "aws-lc-rs"))]
pub(super) const NAME: &str = "rsa";

/// How the private key's DER was structured, because aws-lc-rs has one
/// constructor per structure.
#[derive(Debug, Clone, Copy)]
pub(super) enum PrivateFormat {
    Pkcs1,
    Pkcs8,
}

/// Both signers are prepared at load time so a bad key fails at start-up,
/// not on the first job.
pub(super) struct SigningKeys {
    sha1: pkcs1v15::SigningKey<Sha1>,
    sha256: Sha256Signer,
}

/// aws-lc-rs refuses private keys under 2048 bits; apps registered in the RSA
/// (SHA1) era may still have 1024-bit keys, which then sign through `rsa`
/// rather than failing to load.
enum Sha256Signer {
    #[cfg(feature = "aws-lc-rs")]
    AwsLc(aws_lc_rs::signature::RsaKeyPair),
    RsaCrate(Box<pkcs1v15::SigningKey<sha2::Sha256>>),
}

impl SigningKeys {
    pub(super) fn new(
        key: rsa::RsaPrivateKey,
        der: &[u8],
        format: PrivateFormat,
    ) -> Result<Self, String> {
        let sha256 = Sha256Signer::new(&key, der, format)?;
        Ok(Self {
            sha1: pkcs1v15::SigningKey::<Sha1>::new(key),
            sha256,
        })
    }

    pub(super) fn sign(&self, sign_type: SignType, message: &[u8]) -> Result<Vec<u8>, String> {
        match sign_type {
            SignType::Rsa => sign_blinded(&self.sha1, message),
            SignType::Rsa2 => self.sign_sha256(message),
        }
    }

    fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.sha256 {
            #[cfg(feature = "aws-lc-rs")]
            Sha256Signer::AwsLc(key_pair) => {
                let mut signature = vec![0; key_pair.public_modulus_len()];
                key_pair
                    .sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        &aws_lc_rs::rand::SystemRandom::new(),
                        message,
                        &mut signature,
                    )
                    .map_err(|_| "aws-lc-rs failed to sign".to_owned())?;
                Ok(signature)
            }
            Sha256Signer::RsaCrate(key) => sign_blinded(key, message),
        }
    }
}

impl Sha256Signer {
    #[cfg(feature = "aws-lc-rs")]
    fn new(key: &rsa::RsaPrivateKey, der: &[u8], format: PrivateFormat) -> Result<Self, String> {
        use aws_lc_rs::signature::RsaKeyPair;
        use rsa::traits::PublicKeyParts as _;

        if key.n().bits() < 2048 {
            return Ok(Self::RsaCrate(Box::new(pkcs1v15::SigningKey::new(
                key.clone(),
            ))));
        }
        match format {
            PrivateFormat::Pkcs8 => RsaKeyPair::from_pkcs8(der),
            PrivateFormat::Pkcs1 => RsaKeyPair::from_der(der),
        }
        .map(Self::AwsLc)
        .map_err(|rejected| format!("aws-lc-rs rejected the private key: {rejected}"))
    }

    #[cfg(not(feature = "aws-lc-rs"))]
    fn new(key: &rsa::RsaPrivateKey, _der: &[u8], _format: PrivateFormat) -> Result<Self, String> {
        Ok(Self::RsaCrate(Box::new(pkcs1v15::SigningKey::new(
            key.clone(),
        ))))
    }
}

/// Blinding (the random input) is what keeps the `rsa` crate's non-constant-time
/// arithmetic from leaking the key through timing (RUSTSEC-2023-0071); the
/// signature itself stays deterministic.
fn sign_blinded<D>(key: &pkcs1v15::SigningKey<D>, message: &[u8]) -> Result<Vec<u8>, String>
where
    D: rsa::sha2::digest::Digest,
    pkcs1v15::SigningKey<D>: rsa::signature::RandomizedSigner<pkcs1v15::Signature>,
{
    key.try_sign_with_rng(&mut BlindingRng(rand::rng()), message)
        .map(|signature| signature.to_vec())
        .map_err(|error| format!("the rsa crate failed to sign: {error}"))
}

/// `rsa` 0.9 speaks rand_core 0.6 while the crate's `rand` is 0.9; this bridges
/// the thread-local CSPRNG (OS-seeded, reseeding) across the two trait versions.
struct BlindingRng(rand::rngs::ThreadRng);

impl rsa::rand_core::RngCore for BlindingRng {
    fn next_u32(&mut self) -> u32 {
        rand::RngCore::next_u32(&mut self.0)
    }

    fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand::RngCore::fill_bytes(&mut self.0, dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        rand::RngCore::fill_bytes(&mut self.0, dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for BlindingRng {}

/// Parsed once per key: verification runs for every response.
pub(super) struct VerifyingKeys {
    bits: usize,
    #[cfg(feature = "aws-lc-rs")]
    sha1: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(feature = "aws-lc-rs")]
    sha256: aws_lc_rs::signature::ParsedPublicKey,
    #[cfg(not(feature = "aws-lc-rs"))]
    sha1: pkcs1v15::VerifyingKey<Sha1>,
    #[cfg(not(feature = "aws-lc-rs"))]
    sha256: pkcs1v15::VerifyingKey<Sha256>,
}

impl VerifyingKeys {
    pub(super) fn bits(&self) -> usize {
        self.bits
    }

    #[cfg(feature = "aws-lc-rs")]
    pub(super) fn new(key: rsa::RsaPublicKey) -> Result<Self, String> {
        use aws_lc_rs::signature::{
            ParsedPublicKey, RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256,
        };
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        use rsa::traits::PublicKeyParts as _;

        let bits = key.n().bits();
        let pkcs1 = key
            .to_pkcs1_der()
            .map_err(|error| format!("could not re-encode the public key: {error}"))?;
        let parse = |algorithm| {
            ParsedPublicKey::new(algorithm, pkcs1.as_bytes())
                .map_err(|rejected| format!("aws-lc-rs rejected the public key: {rejected}"))
        };
        // The key is our configured one, not the peer's choice, so accepting a
        // 1024-bit legacy key is a configuration decision, made to match `rsa`.
        let (sha1, sha256) = if bits >= 2048 {
            (
                parse(&RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY)?,
                parse(&RSA_PKCS1_2048_8192_SHA256)?,
            )
        } else {
            (
                parse(&RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY)?,
                parse(&RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY)?,
            )
        };
        Ok(Self { bits, sha1, sha256 })
    }

    #[cfg(not(feature = "aws-lc-rs"))]
    pub(super) fn new(key: rsa::RsaPublicKey) -> Result<Self, String> {
        use rsa::traits::PublicKeyParts as _;

        Ok(Self {
            bits: key.n().bits(),
            sha1: pkcs1v15::VerifyingKey::new(key.clone()),
            sha256: pkcs1v15::VerifyingKey::new(key),
        })
    }

    #[cfg(feature = "aws-lc-rs")]
    pub(super) fn verify(&self, sign_type: SignType, message: &[u8], signature: &[u8]) -> bool {
        let key = match sign_type {
            SignType::Rsa => &self.sha1,
            SignType::Rsa2 => &self.sha256,
        };
        key.verify_sig(message, signature).is_ok()
    }

    #[cfg(not(feature = "aws-lc-rs"))]
    pub(super) fn verify(&self, sign_type: SignType, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = pkcs1v15::Signature::try_from(signature) else {
            return false;
        };
        match sign_type {
            SignType::Rsa => self.sha1.verify(message, &signature).is_ok(),
            SignType::Rsa2 => self.sha256.verify(message, &signature).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_legacy_1024_bit_key_signs_and_verifies_both_sign_types_on_every_backend() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;

        let key = rsa::RsaPrivateKey::new(&mut BlindingRng(rand::rng()), 1024).unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let public = VerifyingKeys::new(key.to_public_key()).unwrap();
        let signing = SigningKeys::new(key, der.as_bytes(), PrivateFormat::Pkcs1).unwrap();
        assert_eq!(public.bits(), 1024);
        for sign_type in [SignType::Rsa, SignType::Rsa2] {
            let signature = signing.sign(sign_type, b"legacy").unwrap();
            assert!(
                public.verify(sign_type, b"legacy", &signature),
                "{sign_type}"
            );
            assert!(
                !public.verify(sign_type, b"legacy!", &signature),
                "{sign_type}"
            );
        }
    }

    #[test]
    fn the_backend_name_matches_the_build_features() {
        assert_eq!(NAME == "aws-lc-rs", cfg!(feature = "aws-lc-rs"));
    }
}
