//! What the chaos suites share, whichever adapters the runners use (tests/chaos.rs on
//! a local data dir, tests/chaos_aws.rs on moto): the simulator binary, killing a runner
//! process and checking its ComfyUI child died with it, reading the runners' logs, and
//! the verdicts on every job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use jobs::model::{JobId, JobStatus};

use super::{Env, png_first_pixel};

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test>-xxxx → target/<profile>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `comfyui-sim` belongs to another package: the test builds it with `$CARGO build -p
/// comfyui-sim --bin comfyui-sim` (a no-op when fresh) into the target directory of
/// this test executable (`target/<profile>/comfyui-sim`). `COMFYUI_SIM_BIN` names
/// another.
pub fn sim_binary() -> PathBuf {
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

/// The simulator command line a chaos runner starts ComfyUI with: 40 ms per node, so
/// kills land mid-job.
pub fn sim_command(sim: &Path) -> String {
    format!(
        "{} --port {{port}} --step-ms 1 --model-node-ms 0 --fault-slow-node-ms 40",
        sim.display()
    )
}

/// Direct children of `pid` (from /proc/*/stat).
pub fn children_of(pid: u32) -> Vec<u32> {
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

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn sigkill(pid: u32) {
    // SAFETY: sends a signal to a process this test started (or its child).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// SIGKILLs a runner process and reaps it. Its ComfyUI children must die with it
/// (parent-death signal): waits up to 5 s for them, kills any left, and answers how
/// many outlived it (orphans).
pub fn kill_runner(child: &mut Child) -> u32 {
    let kids = children_of(child.id());
    sigkill(child.id());
    let _ = child.wait();
    let t = Instant::now();
    while kids.iter().any(|&k| alive(k)) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let orphans = kids.iter().filter(|&&k| alive(k)).count() as u32;
    for &k in &kids {
        sigkill(k);
    }
    orphans
}

/// The JSON log lines of every runner log in `logs` whose `fields.event` is `event`.
fn events(logs: &Path, event: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(logs).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        out.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["fields"]["event"] == event),
        );
    }
    out
}

/// `event=duplicate` lines in every runner log: deliveries absorbed without a rerun.
pub fn count_duplicates(logs: &Path) -> usize {
    events(logs, "duplicate").len()
}

#[derive(Default, Debug)]
pub struct Commit {
    pub attempts: Vec<u64>,
    pub statuses: Vec<String>,
}

/// Every `event=committed` line (one per terminal write a runner made), by job.
pub fn read_commits(logs: &Path) -> HashMap<String, Commit> {
    let mut commits: HashMap<String, Commit> = HashMap::new();
    for v in events(logs, "committed") {
        let f = &v["fields"];
        let id = f["job_id"].as_str().unwrap_or_default().to_string();
        let c = commits.entry(id).or_default();
        c.attempts.push(f["attempt"].as_u64().unwrap_or(0));
        c.statuses
            .push(f["status"].as_str().unwrap_or_default().to_string());
    }
    commits
}

/// What the verdicts counted.
#[derive(Default, Debug)]
pub struct Tally {
    pub by_status: HashMap<String, u32>,
    pub by_error: HashMap<String, u32>,
    pub attempts: HashMap<u32, u32>,
    pub preempted: u32,
    /// Commits logged, all runners and incarnations together.
    pub logged: usize,
    pub duplicates: usize,
    /// Succeeded jobs no runner logged a commit of, with the runner that holds them
    /// (`lease_owner` stays on a finished job): a SIGKILL landed between the commit's
    /// write and its log line, so that runner must be one the test killed.
    pub unlogged: Vec<(String, Option<String>)>,
}

impl Tally {
    pub fn succeeded(&self) -> usize {
        self.by_status.get("succeeded").copied().unwrap_or(0) as usize
    }
}

/// The verdicts on every job of a chaos run (each an invert of a red canvas): terminal;
/// committed at most once, and the logged commit is the stored attempt and status; a
/// success lists exactly one output, of its finishing attempt
/// (`outputs/{job}/{attempt}/`), present in the blob store and cyan.
pub async fn judge(env: &Env, ids: &[JobId], logs: &Path) -> Tally {
    let commits = read_commits(logs);
    let mut tally = Tally::default();
    for id in ids {
        let job = env.job(id).await;
        assert!(job.status.is_terminal(), "{id} is {}", job.status);
        *tally.by_status.entry(job.status.to_string()).or_default() += 1;
        *tally.attempts.entry(job.attempt).or_default() += 1;
        if job.preemptions > 0 {
            tally.preempted += 1;
        }
        if let Some(e) = &job.error {
            *tally.by_error.entry(e.code.clone()).or_default() += 1;
        }
        let c = commits.get(id.as_str());
        let n = c.map(|c| c.attempts.len()).unwrap_or(0);
        assert!(n <= 1, "job {id} was committed {n} times: {c:?}");
        if let Some(c) = c {
            assert_eq!(
                c.attempts[0],
                u64::from(job.attempt),
                "{id}: the logged commit is the stored attempt"
            );
            assert_eq!(c.statuses[0], job.status.to_string());
        }
        if job.status == JobStatus::Succeeded && c.is_none() {
            tally
                .unlogged
                .push((id.to_string(), job.lease_owner.clone()));
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
    tally.logged = commits.values().map(|c| c.attempts.len()).sum();
    tally.duplicates = count_duplicates(logs);
    tally
}

/// The tick, every second (the suites' leases are short), as the safety net runs it:
/// dead letters, lapsed leases. No launcher: the suites start the runners themselves.
/// Abort the handle when done.
pub fn tick_every_second(env: &Env) -> tokio::task::JoinHandle<()> {
    let dispatcher = jobs::dispatch::Dispatcher::new(
        env.jobs.clone(),
        std::sync::Arc::new(jobs::ports::NoLauncher),
        jobs::dispatch::DispatchConfig::default(),
    );
    tokio::spawn(async move {
        loop {
            dispatcher.tick().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
