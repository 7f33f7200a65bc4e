//! The AWS entry's environment and its worker id from the ECS task metadata endpoint,
//! served by a tiny local HTTP server.

use std::collections::HashMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn full() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("SERVERLESS_COMFYUI_TABLE", "jobs"),
        ("SERVERLESS_COMFYUI_BUCKET", "bucket"),
        ("SERVERLESS_COMFYUI_WORK_QUEUE_URL", "https://sqs/work"),
        ("SERVERLESS_COMFYUI_WAKE_QUEUE_URL", "https://sqs/wake"),
        ("SERVERLESS_COMFYUI_WORK_DLQ_URL", "https://sqs/work-dlq"),
        ("SERVERLESS_COMFYUI_WAKE_DLQ_URL", "https://sqs/wake-dlq"),
        (COMFYUI_CMD, "python main.py --port {port}"),
    ])
}

fn read(env: &HashMap<&'static str, &'static str>) -> Result<AwsRunnerEnv, EnvError> {
    AwsRunnerEnv::from_lookup(|k| env.get(k).map(|v| v.to_string()))
}

#[test]
fn a_minimal_environment_gives_the_flag_defaults() {
    let env = read(&full()).unwrap();
    assert_eq!(env.data.table, "jobs");
    assert_eq!(env.data.queues.work_dead_letter, "https://sqs/work-dlq");
    let d = RunnerSettings::default();
    assert_eq!(env.settings.lease_seconds, d.lease_seconds);
    assert_eq!(env.settings.max_attempts, d.max_attempts);
    assert_eq!(env.models, None);
    assert_eq!(
        env.chaos_queue_seed, None,
        "no fault injection unless a test asks"
    );
    assert!(env.settings.to_config().is_ok());
}

#[test]
fn the_test_only_chaos_seed_is_read_and_checked() {
    let mut vars = full();
    vars.insert(TEST_CHAOS_QUEUE_SEED, "42");
    assert_eq!(read(&vars).unwrap().chaos_queue_seed, Some(42));
    vars.insert(TEST_CHAOS_QUEUE_SEED, "lots");
    let error = read(&vars).unwrap_err();
    assert_eq!(error.invalid.len(), 1, "{error}");
    assert!(error.to_string().contains(TEST_CHAOS_QUEUE_SEED), "{error}");
}

#[test]
fn every_setting_is_read() {
    let mut vars = full();
    vars.extend([
        (LEASE, "45"),
        (JOB_TIMEOUT, "600"),
        (MAX_ATTEMPTS, "5"),
        (IDLE_TIMEOUT, "0"),
        (SHUTDOWN_GRACE, "90"),
        (READY_TIMEOUT, "120.5"),
        (COMFYUI_WORKDIR, "/work"),
        (WARMUP, "/opt/warmup.json"),
        (CUSTOM_NODES, "/opt/custom-nodes.toml"),
        (MODEL_CACHE, "/cache"),
        (MODELS_MANIFEST, "models/models.yaml"),
        (WORKER_ID, "w-1"),
    ]);
    let env = read(&vars).unwrap();
    let s = &env.settings;
    assert_eq!(
        (
            s.lease_seconds,
            s.job_timeout,
            s.max_attempts,
            s.idle_timeout
        ),
        (45.0, 600.0, 5, 0.0)
    );
    assert_eq!((s.shutdown_grace, s.ready_timeout), (90.0, 120.5));
    assert_eq!(
        s.comfyui_workdir.as_deref(),
        Some(std::path::Path::new("/work"))
    );
    assert_eq!(
        s.warmup_workflow.as_deref(),
        Some(std::path::Path::new("/opt/warmup.json"))
    );
    assert_eq!(
        s.custom_nodes.as_deref(),
        Some(std::path::Path::new("/opt/custom-nodes.toml"))
    );
    assert_eq!(s.worker_id.as_deref(), Some("w-1"));
    assert_eq!(
        env.models,
        Some(ModelsSettings {
            cache: "/cache".into(),
            manifest_key: "models/models.yaml".into()
        })
    );
}

#[test]
fn every_problem_is_named_at_once() {
    let mut vars = full();
    vars.remove("SERVERLESS_COMFYUI_BUCKET");
    vars.remove("SERVERLESS_COMFYUI_WAKE_DLQ_URL");
    vars.remove(COMFYUI_CMD);
    vars.insert(LEASE, "soon");
    vars.insert(MAX_ATTEMPTS, "0");
    vars.insert(MODELS_MANIFEST, "models/models.yaml");
    let err = read(&vars).unwrap_err();
    assert_eq!(
        err.missing,
        [
            "SERVERLESS_COMFYUI_BUCKET",
            "SERVERLESS_COMFYUI_WAKE_DLQ_URL",
            "SERVERLESS_COMFYUI_COMFYUI_CMD (or SERVERLESS_COMFYUI_COMFYUI_URL)",
            "SERVERLESS_COMFYUI_MODEL_CACHE (needed by SERVERLESS_COMFYUI_MODELS_MANIFEST)",
        ]
    );
    assert_eq!(err.invalid.len(), 2, "{err}");
    let text = err.to_string();
    for name in [LEASE, MAX_ATTEMPTS, "SERVERLESS_COMFYUI_BUCKET"] {
        assert!(text.contains(name), "{text}");
    }
}

/// A one-route HTTP server: `GET {prefix}/task` answers `body` (or, with `None`,
/// accepts and never answers). Returns the metadata URI to use.
async fn metadata_server(body: Option<&'static str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let Some(body) = body else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                };
                let (status, body) = if request.starts_with("GET /v4/abc-123/task ") {
                    ("200 OK", body)
                } else {
                    ("404 Not Found", "{}")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v4/abc-123")
}

/// The `/task` document as the ECS docs show it for an EC2 task (trimmed of the
/// container list's details).
const TASK_DOC: &str = r#"{
  "Cluster": "arn:aws:ecs:us-west-2:111122223333:cluster/default",
  "TaskARN": "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c",
  "Family": "serverless-comfyui-runner",
  "Revision": "26",
  "DesiredStatus": "RUNNING",
  "KnownStatus": "RUNNING",
  "Limits": { "CPU": 3.5, "Memory": 14336 },
  "PullStartedAt": "2020-10-02T00:43:06.202617438Z",
  "PullStoppedAt": "2020-10-02T00:43:06.31288465Z",
  "AvailabilityZone": "us-west-2d",
  "LaunchType": "EC2",
  "Containers": [
    {
      "DockerId": "598cba581fe3f939459eaba1e071d5c93bb2c49b7d1ba7db6bb19deeb70d8e38",
      "Name": "runner",
      "DockerName": "ecs-serverless-comfyui-runner-26-runner",
      "Image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/runner:latest",
      "Labels": {
        "com.amazonaws.ecs.task-arn": "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c"
      },
      "DesiredStatus": "RUNNING",
      "KnownStatus": "RUNNING",
      "Type": "NORMAL"
    }
  ]
}"#;

#[tokio::test]
async fn the_worker_id_is_the_task_id_from_the_metadata_endpoint() {
    let uri = metadata_server(Some(TASK_DOC)).await;
    assert_eq!(
        ecs_task_id(&uri, METADATA_TIMEOUT).await.unwrap(),
        "158d1c8083dd49d6b527399fd6414f5c"
    );
    assert_eq!(
        worker_id_from(Some(&uri), METADATA_TIMEOUT).await,
        "158d1c8083dd49d6b527399fd6414f5c"
    );
    // The launcher names the same worker from RunTask's answer.
    assert_eq!(
        aws::ecs::task_id(
            "arn:aws:ecs:us-west-2:111122223333:task/default/158d1c8083dd49d6b527399fd6414f5c"
        ),
        "158d1c8083dd49d6b527399fd6414f5c"
    );
}

#[tokio::test]
async fn without_an_answer_the_id_is_generated_within_the_timeout() {
    // No variable: generated at once.
    assert!(
        worker_id_from(None, METADATA_TIMEOUT)
            .await
            .starts_with("runner-")
    );
    // A document without a task ARN.
    let uri = metadata_server(Some(r#"{"Cluster": "default"}"#)).await;
    assert!(
        ecs_task_id(&uri, METADATA_TIMEOUT)
            .await
            .unwrap_err()
            .contains("TaskARN")
    );
    assert!(
        worker_id_from(Some(&uri), METADATA_TIMEOUT)
            .await
            .starts_with("runner-")
    );
    // An endpoint that never answers: the short timeout, not a hang.
    let silent = metadata_server(None).await;
    let started = std::time::Instant::now();
    let id = worker_id_from(Some(&silent), Duration::from_millis(300)).await;
    assert!(id.starts_with("runner-"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

fn timing(status: Option<jobs::model::JobStatus>) -> crate::config::JobTiming {
    let now = std::time::Instant::now();
    crate::config::JobTiming {
        job_id: jobs::model::JobId::generate(),
        attempt: 1,
        received: now,
        claimed: Some(now),
        submitted: Some(now),
        exec_start: Some(now),
        exec_end: Some(now + Duration::from_millis(2500)),
        finished: Some(now),
        received_at: chrono::Utc::now(),
        finished_at: Some(chrono::Utc::now()),
        comfy_exec_ms: None,
        pipelined: false,
        status,
        queue_ms: Some(1500),
        execution_ms: Some(3000),
    }
}

#[test]
fn a_finished_job_publishes_its_end_waits_and_gpu_time() {
    use aws::emf::Name;
    use jobs::model::JobStatus;
    let metrics = job_metrics(&timing(Some(JobStatus::Succeeded)));
    assert_eq!(
        metrics,
        vec![
            (Name::JobsSucceeded, 1.0),
            (Name::QueueWaitSeconds, 1.5),
            (Name::ExecutionSeconds, 3.0),
            (Name::GpuSeconds, 2.5),
        ]
    );
    // ComfyUI's own timestamps win over the runner's view.
    let mut t = timing(Some(JobStatus::Failed));
    t.comfy_exec_ms = Some((10_000, 14_000));
    let metrics = job_metrics(&t);
    assert_eq!(metrics[0], (Name::JobsFailed, 1.0));
    assert_eq!(metrics.last(), Some(&(Name::GpuSeconds, 4.0)));
    // A job this runner handed back or lost publishes nothing.
    assert!(job_metrics(&timing(None)).is_empty());
    assert!(job_metrics(&timing(Some(JobStatus::Queued))).is_empty());
}
