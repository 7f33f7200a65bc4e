//! Chaos: 300 jobs (1,000 in the long version, run on demand with `cargo test -p
//! gpu-runner --test chaos -- --ignored`) through three runner **subprocesses** (the built `gpu-runner`
//! binary), each with its own `comfyui-sim` child (40 ms per node, so kills land
//! mid-job), while the test SIGKILLs runners and
//! ComfyUI children at random and every runner's work queue injects faults
//! (`--chaos-queue-seed`: duplicates, reordering, early redelivery, stale receipts,
//! ignored deletes). A killed runner is replaced, as the launcher would.
//!
//! Binaries: `gpu-runner` comes from Cargo (`CARGO_BIN_EXE_gpu-runner`). `comfyui-sim`
//! belongs to another package, so the test builds it with `$CARGO build -p comfyui-sim
//! --bin comfyui-sim` (a no-op when fresh) and runs it from the same target directory
//! as this test executable (`target/<profile>/comfyui-sim`). Set `COMFYUI_SIM_BIN` to
//! use another.
//!
//! Afterwards: every job is terminal; no job was committed twice (each runner logs one
//! `event=committed` line per terminal write; the logs of every incarnation are
//! counted); each succeeded job lists exactly its finishing attempt's outputs (under
//! `outputs/{job}/{attempt}/`, present, cyan); no job stayed unfinished longer than the
//! lease and retries allow once the killing stopped. The counts are printed, with the
//! duplicate deliveries the runners absorbed (`event=duplicate` lines).
//! `CHAOS_SEED` replays a kill schedule.
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chaos::{
    Tally, children_of, judge, kill_runner, sigkill, sim_binary, sim_command, tick_every_second,
};
use common::*;
use jobs::model::JobId;
use rand::{Rng, SeedableRng};

const RUNNERS: usize = 3;
const LEASE_S: f64 = 2.0;
const MAX_ATTEMPTS: u32 = 3;

struct RunnerProc {
    child: Child,
    worker: String,
}

fn spawn_runner(data: &Path, logs: &Path, sim: &Path, worker: &str, seed: u64) -> RunnerProc {
    let log = std::fs::File::create(logs.join(format!("{worker}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gpu-runner"))
        .arg("--data-dir")
        .arg(data)
        .args(["--comfyui-cmd", &sim_command(sim)])
        .args(["--worker-id", worker])
        .args(["--lease-seconds", &LEASE_S.to_string()])
        .args(["--max-attempts", &MAX_ATTEMPTS.to_string()])
        .args([
            "--idle-timeout",
            "0",
            "--shutdown-grace",
            "1",
            "--ready-timeout",
            "30",
        ])
        .args(["--chaos-queue-seed", &seed.to_string()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("gpu-runner starts");
    RunnerProc {
        child,
        worker: worker.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_300_jobs_three_runners_kills_and_a_faulty_queue() {
    chaos(300, 20, Duration::from_secs(240)).await;
}

/// The long version (minutes): not in the test command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with `cargo test -p gpu-runner --test chaos -- --ignored`"]
async fn chaos_1000_jobs_three_runners_kills_and_a_faulty_queue() {
    chaos(1000, 60, Duration::from_secs(900)).await;
}

/// `jobs` jobs, at most `max_kills` kills; all terminal within `limit`.
async fn chaos(jobs: usize, max_kills: u32, limit: Duration) {
    let sim = sim_binary();
    let env = Env::new();
    let logs = env.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::random::<u16>() as u64);
    println!("chaos seed {seed} (set CHAOS_SEED to replay the kill schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let mut ids: Vec<JobId> = Vec::with_capacity(jobs);
    for i in 0..jobs {
        // invert.json, with the width varied so ComfyUI's cache never serves a node.
        let mut wf = workflow("invert.json");
        wf["1"]["inputs"]["width"] = serde_json::json!(16 + i);
        ids.push(env.submit(&wf).await);
    }

    // The tick, as `dev` runs it: the safety net (dead letters, lapsed leases).
    let ticking = tick_every_second(&env);

    let mut incarnation = 0u64;
    let mut next_runner = |slot: usize| {
        incarnation += 1;
        let worker = format!("runner-s{slot}-{incarnation}");
        spawn_runner(
            env.dir.path(),
            &logs,
            &sim,
            &worker,
            seed * 1000 + incarnation,
        )
    };
    let mut runners: Vec<RunnerProc> = (0..RUNNERS).map(&mut next_runner).collect();

    let started = Instant::now();
    let (mut runner_kills, mut comfy_kills, mut orphans) = (0u32, 0u32, 0u32);
    let mut last_kill = Instant::now();
    let deadline = started + limit;
    loop {
        let mut done = 0;
        for id in &ids {
            if env.job(id).await.status.is_terminal() {
                done += 1;
            }
        }
        if done == jobs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done}/{jobs} jobs terminal after {limit:?} (seed {seed})"
        );
        // Keep three runners alive, as the launcher would.
        for (slot, r) in runners.iter_mut().enumerate() {
            if let Ok(Some(status)) = r.child.try_wait() {
                println!("runner {} exited by itself: {status}", r.worker);
                *r = next_runner(slot);
            }
        }
        if runner_kills + comfy_kills < max_kills && rng.gen_bool(0.7) {
            let slot = rng.gen_range(0..RUNNERS);
            let kids = children_of(runners[slot].child.id());
            if rng.gen_bool(0.5) {
                orphans += kill_runner(&mut runners[slot].child);
                runner_kills += 1;
                runners[slot] = next_runner(slot);
            } else if let Some(&k) = kids.first() {
                sigkill(k);
                comfy_kills += 1;
            }
            last_kill = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..900))).await;
    }
    let all_done = Instant::now();
    for r in &mut runners {
        sigkill(r.child.id());
        let _ = r.child.wait();
    }
    ticking.abort();

    // ------------------------------------------------------------------ verdicts
    let Tally {
        by_status,
        by_error,
        attempts,
        preempted,
        logged,
        duplicates,
        ..
    } = judge(&env, &ids, &logs).await;
    println!(
        "chaos (seed {seed}): {jobs} jobs in {:.1} s; statuses {by_status:?}; errors {by_error:?}; attempts {attempts:?}; \
         preempted {preempted}; commits logged {logged} (none twice); duplicate deliveries absorbed {duplicates}; \
         runner kills {runner_kills}, ComfyUI kills {comfy_kills}, orphaned ComfyUI children {orphans}; \
         all terminal {:.1} s after the last kill",
        started.elapsed().as_secs_f64(),
        all_done.duration_since(last_kill).as_secs_f64(),
    );
    assert_eq!(orphans, 0, "a ComfyUI child outlived its runner");
    // Nothing stuck: once the killing stopped, everything ended within the lease and
    // retry budget (lapse + takeover per attempt), with room for slow CI.
    let budget = Duration::from_secs_f64(LEASE_S * f64::from(MAX_ATTEMPTS + 1) + 60.0);
    assert!(all_done.duration_since(last_kill) < budget);
    assert!(
        by_status.get("succeeded").copied().unwrap_or(0) as usize >= jobs * 9 / 10,
        "most jobs succeed: {by_status:?} {by_error:?}"
    );
}
