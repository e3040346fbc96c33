//! Property tests of the job field rules (mounted from `job.rs` as
//! `job::properties`): generated valid values are always accepted, and one
//! changed character is always caught. The expected check character is
//! computed here by the ISO 7064 MOD 11-2 formula itself, not with the
//! module's table, so the two implementations check each other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;

use super::{decode_job, validate_cert_no_on, validate_mobile, validate_person_name};

/// Few cases each: `make test` runs them all on every build.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Real county-level division codes (GB/T 2260), one or more per province,
/// and the codes used for Hong Kong, Macao and Taiwan.
const REGIONS: [&str; 40] = [
    "110101", "110105", "120101", "130102", "140105", "150102", "210102", "220102", "230102",
    "310101", "310104", "320102", "330102", "340102", "350102", "360102", "370102", "410102",
    "420102", "430102", "440103", "440305", "450102", "460105", "500101", "510104", "520102",
    "530102", "540102", "610102", "620102", "630102", "640202", "650102", "710000", "810000",
    "820000", "830000", "910000", "441900",
];

/// The day the tests judge birth dates against (fixed, so a case generated
/// today stays valid tomorrow).
fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 6, 30).unwrap()
}

/// ISO 7064 MOD 11-2: the character that makes `sum(a_i * 2^(18-i)) + c ≡ 1 (mod 11)`.
fn iso7064_check(body: &str) -> char {
    let sum: u32 = body
        .bytes()
        .enumerate()
        .map(|(index, digit)| {
            let weight = (1u32 << (17 - index)) % 11;
            u32::from(digit - b'0') * weight
        })
        .sum();
    let check = (12 - sum % 11) % 11;
    if check == 10 {
        'X'
    } else {
        char::from_digit(check, 10).unwrap()
    }
}

/// Any date from 1900-01-01 to `today()`.
fn birth_date() -> impl Strategy<Value = NaiveDate> {
    let first = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
    let days = (today() - first).num_days();
    (0..=days).prop_map(move |offset| first + chrono::TimeDelta::days(offset))
}

/// Feb 29 of every leap year in range (1900 is not one; 2000 is).
fn leap_day() -> impl Strategy<Value = NaiveDate> {
    (1900..=2024i32)
        .prop_filter("a leap year", |year| {
            year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        })
        .prop_map(|year| NaiveDate::from_ymd_opt(year, 2, 29).unwrap())
}

fn id_body(region: &str, date: NaiveDate, sequence: u32) -> String {
    format!(
        "{region}{:04}{:02}{:02}{sequence:03}",
        date.year(),
        date.month(),
        date.day()
    )
}

fn valid_id() -> impl Strategy<Value = String> {
    (
        prop::sample::select(&REGIONS[..]),
        prop_oneof![3 => birth_date(), 1 => leap_day()],
        0..1000u32,
    )
        .prop_map(|(region, date, sequence)| {
            let body = id_body(region, date, sequence);
            let check = iso7064_check(&body);
            format!("{body}{check}")
        })
}

fn valid_mobile() -> impl Strategy<Value = String> {
    (b'3'..=b'9', 0..1_000_000_000u32)
        .prop_map(|(second, rest)| format!("1{}{rest:09}", char::from(second)))
}

/// Letters, CJK, the middle dot of transliterated names and inner spaces.
fn valid_name() -> impl Strategy<Value = String> {
    "[\u{4e00}-\u{9fa5}A-Za-z·][\u{4e00}-\u{9fa5}A-Za-z· .'-]{0,62}[\u{4e00}-\u{9fa5}A-Za-z]?"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_valid_id_numbers_are_accepted(id in valid_id()) {
        prop_assert_eq!(validate_cert_no_on(&id, today()), Ok(()));
        let lower = id.to_ascii_lowercase();
        prop_assert_eq!(validate_cert_no_on(&lower, today()), Ok(()), "lowercase x");
    }

    #[test]
    fn feb_29_of_a_leap_year_is_accepted(date in leap_day(), sequence in 0..1000u32) {
        let body = id_body("110105", date, sequence);
        let id = format!("{body}{}", iso7064_check(&body));
        prop_assert_eq!(validate_cert_no_on(&id, today()), Ok(()));
    }

    #[test]
    fn feb_29_of_a_common_year_is_refused(year in 1900..=2025i32, sequence in 0..1000u32) {
        prop_assume!(NaiveDate::from_ymd_opt(year, 2, 29).is_none());
        let body = format!("110105{year:04}0229{sequence:03}");
        let id = format!("{body}{}", iso7064_check(&body));
        let error = validate_cert_no_on(&id, today()).unwrap_err();
        prop_assert_eq!(error.field, "cert_no");
    }

    #[test]
    fn any_other_check_character_is_refused(id in valid_id(), replacement in "[0-9Xx]") {
        let (body, check) = id.split_at(17);
        let replacement = replacement.to_ascii_uppercase();
        prop_assume!(replacement != check);
        let changed = format!("{body}{replacement}");
        let error = validate_cert_no_on(&changed, today()).unwrap_err();
        prop_assert_eq!(error.field, "cert_no");
        prop_assert!(error.rule.contains("check character"), "{}", error.rule);
    }

    #[test]
    fn a_birth_date_after_today_is_refused(days in 1..4000i64, sequence in 0..1000u32) {
        let date = today() + chrono::TimeDelta::days(days);
        let body = id_body("110105", date, sequence);
        let id = format!("{body}{}", iso7064_check(&body));
        prop_assert!(validate_cert_no_on(&id, today()).is_err());
    }

    #[test]
    fn generated_mobile_numbers_are_accepted(phone in valid_mobile()) {
        prop_assert_eq!(validate_mobile(&phone), Ok(()));
    }

    #[test]
    fn a_mobile_number_with_one_character_changed_to_a_non_digit_is_refused(
        phone in valid_mobile(),
        at in 0..11usize,
        replacement in "[^0-9]",
    ) {
        let mut changed: Vec<char> = phone.chars().collect();
        changed[at] = replacement.chars().next().unwrap();
        let changed: String = changed.into_iter().collect();
        let error = validate_mobile(&changed).unwrap_err();
        prop_assert_eq!(error.field, "relation_phone");
    }

    #[test]
    fn a_mobile_number_of_another_length_or_prefix_is_refused(
        phone in valid_mobile(),
        second in b'0'..=b'2',
        extra in "[0-9]",
    ) {
        let mut wrong_prefix = phone.clone().into_bytes();
        wrong_prefix[1] = second;
        let wrong_prefix = String::from_utf8(wrong_prefix).unwrap();
        prop_assert!(validate_mobile(&wrong_prefix).is_err());
        let longer = format!("{phone}{extra}");
        prop_assert!(validate_mobile(&longer).is_err());
        prop_assert!(validate_mobile(&phone[..10]).is_err());
    }

    #[test]
    fn generated_names_are_accepted(name in valid_name()) {
        prop_assert_eq!(validate_person_name("name", &name), Ok(()));
        prop_assert_eq!(validate_person_name("relation_name", &name), Ok(()));
    }

    #[test]
    fn a_name_with_a_forbidden_character_anywhere_is_refused(
        name in valid_name(),
        at in any::<prop::sample::Index>(),
        forbidden in prop_oneof![
            prop::sample::select(vec![',', '|', '&', '^', '\\', '"', '\u{7f}']),
            (0u32..0x20).prop_map(|code| char::from_u32(code).unwrap()),
        ],
    ) {
        let mut chars: Vec<char> = name.chars().collect();
        let at = at.index(chars.len() + 1);
        chars.insert(at, forbidden);
        let changed: String = chars.into_iter().collect();
        let error = validate_person_name("relation_name", &changed).unwrap_err();
        prop_assert_eq!(error.field, "relation_name");
    }

    #[test]
    fn a_name_over_64_characters_or_blank_is_refused(
        name in "[\u{4e00}-\u{9fa5}]{65,80}",
        blank in "[ \u{3000}]{0,5}",
    ) {
        prop_assert!(validate_person_name("name", &name).is_err());
        prop_assert!(validate_person_name("name", &blank).is_err());
    }

    #[test]
    fn a_message_of_generated_valid_fields_is_decoded_as_written(
        id in valid_id(),
        name in valid_name(),
        phone in valid_mobile(),
        relation_name in valid_name(),
    ) {
        // Birth dates must not be after the real today for `decode_job`.
        prop_assume!(validate_cert_no_on(&id, super::today_utc8()).is_ok());
        let body = serde_json::json!({
            "transaction_id": "t_1",
            "cert_no": id,
            "name": name,
            "relation_phone": phone,
            "relation_name": relation_name,
        });
        let job = decode_job(body.to_string().as_bytes(), "w1010100001000001200").unwrap();
        prop_assert_eq!(&job.query.cert_no, &id);
        prop_assert_eq!(&job.query.name, &name);
        prop_assert_eq!(&job.query.relation_phone, &phone);
        let again = decode_job(&job.to_message_body(), "other").unwrap();
        prop_assert_eq!(again, job);
    }
}
