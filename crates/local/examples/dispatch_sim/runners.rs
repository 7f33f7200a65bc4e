//! The simulated runners: a faithful simplification of gpu-runner's loop over the real
//! store and queue (see the crate docs of `main.rs` for what is left out). A ready
//! runner registers `idle`, claims work with the lease protocol, heartbeats and renews
//! its lease every minute, finishes, and exits after `IdleTimeout` without work.

use std::collections::HashMap;

use chrono::Duration;
use jobs::lifecycle::{Fence, Finish, Move};
use jobs::model::{Job, JobId, JobStatus, SCHEMA_VERSION, WorkMessage};
use jobs::ports::{Clock, QueueName, WorkerPhase, WorkerRecord};
use jobs::service::{MoveError, apply_move};

use crate::fleet::{MS, RunnerState};
use crate::{LEASE_S, Policy, World};

/// A runner's job in progress.
pub(crate) struct Held {
    job: Job,
    fence: Fence,
    receipt: String,
}

impl World {
    pub(crate) async fn register(&self, r: usize, phase: WorkerPhase) -> anyhow::Result<()> {
        let (id, launched_at) = {
            let fleet = self.fleet.lock().unwrap();
            (fleet.runners[r].id.clone(), fleet.runners[r].launched_at)
        };
        let record = WorkerRecord {
            v: SCHEMA_VERSION,
            id,
            phase,
            heartbeat_at: self.clock.now(),
            launched_at: self.clock.at(launched_at),
            detail: "simulated".into(),
        };
        self.ports.store.put_worker(&record).await?;
        Ok(())
    }

    /// The runner leaves: deregisters, and its instance empties.
    pub(crate) async fn exit(&self, r: usize) -> anyhow::Result<()> {
        let id = self.fleet.lock().unwrap().runners[r].id.clone();
        self.ports.store.delete_worker(&id).await?;
        self.fleet.lock().unwrap().runner_gone(r, self.now());
        Ok(())
    }

    pub(crate) fn runner_states(&self) -> Vec<(usize, RunnerState, bool)> {
        let fleet = self.fleet.lock().unwrap();
        fleet
            .runners
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state != RunnerState::Gone)
            .map(|(i, r)| (i, r.state, r.idle_exit))
            .collect()
    }

    pub(crate) fn set_state(&self, r: usize, state: RunnerState) {
        self.fleet.lock().unwrap().runners[r].state = state;
    }

    /// The next time a runner changes by itself.
    pub(crate) fn next_runner_event(&self) -> Option<i64> {
        let idle_timeout = self.idle_timeout;
        self.runner_states()
            .into_iter()
            .filter_map(|(_, state, idle_exit)| match state {
                RunnerState::Booting { ready_at } => Some(ready_at),
                RunnerState::Busy { until } => Some(until),
                RunnerState::Idle { since } if idle_exit => Some(since + idle_timeout),
                _ => None,
            })
            .min()
    }

    /// Runner transitions due now: ready, job done, idle exit.
    pub(crate) async fn runners_due(&mut self) -> anyhow::Result<()> {
        let now = self.now();
        for (r, state, idle_exit) in self.runner_states() {
            match state {
                RunnerState::Booting { ready_at } if ready_at <= now => {
                    self.set_state(r, RunnerState::Idle { since: now });
                    self.register(r, WorkerPhase::Idle).await?;
                }
                RunnerState::Busy { until } if until <= now => {
                    let held = self.held.remove(&r).expect("a busy runner holds a job");
                    let store = self.ports.store.as_ref();
                    let finish = Move::Finish {
                        fence: held.fence,
                        finish: Finish::Succeeded { outputs: vec![] },
                    };
                    apply_move(store, self.clock.as_ref(), held.job, &finish).await?;
                    self.ports
                        .queue
                        .delete(QueueName::Work, &held.receipt)
                        .await?;
                    self.set_state(r, RunnerState::Idle { since: now });
                    self.register(r, WorkerPhase::Idle).await?;
                }
                RunnerState::Idle { since } if idle_exit && since + self.idle_timeout <= now => {
                    if self.spares(r) {
                        self.set_state(r, RunnerState::Idle { since: now });
                    } else {
                        self.exit(r).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether the hypothetical "spare the warm runners" rule keeps this runner.
    pub(crate) fn spares(&self, _r: usize) -> bool {
        let Policy::Ours {
            min_warm,
            spare_warm: true,
        } = self.policy
        else {
            return false;
        };
        let live = self
            .runner_states()
            .iter()
            .filter(|(_, s, _)| matches!(s, RunnerState::Idle { .. } | RunnerState::Busy { .. }))
            .count();
        live <= min_warm as usize
    }

    /// Idle ready runners take work while there is some, as a long poll would.
    pub(crate) async fn claim(&mut self, runs_for: &HashMap<JobId, i64>) -> anyhow::Result<()> {
        let now = self.now();
        let lease = std::time::Duration::from_secs(LEASE_S as u64);
        for (r, state, _) in self.runner_states() {
            if !matches!(state, RunnerState::Idle { .. }) {
                continue;
            }
            let runner = self.fleet.lock().unwrap().runners[r].id.clone();
            loop {
                let queue = &self.ports.queue;
                let Some(msg) = queue
                    .receive(QueueName::Work, 1, std::time::Duration::ZERO, lease)
                    .await?
                    .pop()
                else {
                    return Ok(());
                };
                let work: WorkMessage = serde_json::from_str(&msg.body)?;
                let job = self.ports.store.get_job(&work.job_id).await?;
                let Some(job) = job.filter(|j| !j.status.is_terminal()) else {
                    queue.delete(QueueName::Work, &msg.receipt).await?;
                    continue;
                };
                let claim = Move::Claim {
                    runner: runner.clone(),
                    lease: Duration::seconds(LEASE_S),
                    max_attempts: self.jobs.config().max_attempts,
                };
                let store = self.ports.store.as_ref();
                match apply_move(store, self.clock.as_ref(), job, &claim).await {
                    Ok(job)
                        if job.status == JobStatus::Running
                            && job.lease_owner.as_deref() == Some(runner.as_str()) =>
                    {
                        let until = now + runs_for.get(&job.id).copied().unwrap_or(30 * MS);
                        let fence = Fence {
                            owner: runner.clone(),
                            attempt: job.attempt,
                        };
                        let receipt = msg.receipt;
                        self.held.insert(
                            r,
                            Held {
                                job,
                                fence,
                                receipt,
                            },
                        );
                        self.set_state(r, RunnerState::Busy { until });
                        self.register(r, WorkerPhase::Busy).await?;
                        break;
                    }
                    // Held by someone else: pushed back until that lease ends, as
                    // gpu-runner does (never deleted).
                    Ok(_) | Err(MoveError::Refused(_)) => {
                        queue
                            .change_visibility(QueueName::Work, &msg.receipt, lease)
                            .await?
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Every minute: runners heartbeat and renew their leases.
    pub(crate) async fn heartbeats(&mut self) -> anyhow::Result<()> {
        for (r, state, _) in self.runner_states() {
            match state {
                RunnerState::Idle { .. } => self.register(r, WorkerPhase::Idle).await?,
                RunnerState::Busy { .. } => {
                    let held = self.held.remove(&r).expect("busy runner holds a job");
                    let renew = Move::Renew {
                        fence: held.fence.clone(),
                        lease: Duration::seconds(LEASE_S),
                    };
                    let store = self.ports.store.as_ref();
                    let job = apply_move(store, self.clock.as_ref(), held.job, &renew).await?;
                    // The message stays hidden while the job runs.
                    let lease = std::time::Duration::from_secs(LEASE_S as u64);
                    self.ports
                        .queue
                        .change_visibility(QueueName::Work, &held.receipt, lease)
                        .await?;
                    self.held.insert(r, Held { job, ..held });
                    self.register(r, WorkerPhase::Busy).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}
