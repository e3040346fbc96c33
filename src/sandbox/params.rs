//! Request parameters off the wire: the query string and a form body, split and
//! percent-decoded to raw bytes, then decoded in the request's `charset`.
//!
//! axum's `Query`/`Form` (serde_urlencoded) assume UTF-8, so a GBK request would
//! be garbled before its signature could be checked; this module works on bytes
//! instead. It never fails and never panics: malformed escapes stay literal and
//! undecodable bytes become U+FFFD, and the signature check then rejects them the
//! way the real gateway does.

use std::borrow::Cow;

use crate::upstream::signing::Charset;

/// One `key=value` pair as raw bytes, after `+` → space and percent-decoding.
type RawPair = (Vec<u8>, Vec<u8>);

/// The `charset` parameter as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestCharset {
    /// Absent or empty: the gateway assumes UTF-8.
    Default,
    Known(Charset),
    /// Present but not one the gateway accepts; kept for the error answer.
    Invalid(String),
}

impl RequestCharset {
    /// The encoding used to read parameters and to write the answer; an invalid
    /// charset is answered in UTF-8.
    pub(crate) fn effective(&self) -> Charset {
        match self {
            Self::Known(charset) => *charset,
            Self::Default | Self::Invalid(_) => Charset::Utf8,
        }
    }
}

/// Decoded request parameters in arrival order (query string first, then body);
/// a repeated key keeps its first value, as a servlet's `getParameter` does.
#[derive(Debug, Clone)]
pub(crate) struct RequestParams {
    pairs: Vec<(String, String)>,
    pub(crate) charset: RequestCharset,
}

impl RequestParams {
    /// Parses the raw query string and (for a form POST) the raw body.
    pub(crate) fn parse(query: &[u8], body: &[u8]) -> Self {
        let raw: Vec<RawPair> = split_pairs(query).chain(split_pairs(body)).collect();
        let charset = find_charset(&raw);
        let encoding = charset.effective();
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(raw.len());
        for (key, value) in &raw {
            let key = encoding.decode(key).into_owned();
            if pairs.iter().any(|(seen, _)| *seen == key) {
                continue;
            }
            pairs.push((key, encoding.decode(value).into_owned()));
        }
        Self { pairs, charset }
    }

    /// The value of `key`, treating an empty value as absent (the gateway's
    /// `isEmpty` checks do the same).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }

    /// Every parameter, for rebuilding the string to sign.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Splits on `&` and the first `=`, skipping empty segments.
fn split_pairs(input: &[u8]) -> impl Iterator<Item = RawPair> + '_ {
    input
        .split(|byte| *byte == b'&')
        .filter(|segment| !segment.is_empty())
        .map(|segment| {
            let (key, value) = match segment.iter().position(|byte| *byte == b'=') {
                Some(at) => (&segment[..at], &segment[at + 1..]),
                None => (segment, &segment[..0]),
            };
            (decode_component(key), decode_component(value))
        })
}

/// `+` is a space in form encoding; `%XY` escapes become bytes, and a malformed
/// escape is kept literally rather than rejected.
fn decode_component(raw: &[u8]) -> Vec<u8> {
    let plus_replaced: Cow<'_, [u8]> = if raw.contains(&b'+') {
        Cow::Owned(
            raw.iter()
                .map(|byte| if *byte == b'+' { b' ' } else { *byte })
                .collect(),
        )
    } else {
        Cow::Borrowed(raw)
    };
    percent_encoding::percent_decode(&plus_replaced).collect()
}

/// `charset` is ASCII in every accepted encoding, so it can be read before
/// anything else is decoded.
fn find_charset(raw: &[RawPair]) -> RequestCharset {
    let Some((_, value)) = raw.iter().find(|(key, _)| key == b"charset") else {
        return RequestCharset::Default;
    };
    let text = String::from_utf8_lossy(value);
    if text.is_empty() {
        return RequestCharset::Default;
    }
    match text.parse::<Charset>() {
        Ok(charset) => RequestCharset::Known(charset),
        Err(_) => RequestCharset::Invalid(text.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn gbk_values_are_decoded_in_the_request_charset() {
        let params = RequestParams::parse(b"charset=GBK&name=%D5%C5%C8%FD", b"a+b=c+d");
        assert_eq!(params.charset, RequestCharset::Known(Charset::Gbk));
        assert_eq!(params.get("name"), Some("张三"));
        assert_eq!(params.get("a b"), Some("c d"));
    }

    #[test]
    fn charset_in_the_body_is_found_and_the_first_duplicate_wins() {
        let params = RequestParams::parse(b"x=1&x=2", b"charset=gb18030");
        assert_eq!(params.charset, RequestCharset::Known(Charset::Gb18030));
        assert_eq!(params.get("x"), Some("1"));
    }

    #[test]
    fn unknown_or_empty_charset_is_reported_and_utf8_is_used() {
        let params = RequestParams::parse(b"charset=latin1&n=%C3%A9", b"");
        assert_eq!(params.charset, RequestCharset::Invalid("latin1".into()));
        assert_eq!(params.get("n"), Some("é"));
        let params = RequestParams::parse(b"charset=", b"");
        assert_eq!(params.charset, RequestCharset::Default);
    }

    #[test]
    fn malformed_escapes_and_bytes_are_kept_lossily() {
        let params = RequestParams::parse(b"a=%zz%4&b=%FF%FE&=x&c", b"");
        assert_eq!(params.get("a"), Some("%zz%4"));
        assert_eq!(params.get("b"), Some("\u{FFFD}\u{FFFD}"));
        assert_eq!(params.get("c"), None);
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let alphabet = b"&=%+charsetGBKgbkutf-80123456789ABCDEF\xff\xfe\x81\x40";
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let pick_alphabet = rng.random_bool(0.5);
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    if pick_alphabet {
                        alphabet[rng.random_range(0..alphabet.len())]
                    } else {
                        rng.random()
                    }
                })
                .collect();
            let split = rng.random_range(0..=bytes.len());
            let params = RequestParams::parse(&bytes[..split], &bytes[split..]);
            let _ = params.iter().count();
        }
    }
}
