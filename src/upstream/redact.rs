//! The strings to sign shown when the gateway rejects our signature, rebuilt
//! from masked values.
//!
//! Replacing a name where it appears literally is not enough: inside
//! `biz_content` it is JSON, so it may be spelled with escapes (`\"`, `\t`,
//! `\u2028`, …) that a text search never finds. So `biz_content` is parsed and
//! written again with every personal field masked (the same masks as the
//! stored rows), and a `biz_content` that does not parse is hidden whole.
//! Must not: show `app_auth_token` (a credential), or do I/O.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::job::{RelationQuery, mask_cert_no, mask_name, mask_phone};

const BIZ_CONTENT: &str = "biz_content=";
const APP_AUTH_TOKEN: &str = "app_auth_token=";
const HIDDEN_TOKEN: &str = "(hidden)";
const HIDDEN_BIZ: &str = "(hidden: not a JSON object)";

/// How a business field is masked, by its name in `biz_content`.
fn mask_for(field: &str) -> Option<fn(&str) -> String> {
    match field {
        "cert_no" => Some(mask_cert_no),
        "relation_phone" | "mobile" | "phone" => Some(mask_phone),
        "name" | "relation_name" => Some(mask_name),
        _ => None,
    }
}

/// Masks the personal data of one job in text meant for humans. Fields are
/// masked by name whatever their value; the job's own values are also masked
/// wherever else they appear (a gateway echo is not ours to trust).
#[derive(Debug, Default)]
pub(crate) struct PiiRedactor {
    /// (plaintext, masked), longest first.
    values: Vec<(String, String)>,
}

impl PiiRedactor {
    pub(crate) fn for_query(query: &RelationQuery) -> Self {
        let mut values = vec![
            (query.cert_no.clone(), mask_cert_no(&query.cert_no)),
            (
                query.relation_phone.clone(),
                mask_phone(&query.relation_phone),
            ),
            (query.name.clone(), mask_name(&query.name)),
            (query.relation_name.clone(), mask_name(&query.relation_name)),
        ];
        values.retain(|(raw, _)| !raw.is_empty());
        values.sort_by_key(|(raw, _)| std::cmp::Reverse(raw.len()));
        Self { values }
    }

    /// A string to sign (`k=v&k=v…`, ours or the gateway's echo, or a message
    /// that contains one) with `biz_content` rebuilt from masked values and
    /// `app_auth_token` hidden.
    pub(crate) fn mask_string_to_sign(&self, text: &str) -> String {
        let Some(start) = text.find(BIZ_CONTENT).map(|at| at + BIZ_CONTENT.len()) else {
            return self.mask_outside_biz_content(text);
        };
        let (head, rest) = text.split_at(start);
        let (biz, tail) = match self.mask_biz_content(rest) {
            Some((masked, used)) => (masked, &rest[used..]),
            None => {
                let end = rest.rfind("&charset=").unwrap_or(rest.len());
                (HIDDEN_BIZ.to_owned(), &rest[end..])
            }
        };
        format!(
            "{}{biz}{}",
            self.mask_outside_biz_content(head),
            self.mask_outside_biz_content(tail)
        )
    }

    /// The JSON object at the start of `text`, masked and written again, and
    /// how many bytes of `text` it took.
    fn mask_biz_content(&self, text: &str) -> Option<(String, usize)> {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<OrderedObject>();
        let object = stream.next()?.ok()?;
        let used = stream.byte_offset();
        let masked = OrderedObject(
            object
                .0
                .into_iter()
                .map(|(key, value)| {
                    let value = self.mask_value(&key, value);
                    (key, value)
                })
                .collect(),
        );
        Some((serde_json::to_string(&masked).ok()?, used))
    }

    fn mask_value(&self, field: &str, value: Value) -> Value {
        match value {
            Value::String(text) => Value::String(match mask_for(field) {
                Some(mask) => mask(&text),
                None => self.mask_known_values(&text),
            }),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| self.mask_value(field, item))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(key, value)| {
                        let value = self.mask_value(&key, value);
                        (key, value)
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn mask_known_values(&self, text: &str) -> String {
        self.values
            .iter()
            .fold(text.to_owned(), |text, (raw, masked)| {
                text.replace(raw, masked)
            })
    }

    /// Outside `biz_content` only system parameters are expected; the token
    /// is hidden and any of the job's values is masked in case the echo is odd.
    fn mask_outside_biz_content(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(APP_AUTH_TOKEN) {
            let value_start = at + APP_AUTH_TOKEN.len();
            out.push_str(&rest[..value_start]);
            out.push_str(HIDDEN_TOKEN);
            let value_end = rest[value_start..]
                .find('&')
                .map_or(rest.len(), |end| value_start + end);
            rest = &rest[value_end..];
        }
        out.push_str(rest);
        self.mask_known_values(&out)
    }
}

/// A JSON object with its members in their original order (serde_json's
/// `Map` sorts them), so the masked string reads like the one that was signed.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

impl Serialize for OrderedObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn biz_content_is_rebuilt_from_masked_values_in_its_own_order() {
        let text = r#"app_auth_token=tok123&app_id=1&biz_content={"product_code":"p","cert_no":"640202199007164686","name":"欧\"阳\t娜","relation_phone":"15843991158","relation_name":"李\u2028四"}&charset=utf-8"#;
        let shown = PiiRedactor::default().mask_string_to_sign(text);
        assert_eq!(
            shown,
            r#"app_auth_token=(hidden)&app_id=1&biz_content={"product_code":"p","cert_no":"640202********4686","name":"欧****","relation_phone":"158****1158","relation_name":"李**"}&charset=utf-8"#
        );
    }

    #[test]
    fn an_unreadable_biz_content_is_hidden_whole() {
        let text = r#"app_id=1&biz_content={"name":"张三"&charset=utf-8&version=1.0"#;
        let shown = PiiRedactor::default().mask_string_to_sign(text);
        assert_eq!(
            shown,
            "app_id=1&biz_content=(hidden: not a JSON object)&charset=utf-8&version=1.0"
        );
    }
}
