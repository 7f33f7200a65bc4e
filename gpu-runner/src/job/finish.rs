//! Ending a job: failing it, collecting a succeeded prompt's outputs (streamed from
//! ComfyUI into storage and minted through the assets service), and the fenced commit of
//! the terminal move, retried a few times before the lease is let go.

use super::*;

impl JobTask {
    pub(super) async fn fail(&mut self, error: JobError) -> JobEnd {
        if matches!(self.hold, Hold::Reserved { .. }) && !self.claim_reserved().await {
            return JobEnd::Abandoned;
        }
        let error = stage::client_safe(error);
        tracing::info!(job_id = %self.job.id, code = %error.code, node_id = ?error.node_id, "job failed");
        self.commit(Finish::Failed(error)).await
    }

    pub(super) async fn succeed(&mut self, engine: &Engine, run: &PromptRun) -> JobEnd {
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
            let planned = stage::plan_outputs(&outputs);
            stage::store_outputs(&client, &ports, &job, attempt, planned).await
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
    pub(super) async fn with_heartbeat<T>(
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
    pub(super) async fn commit(&mut self, finish: Finish) -> JobEnd {
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

/// ComfyUI's own start and end of a prompt, from its history messages.
pub(super) fn comfy_exec_ms(run: &PromptRun) -> Option<(i64, i64)> {
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
