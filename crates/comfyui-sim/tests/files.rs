//! LoadImage resolves names like ComfyUI (`folder_paths.get_annotated_filepath`: joined
//! to the input folder, no containment check), so the tests of the project's guards
//! prove the guards and not the double; but the double caps what it reads.

use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

fn load(name: &str) -> Value {
    json!({"prompt": {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    }})
}

/// Submits and waits (bounded) for the prompt's history entry.
async fn run(url: &str, prompt: Value) -> Value {
    let c = reqwest::Client::new();
    let r: Value = c
        .post(format!("{url}/prompt"))
        .json(&prompt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["prompt_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let h: Value = c
            .get(format!("{url}/history/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(entry) = h.get(&id) {
            return entry.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("prompt {id} never ended");
}

fn error_message(entry: &Value) -> String {
    let messages = entry["status"]["messages"].as_array().unwrap();
    let (_, data) = messages
        .iter()
        .map(|m| (m[0].as_str().unwrap(), &m[1]))
        .find(|(n, _)| *n == "execution_error")
        .unwrap_or_else(|| panic!("no execution_error: {entry}"));
    data["exception_message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_image_reads_outside_the_input_folder_like_comfyui() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let url = sim.base_url();
    // Not an image, but the double opened it: no sandbox of its own.
    let depth = sim.input_dir().components().count();
    let up = "../".repeat(depth) + "etc/hostname";
    for name in ["/etc/hostname", up.as_str()] {
        let message = error_message(&run(&url, load(name)).await);
        assert!(
            message.contains("cannot identify image file"),
            "{name}: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_image_of_dev_zero_ends_with_an_error() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let started = Instant::now();
    let entry = tokio::time::timeout(
        Duration::from_secs(30),
        run(&sim.base_url(), load("/dev/zero")),
    )
    .await
    .expect("the simulator does not read /dev/zero forever");
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
