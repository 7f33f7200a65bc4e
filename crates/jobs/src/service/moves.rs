//! Read-decide-write: every state change of a job goes through [`apply_move`], which
//! applies a [`Move`] of the state machine to the latest version of the job with a
//! conditional write, retrying a bounded number of times when a concurrent write wins.

use super::MAX_CAS_RETRIES;
use crate::lifecycle::{self, Move, Refusal};
use crate::model::Job;
use crate::ports::{Clock, JobStore, StoreError};

/// Why [`apply_move`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the job no longer exists")]
    Gone,
    #[error("lost the conditional write too many times")]
    Contended,
}

/// Read-decide-write: applies `mv` to the latest version of the job, retrying when a
/// concurrent write wins. Starts from `job` as the caller last read it.
pub async fn apply_move(
    store: &dyn JobStore,
    clock: &dyn Clock,
    job: Job,
    mv: &Move,
) -> Result<Job, MoveError> {
    let id = job.id.clone();
    let mut current = job;
    for _ in 0..MAX_CAS_RETRIES {
        let applied = lifecycle::apply(&current, mv, clock.now())?;
        if !applied.changed {
            return Ok(applied.job);
        }
        match store.put_job(&applied.job, current.rev).await {
            Ok(()) => return Ok(applied.job),
            Err(StoreError::Conflict) => {
                current = store.get_job(&id).await?.ok_or(MoveError::Gone)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(MoveError::Contended)
}
