//! The node catalogue: the pointer in the store, and publishing over the store and the
//! blob store (content-addressed: one copy per content; the pointer follows the last
//! publisher; submit's parsed copy follows the pointer).

use jobs::catalogue::{self, CatalogueRef, Catalogues, Verdict};
use jobs::ports::Ports;
use serde_json::{Map, Value, json};

use super::*;

fn tiny_catalogue(checkpoints: &[&str]) -> Value {
    json!({
        "CheckpointLoaderSimple": {
            "input": {"required": {"ckpt_name": [checkpoints, {}]}},
            "output": ["MODEL", "CLIP", "VAE"], "output_node": false
        },
        "PreviewAny": {
            "input": {"required": {"source": ["*", {}]}},
            "output": [], "output_node": true
        }
    })
}

fn graph(ckpt: &str) -> Map<String, Value> {
    let g = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    });
    g.as_object().unwrap().clone()
}

async fn publish(
    ports: &Ports,
    json: &[u8],
    source: &str,
) -> Result<CatalogueRef, jobs::DomainError> {
    let (store, blobs, clock) = (&ports.store, &ports.blobs, &ports.clock);
    catalogue::publish(store.as_ref(), blobs.as_ref(), clock.as_ref(), json, source).await
}

/// `ports.clock` must be `clock`.
pub async fn catalogues(ports: Ports, clock: Arc<ManualClock>) {
    let store = ports.store.as_ref();
    assert_eq!(
        store.get_catalogue_ref().await.unwrap(),
        None,
        "none at first"
    );
    let checks = Catalogues::default();
    assert_eq!(
        checks.check(&ports, &graph("x")).await.unwrap(),
        Verdict::Unchecked,
        "with no catalogue, a graph is accepted unchecked"
    );

    // The pointer round-trips exactly, and a later put moves it.
    let pointer = CatalogueRef {
        v: SCHEMA_VERSION,
        hash: format!("blake3:{}", "0".repeat(64)),
        size_bytes: 12,
        classes: 1,
        published_at: clock.now(),
        source: "runner:w-1 http://127.0.0.1:8188".into(),
    };
    store.put_catalogue_ref(&pointer).await.unwrap();
    assert_eq!(
        store.get_catalogue_ref().await.unwrap(),
        Some(pointer.clone())
    );
    let moved = CatalogueRef {
        hash: format!("blake3:{}", "1".repeat(64)),
        source: "file:seed.json".into(),
        ..pointer.clone()
    };
    store.put_catalogue_ref(&moved).await.unwrap();
    assert_eq!(store.get_catalogue_ref().await.unwrap(), Some(moved));
    // A pointer whose blob is missing: accepted unchecked, never a 5xx.
    assert_eq!(
        checks.check(&ports, &graph("x")).await.unwrap(),
        Verdict::Unchecked
    );

    // Publishing: the same content in other whitespace is one blob under one hash.
    let one = tiny_catalogue(&["a.safetensors"]);
    let pretty = serde_json::to_vec_pretty(&one).unwrap();
    let compact = serde_json::to_vec(&one).unwrap();
    let first = publish(&ports, &pretty, "runner:w-1").await.unwrap();
    clock.advance(Duration::seconds(5));
    let second = publish(&ports, &compact, "runner:w-2").await.unwrap();
    assert_eq!(first.hash, second.hash, "content-addressed");
    assert_eq!(first.classes, 2);
    assert_eq!(second.size_bytes, compact.len() as u64);
    assert!(
        second.published_at > first.published_at,
        "the pointer moved"
    );
    assert_eq!(second.source, "runner:w-2");
    let key = jobs::blob_keys::catalogue(&first.hash);
    assert_eq!(
        ports.blobs.get(&key).await.unwrap().as_deref(),
        Some(&compact[..]),
        "stored once, compact"
    );
    let (latest, bytes) = catalogue::latest_json(&ports).await.unwrap().unwrap();
    assert_eq!(latest, second);
    assert_eq!(&bytes[..], &compact[..]);

    // Submit's check: refused with ComfyUI's node_errors, passed when installed.
    assert_eq!(
        checks.check(&ports, &graph("a.safetensors")).await.unwrap(),
        Verdict::Passed
    );
    let refused = checks
        .check(&ports, &graph("b.safetensors"))
        .await
        .unwrap_err();
    assert_eq!(refused.code, "invalid_workflow");
    let details = refused.details.as_deref().unwrap();
    assert_eq!(details["catalogue"], json!(first.hash));
    assert_eq!(
        details["node_errors"]["1"]["errors"][0]["type"],
        "value_not_in_list"
    );

    // A new catalogue (a model installed): the parsed copy follows the pointer.
    let two = publish(
        &ports,
        &serde_json::to_vec(&tiny_catalogue(&["a.safetensors", "b.safetensors"])).unwrap(),
        "url:http://gpu:8188",
    )
    .await
    .unwrap();
    assert_ne!(two.hash, first.hash);
    assert_eq!(
        checks.check(&ports, &graph("b.safetensors")).await.unwrap(),
        Verdict::Passed
    );
    assert!(
        ports.blobs.get(&key).await.unwrap().is_some(),
        "the older catalogue stays"
    );

    // Not a catalogue: refused, and the pointer stays.
    for bad in [&b"not json"[..], b"[]", b"{}", b"{\"A\": 1}"] {
        let e = publish(&ports, bad, "file:bad").await.unwrap_err();
        assert_eq!(
            e.code,
            "invalid_catalogue",
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        store.get_catalogue_ref().await.unwrap().unwrap().hash,
        two.hash
    );
}
