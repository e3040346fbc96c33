//! The sandbox's answers: deterministic per contact, so tests and reconciliation
//! runs can predict them, plus `biz_no`s that are unique per billed query.
//!
//! Pure: no clock (dates are passed in), no state, no randomness.

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use super::codes::{Node, RelationInfo, SUCCESS_CODE, SUCCESS_MSG};

const RANKS: [&str; 4] = ["V_CT_RL_SG", "V_CT_RL_MD", "V_CT_RL_WK", "V_CT_RL_NO"];
const RECENCIES: [&str; 4] = ["V_CT_RL30D", "V_CT_RL90D", "V_CT_RL180D", "V_CT_RL360D"];
const NO_RELATION: &str = "V_CT_RL_NO";

/// The part of a query that decides the answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contact<'a> {
    pub(crate) cert_no: &'a str,
    pub(crate) relation_phone: &'a str,
    pub(crate) relation_name: &'a str,
    /// The seed: without `relation` in the request, `relation_score` is 0.
    pub(crate) has_relation: bool,
}

/// The success node for a contact. The same contact always gets the same rank,
/// recency and score, whatever the transaction_id or app.
pub(crate) fn success_node(contact: Contact<'_>, biz_no: String) -> Node {
    let digest = hash_fields(&[
        contact.cert_no,
        contact.relation_phone,
        contact.relation_name,
    ]);
    let rank = RANKS[usize::from(digest[0]) % RANKS.len()];
    let relation_info = (rank != NO_RELATION).then(|| RelationInfo {
        recency: RECENCIES[usize::from(digest[1]) % RECENCIES.len()].to_owned(),
    });
    let score = if contact.has_relation {
        u8::try_from(u16::from_be_bytes([digest[2], digest[3]]) % 101).unwrap_or(0)
    } else {
        0
    };
    Node {
        code: SUCCESS_CODE.to_owned(),
        msg: SUCCESS_MSG.to_owned(),
        sub_code: None,
        sub_msg: None,
        biz_no: Some(biz_no),
        relation_rank: Some(rank.to_owned()),
        relation_info,
        relation_score: Some(score),
    }
}

/// `ZM` + the billing day (UTC+8) + 22 digits: 10 from a hash of the app, the
/// transaction and this sandbox's nonce, then 12 from the billing counter, so two
/// billed queries of one sandbox never share a `biz_no` (reconciliation keys on it).
pub(crate) fn biz_no(
    day: NaiveDate,
    app_id: &str,
    transaction_id: &str,
    nonce: u64,
    counter: u64,
) -> String {
    let digest = hash_fields(&[app_id, transaction_id, &nonce.to_string()]);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let hashed = u64::from_be_bytes(head) % 10_000_000_000;
    let counted = counter % 1_000_000_000_000;
    format!("ZM{}{hashed:010}{counted:012}", day.format("%Y%m%d"))
}

/// Fields are separated by a byte that cannot occur in validated input, so
/// ("ab", "c") and ("a", "bc") hash differently.
fn hash_fields(fields: &[&str]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update(field.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn contact(phone: &str, has_relation: bool) -> Contact<'_> {
        Contact {
            cert_no: "640202199007164686",
            relation_phone: phone,
            relation_name: "李四",
            has_relation,
        }
    }

    #[test]
    fn the_same_contact_always_gets_the_same_answer() {
        let a = success_node(contact("15843991158", true), "x".into());
        let b = success_node(contact("15843991158", true), "y".into());
        assert_eq!(a.relation_rank, b.relation_rank);
        assert_eq!(a.relation_info, b.relation_info);
        assert_eq!(a.relation_score, b.relation_score);
    }

    #[test]
    fn no_relation_means_score_zero_and_no_rank_means_no_info() {
        for n in 0..200u32 {
            let phone = format!("158{n:08}");
            let without = success_node(contact(&phone, false), String::new());
            assert_eq!(without.relation_score, Some(0));
            let with = success_node(contact(&phone, true), String::new());
            assert!(with.relation_score.unwrap() <= 100);
            let is_none = with.relation_rank.as_deref() == Some(NO_RELATION);
            assert_eq!(is_none, with.relation_info.is_none());
        }
    }

    #[test]
    fn biz_no_has_the_seed_format_and_differs_per_counter() {
        let day = NaiveDate::from_ymd_opt(2016, 8, 22).unwrap();
        let first = biz_no(day, "2014072300007148", "t1", 7, 1);
        let second = biz_no(day, "2014072300007148", "t1", 7, 2);
        assert_eq!(first.len(), 32);
        assert!(first.starts_with("ZM20160822"));
        assert!(first[2..].bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(first, second);
    }
}
