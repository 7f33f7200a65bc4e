//! The runner in-process, against the simulator on loopback: end to end runs, cancel in
//! every state, and faults. No assertion here is about speed.

mod common;

use std::time::Duration;

use common::*;
use gpu_runner::{EngineSpec, ExitReason, RunnerConfig};
use jobs::lifecycle::Move;
use jobs::model::{JobStatus, OutputKind};
use jobs::ports::QueueName;
use jobs::service::apply_move;
use serde_json::json;

fn attach(sim: &comfyui_sim::SimHandle) -> EngineSpec {
    EngineSpec::Attach {
        url: sim.base_url(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invert_end_to_end_gives_cyan() {
    let env = Env::new();
    let sim = sim(20).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let id = env.submit(&workflow("invert.json")).await;
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.outputs.len(), 1);
    let out = &job.outputs[0];
    assert_eq!(out.kind, OutputKind::Image);
    assert_eq!(out.content_type, "image/png");
    assert!(
        out.blob_key.starts_with(&format!("outputs/{id}/1/")),
        "{}",
        out.blob_key
    );
    assert!(
        out.name.contains(id.as_str()),
        "per-job file name: {}",
        out.name
    );
    let bytes = env.blob(&out.blob_key).await;
    let (w, h, rgb) = png_first_pixel(&bytes);
    assert_eq!((w, h, rgb), (64, 64, [0, 255, 255]), "inverted red is cyan");
    // Minted as an asset of the tenant, naming the job, with the blake3 hash.
    let asset = env
        .ports
        .store
        .get_asset(&out.asset_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(asset.tenant, TENANT);
    assert_eq!(asset.job_id.as_ref(), Some(&id));
    assert_eq!(
        asset.hash,
        format!("blake3:{}", blake3::hash(&bytes).to_hex())
    );
    assert_eq!(out.hash.as_deref(), Some(asset.hash.as_str()));
    // Progress was written for this attempt; the message is gone.
    let progress = env
        .ports
        .store
        .get_progress(&id)
        .await
        .unwrap()
        .expect("progress");
    assert_eq!(progress.attempt, 1);
    assert_eq!(progress.progress.nodes_total, 3);
    // The message is deleted right after the commit, so it may still be in flight
    // for a moment after the job reads terminal.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let depth = env.ports.queue.depth(QueueName::Work).await.unwrap();
        if (depth.visible, depth.in_flight) == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message outlived its job: {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = runner.stop().await;
    assert_eq!(report.reason, ExitReason::Shutdown);
    assert_eq!(report.committed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_blur_stages_an_asset() {
    let env = Env::new();
    let sim = sim(20).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let asset = env.asset(red_png(40, 30), "photos/photo.png").await;
    let mut wf = workflow("load-blur.json");
    wf["10"]["inputs"]["image"] = json!({"__type": "core/ASSET", "info": {"id": asset}});
    let id = env.submit(&wf).await;
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    assert_eq!(job.outputs.len(), 1);
    let (w, h, rgb) = png_first_pixel(&env.blob(&job.outputs[0].blob_key).await);
    assert_eq!((w, h), (128, 96));
    assert!(
        rgb[0] > 200 && rgb[1] < 50,
        "still red after a blur: {rgb:?}"
    );
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lists_three_images_and_three_previews() {
    let env = Env::new();
    let sim = sim(20).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let id = env.submit(&workflow("batch-two-outputs.json")).await;
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    let saved: Vec<_> = job.outputs.iter().filter(|o| o.node_id == "2").collect();
    let previews: Vec<_> = job.outputs.iter().filter(|o| o.node_id == "4").collect();
    assert_eq!((saved.len(), previews.len()), (3, 3), "{:#?}", job.outputs);
    for o in &job.outputs {
        assert_eq!(o.kind, OutputKind::Image);
        assert!(o.blob_key.starts_with(&format!("outputs/{id}/1/")));
        env.blob(&o.blob_key).await;
    }
    let (_, _, blue) = png_first_pixel(&env.blob(&saved[0].blob_key).await);
    let (_, _, yellow) = png_first_pixel(&env.blob(&previews[0].blob_key).await);
    assert_eq!((blue, yellow), ([0, 0, 255], [255, 255, 0]));
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_names_the_sampler_step() {
    let env = Env::new();
    let sim = sim(40).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let id = env.submit(&sampler(30, 1)).await;
    env.wait_for(&id, "running", is_status(JobStatus::Running))
        .await;
    let mut seen = None;
    for _ in 0..500 {
        if let Some(p) = env.ports.store.get_progress(&id).await.unwrap()
            && p.progress.step.is_some_and(|s| s > 0)
        {
            seen = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p = seen
        .expect("a progress record with a sampler step")
        .progress;
    assert_eq!(p.current_node.as_deref(), Some("3"));
    assert_eq!(p.current_node_class.as_deref(), Some("KSampler"));
    assert_eq!(p.steps, Some(30));
    assert_eq!(p.nodes_total, 7);
    assert!(p.value > 0.0 && p.value < 1.0, "{p:?}");
    let msg = p.message.unwrap();
    assert!(
        msg.starts_with("KSampler ") && msg.ends_with("/30"),
        "{msg}"
    );
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_queued() {
    let env = Env::new();
    let sim = sim(20).await;
    let victim = env.submit(&workflow("invert.json")).await;
    let neighbour = env.submit(&workflow("invert.json")).await;
    env.cancel(&victim).await;
    assert_eq!(env.job(&victim).await.status, JobStatus::Canceled);
    let runner = start_runner(&env, attach(&sim), test_config());
    let n = env.wait_terminal(&neighbour).await;
    assert_eq!(n.status, JobStatus::Succeeded);
    // The canceled job's message is deleted when received; nothing ran for it.
    for _ in 0..300 {
        let d = env.ports.queue.depth(QueueName::Work).await.unwrap();
        if d.visible + d.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = env.ports.queue.depth(QueueName::Work).await.unwrap();
    assert_eq!(d.visible + d.in_flight, 0);
    let v = env.job(&victim).await;
    assert_eq!((v.status, v.attempt), (JobStatus::Canceled, 0));
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_running_stops_the_prompt() {
    let env = Env::new();
    let sim = sim(50).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let victim = env.submit(&sampler(200, 1)).await;
    env.wait_for(&victim, "sampling", |j| j.status == JobStatus::Running)
        .await;
    // Wait until the sampler is at work, then cancel.
    for _ in 0..500 {
        let p = env.ports.store.get_progress(&victim).await.unwrap();
        if p.is_some_and(|p| p.progress.step.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.cancel(&victim).await;
    let neighbour = env.submit(&workflow("invert.json")).await;
    let v = env.wait_terminal(&victim).await;
    assert_eq!(v.status, JobStatus::Canceled, "{:?}", v.error);
    assert!(v.outputs.is_empty());
    let n = env.wait_terminal(&neighbour).await;
    assert_eq!(
        n.status,
        JobStatus::Succeeded,
        "the neighbour is unharmed: {:?}",
        n.error
    );
    let history = comfyui::Client::new(&sim.base_url()).unwrap();
    let q = history.queue().await.unwrap();
    assert!(q.running.is_empty() && q.pending.is_empty());
    runner.stop().await;
}

/// Starts a long job A, then submits B and waits until the runner has reserved B.
async fn reserved_behind_a_long_job(
    env: &Env,
    sim: &comfyui_sim::SimHandle,
) -> (RunningRunner, jobs::model::JobId, jobs::model::JobId) {
    let config = RunnerConfig {
        // Reserve as soon as A runs: "near the end" is always true here.
        near_end_progress: 0.0,
        ..test_config()
    };
    let runner = start_runner(env, attach(sim), config);
    let a = env.submit(&sampler(60, 1)).await;
    env.wait_for(&a, "running", is_status(JobStatus::Running))
        .await;
    let b = env.submit(&sampler(5, 2)).await;
    let worker = runner.worker_id.clone();
    env.wait_for(&b, "reserved", |j| {
        j.reserved_by.as_deref() == Some(worker.as_str())
    })
    .await;
    (runner, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_reserved() {
    let env = Env::new();
    let sim = sim(50).await;
    let (runner, a, b) = reserved_behind_a_long_job(&env, &sim).await;
    let job_b = env.job(&b).await;
    assert_eq!(
        job_b.status,
        JobStatus::Queued,
        "a reserved job stays queued"
    );
    env.cancel(&b).await;
    assert_eq!(env.job(&b).await.status, JobStatus::Canceled);
    let ja = env.wait_terminal(&a).await;
    assert_eq!(
        ja.status,
        JobStatus::Succeeded,
        "the neighbour is unharmed: {:?}",
        ja.error
    );
    assert_eq!(ja.attempt, 1);
    let jb = env.job(&b).await;
    assert_eq!((jb.status, jb.attempt), (JobStatus::Canceled, 0));
    // B's pre-submitted prompt is gone from ComfyUI (deleted, or stopped if it started).
    let client = comfyui::Client::new(&sim.base_url()).unwrap();
    for _ in 0..300 {
        let q = client.queue().await.unwrap();
        if q.running.is_empty() && q.pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let q = client.queue().await.unwrap();
    assert!(q.running.is_empty() && q.pending.is_empty(), "{q:?}");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_pending_in_comfyui() {
    let env = Env::new();
    let sim = sim(50).await;
    let (runner, a, b) = reserved_behind_a_long_job(&env, &sim).await;
    // Wait until B's prompt sits in ComfyUI's queue behind A.
    let client = comfyui::Client::new(&sim.base_url()).unwrap();
    let mut pending = false;
    for _ in 0..500 {
        let q = client.queue().await.unwrap();
        if q.running.len() == 1 && q.pending.len() == 1 {
            pending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pending, "B was pre-submitted to ComfyUI");
    assert_eq!(env.job(&a).await.status, JobStatus::Running, "A still runs");
    env.cancel(&b).await;
    // Within a heartbeat, B's prompt leaves ComfyUI's queue while A keeps running.
    let mut removed = false;
    for _ in 0..500 {
        let q = client.queue().await.unwrap();
        if q.pending.is_empty() {
            removed = true;
            assert_eq!(env.job(&a).await.status, JobStatus::Running);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(removed, "B's pending prompt was deleted");
    let ja = env.wait_terminal(&a).await;
    assert_eq!(
        ja.status,
        JobStatus::Succeeded,
        "the neighbour is unharmed: {:?}",
        ja.error
    );
    assert_eq!(env.job(&b).await.status, JobStatus::Canceled);
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_jobs_all_succeed_and_are_claimed_at_start() {
    let env = Env::new();
    let sim = sim(10).await;
    let runner = start_runner(
        &env,
        attach(&sim),
        RunnerConfig {
            near_end_progress: 0.0,
            ..test_config()
        },
    );
    let mut ids = Vec::new();
    for seed in 0..6 {
        ids.push(env.submit(&sampler(10, seed)).await);
    }
    for id in &ids {
        let j = env.wait_terminal(id).await;
        assert_eq!(
            (j.status, j.attempt),
            (JobStatus::Succeeded, 1),
            "{:?}",
            j.error
        );
        assert!(j.reserved_by.is_none());
        assert!(
            j.outputs[0]
                .blob_key
                .starts_with(&format!("outputs/{id}/1/"))
        );
    }
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_job_and_the_runner_carries_on() {
    let env = Env::new();
    let sim = sim(50).await;
    let runner = start_runner(
        &env,
        attach(&sim),
        RunnerConfig {
            job_timeout: Duration::from_millis(600),
            ..test_config()
        },
    );
    let slow = env.submit(&sampler(400, 1)).await;
    let j = env.wait_terminal(&slow).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.as_ref().unwrap().code, "timeout");
    let next = env.submit(&workflow("invert.json")).await;
    assert_eq!(env.wait_terminal(&next).await.status, JobStatus::Succeeded);
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comfyui_crash_mid_job_is_retried_after_a_restart() {
    let env = Env::new();
    let launcher = SimLauncher::new(40);
    let runner = start_runner(&env, EngineSpec::Custom(launcher.clone()), test_config());
    let id = env.submit(&sampler(40, 7)).await;
    env.wait_for(&id, "running", is_status(JobStatus::Running))
        .await;
    for _ in 0..500 {
        if env
            .ports
            .store
            .get_progress(&id)
            .await
            .unwrap()
            .is_some_and(|p| p.progress.step.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    launcher.sim().crash();
    let j = env.wait_terminal(&id).await;
    assert_eq!(j.status, JobStatus::Succeeded, "{:?}", j.error);
    assert_eq!(j.attempt, 2, "taken over as the next attempt");
    assert!(
        j.outputs
            .iter()
            .all(|o| o.blob_key.starts_with(&format!("outputs/{id}/2/")))
    );
    assert!(launcher.launches() >= 2, "ComfyUI was restarted");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drop_is_survived() {
    let env = Env::new();
    let sim = sim(30).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    sim.set_faults(comfyui_sim::Faults {
        drop_ws: true,
        at_node: Some("3".into()),
        ..Default::default()
    });
    let id = env.submit(&sampler(10, 3)).await;
    let j = env.wait_terminal(&id).await;
    assert_eq!(
        (j.status, j.attempt),
        (JobStatus::Succeeded, 1),
        "{:?}",
        j.error
    );
    assert_eq!(j.outputs.len(), 1);
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_node() {
    let env = Env::new();
    let sim = sim(20).await;
    // Submitted before any runner published a node catalogue, so submit accepts them
    // unchecked and ComfyUI's own refusal is what is tested here (cli/tests/catalogue.rs
    // covers the refusal at submit).
    let mut bad_value = workflow("invert.json");
    bad_value["1"]["inputs"]["width"] = json!(-5);
    let a = env.submit(&bad_value).await;
    let mut unknown = workflow("invert.json");
    unknown["2"]["class_type"] = json!("NoSuchNode");
    let b = env.submit(&unknown).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let ja = env.wait_terminal(&a).await;
    assert_eq!(ja.status, JobStatus::Failed);
    let e = ja.error.unwrap();
    assert_eq!(e.code, "node_validation_error", "{e:?}");
    assert_eq!(
        (e.node_id.as_deref(), e.class_type.as_deref()),
        (Some("1"), Some("EmptyImage"))
    );
    let jb = env.wait_terminal(&b).await;
    let e = jb.error.unwrap();
    assert_eq!(e.code, "invalid_prompt", "{e:?}");
    assert_eq!(
        (e.node_id.as_deref(), e.class_type.as_deref()),
        (Some("2"), Some("NoSuchNode"))
    );
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_the_running_job_back() {
    let env = Env::new();
    let sim = sim(50).await;
    let runner = start_runner(&env, attach(&sim), test_config());
    let worker = runner.worker_id.clone();
    let id = env.submit(&sampler(400, 1)).await;
    env.wait_for(&id, "running", is_status(JobStatus::Running))
        .await;
    let report = runner.stop().await;
    assert_eq!(report.handed_back, 1);
    let j = env.job(&id).await;
    assert_eq!(
        (j.status, j.attempt, j.preemptions),
        (JobStatus::Queued, 1, 1)
    );
    assert!(j.lease_owner.is_none());
    let d = env.ports.queue.depth(QueueName::Work).await.unwrap();
    assert_eq!(d.visible, 1, "the message is visible again at once");
    assert!(
        !env.ports
            .store
            .list_workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.id == worker),
        "deregistered"
    );
    // ComfyUI is idle again (the prompt was interrupted).
    let client = comfyui::Client::new(&sim.base_url()).unwrap();
    for _ in 0..300 {
        if client.queue().await.unwrap().running.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A successor finishes it; the hand-back was not charged.
    let fast = comfyui_sim::SimConfig {
        step_ms: 1,
        ..Default::default()
    };
    let sim2 = comfyui_sim::Simulator::start(fast).await.unwrap();
    let next = start_runner(&env, attach(&sim2), test_config());
    let j = env.wait_terminal(&id).await;
    assert_eq!(
        (j.status, j.attempt),
        (JobStatus::Succeeded, 2),
        "{:?}",
        j.error
    );
    assert_eq!(jobs::lifecycle::charged_attempts(&j), 1);
    next.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_exit_deregisters() {
    let env = Env::new();
    let sim = sim(20).await;
    let config = RunnerConfig {
        idle_timeout: Some(Duration::from_millis(700)),
        ..test_config()
    };
    let worker = config.worker_id.clone();
    let runner = start_runner(&env, attach(&sim), config);
    let id = env.submit(&workflow("invert.json")).await;
    assert_eq!(env.wait_terminal(&id).await.status, JobStatus::Succeeded);
    let report = tokio::time::timeout(Duration::from_secs(30), runner.task)
        .await
        .expect("exits when idle")
        .unwrap()
        .unwrap();
    assert_eq!(report.reason, ExitReason::Idle);
    assert!(
        !env.ports
            .store
            .list_workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.id == worker)
    );
}

/// MinWarmWorkers: an idle runner within the fleet's warm floor outlives its idle
/// timeout, and leaves once the floor no longer covers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_the_fleet_keeps_warm_outlives_its_idle_timeout() {
    let env = Env::new();
    let sim = sim(20).await;
    let set_warm_floor = |min_warm: u32| {
        let store = env.ports.store.clone();
        async move {
            let fleet = store.get_fleet().await.unwrap();
            let rev = fleet.rev;
            store
                .put_fleet(
                    &jobs::ports::Fleet {
                        min_warm,
                        rev: rev + 1,
                        ..fleet
                    },
                    rev,
                )
                .await
                .unwrap();
        }
    };
    set_warm_floor(1).await;
    let config = RunnerConfig {
        idle_timeout: Some(Duration::from_millis(500)),
        ..test_config()
    };
    let mut runner = start_runner(&env, attach(&sim), config);
    let stayed = tokio::time::timeout(Duration::from_secs(3), &mut runner.task).await;
    assert!(stayed.is_err(), "a kept runner must not leave on idle");
    set_warm_floor(0).await;
    let report = tokio::time::timeout(Duration::from_secs(30), runner.task)
        .await
        .expect("leaves once no longer wanted")
        .unwrap()
        .unwrap();
    assert_eq!(report.reason, ExitReason::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_exhausted_after_a_lapsed_lease() {
    let env = Env::new();
    let sim = sim(20).await;
    let id = env.submit(&workflow("invert.json")).await;
    // A runner that claimed the job and died: its lease lapses.
    let job = env.job(&id).await;
    let claim = Move::Claim {
        runner: "ghost".into(),
        lease: chrono::Duration::milliseconds(50),
        max_attempts: 1,
    };
    let ghost = apply_move(
        env.ports.store.as_ref(),
        env.ports.clock.as_ref(),
        job,
        &claim,
    )
    .await
    .unwrap();
    assert_eq!(ghost.attempt, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runner = start_runner(
        &env,
        attach(&sim),
        RunnerConfig {
            max_attempts: 1,
            ..test_config()
        },
    );
    // The ghost's message is still hidden; the tick would re-offer it. Offer a copy.
    let body = serde_json::to_string(&jobs::model::WorkMessage {
        v: 1,
        job_id: id.clone(),
    })
    .unwrap();
    env.ports.queue.send(QueueName::Work, &body).await.unwrap();
    let j = env.wait_terminal(&id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.unwrap().code, "attempts_exhausted");
    assert_eq!(j.attempt, 1, "no further attempt ran");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_leased_job_is_pushed_back_not_deleted() {
    let env = Env::new();
    let sim = sim(50).await;
    let id = env.submit(&sampler(40, 1)).await;
    let job = env.job(&id).await;
    let claim = Move::Claim {
        runner: "someone-else".into(),
        lease: chrono::Duration::seconds(30),
        max_attempts: 3,
    };
    apply_move(
        env.ports.store.as_ref(),
        env.ports.clock.as_ref(),
        job,
        &claim,
    )
    .await
    .unwrap();
    let runner = start_runner(&env, attach(&sim), test_config());
    // The runner receives the message, finds the lease held elsewhere, and pushes it back.
    let mut pushed = false;
    for _ in 0..300 {
        let d = env.ports.queue.depth(QueueName::Work).await.unwrap();
        if d.in_flight == 1 && d.visible == 0 {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pushed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d = env.ports.queue.depth(QueueName::Work).await.unwrap();
    assert_eq!(d.visible + d.in_flight, 1, "never deleted");
    let j = env.job(&id).await;
    assert_eq!(
        (j.status, j.lease_owner.as_deref()),
        (JobStatus::Running, Some("someone-else"))
    );
    runner.stop().await;
}

/// Attached to a ComfyUI someone else runs, jobs that arrive while it restarts wait for
/// it instead of burning their attempts: each take failed to reach ComfyUI and was
/// released as a charged attempt, so three attempts went in milliseconds and the job
/// failed with `attempts_exhausted` (found by the `chaos_dev` test, a SIGKILLed
/// ComfyUI restarted within a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_out_an_attached_comfyui_restart() {
    let env = Env::new();
    let first = sim(1).await;
    let url = first.base_url();
    let runner = start_runner(&env, attach(&first), test_config());
    let warm = env.submit(&workflow("invert.json")).await;
    assert_eq!(env.wait_terminal(&warm).await.status, JobStatus::Succeeded);

    first.crash();
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut wf = workflow("invert.json");
        wf["1"]["inputs"]["width"] = json!(16 + i);
        ids.push(env.submit(&wf).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let second = comfyui_sim::Simulator::start(comfyui_sim::SimConfig {
        bind: ([127, 0, 0, 1], port).into(),
        step_ms: 1,
        ..comfyui_sim::SimConfig::default()
    })
    .await
    .unwrap();
    for id in &ids {
        let job = env.wait_terminal(id).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{id}: {:?}", job.error);
        assert!(job.attempt <= 2, "{id}: attempt {}", job.attempt);
    }
    runner.stop().await;
    second.shutdown().await;
}
