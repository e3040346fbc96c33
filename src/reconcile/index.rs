//! Our side of the day in compact form: one 32-byte entry per `succeeded` row
//! (its `biz_no` as a key, a hash of its `transaction_id`, a "seen on the
//! statement" flag), sorted by key for binary search. One million rows take
//! 32 MB, where a `HashMap<String, String>` would take several times that.
//!
//! Keys are exact for the upstream's usual `biz_no` form (`ZM` + 30 digits,
//! packed into a `u128`); any other form is a 64-bit SipHash. A hash can only
//! collide between two different strings with odds around 10⁻⁸ for a
//! million-row day, and even then both strings must also share a
//! transaction_id hash to hide a discrepancy. This module is pure: no I/O.

use std::hash::{DefaultHasher, Hasher};

/// The `biz_no` of a row as a fixed-size key. The top bit tells packed exact
/// keys from hashed ones, so the two kinds never compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BizKey(u128);

/// Packed keys have this bit set; 30 decimal digits need only 100 bits.
const PACKED: u128 = 1 << 127;

impl BizKey {
    pub(crate) fn of(biz_no: &str) -> Self {
        match pack_digits(biz_no) {
            Some(digits) => Self(PACKED | digits),
            None => Self(u128::from(hash(biz_no))),
        }
    }
}

/// `ZM` followed by exactly 30 ASCII digits, as a number.
fn pack_digits(biz_no: &str) -> Option<u128> {
    let digits = biz_no.strip_prefix("ZM")?;
    if digits.len() != 30 {
        return None;
    }
    digits.bytes().try_fold(0u128, |acc, byte| {
        byte.is_ascii_digit()
            .then(|| acc * 10 + u128::from(byte - b'0'))
    })
}

/// SipHash-1-3 with fixed keys: the same string hashes the same in every run,
/// which the two passes over our side rely on.
pub(crate) fn hash(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(text.as_bytes());
    hasher.finish()
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    biz: BizKey,
    transaction: u64,
    is_seen: bool,
}

/// What the statement's (biz_no, transaction_id) finds in our side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Ours, same transaction_id, first time on the statement.
    Matched,
    /// Ours, but already seen on an earlier statement line.
    SeenAgain,
    /// Ours with another transaction_id (now marked seen all the same: the
    /// row is on the statement, under the wrong id).
    OtherTransaction,
    /// Not among our rows of the day.
    NotOurs,
}

#[derive(Debug, Default)]
pub(crate) struct OurIndex {
    entries: Vec<Entry>,
    seen: usize,
}

impl OurIndex {
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            entries: Vec::with_capacity(rows),
            seen: 0,
        }
    }

    pub(crate) fn push(&mut self, biz_no: &str, transaction_id: &str) {
        self.entries.push(Entry {
            biz: BizKey::of(biz_no),
            transaction: hash(transaction_id),
            is_seen: false,
        });
    }

    /// Sorts for lookups; call once after the last `push`.
    pub(crate) fn seal(&mut self) {
        self.entries.sort_unstable_by_key(|entry| entry.biz);
        self.entries.shrink_to_fit();
    }

    pub(crate) fn rows(&self) -> usize {
        self.entries.len()
    }

    /// Rows of ours not (yet) found on the statement.
    pub(crate) fn unseen(&self) -> usize {
        self.entries.len() - self.seen
    }

    /// Looks a statement row up and marks our row as seen.
    pub(crate) fn check(&mut self, biz: BizKey, transaction: u64) -> Lookup {
        let Ok(at) = self.entries.binary_search_by_key(&biz, |entry| entry.biz) else {
            return Lookup::NotOurs;
        };
        let Some(entry) = self.entries.get_mut(at) else {
            return Lookup::NotOurs;
        };
        if entry.is_seen {
            return Lookup::SeenAgain;
        }
        entry.is_seen = true;
        self.seen += 1;
        if entry.transaction == transaction {
            Lookup::Matched
        } else {
            Lookup::OtherTransaction
        }
    }

    pub(crate) fn is_seen(&self, biz: BizKey) -> bool {
        self.entries
            .binary_search_by_key(&biz, |entry| entry.biz)
            .ok()
            .and_then(|at| self.entries.get(at))
            .is_some_and(|entry| entry.is_seen)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const BIZ: &str = "ZM202405210123456789000000000001";

    #[test]
    fn the_usual_biz_no_form_is_packed_exactly_and_others_are_hashed() {
        assert_eq!(BIZ.len(), 32);
        let packed = BizKey::of(BIZ);
        assert_eq!(packed.0 & PACKED, PACKED);
        assert_eq!(packed.0 & !PACKED, 202405210123456789000000000001);
        for other in [
            "ZM20240521",
            "ZX202405210123456789000000000001",
            "ZM2024052101234567890000000000a1",
        ] {
            assert_eq!(BizKey::of(other).0 & PACKED, 0, "{other}");
        }
        assert_ne!(BizKey::of("a"), BizKey::of("b"));
    }

    #[test]
    fn an_entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[test]
    fn a_row_matches_once_then_is_seen_again_and_a_wrong_transaction_is_told_apart() {
        let mut index = OurIndex::with_capacity(2);
        index.push(BIZ, "t1");
        index.push("odd-biz", "t2");
        index.seal();
        assert_eq!(index.unseen(), 2);
        assert_eq!(index.check(BizKey::of(BIZ), hash("t1")), Lookup::Matched);
        assert_eq!(index.check(BizKey::of(BIZ), hash("t1")), Lookup::SeenAgain);
        assert_eq!(
            index.check(BizKey::of("odd-biz"), hash("t9")),
            Lookup::OtherTransaction
        );
        assert_eq!(index.check(BizKey::of("nope"), hash("t1")), Lookup::NotOurs);
        assert_eq!(index.unseen(), 0);
        assert!(index.is_seen(BizKey::of(BIZ)));
        assert!(!index.is_seen(BizKey::of("nope")));
    }
}
