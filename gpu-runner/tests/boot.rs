//! The boot checks against the simulator: a runner whose custom nodes manifest promises
//! a class ComfyUI lacks takes no job, and says why where health reads it (its
//! registry record, summed by `jobs::dispatch::FleetView`); a runner told to refuse
//! (its models did not sync) does the same; with every class there, jobs run.

mod common;

use std::time::Duration;

use common::*;
use gpu_runner::EngineSpec;
use jobs::dispatch::{DispatchConfig, FleetView};
use jobs::model::JobStatus;
use jobs::ports::{WorkerPhase, WorkerRecord};

fn attach(sim: &comfyui_sim::SimHandle) -> EngineSpec {
    EngineSpec::Attach {
        url: sim.base_url(),
    }
}

async fn wait_for_record(env: &Env, id: &str, phase: WorkerPhase) -> WorkerRecord {
    for _ in 0..1000 {
        let workers = env.ports.store.list_workers().await.unwrap();
        if let Some(w) = workers.into_iter().find(|w| w.id == id && w.phase == phase) {
            return w;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "worker {id} never registered as {phase:?}: {:?}",
        env.ports.store.list_workers().await.unwrap()
    );
}

async fn health_view(env: &Env) -> jobs::dispatch::FleetSummary {
    FleetView {
        config: DispatchConfig::default(),
        launcher_kind: "test",
    }
    .summary(env.ports.store.as_ref(), env.ports.clock.as_ref())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_custom_node_class_refuses_jobs_and_health_names_it() {
    let sim = sim(5).await;
    let env = Env::new();
    let id = env.submit(&sampler(2, 1)).await;
    // The manifest as the image ships it, promising one class the simulator has and
    // one it lacks.
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("custom-nodes.toml");
    std::fs::write(
        &manifest,
        r#"
        [[node]]
        git = "https://github.com/example/ComfyUI-Example"
        ref = "0123456789abcdef0123456789abcdef01234567"
        classes = ["KSampler", "ExampleResizeNode"]
        "#,
    )
    .unwrap();
    let settings = gpu_runner::cli::RunnerSettings {
        comfyui_url: Some(sim.base_url()),
        custom_nodes: Some(manifest),
        ..Default::default()
    };
    let (from_flags, _) = settings.to_config().unwrap();
    assert_eq!(
        from_flags.required_node_classes,
        ["ExampleResizeNode", "KSampler"]
    );
    let config = gpu_runner::RunnerConfig {
        required_node_classes: from_flags.required_node_classes,
        ..test_config()
    };
    let runner = start_runner(&env, attach(&sim), config);
    let record = wait_for_record(&env, &runner.worker_id, WorkerPhase::Refusing).await;
    assert!(record.detail.contains("ExampleResizeNode"), "{record:?}");
    assert!(!record.detail.contains("KSampler"), "{record:?}");
    // Several poll intervals and a lease later, the job was never touched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = env.job(&id).await;
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempt, 0, "{job:?}");
    assert!(job.lease_owner.is_none(), "{job:?}");
    let fleet = health_view(&env).await;
    assert_eq!(fleet.refusing, 1);
    assert!(
        fleet.refusals[0].contains(&runner.worker_id)
            && fleet.refusals[0].contains("ExampleResizeNode"),
        "{fleet:?}"
    );
    let report = runner.stop().await;
    assert_eq!(report.committed, 0);
    assert!(
        env.ports.store.list_workers().await.unwrap().is_empty(),
        "deregistered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_promised_class_there_jobs_run() {
    let sim = sim(5).await;
    let env = Env::new();
    let id = env.submit(&sampler(2, 2)).await;
    // The image's warm-up runs first (it needs no model).
    let (with_warmup, _) = gpu_runner::cli::RunnerSettings {
        comfyui_url: Some(sim.base_url()),
        warmup_workflow: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/warmup.json"),
        ),
        ..Default::default()
    }
    .to_config()
    .unwrap();
    let config = gpu_runner::RunnerConfig {
        required_node_classes: vec!["KSampler".into(), "SaveImage".into()],
        warmup_workflow: with_warmup.warmup_workflow,
        ..test_config()
    };
    let runner = start_runner(&env, attach(&sim), config);
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_runner_takes_nothing_and_still_exits_when_idle() {
    let sim = sim(5).await;
    let env = Env::new();
    let id = env.submit(&sampler(2, 3)).await;
    let config = gpu_runner::RunnerConfig {
        refuse_jobs: Some(
            "1 of 2 models did not sync: models/a.safetensors: no such object".into(),
        ),
        idle_timeout: Some(Duration::from_secs(2)),
        ..test_config()
    };
    let runner = start_runner(&env, attach(&sim), config);
    let record = wait_for_record(&env, &runner.worker_id, WorkerPhase::Refusing).await;
    assert!(record.detail.contains("models/a.safetensors"), "{record:?}");
    let report = tokio::time::timeout(Duration::from_secs(30), runner.task)
        .await
        .expect("a refusing runner exits when idle")
        .unwrap()
        .unwrap();
    assert_eq!(report.reason, gpu_runner::ExitReason::Idle);
    assert_eq!(env.job(&id).await.status, JobStatus::Queued);
    assert!(
        env.ports.store.list_workers().await.unwrap().is_empty(),
        "deregistered"
    );
}

/// At boot the runner publishes its ComfyUI's `/object_info` as the node catalogue;
/// submit then refuses a graph that ComfyUI would refuse, and still accepts one it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_publishes_its_comfyuis_catalogue_and_submit_checks_against_it() {
    let sim = sim(5).await;
    let env = Env::new();
    assert_eq!(env.ports.store.get_catalogue_ref().await.unwrap(), None);
    let runner = start_runner(&env, attach(&sim), test_config());
    let mut pointer = None;
    for _ in 0..500 {
        pointer = env.ports.store.get_catalogue_ref().await.unwrap();
        if pointer.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pointer = pointer.expect("published at boot");
    assert!(pointer.source.contains(&runner.worker_id), "{pointer:?}");
    assert!(pointer.source.contains(&sim.base_url()), "{pointer:?}");
    let live: serde_json::Value = reqwest::get(format!("{}/object_info", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pointer.classes as usize, live.as_object().unwrap().len());

    let id = env.submit(&sampler(2, 4)).await;
    let job = env.wait_terminal(&id).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");

    let mut typo = sampler(2, 5);
    typo["3"]["class_type"] = serde_json::json!("KSamplerr");
    let body = serde_json::to_vec(&serde_json::json!({ "workflow": typo })).unwrap();
    let refused = env.jobs.submit("t", &body, None).await.unwrap_err();
    assert_eq!(refused.code, "invalid_workflow");
    assert_eq!(
        refused.details.as_deref().unwrap()["error"]["type"],
        "invalid_prompt"
    );
    runner.stop().await;
}
