//! Property tests through the real router: the list-query parser (labels, limit,
//! cursor) and the multipart pump of `POST /api/v2/assets` get arbitrary input and must
//! answer a valid result or a 4xx in the v2 envelope: never a 5xx, never a panic.
//! `PROPTEST_CASES=20000 cargo test -p serverless-comfyui --test properties` runs a
//! longer pass.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn assert_answer(reply: &Reply) {
    assert!(
        reply.status.is_success() || reply.status.is_client_error(),
        "{}: {}",
        reply.status,
        reply.body
    );
    if reply.status.is_client_error() {
        assert!(reply.body["error"]["code"].is_string(), "{}", reply.body);
    }
}

/// Query strings built from the parts that matter, percent-encoded at random.
fn query() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        ("[a-z_.:-]{0,70}", ".{0,20}").prop_map(|(k, v)| format!("metadata[{k}]={v}")),
        ".{0,12}".prop_map(|v| format!("limit={v}")),
        "-?[0-9]{1,4}".prop_map(|v| format!("limit={v}")),
        ".{0,40}".prop_map(|v| format!("cursor={v}")),
        ".{0,20}",
    ];
    prop::collection::vec((part, any::<bool>()), 0..20).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(p, encode)| {
                if encode {
                    url::form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
                } else {
                    p.chars()
                        .filter(|c| !c.is_control() && *c != '#' && *c != ' ')
                        .collect()
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn list_queries_answer_or_refuse_cleanly(q in query()) {
        let rt = runtime();
        let _entered = rt.enter();
        let t = TestApp::new();
        let Ok(request) = Request::get(format!("/api/v2/jobs?{q}")).body(Body::empty()) else {
            // Not a URI at all: the HTTP server refuses it before any router runs.
            return Ok(());
        };
        let reply = rt.block_on(t.send(request));
        assert_answer(&reply);
        if reply.status.is_success() {
            prop_assert!(reply.body["jobs"].as_array().unwrap().len() <= 100);
        }
    }

    #[test]
    fn multipart_bodies_answer_or_refuse_cleanly(
        parts in prop::collection::vec(
            (
                prop_oneof![Just("file".to_string()), Just("content_type".to_string()), Just("file_path".to_string()), Just("tags".to_string()), Just("expected_hash".to_string()), ".{0,8}"],
                prop::option::of(".{0,12}"),
                prop::collection::vec(any::<u8>(), 0..64),
            ),
            0..6,
        ),
        truncate in any::<prop::sample::Index>(),
        garbage in prop::collection::vec(any::<u8>(), 0..32),
        cut in any::<bool>(),
    ) {
        let rt = runtime();
        let _entered = rt.enter();
        let t = TestApp::new();
        let borrowed: Vec<(&str, Option<&str>, &[u8])> = parts
            .iter()
            .map(|(n, f, b)| (n.as_str(), f.as_deref(), b.as_slice()))
            .collect();
        let (content_type, mut body) = multipart(&borrowed);
        if cut && !body.is_empty() {
            // A body that ends mid-part, followed by junk.
            body.truncate(truncate.index(body.len()));
            body.extend_from_slice(&garbage);
        }
        let reply = rt.block_on(t.send(
            Request::post("/api/v2/assets")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap(),
        ));
        assert_answer(&reply);
    }
}
