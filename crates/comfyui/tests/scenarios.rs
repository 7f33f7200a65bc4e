//! The client against the simulator: the scenarios of issue 4.

use std::time::Duration;

use comfyui::{
    CancelMethod, CancelOutcome, Client, Error, Event, OutputKind, PromptOutcome, PromptRequest,
    RunOptions, StreamConfig, StreamItem, UploadOptions, api_workflow, as_event, new_prompt_id,
};
use comfyui_sim::{Faults, SimConfig, SimHandle, Simulator};
use serde_json::{Map, Value, json};

/// A guard against hangs, not a speed assertion.
const GUARD: Duration = Duration::from_secs(60);

async fn sim_with(cfg: SimConfig) -> (SimHandle, Client) {
    let sim = Simulator::start(cfg).await.unwrap();
    let client = Client::new(&sim.base_url())
        .unwrap()
        .with_client_id(format!("test-{}", new_prompt_id()));
    client.wait_ready(Duration::from_secs(10)).await.unwrap();
    (sim, client)
}

async fn sim() -> (SimHandle, Client) {
    sim_with(SimConfig::default()).await
}

fn wf(v: Value) -> Map<String, Value> {
    api_workflow(v).unwrap()
}

fn invert() -> Map<String, Value> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows/invert.json");
    wf(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
}

fn txt2img(steps: u32) -> Map<String, Value> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows/txt2img-sd15.json");
    let mut w = wf(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    w["3"]["inputs"]["steps"] = json!(steps);
    w["5"]["inputs"]["width"] = json!(64);
    w["5"]["inputs"]["height"] = json!(64);
    w
}

fn fast_opts() -> RunOptions {
    RunOptions {
        deadline: Some(GUARD),
        poll_interval: Duration::from_millis(500),
        stream: StreamConfig {
            backoff_initial: Duration::from_millis(50),
            max_reconnect_attempts: 4,
            ..StreamConfig::default()
        },
        ..RunOptions::default()
    }
}

async fn run(
    client: &Client,
    w: Map<String, Value>,
    opts: &RunOptions,
) -> (comfyui::Result<comfyui::PromptRun>, Vec<StreamItem>) {
    let mut items = Vec::new();
    let r = tokio::time::timeout(
        GUARD,
        client.run_prompt(&new_prompt_id(), w, opts, |i| items.push(i.clone())),
    )
    .await
    .expect("run_prompt must not hang");
    (r, items)
}

fn events(items: &[StreamItem]) -> Vec<&Event> {
    items.iter().filter_map(as_event).collect()
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut r = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    (info.width, info.height, buf)
}

#[tokio::test]
async fn normal_run_then_cached_run() {
    let (sim, client) = sim().await;
    assert_eq!(
        client.system_stats().await.unwrap()["simulator"]["name"],
        "comfyui-sim"
    );
    assert!(
        client
            .object_info_class("KSampler")
            .await
            .unwrap()
            .is_some()
    );
    assert!(client.object_info_class("Nope").await.unwrap().is_none());

    let (r, items) = run(&client, invert(), &fast_opts()).await;
    let first = r.unwrap();
    assert_eq!(first.outcome, PromptOutcome::Success);
    let files: Vec<_> = first.outputs.of_kind(OutputKind::Image).collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file.filename, "invert_00001_.png");
    let (w, h, px) = decode_png(&client.view(&files[0].file).await.unwrap());
    assert_eq!((w, h), (64, 64));
    assert_eq!(&px[..3], &[0, 255, 255], "a red canvas inverted is cyan");
    let ev = events(&items);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Executing { node: Some(n), .. } if n == "2"))
    );
    assert!(ev.iter().any(|e| e.is_done(&first.prompt_id)));

    let (r, items) = run(&client, invert(), &fast_opts()).await;
    let second = r.unwrap();
    assert_eq!(second.outcome, PromptOutcome::Success);
    assert_eq!(
        second.outputs.files[0].file.filename, "invert_00001_.png",
        "cached: same file"
    );
    let ev = events(&items);
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::ExecutionCached { nodes, .. } if nodes.len() == 3))
    );
    assert!(
        !ev.iter()
            .any(|e| matches!(e, Event::Executing { node: Some(_), .. })),
        "no executing when cached"
    );
    assert_eq!(
        std::fs::read_dir(sim.output_dir()).unwrap().count(),
        1,
        "no new file"
    );

    client.free(false, true).await.unwrap();
    let third = run(&client, invert(), &fast_opts()).await.0.unwrap();
    assert_eq!(
        third.outputs.files[0].file.filename, "invert_00002_.png",
        "re-ran after /free"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn validation_error_400() {
    let (sim, client) = sim().await;
    let mut w = invert();
    w["1"]["inputs"]["width"] = json!(0);
    let (r, _) = run(&client, w, &fast_opts()).await;
    let Err(Error::Rejected(rej)) = r else {
        panic!("expected a rejection, got {r:?}")
    };
    assert_eq!(rej.http_status, 400);
    assert!(!rej.queued);
    assert_eq!(rej.error.kind, "prompt_outputs_failed_validation");
    let ne = &rej.node_errors["1"];
    assert_eq!(ne.class_type, "EmptyImage");
    assert_eq!(ne.errors[0].kind, "value_smaller_than_min");
    assert_eq!(ne.dependent_outputs, vec!["3".to_string()]);
    assert!(rej.to_string().contains("Value 0 smaller than min of 1"));

    let mut w = invert();
    w["2"]["class_type"] = json!("NoSuchNode");
    let Err(Error::Rejected(rej)) = client
        .queue_prompt(&PromptRequest::new(new_prompt_id(), w))
        .await
    else {
        panic!()
    };
    assert_eq!(rej.error.kind, "invalid_prompt");
    sim.shutdown().await;
}

#[tokio::test]
async fn partial_acceptance_is_a_failure_and_is_cancelled() {
    let (sim, client) = sim().await;
    let mut w = invert();
    w.insert(
        "4".into(),
        json!({"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 5}}),
    );
    w.insert("5".into(), json!({"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nope", "width": 8, "height": 8, "crop": "disabled"}}));
    w.insert(
        "6".into(),
        json!({"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}),
    );
    let (r, _) = run(&client, w, &fast_opts()).await;
    let Err(Error::Rejected(rej)) = r else {
        panic!("expected a rejection, got {r:?}")
    };
    assert_eq!(rej.http_status, 200);
    assert!(rej.queued);
    assert!(rej.node_errors.contains_key("5"));
    let q = client.queue().await.unwrap();
    assert!(!q.is_pending(&rej.prompt_id) && !q.is_running(&rej.prompt_id));
    sim.shutdown().await;
}

#[tokio::test]
async fn runtime_error() {
    let (sim, client) = sim().await;
    let mut w = invert();
    w["3"]["inputs"]["filename_prefix"] = json!("../escape");
    let (r, items) = run(&client, w, &fast_opts()).await;
    let run = r.unwrap();
    let PromptOutcome::Failed(e) = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(
        (e.node_id.as_str(), e.node_type.as_str()),
        ("3", "SaveImage")
    );
    assert_eq!(e.exception_type, "Exception");
    assert!(
        e.exception_message
            .starts_with("**** ERROR: Saving image outside the output folder is not allowed.")
    );
    assert!(!e.traceback.is_empty());
    assert_eq!(e.executed, vec!["1".to_string(), "2".to_string()]);
    assert!(
        events(&items)
            .iter()
            .any(|ev| matches!(ev, Event::ExecutionError(_)))
    );
    assert!(run.outputs.is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn interrupt_while_running_lands_mid_sampler() {
    let (sim, client) = sim_with(SimConfig {
        step_ms: 30,
        ..SimConfig::default()
    })
    .await;
    let id = new_prompt_id();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c2 = client.clone();
    let id2 = id.clone();
    let task = tokio::spawn(async move {
        c2.run_prompt(&id2, txt2img(200), &fast_opts(), move |i| {
            let _ = tx.send(i.clone());
        })
        .await
    });
    // Wait for the sampler's first tick.
    loop {
        let item = tokio::time::timeout(GUARD, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(as_event(&item), Some(Event::Progress { node: Some(n), .. }) if n == "3") {
            break;
        }
    }
    let report = client
        .cancel_prompt(&id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.method, CancelMethod::Interrupt);
    assert!(
        matches!(report.outcome, CancelOutcome::Interrupted(_)),
        "{report:?}"
    );
    let run = tokio::time::timeout(GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let PromptOutcome::Interrupted(i) = &run.outcome else {
        panic!("{:?}", run.outcome)
    };
    assert_eq!(
        (i.node_id.as_str(), i.node_type.as_str()),
        ("3", "KSampler")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn interrupt_while_pending_deletes_it() {
    let (sim, client) = sim_with(SimConfig {
        step_ms: 30,
        ..SimConfig::default()
    })
    .await;
    let busy = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(busy.clone(), txt2img(500)).client_id("x"))
        .await
        .unwrap();
    let waiting = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(waiting.clone(), invert()).client_id("x"))
        .await
        .unwrap();
    assert!(client.queue().await.unwrap().is_pending(&waiting));
    let report = client
        .cancel_prompt(&waiting, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.method, CancelMethod::QueueDelete);
    assert_eq!(report.outcome, CancelOutcome::RemovedWhilePending);
    assert!(client.history(&waiting).await.unwrap().is_none());
    assert!(
        client.queue().await.unwrap().is_running(&busy),
        "the neighbour is untouched"
    );
    let r = client
        .cancel_prompt(&busy, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(matches!(r.outcome, CancelOutcome::Interrupted(_)));
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_api_is_detected_and_used() {
    let (sim, client) = sim().await;
    assert!(!client.has_jobs_api().await.unwrap());
    sim.shutdown().await;

    let (sim, client) = sim_with(SimConfig {
        jobs_api: true,
        step_ms: 30,
        ..SimConfig::default()
    })
    .await;
    assert!(client.has_jobs_api().await.unwrap());
    let busy = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(busy.clone(), txt2img(500)).client_id("x"))
        .await
        .unwrap();
    let waiting = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(waiting.clone(), invert()).client_id("x"))
        .await
        .unwrap();
    let r = client
        .cancel_prompt(&waiting, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (r.method, r.outcome),
        (CancelMethod::JobsApi, CancelOutcome::RemovedWhilePending)
    );
    let r = client
        .cancel_prompt(&busy, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.method, CancelMethod::JobsApi);
    assert!(matches!(r.outcome, CancelOutcome::Interrupted(_)));
    sim.shutdown().await;
}

/// ComfyUI 0.8.0 has `GET /api/jobs/{id}` but answers `POST /api/jobs/{id}/cancel` with
/// 405: a cancel must fall back to deleting a pending prompt and interrupting a running
/// one, not fail (found against a real 0.8.0, where cancels never landed).
#[tokio::test]
async fn jobs_api_without_its_cancel_route_falls_back_to_the_queue_and_interrupt() {
    let (sim, client) = sim_with(SimConfig {
        jobs_api: true,
        jobs_api_cancel: false,
        step_ms: 30,
        ..SimConfig::default()
    })
    .await;
    assert!(client.has_jobs_api().await.unwrap());
    let busy = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(busy.clone(), txt2img(500)).client_id("x"))
        .await
        .unwrap();
    let waiting = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(waiting.clone(), invert()).client_id("x"))
        .await
        .unwrap();
    let r = client
        .cancel_prompt(&waiting, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (r.method, r.outcome),
        (
            CancelMethod::QueueDelete,
            CancelOutcome::RemovedWhilePending
        )
    );
    wait_running(&client, &busy).await;
    let r = client
        .cancel_prompt(&busy, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.method, CancelMethod::Interrupt);
    assert!(
        matches!(r.outcome, CancelOutcome::Interrupted(_)),
        "{:?}",
        r.outcome
    );
    // A predecessor's leftovers are cleared the same way.
    let left = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(left.clone(), txt2img(500)).client_id("old-runner-1"))
        .await
        .unwrap();
    wait_running(&client, &left).await;
    let cleared = client.clear_leftovers("old-runner").await.unwrap();
    assert_eq!(cleared.interrupted, vec![left.clone()]);
    sim.shutdown().await;
}

#[tokio::test]
async fn websocket_drop_mid_run_completion_found_through_history() {
    let (sim, client) = sim_with(SimConfig {
        faults: Faults {
            drop_ws: true,
            at_node: Some("3".into()),
            slow_node_ms: 200,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    // Reconnect only after the prompt has finished: its end is never seen on the socket.
    let mut opts = fast_opts();
    opts.poll_interval = Duration::from_secs(30);
    opts.stream.backoff_initial = Duration::from_millis(1500);
    let (r, items) = run(&client, invert(), &opts).await;
    let run = r.unwrap();
    assert_eq!(run.outcome, PromptOutcome::Success);
    assert_eq!(run.reconnects, 1);
    assert!(
        items
            .iter()
            .any(|i| matches!(i, StreamItem::Disconnected { .. }))
    );
    assert!(
        !events(&items).iter().any(|e| e.is_done(&run.prompt_id)),
        "the end was read from history"
    );
    assert_eq!(run.outputs.files.len(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn server_crash_is_reported_not_hung() {
    let (sim, client) = sim_with(SimConfig {
        faults: Faults {
            crash: true,
            at_node: Some("3".into()),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let (r, items) = run(&client, txt2img(5), &fast_opts()).await;
    assert!(matches!(r, Err(Error::ServerGone(_))), "{r:?}");
    assert!(items.iter().any(|i| matches!(i, StreamItem::GaveUp { .. })));
    assert!(sim.has_crashed());
    sim.shutdown().await;
}

#[tokio::test]
async fn stalled_worker_hits_the_deadline() {
    let (sim, client) = sim_with(SimConfig {
        faults: Faults {
            kill_worker: true,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut opts = fast_opts();
    opts.deadline = Some(Duration::from_millis(800));
    let (r, _) = run(&client, invert(), &opts).await;
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert!(!sim.worker_alive());
    assert_eq!(
        client.queue().await.unwrap().running.len(),
        1,
        "stuck as running"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn upload_then_load_blur_scale() {
    let (sim, client) = sim().await;
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, 40, 30);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(&vec![200u8; 40 * 30 * 4])
            .unwrap();
    }
    let up = client
        .upload_image("photo.png", png_bytes.clone(), &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(up.name, "photo.png");
    let again = client
        .upload_image("photo.png", png_bytes, &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(again.name, "photo.png", "identical content is deduplicated");
    let other = client
        .upload_image("photo.png", vec![1u8, 2, 3], &UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(other.name, "photo (1).png", "different content is renamed");

    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows/load-blur.json");
    let mut w = wf(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    w["10"]["inputs"]["image"] = json!(up.load_image_name());
    let run = run(&client, w, &fast_opts()).await.0.unwrap();
    assert_eq!(run.outcome, PromptOutcome::Success);
    let (wd, ht, _) = decode_png(&client.view(&run.outputs.files[0].file).await.unwrap());
    assert_eq!((wd, ht), (128, 96));
    sim.shutdown().await;
}

#[tokio::test]
async fn previews_and_batches() {
    let (sim, client) = sim_with(SimConfig {
        previews: true,
        step_ms: 1,
        ..SimConfig::default()
    })
    .await;
    let (r, items) = run(&client, txt2img(3), &fast_opts()).await;
    let run = r.unwrap();
    assert_eq!(run.outcome, PromptOutcome::Success);
    let previews: Vec<_> = events(&items)
        .into_iter()
        .filter_map(|e| match e {
            Event::Preview(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(previews.len(), 3);
    assert_eq!(
        previews[0].metadata.as_ref().unwrap().node_id.as_deref(),
        Some("3")
    );
    assert_eq!(run.outputs.files[0].file.filename, "ComfyUI_00001_.png");

    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/workflows/batch-two-outputs.json");
    let w = wf(serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    let run = run_simple(&client, w).await;
    let kinds: Vec<(&str, &str)> = run
        .outputs
        .files
        .iter()
        .map(|f| (f.node_id.as_str(), f.file.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("2", "output"),
            ("2", "output"),
            ("2", "output"),
            ("4", "temp"),
            ("4", "temp"),
            ("4", "temp")
        ]
    );
    for f in &run.outputs.files {
        assert!(!client.view(&f.file).await.unwrap().is_empty());
    }
    sim.shutdown().await;
}

async fn run_simple(client: &Client, w: Map<String, Value>) -> comfyui::PromptRun {
    run(client, w, &fast_opts()).await.0.unwrap()
}

#[tokio::test]
async fn clear_leftovers_of_a_predecessor() {
    let (sim, client) = sim_with(SimConfig {
        step_ms: 30,
        ..SimConfig::default()
    })
    .await;
    let running = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(running.clone(), txt2img(500)).client_id("runner-a-1"))
        .await
        .unwrap();
    let pending = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(pending.clone(), invert()).client_id("runner-a-1"))
        .await
        .unwrap();
    let other = new_prompt_id();
    client
        .queue_prompt(&PromptRequest::new(other.clone(), txt2img(2)).client_id("someone-else"))
        .await
        .unwrap();
    while !client.queue().await.unwrap().is_running(&running) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = client.clear_leftovers("runner-a").await.unwrap();
    assert_eq!(left.deleted, vec![pending.clone()]);
    assert_eq!(left.interrupted, vec![running.clone()]);
    let q = client.queue().await.unwrap();
    assert!(!q.is_pending(&pending));
    assert!(
        q.is_pending(&other)
            || q.is_running(&other)
            || client.history(&other).await.unwrap().is_some()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn http_500_fault_is_an_error() {
    let (sim, client) = sim().await;
    sim.set_faults(Faults {
        http_500: true,
        ..Faults::default()
    });
    match client.queue().await {
        Err(Error::Status {
            status: 500, body, ..
        }) => assert!(body.contains("Server got itself in trouble")),
        other => panic!("{other:?}"),
    }
    sim.set_faults(Faults::default());
    assert!(client.queue().await.is_ok());
    sim.shutdown().await;
}

/// Waits (bounded) until `prompt_id` is the running prompt.
async fn wait_running(client: &Client, prompt_id: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !client.queue().await.unwrap().is_running(prompt_id) {
        assert!(std::time::Instant::now() < end, "{prompt_id} never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
