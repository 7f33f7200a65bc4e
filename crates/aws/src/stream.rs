//! DynamoDB Streams records as the SDK's items.
//!
//! A Lambda on the jobs table's stream receives each record's images in DynamoDB's
//! JSON format (`{"status": {"S": "running"}}`). The helpers that read items
//! ([`crate::webhooks::outbox_event`], the job codecs) take the SDK's
//! `HashMap<String, AttributeValue>`, so [`item_from_image`] converts the one into the
//! other; [`image_of_item`] goes the other way, for tests and emulators that build the
//! records DynamoDB Streams would deliver from items read back from the table.
//!
//! [`expired_output_asset`] reads what a TTL deletion of a job's output item leaves to
//! do: DynamoDB's TTL removes a job's items (`META`, `PROGRESS`, `OUT#…`, each on its
//! own, in no order) but not the output *asset* records those `OUT#` items name, nor
//! their bytes; the stream carries each deletion with its old image, so its consumer
//! releases the asset as `jobs::retention` does in `dev`.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use serde_json::{Map, Value, json};

/// The principal of the stream records of TTL deletions (`userIdentity`), as AWS
/// documents it: type `Service`, principal `dynamodb.amazonaws.com`.
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// The job and asset an expired job's output item named, from the old image of its
/// TTL deletion: `(job id, asset id)`; `None` for any other item.
pub fn expired_output_asset(old: &Item) -> Option<(String, String)> {
    let text = |name: &str| old.get(name).and_then(|v| v.as_s().ok());
    let job = text("pk")?.strip_prefix("JOB#")?;
    if !text("sk")?.starts_with("OUT#") {
        return None;
    }
    let output: jobs::model::OutputRecord = serde_json::from_str(text("body")?).ok()?;
    Some((job.to_string(), output.asset_id))
}

/// An item as the SDK holds it.
pub type Item = HashMap<String, AttributeValue>;

/// A stream image (DynamoDB JSON) that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a DynamoDB image: {0}")]
pub struct BadImage(String);

fn bad(what: &str) -> BadImage {
    BadImage(what.chars().take(120).collect())
}

/// A stream record's image (an object of attribute name → typed value) as an item.
pub fn item_from_image(image: &Value) -> Result<Item, BadImage> {
    let fields = image.as_object().ok_or_else(|| bad("not an object"))?;
    fields
        .iter()
        .map(|(name, value)| Ok((name.clone(), attribute(value)?)))
        .collect()
}

fn strings(value: &Value) -> Result<Vec<String>, BadImage> {
    value
        .as_array()
        .ok_or_else(|| bad("a set that is not a list"))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("a set member"))
        })
        .collect()
}

fn blob(text: &str) -> Result<Blob, BadImage> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Blob::new)
        .map_err(|_| bad("a binary value that is not base64"))
}

fn attribute(value: &Value) -> Result<AttributeValue, BadImage> {
    let fields = value.as_object().filter(|f| f.len() == 1);
    let (kind, inner) = fields
        .and_then(|f| f.iter().next())
        .ok_or_else(|| bad("a value without exactly one type"))?;
    let text = || inner.as_str().ok_or_else(|| bad(kind)).map(str::to_string);
    Ok(match kind.as_str() {
        "S" => AttributeValue::S(text()?),
        "N" => AttributeValue::N(text()?),
        "B" => AttributeValue::B(blob(&text()?)?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(|| bad("BOOL"))?),
        "NULL" => AttributeValue::Null(true),
        "SS" => AttributeValue::Ss(strings(inner)?),
        "NS" => AttributeValue::Ns(strings(inner)?),
        "BS" => AttributeValue::Bs(
            strings(inner)?
                .iter()
                .map(|b| blob(b))
                .collect::<Result<_, _>>()?,
        ),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or_else(|| bad("L"))?
                .iter()
                .map(attribute)
                .collect::<Result<_, _>>()?,
        ),
        "M" => AttributeValue::M(item_from_image(inner)?),
        other => return Err(bad(&format!("unknown type {other}"))),
    })
}

/// An item as a stream record's image (DynamoDB JSON).
pub fn image_of_item(item: &Item) -> Value {
    Value::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), image_of(value)))
            .collect::<Map<String, Value>>(),
    )
}

fn image_of(value: &AttributeValue) -> Value {
    let b64 = |b: &Blob| base64::engine::general_purpose::STANDARD.encode(b.as_ref());
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        AttributeValue::L(v) => json!({ "L": v.iter().map(image_of).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": image_of_item(m) }),
        // NULL, and any type a later SDK adds.
        _ => json!({ "NULL": true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_goes_there_and_back() {
        let image = json!({
            "pk": {"S": "JOB#01J"}, "n": {"N": "42"}, "ok": {"BOOL": true},
            "none": {"NULL": true}, "tags": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]},
            "bin": {"B": "AAEC"}, "list": {"L": [{"S": "x"}, {"N": "1"}]},
            "map": {"M": {"inner": {"S": "y"}}},
        });
        let item = item_from_image(&image).unwrap();
        assert_eq!(item["pk"], AttributeValue::S("JOB#01J".into()));
        assert_eq!(item["bin"], AttributeValue::B(Blob::new(vec![0, 1, 2])));
        assert_eq!(image_of_item(&item), image);
    }

    #[test]
    fn an_expired_output_item_names_its_job_and_asset_and_nothing_else_does() {
        let body = json!({"node_id": "9", "name": "o.png", "type": "image",
            "content_type": "image/png", "size_bytes": 3, "asset_id": "asset_01J",
            "hash": null, "blob_key": "outputs/j/1/o.png"});
        let mut item = item_from_image(&json!({
            "pk": {"S": "JOB#01JJOB"}, "sk": {"S": "OUT#00001#0000"},
            "body": {"S": body.to_string()}, "ttl": {"N": "1"}
        }))
        .unwrap();
        assert_eq!(
            expired_output_asset(&item),
            Some(("01JJOB".into(), "asset_01J".into()))
        );
        item.insert("sk".into(), AttributeValue::S("META".into()));
        assert_eq!(expired_output_asset(&item), None);
    }

    #[test]
    fn malformed_images_are_refused_not_guessed() {
        for image in [
            json!([]),
            json!({"a": {"S": 1}}),
            json!({"a": {"S": "x", "N": "1"}}),
            json!({"a": {"X": "?"}}),
            json!({"a": {"B": "not base64!"}}),
        ] {
            assert!(item_from_image(&image).is_err(), "{image}");
        }
    }
}
