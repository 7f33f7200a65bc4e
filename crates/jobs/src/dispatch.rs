//! Scaling and the tick (ARCHITECTURE.md §1).
//!
//! **Scaling is one decision at a time, made from the store.** The decision is
//! `desired = min(max_workers, max(min_warm_workers, busy + ⌈unclaimed queued / jobs_per_worker⌉))`,
//! where `busy` and the live workers come from the worker registry (what runners
//! themselves report), never from queue in-flight counts or an eventually consistent
//! task list. The `FLEET` item, written with an optimistic lock, serialises decisions:
//! a dispatcher first takes a short *launch lease* on it, launches the deficit,
//! registers the launched workers as `starting`, then releases the lease. A second
//! dispatcher that arrives meanwhile sees the lease and does nothing, so two wake-ups
//! never launch the same deficit twice.
//!
//! **The tick is the safety net**, run every minute: it re-enqueues jobs recorded but
//! never enqueued, expires jobs queued past their deadline, finalises or re-offers jobs
//! whose lease expired, drains the dead-letter queues into `failed`, removes abandoned
//! uploads and what is past its retention ([`crate::retention`]), and scales in case
//! a wake-up was lost.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::lifecycle::{Move, Refusal};
use crate::model::{JobStatus, SCHEMA_VERSION, WorkMessage};
use crate::ports::{
    Clock, Fleet, JobStore, LaunchError, Launcher, Queue, QueueName, StoreError, WorkerPhase,
    WorkerRecord,
};
use crate::service::{JobService, MoveError, apply_move};

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub max_workers: u32,
    pub min_warm_workers: u32,
    pub jobs_per_worker: u32,
    /// A `starting` worker that has not reported by then is presumed lost.
    pub start_timeout: Duration,
    /// A worker whose heartbeat is older than this is presumed dead.
    pub worker_stale_after: Duration,
    /// How long a launch lease on the fleet item lasts.
    pub launch_lease: Duration,
    /// Recorded-but-not-enqueued jobs younger than this are left to their submitter.
    pub enqueue_grace: Duration,
    /// How long a capacity error keeps showing after it was last seen.
    pub capacity_error_ttl: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            max_workers: 1,
            min_warm_workers: 0,
            jobs_per_worker: 1,
            start_timeout: Duration::minutes(15),
            worker_stale_after: Duration::minutes(2),
            launch_lease: Duration::seconds(60),
            enqueue_grace: Duration::seconds(30),
            capacity_error_ttl: Duration::minutes(5),
        }
    }
}

/// Retention batches ([`crate::retention::SWEEP_BATCH`] jobs each) one tick runs at
/// most: 4,000 jobs, a few seconds of small writes that requests interleave with.
pub const RETENTION_BATCHES_PER_TICK: usize = 8;

/// The pure scaling rule.
pub fn desired_workers(busy: u32, unclaimed_queued: u64, config: &DispatchConfig) -> u32 {
    let per = u64::from(config.jobs_per_worker.max(1));
    let for_queue = unclaimed_queued.div_ceil(per);
    let wanted = u64::from(busy) + for_queue;
    let wanted = wanted.max(u64::from(config.min_warm_workers));
    wanted.min(u64::from(config.max_workers)) as u32
}

/// Whether the idle runner `worker_id` is one of the `MinWarmWorkers` runners the
/// fleet keeps up, so that its idle timeout must not end it.
///
/// The runners themselves decide, from the same records the dispatcher reads: the
/// warm floor the last decision recorded (`Fleet::min_warm`) minus the busy runners
/// leaves that many places for runners without work, given to the live idle and
/// starting ones in the order of their ids. Every runner ranks the same list, so
/// exactly the spare ones leave and a kept one never waits for a tick to be
/// relaunched. (Not `desired`: a decision made for a queue that has since drained
/// would keep runners until the next tick.)
///
/// A worker is live as the dispatcher judges it: its `worker_stale_after`, recorded
/// in the fleet by the decision ([`Fleet::worker_stale_after_s`]).
pub fn keeps_warm(
    worker_id: &str,
    fleet: &Fleet,
    workers: &[WorkerRecord],
    now: DateTime<Utc>,
) -> bool {
    let stale_after = fleet
        .worker_stale_after_s
        .and_then(|s| i64::try_from(s).ok())
        .map(Duration::seconds)
        .unwrap_or_else(|| DispatchConfig::default().worker_stale_after);
    let live = |w: &&WorkerRecord| now - w.heartbeat_at <= stale_after;
    let busy = workers
        .iter()
        .filter(live)
        .filter(|w| w.phase == WorkerPhase::Busy)
        .count();
    let places = (fleet.min_warm as usize).saturating_sub(busy);
    let mut spare: Vec<&str> = workers
        .iter()
        .filter(live)
        .filter(|w| matches!(w.phase, WorkerPhase::Idle | WorkerPhase::Starting))
        .map(|w| w.id.as_str())
        .collect();
    spare.sort_unstable();
    spare.iter().take(places).any(|id| *id == worker_id)
}

/// What one scaling decision did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScaleReport {
    pub desired: u32,
    pub live: u32,
    pub busy: u32,
    pub unclaimed_queued: u64,
    /// Running jobs whose lease lapsed (their runner died), waiting for a takeover:
    /// demand like queued ones (counted by the tick).
    pub awaiting_takeover: u64,
    pub launched: u32,
    pub capacity_error: Option<String>,
    /// True when another dispatcher held the launch lease, so this one stood aside.
    pub stood_aside: bool,
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TickReport {
    pub reenqueued: u32,
    pub expired: u32,
    pub reaped: u32,
    /// Running jobs whose lease lapsed, left for a runner to take over.
    pub awaiting_takeover: u32,
    pub dead_lettered: u32,
    /// Abandoned large-file uploads removed past their expiry.
    pub uploads_swept: u32,
    /// What the retention sweep removed (jobs, their assets, idempotency records).
    pub retention: crate::retention::SweepReport,
    pub scale: Option<ScaleReport>,
}

/// The fleet as health shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetSummary {
    pub starting: u32,
    pub idle: u32,
    pub busy: u32,
    pub draining: u32,
    /// Workers up but taking no job (a promised custom node class is missing).
    pub refusing: u32,
    /// Why, `"{worker}: {detail}"` for at most [`MAX_REFUSALS_SHOWN`] of them.
    pub refusals: Vec<String>,
    pub desired: u32,
    pub max: u32,
    pub capacity_error: Option<String>,
}

/// Refusing workers whose reasons health lists (every runner of one image refuses for
/// the same reason; a few say it).
pub const MAX_REFUSALS_SHOWN: usize = 3;

/// What [`update_fleet`] should do with the fleet it read.
enum FleetChange {
    /// Write this (its `rev` is set by the loop); unchanged, nothing is written.
    Write(Fleet),
    /// Write nothing and answer `None`: someone else holds what we wanted.
    Abort,
}

/// The one compare-and-swap loop over the `FLEET` item. `change` decides from the fleet
/// as read; a conflicting write reads again and decides again, at most
/// [`crate::service::MAX_CAS_RETRIES`] times: a fleet contended past that is a
/// `Conflict`, which the next tick or wake tries again. Answers the fleet as written
/// (or as found, when nothing changed), or `None` when `change` aborted.
async fn update_fleet(
    store: &dyn JobStore,
    mut change: impl FnMut(&Fleet) -> FleetChange,
) -> Result<Option<Fleet>, StoreError> {
    let mut fleet = store.get_fleet().await?;
    for _ in 0..crate::service::MAX_CAS_RETRIES {
        let mut next = match change(&fleet) {
            FleetChange::Abort => return Ok(None),
            FleetChange::Write(next) => next,
        };
        next.rev = fleet.rev;
        if next == fleet {
            return Ok(Some(fleet));
        }
        next.rev = fleet.rev + 1;
        match store.put_fleet(&next, fleet.rev).await {
            Ok(()) => return Ok(Some(next)),
            Err(StoreError::Conflict) => fleet = store.get_fleet().await?,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// How long a decision that changed nothing goes unrecorded: its time is rewritten
/// at most this often.
const UNCHANGED_DECISION_REWRITE: Duration = Duration::minutes(5);

/// The fleet as health shows it, read from the store alone: the `status` function has
/// no launcher (it may not start or stop tasks), only the store's `FLEET` item and the
/// worker registry the dispatcher and the runners keep.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub config: DispatchConfig,
    /// What starts workers (`subprocess`, `ecs`, …), for health.
    pub launcher_kind: &'static str,
}

impl FleetView {
    /// Desired and maximum workers, workers by phase, and a current capacity error.
    pub async fn summary(
        &self,
        store: &dyn JobStore,
        clock: &dyn Clock,
    ) -> Result<FleetSummary, StoreError> {
        let now = clock.now();
        let fleet = store.get_fleet().await?;
        let mut summary = FleetSummary {
            desired: fleet.desired,
            max: self.config.max_workers,
            capacity_error: current_capacity_error(&fleet, now, &self.config),
            ..FleetSummary::default()
        };
        for worker in store.list_workers().await? {
            match worker.phase {
                WorkerPhase::Starting => summary.starting += 1,
                WorkerPhase::Idle => summary.idle += 1,
                WorkerPhase::Busy => summary.busy += 1,
                WorkerPhase::Draining => summary.draining += 1,
                WorkerPhase::Refusing => {
                    summary.refusing += 1;
                    if summary.refusals.len() < MAX_REFUSALS_SHOWN {
                        summary
                            .refusals
                            .push(format!("{}: {}", worker.id, worker.detail));
                    }
                }
            }
        }
        Ok(summary)
    }
}

pub struct Dispatcher {
    jobs: Arc<JobService>,
    launcher: Arc<dyn Launcher>,
    config: DispatchConfig,
}

fn store(jobs: &JobService) -> &dyn JobStore {
    jobs.ports().store.as_ref()
}

impl Dispatcher {
    pub fn new(jobs: Arc<JobService>, launcher: Arc<dyn Launcher>, config: DispatchConfig) -> Self {
        Dispatcher {
            jobs,
            launcher,
            config,
        }
    }

    pub fn launcher(&self) -> &Arc<dyn Launcher> {
        &self.launcher
    }

    fn clock(&self) -> &dyn Clock {
        self.jobs.ports().clock.as_ref()
    }

    fn queue(&self) -> &dyn Queue {
        self.jobs.ports().queue.as_ref()
    }

    /// Live workers, after removing the ones that stopped reporting.
    async fn live_workers(&self, now: DateTime<Utc>) -> Result<Vec<WorkerRecord>, StoreError> {
        for id in self.launcher.exited() {
            tracing::info!(worker = %id, "worker exited; removing it from the registry");
            store(&self.jobs).delete_worker(&id).await?;
        }
        let mut live = Vec::new();
        for worker in store(&self.jobs).list_workers().await? {
            let stale = match worker.phase {
                WorkerPhase::Starting => now - worker.launched_at > self.config.start_timeout,
                _ => now - worker.heartbeat_at > self.config.worker_stale_after,
            };
            if stale {
                tracing::warn!(worker = %worker.id, phase = ?worker.phase, "worker stopped reporting; removing it from the registry");
                store(&self.jobs).delete_worker(&worker.id).await?;
            } else {
                live.push(worker);
            }
        }
        Ok(live)
    }

    /// Removes every worker record, for a launcher whose workers cannot outlive the
    /// process that launched them (`dev`'s runner subprocesses die with it): at
    /// start, a record left by the previous process names a runner that is gone, and
    /// would otherwise count as live capacity until it goes stale (minutes with no
    /// runner started). A runner that is somehow alive registers again at its next
    /// heartbeat. Returns how many were removed.
    pub async fn forget_workers(&self) -> Result<usize, StoreError> {
        let workers = store(&self.jobs).list_workers().await?;
        for worker in &workers {
            tracing::info!(worker = %worker.id, phase = ?worker.phase, "forgetting a worker of the previous process");
            store(&self.jobs).delete_worker(&worker.id).await?;
        }
        Ok(workers.len())
    }

    /// The fleet as it stands.
    pub async fn summary(&self) -> Result<FleetSummary, StoreError> {
        self.view().summary(store(&self.jobs), self.clock()).await
    }

    /// What the API shows of this dispatcher's fleet, without the dispatcher.
    pub fn view(&self) -> FleetView {
        FleetView {
            config: self.config.clone(),
            launcher_kind: self.launcher.kind(),
        }
    }

    /// One scaling decision.
    pub async fn scale(&self) -> Result<ScaleReport, StoreError> {
        self.scale_with(0).await
    }

    /// One scaling decision, counting `awaiting_takeover` lapsed leases as demand.
    async fn scale_with(&self, awaiting_takeover: u64) -> Result<ScaleReport, StoreError> {
        let now = self.clock().now();
        // Past max_workers × jobs_per_worker more queued jobs change nothing.
        let cap =
            u64::from(self.config.max_workers) * u64::from(self.config.jobs_per_worker.max(1));
        // Two independent reads, together: each is a round trip in the wake's duration.
        let (workers, unclaimed_queued) = tokio::try_join!(
            self.live_workers(now),
            store(&self.jobs).count_unclaimed_queued(now, cap),
        )?;
        let busy = workers
            .iter()
            .filter(|w| w.phase == WorkerPhase::Busy)
            .count() as u32;
        // Draining workers take no new work, so they do not cover the queue. Refusing
        // ones take none either, but count: a replacement runs the same image and would
        // refuse too, so launching more only spends GPU hours.
        let live = workers
            .iter()
            .filter(|w| w.phase != WorkerPhase::Draining)
            .count() as u32;
        // A job whose runner died is as much demand as a queued one: without a runner
        // nobody takes it over (and nothing else may be queued to bring one up).
        let demand = unclaimed_queued.saturating_add(awaiting_takeover).min(cap);
        let desired = desired_workers(busy, demand, &self.config);
        let deficit = desired.saturating_sub(live);
        let mut report = ScaleReport {
            desired,
            live,
            busy,
            unclaimed_queued,
            awaiting_takeover,
            ..ScaleReport::default()
        };

        // Take the launch lease (or just record the decision when nothing is to launch).
        let taken = update_fleet(store(&self.jobs), |fleet| {
            let lease_held = fleet.launch_lease_until.is_some_and(|until| until > now);
            if lease_held && deficit > 0 {
                return FleetChange::Abort;
            }
            let mut next = fleet.clone();
            next.v = SCHEMA_VERSION;
            next.desired = desired;
            next.min_warm = self.config.min_warm_workers;
            next.worker_stale_after_s =
                u64::try_from(self.config.worker_stale_after.num_seconds()).ok();
            if deficit > 0 {
                next.launch_lease_until = Some(now + self.config.launch_lease);
            }
            // The same decision as recorded, recorded lately: nothing to write (on AWS
            // every wake, one per submitted job, would rewrite the item otherwise).
            let recent = fleet
                .decided_at
                .is_some_and(|at| now - at < UNCHANGED_DECISION_REWRITE);
            if !(recent && next == *fleet) {
                next.decided_at = Some(now);
            }
            FleetChange::Write(next)
        })
        .await?;
        if taken.is_none() {
            report.stood_aside = true;
            return Ok(report);
        }
        if deficit == 0 {
            return Ok(report);
        }

        let (launched, failure) = match self.launcher.launch(deficit).await {
            Ok(launched) => (launched, None),
            Err((launched, error)) => (launched, Some(error)),
        };
        for worker in &launched {
            store(&self.jobs)
                .put_worker(&WorkerRecord {
                    v: SCHEMA_VERSION,
                    id: worker.id.clone(),
                    phase: WorkerPhase::Starting,
                    heartbeat_at: now,
                    launched_at: now,
                    detail: worker.detail.clone(),
                })
                .await?;
        }
        report.launched = launched.len() as u32;
        let capacity_error = match failure {
            Some(LaunchError::Capacity(reason)) => {
                tracing::warn!(%reason, "no GPU capacity");
                Some(reason)
            }
            Some(LaunchError::Unavailable(reason)) => {
                tracing::error!(%reason, "launcher failed");
                Some(format!("launcher unavailable: {reason}"))
            }
            None => None,
        };
        report.capacity_error = capacity_error.clone();
        // Release the lease and record the outcome. Past the retries the lease simply
        // lapses (`launch_lease`), and the workers launched are recorded already.
        let released = update_fleet(store(&self.jobs), |fleet| {
            let mut next = fleet.clone();
            next.launch_lease_until = None;
            if let Some(reason) = &capacity_error {
                next.capacity_error = Some(reason.clone());
                next.capacity_error_at = Some(now);
            } else if !launched.is_empty() {
                next.capacity_error = None;
                next.capacity_error_at = None;
            }
            FleetChange::Write(next)
        })
        .await;
        match released {
            Ok(_) => {}
            Err(StoreError::Conflict) => {
                tracing::warn!("fleet contended: the launch lease will lapse by itself")
            }
            Err(e) => return Err(e),
        }
        Ok(report)
    }

    /// Records a capacity failure reported from outside a launch (on AWS: the Auto
    /// Scaling group could not start a GPU instance), so health and queued jobs'
    /// progress show it as they show `RunTask` failures. It clears as those do: at the
    /// next successful launch, or after `capacity_error_ttl`.
    pub async fn record_capacity_error(&self, reason: &str) -> Result<(), StoreError> {
        let now = self.clock().now();
        tracing::warn!(%reason, "capacity failure reported");
        update_fleet(store(&self.jobs), |fleet| {
            let mut next = fleet.clone();
            next.capacity_error = Some(reason.to_string());
            next.capacity_error_at = Some(now);
            FleetChange::Write(next)
        })
        .await
        .map(|_| ())
    }

    /// The safety net. Each part is independent: one failing does not stop the others.
    pub async fn tick(&self) -> TickReport {
        let mut report = TickReport::default();
        if let Err(e) = self.tick_queued(&mut report).await {
            tracing::error!(error = %e, "tick: queued jobs");
        }
        if let Err(e) = self.tick_leases(&mut report).await {
            tracing::error!(error = %e, "tick: leases");
        }
        if let Err(e) = self.drain_dead_letters(&mut report).await {
            tracing::error!(error = %e, "tick: dead letters");
        }
        let now = self.clock().now();
        let batch = crate::assets::UPLOAD_SWEEP_BATCH;
        match crate::assets::sweep_expired_uploads(self.jobs.ports(), now, batch).await {
            Ok(n) => report.uploads_swept = n,
            Err(e) => tracing::error!(error = %e, "tick: abandoned uploads"),
        }
        // Bounded: a backlog (the first start after an upgrade, a long stop) is
        // worked off over several ticks rather than in one that delays the rest.
        match crate::retention::sweep(self.jobs.ports(), now, RETENTION_BATCHES_PER_TICK).await {
            Ok(swept) => report.retention = swept,
            Err(e) => tracing::error!(error = %e, "tick: retention"),
        }
        match self.scale_with(u64::from(report.awaiting_takeover)).await {
            Ok(scale) => report.scale = Some(scale),
            Err(e) => tracing::error!(error = %e, "tick: scale"),
        }
        report
    }

    async fn tick_queued(&self, report: &mut TickReport) -> Result<(), MoveError> {
        let now = self.clock().now();
        for job in store(&self.jobs)
            .jobs_in_status(JobStatus::Queued, 1000)
            .await?
        {
            if job.queue_deadline <= now {
                let clock = self.clock();
                match apply_move(store(&self.jobs), clock, job, &Move::Expire).await {
                    Ok(j) if j.status == JobStatus::Expired => report.expired += 1,
                    Ok(_) | Err(MoveError::Refused(_)) => {}
                    Err(e) => return Err(e),
                }
            } else if !job.enqueued && now - job.created_at > self.config.enqueue_grace {
                tracing::warn!(job_id = %job.id, "job recorded but never enqueued; enqueuing");
                if self.jobs.enqueue(job).await.is_ok() {
                    report.reenqueued += 1;
                }
            }
        }
        Ok(())
    }

    async fn tick_leases(&self, report: &mut TickReport) -> Result<(), MoveError> {
        let now = self.clock().now();
        let max_attempts = self.jobs.config().max_attempts;
        for status in [JobStatus::Running, JobStatus::Canceling] {
            for job in store(&self.jobs).jobs_in_status(status, 1000).await? {
                if job.has_live_lease(now) {
                    continue;
                }
                let lapsed_since = job.lease_until.unwrap_or(now);
                let id = job.id.clone();
                let mv = Move::ReapExpiredLease { max_attempts };
                match apply_move(store(&self.jobs), self.clock(), job, &mv).await {
                    Ok(j) if j.status.is_terminal() => report.reaped += 1,
                    Ok(_) => {
                        report.awaiting_takeover += 1;
                        // Waiting for a takeover. The message reappears when its
                        // visibility lapses; if it has been long, offer a fresh copy in
                        // case it was lost (a duplicate is harmless).
                        if now - lapsed_since > Duration::minutes(2) {
                            self.send_work(&id).await;
                        }
                    }
                    Err(MoveError::Refused(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn send_work(&self, id: &crate::model::JobId) {
        let body = WorkMessage::for_job(id).body();
        if let Err(e) = self.queue().send(QueueName::Work, &body).await {
            tracing::error!(job_id = %id, error = %e, "could not re-offer job");
        }
    }

    async fn drain_dead_letters(&self, report: &mut TickReport) -> Result<(), MoveError> {
        let queue = self.queue();
        let visibility = std::time::Duration::from_secs(60);
        // Wake nudges carry nothing worth keeping.
        for message in queue
            .receive(
                QueueName::WakeDeadLetter,
                10,
                std::time::Duration::ZERO,
                visibility,
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?
        {
            let _ = queue
                .delete(QueueName::WakeDeadLetter, &message.receipt)
                .await;
        }
        loop {
            let batch = queue
                .receive(
                    QueueName::WorkDeadLetter,
                    10,
                    std::time::Duration::ZERO,
                    visibility,
                )
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if batch.is_empty() {
                return Ok(());
            }
            for message in batch {
                let Ok(work) = serde_json::from_str::<WorkMessage>(&message.body) else {
                    tracing::error!(message_id = %message.message_id, "unreadable dead letter dropped");
                    let _ = queue
                        .delete(QueueName::WorkDeadLetter, &message.receipt)
                        .await;
                    continue;
                };
                if let Some(job) = store(&self.jobs).get_job(&work.job_id).await? {
                    match apply_move(store(&self.jobs), self.clock(), job, &Move::DeadLetter).await
                    {
                        Ok(j) if j.status == JobStatus::Failed => report.dead_lettered += 1,
                        Ok(_) => {}
                        Err(MoveError::Refused(Refusal::LeaseHeld { .. })) => {
                            // Someone is working on it: keep the message alive.
                            self.send_work(&work.job_id).await;
                        }
                        Err(MoveError::Refused(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                let _ = queue
                    .delete(QueueName::WorkDeadLetter, &message.receipt)
                    .await;
            }
        }
    }
}

fn current_capacity_error(
    fleet: &Fleet,
    now: DateTime<Utc>,
    config: &DispatchConfig,
) -> Option<String> {
    match (&fleet.capacity_error, fleet.capacity_error_at) {
        (Some(reason), Some(at)) if now - at < config.capacity_error_ttl => Some(reason.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_follows_the_rule() {
        let c = DispatchConfig {
            max_workers: 4,
            min_warm_workers: 0,
            jobs_per_worker: 2,
            ..DispatchConfig::default()
        };
        assert_eq!(desired_workers(0, 0, &c), 0);
        assert_eq!(desired_workers(0, 1, &c), 1);
        assert_eq!(desired_workers(0, 2, &c), 1);
        assert_eq!(desired_workers(0, 3, &c), 2);
        assert_eq!(desired_workers(1, 3, &c), 3);
        assert_eq!(desired_workers(2, 100, &c), 4, "capped at max");
        let warm = DispatchConfig {
            min_warm_workers: 1,
            ..c
        };
        assert_eq!(desired_workers(0, 0, &warm), 1);
    }

    fn worker(id: &str, phase: WorkerPhase, heartbeat_at: DateTime<Utc>) -> WorkerRecord {
        WorkerRecord {
            v: SCHEMA_VERSION,
            id: id.into(),
            phase,
            heartbeat_at,
            launched_at: heartbeat_at,
            detail: String::new(),
        }
    }

    #[test]
    fn exactly_the_desired_idle_runners_are_kept_warm() {
        let now = Utc::now();
        // A queue decision's `desired` keeps nobody: only the warm floor does.
        let fleet = |min_warm| Fleet {
            desired: 9,
            min_warm,
            ..Fleet::default()
        };
        let idle_pair = [
            worker("b", WorkerPhase::Idle, now),
            worker("a", WorkerPhase::Idle, now),
        ];
        let kept = |desired, workers: &[WorkerRecord]| -> Vec<&'static str> {
            ["a", "b", "c"]
                .into_iter()
                .filter(|id| keeps_warm(id, &fleet(desired), workers, now))
                .collect()
        };
        assert_eq!(
            kept(0, &idle_pair),
            Vec::<&str>::new(),
            "no warm floor: all leave"
        );
        assert_eq!(
            kept(1, &idle_pair),
            ["a"],
            "one place, the first id keeps it"
        );
        assert_eq!(kept(2, &idle_pair), ["a", "b"]);
        assert_eq!(
            kept(5, &idle_pair),
            ["a", "b"],
            "never one that is not there"
        );
        // A busy runner fills a place: the floor counts every live runner.
        let with_busy = [
            worker("a", WorkerPhase::Idle, now),
            worker("b", WorkerPhase::Idle, now),
            worker("c", WorkerPhase::Busy, now),
        ];
        assert_eq!(kept(1, &with_busy), Vec::<&str>::new());
        assert_eq!(kept(2, &with_busy), ["a"]);
        // A dead record takes no place, so the live runner behind it is kept.
        let with_dead = [
            worker("a", WorkerPhase::Idle, now - Duration::minutes(5)),
            worker("b", WorkerPhase::Idle, now),
        ];
        assert_eq!(kept(1, &with_dead), ["b"]);
        // Live as the dispatcher judged it: its recorded `worker_stale_after`, not a
        // default of the runner's.
        let quiet = [
            worker("a", WorkerPhase::Idle, now - Duration::minutes(5)),
            worker("b", WorkerPhase::Idle, now),
        ];
        let patient = Fleet {
            min_warm: 1,
            worker_stale_after_s: Some(600),
            ..Fleet::default()
        };
        assert!(keeps_warm("a", &patient, &quiet, now));
        assert!(!keeps_warm("b", &patient, &quiet, now));
    }
}
