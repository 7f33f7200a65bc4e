//! The runner on AWS (feature `aws`, binary `gpu-runner-aws`): the same loop over the
//! DynamoDB, S3 and SQS adapters of `crates/aws`, configured from the environment the
//! ECS task definition sets.
//!
//! **Start-up, in order.** Read every variable and fail fast naming each one missing
//! or malformed (exit 2). Take the worker id from the ECS task metadata endpoint (v4):
//! the task id, which is also the id the dispatcher's launcher registered, so the
//! runner's records replace the launcher's `starting` one. Build the SDK clients once.
//! Sync the models manifest into the instance's cache ([`crate::models`]). Then run the
//! loop, which starts ComfyUI, checks the custom nodes' classes ([`crate::nodes`]),
//! runs the warm-up workflow, registers, and only then takes jobs. A manifest that
//! does not parse, or a model that does not sync, makes the runner refuse jobs with
//! the reason in its registry record (health shows it) instead of running jobs that
//! would fail on a missing file.
//!
//! **Exit.** SIGTERM (ECS stops the task: a scale-in, a Spot notice through
//! `dispatch`) drains: the running job gets [`VARIABLES`]' shutdown grace to finish,
//! then is handed back uncharged; the worker deregisters. The grace must stay below
//! the task definition's `stopTimeout` (the template keeps 90 s under 120 s).
//!
//! | variable | default | what |
//! |---|---|---|
//! | `SERVERLESS_COMFYUI_TABLE`, `_BUCKET`, `_WORK_QUEUE_URL`, `_WAKE_QUEUE_URL`, `_WORK_DLQ_URL`, `_WAKE_DLQ_URL` | required | the resources (`aws::DataConfig`) |
//! | `SERVERLESS_COMFYUI_COMFYUI_CMD` | required unless `_COMFYUI_URL` | ComfyUI's command line (`{port}`, `{input_dir}`, `{output_dir}`, `{temp_dir}` are filled in) |
//! | `SERVERLESS_COMFYUI_COMFYUI_URL` | — | attach to a running ComfyUI instead |
//! | `SERVERLESS_COMFYUI_COMFYUI_WORKDIR` | — | the folders the runner owns and empties job by job |
//! | `SERVERLESS_COMFYUI_LEASE_SECONDS` | 30 | the lease; must equal the work queue's visibility timeout |
//! | `SERVERLESS_COMFYUI_JOB_TIMEOUT_SECONDS` | 1800 | a job running longer fails with `timeout` |
//! | `SERVERLESS_COMFYUI_MAX_ATTEMPTS` | 3 | charged attempts before `attempts_exhausted` |
//! | `SERVERLESS_COMFYUI_IDLE_TIMEOUT_SECONDS` | 300 | exit after this long without work (0: never) |
//! | `SERVERLESS_COMFYUI_SHUTDOWN_GRACE_SECONDS` | 25 | after SIGTERM, the running job's time to finish before hand-back |
//! | `SERVERLESS_COMFYUI_READY_TIMEOUT_SECONDS` | 300 | ComfyUI's start deadline |
//! | `SERVERLESS_COMFYUI_WARMUP_WORKFLOW` | — | an API-format workflow (a file in the image) run before the first job |
//! | `SERVERLESS_COMFYUI_CUSTOM_NODES` | — | `custom-nodes.toml`: the classes checked in `/object_info` at boot |
//! | `SERVERLESS_COMFYUI_MODEL_CACHE` | — | the instance's model cache directory (needed by the next) |
//! | `SERVERLESS_COMFYUI_MODELS_MANIFEST` | — | the S3 key of `models.yaml` in the bucket (e.g. `models/models.yaml`); absent object: no models |
//! | `SERVERLESS_COMFYUI_WORKER_ID` | the ECS task id | override the worker id |
//! | `SERVERLESS_COMFYUI_METRICS_STACK` | — | each finished job's metrics as an EMF line on stdout (`aws::emf`), dimension `Stack` = this |
//! | `ECS_CONTAINER_METADATA_URI_V4` | set by ECS | the task metadata endpoint; absent: a generated id and a warning |
//! | `SERVERLESS_COMFYUI_TEST_CHAOS_QUEUE_SEED` | — | **tests only** (the chaos suite on moto): the work queue misbehaves on purpose ([`crate::cli::with_chaos_queue`]); never set it in a deployment |

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jobs::ports::{ByteStream, Clock, StoreError, SystemClock};

use crate::cli::{RunnerSettings, run_until_stopped};
use crate::config::{RunnerConfig, new_worker_id};
use crate::engine::EngineSpec;
use crate::error::RunnerError;
use crate::models::{self, ModelSource, RemoteObject, SyncOptions};

/// The variables this module reads besides `aws::DataConfig`'s.
pub const VARIABLES: &[&str] = &[
    COMFYUI_CMD,
    COMFYUI_URL,
    COMFYUI_WORKDIR,
    LEASE,
    JOB_TIMEOUT,
    MAX_ATTEMPTS,
    IDLE_TIMEOUT,
    SHUTDOWN_GRACE,
    READY_TIMEOUT,
    WARMUP,
    CUSTOM_NODES,
    MODEL_CACHE,
    MODELS_MANIFEST,
    WORKER_ID,
    aws::emf::STACK_VAR,
    TEST_CHAOS_QUEUE_SEED,
];

const COMFYUI_CMD: &str = "SERVERLESS_COMFYUI_COMFYUI_CMD";
const COMFYUI_URL: &str = "SERVERLESS_COMFYUI_COMFYUI_URL";
const COMFYUI_WORKDIR: &str = "SERVERLESS_COMFYUI_COMFYUI_WORKDIR";
const LEASE: &str = "SERVERLESS_COMFYUI_LEASE_SECONDS";
const JOB_TIMEOUT: &str = "SERVERLESS_COMFYUI_JOB_TIMEOUT_SECONDS";
const MAX_ATTEMPTS: &str = "SERVERLESS_COMFYUI_MAX_ATTEMPTS";
const IDLE_TIMEOUT: &str = "SERVERLESS_COMFYUI_IDLE_TIMEOUT_SECONDS";
const SHUTDOWN_GRACE: &str = "SERVERLESS_COMFYUI_SHUTDOWN_GRACE_SECONDS";
const READY_TIMEOUT: &str = "SERVERLESS_COMFYUI_READY_TIMEOUT_SECONDS";
const WARMUP: &str = "SERVERLESS_COMFYUI_WARMUP_WORKFLOW";
const CUSTOM_NODES: &str = "SERVERLESS_COMFYUI_CUSTOM_NODES";
const MODEL_CACHE: &str = "SERVERLESS_COMFYUI_MODEL_CACHE";
const MODELS_MANIFEST: &str = "SERVERLESS_COMFYUI_MODELS_MANIFEST";
const WORKER_ID: &str = "SERVERLESS_COMFYUI_WORKER_ID";
/// On AWS, at most one progress write every 2 s (locally 0.5 s): each is a billed
/// DynamoDB write, and clients see no finer grain there (comfy-sdk polls every 0.5 s
/// growing to 5 s; an event stream is answered buffered). The moto end to end measured
/// it (docs/costs.md).
pub const PROGRESS_INTERVAL_SECONDS: f64 = 2.0;
/// On AWS the runner's receive long-polls 20 s, SQS's longest (locally 1 s): each is a
/// billed SQS request, and a message that arrives is answered at once either way. The
/// receive runs in its own task (see `runner`), so the loop notices a job's end or
/// SIGTERM at once; the price is that a shutdown waits up to 20 s for the poll in flight,
/// to make what it brings visible again (beside the running job's drain, inside the
/// task's 120 s stop timeout). The measurement is in docs/costs.md.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(20);

/// Tests only: a seed for the fault-injecting work queue (the local binary's hidden
/// `--chaos-queue-seed`). The template never sets it.
pub const TEST_CHAOS_QUEUE_SEED: &str = "SERVERLESS_COMFYUI_TEST_CHAOS_QUEUE_SEED";
/// Set by the ECS agent in every container (task metadata endpoint v4).
pub const METADATA_URI: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The metadata endpoint is local to the instance: it answers at once or not at all.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline for reading the models manifest.
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment is incomplete or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.missing, .invalid))]
pub struct EnvError {
    /// Every required variable that is unset or empty.
    pub missing: Vec<String>,
    /// `NAME: why` for every variable set to something unusable.
    pub invalid: Vec<String>,
}

fn describe(missing: &[String], invalid: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "missing environment variables: {}",
            missing.join(", ")
        ));
    }
    if !invalid.is_empty() {
        parts.push(format!(
            "invalid environment variables: {}",
            invalid.join("; ")
        ));
    }
    parts.join("; ")
}

/// Where models come from and go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelsSettings {
    pub cache: PathBuf,
    /// The manifest's key in the bucket.
    pub manifest_key: String,
}

/// Everything the AWS entry reads from the environment.
#[derive(Debug, Clone)]
pub struct AwsRunnerEnv {
    pub data: aws::DataConfig,
    pub settings: RunnerSettings,
    pub models: Option<ModelsSettings>,
    /// Tests only ([`TEST_CHAOS_QUEUE_SEED`]): wrap the queue in the fault injector.
    pub chaos_queue_seed: Option<u64>,
}

impl AwsRunnerEnv {
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup`; the error names every problem at once.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut missing: Vec<String> = Vec::new();
        let mut invalid: Vec<String> = Vec::new();
        let data = match aws::DataConfig::from_lookup(&lookup) {
            Ok(data) => Some(data),
            Err(aws::ConfigError::Missing(names)) => {
                missing.extend(names.into_iter().map(String::from));
                None
            }
        };
        let defaults = RunnerSettings::default();
        let mut seconds = |name: &str, default: f64| match get(name) {
            None => default,
            Some(raw) => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => v,
                _ => {
                    invalid.push(format!("{name}: {raw:?} is not a number of seconds"));
                    default
                }
            },
        };
        let lease_seconds = seconds(LEASE, defaults.lease_seconds);
        let job_timeout = seconds(JOB_TIMEOUT, defaults.job_timeout);
        let idle_timeout = seconds(IDLE_TIMEOUT, defaults.idle_timeout);
        let shutdown_grace = seconds(SHUTDOWN_GRACE, defaults.shutdown_grace);
        let ready_timeout = seconds(READY_TIMEOUT, defaults.ready_timeout);
        let max_attempts = match get(MAX_ATTEMPTS) {
            None => defaults.max_attempts,
            Some(raw) => match raw.parse::<u32>() {
                Ok(v) if v >= 1 => v,
                _ => {
                    invalid.push(format!(
                        "{MAX_ATTEMPTS}: {raw:?} is not a whole number >= 1"
                    ));
                    defaults.max_attempts
                }
            },
        };
        let chaos_queue_seed = get(TEST_CHAOS_QUEUE_SEED).and_then(|raw| match raw.parse() {
            Ok(seed) => Some(seed),
            Err(_) => {
                invalid.push(format!(
                    "{TEST_CHAOS_QUEUE_SEED}: {raw:?} is not a whole number"
                ));
                None
            }
        });
        let comfyui_cmd = get(COMFYUI_CMD);
        let comfyui_url = get(COMFYUI_URL);
        if comfyui_cmd.is_none() && comfyui_url.is_none() {
            missing.push(format!("{COMFYUI_CMD} (or {COMFYUI_URL})"));
        }
        let cache = get(MODEL_CACHE).map(PathBuf::from);
        let manifest_key = get(MODELS_MANIFEST);
        let models = match (cache, manifest_key) {
            (Some(cache), Some(manifest_key)) => Some(ModelsSettings {
                cache,
                manifest_key,
            }),
            (None, Some(_)) => {
                missing.push(format!("{MODEL_CACHE} (needed by {MODELS_MANIFEST})"));
                None
            }
            _ => None,
        };
        if !missing.is_empty() || !invalid.is_empty() {
            return Err(EnvError { missing, invalid });
        }
        let settings = RunnerSettings {
            comfyui_url,
            comfyui_cmd,
            comfyui_workdir: get(COMFYUI_WORKDIR).map(PathBuf::from),
            worker_id: get(WORKER_ID),
            idle_timeout,
            lease_seconds,
            job_timeout,
            max_attempts,
            warmup_workflow: get(WARMUP).map(PathBuf::from),
            shutdown_grace,
            ready_timeout,
            no_pipelining: false,
            custom_nodes: get(CUSTOM_NODES).map(PathBuf::from),
            progress_interval: PROGRESS_INTERVAL_SECONDS,
        };
        Ok(AwsRunnerEnv {
            data: data.expect("no variable is missing"),
            settings,
            models,
            chaos_queue_seed,
        })
    }
}

/// The task id from the task metadata endpoint v4 (`{uri}/task`, its `TaskARN`).
pub async fn ecs_task_id(metadata_uri: &str, timeout: Duration) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/task", metadata_uri.trim_end_matches('/'));
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("GET {url}: {e}"))?;
    let doc: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let arn = doc
        .get("TaskARN")
        .and_then(|v| v.as_str())
        .filter(|arn| arn.contains(":task/"))
        .ok_or_else(|| format!("GET {url}: no TaskARN in the answer"))?;
    let id = aws::ecs::task_id(arn);
    if id.is_empty() {
        return Err(format!("GET {url}: TaskARN {arn:?} names no task id"));
    }
    Ok(id.to_string())
}

/// The worker id: the ECS task id when the metadata endpoint is set, otherwise (or if
/// it does not answer in time) a generated one, with a warning: the launcher's record
/// of this task then goes stale instead of being taken over.
pub async fn worker_id_from(metadata_uri: Option<&str>, timeout: Duration) -> String {
    match metadata_uri.filter(|u| !u.trim().is_empty()) {
        None => {
            let id = new_worker_id();
            tracing::warn!(variable = METADATA_URI, worker_id = %id, "not running on ECS (no task metadata endpoint); using a generated worker id");
            id
        }
        Some(uri) => match ecs_task_id(uri, timeout).await {
            Ok(id) => id,
            Err(e) => {
                let id = new_worker_id();
                tracing::warn!(error = %e, worker_id = %id, "the task metadata endpoint did not give a task id; using a generated worker id");
                id
            }
        },
    }
}

/// The S3 side of the model sync: `aws::S3Models` behind [`ModelSource`].
pub struct S3ModelSource(pub aws::S3Models);

#[async_trait]
impl ModelSource for S3ModelSource {
    fn describe(&self) -> String {
        format!("s3://{}", self.0.bucket())
    }

    async fn stat(&self, key: &str) -> Result<Option<RemoteObject>, StoreError> {
        Ok(self.0.stat(key).await?.map(|o| RemoteObject {
            size: o.size,
            etag: o.etag,
        }))
    }

    async fn read_range(
        &self,
        key: &str,
        first: u64,
        last: u64,
        etag: &str,
    ) -> Result<ByteStream, StoreError> {
        self.0.read_range(key, first, last, etag).await
    }

    async fn read_small(&self, key: &str, max_bytes: u64) -> Result<Option<Bytes>, StoreError> {
        self.0.read_small(key, max_bytes).await
    }
}

/// Reads the manifest and syncs it; `Err` is the reason to refuse jobs.
pub async fn sync_models(
    source: Arc<dyn ModelSource>,
    settings: &ModelsSettings,
    options: &SyncOptions,
) -> Result<models::SyncReport, String> {
    let manifest = match models::fetch_manifest(
        source.as_ref(),
        &settings.manifest_key,
        MANIFEST_TIMEOUT,
    )
    .await
    {
        Ok(Some(m)) => m,
        Ok(None) => {
            tracing::warn!(key = %settings.manifest_key, source = %source.describe(), "no models manifest; no models synced");
            return Ok(models::SyncReport::default());
        }
        Err(e) => return Err(e.to_string()),
    };
    let report = models::sync(source, &manifest, &settings.cache, options).await;
    if report.failed.is_empty() {
        Ok(report)
    } else {
        let shown: Vec<&str> = report.failed.iter().take(3).map(String::as_str).collect();
        Err(format!(
            "{} of {} models did not sync: {}",
            report.failed.len(),
            report.files,
            shown.join("; ")
        ))
    }
}

/// The ports on DynamoDB, S3 and SQS, over clients built once.
pub fn ports(data: &aws::DataConfig, clients: &aws::Clients) -> jobs::service::Ports {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    jobs::service::Ports {
        store: Arc::new(aws::DynamoJobStore::new(
            clients.dynamodb.clone(),
            &data.table,
            clock.clone(),
        )),
        // Small workflows come from the table (`aws::inline`); outputs go to S3.
        blobs: Arc::new(aws::InlineInputs::reading(
            Arc::new(aws::S3BlobStore::new(clients.s3.clone(), &data.bucket)),
            clients.dynamodb.clone(),
            &data.table,
        )),
        queue: Arc::new(aws::SqsQueue::new(clients.sqs.clone(), data.queues.clone())),
        clock,
    }
}

/// Everything between the environment and the loop: the runner config (worker id
/// from `metadata_uri`, models synced or a reason to refuse), ComfyUI, the ports.
pub async fn prepare(
    env: &AwsRunnerEnv,
    clients: &aws::Clients,
    metadata_uri: Option<&str>,
) -> Result<(RunnerConfig, EngineSpec, jobs::service::Ports), RunnerError> {
    let (mut config, engine) = env.settings.to_config()?;
    config.poll_wait = RECEIVE_WAIT;
    if let Some(emf) = aws::emf::Emf::from_env() {
        config.observer = Some(Arc::new(MetricsObserver(emf)));
    }
    if env.settings.worker_id.is_none() {
        config.worker_id = worker_id_from(metadata_uri, METADATA_TIMEOUT).await;
    }
    if let Some(models) = &env.models {
        let source = Arc::new(S3ModelSource(aws::S3Models::new(
            clients.s3.clone(),
            &env.data.bucket,
        )));
        if let Err(reason) = sync_models(source, models, &SyncOptions::default()).await {
            tracing::error!(%reason, "refusing jobs: the models did not sync");
            config.refuse_jobs = Some(reason);
        }
    }
    let ports = crate::cli::with_chaos_queue(ports(&env.data, clients), env.chaos_queue_seed);
    Ok((config, engine, ports))
}

/// Publishes each finished job's metrics as an EMF log line (`aws::emf`).
struct MetricsObserver(aws::emf::Emf);

impl crate::config::RunnerObserver for MetricsObserver {
    fn job_done(&self, timing: &crate::config::JobTiming) {
        self.0.publish(&job_metrics(timing));
    }
}

/// What a finished job publishes: its end by status, the queue wait and execution the
/// API shows, and the time it held the GPU (ComfyUI's own execution timestamps, else
/// the runner's view of them). Nothing for a job this runner did not commit.
fn job_metrics(t: &crate::config::JobTiming) -> Vec<(aws::emf::Name, f64)> {
    use aws::emf::Name;
    use jobs::model::JobStatus;
    let ended = match t.status {
        Some(JobStatus::Succeeded) => Name::JobsSucceeded,
        Some(JobStatus::Failed) => Name::JobsFailed,
        Some(JobStatus::Canceled) => Name::JobsCanceled,
        _ => return Vec::new(),
    };
    let mut out = vec![(ended, 1.0)];
    let seconds = |ms: i64| ms.max(0) as f64 / 1000.0;
    if let Some(ms) = t.queue_ms {
        out.push((Name::QueueWaitSeconds, seconds(ms)));
    }
    if let Some(ms) = t.execution_ms {
        out.push((Name::ExecutionSeconds, seconds(ms)));
    }
    let gpu = match (t.comfy_exec_ms, t.exec_start, t.exec_end) {
        (Some((start, end)), _, _) => Some(seconds(end - start)),
        (None, Some(start), Some(end)) => Some(end.duration_since(start).as_secs_f64()),
        _ => None,
    };
    if let Some(gpu) = gpu {
        out.push((Name::GpuSeconds, gpu));
    }
    out
}

/// `gpu-runner-aws`: the whole start-up (see the module docs). Exit codes: 0 after an
/// idle exit or a shutdown, 1 when ComfyUI could not start, 2 on a bad environment.
pub async fn run_from_env() -> ExitCode {
    let env = match AwsRunnerEnv::from_env() {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("gpu-runner-aws: {e}");
            return ExitCode::from(2);
        }
    };
    let clients = aws::Clients::load().await;
    let metadata_uri = std::env::var(METADATA_URI).ok();
    match prepare(&env, &clients, metadata_uri.as_deref()).await {
        Ok((config, engine, ports)) => run_until_stopped(config, ports, engine).await,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("gpu-runner-aws: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
#[path = "aws_env_tests.rs"]
mod tests;
