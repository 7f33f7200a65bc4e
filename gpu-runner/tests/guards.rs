//! The runner's own guards, for jobs that did not come through submit's validation (a
//! crafted queue entry, an older server): no server path reaches ComfyUI, no server
//! path reaches a client, and a job may opt out of ComfyUI's shared cache.

mod common;

use bytes::Bytes;
use common::*;
use gpu_runner::EngineSpec;
use jobs::model::{JobId, JobInput, JobStatus, SCHEMA_VERSION};
use serde_json::{Map, Value, json};

fn attach(sim: &comfyui_sim::SimHandle) -> EngineSpec {
    EngineSpec::Attach {
        url: sim.base_url(),
    }
}

/// Replaces a queued job's stored workflow, as if it had never been validated.
async fn tamper(env: &Env, id: &JobId, workflow: Value) {
    let Value::Object(workflow) = workflow else {
        panic!("an object")
    };
    let input = JobInput {
        v: SCHEMA_VERSION,
        workflow,
        extra_data: None,
        cache_bypass: false,
    };
    let job = env.job(id).await;
    env.ports
        .blobs
        .put(
            &job.input_key,
            Bytes::from(serde_json::to_vec(&input).unwrap()),
            "application/json",
        )
        .await
        .unwrap();
}

/// Embedded fixtures (tests read nothing outside the repository).
fn invert() -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 16711680}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "invert"}},
    })
}

fn load_blur(image: Value) -> Value {
    json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 3, "sigma": 1.5}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "blurred"}},
    })
}

fn txt2img(steps: u32, seed: u64) -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 8, "sampler_name": "euler", "scheduler": "normal", "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    })
}

async fn history(sim: &comfyui_sim::SimHandle) -> Map<String, Value> {
    reqwest::get(format!("{}/history", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_job_is_failed_before_comfyui_sees_it() {
    let env = Env::new();
    let sim = sim(20).await;
    let crafted = [
        (
            json!({
                "10": {"class_type": "LoadImage", "inputs": {"image": "/etc/hostname"}},
                "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
            }),
            "unsafe_file_input",
            "10",
        ),
        (
            json!({
                "10": {"class_type": "LoadImage", "inputs": {"image": "x.png [output]"}},
                "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
            }),
            "unsafe_file_input",
            "10",
        ),
        (
            json!({
                "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                "..": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
            }),
            "invalid_node_id",
            "..",
        ),
    ];
    let mut ids = Vec::new();
    for (workflow, code, node) in crafted {
        let id = env.submit(&invert()).await;
        tamper(&env, &id, workflow).await;
        ids.push((id, code, node));
    }
    let runner = start_runner(&env, attach(&sim), test_config());
    for (id, code, node) in ids {
        let job = env.wait_terminal(&id).await;
        assert_eq!(job.status, JobStatus::Failed);
        let e = job.error.unwrap();
        assert_eq!(
            (e.code.as_str(), e.node_id.as_deref()),
            (code, Some(node)),
            "{e:?}"
        );
        assert_eq!(job.attempt, 1, "failed, not retried");
    }
    assert!(history(&sim).await.is_empty(), "ComfyUI never got them");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_errors_reach_clients_without_server_paths() {
    let env = Env::new();
    let sim = sim(20).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let asset = env.asset(b"not an image".to_vec(), "photo.png").await;
    let wf = load_blur(json!({"__type": "core/ASSET", "info": {"id": asset}}));
    let id = env.submit(&wf).await;
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Failed);
    let e = job.error.unwrap();
    assert_eq!(e.code, "node_execution_error", "{e:?}");
    // The simulator, like ComfyUI, names the absolute path of the staged file.
    assert!(
        e.message.contains("cannot identify image file '<path>'"),
        "{e:?}"
    );
    let dir = sim.input_dir().to_string_lossy().to_string();
    let text = serde_json::to_string(&e).unwrap();
    assert!(!text.contains(&dir), "{text}");
    runner.stop().await;
}

/// The nodes ComfyUI served from its cache for the job's prompt.
fn cached_nodes(history: &Map<String, Value>, id: &JobId) -> Vec<String> {
    let entry = history
        .values()
        .find(|h| h["prompt"][2].to_string().contains(id.as_str()))
        .unwrap_or_else(|| panic!("no prompt of {id}"));
    let messages = entry["status"]["messages"].as_array().unwrap();
    let cached = messages
        .iter()
        .find(|m| m[0] == "execution_cached")
        .expect("execution_cached");
    serde_json::from_value(cached[1]["nodes"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_bypass_runs_every_node_again() {
    let env = Env::new();
    let sim = sim(5).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let wf = txt2img(3, 42);
    let submit = |bypass: bool| {
        let mut body = json!({ "workflow": wf });
        if bypass {
            body["x-serverless-comfyui"] = json!({"cache": "bypass"});
        }
        let jobs = env.jobs.clone();
        async move {
            let s = jobs
                .submit(TENANT, &serde_json::to_vec(&body).unwrap(), None)
                .await
                .unwrap();
            JobId::parse(&s.job.id).unwrap()
        }
    };
    let mut ids = Vec::new();
    for bypass in [false, false, true, true] {
        let id = submit(bypass).await;
        let job = env.wait_terminal(&id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
        ids.push(id);
    }
    let h = history(&sim).await;
    // Shared (the default): the second identical job reuses the first one's sampler.
    assert!(cached_nodes(&h, &ids[1]).contains(&"3".to_string()));
    // Bypass: nothing of the fourth comes from the cache, though the third just ran it.
    assert_eq!(cached_nodes(&h, &ids[3]), Vec::<String>::new());
    runner.stop().await;
}

/// Every file under `dir` (recursively).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().to_string_lossy().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_files_leave_comfyuis_folders_when_it_ends() {
    let env = Env::new();
    let sim = sim(50).await;
    std::fs::write(sim.input_dir().join("example.png"), red_png(4, 4)).unwrap();
    let config = gpu_runner::RunnerConfig {
        // The runner owns the simulator's folders, as in the GPU container.
        comfyui_dirs: Some(gpu_runner::ComfyDirs {
            input: sim.input_dir().to_path_buf(),
            output: sim.output_dir().to_path_buf(),
            temp: sim.temp_dir().to_path_buf(),
        }),
        ..test_config()
    };
    let runner = start_runner(&env, attach(&sim), config);
    let photo = env.asset(red_png(8, 8), "photo.png").await;
    let broken = env.asset(b"not an image".to_vec(), "broken.png").await;
    let asset = |id: &str| json!({"__type": "core/ASSET", "info": {"id": id}});
    // Succeeds, with an output and a temp preview.
    let mut ok = load_blur(asset(&photo));
    ok["14"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}});
    // Fails at LoadImage, after its input was staged.
    let failing = load_blur(asset(&broken));
    // Canceled while the sampler runs, after a SaveImage of its staged input.
    let mut canceled = txt2img(200, 9);
    canceled["20"] = load_blur(asset(&photo))["10"].clone();
    canceled["21"] = json!({"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "early"}});
    let a = env.submit(&ok).await;
    assert_eq!(env.wait_terminal(&a).await.status, JobStatus::Succeeded);
    let b = env.submit(&failing).await;
    assert_eq!(env.wait_terminal(&b).await.status, JobStatus::Failed);
    let c = env.submit(&canceled).await;
    env.wait_for(&c, "running", is_status(JobStatus::Running))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    env.cancel(&c).await;
    assert_eq!(env.wait_terminal(&c).await.status, JobStatus::Canceled);
    // The cleanup follows the commit: wait for it (bounded).
    let mut left = Vec::new();
    for _ in 0..200 {
        left = [sim.input_dir(), sim.output_dir(), sim.temp_dir()]
            .into_iter()
            .flat_map(files_under)
            .filter(|f| !f.ends_with("/example.png"))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(left, Vec::<String>::new(), "nothing of the jobs is left");
    assert!(
        sim.input_dir().join("example.png").exists(),
        "shipped files stay"
    );
    runner.stop().await;
}
