//! Runner benchmarks, measured side by side in one run (ratios, not absolute times):
//!
//! - **P2, pipelining**: N jobs (default 100) of about 0.5 s each (simulated KSampler
//!   steps; each job's seed busts the cache) through one runner, against the same N
//!   prompts posted straight to a fresh simulator back to back. Target ≤ 1.02. Also the
//!   ratio of a serial runner (stage, submit, wait, upload, one at a time).
//! - **P3, runner overhead**: per job, the time the runner adds outside ComfyUI's
//!   execution, jobs one at a time (so no wait behind a previous job): (receive →
//!   `execution_start` seen) + (prompt end seen → finish committed). p50/p99; target
//!   p50 ≤ 15 ms.
//! - **P5, pickup latency**: submit → the runner holds the job (`started_at -
//!   created_at`, from the store), warm idle runner. p50/p99; target p50 ≤ 50 ms.
//!
//! The runner runs in this process but over its own adapter instances (its own SQLite
//! connections and queue poller), as a separate process would.
//!
//! ```text
//! cargo bench -p gpu-runner --bench runner_bench                 # release
//! cargo bench -p gpu-runner --bench runner_bench -- --jobs 20    # quicker
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyui::{Client, PromptRequest};
use comfyui_sim::{SimConfig, Simulator};
use gpu_runner::{EngineSpec, JobTiming, Runner, RunnerConfig, RunnerObserver};
use jobs::model::{JobId, JobStatus};
use jobs::ports::SystemClock;
use jobs::service::{JobService, JobsConfig, Ports};
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

fn workflow(name: &str) -> Value {
    let path = format!(
        "{}/../examples/workflows/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).expect("workflow")).unwrap()
}

fn sampler(steps: u64, seed: u64) -> Value {
    let mut wf = workflow("txt2img-sd15.json");
    wf["3"]["inputs"]["steps"] = json!(steps);
    wf["3"]["inputs"]["seed"] = json!(seed);
    wf["5"]["inputs"]["width"] = json!(64);
    wf["5"]["inputs"]["height"] = json!(64);
    wf
}

struct Env {
    _dir: tempfile::TempDir,
    api: Ports,
    runner_ports: Ports,
    jobs: JobService,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = local::DataDir::open(dir.path()).unwrap();
    let api = data
        .ports(Arc::new(SystemClock), "http://127.0.0.1:8787")
        .unwrap();
    let runner_ports = data
        .ports(Arc::new(SystemClock), "http://127.0.0.1:8787")
        .unwrap();
    let jobs = JobService::new(api.clone(), JobsConfig::default(), vec![7; 32]);
    Env {
        _dir: dir,
        api,
        runner_ports,
        jobs,
    }
}

async fn submit(env: &Env, wf: &Value) -> JobId {
    let body = serde_json::to_vec(&json!({ "workflow": wf })).unwrap();
    let s = env.jobs.submit("bench", &body, None).await.expect("submit");
    JobId::parse(&s.job.id).unwrap()
}

async fn wait_all(env: &Env, ids: &[JobId]) {
    let mut i = 0;
    while i < ids.len() {
        let job = env.api.store.get_job(&ids[i]).await.unwrap().unwrap();
        if job.status.is_terminal() {
            assert_eq!(job.status, JobStatus::Succeeded, "{:?}", job.error);
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[derive(Default)]
struct Timings(Mutex<Vec<JobTiming>>);

impl RunnerObserver for Timings {
    fn job_done(&self, t: &JobTiming) {
        self.0.lock().unwrap().push(t.clone());
    }
}

async fn start_runner(
    env: &Env,
    url: String,
    pipelining: bool,
    observer: Option<Arc<Timings>>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = RunnerConfig {
        pipelining,
        idle_timeout: None,
        observer: observer.map(|o| o as Arc<dyn RunnerObserver>),
        ..RunnerConfig::default()
    };
    let worker = config.worker_id.clone();
    let token = CancellationToken::new();
    let runner = Runner::new(config, env.runner_ports.clone(), EngineSpec::Attach { url });
    let t = token.clone();
    let task = tokio::spawn(async move {
        runner.run(t).await.expect("runner");
    });
    // Warm: wait until it reports idle.
    loop {
        let workers = env.api.store.list_workers().await.unwrap();
        if workers
            .iter()
            .any(|w| w.id == worker && w.phase == jobs::ports::WorkerPhase::Idle)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (token, task)
}

async fn sim(step_ms: u64) -> comfyui_sim::SimHandle {
    Simulator::start(SimConfig {
        step_ms,
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// The same prompts posted straight to the simulator, back to back.
async fn direct(n: u64, steps: u64, step_ms: u64) -> Duration {
    let sim = sim(step_ms).await;
    let client = Client::new(&sim.base_url()).unwrap();
    let t0 = Instant::now();
    let mut last = String::new();
    for i in 0..n {
        let mut wf = sampler(steps, i).as_object().unwrap().clone();
        comfyui::rewrite_filename_prefixes(&mut wf, |_, old| format!("{old}_direct_{i}"));
        last = comfyui::new_prompt_id();
        client
            .queue_prompt(&PromptRequest::new(last.clone(), wf).client_id("bench-direct"))
            .await
            .unwrap();
    }
    while client.history(&last).await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

async fn through_runner(n: u64, steps: u64, step_ms: u64, pipelining: bool) -> Duration {
    let sim = sim(step_ms).await;
    let env = env();
    let (token, task) = start_runner(&env, sim.base_url(), pipelining, None).await;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit(&env, &sampler(steps, i)).await);
    }
    wait_all(&env, &ids).await;
    let took = t0.elapsed();
    token.cancel();
    let _ = task.await;
    took
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` compatibility
    }
    let n = arg("--jobs", 100);
    let steps = arg("--steps", 10);
    let step_ms = arg("--step-ms", 50);
    let samples = arg("--samples", 50);
    println!(
        "runner_bench ({} build): P2 with {n} jobs of {steps} steps x {step_ms} ms",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );

    let d = direct(n, steps, step_ms).await;
    println!("P2 direct to the simulator:   {:8.1} ms", ms(d));
    let p = through_runner(n, steps, step_ms, true).await;
    println!(
        "P2 through the runner:        {:8.1} ms  ratio {:.4} (target <= 1.02)",
        ms(p),
        p.as_secs_f64() / d.as_secs_f64()
    );
    let s = through_runner(n, steps, step_ms, false).await;
    println!(
        "P2 serial runner (no pipeline): {:6.1} ms  ratio {:.4}",
        ms(s),
        s.as_secs_f64() / d.as_secs_f64()
    );

    // P3 and P5: tiny jobs one at a time through a warm runner.
    let sim = sim(step_ms).await;
    let env = env();
    let timings = Arc::new(Timings::default());
    let (token, task) = start_runner(&env, sim.base_url(), true, Some(timings.clone())).await;
    let mut pickups = Vec::new();
    for i in 0..samples {
        let mut wf = workflow("invert.json");
        wf["1"]["inputs"]["width"] = json!(16 + i);
        let id = submit(&env, &wf).await;
        wait_all(&env, std::slice::from_ref(&id)).await;
        let job = env.api.store.get_job(&id).await.unwrap().unwrap();
        pickups.push(
            (job.started_at.unwrap() - job.created_at)
                .num_microseconds()
                .unwrap() as f64
                / 1000.0,
        );
        // Let the runner go back to its idle long-poll before the next submit.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    let _ = task.await;
    // Overhead = (receive → committed, wall clock) − ComfyUI's own execution time
    // (its execution_start → execution_success timestamps, from history). Anything
    // between, WebSocket delivery included, counts against the runner.
    let mut overheads: Vec<f64> = timings
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| {
            let total = (t.finished_at? - t.received_at).num_microseconds()? as f64 / 1000.0;
            let (start, end) = t.comfy_exec_ms?;
            Some(total - (end - start) as f64)
        })
        .collect();
    let split: Vec<(f64, f64)> = timings
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|t| {
            Some((
                ms(t.exec_start?.duration_since(t.received)),
                ms(t.finished?.duration_since(t.exec_end?)),
            ))
        })
        .collect();
    if std::env::var_os("BENCH_DETAIL").is_some() {
        for t in timings.0.lock().unwrap().iter() {
            println!(
                "   detail: recv->claimed {:.1} recv->submitted {:.1} submitted->exec_start {:.1} exec_end->finished {:.1}",
                ms(t.claimed.unwrap().duration_since(t.received)),
                ms(t.submitted.unwrap().duration_since(t.received)),
                ms(t.exec_start.unwrap().duration_since(t.submitted.unwrap())),
                ms(t.finished.unwrap().duration_since(t.exec_end.unwrap())),
            );
        }
    }
    let mut before: Vec<f64> = split.iter().map(|s| s.0).collect();
    let mut after: Vec<f64> = split.iter().map(|s| s.1).collect();
    before.sort_by(f64::total_cmp);
    after.sort_by(f64::total_cmp);
    overheads.sort_by(f64::total_cmp);
    pickups.sort_by(f64::total_cmp);
    println!(
        "P3 runner overhead ({} jobs): p50 {:.1} ms, p99 {:.1} ms (target p50 <= 15 ms)",
        overheads.len(),
        pct(&overheads, 0.5),
        pct(&overheads, 0.99)
    );
    println!(
        "   as the runner sees it: receive -> execution_start event p50 {:.1} ms, prompt end seen -> committed p50 {:.1} ms",
        pct(&before, 0.5),
        pct(&after, 0.5)
    );
    println!(
        "P5 pickup latency ({} jobs):  p50 {:.1} ms, p99 {:.1} ms (target p50 <= 50 ms)",
        pickups.len(),
        pct(&pickups, 0.5),
        pct(&pickups, 0.99)
    );
}
