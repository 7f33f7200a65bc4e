//! Following a submitted prompt: ComfyUI's WebSocket events become throttled
//! progress writes, while the heartbeat renews the hold, the status poll notices a
//! cancel within about a second, and the job's timeout is kept.

use super::*;

impl JobTask {
    /// Follows the prompt until it ends, keeping the hold alive.
    pub(super) async fn follow(
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
    pub(super) async fn on_beat(
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
    pub(super) async fn status_changed(&self) -> bool {
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
    pub(super) async fn on_item(
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
            // No write for the start itself: the job already reads `running` (its claim
            // said so), and its first progress is written one interval in, as if a
            // write had just been made. One billed DynamoDB write a job less on AWS.
            self.last_progress_write = Some(now);
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

    pub(super) async fn write_progress(&mut self, tracker: &Tracker) {
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
}
