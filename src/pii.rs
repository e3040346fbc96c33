//! The PII key (`pii.hmac_key_path`): one secret, shared by every replica,
//! for keyed hashes (HMAC-SHA256) of personal data. Today it makes a job's
//! business-field fingerprint, which lets the store tell a redelivery of the
//! same job from a different job reusing its transaction_id without keeping
//! the plaintext. The blind index of ID and phone numbers (`erase` finds a
//! person's rows and queued messages by it) uses the same key under its own
//! domain tags, so operators manage one file.
//!
//! The key is read once at start-up of `run`. It is never generated here: a
//! replica that made its own key would fingerprint differently from the others,
//! so a missing, short or unreadable file is a start-up error that says how to
//! make one. This module never logs and never shows the key.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use secrecy::zeroize::Zeroizing;
use sha2::Sha256;

use crate::job::RelationQuery;

/// Fewer random bytes than SHA-256's output would weaken the HMAC.
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// A key file is a few dozen bytes; anything this large is the wrong file (or
/// a device such as /dev/zero) and is refused without reading it whole.
pub(crate) const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
/// Domain separation: the fingerprint and any later use of the key hash
/// different tags, so one value can never stand in for the other.
const FINGERPRINT_TAG: &[u8] = b"zhima-worker/job-fingerprint/v1";
/// Domain tags of the blind index: an ID number and a phone number hash under
/// their own tags, so equal strings in the two fields never match each other.
const CERT_NO_INDEX_TAG: &[u8] = b"zhima-worker/blind-index/cert_no/v1";
const PHONE_INDEX_TAG: &[u8] = b"zhima-worker/blind-index/relation_phone/v1";
/// Domain tag of the question hash (answer reuse): the business fields
/// without the transaction_id, so it never equals a job's fingerprint.
const QUESTION_TAG: &[u8] = b"zhima-worker/question/v1";

type HmacSha256 = Hmac<Sha256>;

/// Why the PII key could not be loaded. Every variant names the setting and
/// the file; none shows any byte of it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PiiKeyError {
    #[error(
        "pii.hmac_key_path: {} does not exist; create it once (`head -c 32 /dev/urandom > {0} \
         && chmod 600 {0}`) and give every replica the same file",
        .path.display()
    )]
    Missing { path: PathBuf },
    #[error("pii.hmac_key_path: could not read {}", .path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pii.hmac_key_path: {} holds {bytes} bytes; the key needs at least {MIN_KEY_BYTES} \
         random bytes (`head -c 32 /dev/urandom > {0}`)",
        .path.display()
    )]
    TooShort { path: PathBuf, bytes: usize },
    #[error(
        "pii.hmac_key_path: {} is over {MAX_KEY_FILE_BYTES} bytes; a key file holds 32 to 64 \
         random bytes",
        .path.display()
    )]
    TooLarge { path: PathBuf },
}

/// The loaded key, ready to hash (the keyed HMAC state is computed once and
/// cloned per use).
#[derive(Clone)]
pub struct PiiKey {
    mac: HmacSha256,
}

/// Never shows the key.
impl fmt::Debug for PiiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PiiKey(..)")
    }
}

impl PiiKey {
    /// Reads the key file: at least [`MIN_KEY_BYTES`], at most
    /// [`MAX_KEY_FILE_BYTES`] (read through a bound, so a device file cannot
    /// exhaust memory).
    pub(crate) fn load(path: &Path) -> Result<Self, PiiKeyError> {
        let file = std::fs::File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => PiiKeyError::Missing {
                path: path.to_path_buf(),
            },
            _ => PiiKeyError::Unreadable {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(64));
        let limit = u64::try_from(MAX_KEY_FILE_BYTES + 1).unwrap_or(u64::MAX);
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|source| PiiKeyError::Unreadable {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() > MAX_KEY_FILE_BYTES {
            return Err(PiiKeyError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(PiiKeyError::TooShort {
                path: path.to_path_buf(),
                bytes: bytes.len(),
            });
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// A key from bytes already in memory (tests and benches use it too).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        // HMAC takes keys of any length, so there is no error to handle; the
        // fallback (an empty key) only keeps this free of a panic path.
        let mac = match <HmacSha256 as KeyInit>::new_from_slice(bytes) {
            Ok(mac) => mac,
            Err(_) => <HmacSha256 as KeyInit>::new(&Default::default()),
        };
        Self { mac }
    }

    /// The job's fingerprint: HMAC-SHA256 over its normalized business fields
    /// ([`RelationQuery::business_fields`]), each name and value length-
    /// prefixed so no two different jobs hash the same input. Lower-case hex,
    /// 64 characters. Deterministic for one key, meaningless without it.
    pub(crate) fn fingerprint(&self, query: &RelationQuery) -> String {
        self.fields_hash(FINGERPRINT_TAG, query, |_| true)
    }

    /// The question's hash for answer reuse: like [`Self::fingerprint`]
    /// (same normalization: trimmed, upper-case `X`, absent optional fields
    /// as `""`) over every business field except the transaction_id, under
    /// its own tag. Two jobs share it exactly when they ask the upstream the
    /// same thing: `cert_no`, `name`, `relation_phone`, `relation_name`,
    /// `relation`, `product_code`, and `linked_merchant_id` (the secondary
    /// merchant a service provider asks for: one merchant's paid answer is
    /// never handed to another).
    pub(crate) fn question_hash(&self, query: &RelationQuery) -> String {
        self.fields_hash(QUESTION_TAG, query, |name| name != "transaction_id")
    }

    /// HMAC-SHA256 (hex) under `tag` of the chosen normalized business
    /// fields, each name and value length-prefixed so no two different field
    /// lists hash the same input.
    fn fields_hash(
        &self,
        tag: &[u8],
        query: &RelationQuery,
        chosen: impl Fn(&str) -> bool,
    ) -> String {
        let mut mac = self.mac.clone();
        mac.update(tag);
        for (name, value) in query.business_fields() {
            if !chosen(name) {
                continue;
            }
            for part in [name.as_bytes(), value.as_bytes()] {
                let length = u64::try_from(part.len()).unwrap_or(u64::MAX);
                mac.update(&length.to_be_bytes());
                mac.update(part);
            }
        }
        hex(mac)
    }

    /// The blind index of an ID number: HMAC-SHA256 (lower-case hex) of
    /// [`normalize_cert_no`]'s form, so `...018x` and `...018X` find the same
    /// rows. A plain hash would not do: an ID number is guessable.
    pub(crate) fn cert_no_index(&self, cert_no: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(CERT_NO_INDEX_TAG);
        mac.update(normalize_cert_no(cert_no).as_bytes());
        hex(mac)
    }

    /// The blind index of a mobile number: HMAC-SHA256 (lower-case hex) of
    /// [`normalize_phone`]'s form.
    pub(crate) fn phone_index(&self, phone: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(PHONE_INDEX_TAG);
        mac.update(normalize_phone(phone).as_bytes());
        hex(mac)
    }
}

/// The form of an ID number the blind index hashes: trimmed, upper-case `X`
/// (the same normalization as the job's fingerprint).
pub(crate) fn normalize_cert_no(cert_no: &str) -> String {
    cert_no.trim().to_ascii_uppercase()
}

/// The form of a mobile number the blind index hashes: trimmed.
pub(crate) fn normalize_phone(phone: &str) -> String {
    phone.trim().to_owned()
}

/// The MAC in lower-case hex (one `format!` per byte cost more than the
/// HMAC itself, three times per job).
fn hex(mac: HmacSha256) -> String {
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::job::decode_job;

    fn query(change: impl FnOnce(&mut serde_json::Value)) -> RelationQuery {
        let mut body = serde_json::json!({
            "transaction_id": "loan8812_c1", "cert_no": "11010519800101018X",
            "name": "张三", "relation_phone": "15843991158", "relation_name": "李四",
            "relation": "family", "external_ref": "loan-8812/contact-1",
        });
        change(&mut body);
        decode_job(body.to_string().as_bytes(), "w1010100001000001200")
            .unwrap()
            .query
    }

    fn key_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pii.key");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn a_missing_key_file_is_an_error_naming_the_setting_and_how_to_make_one() {
        let error = PiiKey::load(Path::new("/nonexistent/pii.key")).unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, PiiKeyError::Missing { .. }), "{error:?}");
        for part in [
            "pii.hmac_key_path",
            "/nonexistent/pii.key",
            "head -c 32 /dev/urandom",
        ] {
            assert!(text.contains(part), "{text}");
        }
    }

    #[test]
    fn a_key_file_under_32_bytes_is_refused() {
        let (_dir, path) = key_file(&[7; 31]);
        let error = PiiKey::load(&path).unwrap_err();
        assert!(
            matches!(error, PiiKeyError::TooShort { bytes: 31, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("at least 32"), "{error}");
        let (_dir, path) = key_file(&[7; 32]);
        assert!(PiiKey::load(&path).is_ok());
    }

    #[test]
    fn a_key_file_over_64_kib_is_refused_without_reading_it_whole() {
        let (_dir, path) = key_file(&vec![7; MAX_KEY_FILE_BYTES + 1]);
        assert!(matches!(
            PiiKey::load(&path),
            Err(PiiKeyError::TooLarge { .. })
        ));
        let (_dir, path) = key_file(&vec![7; MAX_KEY_FILE_BYTES]);
        assert!(PiiKey::load(&path).is_ok());
        // An endless device must be refused after at most 64 KiB + 1 bytes.
        let error = PiiKey::load(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(error, PiiKeyError::TooLarge { .. }), "{error:?}");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let key = PiiKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        assert_eq!(format!("{key:?}"), "PiiKey(..)");
    }

    #[test]
    fn the_fingerprint_is_keyed_and_covers_every_business_field() {
        let key = PiiKey::from_bytes(&[1; 32]);
        let base = key.fingerprint(&query(|_| {}));
        assert_eq!(base.len(), 64);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(base, key.fingerprint(&query(|_| {})));
        assert_ne!(
            base,
            PiiKey::from_bytes(&[2; 32]).fingerprint(&query(|_| {}))
        );
        let changes: [(&str, serde_json::Value); 8] = [
            ("transaction_id", "loan8812_c2".into()),
            ("cert_no", "110105198001010016".into()),
            ("name", "张四".into()),
            ("relation_phone", "15843991159".into()),
            ("relation_name", "李五".into()),
            ("relation", "friend".into()),
            ("product_code", "w1010100001000001201".into()),
            ("linked_merchant_id", "2088721630869411".into()),
        ];
        for (field, value) in changes {
            let other = key.fingerprint(&query(|body| body[field] = value));
            assert_ne!(base, other, "{field} must change the fingerprint");
        }
    }

    #[test]
    fn the_blind_index_is_keyed_normalized_and_separated_by_field() {
        let key = PiiKey::from_bytes(&[1; 32]);
        let cert = key.cert_no_index("11010519800101018X");
        assert_eq!(cert.len(), 64);
        assert_eq!(cert, key.cert_no_index(" 11010519800101018x "));
        assert_ne!(cert, key.cert_no_index("110105198001010016"));
        assert_ne!(
            cert,
            PiiKey::from_bytes(&[2; 32]).cert_no_index("11010519800101018X")
        );
        let phone = key.phone_index("15843991158");
        assert_eq!(phone, key.phone_index(" 15843991158\n"));
        assert_ne!(phone, key.phone_index("15843991159"));
        // The same text in the two fields never matches across them.
        assert_ne!(key.cert_no_index("15843991158"), phone);
    }

    #[test]
    fn spellings_the_upstream_treats_alike_share_a_fingerprint() {
        let key = PiiKey::from_bytes(&[1; 32]);
        let base = key.fingerprint(&query(|_| {}));
        let same = [
            query(|body| body["cert_no"] = "11010519800101018x".into()),
            query(|body| body["name"] = " 张三 ".into()),
            query(|body| body["external_ref"] = "another/ref".into()),
        ];
        for alike in same {
            assert_eq!(base, key.fingerprint(&alike));
        }
    }

    #[test]
    fn the_question_hash_ignores_the_transaction_id_and_covers_every_question_field() {
        let key = PiiKey::from_bytes(&[1; 32]);
        let base = key.question_hash(&query(|_| {}));
        assert_eq!(base.len(), 64);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(base, key.fingerprint(&query(|_| {})));
        assert_ne!(
            base,
            PiiKey::from_bytes(&[2; 32]).question_hash(&query(|_| {}))
        );
        let same = [
            query(|body| body["transaction_id"] = "another_id_7".into()),
            query(|body| body["external_ref"] = "another/ref".into()),
            query(|body| body["batch_id"] = "b-2".into()),
            query(|body| body["fresh"] = true.into()),
            query(|body| body["cert_no"] = "11010519800101018x".into()),
            query(|body| body["name"] = "  张三 ".into()),
            query(|body| body["relation_name"] = " 李四".into()),
        ];
        for alike in same {
            assert_eq!(base, key.question_hash(&alike), "{alike:?}");
        }
        let changes: [(&str, serde_json::Value); 7] = [
            ("cert_no", "110105198001010016".into()),
            ("name", "张四".into()),
            ("relation_phone", "15843991159".into()),
            ("relation_name", "李五".into()),
            ("relation", "friend".into()),
            ("product_code", "w1010100001000001201".into()),
            ("linked_merchant_id", "2088721630869411".into()),
        ];
        for (field, value) in changes {
            let other = key.question_hash(&query(|body| body[field] = value));
            assert_ne!(base, other, "{field} must change the question hash");
        }
        let without_relation = key.question_hash(&query(|body| {
            body.as_object_mut().unwrap().remove("relation");
        }));
        assert_ne!(
            base, without_relation,
            "an absent relation is another question"
        );
    }
}
