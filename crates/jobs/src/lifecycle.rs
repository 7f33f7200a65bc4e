//! The job state machine and the lease protocol (ARCHITECTURE.md §4), in one place.
//!
//! Every change to a job is a [`Move`]. [`apply`] is a pure function: given the job as
//! read, a move and the current time, it either returns the job as it must be written,
//! or a [`Refusal`] saying why the move is not allowed. It never performs I/O.
//!
//! The store then writes the result with **one conditional write**: "the revision is
//! still the one I read" ([`crate::ports::JobStore::put_job`]). If someone else wrote in
//! between, the write fails, the caller re-reads and calls [`apply`] again, so every
//! decision is made on the latest state. That is how fencing works: a runner's move
//! carries a [`Fence`] (`lease_owner`, `attempt`) and [`apply`] refuses it unless the job
//! *as stored at the moment of the write* still names that owner and attempt. A stalled
//! runner that wakes after another runner took over finds `attempt` moved on, gets
//! [`Refusal::Fenced`], and must stop writing.
//!
//! ```text
//!            claim                 finish(succeeded|failed)
//!   queued ────────▶ running ───────────────────────────────▶ succeeded | failed
//!     │  ▲              │  ▲ takeover (lease expired, attempt+1)
//!     │  └── hand-back ─┘  │
//!     │                    └── cancel ──▶ canceling ── finish/takeover ──▶ canceled
//!     ├── cancel ──▶ canceled                            (or succeeded/failed if it ended first)
//!     └── expire (queued past its deadline) ──▶ expired
//! ```
//!
//! Attempts: `attempt` counts every claim and takeover, so it is a unique fencing token
//! and names the output prefix `outputs/{job}/{attempt}/`. Hand-backs (SIGTERM, Spot)
//! bump `preemptions`; up to [`MAX_FREE_PREEMPTIONS`] of them are not charged, so the
//! attempts charged are `attempt - min(preemptions, MAX_FREE_PREEMPTIONS)`. A job whose
//! charged attempts reach `max_attempts` fails with `attempts_exhausted` instead of being
//! taken over again; it never cycles forever.

use chrono::{DateTime, Duration, Utc};

use crate::model::{Job, JobError, JobStatus, OutputRecord};

/// Hand-backs beyond this many are charged as attempts, so a job that is preempted over
/// and over still ends.
pub const MAX_FREE_PREEMPTIONS: u32 = 10;

/// Who holds a lease: the runner's id and the attempt it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub attempt: u32,
}

/// How a runner's work on a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded {
        outputs: Vec<OutputRecord>,
    },
    Failed(JobError),
    /// The runner stopped the prompt because the job was `canceling`.
    Canceled,
}

/// Every change a job can undergo.
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// A runner asks for the job: claims a queued job, or takes over an expired lease.
    Claim {
        runner: String,
        lease: Duration,
        max_attempts: u32,
    },
    /// Prefetch: hold a queued job for a short, renewable time without starting it.
    Reserve {
        runner: String,
        until: DateTime<Utc>,
    },
    /// Give a reservation up early.
    Unreserve { runner: String },
    /// Heartbeat: extend the lease. The written job comes back, so a cancel is noticed.
    Renew { fence: Fence, lease: Duration },
    /// Commit outputs as they are uploaded (v2's `outputs` fill in while a job runs).
    AddOutputs {
        fence: Fence,
        outputs: Vec<OutputRecord>,
    },
    /// The runner is done with the job.
    Finish { fence: Fence, finish: Finish },
    /// The runner is shutting down (SIGTERM, Spot) and gives the job back.
    HandBack { fence: Fence },
    /// A client asks to cancel. A request, not a guarantee.
    Cancel,
    /// The tick: a queued job waited past its deadline.
    Expire,
    /// The tick: a leased job's lease ran out and nobody took it over. Finalises what
    /// need not wait for a runner (a canceling job, an exhausted one).
    ReapExpiredLease { max_attempts: u32 },
    /// The tick: the job's message landed in the dead-letter queue.
    DeadLetter,
}

/// Why a move was refused. Each refusal leaves the job unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the job is {0}, which does not allow this move")]
    WrongState(JobStatus),
    #[error("the job is leased by another runner until {until}")]
    LeaseHeld { until: DateTime<Utc> },
    #[error("the job is reserved by another runner until {until}")]
    Reserved { until: DateTime<Utc> },
    #[error("fenced out: the lease is no longer this runner's attempt")]
    Fenced,
    #[error("the queue deadline has not passed")]
    NotDue,
}

/// The result of an allowed move: the job to write, and whether anything changed
/// (an idempotent no-op such as cancelling a finished job needs no write).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub job: Job,
    pub changed: bool,
}

impl Applied {
    fn unchanged(job: &Job) -> Self {
        Applied {
            job: job.clone(),
            changed: false,
        }
    }
}

/// Attempts charged against `max_attempts`.
pub fn charged_attempts(job: &Job) -> u32 {
    job.attempt
        .saturating_sub(job.preemptions.min(MAX_FREE_PREEMPTIONS))
}

/// Applies `mv` to `job` at `now`. Pure: the caller writes the result conditionally.
pub fn apply(job: &Job, mv: &Move, now: DateTime<Utc>) -> Result<Applied, Refusal> {
    let mut next = job.clone();
    match mv {
        Move::Claim {
            runner,
            lease,
            max_attempts,
        } => match job.status {
            JobStatus::Queued => {
                if job.has_live_reservation(now) && job.reserved_by.as_deref() != Some(runner) {
                    return Err(Refusal::Reserved {
                        until: job.reserved_until.unwrap_or(now),
                    });
                }
                if charged_attempts(job) >= *max_attempts {
                    fail_exhausted(&mut next, now);
                } else {
                    grant_lease(&mut next, runner, *lease, now);
                }
            }
            JobStatus::Running | JobStatus::Canceling => {
                if job.has_live_lease(now) {
                    return Err(Refusal::LeaseHeld {
                        until: job.lease_until.unwrap_or(now),
                    });
                }
                if job.status == JobStatus::Canceling {
                    // Nobody is left to stop the prompt: the cancel wins.
                    finalise(&mut next, JobStatus::Canceled, now);
                } else if charged_attempts(job) >= *max_attempts {
                    fail_exhausted(&mut next, now);
                } else {
                    grant_lease(&mut next, runner, *lease, now);
                }
            }
            terminal => return Err(Refusal::WrongState(terminal)),
        },

        Move::Reserve { runner, until } => {
            if job.status != JobStatus::Queued {
                return Err(Refusal::WrongState(job.status));
            }
            if job.has_live_reservation(now) && job.reserved_by.as_deref() != Some(runner) {
                return Err(Refusal::Reserved {
                    until: job.reserved_until.unwrap_or(now),
                });
            }
            next.reserved_by = Some(runner.clone());
            next.reserved_until = Some(*until);
        }

        Move::Unreserve { runner } => {
            if job.reserved_by.as_deref() != Some(runner) {
                return Ok(Applied::unchanged(job));
            }
            next.reserved_by = None;
            next.reserved_until = None;
        }

        Move::Renew { fence, lease } => {
            check_fence(job, fence)?;
            next.lease_until = Some(now + *lease);
        }

        Move::AddOutputs { fence, outputs } => {
            check_fence(job, fence)?;
            for output in outputs {
                if !next.outputs.contains(output) {
                    next.outputs.push(output.clone());
                }
            }
        }

        Move::Finish { fence, finish } => {
            check_fence(job, fence)?;
            match finish {
                Finish::Succeeded { outputs } => {
                    for output in outputs {
                        if !next.outputs.contains(output) {
                            next.outputs.push(output.clone());
                        }
                    }
                    finalise(&mut next, JobStatus::Succeeded, now);
                }
                Finish::Failed(error) => {
                    next.error = Some(error.clone());
                    finalise(&mut next, JobStatus::Failed, now);
                }
                Finish::Canceled => {
                    if job.status != JobStatus::Canceling {
                        // Only a cancel request makes a runner stop a prompt as canceled.
                        return Err(Refusal::WrongState(job.status));
                    }
                    finalise(&mut next, JobStatus::Canceled, now);
                }
            }
        }

        Move::HandBack { fence } => {
            check_fence(job, fence)?;
            if job.status == JobStatus::Canceling {
                finalise(&mut next, JobStatus::Canceled, now);
            } else {
                close_lease(&mut next, now);
                next.status = JobStatus::Queued;
                next.lease_owner = None;
                next.lease_until = None;
                next.preemptions = job.preemptions.saturating_add(1);
                // A fresh attempt will produce its own outputs.
                next.outputs.clear();
            }
        }

        Move::Cancel => match job.status {
            JobStatus::Queued => finalise(&mut next, JobStatus::Canceled, now),
            JobStatus::Running => next.status = JobStatus::Canceling,
            // Idempotent: already canceling or finished.
            _ => return Ok(Applied::unchanged(job)),
        },

        Move::Expire => {
            if job.status != JobStatus::Queued {
                return Err(Refusal::WrongState(job.status));
            }
            if job.queue_deadline > now {
                return Err(Refusal::NotDue);
            }
            next.error = Some(JobError::new(
                "queue_timeout",
                "the job waited in the queue past the queue timeout without a worker taking it",
            ));
            finalise(&mut next, JobStatus::Expired, now);
        }

        Move::ReapExpiredLease { max_attempts } => {
            if !matches!(job.status, JobStatus::Running | JobStatus::Canceling) {
                return Err(Refusal::WrongState(job.status));
            }
            if job.has_live_lease(now) {
                return Err(Refusal::LeaseHeld {
                    until: job.lease_until.unwrap_or(now),
                });
            }
            if job.status == JobStatus::Canceling {
                finalise(&mut next, JobStatus::Canceled, now);
            } else if charged_attempts(job) >= *max_attempts {
                fail_exhausted(&mut next, now);
            } else {
                // Waiting for a runner to take it over is the right thing: no write.
                return Ok(Applied::unchanged(job));
            }
        }

        Move::DeadLetter => {
            if job.status.is_terminal() {
                return Ok(Applied::unchanged(job));
            }
            if job.has_live_lease(now) {
                return Err(Refusal::LeaseHeld {
                    until: job.lease_until.unwrap_or(now),
                });
            }
            if job.status == JobStatus::Canceling {
                finalise(&mut next, JobStatus::Canceled, now);
            } else {
                next.error = Some(JobError::new(
                    "dead_lettered",
                    "the job's queue message was received too many times without the job \
                     finishing; it was moved to the dead-letter queue",
                ));
                finalise(&mut next, JobStatus::Failed, now);
            }
        }
    }
    next.rev = job.rev + 1;
    Ok(Applied {
        job: next,
        changed: true,
    })
}

fn check_fence(job: &Job, fence: &Fence) -> Result<(), Refusal> {
    if !matches!(job.status, JobStatus::Running | JobStatus::Canceling) {
        return Err(Refusal::WrongState(job.status));
    }
    if job.lease_owner.as_deref() != Some(fence.owner.as_str()) || job.attempt != fence.attempt {
        return Err(Refusal::Fenced);
    }
    Ok(())
}

/// Adds the current lease's GPU time to [`Job::held_ms`]: from its claim to `now`, or
/// to its expiry if it lapsed earlier (a dead runner held the GPU until then at most).
fn close_lease(job: &mut Job, now: DateTime<Utc>) {
    if let Some(started) = job.lease_started_at.take() {
        let end = job.lease_until.map_or(now, |until| until.min(now));
        let held = (end - started).num_milliseconds().max(0);
        *job.held_ms.get_or_insert(0) += held;
    }
}

fn grant_lease(job: &mut Job, runner: &str, lease: Duration, now: DateTime<Utc>) {
    // A takeover ends the lapsed lease first.
    close_lease(job, now);
    job.held_ms.get_or_insert(0);
    job.lease_started_at = Some(now);
    job.status = JobStatus::Running;
    job.attempt += 1;
    job.lease_owner = Some(runner.to_string());
    job.lease_until = Some(now + lease);
    job.reserved_by = None;
    job.reserved_until = None;
    job.started_at.get_or_insert(now);
    // Only the finishing attempt's outputs are listed.
    job.outputs.clear();
    job.error = None;
}

fn fail_exhausted(job: &mut Job, now: DateTime<Utc>) {
    job.error = Some(JobError::new(
        "attempts_exhausted",
        format!(
            "the job was attempted {} time(s) and no attempt finished; it will not be retried",
            job.attempt
        ),
    ));
    finalise(job, JobStatus::Failed, now);
}

/// Moves to a terminal state and releases every hold on the job.
fn finalise(job: &mut Job, status: JobStatus, now: DateTime<Utc>) {
    debug_assert!(status.is_terminal());
    close_lease(job, now);
    let retention = job.expires_at - job.created_at;
    job.status = status;
    job.completed_at = Some(now);
    job.expires_at = now + retention;
    job.lease_until = None;
    job.reserved_by = None;
    job.reserved_until = None;
    if status != JobStatus::Succeeded {
        job.outputs.clear();
    }
}

#[cfg(test)]
mod tests;
