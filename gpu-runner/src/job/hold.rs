//! Holding a job: claiming a reserved one, the heartbeat that renews the hold and the
//! message's visibility, adopting a fresh receipt, and letting go (release on a
//! ComfyUI death, hand-back on shutdown). Every write goes through the task's fenced
//! [`JobTask::apply`].

use super::*;

impl JobTask {
    /// A reserved job's prompt started: claim it now. False if the job is not ours to run.
    pub(super) async fn claim_reserved(&mut self) -> bool {
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

    pub(super) async fn heartbeat(&mut self) -> Beat {
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

    pub(super) async fn extend_visibility(&self, by: Duration) {
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
    pub(super) async fn adopt(&mut self, receipt: String) {
        self.receipt = receipt;
        self.extend_visibility(self.sh.config.lease).await;
    }

    pub(super) async fn delete_message(&mut self) {
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

    pub(super) fn spawn_cancel(&self, engine: &Engine, prompt_id: &str) {
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
    pub(super) async fn cancel_now(&self, engine: &Engine, prompt_id: &str) {
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
    pub(super) async fn release(&mut self, why: &str) -> JobEnd {
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
    pub(super) async fn hand_back_job(&mut self) -> JobEnd {
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
}
