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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jobs::dispatch::{DispatchConfig, Dispatcher};
use jobs::model::{JobId, JobStatus};
use jobs::ports::NoLauncher;
use rand::{Rng, SeedableRng};

const RUNNERS: usize = 3;
const LEASE_S: f64 = 2.0;
const MAX_ATTEMPTS: u32 = 3;

fn target_dir() -> PathBuf {
    // target/<profile>/deps/chaos-xxxx → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn sim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COMFYUI_SIM_BIN") {
        return PathBuf::from(p);
    }
    let path = target_dir().join("comfyui-sim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "-q",
        "-p",
        "comfyui-sim",
        "--bin",
        "comfyui-sim",
        "--manifest-path",
    ]);
    build.arg(&manifest);
    if target_dir().file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(root) = target_dir().parent() {
        build.env("CARGO_TARGET_DIR", root);
    }
    let status = build.status();
    assert!(
        path.exists(),
        "comfyui-sim binary not found at {} (build: {status:?}); run `cargo build -p comfyui-sim` or set COMFYUI_SIM_BIN",
        path.display()
    );
    path
}

struct RunnerProc {
    child: Child,
    worker: String,
}

fn spawn_runner(data: &Path, logs: &Path, sim: &Path, worker: &str, seed: u64) -> RunnerProc {
    let log = std::fs::File::create(logs.join(format!("{worker}.log"))).unwrap();
    let cmd = format!(
        "{} --port {{port}} --step-ms 1 --model-node-ms 0 --fault-slow-node-ms 40",
        sim.display()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_gpu-runner"))
        .arg("--data-dir")
        .arg(data)
        .args(["--comfyui-cmd", &cmd])
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

/// Direct children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        if state == Some("Z") {
            continue;
        }
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn sigkill(pid: u32) {
    // SAFETY: sends a signal to a process this test started (or its child).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// `event=duplicate` lines in every runner log: deliveries absorbed without a rerun.
fn count_duplicates(logs: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        n += text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["event"] == "duplicate")
            .count();
    }
    n
}

#[derive(Default, Debug)]
struct Commit {
    attempts: Vec<u64>,
    statuses: Vec<String>,
}

fn read_commits(logs: &Path) -> HashMap<String, Commit> {
    let mut commits: HashMap<String, Commit> = HashMap::new();
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let f = &v["fields"];
            if f["event"] != "committed" {
                continue;
            }
            let id = f["job_id"].as_str().unwrap_or_default().to_string();
            let c = commits.entry(id).or_default();
            c.attempts.push(f["attempt"].as_u64().unwrap_or(0));
            c.statuses
                .push(f["status"].as_str().unwrap_or_default().to_string());
        }
    }
    commits
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
    let dispatcher = Arc::new(Dispatcher::new(
        env.jobs.clone(),
        Arc::new(NoLauncher),
        DispatchConfig::default(),
    ));
    let ticking = {
        let d = dispatcher.clone();
        tokio::spawn(async move {
            loop {
                d.tick().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

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
            let pid = runners[slot].child.id();
            let kids = children_of(pid);
            if rng.gen_bool(0.5) {
                sigkill(pid);
                let _ = runners[slot].child.wait();
                runner_kills += 1;
                // Its ComfyUI dies with it (parent-death signal).
                let t = Instant::now();
                while kids.iter().any(|&k| alive(k)) && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                orphans += kids.iter().filter(|&&k| alive(k)).count() as u32;
                for &k in &kids {
                    sigkill(k);
                }
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
    let commits = read_commits(&logs);
    let mut by_status: HashMap<String, u32> = HashMap::new();
    let mut by_error: HashMap<String, u32> = HashMap::new();
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    let (mut preempted, mut twice) = (0u32, 0u32);
    for id in &ids {
        let job = env.job(id).await;
        assert!(job.status.is_terminal(), "{id} is {}", job.status);
        *by_status.entry(job.status.to_string()).or_default() += 1;
        *attempts.entry(job.attempt).or_default() += 1;
        if job.preemptions > 0 {
            preempted += 1;
        }
        if let Some(e) = &job.error {
            *by_error.entry(e.code.clone()).or_default() += 1;
        }
        let c = commits.get(id.as_str());
        let n = c.map(|c| c.attempts.len()).unwrap_or(0);
        if n > 1 {
            twice += 1;
        }
        assert!(n <= 1, "job {id} was committed {n} times: {c:?}");
        if let Some(c) = c {
            assert_eq!(
                c.attempts[0],
                u64::from(job.attempt),
                "{id}: the logged commit is the stored attempt"
            );
            assert_eq!(c.statuses[0], job.status.to_string());
        }
        if job.status == JobStatus::Succeeded {
            assert_eq!(
                job.outputs.len(),
                1,
                "{id}: exactly the finishing attempt's outputs"
            );
            let o = &job.outputs[0];
            assert!(
                o.blob_key
                    .starts_with(&format!("outputs/{id}/{}/", job.attempt)),
                "{id}: {} is not under attempt {}",
                o.blob_key,
                job.attempt
            );
            let (_, _, rgb) = png_first_pixel(&env.blob(&o.blob_key).await);
            assert_eq!(rgb, [0, 255, 255]);
        }
    }
    let logged: usize = commits.values().map(|c| c.attempts.len()).sum();
    let duplicates = count_duplicates(&logs);
    println!(
        "chaos (seed {seed}): {jobs} jobs in {:.1} s; statuses {by_status:?}; errors {by_error:?}; attempts {attempts:?}; \
         preempted {preempted}; commits logged {logged} (double commits {twice}); duplicate deliveries absorbed {duplicates}; \
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
