//! Video and audio outputs as a real ComfyUI reports them (0.8.0 with
//! VideoHelperSuite, on CPU: `crates/comfyui-sim/tests/captures/real/`), read by the
//! same code the runner uses: every saved file is found, with the kind and content
//! type the API will show, and nothing else (VHS's `workflow` PNG name and `fullpath`
//! are fields of the video, not outputs).

use comfyui::{OutputKind, collect_outputs, mime_type};
use serde_json::Value;

fn history_outputs(capture: &str) -> serde_json::Map<String, Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../comfyui-sim/tests/captures/real")
        .join(capture);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let capture: Value = serde_json::from_str(&text).expect("a capture is JSON");
    let body = capture["history"]["body"]
        .as_object()
        .expect("the history answer is an object keyed by prompt id");
    let (_, entry) = body.iter().next().expect("one prompt in the history");
    entry["outputs"].as_object().expect("outputs").clone()
}

/// (node, key, file name, kind, content type) of every file output.
fn files(capture: &str) -> Vec<(String, String, String, OutputKind, &'static str)> {
    let outputs = collect_outputs(&history_outputs(capture));
    assert!(outputs.texts.is_empty(), "{capture}: no text outputs");
    outputs
        .files
        .iter()
        .map(|f| {
            (
                f.node_id.clone(),
                f.key.clone(),
                f.file.filename.clone(),
                f.kind,
                mime_type(&f.file.filename),
            )
        })
        .collect()
}

#[test]
fn core_save_video_is_one_mp4_listed_under_images() {
    assert_eq!(
        files("real_video_core.json"),
        vec![(
            "3".into(),
            "images".into(),
            "clip_00001_.mp4".into(),
            OutputKind::Video,
            "video/mp4"
        )]
    );
}

#[test]
fn videohelpersuite_combine_is_one_mp4_listed_under_gifs() {
    assert_eq!(
        files("real_video_vhs.json"),
        vec![(
            "3".into(),
            "gifs".into(),
            "vhs_00001.mp4".into(),
            OutputKind::Video,
            "video/mp4"
        )]
    );
}

#[test]
fn core_save_audio_is_one_flac() {
    assert_eq!(
        files("real_audio.json"),
        vec![(
            "2".into(),
            "audio".into(),
            "clip_00001_.flac".into(),
            OutputKind::Audio,
            "audio/flac"
        )]
    );
}
