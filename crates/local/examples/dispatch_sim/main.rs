//! # dispatch_sim — the scaling policy against a bursty day, on a simulated clock
//!
//! Replays a seeded arrival trace ([`trace`]) through the **real** submit path
//! (`JobService::submit`: workflow blob, job record, work message, wake nudge), the
//! **real** dispatcher (`Dispatcher::scale` on each wake, `Dispatcher::tick` every
//! minute) and the **real** SQLite store and queue of `crates/local`, all reading one
//! simulated clock. What is simulated:
//!
//! - **the launcher** ([`SimLauncher`], a `jobs::ports::Launcher`): each runner it starts
//!   lands on an instance of [`fleet::SimFleet`], with cold-start delays drawn from the
//!   figures in docs/costs.md (new instance 5–12 min, warm pool 1.5–3 min, an empty
//!   instance not yet scaled in 30–60 s) and 5% capacity failures on new instances;
//! - **the runners**: a faithful simplification of gpu-runner's loop. A ready runner
//!   registers `idle` in the worker registry, receives a work message, claims the job
//!   with the lease protocol (`Move::Claim` through `apply_move`), heartbeats and renews
//!   its lease every minute, finishes it (`Move::Finish`) after the job's simulated
//!   duration, deletes the message, and exits after `IdleTimeout` without work. Its
//!   lease is 5 minutes renewed every minute (the deployed runner's is 30 s, renewed
//!   more often: the dispatcher sees no difference, and it saves simulated events). Not
//!   modelled: prefetch (reserve-ahead), hand-backs, duplicate messages (the queue here
//!   is fault-free), Spot interruptions.
//! - **the baseline**: the common ECS pattern, an ECS service whose desired count follows
//!   a CloudWatch alarm on the work queue's `ApproximateNumberOfMessagesVisible`,
//!   evaluated every minute on the previous minute's datapoint, with step scaling (+1 at
//!   ≥1 visible, +2 at ≥5, +4 at ≥10; 300 s cooldown) and scale-in to zero after 10
//!   minutes with no message visible or in flight. Its runners never exit by themselves.
//!   Same fleet, same delays, same runners, same store.
//!
//! Run: `cargo run -p local --example dispatch_sim` (7 days, about 2 minutes in a debug
//! build), or `-- --short --check` (1 day, under 30 s; fails unless our policy beats the
//! baseline on p95 wait at no more GPU-hours). `--days N` and `--seed S` change the
//! trace; `--scale-in-minutes M` asks what if empty instances went after M minutes
//! instead of ECS managed scaling's ~16, and `--idle-minutes I` the runners'
//! `IdleTimeout`. docs/costs.md gives the table and the figures behind the delays.

mod baseline;
mod fleet;
mod runners;
mod trace;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use jobs::dispatch::{DispatchConfig, Dispatcher};
use jobs::model::JobId;
use jobs::ports::{Clock, LaunchError, LaunchedWorker, Launcher, QueueName};
use jobs::service::{JobService, JobsConfig, Ports};
use rand::SeedableRng;
use rand::rngs::StdRng;

use baseline::Alarm;
use fleet::{Delays, MINUTE, MS, SimFleet, Usage};
use runners::Held;

/// g6.xlarge on-demand, us-east-1 ($/h), plus its 100 GB gp3 disk and public IPv4.
const INSTANCE_PER_HOUR: f64 = 0.8048 + 100.0 * 0.08 / 730.0 + 0.005;
/// A stopped warm-pool instance pays for its disk only.
const STOPPED_PER_HOUR: f64 = 100.0 * 0.08 / 730.0;
const MAX_WORKERS: u32 = 8;
/// The runner's `--idle-timeout` (template default); `--idle-minutes` changes it.
const IDLE_TIMEOUT: i64 = 5 * MINUTE;
const LEASE_S: i64 = 300;
/// The wake queue's event source batching window (template.yaml).
const WAKE_DELAY: i64 = 2 * MS;

/// The simulated clock: milliseconds since `origin`, moved by the event loop only.
struct SimClock {
    origin: DateTime<Utc>,
    ms: AtomicI64,
}

impl SimClock {
    fn at(&self, ms: i64) -> DateTime<Utc> {
        self.origin + Duration::milliseconds(ms)
    }
}

impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        self.at(self.ms.load(Ordering::SeqCst))
    }
}

/// A `Launcher` over the simulated fleet.
struct SimLauncher {
    fleet: Arc<Mutex<SimFleet>>,
    clock: Arc<SimClock>,
    next: AtomicU64,
}

impl SimLauncher {
    fn start(&self, idle_exit: bool) -> Result<String, String> {
        let id = format!("sim-{}", self.next.fetch_add(1, Ordering::SeqCst));
        let now = self.clock.ms.load(Ordering::SeqCst);
        let mut fleet = self.fleet.lock().unwrap();
        fleet.start_runner(id.clone(), now, idle_exit).map(|()| id)
    }
}

#[async_trait]
impl Launcher for SimLauncher {
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        let mut launched = Vec::new();
        for _ in 0..count {
            match self.start(true) {
                Ok(id) => launched.push(LaunchedWorker {
                    id,
                    detail: "simulated".into(),
                }),
                Err(reason) => return Err((launched, LaunchError::Capacity(reason))),
            }
        }
        Ok(launched)
    }

    async fn stop(&self, _worker_id: &str) -> Result<(), LaunchError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "simulated"
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Policy {
    /// Our dispatcher, with its levers.
    Ours {
        min_warm: u32,
        /// Hypothetical: the runner skips its idle exit while the live runners are at
        /// most `min_warm` (gpu-runner does not do this today).
        spare_warm: bool,
    },
    /// The queue-depth alarm and step scaling.
    Baseline,
}

/// What the command line may change.
struct Knobs {
    delays: Delays,
    idle_timeout: i64,
}

struct Scenario {
    name: &'static str,
    policy: Policy,
    warm_pool: usize,
}

struct World {
    clock: Arc<SimClock>,
    ports: Ports,
    jobs: Arc<JobService>,
    dispatcher: Dispatcher,
    launcher: Arc<SimLauncher>,
    fleet: Arc<Mutex<SimFleet>>,
    policy: Policy,
    held: HashMap<usize, Held>,
    alarm: Alarm,
    idle_timeout: i64,
    _dir: tempfile::TempDir,
}

/// One scenario's figures.
struct Row {
    name: &'static str,
    jobs: usize,
    unserved: usize,
    waits_ms: Vec<i64>,
    usage: Usage,
}

impl Row {
    fn pct(&self, p: usize) -> f64 {
        if self.waits_ms.is_empty() {
            return 0.0;
        }
        let i = (self.waits_ms.len() - 1) * p / 100;
        self.waits_ms[i] as f64 / 1000.0
    }
    fn gpu_hours(&self) -> f64 {
        self.usage.running_ms as f64 / 3_600_000.0
    }
    fn idle_gpu_hours(&self) -> f64 {
        (self.usage.running_ms - self.usage.busy_ms) as f64 / 3_600_000.0
    }
    fn dollars(&self) -> f64 {
        self.gpu_hours() * INSTANCE_PER_HOUR
            + self.usage.stopped_ms as f64 / 3_600_000.0 * STOPPED_PER_HOUR
    }
}

fn fmt_s(s: f64) -> String {
    if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

impl World {
    fn new(scenario: &Scenario, seed: u64, knobs: &Knobs) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = local::DataDir::open(dir.path())?;
        let clock = Arc::new(SimClock {
            origin: DateTime::parse_from_rfc3339("2026-12-07T00:00:00Z")?.to_utc(),
            ms: AtomicI64::new(0),
        });
        let ports = data.ports(clock.clone(), "http://sim.invalid")?;
        let config = JobsConfig {
            default_quota: jobs::quota::TenantQuota::UNLIMITED,
            ..JobsConfig::default()
        };
        let jobs = Arc::new(JobService::new(ports.clone(), config, vec![7; 32]));
        let fleet = Arc::new(Mutex::new(SimFleet::new(
            StdRng::seed_from_u64(seed ^ 0xf1ee7),
            knobs.delays.clone(),
            scenario.warm_pool,
        )));
        let launcher = Arc::new(SimLauncher {
            fleet: fleet.clone(),
            clock: clock.clone(),
            next: AtomicU64::new(0),
        });
        let min_warm = match scenario.policy {
            Policy::Ours { min_warm, .. } => min_warm,
            Policy::Baseline => 0,
        };
        let dispatcher = Dispatcher::new(
            jobs.clone(),
            launcher.clone(),
            DispatchConfig {
                max_workers: MAX_WORKERS,
                min_warm_workers: min_warm,
                jobs_per_worker: 1,
                ..DispatchConfig::default()
            },
        );
        Ok(World {
            clock,
            ports,
            jobs,
            dispatcher,
            launcher,
            fleet,
            policy: scenario.policy,
            held: HashMap::new(),
            alarm: Alarm::default(),
            idle_timeout: knobs.idle_timeout,
            _dir: dir,
        })
    }

    fn now(&self) -> i64 {
        self.clock.ms.load(Ordering::SeqCst)
    }

    /// The dispatch Lambda's wake: drain the nudges, then (ours) one scaling decision.
    async fn wake(&mut self) -> anyhow::Result<()> {
        let queue = &self.ports.queue;
        let visibility = std::time::Duration::from_secs(30);
        loop {
            let batch = queue
                .receive(QueueName::Wake, 10, std::time::Duration::ZERO, visibility)
                .await?;
            if batch.is_empty() {
                break;
            }
            for m in batch {
                queue.delete(QueueName::Wake, &m.receipt).await?;
            }
        }
        if matches!(self.policy, Policy::Ours { .. }) {
            self.dispatcher.scale().await?;
        }
        Ok(())
    }

    /// Moves the clock and the fleet's accounting to `t`.
    fn advance(&self, t: i64) {
        self.fleet.lock().unwrap().advance(t);
        self.clock.ms.store(t, Ordering::SeqCst);
    }
}

async fn run(
    scenario: &Scenario,
    arrivals: &[trace::Arrival],
    end: i64,
    seed: u64,
    knobs: &Knobs,
) -> anyhow::Result<Row> {
    let mut w = World::new(scenario, seed, knobs)?;
    let body = serde_json::to_vec(&serde_json::json!({
        "workflow": serde_json::from_str::<serde_json::Value>(include_str!(
            "../../../../examples/workflows/txt2img-sd15.json"
        ))?
    }))?;
    let mut runs_for = HashMap::new();
    let mut next_arrival = 0;
    let mut next_minute = MINUTE;
    let mut wake_due: Option<i64> = None;
    loop {
        let mut t = end;
        if let Some(a) = arrivals.get(next_arrival) {
            t = t.min(a.at);
        }
        t = t.min(next_minute);
        for due in [
            wake_due,
            w.next_runner_event(),
            w.fleet.lock().unwrap().next_instance_event(),
        ]
        .into_iter()
        .flatten()
        {
            t = t.min(due);
        }
        w.advance(t.max(w.now()));
        if t >= end {
            break;
        }
        w.runners_due().await?;
        while let Some(a) = arrivals.get(next_arrival).filter(|a| a.at <= t) {
            let submitted = w.jobs.submit("sim", &body, None).await?;
            let id = JobId::parse(&submitted.job.id).expect("a job id");
            runs_for.insert(id, a.runs_for);
            wake_due.get_or_insert(t + WAKE_DELAY);
            next_arrival += 1;
        }
        if wake_due.is_some_and(|d| d <= t) {
            wake_due = None;
            w.wake().await?;
        }
        if next_minute <= t {
            next_minute += MINUTE;
            w.heartbeats().await?;
            match w.policy {
                Policy::Ours { .. } => {
                    w.dispatcher.tick().await;
                }
                Policy::Baseline => w.baseline_minute().await?,
            }
        }
        w.claim(&runs_for).await?;
    }
    let mut waits_ms = Vec::new();
    let mut unserved = 0;
    for id in runs_for.keys() {
        let job = w.ports.store.get_job(id).await?.expect("the job exists");
        match job.started_at {
            Some(started) => waits_ms.push((started - job.created_at).num_milliseconds()),
            None => unserved += 1,
        }
    }
    waits_ms.sort_unstable();
    let usage = w.fleet.lock().unwrap().usage;
    Ok(Row {
        name: scenario.name,
        jobs: runs_for.len(),
        unserved,
        waits_ms,
        usage,
    })
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}\n");
    println!(
        "| policy | jobs | p50 wait | p95 wait | max wait | GPU-h | idle GPU-h | $ (g6.xlarge on-demand) | starts cold/pool/reuse | capacity errors |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let unserved = if r.unserved > 0 {
            format!(" ({} never started)", r.unserved)
        } else {
            String::new()
        };
        println!(
            "| {} | {}{} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {}/{}/{} | {} |",
            r.name,
            r.jobs,
            unserved,
            fmt_s(r.pct(50)),
            fmt_s(r.pct(95)),
            fmt_s(r.pct(100)),
            r.gpu_hours(),
            r.idle_gpu_hours(),
            r.dollars(),
            r.usage.cold_starts,
            r.usage.pool_starts,
            r.usage.reuse_starts,
            r.usage.capacity_failures,
        );
    }
}

fn scenarios() -> Vec<Scenario> {
    let ours = |min_warm, spare_warm| Policy::Ours {
        min_warm,
        spare_warm,
    };
    vec![
        Scenario {
            name: "ours, no lever",
            policy: ours(0, false),
            warm_pool: 0,
        },
        Scenario {
            name: "ours, WarmPool=1",
            policy: ours(0, false),
            warm_pool: 1,
        },
        Scenario {
            name: "ours, MinWarmWorkers=1, runner leaves on idle (before keeps_warm)",
            policy: ours(1, false),
            warm_pool: 0,
        },
        Scenario {
            name: "ours, MinWarmWorkers=1 (the runner stays: keeps_warm)",
            policy: ours(1, true),
            warm_pool: 0,
        },
        Scenario {
            name: "baseline: queue-depth alarm, step scaling",
            policy: Policy::Baseline,
            warm_pool: 0,
        },
    ]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<u64>())
            .transpose()
    };
    let short = flag("--short");
    let days = value("--days")?.unwrap_or(if short { 1 } else { 7 }) as u32;
    let seed = value("--seed")?.unwrap_or(42);

    let mut knobs = Knobs {
        delays: Delays::default(),
        idle_timeout: IDLE_TIMEOUT,
    };
    // What-if: an empty instance goes after this many minutes instead of ECS managed
    // scaling's ~16 (for example, if a runner's exit terminated its own instance).
    if let Some(minutes) = value("--scale-in-minutes")? {
        knobs.delays.scale_in_after = minutes as i64 * MINUTE;
    }
    if let Some(minutes) = value("--idle-minutes")? {
        knobs.idle_timeout = minutes as i64 * MINUTE;
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let arrivals = trace::generate(&mut rng, days);
    let end = i64::from(days) * trace::day_ms();
    println!(
        "dispatch_sim: {days} day(s), seed {seed}, {} jobs, MaxWorkers {MAX_WORKERS}, IdleTimeout {} s, empty instances scaled in after {} min, ${INSTANCE_PER_HOUR:.4}/instance-hour",
        arrivals.len(),
        knobs.idle_timeout / MS,
        knobs.delays.scale_in_after / MINUTE
    );
    let mut rows = Vec::new();
    for s in scenarios() {
        rows.push(run(&s, &arrivals, end, seed, &knobs).await?);
    }
    print_table("Bursty days (trace.rs):", &rows);

    // Time to first job from zero: isolated 20 s jobs an hour apart, each after the
    // fleet emptied (idle exit 5 min + scale-in 16 min < 1 h).
    let count = if short { 12 } else { 48 };
    let isolated: Vec<trace::Arrival> = (0..count)
        .map(|i| trace::Arrival {
            at: 30 * MINUTE + i * 60 * MINUTE,
            runs_for: 20 * MS,
        })
        .collect();
    let mut first = Vec::new();
    for s in scenarios() {
        first.push(run(&s, &isolated, (count + 1) * 60 * MINUTE, seed, &knobs).await?);
    }
    print_table(
        &format!("{count} isolated jobs, one an hour (time to first job from zero):"),
        &first,
    );

    if flag("--check") {
        let ours = &rows[0];
        let base = rows.last().expect("the baseline row");
        anyhow::ensure!(
            ours.unserved == 0,
            "our policy left {} jobs unstarted",
            ours.unserved
        );
        anyhow::ensure!(
            ours.pct(95) < base.pct(95) && ours.gpu_hours() <= base.gpu_hours(),
            "our policy (p95 {:.0} s, {:.2} GPU-h) does not beat the baseline (p95 {:.0} s, {:.2} GPU-h)",
            ours.pct(95),
            ours.gpu_hours(),
            base.pct(95),
            base.gpu_hours()
        );
        println!("\ncheck: our policy beats the baseline on p95 wait at no more GPU-hours");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs() -> Knobs {
        Knobs {
            delays: Delays {
                capacity_failure: 0.0,
                ..Delays::default()
            },
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    fn lone_job() -> Vec<trace::Arrival> {
        // Half a minute off the tick, so that the wake, not the tick, scales.
        vec![trace::Arrival {
            at: 10 * MINUTE + 30 * MS,
            runs_for: 20 * MS,
        }]
    }

    const END: i64 = 2 * 60 * MINUTE;

    #[tokio::test]
    async fn a_lone_job_waits_one_cold_start_and_pays_boot_idle_and_scale_in() {
        let ours = &scenarios()[0];
        let row = run(ours, &lone_job(), END, 7, &knobs()).await.unwrap();
        assert_eq!((row.jobs, row.unserved), (1, 0));
        let wait = row.waits_ms[0];
        // The wake reaches the real dispatcher after the batching window, which
        // launches one worker at once; the wait is its boot.
        assert!(
            (5 * MINUTE + WAKE_DELAY..=12 * MINUTE + WAKE_DELAY).contains(&wait),
            "{wait}"
        );
        assert_eq!(row.usage.cold_starts, 1, "one job, one worker");
        assert_eq!(row.usage.busy_ms, 20 * MS);
        // Billed: boot (the wait less the batching window), the job, the idle
        // timeout, then the capacity provider's scale-in.
        let billed = wait - WAKE_DELAY + 20 * MS + IDLE_TIMEOUT + Delays::default().scale_in_after;
        assert_eq!(row.usage.running_ms, billed);
    }

    #[tokio::test]
    async fn the_baseline_waits_for_its_alarm_then_boots_the_same_instance() {
        let all = scenarios();
        let ours = run(&all[0], &lone_job(), END, 7, &knobs()).await.unwrap();
        let baseline = all.last().unwrap();
        assert_eq!(baseline.policy, Policy::Baseline);
        let base = run(baseline, &lone_job(), END, 7, &knobs()).await.unwrap();
        assert_eq!(base.unserved, 0);
        // Same seed, same first boot draw: the difference is the alarm's lag (the
        // datapoint of the minute after the submit, read a minute later).
        let lag = base.waits_ms[0] - ours.waits_ms[0];
        assert!((MINUTE..=3 * MINUTE).contains(&lag), "{lag}");
    }

    #[tokio::test]
    async fn min_warm_serves_a_lone_job_from_a_running_runner() {
        let spared = &scenarios()[3];
        assert_eq!(
            spared.policy,
            Policy::Ours {
                min_warm: 1,
                spare_warm: true
            }
        );
        let row = run(spared, &lone_job(), END, 7, &knobs()).await.unwrap();
        // The warm runner launched at the first tick is up long before the job.
        assert_eq!(row.waits_ms, vec![0]);
        assert_eq!(row.usage.cold_starts, 1);
    }
}
