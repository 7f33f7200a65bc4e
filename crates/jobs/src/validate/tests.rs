use super::*;
use crate::error::ErrorKind;

#[test]
fn duplicate_keys_are_refused_at_any_depth() {
    let e = parse_json_strict(br#"{"workflow": {"1": {"a": 1, "a": 2}}}"#).unwrap_err();
    assert_eq!(e.code, "invalid_request");
    assert!(e.message.contains("duplicate key \"a\""), "{}", e.message);
}

#[test]
fn cycle_is_found_on_a_long_chain_without_recursion() {
    let mut graph = Map::new();
    let n = 5000;
    for i in 0..n {
        let source = (i + 1) % n;
        graph.insert(
            i.to_string(),
            json!({"class_type": "X", "inputs": {"x": [source.to_string(), 0]}}),
        );
    }
    let e = validate_workflow(Value::Object(graph)).unwrap_err();
    assert_eq!(e.code, "invalid_workflow");
    assert!(e.message.contains("cycle"));
}

fn ring(n: usize) -> Value {
    let mut graph = Map::new();
    for i in 0..n {
        graph.insert(
            i.to_string(),
            json!({"class_type": "X", "inputs": {"x": [((i + 1) % n).to_string(), 0]}}),
        );
    }
    Value::Object(graph)
}

/// The size of the error as a client receives it.
fn body_len(e: &DomainError) -> usize {
    serde_json::to_vec(
        &json!({"error": {"code": e.code, "message": e.message, "details": e.details}}),
    )
    .unwrap()
    .len()
}

#[test]
fn a_ring_of_10000_nodes_is_named_once_in_a_small_answer() {
    let started = std::time::Instant::now();
    let e = validate_workflow(ring(MAX_NODES)).unwrap_err();
    assert_eq!(e.code, "invalid_workflow");
    assert_eq!(e.kind, ErrorKind::Unprocessable);
    let details = e.details.as_deref().unwrap();
    let node_errors = details["node_errors"].as_object().unwrap();
    assert_eq!(node_errors.len(), 1, "one entry names the cycle: {details}");
    let message = node_errors.values().next().unwrap()[0]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("cycle of 10000 node(s)"), "{message}");
    assert!(body_len(&e) < 4 * 1024, "{} bytes", body_len(&e));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn more_than_max_nodes_is_workflow_too_large() {
    let mut graph = Map::new();
    for i in 0..=MAX_NODES {
        graph.insert(i.to_string(), json!({"class_type": "X", "inputs": {}}));
    }
    let e = validate_workflow(Value::Object(graph)).unwrap_err();
    assert_eq!(e.code, "workflow_too_large");
    assert_eq!(e.details.as_deref().unwrap()["max_nodes"], MAX_NODES);
}

#[test]
fn many_errors_are_listed_up_to_the_cap_and_counted() {
    let mut graph = Map::new();
    let long = "y".repeat(100_000);
    for i in 0..MAX_NODES {
        // Two problems per node, one quoting a 100 KB link source.
        graph.insert(i.to_string(), json!({"inputs": {"x": [long.clone(), 0]}}));
    }
    let e = validate_workflow(Value::Object(graph)).unwrap_err();
    let details = e.details.as_deref().unwrap();
    let listed: usize = details["node_errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_array().unwrap().len())
        .sum();
    assert_eq!(listed, MAX_REPORTED_ERRORS);
    assert_eq!(
        details["omitted_errors"],
        2 * MAX_NODES - MAX_REPORTED_ERRORS,
        "{}",
        e.message
    );
    assert!(e.message.contains("19999 more problem(s)"), "{}", e.message);
    assert!(body_len(&e) < 64 * 1024, "{} bytes", body_len(&e));
}

fn load_image(value: Value) -> Value {
    json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": value}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
    })
}

#[test]
fn file_inputs_take_only_bare_names() {
    for bad in [
        "../../etc/hostname",
        "/etc/hostname",
        "x.png [output]",
        "x.png[temp]",
        "a\\b",
        "sub/x.png",
        "..",
        "a\0b",
        "C:\\Windows\\win.ini",
        "asset_01JD0000000000000000000000_photo.png",
        "",
    ] {
        let e = validate_workflow(load_image(json!(bad))).unwrap_err();
        assert_eq!(e.code, "invalid_workflow", "{bad:?}");
        let entry = &e.details.as_deref().unwrap()["node_errors"]["10"][0];
        assert_eq!(entry["field"], "image", "{bad:?}: {entry}");
        assert_eq!(entry["reason"], "unsafe_file_input", "{bad:?}: {entry}");
        assert!(e.message.contains("node 10 input `image`"), "{}", e.message);
    }
    for good in ["example.png", "photo 1 (2).png", "a.b.png"] {
        validate_workflow(load_image(json!(good))).unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
    // Uploads (core/ASSET) and other classes' plain strings are untouched...
    validate_workflow(load_image(
        json!({"__type": "core/ASSET", "info": {"id": "asset_1"}}),
    ))
    .unwrap();
    let text = json!({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a/b/../c"}}});
    validate_workflow(text).unwrap();
    // ...but an annotation is refused on any input: custom nodes resolve them too.
    let custom = json!({"1": {"class_type": "MyLoader", "inputs": {"path": "x.png [output]"}}});
    let e = validate_workflow(custom).unwrap_err();
    assert_eq!(
        e.details.as_deref().unwrap()["node_errors"]["1"][0]["field"],
        "path"
    );
    // A file input's value must be known at submit: no link, no other object.
    let linked = json!({
        "1": {"class_type": "MyPathNode", "inputs": {}},
        "10": {"class_type": "LoadImage", "inputs": {"image": ["1", 0]}},
    });
    let e = validate_workflow(linked).unwrap_err();
    assert_eq!(
        e.details.as_deref().unwrap()["node_errors"]["10"][0]["reason"],
        "unsafe_file_input"
    );
    assert!(validate_workflow(load_image(json!({"__value__": "/etc/hostname"}))).is_err());
    // LoadImageMask is a file input too.
    let mask = json!({"1": {"class_type": "LoadImageMask", "inputs": {"image": "/etc/passwd", "channel": "alpha"}}});
    assert!(validate_workflow(mask).is_err());
}

#[test]
fn the_runner_check_finds_the_same_inputs() {
    let Value::Object(bad) = load_image(json!("../main.py")) else {
        unreachable!()
    };
    let (node, input, message) = first_unsafe_input(&bad).unwrap();
    assert_eq!((node.as_str(), input.as_deref()), ("10", Some("image")));
    assert!(message.contains("`..`"), "{message}");
    let Value::Object(good) = load_image(json!("example.png")) else {
        unreachable!()
    };
    assert_eq!(first_unsafe_input(&good), None);
    let Value::Object(dots) = json!({"..": {"class_type": "SaveImage", "inputs": {}}}) else {
        unreachable!()
    };
    assert_eq!(first_unsafe_input(&dots).unwrap().0, "..");
}

#[test]
fn node_ids_are_checked() {
    for bad in ["..", ".", "a/b", "a b", "", &"9".repeat(65), "é"] {
        let wf = json!({ bad: {"class_type": "SaveImage", "inputs": {}} });
        let e = validate_workflow(wf).unwrap_err();
        let errors = e.details.as_deref().unwrap()["node_errors"]
            .as_object()
            .unwrap();
        let entry = &errors.values().next().unwrap()[0];
        assert_eq!(entry["reason"], "invalid_node_id", "{bad:?}: {entry}");
        assert!(errors.keys().all(|k| k.len() <= MAX_NODE_ID_BYTES + 3));
    }
    for good in ["3", "12:5", "load_image-1.a", &"9".repeat(64)] {
        let wf = json!({ good: {"class_type": "SaveImage", "inputs": {}} });
        validate_workflow(wf).unwrap_or_else(|e| panic!("{good}: {e:?}"));
    }
}

#[test]
fn the_cache_extension_is_parsed() {
    let wf = json!({"1": {"class_type": "A", "inputs": {}}});
    let s = parse_submission(json!({"workflow": wf})).unwrap();
    assert!(!s.cache_bypass);
    let s = parse_submission(json!({"workflow": wf, "x-serverless-comfyui": {"cache": "bypass"}}))
        .unwrap();
    assert!(s.cache_bypass);
    for bad in [
        json!("bypass"),
        json!({"cache": "off"}),
        json!({"other": 1}),
    ] {
        let e = parse_submission(json!({"workflow": wf, "x-serverless-comfyui": bad})).unwrap_err();
        assert_eq!(e.code, "invalid_extension");
    }
}

#[test]
fn clip_cuts_on_a_char_boundary() {
    assert_eq!(clip("abc", 3), "abc");
    assert_eq!(clip("ééé", 5), "é…");
    assert!(clip(&"x".repeat(1000), 10).len() <= 10);
}

#[test]
fn asset_references_are_found() {
    let wf = json!({"10": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "asset_1"}}}}});
    let Value::Object(wf) = wf else {
        unreachable!()
    };
    assert_eq!(
        asset_references(&wf),
        vec![("10".to_string(), "image".to_string(), "asset_1".to_string())]
    );
}
