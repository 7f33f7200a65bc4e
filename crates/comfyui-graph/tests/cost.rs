//! What a check costs against a catalogue of real size (run by hand, it prints):
//! `cargo test -p comfyui-graph --test cost -- --ignored --nocapture`.
//!
//! The catalogue: the simulator's 19 classes, each copied 40 times under other names
//! (760 classes, about what a ComfyUI with a dozen custom node packs lists), and
//! checkpoint and LoRA combos of 400 and 2,000 file names: a few MB of JSON, like a
//! real server's `/object_info`.

use std::time::Instant;

use comfyui_graph::{ObjectInfo, check};
use serde_json::{Map, Value, json};

fn real_size_catalogue() -> Vec<u8> {
    let sim: Map<String, Value> =
        serde_json::from_slice(include_bytes!("fixtures/object_info.sim.json")).unwrap();
    let mut all = Map::new();
    let checkpoints: Vec<String> = (0..400)
        .map(|i| format!("family-{}/model-{i:04}-fp16.safetensors", i % 17))
        .chain(["v1-5-pruned-emaonly.safetensors".to_string()])
        .collect();
    let loras: Vec<String> = (0..2000)
        .map(|i| format!("loras/style-{i:05}.safetensors"))
        .collect();
    for copy in 0..40 {
        for (name, rec) in &sim {
            let mut rec = rec.clone();
            if name == "CheckpointLoaderSimple" {
                rec["input"]["required"]["ckpt_name"][0] = json!(checkpoints);
            }
            let name = if copy == 0 {
                name.clone()
            } else {
                format!("{name}_pack{copy}")
            };
            all.insert(name, rec);
        }
    }
    all.insert(
        "LoraLoader".into(),
        json!({"input": {"required": {
            "model": ["MODEL", {}], "clip": ["CLIP", {}],
            "lora_name": [loras, {}],
            "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}],
            "strength_clip": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0}]}},
            "output": ["MODEL", "CLIP"], "output_node": false}),
    );
    serde_json::to_vec(&Value::Object(all)).unwrap()
}

#[test]
#[ignore = "a measurement; run by hand"]
fn check_cost_on_a_real_size_catalogue() {
    let bytes = real_size_catalogue();
    let t = Instant::now();
    let catalogue = ObjectInfo::from_slice(&bytes).unwrap();
    let parse = t.elapsed();
    let mut graph: Map<String, Value> = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/../../examples/workflows/txt2img-sd15.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    // A LoRA between the checkpoint and the sampler, as typical graphs have.
    graph.insert(
        "10".into(),
        json!({"class_type": "LoraLoader", "inputs": {
        "model": ["4", 0], "clip": ["4", 1], "lora_name": "loras/style-01999.safetensors",
        "strength_model": 0.8, "strength_clip": 0.8}}),
    );
    graph["3"]["inputs"]["model"] = json!(["10", 0]);
    graph["6"]["inputs"]["clip"] = json!(["10", 1]);
    graph["7"]["inputs"]["clip"] = json!(["10", 1]);
    assert_eq!(check(&catalogue, &graph), None);
    let runs = 2000;
    let t = Instant::now();
    for _ in 0..runs {
        assert!(check(&catalogue, &graph).is_none());
    }
    let per_check = t.elapsed() / runs;
    let mut bad = graph.clone();
    bad["10"]["inputs"]["lora_name"] = json!("loras/missing.safetensors");
    let t = Instant::now();
    for _ in 0..runs {
        assert!(check(&catalogue, &bad).is_some());
    }
    let per_refusal = t.elapsed() / runs;
    println!(
        "catalogue: {} bytes, {} classes; parse {parse:?}; check of a {}-node graph: {per_check:?} passed, {per_refusal:?} refused ({})",
        bytes.len(),
        catalogue.len(),
        graph.len(),
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "optimised build"
        }
    );
}
