//! Request encoding (`upstream::wire::encode_pairs`, `signing::string_to_sign`)
//! against the gateway's reading of it (the sandbox's `RequestParams`).
//!
//! Input: the first byte says which pairs go in the form body rather than
//! the query string (bit i for pair i mod 8); the rest, split on NUL bytes,
//! is key, value, key, value, … (UTF-8; invalid bytes are dropped rather
//! than turned into U+FFFD, whose unmappable GBK encoding is slow to find). Keys are made unique, as in
//! a map, after being taken through the charset (a key the charset cannot
//! hold is sent as its numeric character reference, so the key is that);
//! `charset` is always the first query parameter, as the worker sends it.
//!
//! Oracles, for each charset: the parameters decode back to the same keys
//! and values (a value the charset cannot hold, as its character
//! references), in order; and the string to sign rebuilt from the decoded
//! parameters is, in the charset's bytes, the one signed from the original.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use zhima_worker::fuzzing::{Charset, decode_request, encode_pairs, string_to_sign};

const CHARSETS: [Charset; 4] = [
    Charset::Utf8,
    Charset::Gbk,
    Charset::Gb2312,
    Charset::Gb18030,
];

fuzz_target!(|data: &[u8]| {
    let Some((&in_body, rest)) = data.split_first() else {
        return;
    };
    let texts: Vec<String> = rest
        .split(|byte| *byte == 0)
        .map(|part| part.utf8_chunks().map(|chunk| chunk.valid()).collect())
        .collect();
    for charset in CHARSETS {
        check(charset, in_body, &texts);
    }
});

fn check(charset: Charset, in_body: u8, texts: &[String]) {
    // ASCII is the same in every charset (and the common case): no need to
    // spend the run in the encoders for it.
    let through = |text: &str| {
        if text.is_ascii() {
            text.to_owned()
        } else {
            charset.decode(&charset.encode(text)).into_owned()
        }
    };
    let mut query: Vec<(String, String)> = vec![("charset".into(), charset.as_str().into())];
    let mut body: Vec<(String, String)> = Vec::new();
    let mut seen: HashSet<String> = HashSet::from(["charset".to_owned()]);
    for (index, pair) in texts.chunks(2).enumerate() {
        let key = through(&pair[0]);
        let value = pair.get(1).cloned().unwrap_or_default();
        if !seen.insert(key.clone()) {
            continue;
        }
        let side = if in_body & (1 << (index % 8)) != 0 {
            &mut body
        } else {
            &mut query
        };
        side.push((key, value));
    }
    let query_text = encode_pairs(as_refs(&query).into_iter(), charset);
    let body_text = encode_pairs(as_refs(&body).into_iter(), charset);
    assert!(
        query_text.is_ascii() && body_text.is_ascii(),
        "the encoding is ASCII"
    );
    let decoded = decode_request(query_text.as_bytes(), body_text.as_bytes());

    let sent: Vec<(String, String)> = query.iter().chain(&body).cloned().collect();
    let expected: Vec<(String, String)> = sent
        .iter()
        .map(|(key, value)| (key.clone(), through(value)))
        .collect();
    assert_eq!(
        decoded, expected,
        "{charset}: the parameters do not decode back"
    );

    let signed = string_to_sign(as_refs(&sent));
    let rebuilt = string_to_sign(as_refs(&decoded));
    assert_eq!(
        charset.encode(&rebuilt),
        charset.encode(&signed),
        "{charset}: the gateway's string to sign differs from ours"
    );
}

fn as_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}
