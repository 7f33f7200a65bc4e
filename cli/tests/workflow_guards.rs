//! Submit refuses workflows that would make ComfyUI read server paths, node ids that
//! break storage keys, and answers every invalid workflow in bounded space (issue 17:
//! H2, H3, L6). Fixtures are embedded.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

mod common;
use common::*;

fn load_image(image: &str) -> Value {
    json!({"workflow": {
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "x"}},
    }})
}

#[tokio::test]
async fn file_inputs_that_name_server_paths_are_422_naming_node_and_input() {
    let t = TestApp::new();
    for bad in [
        "../../etc/hostname",
        "/etc/hostname",
        "x [output]",
        "a\\b",
        "../main.py",
    ] {
        let reply = t.submit(&load_image(bad)).await;
        assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
        let entry = &reply.body["error"]["details"]["node_errors"]["10"][0];
        assert_eq!(entry["field"], "image", "{bad}: {}", reply.body);
        assert_eq!(
            entry["reason"], "unsafe_file_input",
            "{bad}: {}",
            reply.body
        );
    }
    let mask = json!({"workflow": {
        "1": {"class_type": "LoadImageMask", "inputs": {"image": "/etc/hostname", "channel": "alpha"}},
    }});
    let reply = t.submit(&mask).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    // A bare name (a file the image ships) is still accepted.
    let reply = t.submit(&load_image("example.png")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[tokio::test]
async fn node_ids_are_checked_at_submit() {
    let t = TestApp::new();
    for bad in ["..", ".", "a/b", "x y"] {
        let body = json!({"workflow": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            bad: {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }});
        let reply = t.submit(&body).await;
        assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
        assert_eq!(
            reply.body["error"]["details"]["node_errors"][bad][0]["reason"], "invalid_node_id",
            "{bad}: {}",
            reply.body
        );
    }
    let subgraph = json!({"workflow": {
        "12:5": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12:5", 0], "filename_prefix": "x"}},
    }});
    assert_eq!(t.submit(&subgraph).await.status, StatusCode::CREATED);
}

fn ring(n: usize) -> Value {
    let mut graph = Map::new();
    for i in 0..n {
        graph.insert(
            i.to_string(),
            json!({"class_type": "ImageInvert", "inputs": {"image": [((i + 1) % n).to_string(), 0]}}),
        );
    }
    json!({ "workflow": graph })
}

#[tokio::test]
async fn a_10000_node_ring_is_a_small_fast_422() {
    let t = TestApp::new();
    let started = Instant::now();
    let reply = t.submit(&ring(10_000)).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    let size = reply.body.to_string().len();
    assert!(size < 64 * 1024, "{size} bytes");
    assert!(started.elapsed() < Duration::from_secs(10));
    let reply = t.submit(&ring(10_001)).await;
    assert_envelope(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "workflow_too_large",
    );
}

#[tokio::test]
async fn many_independent_errors_are_truncated_with_a_count() {
    let t = TestApp::new();
    let mut graph = Map::new();
    for i in 0..2_000 {
        graph.insert(i.to_string(), json!({"class_type": "ImageInvert"}));
    }
    let reply = t.submit(&json!({ "workflow": graph })).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    let details = &reply.body["error"]["details"];
    assert_eq!(details["node_errors"].as_object().unwrap().len(), 50);
    assert_eq!(details["omitted_errors"], 1_950);
}
