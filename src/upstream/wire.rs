//! The request on the wire, as Alipay's SDKs send it: system parameters and
//! `sign` in the query string, `biz_content` and `app_auth_token` in an
//! `application/x-www-form-urlencoded` body, everything percent-encoded in the
//! request charset (reqwest's `.query()`/`.form()` are UTF-8 only, hence
//! `form_urlencoded` with an encoding override). Pure: no I/O.

use std::borrow::Cow;

use chrono::{DateTime, FixedOffset, Offset, Utc};
use serde::Deserialize;
use url::Url;

use super::UpstreamError;
use super::signing::{self, Charset, PrivateKey, SignType};

pub(super) struct OutgoingParams<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) charset: Charset,
    pub(crate) sign_type: SignType,
    pub(crate) timestamp: &'a str,
    pub(crate) app_auth_token: Option<&'a str>,
    pub(crate) biz_content: &'a str,
    /// Certificate mode: `(app_cert_sn, alipay_root_cert_sn)`, two more
    /// system parameters (query string, signed like the others).
    pub(crate) cert_sns: Option<(&'a str, &'a str)>,
}

pub(super) struct SignedRequest {
    pub(crate) url: Url,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
    pub(crate) string_to_sign: String,
}

const VERSION: &str = "1.0";
const FORMAT: &str = "JSON";

/// The gateway's clock: `yyyy-MM-dd HH:mm:ss` in UTC+8.
pub(crate) fn timestamp_utc8(now: DateTime<Utc>) -> String {
    let utc8 = FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| Utc.fix());
    now.with_timezone(&utc8)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

pub(super) fn sign_request(
    gateway_url: &Url,
    params: &OutgoingParams<'_>,
    key: &PrivateKey,
) -> Result<SignedRequest, UpstreamError> {
    let charset = params.charset.as_str();
    let sign_type = params.sign_type.as_str();
    let mut system: Vec<(&str, &str)> = vec![
        ("app_id", params.app_id),
        ("method", params.method),
        ("format", FORMAT),
        ("charset", charset),
        ("sign_type", sign_type),
        ("timestamp", params.timestamp),
        ("version", VERSION),
    ];
    if let Some((app_cert_sn, root_cert_sn)) = params.cert_sns {
        system.push(("app_cert_sn", app_cert_sn));
        system.push(("alipay_root_cert_sn", root_cert_sn));
    }
    let mut body_params = vec![("biz_content", params.biz_content)];
    if let Some(token) = params.app_auth_token {
        body_params.push(("app_auth_token", token));
    }
    let signature = signing::sign_params(
        system.iter().chain(body_params.iter()).copied(),
        key,
        params.sign_type,
        params.charset,
    )?;
    let query = encode_pairs(
        system
            .iter()
            .copied()
            .chain(std::iter::once(("sign", signature.sign.as_str()))),
        params.charset,
    );
    let mut url = gateway_url.clone();
    url.set_query(Some(&query));
    Ok(SignedRequest {
        url,
        content_type: format!("application/x-www-form-urlencoded;charset={charset}"),
        body: encode_pairs(body_params.into_iter(), params.charset).into_bytes(),
        string_to_sign: signature.string_to_sign,
    })
}

/// `k=v&...` percent-encoded in `charset` (the output itself is ASCII).
pub(crate) fn encode_pairs<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    charset: Charset,
) -> String {
    let encode: &dyn Fn(&str) -> Cow<'_, [u8]> = &move |text| charset.encode(text);
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    serializer.encoding_override(Some(encode));
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

/// `relation_score` is documented as a Number; accept a numeric string too.
pub(super) fn number_or_string<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Score {
        Number(i64),
        Float(f64),
        Text(String),
    }
    Ok(match Option::<Score>::deserialize(deserializer)? {
        None => None,
        Some(Score::Number(value)) => Some(value),
        #[allow(clippy::cast_possible_truncation)]
        Some(Score::Float(value)) => Some(value.round() as i64),
        Some(Score::Text(text)) => text.trim().parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn timestamp_is_utc_plus_eight() {
        let now = DateTime::parse_from_rfc3339("2024-05-20T18:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp_utc8(now), "2024-05-21 02:30:00");
    }

    #[test]
    fn certificate_mode_adds_both_sns_to_the_signed_query_string() {
        let key = crate::upstream::signing::test_support::merchant_private_pkcs8();
        let url = Url::parse("http://127.0.0.1/gateway.do").unwrap();
        let mut params = OutgoingParams {
            app_id: "2014072300007148",
            method: "zhima.credit.relation.query",
            charset: Charset::Utf8,
            sign_type: SignType::Rsa2,
            timestamp: "2024-05-21 02:30:00",
            app_auth_token: None,
            biz_content: "{}",
            cert_sns: None,
        };
        let key_mode = sign_request(&url, &params, &key).unwrap();
        assert!(!key_mode.string_to_sign.contains("cert_sn"));
        params.cert_sns = Some(("aaa", "bbb_ccc"));
        let cert_mode = sign_request(&url, &params, &key).unwrap();
        assert_eq!(
            cert_mode.string_to_sign,
            "alipay_root_cert_sn=bbb_ccc&app_cert_sn=aaa&app_id=2014072300007148&\
             biz_content={}&charset=utf-8&format=JSON&method=zhima.credit.relation.query&\
             sign_type=RSA2&timestamp=2024-05-21 02:30:00&version=1.0"
        );
        let query = cert_mode.url.query().unwrap();
        assert!(query.contains("app_cert_sn=aaa&alipay_root_cert_sn=bbb_ccc&sign="));
    }

    #[test]
    fn pairs_are_percent_encoded_in_gbk() {
        let encoded = encode_pairs([("name", "张三 x")].into_iter(), Charset::Gbk);
        assert_eq!(encoded, "name=%D5%C5%C8%FD+x");
        let utf8 = encode_pairs([("name", "张三")].into_iter(), Charset::Utf8);
        assert_eq!(utf8, "name=%E5%BC%A0%E4%B8%89");
    }
}
