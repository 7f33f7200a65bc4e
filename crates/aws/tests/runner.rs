//! The runner on the AWS adapters, on moto_server, running a job on the ComfyUI
//! simulator: the AWS entry's own start-up (`gpu_runner::aws_env::prepare`, from an
//! environment naming moto's table, bucket and queues) syncs the models manifest,
//! builds the DynamoDB, S3 and SQS ports, and the loop claims the job, stores its output
//! in S3 and commits it; the worker is in the DynamoDB registry while it runs and gone
//! after shutdown.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use aws::dynamodb::create_table;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use comfyui_sim::{SimConfig, Simulator};
use gpu_runner::Runner;
use gpu_runner::aws_env::{AwsRunnerEnv, prepare};
use jobs::model::{JobId, JobStatus};
use jobs::service::{JobService, JobsConfig};
use tokio_util::sync::CancellationToken;

fn invert() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workflows/invert.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("invert.json")).unwrap()
}

struct Setup {
    clients: aws::Clients,
    bucket: String,
    vars: HashMap<&'static str, String>,
    _cache: tempfile::TempDir,
}

/// Moto resources of one test, a simulator, and the environment a task definition
/// would give the runner.
async fn setup(sim_url: String) -> Setup {
    let clients = common::clients().await;
    let table = common::unique("t");
    create_table(&clients.dynamodb, &table)
        .await
        .expect("create table");
    let bucket = common::unique("b");
    clients
        .s3
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    let urls = common::fresh_queue(100).await.urls().clone();
    for (key, body) in [
        ("models/vae/tiny.safetensors", b"0123456789".to_vec()),
        (
            "models/models.yaml",
            b"models:\n  - key: models/vae/tiny.safetensors\n    folder: vae\n".to_vec(),
        ),
    ] {
        clients
            .s3
            .put_object()
            .bucket(&bucket)
            .key(key)
            .body(SdkByteStream::from(body))
            .send()
            .await
            .expect("put");
    }
    let cache = tempfile::tempdir().unwrap();
    let vars = HashMap::from([
        ("SERVERLESS_COMFYUI_TABLE", table),
        ("SERVERLESS_COMFYUI_BUCKET", bucket.clone()),
        ("SERVERLESS_COMFYUI_WORK_QUEUE_URL", urls.work),
        ("SERVERLESS_COMFYUI_WAKE_QUEUE_URL", urls.wake),
        ("SERVERLESS_COMFYUI_WORK_DLQ_URL", urls.work_dead_letter),
        ("SERVERLESS_COMFYUI_WAKE_DLQ_URL", urls.wake_dead_letter),
        ("SERVERLESS_COMFYUI_COMFYUI_URL", sim_url),
        ("SERVERLESS_COMFYUI_LEASE_SECONDS", "3".into()),
        ("SERVERLESS_COMFYUI_IDLE_TIMEOUT_SECONDS", "0".into()),
        ("SERVERLESS_COMFYUI_SHUTDOWN_GRACE_SECONDS", "0.2".into()),
        (
            "SERVERLESS_COMFYUI_MODEL_CACHE",
            cache.path().display().to_string(),
        ),
        (
            "SERVERLESS_COMFYUI_MODELS_MANIFEST",
            "models/models.yaml".into(),
        ),
    ]);
    Setup {
        clients,
        bucket,
        vars,
        _cache: cache,
    }
}

fn service(ports: &jobs::service::Ports) -> JobService {
    JobService::new(
        ports.clone(),
        JobsConfig {
            default_quota: jobs::quota::TenantQuota::UNLIMITED,
            ..JobsConfig::default()
        },
        b"0123456789abcdef0123456789abcdef".to_vec(),
    )
}

async fn submit(service: &JobService, workflow: serde_json::Value) -> JobId {
    let body = serde_json::to_vec(&serde_json::json!({ "workflow": workflow })).unwrap();
    let submitted = service.submit("t1", &body, None).await.expect("submit");
    JobId::parse(&submitted.job.id).unwrap()
}

async fn wait_for(
    ports: &jobs::service::Ports,
    id: &JobId,
    what: &str,
    check: impl Fn(&jobs::model::Job) -> bool,
) -> jobs::model::Job {
    for _ in 0..600 {
        let current = ports.store.get_job(id).await.unwrap().unwrap();
        if check(&current) {
            return current;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} never became {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_entry_runs_a_job_on_moto_and_deregisters() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let Setup {
        clients,
        bucket,
        vars,
        _cache: cache,
    } = setup(sim.base_url()).await;
    let env = AwsRunnerEnv::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let (config, engine, ports) = prepare(&env, &clients, None).await.unwrap();
    assert_eq!(config.refuse_jobs, None);
    assert_eq!(
        std::fs::read(cache.path().join("models/vae/tiny.safetensors")).unwrap(),
        b"0123456789"
    );
    let worker_id = config.worker_id.clone();
    let id = submit(&service(&ports), invert()).await;

    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(config, ports.clone(), engine).run(shutdown.clone()));
    let job = wait_for(&ports, &id, "terminal", |j| j.status.is_terminal()).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    assert_eq!(job.outputs.len(), 1, "{job:?}");
    let listed = clients
        .s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("outputs/{id}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 1, "the output is in S3");
    let workers = ports.store.list_workers().await.unwrap();
    assert!(workers.iter().any(|w| w.id == worker_id), "{workers:?}");

    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the runner stops")
        .unwrap()
        .unwrap();
    assert_eq!(report.committed, 1);
    let workers = ports.store.list_workers().await.unwrap();
    assert!(
        !workers.iter().any(|w| w.id == worker_id),
        "deregistered: {workers:?}"
    );
}

/// SIGTERM (the token here) mid-job: the job is handed back uncharged through
/// DynamoDB and its SQS message is visible again at once, within the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_the_running_job_back_on_the_aws_adapters() {
    let sim = Simulator::start(SimConfig {
        step_ms: 50,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let setup = setup(sim.base_url()).await;
    let env = AwsRunnerEnv::from_lookup(|k| setup.vars.get(k).cloned()).unwrap();
    let (config, engine, ports) = prepare(&env, &setup.clients, None).await.unwrap();
    let mut workflow = serde_json::from_slice::<serde_json::Value>(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/workflows/txt2img-sd15.json"
        ))
        .unwrap(),
    )
    .unwrap();
    workflow["3"]["inputs"]["steps"] = serde_json::json!(400);
    let id = submit(&service(&ports), workflow).await;
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(Runner::new(config, ports.clone(), engine).run(shutdown.clone()));
    wait_for(&ports, &id, "running", |j| j.status == JobStatus::Running).await;
    let asked = std::time::Instant::now();
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), runner)
        .await
        .expect("the runner stops")
        .unwrap()
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(report.handed_back, 1, "{report:?}");
    let job = ports.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(
        (job.status, job.attempt, job.preemptions),
        (JobStatus::Queued, 1, 1),
        "{job:?}"
    );
    assert!(job.lease_owner.is_none());
    let depth = ports
        .queue
        .depth(jobs::ports::QueueName::Work)
        .await
        .unwrap();
    assert_eq!(depth.visible, 1, "the message is visible again at once");
}
