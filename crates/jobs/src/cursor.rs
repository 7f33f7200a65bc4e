//! List cursors that cannot be forged.
//!
//! A cursor names the last job of the previous page. It is bound with an HMAC to the
//! tenant and the filter it was issued for, so a client can neither page through
//! another tenant's jobs nor splice a cursor onto a different filter. A cursor that
//! fails the check is a 400 `invalid_cursor`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::JobId;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the MAC kept in a cursor: 128 bits is plenty against forgery.
const TAG_BYTES: usize = 16;

#[derive(Clone)]
pub struct CursorCodec {
    key: Vec<u8>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec { key: <redacted> }")
    }
}

impl CursorCodec {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        CursorCodec { key: key.into() }
    }

    fn tag(&self, tenant: &str, filter: &[(String, String)], before: &str) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        // Length-prefix every part so no two different inputs share an encoding.
        let mut feed = |part: &str| {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        };
        feed(tenant);
        feed(before);
        for (k, v) in filter {
            feed(k);
            feed(v);
        }
        mac.finalize().into_bytes()[..TAG_BYTES].to_vec()
    }

    /// The cursor for the page after `before`.
    pub fn encode(&self, tenant: &str, filter: &[(String, String)], before: &JobId) -> String {
        let tag = self.tag(tenant, filter, before.as_str());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(before.as_str()),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The job id a cursor names, if it was issued by us for this tenant and filter.
    pub fn decode(&self, tenant: &str, filter: &[(String, String)], cursor: &str) -> Option<JobId> {
        let (id_part, tag_part) = cursor.split_once('.')?;
        let id = String::from_utf8(URL_SAFE_NO_PAD.decode(id_part).ok()?).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag_part).ok()?;
        let expected = self.tag(tenant, filter, &id);
        // Constant-time comparison: the tag is a secret-derived value.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            tag.as_slice(),
            expected.as_slice(),
        )) {
            return None;
        }
        JobId::parse(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let codec = CursorCodec::new(b"k".to_vec());
        let id = JobId::generate();
        let filter = vec![("a".to_string(), "b".to_string())];
        let c = codec.encode("t1", &filter, &id);
        assert_eq!(codec.decode("t1", &filter, &c), Some(id.clone()));
        assert_eq!(codec.decode("t2", &filter, &c), None, "other tenant");
        assert_eq!(codec.decode("t1", &[], &c), None, "other filter");
        let other = CursorCodec::new(b"other".to_vec());
        assert_eq!(other.decode("t1", &filter, &c), None, "other key");
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(id.as_str()),
            "AAAAAAAAAAAAAAAAAAAAAA"
        );
        assert_eq!(codec.decode("t1", &filter, &forged), None);
        assert_eq!(codec.decode("t1", &filter, "garbage"), None);
    }
}
