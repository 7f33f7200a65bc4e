//! Every move, allowed and refused, in every state.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;
use crate::model::{JobId, OutputKind, SCHEMA_VERSION};

const MAX: u32 = 3;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn lease() -> Duration {
    Duration::seconds(30)
}

fn queued() -> Job {
    Job {
        v: SCHEMA_VERSION,
        id: JobId::generate(),
        tenant: "t".into(),
        status: JobStatus::Queued,
        created_at: t0(),
        started_at: None,
        completed_at: None,
        expires_at: t0() + Duration::days(7),
        queue_deadline: t0() + Duration::hours(1),
        input_key: "inputs/x.json".into(),
        metadata: BTreeMap::new(),
        attempt: 0,
        lease_owner: None,
        lease_until: None,
        reserved_by: None,
        reserved_until: None,
        preemptions: 0,
        gpu_price_per_hour: None,
        lease_started_at: None,
        held_ms: None,
        outputs: vec![],
        error: None,
        enqueued: true,
        rev: 1,
    }
}

fn claim(runner: &str) -> Move {
    Move::Claim {
        runner: runner.into(),
        lease: lease(),
        max_attempts: MAX,
    }
}

fn fence(owner: &str, attempt: u32) -> Fence {
    Fence {
        owner: owner.into(),
        attempt,
    }
}

fn output(name: &str) -> OutputRecord {
    OutputRecord {
        node_id: "3".into(),
        name: name.into(),
        kind: OutputKind::Image,
        content_type: "image/png".into(),
        size_bytes: 10,
        asset_id: format!("asset_{name}"),
        hash: None,
        blob_key: format!("outputs/x/1/{name}"),
    }
}

fn ok(job: &Job, mv: Move, now: DateTime<Utc>) -> Job {
    let applied = apply(job, &mv, now).unwrap_or_else(|e| panic!("{mv:?} refused: {e}"));
    assert!(applied.changed, "{mv:?} should change the job");
    assert_eq!(applied.job.rev, job.rev + 1, "every write bumps rev");
    applied.job
}

fn refused(job: &Job, mv: Move, now: DateTime<Utc>) -> Refusal {
    match apply(job, &mv, now) {
        Ok(a) => panic!(
            "{mv:?} on {} should be refused, got {:?}",
            job.status, a.job.status
        ),
        Err(r) => r,
    }
}

fn running() -> Job {
    ok(&queued(), claim("a"), t0())
}

fn canceling() -> Job {
    ok(&running(), Move::Cancel, t0())
}

fn terminal_jobs() -> Vec<Job> {
    let succeeded = ok(
        &running(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded {
                outputs: vec![output("o")],
            },
        },
        t0(),
    );
    let failed = ok(
        &running(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Failed(JobError::new("x", "y")),
        },
        t0(),
    );
    let canceled = ok(&queued(), Move::Cancel, t0());
    let expired = ok(&queued(), Move::Expire, t0() + Duration::hours(2));
    vec![succeeded, failed, canceled, expired]
}

// ---- claim -------------------------------------------------------------------------

#[test]
fn claim_of_queued_job_grants_attempt_one() {
    let job = ok(&queued(), claim("a"), t0());
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease_owner.as_deref(), Some("a"));
    assert_eq!(job.lease_until, Some(t0() + lease()));
    assert_eq!(job.started_at, Some(t0()));
}

#[test]
fn claim_refused_while_lease_is_live() {
    let job = running();
    let r = refused(&job, claim("b"), t0() + Duration::seconds(29));
    assert_eq!(
        r,
        Refusal::LeaseHeld {
            until: t0() + lease()
        }
    );
    // Even the owner cannot claim twice: it renews instead.
    refused(&job, claim("a"), t0() + Duration::seconds(1));
}

#[test]
fn takeover_after_lease_expiry_bumps_attempt_and_clears_outputs() {
    let mut job = running();
    job = ok(
        &job,
        Move::AddOutputs {
            fence: fence("a", 1),
            outputs: vec![output("first")],
        },
        t0(),
    );
    let later = t0() + Duration::seconds(31);
    let taken = ok(&job, claim("b"), later);
    assert_eq!(taken.status, JobStatus::Running);
    assert_eq!(taken.attempt, 2);
    assert_eq!(taken.lease_owner.as_deref(), Some("b"));
    assert!(
        taken.outputs.is_empty(),
        "only the finishing attempt's outputs"
    );
    assert_eq!(
        taken.started_at,
        Some(t0()),
        "started_at keeps the first start"
    );
}

#[test]
fn takeover_at_max_attempts_fails_with_attempts_exhausted() {
    let mut job = running();
    let mut now = t0();
    for expected_attempt in 2..=MAX {
        now += Duration::seconds(31);
        job = ok(&job, claim("b"), now);
        assert_eq!(job.attempt, expected_attempt);
    }
    now += Duration::seconds(31);
    let failed = ok(&job, claim("c"), now);
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, "attempts_exhausted");
    assert_eq!(failed.completed_at, Some(now));
}

#[test]
fn takeover_of_canceling_job_finalises_canceled() {
    let job = canceling();
    let done = ok(&job, claim("b"), t0() + Duration::seconds(31));
    assert_eq!(done.status, JobStatus::Canceled);
    assert_eq!(done.attempt, 1, "no new attempt for a canceled job");
}

#[test]
fn claim_refused_on_every_terminal_state() {
    for job in terminal_jobs() {
        let status = job.status;
        assert_eq!(
            refused(&job, claim("b"), t0() + Duration::days(1)),
            Refusal::WrongState(status)
        );
    }
}

#[test]
fn claim_of_queued_job_whose_free_attempts_are_used_fails() {
    // A job handed back more often than the free preemptions allow.
    let mut job = queued();
    job.attempt = MAX + MAX_FREE_PREEMPTIONS;
    job.preemptions = MAX_FREE_PREEMPTIONS + 5;
    let failed = ok(&job, claim("a"), t0());
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().code, "attempts_exhausted");
}

// ---- reservation ---------------------------------------------------------------------

#[test]
fn reservation_keeps_job_queued_and_blocks_other_claims() {
    let until = t0() + Duration::seconds(10);
    let job = ok(
        &queued(),
        Move::Reserve {
            runner: "a".into(),
            until,
        },
        t0(),
    );
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(
        refused(&job, claim("b"), t0() + Duration::seconds(5)),
        Refusal::Reserved { until }
    );
    assert_eq!(
        refused(
            &job,
            Move::Reserve {
                runner: "b".into(),
                until: t0() + Duration::seconds(20)
            },
            t0()
        ),
        Refusal::Reserved { until }
    );
    // The holder claims it at execution_start.
    let claimed = ok(&job, claim("a"), t0() + Duration::seconds(5));
    assert_eq!(claimed.lease_owner.as_deref(), Some("a"));
    assert!(claimed.reserved_by.is_none());
}

#[test]
fn reservation_can_be_renewed_by_holder() {
    let job = ok(
        &queued(),
        Move::Reserve {
            runner: "a".into(),
            until: t0() + Duration::seconds(10),
        },
        t0(),
    );
    let renewed = ok(
        &job,
        Move::Reserve {
            runner: "a".into(),
            until: t0() + Duration::seconds(20),
        },
        t0() + Duration::seconds(5),
    );
    assert_eq!(renewed.reserved_until, Some(t0() + Duration::seconds(20)));
}

#[test]
fn lapsed_reservation_lets_any_runner_claim() {
    let job = ok(
        &queued(),
        Move::Reserve {
            runner: "a".into(),
            until: t0() + Duration::seconds(10),
        },
        t0(),
    );
    let claimed = ok(&job, claim("b"), t0() + Duration::seconds(11));
    assert_eq!(claimed.lease_owner.as_deref(), Some("b"));
}

#[test]
fn unreserve_by_holder_clears_and_by_others_is_noop() {
    let job = ok(
        &queued(),
        Move::Reserve {
            runner: "a".into(),
            until: t0() + Duration::seconds(10),
        },
        t0(),
    );
    let other = apply(&job, &Move::Unreserve { runner: "b".into() }, t0()).unwrap();
    assert!(!other.changed);
    let cleared = ok(&job, Move::Unreserve { runner: "a".into() }, t0());
    assert!(cleared.reserved_by.is_none());
}

#[test]
fn reserve_refused_unless_queued() {
    let r = Move::Reserve {
        runner: "a".into(),
        until: t0() + Duration::seconds(10),
    };
    assert_eq!(
        refused(&running(), r.clone(), t0()),
        Refusal::WrongState(JobStatus::Running)
    );
    for job in terminal_jobs() {
        refused(&job, r.clone(), t0());
    }
}

// ---- renew, outputs, finish: fencing --------------------------------------------------

#[test]
fn renew_extends_lease_for_the_owner_even_while_canceling() {
    let job = ok(
        &running(),
        Move::Renew {
            fence: fence("a", 1),
            lease: lease(),
        },
        t0() + Duration::seconds(10),
    );
    assert_eq!(job.lease_until, Some(t0() + Duration::seconds(40)));
    let c = ok(
        &canceling(),
        Move::Renew {
            fence: fence("a", 1),
            lease: lease(),
        },
        t0() + Duration::seconds(10),
    );
    assert_eq!(c.status, JobStatus::Canceling, "renewal returns the cancel");
}

#[test]
fn every_runner_write_is_fenced_by_owner_and_attempt() {
    let job = running();
    let wrong = [fence("b", 1), fence("a", 2), fence("a", 0)];
    for f in wrong {
        let moves = [
            Move::Renew {
                fence: f.clone(),
                lease: lease(),
            },
            Move::AddOutputs {
                fence: f.clone(),
                outputs: vec![output("x")],
            },
            Move::Finish {
                fence: f.clone(),
                finish: Finish::Succeeded { outputs: vec![] },
            },
            Move::HandBack { fence: f.clone() },
        ];
        for mv in moves {
            assert_eq!(refused(&job, mv, t0()), Refusal::Fenced);
        }
    }
}

#[test]
fn runner_writes_refused_on_queued_and_terminal_jobs() {
    let mut jobs = terminal_jobs();
    jobs.push(queued());
    for job in jobs {
        let status = job.status;
        let mv = Move::Renew {
            fence: fence("a", 1),
            lease: lease(),
        };
        assert_eq!(refused(&job, mv, t0()), Refusal::WrongState(status));
    }
}

#[test]
fn stalled_runner_waking_after_takeover_is_fenced_out() {
    let job = running(); // runner a, attempt 1
    let later = t0() + Duration::seconds(45);
    let taken = ok(&job, claim("b"), later);
    // Runner a wakes up and tries to commit everything it can.
    for mv in [
        Move::Renew {
            fence: fence("a", 1),
            lease: lease(),
        },
        Move::AddOutputs {
            fence: fence("a", 1),
            outputs: vec![output("stale")],
        },
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded {
                outputs: vec![output("stale")],
            },
        },
        Move::HandBack {
            fence: fence("a", 1),
        },
    ] {
        assert_eq!(refused(&taken, mv, later), Refusal::Fenced);
    }
    // The new owner commits.
    let done = ok(
        &taken,
        Move::Finish {
            fence: fence("b", 2),
            finish: Finish::Succeeded {
                outputs: vec![output("fresh")],
            },
        },
        later,
    );
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.outputs, vec![output("fresh")]);
}

#[test]
fn owner_may_finish_after_its_lease_lapsed_if_nobody_took_over() {
    let job = running();
    let done = ok(
        &job,
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded { outputs: vec![] },
        },
        t0() + Duration::minutes(5),
    );
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[test]
fn add_outputs_is_idempotent() {
    let once = ok(
        &running(),
        Move::AddOutputs {
            fence: fence("a", 1),
            outputs: vec![output("o")],
        },
        t0(),
    );
    let twice = ok(
        &once,
        Move::AddOutputs {
            fence: fence("a", 1),
            outputs: vec![output("o")],
        },
        t0(),
    );
    assert_eq!(twice.outputs.len(), 1);
}

#[test]
fn finish_succeeded_failed_and_canceled() {
    let ok_job = ok(
        &running(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded {
                outputs: vec![output("o")],
            },
        },
        t0() + Duration::seconds(3),
    );
    assert_eq!(ok_job.status, JobStatus::Succeeded);
    assert_eq!(ok_job.completed_at, Some(t0() + Duration::seconds(3)));
    assert_eq!(ok_job.execution_ms(), Some(3000));
    assert!(ok_job.lease_until.is_none());

    let failed = ok(
        &running(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Failed(JobError::new("node_execution_error", "boom")),
        },
        t0(),
    );
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().code, "node_execution_error");

    // Finishing as canceled needs a cancel request.
    assert_eq!(
        refused(
            &running(),
            Move::Finish {
                fence: fence("a", 1),
                finish: Finish::Canceled
            },
            t0()
        ),
        Refusal::WrongState(JobStatus::Running)
    );
    let canceled = ok(
        &canceling(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Canceled,
        },
        t0(),
    );
    assert_eq!(canceled.status, JobStatus::Canceled);
}

#[test]
fn canceling_job_that_finished_first_keeps_its_result() {
    let done = ok(
        &canceling(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded {
                outputs: vec![output("o")],
            },
        },
        t0(),
    );
    assert_eq!(done.status, JobStatus::Succeeded);
}

#[test]
fn retention_restarts_at_completion() {
    let done = ok(
        &running(),
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Succeeded { outputs: vec![] },
        },
        t0() + Duration::hours(1),
    );
    assert_eq!(
        done.expires_at,
        t0() + Duration::hours(1) + Duration::days(7)
    );
}

// ---- hand-back -----------------------------------------------------------------------

#[test]
fn hand_back_requeues_and_counts_a_preemption_not_an_attempt() {
    let job = ok(
        &running(),
        Move::HandBack {
            fence: fence("a", 1),
        },
        t0(),
    );
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.preemptions, 1);
    assert_eq!(charged_attempts(&job), 0);
    assert!(job.lease_owner.is_none());
    // A handed-back job can be claimed MAX more times before it is exhausted.
    let mut job = job;
    let mut now = t0();
    for _ in 0..MAX {
        job = ok(&job, claim("b"), now);
        now += Duration::seconds(31);
    }
    assert_eq!(job.attempt, MAX + 1);
    assert_eq!(ok(&job, claim("c"), now).status, JobStatus::Failed);
}

#[test]
fn hand_back_of_canceling_job_finalises_canceled() {
    let job = ok(
        &canceling(),
        Move::HandBack {
            fence: fence("a", 1),
        },
        t0(),
    );
    assert_eq!(job.status, JobStatus::Canceled);
}

// ---- cancel --------------------------------------------------------------------------

#[test]
fn cancel_in_each_state() {
    let c = ok(&queued(), Move::Cancel, t0());
    assert_eq!(c.status, JobStatus::Canceled);
    assert_eq!(c.completed_at, Some(t0()));

    // A reserved job is still queued: cancel wins outright.
    let reserved = ok(
        &queued(),
        Move::Reserve {
            runner: "a".into(),
            until: t0() + Duration::seconds(9),
        },
        t0(),
    );
    let c = ok(&reserved, Move::Cancel, t0());
    assert_eq!(c.status, JobStatus::Canceled);
    assert!(c.reserved_by.is_none());

    let c = ok(&running(), Move::Cancel, t0());
    assert_eq!(c.status, JobStatus::Canceling);
    assert_eq!(
        c.lease_owner.as_deref(),
        Some("a"),
        "the runner keeps its lease"
    );

    // Idempotent where there is nothing to do.
    let again = apply(&canceling(), &Move::Cancel, t0()).unwrap();
    assert!(!again.changed);
    assert_eq!(again.job.status, JobStatus::Canceling);
    for job in terminal_jobs() {
        let a = apply(&job, &Move::Cancel, t0()).unwrap();
        assert!(!a.changed);
        assert_eq!(a.job, job);
    }
}

// ---- tick moves ------------------------------------------------------------------------

#[test]
fn expire_only_queued_jobs_past_their_deadline() {
    assert_eq!(
        refused(&queued(), Move::Expire, t0() + Duration::minutes(59)),
        Refusal::NotDue
    );
    let e = ok(&queued(), Move::Expire, t0() + Duration::hours(1));
    assert_eq!(e.status, JobStatus::Expired);
    assert_eq!(e.error.unwrap().code, "queue_timeout");
    assert_eq!(
        refused(&running(), Move::Expire, t0() + Duration::hours(2)),
        Refusal::WrongState(JobStatus::Running)
    );
    for job in terminal_jobs() {
        refused(&job, Move::Expire, t0() + Duration::days(2));
    }
}

#[test]
fn reap_expired_lease() {
    let reap = Move::ReapExpiredLease { max_attempts: MAX };
    let later = t0() + Duration::seconds(31);
    // Live lease: hands off.
    refused(&running(), reap.clone(), t0());
    // Expired, attempts left: wait for a takeover, no write.
    let a = apply(&running(), &reap, later).unwrap();
    assert!(!a.changed);
    // Expired and canceling: canceled.
    assert_eq!(
        ok(&canceling(), reap.clone(), later).status,
        JobStatus::Canceled
    );
    // Expired at the limit: failed.
    let mut job = running();
    job.attempt = MAX;
    let failed = ok(&job, reap.clone(), later);
    assert_eq!(failed.error.unwrap().code, "attempts_exhausted");
    refused(&queued(), reap.clone(), later);
}

#[test]
fn dead_letter_fails_unless_leased() {
    let f = ok(&queued(), Move::DeadLetter, t0());
    assert_eq!(f.status, JobStatus::Failed);
    assert_eq!(f.error.unwrap().code, "dead_lettered");
    refused(&running(), Move::DeadLetter, t0());
    let f = ok(&running(), Move::DeadLetter, t0() + Duration::seconds(31));
    assert_eq!(f.status, JobStatus::Failed);
    assert_eq!(
        ok(&canceling(), Move::DeadLetter, t0() + Duration::seconds(31)).status,
        JobStatus::Canceled
    );
    for job in terminal_jobs() {
        assert!(!apply(&job, &Move::DeadLetter, t0()).unwrap().changed);
    }
}

// ---- GPU time ----------------------------------------------------------------------

fn at(seconds: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(seconds)
}

fn renew(job: &Job, owner: &str, now: DateTime<Utc>) -> Job {
    ok(
        job,
        Move::Renew {
            fence: fence(owner, job.attempt),
            lease: lease(),
        },
        now,
    )
}

fn succeed(job: &Job, owner: &str, now: DateTime<Utc>) -> Job {
    ok(
        job,
        Move::Finish {
            fence: fence(owner, job.attempt),
            finish: Finish::Succeeded { outputs: vec![] },
        },
        now,
    )
}

#[test]
fn gpu_time_leaves_out_the_wait_after_a_hand_back() {
    // Held 10 s, handed back (Spot), queued 90 s, then run 30 s by another runner.
    let held = ok(&queued(), claim("a"), at(0));
    let back = ok(
        &held,
        Move::HandBack {
            fence: fence("a", 1),
        },
        at(10),
    );
    assert_eq!(back.held_ms, Some(10_000));
    assert_eq!(back.lease_started_at, None);
    let again = ok(&back, claim("b"), at(100));
    let again = renew(&again, "b", at(120));
    let done = succeed(&again, "b", at(130));
    assert_eq!(
        done.gpu_seconds(),
        Some(40.0),
        "10 s + 30 s, not the 90 s queued"
    );
    assert_eq!(
        done.execution_ms(),
        Some(130_000),
        "start to end still spans it all"
    );
}

#[test]
fn gpu_time_counts_a_lost_lease_until_it_lapsed() {
    // Runner a dies 5 s in; its lease (30 s) lapses at 30 s; b takes over at 60 s.
    let held = ok(&queued(), claim("a"), at(0));
    let taken = ok(&held, claim("b"), at(60));
    assert_eq!(
        taken.held_ms,
        Some(30_000),
        "a held the GPU until its lease lapsed"
    );
    let done = succeed(&taken, "b", at(70));
    assert_eq!(done.gpu_seconds(), Some(40.0));
}

#[test]
fn gpu_time_of_a_job_canceled_while_running_ends_at_the_cancel() {
    let held = ok(&queued(), claim("a"), at(0));
    let canceling = ok(&held, Move::Cancel, at(4));
    let canceled = ok(
        &canceling,
        Move::Finish {
            fence: fence("a", 1),
            finish: Finish::Canceled,
        },
        at(5),
    );
    assert_eq!(canceled.gpu_seconds(), Some(5.0));
    // Never started: no GPU time at all.
    let never = ok(&queued(), Move::Cancel, at(5));
    assert_eq!(never.gpu_seconds(), None);
}
