//! The runner's settings, and the observer hook the benchmarks use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::model::{JobId, JobStatus};
use serde_json::{Map, Value};

/// Every prompt this runner submits carries a `client_id` starting with this, so that a
/// successor attached to the same ComfyUI can find and clear what we left behind.
pub const CLIENT_ID_PREFIX: &str = "scr-runner-";

/// How a runner behaves. [`RunnerConfig::default`] gives the production defaults; tests
/// shorten the lease.
#[derive(Clone)]
pub struct RunnerConfig {
    /// The id under which the runner registers and takes leases. The launcher passes the
    /// one it pre-registered; otherwise one is generated.
    pub worker_id: String,
    /// How long a claim (or a renewal) holds a job. Also the visibility timeout of the
    /// messages we hold: the lease is never longer than the visibility. The heartbeat
    /// runs every `lease / 3`.
    pub lease: Duration,
    /// While a job runs under our lease, its status is read this often
    /// ([`jobs::ports::JobStore::job_status`], one cheap read), so a cancel is noticed
    /// within this interval rather than at the next heartbeat.
    pub status_poll: Duration,
    /// A job that executes longer than this is interrupted and fails with `timeout`.
    pub job_timeout: Duration,
    /// Charged attempts before a job fails with `attempts_exhausted` (on claim).
    pub max_attempts: u32,
    /// Exit (deregistering) after this long without work. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// On shutdown, how long the running job may take to finish before it is handed back.
    pub shutdown_grace: Duration,
    /// Deadline for ComfyUI's `/system_stats` to answer after a (re)start.
    pub ready_timeout: Duration,
    /// Reserve and pre-submit the next job near the end of the current one.
    pub pipelining: bool,
    /// "Near the end": the current job's expected remaining time is below this (or its
    /// progress is past [`RunnerConfig::near_end_progress`]).
    pub reserve_lookahead: Duration,
    pub near_end_progress: f64,
    /// A pre-submitted job still waiting in ComfyUI's queue after this long gives its
    /// reservation up (the job ahead runs long), so an idle runner can take it.
    pub max_reserved_wait: Duration,
    /// At most one progress write per this interval (v2 clients poll; 2/s is plenty).
    pub progress_interval: Duration,
    /// Long-poll wait of each receive (it runs beside the main loop: see `runner`).
    pub poll_wait: Duration,
    /// An API-format workflow run once after each ComfyUI start, before taking jobs.
    pub warmup_workflow: Option<Map<String, Value>>,
    /// ComfyUI's input, output and temp folders, when the runner owns them (it spawned
    /// ComfyUI on them): each job's files are deleted when it ends ([`crate::cleanup`]).
    /// `None` (attach): ComfyUI offers no delete route, so files stay, unreachable.
    pub comfyui_dirs: Option<crate::cleanup::ComfyDirs>,
    /// Node classes ComfyUI must offer (`/object_info`) before the runner takes a job:
    /// the custom nodes manifest's promise ([`crate::nodes`]). Empty: no check.
    pub required_node_classes: Vec<String>,
    /// Set before the start when the runner must take no job (the models did not
    /// sync): it registers as `refusing` with this reason, as for a missing node class.
    pub refuse_jobs: Option<String>,
    /// Hooks for measurements (benchmarks); `None` in production.
    pub observer: Option<Arc<dyn RunnerObserver>>,
}

impl std::fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("worker_id", &self.worker_id)
            .field("lease", &self.lease)
            .field("status_poll", &self.status_poll)
            .field("job_timeout", &self.job_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("idle_timeout", &self.idle_timeout)
            .field("pipelining", &self.pipelining)
            .field("comfyui_dirs", &self.comfyui_dirs)
            .finish_non_exhaustive()
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            worker_id: new_worker_id(),
            lease: Duration::from_secs(30),
            status_poll: Duration::from_secs(1),
            job_timeout: Duration::from_secs(30 * 60),
            max_attempts: 3,
            idle_timeout: Some(Duration::from_secs(300)),
            shutdown_grace: Duration::from_secs(25),
            ready_timeout: Duration::from_secs(300),
            pipelining: true,
            reserve_lookahead: Duration::from_secs(2),
            near_end_progress: 0.8,
            max_reserved_wait: Duration::from_secs(60),
            progress_interval: Duration::from_millis(500),
            poll_wait: Duration::from_secs(1),
            warmup_workflow: None,
            comfyui_dirs: None,
            required_node_classes: Vec::new(),
            refuse_jobs: None,
            observer: None,
        }
    }
}

impl RunnerConfig {
    /// A config with this lease, and the reservation wait scaled to it.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self.max_reserved_wait = (lease * 2).max(Duration::from_secs(1));
        self
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(50))
    }
}

/// `runner-<ULID>`.
pub fn new_worker_id() -> String {
    format!("runner-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// When things happened to one job in this runner (monotonic instants).
#[derive(Debug, Clone)]
pub struct JobTiming {
    pub job_id: JobId,
    pub attempt: u32,
    /// The message came off the queue.
    pub received: Instant,
    /// Claimed (lease granted). For a pipelined job: at its `execution_start`.
    pub claimed: Option<Instant>,
    /// `POST /prompt` answered.
    pub submitted: Option<Instant>,
    /// `execution_start` seen on the WebSocket.
    pub exec_start: Option<Instant>,
    /// The prompt's end seen (`run_prompt` returned).
    pub exec_end: Option<Instant>,
    /// The finishing write committed.
    pub finished: Option<Instant>,
    /// Wall clock when the message came off the queue, and when the finish committed.
    pub received_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// ComfyUI's own `execution_start` and final-message timestamps (ms since the
    /// epoch, from history): its execution, as it measured it.
    pub comfy_exec_ms: Option<(i64, i64)>,
    /// True when the job was reserved and pre-submitted behind another.
    pub pipelined: bool,
    pub status: Option<JobStatus>,
    /// As the committed job record says ([`jobs::model::Job::queue_ms`] and
    /// [`jobs::model::Job::execution_ms`]): what the API shows, for metrics.
    pub queue_ms: Option<i64>,
    pub execution_ms: Option<i64>,
}

/// Measurement hooks. Called from the runner's tasks; keep them cheap.
pub trait RunnerObserver: Send + Sync + 'static {
    fn job_done(&self, timing: &JobTiming);
}
