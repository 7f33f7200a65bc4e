//! The three functions without Lambda: their very routers served by axum on
//! 127.0.0.1 (a small local HTTP front, as API Gateway would forward), and the
//! dispatch handler fed event JSON in the shapes AWS documents. DynamoDB, S3 and SQS
//! are moto (`aws::testing`); ECS is mocked (moto's ECS cannot place or list tasks
//! by instance), asserting the requests.
//!
//! Where moto is kinder than AWS: S3 checks no signatures, so following a presigned
//! URL here proves the redirect and the key, not the signature (crates/aws unit-tests
//! that against botocore's output).

mod common;

use common::{
    INSTANCE, RUNNER_TASK, api_key, deployment, front, invert, scheduled_event, template_env,
};
use functions_common::dispatch::{DispatchError, DispatchHandler};
use functions_common::{Deployment, Function, status_router, submit_router};
use jobs::model::JobId;
use jobs::ports::QueueName;
use serde_json::{Value, json};

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_submitted_through_submit_is_read_and_canceled() {
    let (deployment, _ecs) = deployment().await;
    let key = api_key(&deployment, "acme").await;
    let submit = front(submit_router(&deployment)).await;
    let status = front(status_router(&deployment)).await;
    let http = http();

    let (code, body) = json_of(
        http.post(format!("{submit}/api/v2/jobs"))
            .json(&invert())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );

    let (code, job) = json_of(
        http.post(format!("{submit}/api/v2/jobs"))
            .bearer_auth(&key)
            .json(&invert())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    // The work message and the wake nudge are on SQS, the enqueue recorded before
    // the answer (a Lambda may be frozen right after it).
    let queue = deployment.ports().queue;
    assert_eq!(queue.depth(QueueName::Work).await.unwrap().visible, 1);
    assert_eq!(queue.depth(QueueName::Wake).await.unwrap().visible, 1);
    let stored = deployment
        .ports()
        .store
        .get_job(&JobId::parse(&id).unwrap())
        .await;
    assert!(stored.unwrap().unwrap().enqueued);

    let (code, read) = json_of(
        http.get(format!("{status}/api/v2/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, &read["status"]), (200, &json!("queued")), "{read}");
    // Each function serves its half only: a read sent to submit is not routed.
    let (code, missed) = json_of(
        http.get(format!("{submit}/api/v2/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, &missed["error"]["code"]), (404, &json!("not_found")));

    let (code, canceled) = json_of(
        http.post(format!("{submit}/api/v2/jobs/{id}/cancel"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200, "{canceled}");
    let (_, read) = json_of(
        http.get(format!("{status}/api/v2/jobs/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(read["status"], "canceled", "{read}");

    // Another tenant does not see it.
    let other = api_key(&deployment, "other").await;
    let (code, _) = json_of(
        http.get(format!("{status}/api/v2/jobs/{id}"))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_content_is_a_redirect_to_s3_and_large_uploads_are_refused() {
    let (deployment, _ecs) = deployment().await;
    let key = api_key(&deployment, "acme").await;
    let submit = front(submit_router(&deployment)).await;
    let status = front(status_router(&deployment)).await;
    let http = http();

    let bytes = b"hello from an asset".to_vec();
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone())
                .file_name("note.txt")
                .mime_str("text/plain")
                .unwrap(),
        )
        .text("content_type", "text/plain")
        .text("file_path", "note.txt");
    let (code, asset) = json_of(
        http.post(format!("{submit}/api/v2/assets"))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{asset}");
    let id = asset["id"].as_str().unwrap();

    let response = http
        .get(format!("{status}/api/v2/assets/{id}/content"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&aws::testing::moto().endpoint)
            && location.contains(&deployment.aws.bucket)
            && location.contains("X-Amz-Signature="),
        "{location}"
    );
    let fetched = http.get(&location).send().await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);

    // Past what a synchronous invocation can carry, the upload extension is the way.
    let big = vec![0u8; functions_common::MAX_LAMBDA_UPLOAD_BYTES as usize + 1024];
    let form = reqwest::multipart::Form::new()
        .text("content_type", "application/octet-stream")
        .text("file_path", "big.bin")
        .part(
            "file",
            reqwest::multipart::Part::bytes(big)
                .file_name("big.bin")
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    let (code, refused) = json_of(
        http.post(format!("{submit}/api/v2/assets"))
            .bearer_auth(&key)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, &refused["error"]["code"]),
        (413, &json!("payload_too_large")),
        "{refused}"
    );
}

fn sqs_wake_event(deployment: &Deployment, ids: &[&str]) -> Value {
    let records: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({
                "messageId": id,
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
                "body": "{\"v\":1,\"kind\":\"wake\"}",
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "1733529600000",
                    "SenderId": "AROAEXAMPLE:submit",
                    "ApproximateFirstReceiveTimestamp": "1733529600010"
                },
                "messageAttributes": {},
                "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
                "eventSource": "aws:sqs",
                "eventSourceARN": format!("arn:aws:sqs:us-east-1:123456789012:{}", deployment.aws.queues.wake.rsplit('/').next().unwrap()),
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn ec2_notice(detail_type: &str, detail: Value) -> Value {
    json!({
        "version": "0",
        "id": "1e5527d7-bb36-4607-3370-4164db56a40e",
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": "2026-12-06T23:02:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1a:instance/{INSTANCE}")],
        "detail": detail
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_batch_scales_once_and_a_failed_decision_returns_every_message() {
    let (deployment, ecs) = deployment().await;
    let key = api_key(&deployment, "acme").await;
    let submit = front(submit_router(&deployment)).await;
    let response = http()
        .post(format!("{submit}/api/v2/jobs"))
        .bearer_auth(&key)
        .json(&invert())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    let handler = DispatchHandler::new(&deployment);
    let answer = handler
        .handle(sqs_wake_event(&deployment, &["m-1", "m-2"]))
        .await
        .unwrap();
    assert_eq!(answer, json!({ "batchItemFailures": [] }));
    let runs = ecs.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "one decision for the batch");
    assert_eq!(runs[0].count(), Some(1), "one queued job, one runner");
    assert_eq!(runs[0].cluster(), Some("gpu-cluster"));
    let workers = deployment.ports().store.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1);

    // A store that cannot be read: the decision fails, every message goes back.
    let mut broken = deployment.clone();
    broken.aws.table = "no-such-table".into();
    let answer = DispatchHandler::new(&broken)
        .handle(sqs_wake_event(&deployment, &["m-3", "m-4"]))
        .await
        .unwrap();
    assert_eq!(
        answer,
        json!({ "batchItemFailures": [{"itemIdentifier": "m-3"}, {"itemIdentifier": "m-4"}] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_enqueues_a_job_recorded_without_its_message() {
    let (deployment, ecs) = deployment().await;
    let ports = deployment.ports();
    // Recorded a minute ago by a submit that died before sending the work message.
    let recorded_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    let job = testkit::conformance::sample_job("acme", recorded_at, &[]);
    assert!(!job.enqueued);
    ports
        .store
        .create_job(&job, None, recorded_at)
        .await
        .unwrap();
    assert_eq!(ports.queue.depth(QueueName::Work).await.unwrap().visible, 0);

    let report = DispatchHandler::new(&deployment)
        .handle(scheduled_event())
        .await
        .unwrap();
    assert_eq!(report["reenqueued"], 1, "{report}");
    assert_eq!(ports.queue.depth(QueueName::Work).await.unwrap().visible, 1);
    assert!(
        ports
            .store
            .get_job(&job.id)
            .await
            .unwrap()
            .unwrap()
            .enqueued
    );
    assert_eq!(report["scale"]["launched"], 1, "{report}");
    assert_eq!(ecs.runs.lock().unwrap().len(), 1);

    // EventBridge Scheduler's shape is a tick too.
    let mut scheduler = scheduled_event();
    scheduler["source"] = json!("aws.scheduler");
    let again = DispatchHandler::new(&deployment)
        .handle(scheduler)
        .await
        .unwrap();
    assert_eq!(again["reenqueued"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notices_stop_the_runners_on_that_instance() {
    let (deployment, ecs) = deployment().await;
    let handler = DispatchHandler::new(&deployment);
    let warning = ec2_notice(
        "EC2 Spot Instance Interruption Warning",
        json!({ "instance-id": INSTANCE, "instance-action": "terminate" }),
    );
    let answer = handler.handle(warning).await.unwrap();
    assert_eq!(answer, json!({ "stopped": [RUNNER_TASK] }));
    let rebalance = ec2_notice(
        "EC2 Instance Rebalance Recommendation",
        json!({ "instance-id": INSTANCE }),
    );
    handler.handle(rebalance).await.unwrap();
    let stops = ecs.stops.lock().unwrap().clone();
    assert_eq!(stops.len(), 2);
    assert_eq!(stops[0].task(), Some(RUNNER_TASK));
    assert_eq!(
        stops[0].reason(),
        Some(format!("EC2 Spot Instance Interruption Warning for {INSTANCE}").as_str())
    );
    assert_eq!(
        ecs.list_instances.lock().unwrap()[0].filter(),
        Some(format!("ec2InstanceId == {INSTANCE}").as_str())
    );

    let no_instance = ec2_notice("EC2 Spot Instance Interruption Warning", json!({}));
    assert!(matches!(
        handler.handle(no_instance).await,
        Err(DispatchError::Malformed { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_failure_shows_in_health_and_unknown_events_are_errors_without_values() {
    let (deployment, _ecs) = deployment().await;
    let handler = DispatchHandler::new(&deployment);
    let failure = json!({
        "version": "0",
        "id": "3e3c153a-8339-4e30-8c35-687ebef853fe",
        "detail-type": "EC2 Instance Launch Unsuccessful",
        "source": "aws.autoscaling",
        "account": "123456789012",
        "time": "2026-12-06T23:05:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:1:autoScalingGroupName/stack-gpu"],
        "detail": {
            "StatusCode": "Failed",
            "AutoScalingGroupName": "stack-gpu",
            "ActivityId": "3e3c153a-8339-4e30-8c35-687ebef853fe",
            "Details": { "Availability Zone": "us-east-1a" },
            "RequestId": "3e3c153a-8339-4e30-8c35-687ebef853fe",
            "StatusMessage": "We currently do not have sufficient g6.xlarge capacity in the Availability Zone you requested (us-east-1a).",
            "EndTime": "2026-12-06T23:05:00.000Z",
            "EC2InstanceId": "",
            "StartTime": "2026-12-06T23:04:58.000Z",
            "Cause": "At 2026-12-06T23:04:58Z an instance was started in response to a difference between desired and actual capacity."
        }
    });
    assert_eq!(handler.handle(failure).await.unwrap(), Value::Null);
    let status = front(status_router(&deployment)).await;
    let (_, health) = json_of(
        http()
            .get(format!("{status}/api/v2/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health["capacity"]["state"], "failing", "{health}");
    assert!(
        health["capacity"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sufficient g6.xlarge capacity")),
        "{health}"
    );
    assert_eq!(health["launcher"], "ecs");

    let unknown = json!({
        "source": "aws.s3",
        "detail-type": "Object Created",
        "token": "secret-value-that-must-not-be-logged",
    });
    let error = handler.handle(unknown).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, DispatchError::Unknown { .. }), "{text}");
    assert!(text.contains("token") && text.contains("aws.s3"), "{text}");
    assert!(!text.contains("secret-value"), "{text}");
    assert!(matches!(
        handler.handle(json!("just a string")).await,
        Err(DispatchError::Unknown { .. })
    ));
}

#[test]
fn every_missing_setting_of_a_function_is_named_at_once() {
    let error = Deployment::settings(Function::Status, |name| match name {
        "SERVERLESS_COMFYUI_TABLE" => None,
        "SERVERLESS_COMFYUI_MAX_ATTEMPTS" => Some("zero".into()),
        _ if name.ends_with("_URL") => Some("https://sqs.us-east-1.amazonaws.com/1/q".into()),
        other => template_env(other).or_else(|| Some("set".into())),
    })
    .map(|_| ())
    .unwrap_err();
    // "set" is not a 32-byte cursor key: status needs its secret.
    let text = error.to_string();
    for name in [
        "SERVERLESS_COMFYUI_TABLE is missing",
        "SERVERLESS_COMFYUI_MAX_ATTEMPTS",
        "SERVERLESS_COMFYUI_CURSOR_KEY is 3 bytes long",
    ] {
        assert!(text.contains(name), "{name} not in: {text}");
    }
    assert_eq!(error.problems.len(), 3, "{text}");

    // submit and dispatch list nothing: no cursor key needed.
    let env = |name: &str| template_env(name).or_else(|| Some("set".into()));
    assert!(Deployment::settings(Function::Submit, env).is_ok());
    assert!(Deployment::settings(Function::Dispatch, env).is_ok());
}

#[test]
fn every_variable_the_functions_read_is_set_by_the_template() {
    use functions_common::env;
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../template.yaml"))
            .unwrap();
    let Err(aws::ConfigError::Missing(resources)) = aws::AwsConfig::from_lookup(|_| None) else {
        panic!("an empty environment is incomplete");
    };
    let tunables = [
        env::MAX_WORKERS,
        env::MIN_WARM_WORKERS,
        env::QUEUE_TIMEOUT_SECONDS,
        env::MAX_ATTEMPTS,
        env::RETENTION_DAYS,
        env::IDEMPOTENCY_TTL_HOURS,
        env::UPLOAD_TTL_MINUTES,
        env::ALLOWED_ORIGINS,
        env::CURSOR_KEY,
        env::WEBHOOK_QUEUE_URL,
    ];
    for name in resources.iter().copied().chain(tunables) {
        assert!(
            template.contains(&format!("{name}: ")),
            "template.yaml does not set {name}"
        );
    }
}

/// The per-tenant limit on live event streams holds across `status` instances: two
/// routers, each built as a Lambda instance builds its own (before, each counted its
/// own streams), share the store's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_holds_across_status_instances() {
    let (deployment, _ecs) = deployment().await;
    let key = api_key(&deployment, "acme").await;
    let submit = front(submit_router(&deployment)).await;
    let first = front(status_router(&deployment)).await;
    let second = front(status_router(&deployment)).await;
    let http = http();
    let (code, job) = json_of(
        http.post(format!("{submit}/api/v2/jobs"))
            .bearer_auth(&key)
            .json(&invert())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let open = |base: &str| {
        http.get(format!("{base}/api/v2/jobs/{id}/events"))
            .bearer_auth(&key)
            .send()
    };
    let max = jobs::events::EventsConfig::default().max_streams_per_tenant;
    let mut streams = Vec::new();
    for _ in 0..max {
        let response = open(&first).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        streams.push(response);
    }
    let (code, refused) = json_of(open(&second).await.unwrap()).await;
    assert_eq!(
        (code, &refused["error"]["code"]),
        (429, &json!("too_many_streams"))
    );
    // A closed stream frees its slot for the other instance (the server notices at
    // its next read of the job; bounded wait).
    drop(streams.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = open(&second).await.unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
