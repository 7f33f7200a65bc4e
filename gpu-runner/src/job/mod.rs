//! One job's life inside the runner: a task per job.
//!
//! ```text
//!  Claim mode (ComfyUI idle)            Reserve mode (pipelined behind job N)
//!  claim ─▶ stage ─▶ submit             reserve ─▶ stage ─▶ submit (pending in ComfyUI)
//!                      │                                      │ execution_start
//!                      │                                      ▼
//!                      │                                   claim (fenced lease begins)
//!                      ▼                                      │
//!        follow the WebSocket: progress (throttled), heartbeat, cancel, timeout
//!                      ▼
//!        stream outputs (/view) into storage, mint assets ─▶ finish (fenced) ─▶ delete message
//! ```
//!
//! **Holds.** A task holds its job either by a *reservation* (the job stays `queued`,
//! others leave it alone until `reserved_until`) or by a *lease* (`running`, fenced by
//! `lease_owner` + `attempt`). Every write the task makes goes through
//! [`jobs::service::apply_move`], so it is one conditional write decided on the latest
//! state, and every write after the claim carries the [`Fence`].
//!
//! **Heartbeat** (every `lease / 3`): renew the hold and extend the message's visibility
//! by a lease. The renewed job comes back: `canceling` → stop the prompt with
//! [`comfyui::Client::cancel_prompt`] and finish as `canceled`; refused (fenced, or
//! the job moved on) → interrupt the prompt and stop writing at once.
//!
//! **Status poll** (every `status_poll`, 1 s): while a leased job runs, one cheap read
//! of its status ([`jobs::ports::JobStore::job_status`]). When it is anything but
//! `running` under our attempt, the heartbeat runs at once, and its answer is handled
//! as above: so a cancel lands within about a second, through the same fenced renewal.
//! The read may lag (eventually consistent): it only ever triggers a beat, never
//! decides. A stopped prompt's outputs are never fetched, and the finish as
//! `canceled` clears the job's outputs (`jobs::lifecycle`).
//!
//! **Letting go.** When ComfyUI dies, the lease is *released*: renewed to zero, so it
//! has lapsed and the next claim is a takeover (the next charged attempt, so a job
//! that keeps killing ComfyUI ends `attempts_exhausted`), and the message is made
//! visible at once. On shutdown, a leased job is *handed back* (`Move::HandBack`:
//! `queued`, `preemptions + 1`, not charged), a reserved one unreserved. Either way the
//! message becomes visible at once.
//!
//! **Messages** are deleted only after the job is terminal. A receipt can go stale (the
//! queue may redeliver early); when the main loop receives another copy of a job this
//! task holds, it hands the new receipt over ([`JobTask`] adopts it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyui::{Event, PromptOutcome, PromptRun, StreamItem};
use jobs::lifecycle::{Fence, Finish, Move, Refusal};
use jobs::model::{Job, JobError, JobId, JobInput, JobStatus, ProgressRecord, SCHEMA_VERSION};
use jobs::ports::QueueName;
use jobs::service::{MoveError, Ports, apply_move};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{JobTiming, RunnerConfig};
use crate::engine::{Engine, EngineState, Trouble};
use crate::progress::Tracker;
use crate::stage::{self, StageError};

mod finish;
mod follow;
mod hold;

use finish::comfy_exec_ms;

/// What the job tasks share with the main loop.
pub(crate) struct Shared {
    pub ports: Ports,
    pub config: RunnerConfig,
    pub engine: watch::Receiver<EngineState>,
    pub trouble: Arc<Trouble>,
    pub restart: Arc<Notify>,
    /// Poked on every phase change, so the main loop re-decides at once.
    pub wake: Notify,
    /// Exponentially weighted mean of recent execution times, for "near the end".
    pub estimate: Mutex<Option<Duration>>,
}

impl Shared {
    fn worker(&self) -> &str {
        &self.config.worker_id
    }

    /// This runner's claim of a job: lease it, or take it over once its lease lapsed.
    pub fn claim_move(&self) -> Move {
        Move::Claim {
            runner: self.worker().to_string(),
            lease: chrono_lease(self.config.lease),
            max_attempts: self.config.max_attempts,
        }
    }

    /// This runner's reservation of a queued job, for one lease from now.
    pub fn reserve_move(&self) -> Move {
        Move::Reserve {
            runner: self.worker().to_string(),
            until: self.ports.clock.now() + chrono_lease(self.config.lease),
        }
    }

    pub fn estimate(&self) -> Option<Duration> {
        *self.estimate.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_execution(&self, took: Duration) {
        let mut e = self.estimate.lock().unwrap_or_else(|e| e.into_inner());
        *e = Some(match *e {
            None => took,
            Some(prev) => prev.mul_f64(0.7) + took.mul_f64(0.3),
        });
    }
}

/// Where a job task is; the main loop decides from this whether to take more work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    Staging,
    /// Submitted, waiting in ComfyUI's queue.
    Pending,
    Running {
        since: Instant,
        value: f64,
    },
    /// Done with ComfyUI: fetching and storing outputs, committing.
    Finishing,
}

impl Phase {
    /// Whether this job still needs ComfyUI's executor.
    pub fn occupies_engine(self) -> bool {
        !matches!(self, Phase::Finishing)
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Hold {
    Reserved { since: Instant },
    Leased(Fence),
}

/// How a job task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobEnd {
    /// This runner wrote the terminal state.
    Committed(JobStatus),
    /// Released for another attempt (ComfyUI died, storage failed) or unreserved.
    Released,
    /// Handed back on shutdown.
    HandedBack,
    /// Someone else owns the job now (canceled while reserved, lost the race).
    Abandoned,
    /// The fence refused us: a takeover happened. We stopped writing.
    FencedOut,
}

enum Stop {
    Cancel,
    Timeout,
}

enum Flow {
    /// `run_prompt` returned (or had to be given up after a stop).
    Ended(Box<comfyui::Result<PromptRun>>, Option<Stop>),
    /// The task is over; holds already dealt with.
    Exit(JobEnd),
}

enum Beat {
    Ok,
    Canceling,
    Lost(JobEnd),
    ReservationTooLong,
}

/// How long a stopped prompt may take to end before ComfyUI is presumed stuck.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Resubmissions of a prompt interrupted by someone else's interrupt.
const MAX_RESUBMITS: u32 = 3;

pub(crate) struct JobTask {
    sh: Arc<Shared>,
    job: Job,
    hold: Hold,
    receipt: String,
    receipts: mpsc::UnboundedReceiver<String>,
    phase: watch::Sender<Phase>,
    drain: CancellationToken,
    hand_back: CancellationToken,
    timing: JobTiming,
    last_progress_write: Option<Instant>,
    /// Files of this job in ComfyUI's folders (staged inputs, listed outputs), removed
    /// when the task ends if the runner owns the folders.
    files: Vec<comfyui::FileRef>,
}

pub(crate) struct JobTaskParts {
    pub sh: Arc<Shared>,
    pub job: Job,
    pub hold: Hold,
    pub receipt: String,
    pub receipts: mpsc::UnboundedReceiver<String>,
    pub phase: watch::Sender<Phase>,
    pub drain: CancellationToken,
    pub hand_back: CancellationToken,
    pub received: Instant,
}

impl JobTask {
    pub fn new(p: JobTaskParts) -> Self {
        let pipelined = matches!(p.hold, Hold::Reserved { .. });
        let claimed = (!pipelined).then(Instant::now);
        JobTask {
            timing: JobTiming {
                job_id: p.job.id.clone(),
                attempt: p.job.attempt,
                received: p.received,
                received_at: p.sh.ports.clock.now()
                    - chrono::Duration::from_std(p.received.elapsed()).unwrap_or_default(),
                finished_at: None,
                comfy_exec_ms: None,
                queue_ms: None,
                execution_ms: None,
                claimed,
                submitted: None,
                exec_start: None,
                exec_end: None,
                finished: None,
                pipelined,
                status: None,
            },
            sh: p.sh,
            job: p.job,
            hold: p.hold,
            receipt: p.receipt,
            receipts: p.receipts,
            phase: p.phase,
            drain: p.drain,
            hand_back: p.hand_back,
            last_progress_write: None,
            files: Vec::new(),
        }
    }

    pub async fn run(mut self) -> (JobId, JobEnd) {
        let end = self.work().await;
        self.set_phase(Phase::Finishing);
        if let Some(dirs) = self.sh.config.comfyui_dirs.clone() {
            let (job_id, files) = (self.job.id.to_string(), std::mem::take(&mut self.files));
            let cleaned = tokio::task::spawn_blocking(move || {
                crate::cleanup::clean_job(&dirs, &job_id, &files)
            })
            .await;
            tracing::debug!(job_id = %self.job.id, removed = ?cleaned.ok(), "removed the job's files from ComfyUI's folders");
        }
        self.timing.attempt = self.job.attempt;
        if let JobEnd::Committed(status) = end {
            self.timing.status = Some(status);
        }
        if let Some(observer) = &self.sh.config.observer {
            observer.job_done(&self.timing);
        }
        (self.job.id.clone(), end)
    }

    fn ports(&self) -> &Ports {
        &self.sh.ports
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
        self.sh.wake.notify_one();
    }

    fn fence(&self) -> Option<Fence> {
        match &self.hold {
            Hold::Leased(f) => Some(f.clone()),
            Hold::Reserved { .. } => None,
        }
    }

    async fn apply(&self, mv: &Move) -> Result<Job, MoveError> {
        apply_move(
            self.ports().store.as_ref(),
            self.ports().clock.as_ref(),
            self.job.clone(),
            mv,
        )
        .await
    }

    async fn work(&mut self) -> JobEnd {
        let input = match self.load_input().await {
            Ok(Some(input)) => input,
            Ok(None) => {
                return self
                    .fail(JobError::new(
                        "input_missing",
                        "the job's stored workflow is missing or unreadable",
                    ))
                    .await;
            }
            Err(why) => return self.release(&why).await,
        };
        // Defence in depth: submit refuses these, but a job that reached the queue some
        // other way must not make ComfyUI open a server path. Not retried.
        if let Some(e) = stage::unsafe_input_error(&input.workflow) {
            return self.fail(e).await;
        }
        let mut resubmits = 0;
        loop {
            let engine = self.sh.engine.borrow().up().cloned();
            let Some(engine) = engine else {
                return self.release("ComfyUI is not up").await;
            };
            self.set_phase(Phase::Staging);
            // A reserved job will be claimed as the next attempt.
            let attempt = match &self.hold {
                Hold::Leased(f) => f.attempt,
                Hold::Reserved { .. } => self.job.attempt + 1,
            };
            let wf = match stage::stage(
                &engine.client,
                &self.sh.ports,
                &self.job,
                &input.workflow,
                attempt,
                input.cache_bypass,
                &mut self.files,
            )
            .await
            {
                Ok(wf) => wf,
                Err(StageError::Job(e)) => return self.fail(e).await,
                Err(e @ StageError::Engine(_)) => {
                    self.sh.trouble.report();
                    return self.release(&e.to_string()).await;
                }
                Err(e @ StageError::Store(_)) => return self.release(&e.to_string()).await,
            };
            let prompt_id = comfyui::new_prompt_id();
            let mut tracker = Tracker::new(&prompt_id, &wf);
            let (tx, rx) = mpsc::unbounded_channel();
            let run_engine = engine.clone();
            let (pid, wf_sent, extra) = (prompt_id.clone(), wf.clone(), input.extra_data.clone());
            let run = tokio::spawn(async move {
                crate::events::run(
                    &run_engine.client,
                    &run_engine.events,
                    &pid,
                    wf_sent,
                    extra,
                    move |item| {
                        let _ = tx.send(item.clone());
                    },
                )
                .await
            });
            self.timing.submitted = Some(Instant::now());
            self.set_phase(Phase::Pending);
            let (result, stop) = match self
                .follow(run, rx, &engine, &prompt_id, &mut tracker)
                .await
            {
                Flow::Exit(end) => return end,
                Flow::Ended(result, stop) => (*result, stop),
            };
            if let Some(start) = self.timing.exec_start {
                self.sh.record_execution(start.elapsed());
            }
            // Still reserved: the prompt ended (or was refused) before we saw it start.
            if matches!(self.hold, Hold::Reserved { .. }) && !self.claim_reserved().await {
                return JobEnd::Abandoned;
            }
            if let Ok(run) = &result {
                self.timing.comfy_exec_ms = comfy_exec_ms(run);
                self.files
                    .extend(run.outputs.files.iter().map(|f| f.file.clone()));
            }
            match result {
                Ok(run) => match run.outcome {
                    PromptOutcome::Success => return self.succeed(&engine, &run).await,
                    PromptOutcome::Interrupted(_) => match stop {
                        Some(Stop::Cancel) => return self.commit(Finish::Canceled).await,
                        Some(Stop::Timeout) => return self.fail(self.timeout_error()).await,
                        None if resubmits < MAX_RESUBMITS => {
                            // Someone else's interrupt landed on us: run it again, within
                            // the same attempt (nothing is charged).
                            resubmits += 1;
                            tracing::warn!(job_id = %self.job.id, resubmits, "prompt interrupted by mistake; resubmitting");
                            continue;
                        }
                        None => {
                            return self
                                .fail(JobError::new(
                                    "interrupted",
                                    "ComfyUI interrupted the prompt repeatedly",
                                ))
                                .await;
                        }
                    },
                    PromptOutcome::Failed(x) => return self.fail(stage::execution_error(&x)).await,
                    PromptOutcome::Unknown(why) => {
                        return self.fail(JobError::new("comfyui_error", why)).await;
                    }
                },
                Err(comfyui::Error::Rejected(r)) => {
                    return self.fail(stage::rejection_error(&r, &wf)).await;
                }
                Err(_) if matches!(stop, Some(Stop::Timeout)) => {
                    return self.fail(self.timeout_error()).await;
                }
                Err(comfyui::Error::PromptLost(_)) if matches!(stop, Some(Stop::Cancel)) => {
                    // Deleted while pending: it never ran.
                    return self.commit(Finish::Canceled).await;
                }
                Err(e @ (comfyui::Error::InvalidWorkflow(_) | comfyui::Error::Decode { .. })) => {
                    return self
                        .fail(JobError::new("comfyui_error", e.to_string()))
                        .await;
                }
                Err(e) => {
                    self.sh.trouble.report();
                    return self.release(&e.to_string()).await;
                }
            }
        }
    }

    fn timeout_error(&self) -> JobError {
        JobError::new(
            "timeout",
            format!(
                "the job ran longer than the job timeout ({} s) and was interrupted",
                self.sh.config.job_timeout.as_secs_f64()
            ),
        )
    }

    /// The job's workflow and extra_data. `Ok(None)`: gone for good; `Err`: try later.
    async fn load_input(&self) -> Result<Option<JobInput>, String> {
        match self.ports().blobs.get(&self.job.input_key).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The structured line the chaos test counts: one per terminal write this runner made.
pub(crate) fn log_commit(job: &Job, worker: &str, via: &str) {
    tracing::info!(
        event = "committed",
        job_id = %job.id,
        attempt = job.attempt,
        status = %job.status,
        outputs = job.outputs.len(),
        worker,
        via,
        "job committed"
    );
}

pub(crate) fn chrono_lease(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(30))
}
