//! The checker over a real, full-size node catalogue: the `/object_info` of a real
//! ComfyUI 0.8.0 with VideoHelperSuite (608 classes, COMBO inputs in the newer
//! `["COMBO", {"options": [...]}]` spelling; `crates/comfyui-sim/tests/captures/`),
//! against the project's example workflows. What that server could run passes; what it
//! could not (no checkpoint installed) is refused on the right node, in ComfyUI's shape.

use std::io::Read;

use comfyui_graph::{ObjectInfo, check};
use serde_json::{Map, Value};

fn real_catalogue() -> ObjectInfo {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../comfyui-sim/tests/captures/object_info_real.json.gz"
    );
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("the capture is there"))
        .read_to_end(&mut json)
        .expect("gzip");
    ObjectInfo::from_slice(&json).expect("a real /object_info parses")
}

fn example(name: &str) -> Map<String, Value> {
    let path = format!(
        "{}/../../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    match serde_json::from_slice(&std::fs::read(&path).expect("example")).expect("JSON") {
        Value::Object(graph) => graph,
        _ => panic!("{name} is not an API-format graph"),
    }
}

#[test]
fn the_media_examples_pass_a_real_catalogue() {
    let catalogue = real_catalogue();
    for name in ["video-core.json", "video-vhs.json", "audio.json"] {
        assert_eq!(check(&catalogue, &example(name)), None, "{name}");
    }
}

#[test]
fn a_checkpoint_that_is_not_installed_is_refused_on_its_loader() {
    let refused = check(&real_catalogue(), &example("txt2img-sd15.json"))
        .expect("the real server had no checkpoint installed");
    let loader = refused["node_errors"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, e)| e["class_type"] == "CheckpointLoaderSimple")
        .map(|(_, e)| e.clone())
        .unwrap_or_else(|| panic!("the loader is named: {refused}"));
    let error = &loader["errors"][0];
    assert_eq!(error["type"], "value_not_in_list", "{refused}");
    assert_eq!(error["extra_info"]["input_name"], "ckpt_name", "{refused}");
}

#[test]
fn a_typo_in_a_class_name_is_refused_against_the_real_catalogue() {
    let mut graph = example("video-vhs.json");
    let node = graph.values_mut().next().unwrap();
    node["class_type"] = Value::String("EmptyImagee".into());
    let refused = check(&real_catalogue(), &graph).expect("an unknown class");
    assert_eq!(refused["error"]["type"], "invalid_prompt", "{refused}");
}
