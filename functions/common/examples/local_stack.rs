//! `local_stack`: the deployed product on one machine, over moto, for the end-to-end
//! suite (tests/sdk/test_aws.py) and the cost count (tests/sdk/cost_per_job.py). Not
//! shipped: an example of `functions-common`, built with
//! `cargo build -p functions-common --example local_stack`.
//!
//! It plays the parts of AWS that moto does not, each as thinly as it can:
//!
//! | AWS part | here |
//! |---|---|
//! | API Gateway HTTP API (`$default` stage) | one port on 127.0.0.1: `POST`, `DELETE /api/*` go to [`submit_router`], `GET`, `HEAD /api/*` to [`status_router`] (the template's routes); anything else 404 `{"message":"Not Found"}` as API Gateway answers |
//! | Lambda's SQS event source on the wake queue | long-polls the wake queue (20 s, up to 10), hands the batch to the dispatch handler as an SQS event, deletes the messages not named in `batchItemFailures` |
//! | the EventBridge tick | a `Scheduled Event` to the dispatch handler every `LOCAL_STACK_TICK_SECONDS` (default 5; AWS: a minute) |
//! | the ECS agent | moto's `RunTask` only records tasks: each task still `RUNNING` in moto gets one `gpu-runner-aws` process, whose `ECS_CONTAINER_METADATA_URI_V4` serves that task's ARN (so its worker id is the task id, as on ECS); when the process exits, the task is stopped (`StopTask`) |
//!
//! Each part signs its AWS requests with its own access key id (`submit`, `status`,
//! `dispatch` (on a wake), `tick`, `esm` (the event source's polling), `runner`, `agent`; `test` for the set-up), so a counting proxy in front
//! of moto tells who made each call. Invocations and their durations are counted here
//! and served, with the runner count, at `GET /_local/stats` (not an API route).
//!
//! Environment:
//! - `SERVERLESS_COMFYUI_MOTO_ENDPOINT` (required): moto, or a proxy in front of it.
//! - `LOCAL_STACK_RUNNER_BIN` (required): the `gpu-runner-aws` binary.
//! - `LOCAL_STACK_COMFYUI_URL` (required): the ComfyUI (simulator) the runners attach to.
//! - `LOCAL_STACK_TICK_SECONDS` (default 5), `LOCAL_STACK_RUNNER_IDLE_SECONDS` (default 30).
//!
//! On start it creates fresh resources (`aws::testing`), an API key for the tenant
//! `e2e`, and prints one JSON line on stdout: `url`, `api_key`, the resource names.
//! SIGTERM or SIGINT: stops the runners (SIGTERM, they hand their jobs back) and exits.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws::{AwsConfig, EcsLauncher};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use functions_common::dispatch::DispatchHandler;
use functions_common::{Deployment, Tunables, status_router, submit_router};
use jobs::ports::{Launcher, QueueName, SystemClock};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The template's defaults for the policy parameters, but two workers at most.
fn tunable(name: &str) -> Option<String> {
    let value = match name {
        "SERVERLESS_COMFYUI_MAX_WORKERS" => "2",
        "SERVERLESS_COMFYUI_MIN_WARM_WORKERS" => "0",
        "SERVERLESS_COMFYUI_QUEUE_TIMEOUT_SECONDS" => "3600",
        "SERVERLESS_COMFYUI_MAX_ATTEMPTS" => "3",
        "SERVERLESS_COMFYUI_RETENTION_DAYS" => "7",
        "SERVERLESS_COMFYUI_IDEMPOTENCY_TTL_HOURS" => "24",
        "SERVERLESS_COMFYUI_UPLOAD_TTL_MINUTES" => "60",
        "SERVERLESS_COMFYUI_ALLOWED_ORIGINS" => "",
        _ => return None,
    };
    Some(value.to_string())
}

/// The wake queue's visibility timeout in the template.
const WAKE_VISIBILITY: Duration = Duration::from_secs(360);

/// Invocations per function (and API Gateway requests), with their durations.
#[derive(Default)]
struct Stats {
    calls: Mutex<BTreeMap<String, (u64, f64)>>,
    runners_started: Mutex<u64>,
}

impl Stats {
    fn record(&self, what: &str, took: Duration) {
        let mut calls = self.calls.lock().unwrap();
        let entry = calls.entry(what.to_string()).or_default();
        entry.0 += 1;
        entry.1 += took.as_secs_f64() * 1000.0;
    }

    fn json(&self) -> Value {
        let calls = self.calls.lock().unwrap();
        let calls: serde_json::Map<String, Value> = calls
            .iter()
            .map(|(k, (n, ms))| (k.clone(), json!({ "count": n, "total_ms": ms })))
            .collect();
        json!({ "calls": calls, "runners_started": *self.runners_started.lock().unwrap() })
    }
}

#[derive(Clone)]
struct Front {
    submit: axum::Router,
    status: axum::Router,
    stats: Arc<Stats>,
    tasks: Arc<Mutex<HashMap<String, String>>>,
}

/// API Gateway's routing: the method picks the function, `/api/*` only.
async fn api(State(front): State<Front>, request: Request) -> Response {
    let (router, name) = match *request.method() {
        Method::POST | Method::DELETE => (front.submit.clone(), "lambda:submit"),
        Method::GET | Method::HEAD => (front.status.clone(), "lambda:status"),
        _ => return not_found(),
    };
    if !request.uri().path().starts_with("/api/") {
        return not_found();
    }
    let started = Instant::now();
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    // A Lambda answers whole (payload v2 is buffered): read the body before timing.
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    front.stats.record(name, started.elapsed());
    front.stats.record("apigw", Duration::ZERO);
    Response::from_parts(parts, Body::from(bytes))
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({ "message": "Not Found" })),
    )
        .into_response()
}

/// The task metadata endpoint (v4) of one task: `GET {uri}/task`.
async fn task_metadata(State(front): State<Front>, Path(id): Path<String>) -> Response {
    match front.tasks.lock().unwrap().get(&id) {
        Some(arn) => axum::Json(json!({ "TaskARN": arn, "Cluster": "", "KnownStatus": "RUNNING" }))
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats_route(State(front): State<Front>) -> axum::Json<Value> {
    axum::Json(front.stats.json())
}

fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is missing"))
}

fn seconds(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}: not whole seconds")),
        Err(_) => Ok(default),
    }
}

async fn deployment(aws: &AwsConfig, caller: &str) -> anyhow::Result<Deployment> {
    Ok(Deployment {
        aws: aws.clone(),
        clients: aws::testing::clients_as(caller).await,
        tunables: Tunables::from_lookup(tunable).map_err(|e| anyhow::anyhow!("{e}"))?,
        cursor_key: rand_key(),
        clock: Arc::new(SystemClock),
        webhooks: Default::default(),
    })
}

/// A cursor key for this run (one `status` here, so nothing to share).
fn rand_key() -> Vec<u8> {
    ulid::Ulid::new().to_string().repeat(2).into_bytes()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::var(aws::testing::MOTO_ENDPOINT_VAR).is_err() {
        bail!("{} is missing", aws::testing::MOTO_ENDPOINT_VAR);
    }
    let runner_bin = required("LOCAL_STACK_RUNNER_BIN")?;
    let comfyui_url = required("LOCAL_STACK_COMFYUI_URL")?;
    let tick = Duration::from_secs(seconds("LOCAL_STACK_TICK_SECONDS", 5)?.max(1));
    let idle = seconds("LOCAL_STACK_RUNNER_IDLE_SECONDS", 30)?;

    let setup = aws::testing::clients().await;
    let mut aws = aws::testing::fresh_resources(5).await;
    aws.ecs = aws::testing::fresh_ecs(&setup.ecs).await;
    let submit = deployment(&aws, "submit").await?;
    let status = deployment(&aws, "status").await?;
    let dispatch = deployment(&aws, "dispatch").await?;
    // The tick and the event source's polling sign as themselves: the tick costs per
    // minute, not per job, and Lambda's SQS poller is not the function.
    let tick_deployment = deployment(&aws, "tick").await?;
    let esm = deployment(&aws, "esm").await?;
    let agent = deployment(&aws, "agent").await?;
    let minted = jobs::auth::mint_key("e2e", chrono::Utc::now()).map_err(anyhow::Error::msg)?;
    // Signed as the set-up (`test`), like the resources: not a function's call.
    deployment(&aws, "test")
        .await?
        .ports()
        .store
        .put_api_key(&minted.record)
        .await?;

    let stats = Arc::new(Stats::default());
    let front = Front {
        submit: submit_router(&submit),
        status: status_router(&status),
        stats: stats.clone(),
        tasks: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/_local/stats", get(stats_route))
        .route("/_local/ecs/{id}/task", get(task_metadata))
        .fallback(api)
        .with_state(front.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let handler = Arc::new(DispatchHandler::new(&dispatch));
    tokio::spawn(wake_source(esm, handler, stats.clone()));
    let tick_handler = Arc::new(DispatchHandler::new(&tick_deployment));
    tokio::spawn(ticks(tick_handler, tick, stats.clone()));
    let agent_env = RunnerEnv {
        bin: runner_bin,
        vars: runner_vars(&aws, &comfyui_url, idle),
        metadata_base: format!("{url}/_local/ecs"),
    };
    let children: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    tokio::spawn(ecs_agent(
        agent,
        agent_env,
        front.tasks.clone(),
        children.clone(),
        stats,
    ));

    println!(
        "{}",
        json!({
            "url": url,
            "api_key": minted.secret,
            "table": aws.table,
            "bucket": aws.bucket,
            "cluster": aws.ecs.cluster,
            "work_queue": aws.queues.work,
            "wake_queue": aws.queues.wake,
        })
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // The runners get SIGTERM, as `StopTask` would send; each hands its job back.
    let pids: Vec<u32> = children.lock().unwrap().values().copied().collect();
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !children.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Lambda's SQS event source: long polls, one invocation per batch, deletes what the
/// handler did not report as failed.
async fn wake_source(deployment: Deployment, handler: Arc<DispatchHandler>, stats: Arc<Stats>) {
    let queue = deployment.ports().queue;
    let arn = format!(
        "arn:aws:sqs:us-east-1:123456789012:{}",
        deployment.aws.queues.wake.rsplit('/').next().unwrap_or("")
    );
    loop {
        let batch = match queue
            .receive(
                QueueName::Wake,
                10,
                Duration::from_secs(20),
                WAKE_VISIBILITY,
            )
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!("wake queue: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let now_ms = chrono::Utc::now().timestamp_millis().to_string();
        let records: Vec<Value> = batch
            .iter()
            .map(|m| {
                json!({
                    "messageId": m.message_id,
                    "receiptHandle": m.receipt,
                    "body": m.body,
                    "attributes": {
                        "ApproximateReceiveCount": m.receive_count.to_string(),
                        "SentTimestamp": now_ms,
                        "SenderId": "AIDAEXAMPLE",
                        "ApproximateFirstReceiveTimestamp": now_ms,
                    },
                    "messageAttributes": {},
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let started = Instant::now();
        let answer = handler.handle(json!({ "Records": records })).await;
        stats.record("lambda:dispatch:wake", started.elapsed());
        let failed: Vec<String> = match &answer {
            Ok(v) => v["batchItemFailures"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_string))
                .collect(),
            // A failed invocation leaves the whole batch to come back.
            Err(_) => batch.iter().map(|m| m.message_id.clone()).collect(),
        };
        for m in batch.iter().filter(|m| !failed.contains(&m.message_id)) {
            if let Err(e) = queue.delete(QueueName::Wake, &m.receipt).await {
                tracing::error!("wake delete: {e}");
            }
        }
    }
}

/// EventBridge's schedule.
async fn ticks(handler: Arc<DispatchHandler>, every: Duration, stats: Arc<Stats>) {
    loop {
        tokio::time::sleep(every).await;
        let event = json!({
            "version": "0",
            "id": ulid::Ulid::new().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": chrono::Utc::now().to_rfc3339(),
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/tick"],
            "detail": {},
        });
        let started = Instant::now();
        if let Err(e) = handler.handle(event).await {
            tracing::error!("tick: {e}");
        }
        stats.record("lambda:dispatch:tick", started.elapsed());
    }
}

struct RunnerEnv {
    bin: String,
    vars: Vec<(String, String)>,
    metadata_base: String,
}

/// The environment the task definition gives the runner, pointed at moto.
fn runner_vars(aws: &AwsConfig, comfyui_url: &str, idle: u64) -> Vec<(String, String)> {
    let endpoint = std::env::var(aws::testing::MOTO_ENDPOINT_VAR).unwrap_or_default();
    [
        ("SERVERLESS_COMFYUI_TABLE", aws.table.as_str()),
        ("SERVERLESS_COMFYUI_BUCKET", &aws.bucket),
        ("SERVERLESS_COMFYUI_WORK_QUEUE_URL", &aws.queues.work),
        ("SERVERLESS_COMFYUI_WAKE_QUEUE_URL", &aws.queues.wake),
        (
            "SERVERLESS_COMFYUI_WORK_DLQ_URL",
            &aws.queues.work_dead_letter,
        ),
        (
            "SERVERLESS_COMFYUI_WAKE_DLQ_URL",
            &aws.queues.wake_dead_letter,
        ),
        ("SERVERLESS_COMFYUI_COMFYUI_URL", comfyui_url),
        ("SERVERLESS_COMFYUI_IDLE_TIMEOUT_SECONDS", &idle.to_string()),
        ("SERVERLESS_COMFYUI_SHUTDOWN_GRACE_SECONDS", "2"),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_ACCESS_KEY_ID", "runner"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The ECS agent: a runner process per task moto still has `RUNNING`; `StopTask`
/// when the process exits.
async fn ecs_agent(
    deployment: Deployment,
    env: RunnerEnv,
    tasks: Arc<Mutex<HashMap<String, String>>>,
    children: Arc<Mutex<HashMap<String, u32>>>,
    stats: Arc<Stats>,
) {
    let launcher = Arc::new(EcsLauncher::new(
        deployment.clients.ecs.clone(),
        deployment.aws.ecs.clone(),
    ));
    let cluster = deployment.aws.ecs.cluster.clone();
    let mut seen = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let running = match aws::testing::running_tasks(&deployment.clients.ecs, &cluster).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!("ListTasks: {e}");
                continue;
            }
        };
        for arn in running {
            if !seen.insert(arn.clone()) {
                continue;
            }
            let id = aws::ecs::task_id(&arn).to_string();
            tasks.lock().unwrap().insert(id.clone(), arn.clone());
            let mut command = tokio::process::Command::new(&env.bin);
            command
                .envs(env.vars.iter().cloned())
                .env(
                    "ECS_CONTAINER_METADATA_URI_V4",
                    format!("{}/{id}", env.metadata_base),
                )
                .stdin(std::process::Stdio::null())
                // Our stdout is the ready line's pipe, read once; the runner logs on
                // stderr, which it shares with us.
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true);
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    tracing::error!("starting {}: {e}", env.bin);
                    continue;
                }
            };
            *stats.runners_started.lock().unwrap() += 1;
            if let Some(pid) = child.id() {
                children.lock().unwrap().insert(id.clone(), pid);
            }
            let (launcher, children) = (launcher.clone(), children.clone());
            tokio::spawn(async move {
                let status = child.wait().await;
                tracing::warn!(task = %id, ?status, "runner exited");
                children.lock().unwrap().remove(&id);
                if let Err(e) = launcher.stop(&id).await {
                    tracing::error!("StopTask {id}: {e}");
                }
            });
        }
    }
}
