//! Chaos against the whole product, from outside: the built `serverless-comfyui dev`
//! over a temporary data dir, attached to two `comfyui-sim` **processes** (40 ms per
//! node, so kills land mid-job), while a client submits jobs with idempotency keys and
//! the test SIGKILLs at random:
//!
//! - a runner (a child process of `dev`; `dev` starts another when work needs one),
//! - a ComfyUI (a `comfyui-sim` process, restarted on the same port),
//! - `dev` itself (restarted on the same data dir and the same port).
//!
//! The client retries a submit that failed at the connection level (or answered 409
//! "in flight", 429 or 5xx) with the same `Idempotency-Key`. Every job is the invert
//! workflow over a canvas of its own colour, so its output tells whose it is.
//!
//! Afterwards: every key names one job (a resubmit answers the same id); every job
//! succeeded (nothing is canceled here); none was committed twice (each runner logs one
//! `event="committed"` line per terminal write, counted over the logs of every `dev`);
//! each success lists exactly one output, of its own finishing attempt, whose pixels are
//! the inverse of its own colour; and the labelled listing (`metadata[run]`, paged by
//! cursor) names every job exactly once. The figures are printed.
//!
//! The quick version runs in the test command; the long one (1,000 jobs) with
//! `cargo test -p serverless-comfyui --test chaos_dev -- --ignored --nocapture`.
//! `CHAOS_SEED` replays a kill schedule.
#![cfg(target_os = "linux")]

use std::collections::{HashMap, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_serverless-comfyui");
const COMFYUIS: usize = 2;
const SUBMITTERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_dev_40_jobs_kills_of_runners_comfyui_and_dev() {
    chaos(Plan {
        jobs: 40,
        max_kills: 6,
        pace: Duration::from_millis(600),
        kill_gap_ms: 300..900,
        limit: Duration::from_secs(180),
    })
    .await;
}

/// The long version (minutes): not in the test command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with `cargo test -p serverless-comfyui --test chaos_dev -- --ignored`"]
async fn chaos_dev_1000_jobs_kills_of_runners_comfyui_and_dev() {
    chaos(Plan {
        jobs: 1000,
        max_kills: 40,
        pace: Duration::from_millis(250),
        kill_gap_ms: 1500..3000,
        limit: Duration::from_secs(900),
    })
    .await;
}

// ------------------------------------------------------------------ processes

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `comfyui-sim` belongs to another package: build it (a no-op when fresh) into the
/// target directory of this binary. `COMFYUI_SIM_BIN` names another.
fn sim_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COMFYUI_SIM_BIN") {
        return PathBuf::from(p);
    }
    let profile_dir = Path::new(BIN).parent().unwrap();
    let path = profile_dir.join("comfyui-sim");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build.args(["build", "-q", "-p", "comfyui-sim", "--bin", "comfyui-sim"]);
    build.arg("--manifest-path").arg(&manifest);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    if let Some(root) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", root);
    }
    let status = build.status();
    assert!(
        path.exists(),
        "comfyui-sim not found at {} (build: {status:?}); set COMFYUI_SIM_BIN",
        path.display()
    );
    path
}

fn sigkill(pid: u32) {
    // SAFETY: sends a signal to a process this test started (or a child of one).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Live direct children of `pid` whose command line contains `needle`.
fn children_of(pid: u32, needle: &str) -> Vec<u32> {
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
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        if fields.next() == Some("Z") {
            continue;
        }
        if fields.next().and_then(|p| p.parse::<u32>().ok()) != Some(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(child);
        }
    }
    out
}

/// Everything the test started; killed on drop, so a failing test leaves nothing.
struct World {
    dir: tempfile::TempDir,
    sim: PathBuf,
    port: u16,
    dev: Option<Child>,
    devs_started: usize,
    sims: Vec<(u16, Option<Child>)>,
    sims_started: usize,
}

impl World {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start_sim(&mut self, slot: usize) {
        let port = self.sims[slot].0;
        self.sims_started += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("sim{slot}-{}.log", self.sims_started)),
        )
        .unwrap();
        let child = Command::new(&self.sim)
            .args(["--port", &port.to_string()])
            .args(["--step-ms", "1", "--model-node-ms", "0"])
            .args(["--fault-slow-node-ms", "40"])
            .arg("--base-directory")
            .arg(self.dir.path().join(format!("sim{slot}")))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("comfyui-sim starts");
        self.sims[slot].1 = Some(child);
        wait_port(port, "comfyui-sim");
    }

    fn kill_sim(&mut self, slot: usize) {
        if let Some(mut child) = self.sims[slot].1.take() {
            sigkill(child.id());
            let _ = child.wait();
        }
    }

    /// Starts `dev` on the same data dir and port as ever; returns once health answers.
    async fn start_dev(&mut self) {
        self.devs_started += 1;
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("dev-{}.log", self.devs_started)),
        )
        .unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["dev", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--tick-seconds", "1", "--runner-idle-seconds", "60"]);
        for (port, _) in &self.sims {
            command.args(["--comfyui", &format!("http://127.0.0.1:{port}")]);
        }
        let child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dev starts");
        self.dev = Some(child);
        let client = reqwest::Client::new();
        let health = format!("{}/api/v2/health", self.url());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.dev.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "dev exited at start ({status}): {}",
                    std::fs::read_to_string(
                        self.dir
                            .path()
                            .join(format!("dev-{}.log", self.devs_started))
                    )
                    .unwrap_or_default()
                );
            }
            if let Ok(r) = client.get(&health).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "dev did not answer health");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn dev_pid(&self) -> Option<u32> {
        self.dev.as_ref().map(Child::id)
    }

    fn kill_dev(&mut self) {
        if let Some(mut child) = self.dev.take() {
            sigkill(child.id());
            let _ = child.wait();
        }
    }

    /// `event="committed"` lines of every runner of every `dev`: (job id, attempt).
    fn commits(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("dev-") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                let line = strip_ansi(line);
                if !line.contains("event=\"committed\"") {
                    continue;
                }
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .map(|v| v.trim_matches('"').to_string())
                };
                let id = field("job_id").expect("a commit line names its job");
                let attempt = field("attempt").and_then(|a| a.parse().ok()).unwrap_or(0);
                out.push((id, attempt));
            }
        }
        out
    }

    /// `event="duplicate"` lines: deliveries the runners absorbed without a rerun.
    fn duplicates(&self) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("dev-") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                n += text
                    .lines()
                    .filter(|l| strip_ansi(l).contains("event=\"duplicate\""))
                    .count();
            }
        }
        n
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the logs of a failed run (the data dir goes with the temp dir).
            let keep = std::env::temp_dir().join(format!("chaos_dev-{}", self.port));
            let _ = std::fs::create_dir_all(&keep);
            for e in std::fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
            eprintln!("chaos_dev: logs kept in {}", keep.display());
        }
        if let Some(pid) = self.dev_pid() {
            for runner in children_of(pid, "runner") {
                sigkill(runner);
            }
        }
        self.kill_dev();
        for slot in 0..self.sims.len() {
            self.kill_sim(slot);
        }
    }
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// SplitMix64: a seeded schedule without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ------------------------------------------------------------------ the client

/// Job `i`'s canvas colour (0xRRGGBB): distinct per job, so ComfyUI's cache never
/// serves one job's image to another and each output names its job. Channels are
/// multiples of 4, so two jobs' colours differ by 4 or more in some channel while
/// ComfyUI's float round trip may move a channel by one.
fn colour(run: u64, i: usize) -> u32 {
    // An odd multiplier permutes 0..2^18: distinct for every job of a run.
    let n = ((i as u32)
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(run as u32))
        & 0x3_FFFF;
    let (r, g, b) = (n >> 12, (n >> 6) & 63, n & 63);
    (r << 18) | (g << 10) | (b << 2)
}

fn body(run: &str, i: usize, colour: u32) -> String {
    json!({
        "workflow": {
            "1": { "class_type": "EmptyImage",
                   "inputs": { "width": 8, "height": 8, "batch_size": 1, "color": colour } },
            "2": { "class_type": "ImageInvert", "inputs": { "image": ["1", 0] } },
            "3": { "class_type": "SaveImage",
                   "inputs": { "images": ["2", 0], "filename_prefix": "chaos" } }
        },
        "metadata": { "run": run, "i": i.to_string() }
    })
    .to_string()
}

#[derive(Default)]
struct SubmitStats {
    retries: AtomicUsize,
}

/// Submits until the API answers with a job: connection errors, 409 (the same key
/// still in flight), 429 and 5xx are retried with the same key. Returns the job id and
/// whether the answer was a replay (`Idempotency-Replayed`).
async fn submit(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &str,
    stats: &SubmitStats,
    deadline: Instant,
) -> (String, bool) {
    loop {
        assert!(Instant::now() < deadline, "submit {key} never answered");
        let sent = client
            .post(format!("{url}/api/v2/jobs"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let replayed = r.headers().get("idempotency-replayed").is_some();
                let job: Value = r.json().await.unwrap_or(Value::Null);
                if let Some(id) = job["id"].as_str() {
                    return (id.to_string(), replayed);
                }
                // The body was cut off by a kill: ask again.
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                assert!(
                    status == reqwest::StatusCode::CONFLICT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error(),
                    "submit {key}: {status} {text}"
                );
            }
            Err(_) => {} // dev is down or was killed mid-request
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET that rides out `dev` restarts.
async fn get_json(client: &reqwest::Client, url: &str, deadline: Instant) -> Value {
    loop {
        if let Ok(r) = client.get(url).send().await {
            let status = r.status();
            if status.is_success() {
                if let Ok(v) = r.json::<Value>().await {
                    return v;
                }
            } else {
                assert!(status.is_server_error(), "{url}: {status}");
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every job of the run, from the labelled listing, paged by cursor.
async fn listing(client: &reqwest::Client, url: &str, run: &str, deadline: Instant) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut page = format!("{url}/api/v2/jobs?metadata%5Brun%5D={run}&limit=100");
        if let Some(c) = &cursor {
            page.push_str(&format!("&cursor={c}"));
        }
        let v = get_json(client, &page, deadline).await;
        jobs.extend(v["jobs"].as_array().cloned().unwrap_or_default());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return jobs,
        }
    }
    panic!("the listing never ended");
}

fn png_first_pixel(bytes: &[u8]) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    [buf[0], buf[1], buf[2]]
}

// ------------------------------------------------------------------ the run

/// One chaos run.
struct Plan {
    jobs: usize,
    /// Kills in all; the killing stops there.
    max_kills: u32,
    /// Each submitter's pause between submits, so kills land while jobs still come in.
    pace: Duration,
    /// Milliseconds between two chances (60%) of a kill. A job whose three charged
    /// attempts are all killed fails with `attempts_exhausted`, by design: the gap keeps
    /// that out of reach (a job takes ~0.2 s) rather than the check looking away.
    kill_gap_ms: std::ops::Range<u64>,
    /// Every job terminal by then.
    limit: Duration,
}

async fn chaos(plan: Plan) {
    let Plan {
        jobs,
        max_kills,
        pace,
        kill_gap_ms,
        limit,
    } = plan;
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map(|d| d.subsec_nanos()).unwrap_or_default() as u64 % 100_000
        });
    println!("chaos_dev seed {seed} (set CHAOS_SEED to replay the kill schedule)");
    let mut rng = Rng(seed);
    let run = format!("chaos{seed}x{}", free_port());
    let started = Instant::now();
    let deadline = started + limit;

    let mut world = World {
        dir: tempfile::tempdir().unwrap(),
        sim: sim_binary(),
        port: free_port(),
        dev: None,
        devs_started: 0,
        sims: (0..COMFYUIS).map(|_| (free_port(), None)).collect(),
        sims_started: 0,
    };
    for slot in 0..COMFYUIS {
        world.start_sim(slot);
    }
    world.start_dev().await;
    let url = world.url();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Submitters: each takes the next index until all are in.
    let stats = Arc::new(SubmitStats::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let (client, url, run, stats, next) = (
            client.clone(),
            url.clone(),
            run.clone(),
            stats.clone(),
            next.clone(),
        );
        submitters.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return mine;
                }
                let key = format!("{run}-{i}");
                let body = body(&run, i, colour(seed, i));
                let (id, _) = submit(&client, &url, &key, &body, &stats, deadline).await;
                mine.push((i, id));
                tokio::time::sleep(pace).await;
            }
        }));
    }

    // The killer, until every job is in and terminal.
    let (mut runner_kills, mut comfy_kills, mut dev_kills) = (0u32, 0u32, 0u32);
    let mut last_kill = Instant::now();
    loop {
        let all_in = submitters.iter().all(|s| s.is_finished());
        if all_in {
            let listed = listing(&client, &url, &run, deadline).await;
            let terminal = listed
                .iter()
                .filter(|j| {
                    matches!(
                        j["status"].as_str(),
                        Some("succeeded" | "failed" | "canceled")
                    )
                })
                .count();
            if listed.len() >= jobs && terminal == listed.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {terminal}/{jobs} jobs terminal after {limit:?} (seed {seed})"
            );
        }
        if runner_kills + comfy_kills + dev_kills < max_kills && rng.below(10) < 6 {
            match rng.below(3) {
                0 => {
                    let runners = world
                        .dev_pid()
                        .map(|pid| children_of(pid, "runner"))
                        .unwrap_or_default();
                    if !runners.is_empty() {
                        sigkill(runners[rng.below(runners.len() as u64) as usize]);
                        runner_kills += 1;
                        last_kill = Instant::now();
                    }
                }
                1 => {
                    let slot = rng.below(COMFYUIS as u64) as usize;
                    world.kill_sim(slot);
                    comfy_kills += 1;
                    last_kill = Instant::now();
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
                    world.start_sim(slot);
                }
                _ => {
                    world.kill_dev();
                    dev_kills += 1;
                    last_kill = Instant::now();
                    tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
                    world.start_dev().await;
                }
            }
        }
        let gap = kill_gap_ms.start + rng.below(kill_gap_ms.end - kill_gap_ms.start);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    let all_done = Instant::now();

    // ------------------------------------------------------------------ verdicts
    let mut ids: HashMap<usize, String> = HashMap::new();
    for s in submitters {
        for (i, id) in s.await.unwrap() {
            assert!(ids.insert(i, id).is_none());
        }
    }
    assert_eq!(ids.len(), jobs);
    let unique: HashSet<&String> = ids.values().collect();
    assert_eq!(unique.len(), jobs, "two keys got the same job");

    // A key names one job, whatever happened in between.
    let replay_stats = SubmitStats::default();
    for (&i, id) in &ids {
        let key = format!("{run}-{i}");
        let (again, replayed) = submit(
            &client,
            &url,
            &key,
            &body(&run, i, colour(seed, i)),
            &replay_stats,
            deadline,
        )
        .await;
        assert_eq!(&again, id, "key {key} names another job now");
        assert!(replayed, "key {key}: a resubmit is a replay");
    }

    // The labelled listing names every job once.
    let listed = listing(&client, &url, &run, deadline).await;
    let listed_ids: Vec<&str> = listed.iter().filter_map(|j| j["id"].as_str()).collect();
    let listed_set: HashSet<&str> = listed_ids.iter().copied().collect();
    assert_eq!(listed_ids.len(), listed_set.len(), "a job listed twice");
    for id in ids.values() {
        assert!(
            listed_set.contains(id.as_str()),
            "{id} missing from the listing"
        );
    }
    assert_eq!(listed_set.len(), jobs, "the listing holds other jobs");

    // Committed once, succeeded, with its own pixels.
    let mut commits: HashMap<String, Vec<u64>> = HashMap::new();
    for (id, attempt) in world.commits() {
        commits.entry(id).or_default().push(attempt);
    }
    let mut by_status: HashMap<String, u32> = HashMap::new();
    let mut attempts: HashMap<String, u32> = HashMap::new();
    for (&i, id) in &ids {
        let job = get_json(&client, &format!("{url}/api/v2/jobs/{id}"), deadline).await;
        let status = job["status"].as_str().unwrap_or_default().to_string();
        *by_status.entry(status.clone()).or_default() += 1;
        let logged = commits.get(id).cloned().unwrap_or_default();
        assert!(
            logged.len() <= 1,
            "{id} was committed {} times (attempts {logged:?}; seed {seed})",
            logged.len()
        );
        assert_eq!(status, "succeeded", "{id} (seed {seed}): {job}");
        let outputs = job["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{id}: one attempt's outputs: {job}");
        let name = outputs[0]["name"].as_str().unwrap();
        let attempt = name
            .strip_prefix(&format!("chaos_{id}_a"))
            .and_then(|rest| rest.split('_').next())
            .unwrap_or_else(|| panic!("{id}: output {name} is not its own"));
        *attempts.entry(attempt.to_string()).or_default() += 1;
        if let Some(a) = logged.first() {
            assert_eq!(
                a.to_string(),
                attempt,
                "{id}: the committed attempt is listed"
            );
        }
        let link = outputs[0]["url"].as_str().unwrap();
        let png = loop {
            match client.get(link).send().await {
                Ok(r) if r.status().is_success() => break r.bytes().await.unwrap(),
                Ok(r) => panic!("{id}: output {link}: {}", r.status()),
                Err(_) => {
                    assert!(Instant::now() < deadline);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let c = colour(seed, i) ^ 0xFF_FFFF;
        let want = [(c >> 16) as u8, (c >> 8) as u8, c as u8];
        let got = png_first_pixel(&png);
        assert!(
            got.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= 1),
            "{id}: pixels {got:?}, not job {i}'s inverted colour {want:?} (seed {seed})"
        );
    }
    let logged: usize = commits.values().map(Vec::len).sum();
    println!(
        "chaos_dev (seed {seed}): {jobs} jobs in {:.1} s; statuses {by_status:?}; finishing attempts {attempts:?}; \
         commits logged {logged}; duplicate deliveries absorbed {}; kills: runner {runner_kills}, \
         ComfyUI {comfy_kills}, dev {dev_kills}; submit retries {}; all terminal {:.1} s after the last kill",
        started.elapsed().as_secs_f64(),
        world.duplicates(),
        stats.retries.load(Ordering::Relaxed),
        all_done.duration_since(last_kill).as_secs_f64(),
    );
}
