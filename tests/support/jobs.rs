//! Job messages and identity numbers that the worker's validation accepts,
//! and small tallies of the `transaction_id -> status` maps tests read back.

use std::collections::BTreeMap;

/// Appends the ISO 7064 MOD 11-2 check character to the 17 digits of `body`,
/// making an 18-digit ID that job validation accepts.
pub fn with_check_character(body: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [char; 11] = ['1', '0', 'X', '9', '8', '7', '6', '5', '4', '3', '2'];
    let sum: u32 = body
        .chars()
        .zip(WEIGHTS)
        .map(|(c, w)| c.to_digit(10).expect("digit") * w)
        .sum();
    format!("{body}{}", CHECK[(sum % 11) as usize])
}

/// A valid 18-digit ID for birth date `yyyymmdd`.
pub fn cert_no(region: &str, birth: &str, sequence: u32) -> String {
    with_check_character(&format!("{region}{birth}{:03}", sequence % 1000))
}

/// A valid job message numbered `n`, with transaction_id `{prefix}_{n}`.
pub fn job(prefix: &str, n: u32) -> serde_json::Value {
    serde_json::json!({
        "transaction_id": format!("{prefix}_{n}"),
        "cert_no": cert_no("110101", "19900307", n),
        "name": "张三",
        "relation_phone": format!("138{:08}", n),
        "relation_name": "李四",
        "relation": "family",
        "external_ref": format!("loan-{n}/contact-1"),
    })
}

/// How many times each value occurs: `{"succeeded": 38, "retrying": 2}`.
pub fn count_values(map: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for value in map.values() {
        *counts.entry(value.clone()).or_insert(0) += 1;
    }
    counts
}

pub fn succeeded(statuses: &BTreeMap<String, String>) -> usize {
    statuses.values().filter(|s| *s == "succeeded").count()
}
