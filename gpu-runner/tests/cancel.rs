//! Cancel reaches a running job fast: with the production lease (30 s, so a heartbeat
//! every 10 s), a cancel of a running job must land within 2 s, interrupt ComfyUI,
//! leave no outputs, and end the job `canceled`. A cancel after the end changes nothing.

mod common;

use std::time::{Duration, Instant};

use comfyui::PromptOutcome;
use common::*;
use gpu_runner::{EngineSpec, RunnerConfig};
use jobs::model::JobStatus;

/// The production lease: the heartbeat alone would take 10 s to notice a cancel.
fn production_lease_config() -> RunnerConfig {
    test_config().with_lease(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_of_a_running_job_lands_within_two_seconds() {
    let env = Env::new();
    // 100 steps of 50 ms: the prompt would run about 5 s.
    let sim = sim(50).await;
    let runner = start_runner(
        &env,
        EngineSpec::Attach {
            url: sim.base_url(),
        },
        production_lease_config(),
    );
    let id = env.submit(&sampler(100, 7)).await;
    env.wait_for(&id, "running", is_status(JobStatus::Running))
        .await;
    // Shortly after it started running: the sampler is at work.
    for _ in 0..500 {
        let p = env.ports.store.get_progress(&id).await.unwrap();
        if p.is_some_and(|p| p.progress.step.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    let answer = env.jobs.cancel(TENANT, id.as_str()).await.unwrap();
    assert_eq!(answer.status, JobStatus::Canceling);
    let mut job = env.job(&id).await;
    while !job.status.is_terminal() && asked.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        job = env.job(&id).await;
    }
    let took = asked.elapsed();
    assert_eq!(
        job.status,
        JobStatus::Canceled,
        "the job must end canceled within 2 s of the cancel (it was {} after {took:?})",
        job.status
    );
    assert!(job.outputs.is_empty(), "{:?}", job.outputs);
    assert!(
        env.ports
            .store
            .job_assets(&id, 100)
            .await
            .unwrap()
            .is_empty(),
        "no output asset was minted for the canceled job"
    );
    // ComfyUI was interrupted: its history says so, and nothing is left queued.
    let client = comfyui::Client::new(&sim.base_url()).unwrap();
    let history = client.history_recent(Some(1)).await.unwrap();
    let (_, entry) = history.last().expect("the prompt is in ComfyUI's history");
    assert!(
        matches!(entry.outcome(), PromptOutcome::Interrupted(_)),
        "ComfyUI interrupted the prompt: {:?}",
        entry.outcome()
    );
    let q = client.queue().await.unwrap();
    assert!(q.running.is_empty() && q.pending.is_empty(), "{q:?}");
    // The runner is free again: the next job runs.
    let next = env.submit(&sampler(3, 8)).await;
    assert_eq!(env.wait_terminal(&next).await.status, JobStatus::Succeeded);
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_the_end_returns_the_finished_job_unchanged() {
    let env = Env::new();
    let sim = sim(10).await;
    let runner = start_runner(
        &env,
        EngineSpec::Attach {
            url: sim.base_url(),
        },
        production_lease_config(),
    );
    let id = env.submit(&sampler(3, 9)).await;
    let done = env.wait_terminal(&id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    let answer = env.jobs.cancel(TENANT, id.as_str()).await.unwrap();
    assert_eq!(answer.status, JobStatus::Succeeded);
    assert_eq!(answer.outputs.len(), done.outputs.len());
    assert_eq!(env.job(&id).await, done, "a late cancel writes nothing");
    runner.stop().await;
}
