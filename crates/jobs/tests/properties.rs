//! Property tests of the parsers that read hostile input: the request-body JSON reader,
//! the submission and workflow validator, label keys, list cursors and `Range` headers.
//!
//! Each feeds arbitrary bytes and structures and asserts the contract every parser here
//! keeps: it never panics, and it either returns a valid result or a 4xx error whose
//! envelope is bounded in size. `PROPTEST_CASES=100000 cargo test -p jobs --test
//! properties --release` runs a longer pass.

use jobs::assets::{RangeRequest, parse_range};
use jobs::cursor::CursorCodec;
use jobs::model::JobId;
use jobs::validate::{parse_json_strict, parse_submission, validate_label_key, validate_workflow};
use jobs::{ApiError, DomainError};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The largest error envelope any of these may produce: a hostile body must never be
/// able to make the answer much larger than itself.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Checked as the client sees it: the status the API answers the domain error with.
fn assert_client_error(error: &DomainError) {
    let error = &ApiError::from(error.clone());
    assert!(
        error.status.is_client_error(),
        "{} for {}",
        error.status,
        error.message
    );
    let size = error.message.len()
        + error
            .details
            .as_ref()
            .map_or(0, |d| serde_json::to_string(d).unwrap().len());
    assert!(
        size <= MAX_ERROR_BYTES,
        "an error of {size} bytes: {}",
        error.code
    );
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values shaped like API-format workflows: node ids → `{class_type, inputs}`, where
/// inputs mix literals, links (some dangling, some self-referencing) and junk.
fn workflow_like() -> impl Strategy<Value = Value> {
    let input = prop_oneof![
        any_json(),
        ("[0-9]{1,2}", 0u32..3).prop_map(|(node, slot)| json!([node, slot])),
        Just(json!({"__type": "core/ASSET", "info": {"id": "asset_nope"}})),
    ];
    let node = (
        prop_oneof!["[A-Za-z]{1,12}".prop_map(Value::String), any_json()],
        prop::collection::btree_map("[a-z_]{1,8}", input, 0..5),
    )
        .prop_map(|(class, inputs)| {
            json!({"class_type": class, "inputs": Value::Object(inputs.into_iter().collect())})
        });
    prop::collection::btree_map(prop_oneof!["[0-9]{1,2}", ".{0,6}"], node, 0..12)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
}

proptest! {
    #[test]
    fn request_bodies_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = parse_json_strict(&bytes) {
            assert_client_error(&e);
        }
    }

    #[test]
    fn json_text_parses_or_fails_cleanly(text in "[\\[\\]{}\",:0-9a-z \\\\u]{0,256}") {
        if let Err(e) = parse_json_strict(text.as_bytes()) {
            assert_client_error(&e);
        }
    }

    #[test]
    fn any_submission_is_accepted_or_refused_cleanly(body in any_json()) {
        match parse_submission(body) {
            Ok(submission) => {
                // What was accepted re-validates: validation is a fixed point.
                let again = validate_workflow(Value::Object(submission.workflow.clone()));
                prop_assert!(again.is_ok(), "{:?}", again.err());
                prop_assert!(submission.metadata.len() <= 16);
            }
            Err(e) => assert_client_error(&e),
        }
    }

    #[test]
    fn workflow_shaped_graphs_are_accepted_or_refused_cleanly(workflow in workflow_like()) {
        match validate_workflow(workflow.clone()) {
            Ok(valid) => {
                // Every link of an accepted graph points at a node of the graph.
                for node in valid.values() {
                    for input in node["inputs"].as_object().into_iter().flat_map(|i| i.values()) {
                        if let Some([Value::String(target), Value::Number(_)]) = input.as_array().map(|a| a.as_slice()) {
                            prop_assert!(valid.contains_key(target), "dangling link to {target}");
                        }
                    }
                }
            }
            Err(e) => assert_client_error(&e),
        }
        let body = json!({"workflow": workflow});
        if let Err(e) = parse_submission(body) {
            assert_client_error(&e);
        }
    }

    #[test]
    fn label_keys_are_accepted_or_refused_with_a_reason(key in ".{0,80}") {
        if let Err(reason) = validate_label_key(&key) {
            prop_assert!(!reason.is_empty() && reason.len() < 1024);
        } else {
            prop_assert!(!key.is_empty());
        }
    }

    #[test]
    fn cursors_round_trip_and_forgeries_fail(
        tenant in "[a-z]{1,8}",
        other_tenant in "[a-z]{1,8}",
        filter in prop::collection::vec(("[a-z]{1,4}", ".{0,6}"), 0..3),
        junk in ".{0,64}",
    ) {
        let codec = CursorCodec::new(b"k".repeat(32));
        let id = JobId::generate();
        let cursor = codec.encode(&tenant, &filter, &id);
        prop_assert_eq!(codec.decode(&tenant, &filter, &cursor), Some(id.clone()));
        if other_tenant != tenant {
            prop_assert_eq!(codec.decode(&other_tenant, &filter, &cursor), None);
        }
        // Arbitrary text never decodes (it carries no valid MAC), and never panics.
        prop_assert_eq!(codec.decode(&tenant, &filter, &junk), None);
        // Nor does a real cursor with one character changed.
        let mut bytes = cursor.clone().into_bytes();
        let at = junk.len() % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert_eq!(codec.decode(&tenant, &filter, &tampered), None);
    }

    #[test]
    fn ranges_are_within_the_blob_or_refused(header in "(bytes=)?[0-9 ,-]{0,24}", size in 0u64..10_000) {
        if let RangeRequest::Partial(start, end) = parse_range(Some(&header), size) {
            prop_assert!(start <= end && end < size, "{header} over {size}: {start}-{end}");
        }
    }

    #[test]
    fn ranges_from_arbitrary_headers_never_panic(header in ".{0,40}", size in any::<u64>()) {
        if let RangeRequest::Partial(start, end) = parse_range(Some(&header), size) {
            prop_assert!(start <= end && end < size);
        }
    }
}
