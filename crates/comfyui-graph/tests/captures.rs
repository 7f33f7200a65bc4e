//! The checker over a parsed `/object_info` ([`ObjectInfo`]) against what a real ComfyUI
//! 0.3.64 answered (crates/comfyui-sim/tests/captures/), and the attacks submit must
//! refuse. The catalogue fixture (`fixtures/object_info.sim.json`) is the simulator's
//! `/object_info`, whose records copy the real server's (started with
//! `--checkpoint v1-5-pruned-emaonly-fp16.safetensors`).

use comfyui_graph::{Catalogue, ObjectInfo, check};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn catalogue() -> ObjectInfo {
    ObjectInfo::from_slice(include_bytes!("fixtures/object_info.sim.json")).unwrap()
}

fn capture(name: &str) -> Value {
    let path = format!(
        "{}/../comfyui-sim/tests/captures/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn graph(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not a graph"),
    }
}

/// Python walks a node's inputs in set order, and tracebacks name the server's paths.
fn norm(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match k.as_str() {
                        "traceback" => json!("<traceback>"),
                        "errors" => {
                            let mut a: Vec<Value> =
                                x.as_array().unwrap().iter().map(norm).collect();
                            a.sort_by_key(|e| e.to_string());
                            Value::Array(a)
                        }
                        _ => norm(x),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(norm).collect()),
        other => other.clone(),
    }
}

#[test]
fn answers_as_the_real_comfyui_did() {
    let cat = catalogue();
    for name in ["bad_class", "bad_link", "bad_value", "missing_input"] {
        let cap = capture(name);
        let got = check(&cat, &graph(cap["request_body"]["prompt"].clone()))
            .unwrap_or_else(|| panic!("{name}: accepted"));
        assert_eq!(norm(&got), norm(&cap["post"]["body"]), "{name}");
    }
}

#[test]
fn an_upload_input_is_left_to_the_runner_and_the_rest_is_as_real() {
    // The real server also refused LoadImage's missing file (custom validation); at
    // submit the file is not uploaded yet, so only the bad combo is reported.
    let cap = capture("bad_combo");
    let got = check(&catalogue(), &graph(cap["request_body"]["prompt"].clone())).unwrap();
    let mut want = cap["post"]["body"].clone();
    want["node_errors"].as_object_mut().unwrap().remove("10");
    assert_eq!(norm(&got), norm(&want));
}

fn txt2img() -> Map<String, Value> {
    let bytes = std::fs::read(format!(
        "{}/../../examples/workflows/txt2img-sd15.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    graph(serde_json::from_slice(&bytes).unwrap())
}

#[test]
fn a_checkpoint_not_installed_is_value_not_in_list() {
    let got = check(&catalogue(), &txt2img()).expect("refused");
    let node = &got["node_errors"]["4"];
    assert_eq!(node["class_type"], "CheckpointLoaderSimple");
    assert_eq!(node["dependent_outputs"], json!(["9"]));
    let e = &node["errors"][0];
    assert_eq!(e["type"], "value_not_in_list");
    assert_eq!(
        e["details"],
        "ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in ['v1-5-pruned-emaonly-fp16.safetensors']"
    );
    assert_eq!(got["error"]["type"], "prompt_outputs_failed_validation");

    let mut installed = txt2img();
    installed["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
    assert_eq!(check(&catalogue(), &installed), None);
}

#[test]
fn a_typo_in_a_class_is_invalid_prompt() {
    let mut g = txt2img();
    g["3"]["class_type"] = json!("KSamplr");
    let got = check(&catalogue(), &g).unwrap();
    assert_eq!(got["error"]["type"], "invalid_prompt");
    assert_eq!(
        got["error"]["message"],
        "Cannot execute because node KSamplr does not exist."
    );
    assert_eq!(got["error"]["details"], "Node ID '#3'");
}

#[test]
fn numbers_out_of_range_wrong_types_and_missing_slots() {
    let mut g = txt2img();
    g["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
    g["3"]["inputs"]["steps"] = json!(100_000);
    g["3"]["inputs"]["cfg"] = json!(-1.5);
    let got = check(&catalogue(), &g).unwrap();
    let messages: Vec<&str> = got["node_errors"]["3"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "Value 100000 bigger than max of 10000",
            "Value -1.5 smaller than min of 0.0"
        ]
    );

    // The model input fed from the checkpoint's CLIP output (slot 1).
    let mut g = txt2img();
    g["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
    g["3"]["inputs"]["model"] = json!(["4", 1]);
    let got = check(&catalogue(), &g).unwrap();
    let e = &got["node_errors"]["3"]["errors"][0];
    assert_eq!(e["type"], "return_type_mismatch");
    assert_eq!(
        e["details"],
        "model, received_type(CLIP) mismatch input_type(MODEL)"
    );

    // A slot the checkpoint loader does not have (it has three outputs). ComfyUI files
    // the IndexError under the node that reads the link, with its consumer's input.
    g["3"]["inputs"]["model"] = json!(["4", 7]);
    let got = check(&catalogue(), &g).unwrap();
    let e = &got["node_errors"]["3"]["errors"][0];
    assert_eq!(e["type"], "exception_during_inner_validation");
    assert_eq!(e["extra_info"]["exception_type"], "IndexError");
    assert_eq!(
        e["extra_info"]["exception_message"],
        "tuple index out of range"
    );
    assert_eq!(e["extra_info"]["input_name"], "samples");
}

#[test]
fn asset_references_and_newer_combo_spelling() {
    let mut g = graph(capture("bad_combo")["request_body"]["prompt"].clone());
    g["10"]["inputs"]["image"] = json!({"__type": "core/ASSET", "info": {"id": "asset_01"}});
    g["11"]["inputs"]["upscale_method"] = json!("area");
    assert_eq!(check(&catalogue(), &g), None);

    // Newer servers: ["COMBO", {"options": [...]}].
    let cat = ObjectInfo::from_value(json!({
        "Pick": {"input": {"required": {"m": ["COMBO", {"options": ["a.safetensors"]}]}},
                 "output": [], "output_node": true}
    }))
    .unwrap();
    let ok = graph(json!({"1": {"class_type": "Pick", "inputs": {"m": "a.safetensors"}}}));
    assert_eq!(check(&cat, &ok), None);
    let bad = graph(json!({"1": {"class_type": "Pick", "inputs": {"m": "b.safetensors"}}}));
    let got = check(&cat, &bad).unwrap();
    assert_eq!(
        got["node_errors"]["1"]["errors"][0]["type"],
        "value_not_in_list"
    );
}

#[test]
fn a_catalogue_that_is_not_one_is_refused() {
    assert!(ObjectInfo::from_slice(b"[]").is_err());
    assert!(ObjectInfo::from_slice(b"{}").is_err());
    assert!(ObjectInfo::from_slice(b"{\"A\": 3}").is_err());
    assert!(ObjectInfo::from_slice(b"not json").is_err());
    assert_eq!(catalogue().len(), 19);
    assert_eq!(catalogue().output_node("SaveImage"), Some(true));
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-zA-Z0-9_. ]{0,12}".prop_map(Value::String),
        prop_oneof![Just("1"), Just("2"), Just("4"), Just("9")].prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any input value, anywhere: an answer (never a panic), and every refusal in
    /// ComfyUI's shape, each node error naming its class and the outputs it blocks.
    #[test]
    fn any_graph_gets_an_answer_in_comfyuis_shape(
        node in prop::sample::select(vec!["3", "4", "5", "6", "8", "9"]),
        input in "[a-z_]{1,12}",
        value in arb_json(),
    ) {
        let mut g = txt2img();
        g["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
        g[node]["inputs"][&input] = value;
        if let Some(body) = check(&catalogue(), &g) {
            prop_assert!(body["error"]["type"].is_string());
            for (id, ne) in body["node_errors"].as_object().unwrap() {
                prop_assert!(g.contains_key(id));
                prop_assert_eq!(&ne["class_type"], &g[id]["class_type"]);
                prop_assert_eq!(&ne["dependent_outputs"], &json!(["9"]));
                prop_assert!(!ne["errors"].as_array().unwrap().is_empty());
            }
        }
    }

    /// EmptyLatentImage's width: accepted exactly within [16, 16384].
    #[test]
    fn a_number_is_accepted_exactly_within_its_bounds(w in -100i64..20_000) {
        let mut g = txt2img();
        g["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
        g["5"]["inputs"]["width"] = json!(w);
        let got = check(&catalogue(), &g);
        prop_assert_eq!(got.is_none(), (16..=16384).contains(&w));
        if let Some(body) = got {
            let t = &body["node_errors"]["5"]["errors"][0]["type"];
            prop_assert_eq!(t, if w < 16 { "value_smaller_than_min" } else { "value_bigger_than_max" });
        }
    }
}

#[test]
fn check_leaves_the_graph_as_sent_and_validate_prompt_coerces_as_comfyui() {
    let mut g = txt2img();
    g["4"]["inputs"]["ckpt_name"] = json!("v1-5-pruned-emaonly-fp16.safetensors");
    g["5"]["inputs"]["width"] = json!("64");
    g["3"]["inputs"]["cfg"] = json!({"__value__": 7});
    let sent = g.clone();
    assert_eq!(
        check(&catalogue(), &g),
        None,
        "\"64\" converts as ComfyUI converts it"
    );
    assert_eq!(g, sent);
    let verdict = comfyui_graph::validate_prompt(&mut g, None, &catalogue()).unwrap();
    assert!(verdict.is_ok());
    assert_eq!(g["5"]["inputs"]["width"], json!(64));
    assert_eq!(g["3"]["inputs"]["cfg"], json!(7.0));
    assert_eq!(g["6"]["inputs"]["text"], sent["6"]["inputs"]["text"]);
}
