//! A huge text part of `POST /api/v2/assets` is refused without being read whole
//! (issue 17, M2): the test measures its own peak RSS (VmHWM) around a 256 MiB
//! `content_type` part. It is alone in its test binary so no other test's allocations
//! can move the peak.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;

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

#[tokio::test]
async fn a_huge_text_part_is_refused_with_flat_memory() {
    const MIB: usize = 1024 * 1024;
    const SIZE_MIB: usize = 256;
    let t = TestApp::new();
    let boundary = "----text-part-boundary";
    let head =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"content_type\"\r\n\r\n");
    let tail = format!(
        "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file_path\"\r\n\r\nx.bin\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nx\r\n--{boundary}--\r\n"
    );
    // The same 1 MiB of text, generated as the body is read.
    let chunk = Bytes::from(vec![b'a'; MIB]);
    let parts = std::iter::once(Bytes::from(head))
        .chain(std::iter::repeat_n(chunk, SIZE_MIB))
        .chain(std::iter::once(Bytes::from(tail)));
    let body = Body::from_stream(futures::stream::iter(parts.map(Ok::<_, std::io::Error>)));

    let before = peak_rss_kib();
    let request = Request::post("/api/v2/assets")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .unwrap();
    let reply = t.send(request).await;
    let after = peak_rss_kib();
    assert_envelope(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(reply.body["error"]["details"]["field"], "content_type");
    let growth_mib = (after.saturating_sub(before)) / 1024;
    println!("peak RSS grew by {growth_mib} MiB for a {SIZE_MIB} MiB text part");
    assert!(
        growth_mib < 32,
        "peak RSS grew by {growth_mib} MiB: the text part is being buffered"
    );
}
