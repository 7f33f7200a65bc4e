//! A large JSON submit costs a small multiple of its size at peak, and a body of
//! millions of tiny values is refused before it is parsed into a tree (issue 17, M5).
//! The test measures its own peak RSS (VmHWM); it is alone in its test binary so no
//! other test's allocations can move the peak.

use axum::body::Body;
use axum::http::{Request, StatusCode};

mod common;
use common::*;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Resets the peak to the current RSS (Linux: `5` to `clear_refs`), so that what the
/// test itself allocated before does not hide the peak of what follows.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
    peak_rss_kib()
}

fn post(body: Vec<u8>) -> Request<Body> {
    Request::post("/api/v2/jobs")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn large_submits_have_bounded_peak_memory() {
    const MIB: u64 = 1024 * 1024;
    let t = TestApp::new();

    // 9.5 MB of small numbers: five million JSON values, which parsed into a tree
    // took 425 MB. Refused before parsing.
    let mut numbers = String::from(
        "{\"workflow\":{\"1\":{\"class_type\":\"PrimitiveNode\",\"inputs\":{\"value\":[",
    );
    numbers.push_str(&"0,".repeat(4_750_000));
    numbers.push_str("0]}}}}");
    let before = reset_peak();
    let reply = t.send(post(numbers.into_bytes())).await;
    let grown = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert_envelope(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    println!("5 M small values: peak RSS grew by {grown} MiB");
    assert!(grown < 40, "peak RSS grew by {grown} MiB");

    // A valid 9.5 MB workflow of long prompts is accepted at a few times its size.
    let text = "a photograph of a lighthouse at dusk, ".repeat(200);
    let mut nodes = serde_json::Map::new();
    nodes.insert(
        "0".into(),
        serde_json::json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}}),
    );
    let mut i = 0;
    while (i as u64) * (text.len() as u64 + 80) < 95 * MIB / 10 {
        i += 1;
        nodes.insert(
            i.to_string(),
            serde_json::json!({"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["0", 1]}}),
        );
    }
    let body = serde_json::to_vec(&serde_json::json!({ "workflow": nodes })).unwrap();
    drop(nodes);
    let size_mib = body.len() as u64 / MIB;
    let before = reset_peak();
    let reply = t.send(post(body)).await;
    let grown = (peak_rss_kib().saturating_sub(before)) / 1024;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    println!("a {size_mib} MiB workflow: peak RSS grew by {grown} MiB");
    assert!(
        grown < 6 * size_mib,
        "peak RSS grew by {grown} MiB for a {size_mib} MiB body"
    );
}
