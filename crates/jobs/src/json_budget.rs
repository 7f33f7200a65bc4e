//! What a JSON request body may cost to parse.
//!
//! Bodies are parsed into `serde_json::Value` trees (with `preserve_order`, so the
//! order of a workflow's nodes and inputs survives), and a tree costs about 80 bytes
//! per JSON value whatever the value's size in the body: a 10 MB body of small numbers
//! (`[0,0,0,…]`, two bytes each) became a 420 MB tree. So before a large body is
//! parsed, a pass that allocates nothing counts its values, and a body with more than
//! [`MAX_JSON_VALUES`] is refused. A 10,000-node workflow with a dozen inputs per node
//! has a few hundred thousand values.
//!
//! And at most [`LARGE_BODY_PERMITS`] bodies over [`LARGE_BODY_BYTES`] are read and
//! parsed at once ([`large_body_gate`]): the others wait their turn, so the peak
//! memory of many large requests at once is that of a few.

use std::sync::LazyLock;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{DomainError, ErrorKind};

/// JSON values (objects, arrays, strings, numbers, booleans, nulls) a body may hold.
pub const MAX_JSON_VALUES: u64 = 1_000_000;

/// A body larger than this is "large": it waits for a permit before it is read.
pub const LARGE_BODY_BYTES: u64 = 1024 * 1024;

/// Large bodies read and parsed at once, per process.
pub const LARGE_BODY_PERMITS: usize = 2;

/// How long a large body waits for its turn before the request is refused (503).
pub const LARGE_BODY_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a large body may take to arrive once it holds a permit (else 408), so a
/// slow sender cannot keep the permit from others.
pub const LARGE_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

static LARGE_BODIES: LazyLock<std::sync::Arc<Semaphore>> =
    LazyLock::new(|| std::sync::Arc::new(Semaphore::new(LARGE_BODY_PERMITS)));

/// A permit to read a body of `declared` bytes (`None`: not declared, as with a
/// chunked body, so possibly large). Small bodies need none. Held until the request's
/// parsed form is dropped. Waits at most `wait`, then 503 with `Retry-After`.
pub async fn large_body_gate(
    declared: Option<u64>,
    wait: std::time::Duration,
) -> Result<Option<OwnedSemaphorePermit>, DomainError> {
    if declared.is_some_and(|n| n <= LARGE_BODY_BYTES) {
        return Ok(None);
    }
    match tokio::time::timeout(wait, LARGE_BODIES.clone().acquire_owned()).await {
        Ok(permit) => Ok(permit.ok()),
        Err(_) => Err(DomainError::new(
            ErrorKind::Unavailable,
            "unavailable",
            "too many large request bodies are being processed; retry shortly",
        )
        .with_retry_after(5)),
    }
}

/// Refuses a body with more than [`MAX_JSON_VALUES`] values, without building
/// anything. Bodies too small to hold that many (every value takes at least one byte
/// and a separator) are not scanned. Malformed JSON passes: the real parse reports it.
pub fn check_value_count(bytes: &[u8]) -> Result<(), DomainError> {
    if (bytes.len() as u64) < 2 * MAX_JSON_VALUES {
        return Ok(());
    }
    let mut count = 0u64;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match (Count { count: &mut count }).deserialize(&mut deserializer) {
        Err(_) if count > MAX_JSON_VALUES => Err(DomainError::new(
            ErrorKind::TooLarge,
            "payload_too_large",
            format!(
                "the request body holds more than {MAX_JSON_VALUES} JSON values; send large data as assets and reference them"
            ),
        )),
        _ => Ok(()),
    }
}

/// Counts values as it walks them; fails once past the limit.
struct Count<'a> {
    count: &'a mut u64,
}

impl Count<'_> {
    fn one<E: serde::de::Error>(&mut self) -> Result<(), E> {
        *self.count += 1;
        if *self.count > MAX_JSON_VALUES {
            Err(E::custom("too many values"))
        } else {
            Ok(())
        }
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(mut self, _: bool) -> Result<(), E> {
        self.one()
    }

    fn visit_i64<E: serde::de::Error>(mut self, _: i64) -> Result<(), E> {
        self.one()
    }

    fn visit_u64<E: serde::de::Error>(mut self, _: u64) -> Result<(), E> {
        self.one()
    }

    fn visit_f64<E: serde::de::Error>(mut self, _: f64) -> Result<(), E> {
        self.one()
    }

    fn visit_str<E: serde::de::Error>(mut self, _: &str) -> Result<(), E> {
        self.one()
    }

    fn visit_unit<E: serde::de::Error>(mut self) -> Result<(), E> {
        self.one()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.one()?;
        while seq
            .next_element_seed(Count {
                count: &mut *self.count,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.one()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(Count {
                count: &mut *self.count,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large bodies take turns; small ones never wait.
    #[tokio::test]
    async fn at_most_a_few_large_bodies_are_read_at_once() {
        let large = Some(LARGE_BODY_BYTES + 1);
        let wait = std::time::Duration::from_millis(200);
        let mut held = Vec::new();
        for _ in 0..LARGE_BODY_PERMITS {
            held.push(large_body_gate(large, wait).await.unwrap().unwrap());
        }
        let refused = large_body_gate(large, wait).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Unavailable);
        assert!(refused.retry_after.is_some());
        assert!(
            large_body_gate(None, wait).await.is_err(),
            "a body of unknown size counts as large"
        );
        assert!(
            large_body_gate(Some(LARGE_BODY_BYTES), wait)
                .await
                .unwrap()
                .is_none()
        );
        held.pop();
        assert!(large_body_gate(large, wait).await.unwrap().is_some());
    }

    #[test]
    fn a_body_of_too_many_small_values_is_refused_before_parsing() {
        let values = MAX_JSON_VALUES as usize;
        let mut body = String::from("{\"workflow\":{\"1\":{\"inputs\":{\"v\":[");
        body.push_str(&"0,".repeat(values));
        body.push_str("0]}}}}");
        let error = check_value_count(body.as_bytes()).unwrap_err();
        assert_eq!(error.kind, ErrorKind::TooLarge);
        // Just under the limit (the three objects, the array and its numbers), fine.
        let mut body = String::from("{\"workflow\":{\"1\":{\"inputs\":{\"v\":[");
        body.push_str(&"0,".repeat(values - 6));
        body.push_str("0]}}}}");
        check_value_count(body.as_bytes()).unwrap();
        // Large strings are one value each.
        let body = format!("{{\"workflow\":\"{}\"}}", "x".repeat(5 * values));
        check_value_count(body.as_bytes()).unwrap();
    }
}
