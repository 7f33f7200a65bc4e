//! Chaos on moto: jobs through two `gpu-runner-aws` **processes** (the built binary,
//! configured from the environment as the ECS task definition configures it, with
//! `AWS_ENDPOINT_URL` pointing at moto_server), each starting its own `comfyui-sim`
//! child (40 ms per node, so kills land mid-job). The test SIGKILLs one of the two at
//! random points and starts it again (a new incarnation, as ECS would start a new
//! task); the other runs throughout. Both runners' queue is wrapped in the fault
//! injector (`SERVERLESS_COMFYUI_TEST_CHAOS_QUEUE_SEED`, test-only: duplicates,
//! reordering, early redelivery, stale receipts, ignored deletes). The dispatcher's
//! tick runs in the test process every second over the same DynamoDB, S3 and SQS
//! (takeovers of a killed runner's job need the lapsed message back, and the tick
//! reaps what ran out of attempts).
//!
//! Afterwards, the verdicts of tests/chaos.rs (tests/common/chaos.rs): every job
//! terminal; none committed twice (each runner logs one `event=committed` line per
//! terminal write, counted over every incarnation's log); each success lists exactly
//! one output, of its finishing attempt (`outputs/{job}/{attempt}/`), present in S3
//! and cyan.
//!
//! Where moto is not AWS: moto's DynamoDB checks a write's condition and applies it
//! without a lock, so two runners' conditional writes expecting the same revision
//! could both win; this test caught a job committed twice that way (attempts 1 and 2
//! both `succeeded`, once in about a dozen runs). DynamoDB applies conditional writes
//! atomically, so the harness runs moto through tests/aws/moto_server.py, which
//! serializes moto's DynamoDB writes. SQS on moto redelivers and long-polls as SQS
//! does; its stale receipt handles still delete (the injector's faults cover that).
//!
//! 200 jobs, in the test command: `cargo test -p gpu-runner --features aws --test
//! chaos_aws -- --nocapture` prints the figures
//! (README.md, Chaos tests). `CHAOS_SEED` replays a kill schedule and the queue
//! faults (not moto's timing).
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chaos::{
    Tally, judge, kill_runner, sigkill, sim_binary, sim_command, tick_every_second,
};
use common::{Env, workflow};
use futures::StreamExt;
use gpu_runner::aws_env::{TEST_CHAOS_QUEUE_SEED, ports};
use jobs::model::JobId;
use rand::{Rng, SeedableRng};

const LEASE_S: f64 = 2.0;
const MAX_ATTEMPTS: u32 = 3;
/// Far above MaxAttempts, as in the template: duplicates and early redeliveries count
/// as receives.
const MAX_RECEIVE_COUNT: u32 = 20;

/// The 200 jobs run in the test command: about two minutes on a busy 2-core
/// machine (103 s and 129 s measured), under the three minutes allowed for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_moto_200_jobs_two_aws_runners_one_killed_faulty_queue() {
    chaos(200, 15, Duration::from_secs(480)).await;
}

/// The task definition's environment for one runner incarnation, on moto.
fn runner_env(
    resources: &aws::AwsConfig,
    sim: &Path,
    worker: &str,
    seed: u64,
) -> Vec<(String, String)> {
    let q = &resources.queues;
    let vars = [
        ("SERVERLESS_COMFYUI_TABLE", resources.table.clone()),
        ("SERVERLESS_COMFYUI_BUCKET", resources.bucket.clone()),
        ("SERVERLESS_COMFYUI_WORK_QUEUE_URL", q.work.clone()),
        ("SERVERLESS_COMFYUI_WAKE_QUEUE_URL", q.wake.clone()),
        (
            "SERVERLESS_COMFYUI_WORK_DLQ_URL",
            q.work_dead_letter.clone(),
        ),
        (
            "SERVERLESS_COMFYUI_WAKE_DLQ_URL",
            q.wake_dead_letter.clone(),
        ),
        ("SERVERLESS_COMFYUI_COMFYUI_CMD", sim_command(sim)),
        ("SERVERLESS_COMFYUI_WORKER_ID", worker.to_string()),
        ("SERVERLESS_COMFYUI_LEASE_SECONDS", LEASE_S.to_string()),
        ("SERVERLESS_COMFYUI_MAX_ATTEMPTS", MAX_ATTEMPTS.to_string()),
        ("SERVERLESS_COMFYUI_IDLE_TIMEOUT_SECONDS", "0".into()),
        ("SERVERLESS_COMFYUI_SHUTDOWN_GRACE_SECONDS", "1".into()),
        ("SERVERLESS_COMFYUI_READY_TIMEOUT_SECONDS", "30".into()),
        (TEST_CHAOS_QUEUE_SEED, seed.to_string()),
        // The SDK's own chain, pointed at moto with its test credentials.
        ("AWS_ENDPOINT_URL", aws::testing::moto().endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("RUST_LOG", "info".into()),
    ];
    vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// SIGTERM, then up to 10 s to exit (an idle runner deregisters and exits at once);
/// SIGKILL after that.
fn stop_runner(child: &mut Child) {
    // SAFETY: signals a process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(child.id());
    let _ = child.wait();
}

fn spawn_runner(vars: &[(String, String)], logs: &Path, worker: &str) -> Child {
    let log = std::fs::File::create(logs.join(format!("{worker}.log"))).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gpu-runner-aws"));
    // Nothing of the developer's AWS setup leaks in (profiles, session tokens).
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("gpu-runner-aws starts")
}

/// `jobs` jobs, at most `max_kills` kills of the first runner; all terminal within
/// `limit`.
async fn chaos(jobs: usize, max_kills: u32, limit: Duration) {
    let sim = sim_binary();
    let resources = aws::testing::fresh_resources(MAX_RECEIVE_COUNT).await;
    let clients = aws::testing::clients().await;
    // The test's ports are the runner's own (`gpu_runner::aws_env::ports`).
    let env = Env::over(
        tempfile::tempdir().unwrap(),
        ports(
            &aws::DataConfig {
                table: resources.table.clone(),
                bucket: resources.bucket.clone(),
                queues: resources.queues.clone(),
            },
            &clients,
        ),
    );
    // Kept when the test fails (printed here), removed when it passes.
    let logs = tempfile::Builder::new()
        .prefix("chaos_aws-")
        .tempdir()
        .unwrap()
        .keep();
    println!("runner logs: {}", logs.display());
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u16>() as u64);
    println!("chaos on moto (seed {seed}; set CHAOS_SEED to replay the kill schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let submitting = Instant::now();
    let ids: Vec<JobId> = futures::stream::iter(0..jobs)
        .map(|i| {
            // invert.json, the width varied so ComfyUI's cache never serves a node.
            let mut wf = workflow("invert.json");
            wf["1"]["inputs"]["width"] = serde_json::json!(16 + i);
            let env = &env;
            async move { env.submit(&wf).await }
        })
        // One at a time: concurrent submits conflict on the tenant's usage counter
        // (TransactionConflict, a 503 a client retries), which is not this test's point.
        .buffered(1)
        .collect()
        .await;
    let submit_s = submitting.elapsed().as_secs_f64();

    // The tick, as `dispatch` runs it every minute (here every second: the leases are
    // 2 s). No launcher: the test starts the runners.
    let ticking = tick_every_second(&env);

    let mut incarnation = 0u64;
    let mut next_runner = |slot: usize| {
        incarnation += 1;
        let worker = format!("aws-runner-s{slot}-{incarnation}");
        let vars = runner_env(&resources, &sim, &worker, seed * 1000 + incarnation);
        (spawn_runner(&vars, &logs, &worker), worker)
    };
    // Slot 0 is the one killed; slot 1 runs throughout.
    let mut runners: Vec<(Child, String)> = (0..2).map(&mut next_runner).collect();

    let started = Instant::now();
    let deadline = started + limit;
    let (mut kills, mut orphans) = (0u32, 0u32);
    let mut killed: HashSet<String> = HashSet::new();
    let mut last_kill = Instant::now();
    let mut next_kill = started + Duration::from_millis(rng.gen_range(1000..6000));
    let mut pending: Vec<JobId> = ids.clone();
    loop {
        let mut still = Vec::with_capacity(pending.len());
        for id in pending {
            if !env.job(&id).await.status.is_terminal() {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {}/{jobs} jobs terminal after {limit:?} (seed {seed})",
            jobs - pending.len()
        );
        for (slot, (child, worker)) in runners.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                println!("runner {worker} exited by itself: {status}");
                (*child, *worker) = next_runner(slot);
            }
        }
        // Kill at random points (booting, idle, mid-job, committing), 1-6 s apart so
        // that the restarted runner gets work done in between.
        if kills < max_kills && Instant::now() >= next_kill {
            orphans += kill_runner(&mut runners[0].0);
            killed.insert(runners[0].1.clone());
            kills += 1;
            last_kill = Instant::now();
            next_kill = last_kill + Duration::from_millis(rng.gen_range(1000..6000));
            runners[0] = next_runner(0);
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..400))).await;
    }
    let all_done = Instant::now();
    // SIGTERM, so the last lines of the runners still up are written: only a runner
    // the test SIGKILLed may have lost one.
    for (child, _) in &mut runners {
        stop_runner(child);
    }
    ticking.abort();

    let tally = judge(&env, &ids, &logs).await;
    let Tally {
        by_status,
        by_error,
        attempts,
        preempted,
        logged,
        duplicates,
        unlogged,
    } = &tally;
    println!(
        "chaos on moto (seed {seed}): {jobs} jobs submitted in {submit_s:.1} s, all terminal {:.1} s after the runners started; \
         statuses {by_status:?}; errors {by_error:?}; attempts {attempts:?}; preempted {preempted}; \
         commits logged {logged} (none twice; {} lost with a killed runner); duplicate deliveries absorbed {duplicates}; \
         runner kills {kills}, orphaned ComfyUI children {orphans}; all terminal {:.1} s after the last kill",
        all_done.duration_since(started).as_secs_f64(),
        unlogged.len(),
        all_done.duration_since(last_kill).as_secs_f64(),
    );
    // A commit without its log line is one a SIGKILL cut short, never a second one.
    for (id, owner) in unlogged {
        assert!(
            owner.as_ref().is_some_and(|o| killed.contains(o)),
            "{id} succeeded without a logged commit, held by {owner:?}, which was not killed"
        );
    }
    assert!(kills > 0, "the runner was killed at least once");
    assert_eq!(orphans, 0, "a ComfyUI child outlived its runner");
    assert!(
        tally.succeeded() >= jobs * 9 / 10,
        "most jobs succeed: {by_status:?} {by_error:?}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}
