//! Cancel latency: `POST /jobs/{id}/cancel` (the job service's cancel) → the job
//! `canceled` in the store, for a job running on the simulator under a runner with the
//! production settings (30 s lease, so a heartbeat every 10 s; status poll every 1 s).
//! Target: p50 ≤ 1 s, p99 ≤ 2 s.
//!
//! Each sample: submit a job of 100 sampler steps × 50 ms (about 5 s), wait until its
//! sampler ticks, wait a varying 0–997 ms more (so cancels fall at every phase of the
//! poll), cancel, and time until the store says `canceled`. The runner runs in this
//! process over its own adapter instances (its own SQLite connections), as the separate
//! process of `dev` would.
//!
//! ```text
//! cargo bench -p gpu-runner --bench cancel_bench                        # 30 samples
//! cargo bench -p gpu-runner --bench cancel_bench -- --samples 100
//! cargo bench -p gpu-runner --bench cancel_bench -- --status-poll-ms 3600000 --samples 3
//! #   (the poll off: what the heartbeat alone gives)
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyui_sim::{SimConfig, Simulator};
use gpu_runner::{EngineSpec, JobTiming, Runner, RunnerConfig, RunnerObserver};
use jobs::model::{JobId, JobStatus};
use jobs::ports::SystemClock;
use jobs::service::{JobService, JobsConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sampler(steps: u64, seed: u64) -> Value {
    let path = format!(
        "{}/../examples/workflows/txt2img-sd15.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut wf: Value = serde_json::from_slice(&std::fs::read(path).expect("workflow")).unwrap();
    wf["3"]["inputs"]["steps"] = json!(steps);
    wf["3"]["inputs"]["seed"] = json!(seed);
    wf["5"]["inputs"]["width"] = json!(64);
    wf["5"]["inputs"]["height"] = json!(64);
    wf
}

/// The runner's own timings, to show where a slow cancel spent its time.
#[derive(Default)]
struct Timings(Mutex<Vec<JobTiming>>);

impl RunnerObserver for Timings {
    fn job_done(&self, t: &JobTiming) {
        self.0.lock().unwrap().push(t.clone());
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Polls the job until `done` holds, at most `limit`.
async fn wait(
    store: &dyn jobs::ports::JobStore,
    id: &JobId,
    limit: Duration,
    done: impl Fn(&jobs::model::Job) -> bool,
) -> jobs::model::Job {
    let end = Instant::now() + limit;
    loop {
        let job = store.get_job(id).await.unwrap().unwrap();
        if done(&job) || Instant::now() >= end {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples = arg("--samples", 30).max(1);
    let poll_ms = arg("--status-poll-ms", 1000);
    let sim = Simulator::start(SimConfig {
        step_ms: 50,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = local::DataDir::open(dir.path()).unwrap();
    let api = data
        .ports(Arc::new(SystemClock), "http://127.0.0.1:8787")
        .unwrap();
    let runner_ports = data
        .ports(Arc::new(SystemClock), "http://127.0.0.1:8787")
        .unwrap();
    let jobs = JobService::new(api.clone(), JobsConfig::default(), vec![7; 32]);
    let timings = Arc::new(Timings::default());
    let config = RunnerConfig {
        idle_timeout: None,
        status_poll: Duration::from_millis(poll_ms),
        observer: Some(timings.clone() as Arc<dyn RunnerObserver>),
        ..RunnerConfig::default()
    };
    println!(
        "cancel latency: lease {:?} (heartbeat every {:?}), status poll {:?}, {samples} samples",
        config.lease,
        config.lease / 3,
        config.status_poll
    );
    let token = CancellationToken::new();
    let runner = Runner::new(
        config,
        runner_ports,
        EngineSpec::Attach {
            url: sim.base_url(),
        },
    );
    let task = tokio::spawn(runner.run(token.clone()));

    let mut took = Vec::new();
    for i in 0..samples {
        let body = serde_json::to_vec(&json!({ "workflow": sampler(100, 1000 + i) })).unwrap();
        let submitted = jobs.submit("bench", &body, None).await.expect("submit");
        let id = JobId::parse(&submitted.job.id).unwrap();
        let running = wait(api.store.as_ref(), &id, Duration::from_secs(30), |j| {
            j.status == JobStatus::Running
        })
        .await;
        assert_eq!(running.status, JobStatus::Running, "the job never ran");
        // The sampler is at work.
        let ticking = Instant::now() + Duration::from_secs(10);
        while Instant::now() < ticking {
            let p = api.store.get_progress(&id).await.unwrap();
            if p.is_some_and(|p| p.progress.step.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(i * 331 % 997)).await;
        let asked = Instant::now();
        jobs.cancel("bench", id.as_str()).await.expect("cancel");
        let job = wait(api.store.as_ref(), &id, Duration::from_secs(30), |j| {
            j.status.is_terminal()
        })
        .await;
        let t = asked.elapsed();
        assert_eq!(
            job.status,
            JobStatus::Canceled,
            "sample {i} ended {} after {t:?}",
            job.status
        );
        assert!(job.outputs.is_empty());
        took.push(t.as_secs_f64() * 1000.0);
        // The task reports once it has cleaned up; wait for it (bounded).
        let mut stopped = None;
        for _ in 0..500 {
            let seen = timings
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|x| x.job_id == id)
                .cloned();
            if let Some(x) = seen {
                stopped = x.exec_end.map(|e| e.saturating_duration_since(asked));
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!(
            "  sample {i:>3}: {:>7.1} ms (the prompt's end seen by the runner after {})",
            t.as_secs_f64() * 1000.0,
            stopped.map_or("?".into(), |d| format!(
                "{:.1} ms",
                d.as_secs_f64() * 1000.0
            ))
        );
    }
    took.sort_by(f64::total_cmp);
    println!(
        "cancel request → canceled: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n = {}; target p50 ≤ 1000 ms, p99 ≤ 2000 ms)",
        pct(&took, 0.5),
        pct(&took, 0.99),
        took[took.len() - 1],
        took.len()
    );
    token.cancel();
    let _ = task.await;
}
