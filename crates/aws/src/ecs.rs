//! The `Launcher` port on ECS: one `RunTask` per batch of up to 10 runners, one
//! `StopTask` per runner to stop.
//!
//! **Runners are generic.** Every task is the same task definition with no per-job
//! overrides: a runner takes whatever job the work queue hands it. Placement goes
//! through a `capacityProviderStrategy` (the GPU Auto Scaling group's capacity
//! provider), never a `launchType`: ECS refuses the two together, and the capacity
//! provider is what scales the instances (`PROVISIONING` tasks wait for them).
//!
//! **Each call is idempotent**: a `clientToken` fresh per batch, so the SDK's retries
//! of one `RunTask` never start a second batch. Tasks carry `startedBy` (find them with
//! `ListTasks --started-by`) and the configured tags.
//!
//! **Failures are never swallowed.** `RunTask` can answer 200 with a `failures` list
//! (`RESOURCE:GPU`, `AGENT`, capacity reasons): the launcher returns the workers that
//! did start and a [`LaunchError::Capacity`] carrying ECS's reason text, which the
//! dispatcher records in the `FLEET` item and shows in health and in queued jobs'
//! progress. SDK failures (throttling, permissions, a missing cluster) are
//! [`LaunchError::Unavailable`].
//!
//! A worker's id is its task id, the ARN's last segment ([`task_id`]): what the runner
//! reads from the task metadata endpoint (v4) to register itself under the same id,
//! and what `StopTask` takes along with the cluster.

use async_trait::async_trait;
use aws_sdk_ecs::Client;
use aws_sdk_ecs::types::{CapacityProviderStrategyItem, Failure, Tag};
use jobs::ports::{LaunchError, LaunchedWorker, Launcher};
use tracing::Instrument;

use crate::error::describe;

/// The task id in a task ARN (`arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID`, or the
/// older `.../task/ID`): its last segment. The worker id of a runner on ECS.
pub fn task_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

/// ECS's largest `count` per `RunTask`.
pub const MAX_TASKS_PER_CALL: u32 = 10;

/// What every `RunTask` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcsSettings {
    pub cluster: String,
    /// Family (`runner`), `family:revision` or a full ARN.
    pub task_definition: String,
    pub capacity_provider: String,
    /// At most 36 characters (ECS's limit).
    pub started_by: String,
    pub tags: Vec<(String, String)>,
}

/// ECS behind the `Launcher` port.
#[derive(Debug, Clone)]
pub struct EcsLauncher {
    client: Client,
    settings: EcsSettings,
}

/// Why a batch stopped: ECS's failures, or fewer tasks than asked with no reason given.
fn capacity_error(failures: &[Failure], asked: u32, started: usize) -> Option<LaunchError> {
    if failures.is_empty() {
        return (started < asked as usize).then(|| {
            LaunchError::Capacity(format!(
                "RunTask started {started} of {asked} tasks and gave no reason"
            ))
        });
    }
    let reasons: Vec<String> = failures
        .iter()
        .map(|f| {
            let mut text = f.reason().unwrap_or("unknown reason").to_string();
            if let Some(detail) = f.detail().filter(|d| !d.is_empty()) {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(arn) = f.arn().filter(|a| !a.is_empty()) {
                text.push_str(&format!(" for {arn}"));
            }
            text
        })
        .collect();
    Some(LaunchError::Capacity(format!(
        "RunTask failed: {}",
        reasons.join("; ")
    )))
}

impl EcsLauncher {
    pub fn new(client: Client, settings: EcsSettings) -> Self {
        EcsLauncher { client, settings }
    }

    /// One `RunTask` of `count` (≤ 10) tasks.
    async fn run_batch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        let s = &self.settings;
        let strategy = CapacityProviderStrategyItem::builder()
            .capacity_provider(&s.capacity_provider)
            .weight(1)
            .build()
            .map_err(|e| {
                (
                    vec![],
                    LaunchError::Unavailable(format!("RunTask strategy: {e}")),
                )
            })?;
        let tags = s
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Vec<_>>();
        let out = self
            .client
            .run_task()
            .cluster(&s.cluster)
            .task_definition(&s.task_definition)
            .count(count as i32)
            .capacity_provider_strategy(strategy)
            .started_by(&s.started_by)
            .set_tags((!tags.is_empty()).then_some(tags))
            .client_token(ulid::Ulid::new().to_string())
            .send()
            .await
            .map_err(|e| {
                (
                    vec![],
                    LaunchError::Unavailable(describe("RunTask", &s.cluster, &e)),
                )
            })?;
        let workers: Vec<LaunchedWorker> = out
            .tasks()
            .iter()
            .filter_map(|t| t.task_arn())
            .map(|arn| LaunchedWorker {
                id: task_id(arn).to_string(),
                detail: format!("ECS task {arn} in cluster {}", s.cluster),
            })
            .collect();
        match capacity_error(out.failures(), count, workers.len()) {
            None => Ok(workers),
            Some(error) => Err((workers, error)),
        }
    }
}

/// ECS's page size for `ListTasks` is 100; a GPU instance runs a handful of tasks, so
/// this many pages is far more than one instance can hold.
const MAX_LIST_PAGES: usize = 10;

/// Whether `id` looks like an EC2 instance id (`i-` and 8 or 17 hex digits). Checked
/// before it goes into a `ListContainerInstances` filter expression.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

impl EcsLauncher {
    /// Stops every runner task on one EC2 instance, for a Spot interruption warning
    /// or a rebalance recommendation: ECS drains only *service* tasks, and a task
    /// started by `RunTask` keeps running until the instance dies. `StopTask` sends
    /// the runner SIGTERM, on which it hands its job back. Finds the instance's
    /// container instance (`ListContainerInstances` with an `ec2InstanceId` filter),
    /// its tasks started by us (`ListTasks`), and stops each; one failed stop does
    /// not keep the others from being sent. Returns the task ARNs stopped.
    pub async fn stop_tasks_on_instance(
        &self,
        ec2_instance_id: &str,
        reason: &str,
    ) -> Result<Vec<String>, LaunchError> {
        let s = &self.settings;
        if !is_instance_id(ec2_instance_id) {
            return Err(LaunchError::Unavailable(format!(
                "{ec2_instance_id:?} is not an EC2 instance id"
            )));
        }
        let span = tracing::info_span!("ecs.stop_instance_tasks", cluster = %s.cluster, instance = ec2_instance_id);
        async {
            let instances = self
                .client
                .list_container_instances()
                .cluster(&s.cluster)
                .filter(format!("ec2InstanceId == {ec2_instance_id}"))
                .send()
                .await
                .map_err(|e| {
                    LaunchError::Unavailable(describe("ListContainerInstances", &s.cluster, &e))
                })?;
            let mut tasks = Vec::new();
            for container_instance in instances.container_instance_arns() {
                let mut token = None;
                for _ in 0..MAX_LIST_PAGES {
                    let page = self
                        .client
                        .list_tasks()
                        .cluster(&s.cluster)
                        .container_instance(container_instance)
                        .started_by(&s.started_by)
                        .set_next_token(token.take())
                        .send()
                        .await
                        .map_err(|e| {
                            LaunchError::Unavailable(describe("ListTasks", &s.cluster, &e))
                        })?;
                    tasks.extend(page.task_arns().iter().cloned());
                    match page.next_token() {
                        Some(next) if !next.is_empty() => token = Some(next.to_string()),
                        _ => break,
                    }
                }
            }
            let mut stopped = Vec::new();
            let mut failed = Vec::new();
            for task in tasks {
                let sent = self
                    .client
                    .stop_task()
                    .cluster(&s.cluster)
                    .task(&task)
                    .reason(reason)
                    .send()
                    .await;
                match sent {
                    Ok(_) => stopped.push(task),
                    Err(e) => failed.push(describe("StopTask", &s.cluster, &e)),
                }
            }
            tracing::info!(
                stopped = stopped.len(),
                failed = failed.len(),
                "stopped the instance's runners"
            );
            if failed.is_empty() {
                Ok(stopped)
            } else {
                Err(LaunchError::Unavailable(failed.join("; ")))
            }
        }
        .instrument(span)
        .await
    }
}

#[async_trait]
impl Launcher for EcsLauncher {
    async fn launch(
        &self,
        count: u32,
    ) -> Result<Vec<LaunchedWorker>, (Vec<LaunchedWorker>, LaunchError)> {
        let span = tracing::info_span!("ecs.launch", cluster = %self.settings.cluster, count);
        async {
            let mut launched = Vec::new();
            let mut remaining = count;
            while remaining > 0 {
                let batch = remaining.min(MAX_TASKS_PER_CALL);
                match self.run_batch(batch).await {
                    Ok(workers) => launched.extend(workers),
                    Err((workers, error)) => {
                        launched.extend(workers);
                        tracing::warn!(started = launched.len(), "launch stopped: {error}");
                        return Err((launched, error));
                    }
                }
                remaining -= batch;
            }
            Ok(launched)
        }
        .instrument(span)
        .await
    }

    async fn stop(&self, worker_id: &str) -> Result<(), LaunchError> {
        let cluster = &self.settings.cluster;
        let span = tracing::info_span!("ecs.stop", cluster = %cluster, task = worker_id);
        self.client
            .stop_task()
            .cluster(cluster)
            .task(worker_id)
            .reason("stopped by the serverless-comfyui dispatcher")
            .send()
            .instrument(span)
            .await
            .map_err(|e| LaunchError::Unavailable(describe("StopTask", cluster, &e)))?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "ecs"
    }
}
