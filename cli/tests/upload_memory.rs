//! A 100 MB upload streams to disk with flat memory: the test measures its own peak
//! RSS (VmHWM) around the upload. It is alone in its test binary so no other test's
//! allocations can move the peak.

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
async fn hundred_megabyte_upload_has_flat_memory() {
    const MIB: usize = 1024 * 1024;
    const SIZE_MIB: usize = 100;
    let t = TestApp::new();
    let boundary = "----flat-memory-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content_type\"\r\n\r\napplication/octet-stream\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file_path\"\r\n\r\nbig.bin\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    // The same 1 MiB chunk a hundred times, generated as the body is read.
    let chunk = Bytes::from((0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut hasher = blake3::Hasher::new();
    for _ in 0..SIZE_MIB {
        hasher.update(&chunk);
    }
    let expected_hash = format!("blake3:{}", hasher.finalize().to_hex());
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
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["size_bytes"], (SIZE_MIB * MIB) as u64);
    assert_eq!(reply.body["hash"], expected_hash);
    let growth_mib = (after.saturating_sub(before)) / 1024;
    println!("peak RSS grew by {growth_mib} MiB for a {SIZE_MIB} MiB upload");
    assert!(
        growth_mib < 32,
        "peak RSS grew by {growth_mib} MiB: the upload is being buffered"
    );
}
