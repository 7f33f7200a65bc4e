//! The video and audio nodes report their files as the real nodes do, and `/view`
//! serves real files: an MP4 whose boxes start `ftyp`, a RIFF WAV.

use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

fn workflow(name: &str) -> Value {
    let path = format!(
        "{}/../../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Submits and waits (bounded) for the prompt's outputs.
async fn outputs(url: &str, prompt: Value) -> Value {
    let c = reqwest::Client::new();
    let r: Value = c
        .post(format!("{url}/prompt"))
        .json(&json!({ "prompt": prompt }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["prompt_id"].as_str().unwrap_or_else(|| panic!("{r}"));
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let h: Value = reqwest::get(format!("{url}/history/{id}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(entry) = h.get(id) {
            assert_eq!(entry["status"]["status_str"], "success", "{entry}");
            return entry["outputs"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("prompt {id} never ended");
}

async fn view(url: &str, rec: &Value) -> (String, Vec<u8>) {
    let r = reqwest::Client::new()
        .get(format!("{url}/view"))
        .query(&[
            ("filename", rec["filename"].as_str().unwrap()),
            ("subfolder", rec["subfolder"].as_str().unwrap()),
            ("type", rec["type"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    (ct, r.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_and_audio_nodes_report_real_files_as_the_real_nodes_do() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let url = sim.base_url();

    // VideoHelperSuite: `gifs`, with format, frame_rate, workflow and a server fullpath.
    let out = outputs(&url, workflow("video-vhs.json")).await;
    let gifs = out["3"]["gifs"].as_array().unwrap();
    assert_eq!(gifs.len(), 1, "{out}");
    let g = &gifs[0];
    assert_eq!(g["filename"], "vhs_00001.mp4");
    assert_eq!(g["subfolder"], "");
    assert_eq!(g["type"], "output");
    assert_eq!(g["format"], "video/h264-mp4");
    assert_eq!(g["frame_rate"], json!(8.0));
    assert_eq!(g["workflow"], "vhs_00001.png");
    let fullpath = g["fullpath"].as_str().unwrap();
    assert!(fullpath.starts_with('/') && fullpath.ends_with("/vhs_00001.mp4"));
    let (ct, mp4) = view(&url, g).await;
    assert_eq!(&mp4[4..8], b"ftyp", "{ct}");
    assert!(mp4.windows(4).any(|w| w == b"avcC"));
    // The same prompt again is cached, as in ComfyUI: the same file.
    let again = outputs(&url, workflow("video-vhs.json")).await;
    assert_eq!(again["3"]["gifs"][0]["filename"], "vhs_00001.mp4");

    // Core SaveVideo: `images` with `animated: [true]`, under `video/`.
    let out = outputs(&url, workflow("video-core.json")).await;
    assert_eq!(out["3"]["animated"], json!([true]), "{out}");
    let rec = &out["3"]["images"][0];
    assert_eq!(rec["filename"], "clip_00001_.mp4");
    assert_eq!(rec["subfolder"], "video");
    let (_, mp4) = view(&url, rec).await;
    assert_eq!(&mp4[4..8], b"ftyp");

    // Core SaveAudio: `audio`, a WAV of half a second at 8 kHz mono.
    let out = outputs(&url, workflow("audio.json")).await;
    let rec = &out["2"]["audio"][0];
    assert_eq!(rec["filename"], "clip_00001_.wav", "{out}");
    assert_eq!(rec["subfolder"], "audio");
    let (_, wav) = view(&url, rec).await;
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(wav.len(), 44 + 4000 * 2);

    // A format the simulator cannot write is refused by validation, as a combo value.
    let mut bad = workflow("video-vhs.json");
    bad["3"]["inputs"]["format"] = json!("video/webm");
    let r = reqwest::Client::new()
        .post(format!("{url}/prompt"))
        .json(&json!({ "prompt": bad }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    sim.shutdown().await;
}
