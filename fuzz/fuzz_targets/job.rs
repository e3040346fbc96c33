//! Job message decoding and validation (`job::decode_job`) on arbitrary
//! bodies.
//!
//! Oracles: no panic; an accepted job, re-serialized as the worker publishes
//! it and decoded again (with another default product code, so the code must
//! have been written out), is the same job; a rejected one is over the size
//! limit, not JSON, not an object, or names one of the message's fields in
//! its reason; and the reason never quotes an ID number or phone given in
//! the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zhima_worker::fuzzing::decode_job;

const FIELDS: [&str; 9] = [
    "transaction_id",
    "product_code",
    "cert_no",
    "name",
    "relation_phone",
    "relation_name",
    "relation",
    "linked_merchant_id",
    "external_ref",
];

fuzz_target!(|data: &[u8]| {
    match decode_job(data, "w1010100001000001200") {
        Ok(job) => {
            let body = job.to_message_body();
            let again = decode_job(&body, "another_default_code")
                .unwrap_or_else(|rejected| panic!("re-serialized job rejected: {rejected:?}"));
            assert_eq!(again, job, "a re-serialized job decodes to another job");
        }
        Err(rejected) => match rejected.code {
            "BODY_TOO_LARGE" | "INVALID_JSON" => assert_eq!(rejected.field, None),
            "INVALID_TRANSACTION_ID" | "INVALID_PARAMETER" => {
                let field = rejected.field.expect("a field error names its field");
                assert!(FIELDS.contains(&field), "unknown field {field}");
                assert!(
                    rejected.reason.contains(&format!("`{field}`")),
                    "the reason does not name {field}: {}",
                    rejected.reason
                );
                no_personal_value_in(data, &rejected.reason);
            }
            other => panic!("unexpected error code {other}"),
        },
    }
});

/// An ID number or phone of the body (six digits or more, so as not to match
/// by chance)
/// never appears in the reason, which goes to logs and AMQP headers.
fn no_personal_value_in(body: &[u8], reason: &str) {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    for field in ["cert_no", "relation_phone"] {
        if let Some(Value::String(value)) = object.get(field) {
            // Six digits or more: an ID number or phone, not a word that
            // a reason may also contain by chance (`"cert_no":"name"`).
            let value = value.trim();
            if value.bytes().filter(u8::is_ascii_digit).count() >= 6 {
                assert!(!reason.contains(value), "the reason quotes {field}");
            }
        }
    }
}
