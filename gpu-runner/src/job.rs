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
//!        fetch outputs (/view) ─▶ store + mint assets ─▶ finish (fenced) ─▶ delete message
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

    /// Follows the prompt until it ends, keeping the hold alive.
    async fn follow(
        &mut self,
        mut run: JoinHandle<comfyui::Result<PromptRun>>,
        mut rx: mpsc::UnboundedReceiver<StreamItem>,
        engine: &Engine,
        prompt_id: &str,
        tracker: &mut Tracker,
    ) -> Flow {
        let beat_every = self.sh.config.heartbeat();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut engine_rx = self.sh.engine.clone();
        let same_engine = |state: &EngineState| {
            state
                .up()
                .is_some_and(|e| e.generation == engine.generation)
        };
        if !same_engine(&engine_rx.borrow()) {
            run.abort();
            return Flow::Exit(self.release("ComfyUI restarted").await);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut stop: Option<Stop> = None;
        let mut stop_deadline: Option<tokio::time::Instant> = None;
        // A claimed job's clock starts now; a reserved one's at its execution_start.
        let mut deadline: Option<tokio::time::Instant> = self
            .fence()
            .map(|_| tokio::time::Instant::now() + self.sh.config.job_timeout);
        let mut flush_at: Option<tokio::time::Instant> = None;
        let drain = self.drain.clone();
        let hand_back = self.hand_back.clone();
        let poll_every = self.sh.config.status_poll;
        let mut status_poll =
            tokio::time::interval_at(tokio::time::Instant::now() + poll_every, poll_every);
        status_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reserved = matches!(self.hold, Hold::Reserved { .. });
            // Only a leased job can be canceled while we run it (a reserved one is
            // queued: a cancel ends it outright, and its claim then fails).
            let polling = !reserved && stop.is_none();
            tokio::select! {
                biased;
                res = &mut run => {
                    while let Ok(item) = rx.try_recv() {
                        if let Some(end) = self.on_item(&item, prompt_id, tracker, &mut deadline, &mut flush_at).await {
                            self.spawn_cancel(engine, prompt_id);
                            return Flow::Exit(end);
                        }
                    }
                    self.timing.exec_end = Some(Instant::now());
                    if flush_at.is_some() {
                        self.write_progress(tracker).await;
                    }
                    let result = res.unwrap_or_else(|e| Err(comfyui::Error::ServerGone(format!("prompt task: {e}"))));
                    return Flow::Ended(Box::new(result), stop);
                }
                r = engine_rx.changed() => {
                    if r.is_err() || !same_engine(&engine_rx.borrow()) {
                        run.abort();
                        return Flow::Exit(self.release("ComfyUI went down").await);
                    }
                }
                _ = hand_back.cancelled(), if !reserved => {
                    run.abort();
                    self.cancel_now(engine, prompt_id).await;
                    return Flow::Exit(self.hand_back_job().await);
                }
                _ = drain.cancelled(), if reserved => {
                    run.abort();
                    self.cancel_now(engine, prompt_id).await;
                    return Flow::Exit(self.release("shutting down").await);
                }
                Some(item) = rx.recv() => {
                    if let Some(end) = self.on_item(&item, prompt_id, tracker, &mut deadline, &mut flush_at).await {
                        run.abort();
                        self.spawn_cancel(engine, prompt_id);
                        return Flow::Exit(end);
                    }
                }
                _ = heartbeat.tick() => {
                    let beat = self.heartbeat().await;
                    if let Some(flow) = self.on_beat(beat, &run, engine, prompt_id, &mut stop, &mut stop_deadline).await {
                        return flow;
                    }
                }
                _ = status_poll.tick(), if polling => {
                    // The cheap read says something changed (canceled, taken over):
                    // beat now, so the fenced renewal decides on the latest state.
                    if self.status_changed().await {
                        let beat = self.heartbeat().await;
                        if let Some(flow) = self.on_beat(beat, &run, engine, prompt_id, &mut stop, &mut stop_deadline).await {
                            return flow;
                        }
                    }
                }
                Some(receipt) = self.receipts.recv() => self.adopt(receipt).await,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && stop.is_none() => {
                    tracing::warn!(job_id = %self.job.id, "job timeout; interrupting");
                    stop = Some(Stop::Timeout);
                    stop_deadline = Some(tokio::time::Instant::now() + STOP_WAIT);
                    self.spawn_cancel(engine, prompt_id);
                }
                _ = tokio::time::sleep_until(stop_deadline.unwrap_or(far)), if stop_deadline.is_some() => {
                    // The prompt ignores the interrupt: ComfyUI is stuck. Restart it and
                    // end the job as decided.
                    tracing::error!(job_id = %self.job.id, "the prompt did not stop; restarting ComfyUI");
                    run.abort();
                    self.sh.restart.notify_one();
                    return Flow::Ended(Box::new(Err(comfyui::Error::Timeout("the prompt did not stop".into()))), stop);
                }
                _ = tokio::time::sleep_until(flush_at.unwrap_or(far)), if flush_at.is_some() => {
                    flush_at = None;
                    self.write_progress(tracker).await;
                }
            }
        }
    }

    /// What a heartbeat's answer means for the prompt: the one place where a cancel
    /// lands (seen by the timed heartbeat or by the status poll). `Some(flow)`: the
    /// task must stop following the prompt.
    async fn on_beat(
        &mut self,
        beat: Beat,
        run: &JoinHandle<comfyui::Result<PromptRun>>,
        engine: &Engine,
        prompt_id: &str,
        stop: &mut Option<Stop>,
        stop_deadline: &mut Option<tokio::time::Instant>,
    ) -> Option<Flow> {
        match beat {
            Beat::Ok => None,
            Beat::Canceling => {
                if stop.is_none() {
                    tracing::info!(job_id = %self.job.id, "cancel requested; stopping the prompt");
                    *stop = Some(Stop::Cancel);
                    *stop_deadline = Some(tokio::time::Instant::now() + STOP_WAIT);
                    self.spawn_cancel(engine, prompt_id);
                }
                None
            }
            Beat::Lost(end) => {
                run.abort();
                self.spawn_cancel(engine, prompt_id);
                Some(Flow::Exit(end))
            }
            Beat::ReservationTooLong => {
                tracing::info!(job_id = %self.job.id, "the job ahead runs long; giving the reservation up");
                run.abort();
                self.cancel_now(engine, prompt_id).await;
                Some(Flow::Exit(self.release("reservation given up").await))
            }
        }
    }

    /// The status poll: true when the job is no longer `running` under our attempt as
    /// far as the cheap (maybe eventually consistent) read can tell. A read that failed
    /// or lags says nothing; the heartbeat still runs on its own schedule.
    async fn status_changed(&self) -> bool {
        let Some(fence) = self.fence() else {
            return false;
        };
        match self.ports().store.job_status(&self.job.id).await {
            Ok(Some(read)) => read.status != JobStatus::Running || read.attempt != fence.attempt,
            Ok(None) => true,
            Err(e) => {
                tracing::debug!(job_id = %self.job.id, error = %e, "status poll failed");
                false
            }
        }
    }

    /// One WebSocket item. `Some(end)`: the task must stop (a failed claim).
    async fn on_item(
        &mut self,
        item: &StreamItem,
        prompt_id: &str,
        tracker: &mut Tracker,
        deadline: &mut Option<tokio::time::Instant>,
        flush_at: &mut Option<tokio::time::Instant>,
    ) -> Option<JobEnd> {
        let StreamItem::Event(event) = item else {
            return None;
        };
        let started = matches!(event, Event::ExecutionStart { prompt_id: p, .. } if p == prompt_id);
        let changed = tracker.apply(event);
        if started {
            let now = Instant::now();
            self.timing.exec_start = Some(now);
            if matches!(self.hold, Hold::Reserved { .. }) && !self.claim_reserved().await {
                return Some(JobEnd::Abandoned);
            }
            *deadline = Some(tokio::time::Instant::now() + self.sh.config.job_timeout);
            self.set_phase(Phase::Running {
                since: now,
                value: 0.0,
            });
            self.write_progress(tracker).await;
            *flush_at = None;
            return None;
        }
        if !changed {
            return None;
        }
        let phase = *self.phase.borrow();
        if let Phase::Running { since, .. } = phase {
            let value = tracker.snapshot().value;
            self.phase.send_replace(Phase::Running { since, value });
        }
        if self.fence().is_some() && flush_at.is_none() {
            let interval = self.sh.config.progress_interval;
            match self.last_progress_write {
                Some(at) if at.elapsed() < interval => {
                    *flush_at = Some(tokio::time::Instant::from_std(at + interval));
                }
                _ => self.write_progress(tracker).await,
            }
        }
        None
    }

    async fn write_progress(&mut self, tracker: &Tracker) {
        let Some(fence) = self.fence() else {
            return;
        };
        self.last_progress_write = Some(Instant::now());
        let record = ProgressRecord {
            v: SCHEMA_VERSION,
            attempt: fence.attempt,
            progress: tracker.snapshot(),
            updated_at: self.ports().clock.now(),
        };
        if let Err(e) = self.ports().store.put_progress(&self.job.id, &record).await {
            tracing::warn!(job_id = %self.job.id, error = %e, "progress write failed");
        }
    }

    /// A reserved job's prompt started: claim it now. False if the job is not ours to run.
    async fn claim_reserved(&mut self) -> bool {
        let mv = self.sh.claim_move();
        match self.apply(&mv).await {
            Ok(job)
                if job.status == JobStatus::Running
                    && job.lease_owner.as_deref() == Some(self.sh.worker()) =>
            {
                self.hold = Hold::Leased(Fence {
                    owner: self.sh.worker().to_string(),
                    attempt: job.attempt,
                });
                self.job = job;
                self.timing.claimed = Some(Instant::now());
                true
            }
            Ok(job) => {
                if job.status.is_terminal() {
                    log_commit(&job, self.sh.worker(), "claim");
                    self.job = job;
                    self.delete_message().await;
                }
                false
            }
            Err(MoveError::Refused(Refusal::WrongState(s))) if s.is_terminal() => {
                tracing::info!(job_id = %self.job.id, status = %s, "reserved job ended elsewhere (canceled?)");
                self.delete_message().await;
                false
            }
            Err(e) => {
                tracing::info!(job_id = %self.job.id, error = %e, "could not claim the reserved job");
                false
            }
        }
    }

    async fn heartbeat(&mut self) -> Beat {
        let lease = self.sh.config.lease;
        let beat = match self.hold.clone() {
            Hold::Leased(fence) => {
                match self
                    .apply(&Move::Renew {
                        fence,
                        lease: chrono_lease(lease),
                    })
                    .await
                {
                    Ok(job) => {
                        let canceling = job.status == JobStatus::Canceling;
                        self.job = job;
                        if canceling { Beat::Canceling } else { Beat::Ok }
                    }
                    Err(MoveError::Refused(r)) => {
                        tracing::warn!(job_id = %self.job.id, refusal = %r, "lost the lease; stopping and writing nothing more");
                        return Beat::Lost(JobEnd::FencedOut);
                    }
                    Err(MoveError::Gone) => return Beat::Lost(JobEnd::FencedOut),
                    Err(e) => {
                        tracing::warn!(job_id = %self.job.id, error = %e, "lease renewal failed; retrying");
                        Beat::Ok
                    }
                }
            }
            Hold::Reserved { since } => {
                if since.elapsed() > self.sh.config.max_reserved_wait {
                    return Beat::ReservationTooLong;
                }
                let mv = self.sh.reserve_move();
                match self.apply(&mv).await {
                    Ok(job) => {
                        self.job = job;
                        Beat::Ok
                    }
                    Err(MoveError::Refused(r)) => {
                        tracing::info!(job_id = %self.job.id, refusal = %r, "reservation refused; dropping the pre-submitted prompt");
                        if let Refusal::WrongState(s) = r
                            && s.is_terminal()
                        {
                            self.delete_message().await;
                        }
                        return Beat::Lost(JobEnd::Abandoned);
                    }
                    Err(MoveError::Gone) => return Beat::Lost(JobEnd::Abandoned),
                    Err(e) => {
                        tracing::warn!(job_id = %self.job.id, error = %e, "reservation renewal failed; retrying");
                        Beat::Ok
                    }
                }
            }
        };
        self.extend_visibility(lease).await;
        beat
    }

    async fn extend_visibility(&self, by: Duration) {
        if let Err(e) = self
            .ports()
            .queue
            .change_visibility(QueueName::Work, &self.receipt, by)
            .await
        {
            tracing::debug!(job_id = %self.job.id, error = %e, "visibility change failed (stale receipt?)");
        }
    }

    /// Another copy of our job's message arrived: its receipt is the latest one.
    async fn adopt(&mut self, receipt: String) {
        self.receipt = receipt;
        self.extend_visibility(self.sh.config.lease).await;
    }

    async fn delete_message(&mut self) {
        while let Ok(r) = self.receipts.try_recv() {
            self.receipt = r;
        }
        if let Err(e) = self
            .ports()
            .queue
            .delete(QueueName::Work, &self.receipt)
            .await
        {
            // Another copy may be out there; whoever receives it finds the job terminal
            // and deletes it.
            tracing::debug!(job_id = %self.job.id, error = %e, "message delete failed (stale receipt?)");
        }
    }

    fn spawn_cancel(&self, engine: &Engine, prompt_id: &str) {
        let client = engine.client.clone();
        let prompt_id = prompt_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = client
                .cancel_prompt(&prompt_id, Duration::from_secs(5))
                .await
            {
                tracing::warn!(error = %e, "could not cancel the prompt");
            }
        });
    }

    /// Cancels and waits (bounded): used before a job is offered to others, so that our
    /// pre-submitted copy does not start after we let go.
    async fn cancel_now(&self, engine: &Engine, prompt_id: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            engine
                .client
                .cancel_prompt(prompt_id, Duration::from_secs(2)),
        )
        .await;
    }

    /// Lets go of the job so another attempt can start at once: a lease is renewed to
    /// zero (lapsed: the next claim is a charged takeover), a reservation dropped; the
    /// message becomes visible now.
    async fn release(&mut self, why: &str) -> JobEnd {
        tracing::warn!(job_id = %self.job.id, reason = why, "releasing the job");
        let mv = match self.hold.clone() {
            Hold::Leased(fence) => Move::Renew {
                fence,
                lease: chrono::Duration::zero(),
            },
            Hold::Reserved { .. } => Move::Unreserve {
                runner: self.sh.worker().to_string(),
            },
        };
        let end = match self.apply(&mv).await {
            Ok(job) => {
                self.job = job;
                JobEnd::Released
            }
            Err(MoveError::Refused(_)) if self.fence().is_some() => JobEnd::FencedOut,
            Err(e) => {
                tracing::warn!(job_id = %self.job.id, error = %e, "release write failed; the hold will lapse");
                JobEnd::Released
            }
        };
        self.extend_visibility(Duration::ZERO).await;
        end
    }

    /// Shutdown: give the job back uncharged (`preemptions + 1`), message visible now.
    async fn hand_back_job(&mut self) -> JobEnd {
        let Some(fence) = self.fence() else {
            return self.release("shutting down").await;
        };
        match self.apply(&Move::HandBack { fence }).await {
            Ok(job) => {
                tracing::info!(job_id = %job.id, status = %job.status, preemptions = job.preemptions, "handed the job back");
                self.job = job;
                self.extend_visibility(Duration::ZERO).await;
                JobEnd::HandedBack
            }
            Err(MoveError::Refused(_)) => JobEnd::FencedOut,
            Err(e) => {
                tracing::warn!(job_id = %self.job.id, error = %e, "hand-back failed; the lease will lapse");
                self.extend_visibility(Duration::ZERO).await;
                JobEnd::Released
            }
        }
    }

    async fn fail(&mut self, error: JobError) -> JobEnd {
        if matches!(self.hold, Hold::Reserved { .. }) && !self.claim_reserved().await {
            return JobEnd::Abandoned;
        }
        let error = stage::client_safe(error);
        tracing::info!(job_id = %self.job.id, code = %error.code, node_id = ?error.node_id, "job failed");
        self.commit(Finish::Failed(error)).await
    }

    async fn succeed(&mut self, engine: &Engine, run: &PromptRun) -> JobEnd {
        self.set_phase(Phase::Finishing);
        let Some(fence) = self.fence() else {
            return JobEnd::Abandoned;
        };
        let (client, ports, job) = (
            engine.client.clone(),
            self.ports().clone(),
            self.job.clone(),
        );
        let outputs = run.outputs.clone();
        let attempt = fence.attempt;
        let work = async move {
            let fetched = stage::fetch_outputs(&client, &outputs).await?;
            stage::store_outputs(&ports, &job, attempt, fetched).await
        };
        let stored = match self.with_heartbeat(work).await {
            Err(end) => return end,
            Ok(r) => r,
        };
        match stored {
            Ok(outputs) => self.commit(Finish::Succeeded { outputs }).await,
            Err(StageError::Job(e)) => self.fail(e).await,
            Err(e @ StageError::Engine(_)) => {
                self.sh.trouble.report();
                self.release(&e.to_string()).await
            }
            Err(e @ StageError::Store(_)) => self.release(&e.to_string()).await,
        }
    }

    /// Runs `work` while keeping the lease alive. `Err(end)`: the lease was lost.
    async fn with_heartbeat<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, JobEnd> {
        let beat_every = self.sh.config.heartbeat();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return Ok(r),
                _ = heartbeat.tick() => {
                    // A cancel that arrives now is too late: the prompt succeeded.
                    if let Beat::Lost(end) = self.heartbeat().await {
                        return Err(end);
                    }
                }
            }
        }
    }

    /// The finishing write, fenced. Then, and only then, the message is deleted.
    async fn commit(&mut self, finish: Finish) -> JobEnd {
        let Some(fence) = self.fence() else {
            return JobEnd::Abandoned;
        };
        let mv = Move::Finish { fence, finish };
        for attempt in 0..5u32 {
            match self.apply(&mv).await {
                Ok(job) => {
                    self.timing.finished = Some(Instant::now());
                    self.timing.finished_at = Some(self.ports().clock.now());
                    log_commit(&job, self.sh.worker(), "finish");
                    self.timing.queue_ms = job.queue_ms();
                    self.timing.execution_ms = job.execution_ms();
                    let status = job.status;
                    self.job = job;
                    self.delete_message().await;
                    return JobEnd::Committed(status);
                }
                Err(MoveError::Refused(r)) => {
                    tracing::warn!(job_id = %self.job.id, refusal = %r, "finish refused; another attempt owns the job");
                    return JobEnd::FencedOut;
                }
                Err(e) => {
                    tracing::warn!(job_id = %self.job.id, error = %e, "finish write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                }
            }
        }
        // The lease lapses and another attempt takes over.
        JobEnd::Released
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

/// ComfyUI's own start and end of a prompt, from its history messages.
fn comfy_exec_ms(run: &PromptRun) -> Option<(i64, i64)> {
    let messages = &run.history.status.as_ref()?.messages;
    let ts = |name: &str| {
        messages
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, d)| d.get("timestamp")?.as_i64())
    };
    let end = ts("execution_success")
        .or_else(|| ts("execution_error"))
        .or_else(|| ts("execution_interrupted"))?;
    Some((ts("execution_start")?, end))
}
