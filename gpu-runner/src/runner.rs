//! The main loop: receive, decide, spawn job tasks, keep the registry item fresh, exit
//! when idle or told to stop.
//!
//! **Taking work.** The loop receives a message only when it can use it:
//! - ComfyUI has nothing to do (no job staging, pending or running): long-poll, and
//!   **claim** what arrives (or take it over, if its lease lapsed);
//! - exactly one job occupies ComfyUI and it is *near its end* (its progress is past
//!   [`RunnerConfig::near_end_progress`], or its elapsed time is within
//!   [`RunnerConfig::reserve_lookahead`] of the recent mean execution time): receive and
//!   **reserve** the next job, stage it and submit it, so ComfyUI goes straight from one
//!   prompt to the next. It is claimed at its `execution_start`.
//!
//! Every receive is a long poll of [`RunnerConfig::poll_wait`] that runs in **its own
//! task**, at most one at a time, while the loop goes on reaping jobs and keeping the
//! registry item true. Why: a long poll cannot be dropped once sent (a message it
//! received would stay hidden for a visibility timeout), so a receive awaited by the loop
//! itself either delays noticing a job's end (the registry says `busy` meanwhile, and a
//! dispatcher deciding then launches a second runner) or must be a short poll, which SQS
//! bills even when empty (about 20 a job when paced at 500 ms). In its own task, a poll
//! that finds nothing costs one request per `poll_wait`, and one that finds the next job
//! answers the moment it is sent. What it brings is taken if the loop can still use it,
//! and made visible again at once otherwise (shutdown, ComfyUI down, full).
//!
//! A finished job's outputs are fetched and stored while the next one runs (at most
//! [`MAX_FINISHING`] jobs finish in the background at once).
//!
//! **Each message** is checked against its job before anything else: unknown or terminal
//! → deleted; a job this runner already holds → the receipt goes to its task; a job
//! leased or reserved by someone else → pushed back (visibility extended until that
//! hold ends), never deleted.
//!
//! **Shutdown** (the token, SIGTERM in the binary): stop receiving; reserved jobs are
//! given up at once; the running job gets `shutdown_grace` to finish, then is handed
//! back (`preemptions + 1`, message visible). Then ComfyUI is stopped and the worker
//! deregistered. **Idle exit** after `idle_timeout` without work does the same, unless
//! the fleet's last decision keeps this runner warm (`MinWarmWorkers`, see
//! [`jobs::dispatch::keeps_warm`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobs::lifecycle::{Fence, Refusal};
use jobs::model::{JobId, JobStatus, SCHEMA_VERSION, WorkMessage};
use jobs::ports::{QueueName, QueueResult, Received, WorkerPhase, WorkerRecord};
use jobs::service::{MoveError, Ports, apply_move};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::config::RunnerConfig;
use crate::engine::{EngineSpec, EngineState, SupervisorConfig, spawn_supervisor};
use crate::error::RunnerError;
use crate::job::{Hold, JobEnd, JobTask, JobTaskParts, Phase, Shared, log_commit};

/// Jobs finishing (fetching and storing outputs) in the background at most.
pub const MAX_FINISHING: usize = 2;

/// Why [`Runner::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// Nothing to do for `idle_timeout`.
    Idle,
    /// The shutdown token was cancelled (SIGTERM).
    Shutdown,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub reason: ExitReason,
    /// Terminal writes this runner made (finishes, and claims that ended a job).
    pub committed: u64,
    pub released: u64,
    pub handed_back: u64,
    pub fenced_out: u64,
}

/// A runner over the ports and a ComfyUI. See the crate docs.
pub struct Runner {
    config: RunnerConfig,
    ports: Ports,
    engine: EngineSpec,
}

struct Active {
    phase: watch::Receiver<Phase>,
    receipts: mpsc::UnboundedSender<String>,
}

impl Runner {
    pub fn new(config: RunnerConfig, ports: Ports, engine: EngineSpec) -> Self {
        Runner {
            config,
            ports,
            engine,
        }
    }

    /// Runs until idle for `idle_timeout` or until `shutdown` is cancelled. An error
    /// means ComfyUI could not be started (or restarted).
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, RunnerError> {
        if let Some(dirs) = self.config.comfyui_dirs.clone() {
            tokio::task::spawn_blocking(move || dirs.prepare())
                .await
                .map_err(|e| RunnerError::Config(e.to_string()))?
                .map_err(|e| RunnerError::Config(format!("ComfyUI folders: {e}")))?;
        }
        let stop_engine = CancellationToken::new();
        let supervisor = spawn_supervisor(
            self.engine.clone(),
            SupervisorConfig {
                ready_timeout: self.config.ready_timeout,
                warmup: self.config.warmup_workflow.clone(),
                worker_id: self.config.worker_id.clone(),
                required_classes: self.config.required_node_classes.clone(),
                catalogue: Some(self.ports.clone()),
            },
            stop_engine.clone(),
        );
        let sh = Arc::new(Shared {
            ports: self.ports.clone(),
            config: self.config.clone(),
            engine: supervisor.state.clone(),
            trouble: supervisor.trouble.clone(),
            restart: supervisor.restart.clone(),
            wake: Notify::new(),
            estimate: Mutex::new(None),
        });
        let mut main = MainLoop {
            registry: Registry::new(&sh).await,
            sh,
            tasks: JoinSet::new(),
            receiving: None,
            active: HashMap::new(),
            drain: CancellationToken::new(),
            hand_back: CancellationToken::new(),
            report: RunReport {
                reason: ExitReason::Shutdown,
                committed: 0,
                released: 0,
                handed_back: 0,
                fenced_out: 0,
            },
        };
        main.registry.put(&main.sh, WorkerPhase::Starting).await;
        let result = main.run(&shutdown).await;
        // The poll in flight ends (its wait at most) while the jobs drain.
        let receiving = main.receiving.take();
        let sh = main.sh.clone();
        tokio::join!(main.drain_out(), release_in_flight(&sh, receiving));
        stop_engine.cancel();
        let _ = supervisor.task.await;
        if let Err(e) = main
            .sh
            .ports
            .store
            .delete_worker(&main.sh.config.worker_id)
            .await
        {
            tracing::warn!(error = %e, "could not deregister");
        }
        tracing::info!(report = ?main.report, "runner stopped");
        result.map(|reason| RunReport {
            reason,
            ..main.report
        })
    }
}

struct Registry {
    launched_at: chrono::DateTime<chrono::Utc>,
    last: Option<(Instant, WorkerPhase)>,
    detail: String,
}

/// A registry detail is free text shown in health: bounded.
const MAX_DETAIL: usize = 1000;

impl Registry {
    async fn new(sh: &Shared) -> Self {
        // Keep the launcher's launch time if it pre-registered us.
        let launched_at = match sh.ports.store.list_workers().await {
            Ok(list) => list
                .into_iter()
                .find(|w| w.id == sh.config.worker_id)
                .map(|w| w.launched_at),
            Err(_) => None,
        }
        .unwrap_or_else(|| sh.ports.clock.now());
        Registry {
            launched_at,
            last: None,
            detail: format!("gpu-runner pid {}", std::process::id()),
        }
    }

    /// Registers as refusing jobs, with the reason as the record's detail.
    async fn refuse(&mut self, sh: &Shared, reason: &str) {
        let mut detail = reason.to_string();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        if self.detail != detail {
            self.detail = detail;
            self.last = None;
        }
        self.put(sh, WorkerPhase::Refusing).await;
    }

    async fn put(&mut self, sh: &Shared, phase: WorkerPhase) {
        let due = match self.last {
            // Refreshed once a lease (30 s on AWS), not with the lease's own heartbeat
            // (a third of it): the dispatcher judges a worker stale after 2 minutes, and
            // each refresh is a billed write.
            Some((at, last)) => last != phase || at.elapsed() >= sh.config.lease,
            None => true,
        };
        if !due {
            return;
        }
        let record = WorkerRecord {
            v: SCHEMA_VERSION,
            id: sh.config.worker_id.clone(),
            phase,
            heartbeat_at: sh.ports.clock.now(),
            launched_at: self.launched_at,
            detail: self.detail.clone(),
        };
        match sh.ports.store.put_worker(&record).await {
            Ok(()) => self.last = Some((Instant::now(), phase)),
            Err(e) => tracing::warn!(error = %e, "registry update failed"),
        }
    }
}

struct MainLoop {
    sh: Arc<Shared>,
    registry: Registry,
    tasks: JoinSet<(JobId, JobEnd)>,
    /// The receive in flight, if any (see the module docs).
    receiving: Option<JoinHandle<QueueResult<Vec<Received>>>>,
    active: HashMap<JobId, Active>,
    drain: CancellationToken,
    hand_back: CancellationToken,
    report: RunReport,
}

enum Want {
    Nothing,
    Claim,
    Reserve,
}

impl MainLoop {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<ExitReason, RunnerError> {
        let mut engine_rx = self.sh.engine.clone();
        let mut last_work = Instant::now();
        let mut was_up = false;
        loop {
            while let Some(done) = self.tasks.try_join_next() {
                self.reap(done);
                last_work = Instant::now();
            }
            if shutdown.is_cancelled() {
                return Ok(ExitReason::Shutdown);
            }
            if !self.active.is_empty() {
                last_work = Instant::now();
            }
            let state = match &self.sh.config.refuse_jobs {
                Some(reason) => EngineState::Refused(reason.clone()),
                None => engine_rx.borrow_and_update().clone(),
            };
            match state {
                EngineState::Failed(e) => return Err(RunnerError::Engine(e)),
                EngineState::Refused(reason) => {
                    // No job is taken; the idle timeout still ends a runner that cannot
                    // work, so a broken image does not hold a GPU forever.
                    self.registry.refuse(&self.sh, &reason).await;
                    if let Some(idle) = self.sh.config.idle_timeout
                        && last_work.elapsed() >= idle
                    {
                        tracing::info!(
                            idle_s = idle.as_secs_f64(),
                            "refusing jobs and idle; exiting"
                        );
                        return Ok(ExitReason::Idle);
                    }
                    tokio::select! {
                        got = in_flight(&mut self.receiving) => self.release_all(got).await,
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.sh.config.heartbeat()) => {}
                    }
                    continue;
                }
                EngineState::Up(_) => {
                    if !was_up {
                        was_up = true;
                        last_work = Instant::now();
                    }
                }
                _ => {
                    let phase = if was_up {
                        WorkerPhase::Busy
                    } else {
                        WorkerPhase::Starting
                    };
                    self.registry.put(&self.sh, phase).await;
                    tokio::select! {
                        _ = engine_rx.changed() => {}
                        Some(done) = self.tasks.join_next() => self.reap(done),
                        // ComfyUI is not up: what a poll sent before brings goes back.
                        got = in_flight(&mut self.receiving) => self.release_all(got).await,
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            }
            let phase = if self.active.is_empty() {
                WorkerPhase::Idle
            } else {
                WorkerPhase::Busy
            };
            self.registry.put(&self.sh, phase).await;
            if let Some(idle) = self.sh.config.idle_timeout
                && self.active.is_empty()
                && self.receiving.is_none()
                && last_work.elapsed() >= idle
            {
                if !self.kept_warm().await {
                    tracing::info!(idle_s = idle.as_secs_f64(), "idle; exiting");
                    return Ok(ExitReason::Idle);
                }
                // One of the MinWarmWorkers: stay, and ask again after another idle spell.
                tracing::debug!("idle, but kept warm by the fleet's decision");
                last_work = Instant::now();
            }
            let want = self.want();
            if self.receiving.is_none() && !matches!(want, Want::Nothing) {
                let mut wait = self.sh.config.poll_wait;
                if let Some(idle) = self.sh.config.idle_timeout
                    && self.active.is_empty()
                {
                    // Ends by the idle deadline, so the runner can leave on time.
                    wait = wait.min(
                        idle.saturating_sub(last_work.elapsed())
                            .max(Duration::from_millis(10)),
                    );
                }
                let sh = self.sh.clone();
                self.receiving = Some(tokio::spawn(async move {
                    sh.ports
                        .queue
                        .receive(QueueName::Work, 1, wait, sh.config.lease)
                        .await
                }));
            }
            tokio::select! {
                Some(done) = self.tasks.join_next() => self.reap(done),
                got = in_flight(&mut self.receiving) => match got {
                    Ok(messages) => {
                        for m in messages {
                            if shutdown.is_cancelled() || matches!(self.want(), Want::Nothing) {
                                self.release(&m).await;
                                continue;
                            }
                            last_work = Instant::now();
                            self.handle(m).await;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = self.sh.wake.notified() => {}
                _ = shutdown.cancelled() => {}
                _ = engine_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    async fn release_all(&self, got: QueueResult<Vec<Received>>) {
        release_received(&self.sh, &got.unwrap_or_default()).await;
    }

    /// A message this runner received but cannot use now: visible to others at once.
    async fn release(&self, m: &Received) {
        release_received(&self.sh, std::slice::from_ref(m)).await;
    }

    fn occupying(&self) -> Vec<Phase> {
        self.active
            .values()
            .map(|a| *a.phase.borrow())
            .filter(|p| p.occupies_engine())
            .collect()
    }

    fn want(&self) -> Want {
        if self.sh.trouble.suspect() {
            // ComfyUI may be gone: a job taken now would only burn an attempt.
            return Want::Nothing;
        }
        let occupying = self.occupying();
        let finishing = self.active.len() - occupying.len();
        if finishing >= MAX_FINISHING {
            return Want::Nothing;
        }
        match occupying.as_slice() {
            [] => Want::Claim,
            [Phase::Running { since, value }] if self.sh.config.pipelining => {
                let cfg = &self.sh.config;
                let near = *value >= cfg.near_end_progress
                    || self
                        .sh
                        .estimate()
                        .is_some_and(|est| since.elapsed() + cfg.reserve_lookahead >= est);
                if near { Want::Reserve } else { Want::Nothing }
            }
            _ => Want::Nothing,
        }
    }

    /// Whether the fleet's last decision wants this idle runner kept
    /// ([`jobs::dispatch::keeps_warm`]). A store error answers no: an idle runner that
    /// cannot tell leaves, as it did before warm floors existed.
    async fn kept_warm(&self) -> bool {
        let store = &self.sh.ports.store;
        match tokio::try_join!(store.get_fleet(), store.list_workers()) {
            Ok((fleet, workers)) => jobs::dispatch::keeps_warm(
                &self.sh.config.worker_id,
                &fleet,
                &workers,
                self.sh.ports.clock.now(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet; leaving on idle");
                false
            }
        }
    }

    fn reap(&mut self, done: Result<(JobId, JobEnd), tokio::task::JoinError>) {
        match done {
            Ok((id, end)) => {
                self.active.remove(&id);
                match end {
                    JobEnd::Committed(_) => self.report.committed += 1,
                    JobEnd::Released => self.report.released += 1,
                    JobEnd::HandedBack => self.report.handed_back += 1,
                    JobEnd::FencedOut => self.report.fenced_out += 1,
                    JobEnd::Abandoned => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "job task failed");
                // Its id is unknown here: drop finished handles whose sender is gone.
                self.active.retain(|_, a| !a.receipts.is_closed());
            }
        }
    }

    async fn delete(&self, m: &Received) {
        let _ = self
            .sh
            .ports
            .queue
            .delete(QueueName::Work, &m.receipt)
            .await;
    }

    async fn push_back(&self, m: &Received, for_: Duration) {
        let _ = self
            .sh
            .ports
            .queue
            .change_visibility(QueueName::Work, &m.receipt, for_)
            .await;
    }

    /// One received message (see the module docs).
    async fn handle(&mut self, m: Received) {
        let received = Instant::now();
        let Ok(work) = serde_json::from_str::<WorkMessage>(&m.body) else {
            tracing::error!(message_id = %m.message_id, "unreadable work message deleted");
            self.delete(&m).await;
            return;
        };
        if let Some(active) = self.active.get(&work.job_id) {
            log_duplicate(&work.job_id, "running here");
            let _ = active.receipts.send(m.receipt);
            return;
        }
        let sh = self.sh.clone();
        let job = match sh.ports.store.get_job(&work.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                self.delete(&m).await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "job read failed; message back in a second");
                self.push_back(&m, Duration::from_secs(1)).await;
                return;
            }
        };
        if job.status.is_terminal() {
            log_duplicate(&job.id, "terminal");
            self.delete(&m).await;
            return;
        }
        let reserve = job.status == JobStatus::Queued && !self.occupying().is_empty();
        let worker = sh.config.worker_id.clone();
        let mv = if reserve {
            sh.reserve_move()
        } else {
            sh.claim_move()
        };
        let applied = apply_move(sh.ports.store.as_ref(), sh.ports.clock.as_ref(), job, &mv).await;
        let (job, hold) = match applied {
            Ok(job) if reserve => (job, Hold::Reserved { since: received }),
            Ok(job) if job.status.is_terminal() => {
                // The claim itself ended it: attempts exhausted, or a canceling job
                // whose runner died.
                log_commit(&job, &worker, "claim");
                self.report.committed += 1;
                self.delete(&m).await;
                return;
            }
            Ok(job) => {
                let fence = Fence {
                    owner: worker.clone(),
                    attempt: job.attempt,
                };
                (job, Hold::Leased(fence))
            }
            Err(MoveError::Refused(Refusal::LeaseHeld { until } | Refusal::Reserved { until })) => {
                // Someone holds it: push this copy back until the hold would lapse.
                log_duplicate(&work.job_id, "held elsewhere");
                let left = (until - sh.ports.clock.now()).to_std().unwrap_or_default();
                let back = (left + Duration::from_millis(250)).min(sh.config.lease);
                self.push_back(&m, back).await;
                return;
            }
            Err(MoveError::Refused(Refusal::WrongState(s))) if s.is_terminal() => {
                log_duplicate(&work.job_id, "terminal");
                self.delete(&m).await;
                return;
            }
            Err(MoveError::Gone) => {
                // Deleted meanwhile (retention): nothing left to run.
                self.delete(&m).await;
                return;
            }
            Err(e) => {
                tracing::warn!(job_id = %work.job_id, error = %e, "could not take the job; message back in a second");
                self.push_back(&m, Duration::from_secs(1)).await;
                return;
            }
        };
        tracing::info!(job_id = %job.id, attempt = job.attempt, reserved = reserve, "took a job");
        let (phase_tx, phase_rx) = watch::channel(Phase::Staging);
        let (receipts_tx, receipts_rx) = mpsc::unbounded_channel();
        let task = JobTask::new(JobTaskParts {
            sh: sh.clone(),
            job: job.clone(),
            hold,
            receipt: m.receipt,
            receipts: receipts_rx,
            phase: phase_tx,
            drain: self.drain.clone(),
            hand_back: self.hand_back.clone(),
            received,
        });
        self.active.insert(
            job.id.clone(),
            Active {
                phase: phase_rx,
                receipts: receipts_tx,
            },
        );
        self.tasks.spawn(task.run());
    }

    /// Stop taking work; let the running job finish within the grace period, then hand
    /// back whatever is left.
    async fn drain_out(&mut self) {
        self.drain.cancel();
        self.registry.put(&self.sh, WorkerPhase::Draining).await;
        let grace_end = tokio::time::Instant::now() + self.sh.config.shutdown_grace;
        let hard_end = grace_end + Duration::from_secs(20);
        while !self.tasks.is_empty() {
            tokio::select! {
                Some(done) = self.tasks.join_next() => self.reap(done),
                _ = tokio::time::sleep_until(grace_end), if !self.hand_back.is_cancelled() => {
                    tracing::info!(jobs = self.active.len(), "grace period over; handing jobs back");
                    self.hand_back.cancel();
                }
                _ = tokio::time::sleep_until(hard_end) => {
                    tracing::error!("job tasks did not end; aborting them (their leases will lapse)");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
    }
}

/// Waits for the receive in flight, if any, and makes what it brought visible again:
/// the loop has ended and will take nothing more.
async fn release_in_flight(
    sh: &Shared,
    mut receiving: Option<JoinHandle<QueueResult<Vec<Received>>>>,
) {
    if receiving.is_some() {
        let got = in_flight(&mut receiving).await;
        release_received(sh, &got.unwrap_or_default()).await;
    }
}

/// Makes received messages visible to others at once (a visibility of zero).
async fn release_received(sh: &Shared, messages: &[Received]) {
    for m in messages {
        tracing::debug!(message_id = %m.message_id, "received but not taken; released");
        let _ = sh
            .ports
            .queue
            .change_visibility(QueueName::Work, &m.receipt, Duration::ZERO)
            .await;
    }
}

/// The outcome of the receive in flight, when it ends; never, if there is none. Takes
/// the handle, so the next receive can start.
async fn in_flight(
    receiving: &mut Option<JoinHandle<QueueResult<Vec<Received>>>>,
) -> QueueResult<Vec<Received>> {
    let Some(handle) = receiving.as_mut() else {
        return std::future::pending().await;
    };
    let got = handle.await;
    *receiving = None;
    got.unwrap_or_else(|e| {
        Err(jobs::ports::QueueError::Unavailable(format!(
            "receive task: {e}"
        )))
    })
}

/// The structured line the chaos test counts: a delivery of a job this runner already
/// runs, another holds, or that has ended (SQS duplicates, redeliveries), absorbed
/// without running the job again.
fn log_duplicate(job_id: &JobId, why: &str) {
    tracing::info!(event = "duplicate", job_id = %job_id, why, "duplicate delivery absorbed");
}
