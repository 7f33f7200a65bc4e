//! The BlobStore's promises, for small and large blobs.

use super::*;

/// Reads a whole blob, or a range of it, through [`BlobStore::read`].
async fn read_blob(blobs: &dyn BlobStore, key: &str, range: Option<(u64, u64)>) -> Option<Vec<u8>> {
    use futures::StreamExt;
    let read = blobs.read(key, range).await.expect("read")?;
    let mut bytes = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    Some(bytes)
}

/// A deterministic blob of `size` bytes, different for each `seed`.
fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The BlobStore's promises. Sizes straddle any small-blob threshold an adapter may
/// have (1 KiB and 300 KiB), and every case mixes them, because "the newest write
/// wins" must hold across the two.
pub async fn blob_store(blobs: Arc<dyn BlobStore>) {
    use bytes::Bytes;
    use futures::StreamExt;
    let small = pattern(1024, 1);
    let large = pattern(300 * 1024, 2);
    let blobs = blobs.as_ref();

    // Expiring a prefix never takes a blob younger than the cutoff (an adapter whose
    // service expires by itself may take none at all), nor one outside the prefix.
    let staged =
        || futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(large.clone()))]).boxed();
    blobs
        .put_stream("staging/conformance", staged(), 1 << 20)
        .await
        .unwrap();
    blobs
        .put_stream("kept/conformance", staged(), 1 << 20)
        .await
        .unwrap();
    let hour_ago = Utc::now() - Duration::hours(1);
    assert_eq!(
        blobs.expire_prefix("staging/", hour_ago, 10).await.unwrap(),
        0,
        "a young blob stays"
    );
    assert!(blobs.size("staging/conformance").await.unwrap().is_some());
    let later = Utc::now() + Duration::minutes(1);
    assert!(blobs.expire_prefix("staging/", later, 10).await.unwrap() <= 1);
    assert!(
        blobs.size("kept/conformance").await.unwrap().is_some(),
        "only under the prefix"
    );
    blobs.delete("staging/conformance").await.unwrap();
    blobs.delete("kept/conformance").await.unwrap();

    // Missing keys are absent, not errors.
    assert_eq!(blobs.get("conformance/missing").await.unwrap(), None);
    assert_eq!(blobs.size("conformance/missing").await.unwrap(), None);
    assert!(
        read_blob(blobs, "conformance/missing", None)
            .await
            .is_none()
    );
    blobs
        .delete("conformance/missing")
        .await
        .expect("deleting nothing is fine");

    for (name, bytes) in [("small", &small), ("large", &large)] {
        let key = format!("conformance/{name}");
        blobs
            .put(&key, Bytes::from(bytes.clone()), "application/octet-stream")
            .await
            .unwrap();
        assert_eq!(
            blobs.get(&key).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "{name}: get"
        );
        assert_eq!(
            blobs.size(&key).await.unwrap(),
            Some(bytes.len() as u64),
            "{name}: size"
        );
        assert_eq!(
            read_blob(blobs, &key, None).await.as_deref(),
            Some(&bytes[..]),
            "{name}: read"
        );
        assert_eq!(
            read_blob(blobs, &key, Some((10, 19))).await.as_deref(),
            Some(&bytes[10..20]),
            "{name}: an inclusive range"
        );
        let last = bytes.len() as u64 - 1;
        assert_eq!(
            read_blob(blobs, &key, Some((last, last))).await.as_deref(),
            Some(&bytes[bytes.len() - 1..]),
            "{name}: the last byte"
        );
        let read = blobs.read(&key, Some((0, 0))).await.unwrap().unwrap();
        assert_eq!(
            read.size,
            bytes.len() as u64,
            "{name}: a ranged read reports the whole size"
        );
    }

    // Overwrites: small → large → small, the newest always wins.
    let key = "conformance/overwritten";
    for (step, bytes) in [&small, &large, &small, &large].into_iter().enumerate() {
        blobs
            .put(key, Bytes::from(bytes.clone()), "application/octet-stream")
            .await
            .unwrap();
        assert_eq!(
            blobs.get(key).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "overwrite {step}"
        );
        assert_eq!(
            blobs.size(key).await.unwrap(),
            Some(bytes.len() as u64),
            "overwrite {step}"
        );
    }

    // A streamed write replaces a small blob, and refuses past its limit leaving the
    // old one.
    let key = "conformance/streamed";
    blobs
        .put(key, Bytes::from(small.clone()), "application/json")
        .await
        .unwrap();
    let chunks: Vec<Result<Bytes, std::io::Error>> = large
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let written = blobs
        .put_stream(
            key,
            Box::pin(futures::stream::iter(chunks)),
            large.len() as u64,
        )
        .await
        .unwrap();
    assert_eq!(written, large.len() as u64);
    assert_eq!(
        blobs.get(key).await.unwrap().as_deref(),
        Some(&large[..]),
        "streamed write wins"
    );
    let too_much: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from(large.clone()))];
    let refused = blobs
        .put_stream(key, Box::pin(futures::stream::iter(too_much)), 1000)
        .await;
    assert!(matches!(
        refused,
        Err(BlobWriteError::TooLarge { max_bytes: 1000 })
    ));
    assert_eq!(
        blobs.get(key).await.unwrap().as_deref(),
        Some(&large[..]),
        "a refused write changes nothing"
    );

    // Renames, of each kind, onto a key that holds the other kind.
    for (name, bytes, other) in [("small", &small, &large), ("large", &large, &small)] {
        let (from, to) = (
            format!("conformance/rename-{name}-from"),
            format!("conformance/rename-{name}-to"),
        );
        blobs
            .put(
                &from,
                Bytes::from(bytes.clone()),
                "application/octet-stream",
            )
            .await
            .unwrap();
        blobs
            .put(&to, Bytes::from(other.clone()), "application/octet-stream")
            .await
            .unwrap();
        blobs.rename(&from, &to).await.unwrap();
        assert_eq!(
            blobs.get(&from).await.unwrap(),
            None,
            "{name}: renamed away"
        );
        assert_eq!(
            blobs.get(&to).await.unwrap().as_deref(),
            Some(&bytes[..]),
            "{name}: renamed onto"
        );
        assert_eq!(blobs.size(&to).await.unwrap(), Some(bytes.len() as u64));
    }

    // Deletes remove either kind.
    for key in [
        "conformance/small",
        "conformance/large",
        "conformance/overwritten",
    ] {
        blobs.delete(key).await.unwrap();
        assert_eq!(blobs.get(key).await.unwrap(), None, "{key} deleted");
        assert_eq!(blobs.size(key).await.unwrap(), None, "{key} deleted");
    }

    presigned_requests(blobs).await;
}

/// Presigning: a GET needs no header; an exact-size PUT names the one header its
/// signature covers, `content-length`, with the exact size, so a client that sends
/// what it is told is accepted and the storage refuses any other length. The URL
/// names the key and differs between methods (each signature binds its method).
async fn presigned_requests(blobs: &dyn BlobStore) {
    use jobs::ports::{SignedAccess, SignedMethod};
    let expires = Utc::now() + Duration::minutes(15);
    let get = blobs
        .presign(
            "outputs/conformance/1/fox.png",
            SignedAccess::Get {
                content_type: Some("image/png".into()),
            },
            expires,
        )
        .await
        .expect("presign a GET");
    assert_eq!(get.method, SignedMethod::Get);
    assert!(
        get.headers.is_empty(),
        "a GET needs no header: {:?}",
        get.headers
    );
    assert!(get.url.contains("fox.png"), "the URL names the key");
    let put = blobs
        .presign(
            "uploads/conformance",
            SignedAccess::PutExact { size_bytes: 12_345 },
            expires,
        )
        .await
        .expect("presign a PUT");
    assert_eq!(put.method, SignedMethod::Put);
    assert_eq!(
        put.headers,
        vec![("content-length".to_string(), "12345".to_string())],
        "an exact-size PUT tells the client the signed Content-Length"
    );
    let get_same_key = blobs
        .presign(
            "uploads/conformance",
            SignedAccess::Get { content_type: None },
            expires,
        )
        .await
        .expect("presign a GET");
    assert_ne!(get_same_key.url, put.url, "the signature binds the method");
}
