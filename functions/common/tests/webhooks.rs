//! The `webhooks` function over moto: a job ends on the table, the table's real stream
//! records (moto's DynamoDB Streams, `NEW_AND_OLD_IMAGES`) go through the handler, and
//! a real receiver on 127.0.0.1 gets signed requests it verifies with its own HMAC.
//!
//! Where this is not Lambda: the handler gets *every* record of the stream (the
//! event source mapping's filter is not applied), which is stricter: it must ignore
//! what the filter would have dropped. The SQS event source is played by a loop that
//! receives, hands the batch to the handler and deletes what it did not report as
//! failed, as Lambda does.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use common::{api_key, deployment, deployment_with, front, invert};
use functions_common::Deployment;
use functions_common::webhooks::WebhooksHandler;
use hmac::Mac;
use jobs::webhooks::deliver::DeliveryConfig;
use jobs::webhooks::ports::WebhookStore;
use jobs::webhooks::{Delivery, DeliveryState, backoff::Backoff};
use serde_json::{Value, json};

/// What the receiver saw: (when, signature verified, webhook-id, body, answered).
type Seen = Arc<Mutex<Vec<(Instant, bool, String, Value, u16)>>>;

/// A receiver that answers 500 to its first `fail_first` requests, then 204, and
/// checks each signature itself (Standard Webhooks: HMAC-SHA256 of
/// "{id}.{timestamp}.{body}" under the base64 key after `whsec_`).
async fn receiver(secret: Arc<Mutex<String>>, fail_first: usize) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            let secret = secret.lock().unwrap().clone();
            async move {
                let header = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let (id, ts, sig) = (
                    header("webhook-id"),
                    header("webhook-timestamp"),
                    header("webhook-signature"),
                );
                let key = base64::engine::general_purpose::STANDARD
                    .decode(secret.trim_start_matches("whsec_"))
                    .unwrap_or_default();
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{id}.{ts}.{body}").as_bytes());
                let expected = format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
                );
                let verified = !key.is_empty() && sig.split(' ').any(|s| s == expected);
                let mut log = log.lock().unwrap();
                let status = if log.len() < fail_first { 500 } else { 204 };
                let parsed = serde_json::from_str(&body).unwrap_or(Value::Null);
                log.push((Instant::now(), verified, id, parsed, status));
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    (format!("{}/hook", front(app).await), seen)
}

/// The record DynamoDB Streams delivers for a write of `new` over `old`.
fn stream_event(sequence: &str, old: &aws::stream::Item, new: &aws::stream::Item) -> Value {
    let keys: aws::stream::Item = new
        .iter()
        .filter(|(k, _)| *k == "pk" || *k == "sk")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json!({"Records": [{
        "eventID": format!("ev-{sequence}"),
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": chrono::Utc::now().timestamp() as f64,
            "Keys": aws::stream::image_of_item(&keys),
            "NewImage": aws::stream::image_of_item(new),
            "OldImage": aws::stream::image_of_item(old),
            "SequenceNumber": sequence,
            "SizeBytes": 512,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-12-07T00:00:00.000"
    }]})
}

/// Plays Lambda's SQS event source for `rounds`: receive, handle, delete the messages
/// not reported as failed. Returns the messages handled.
async fn drain(
    handler: &WebhooksHandler,
    queue: &aws::WebhookQueue,
    until: impl Fn() -> bool,
) -> usize {
    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let got = queue
            .receive(Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        if got.is_empty() {
            if until() {
                return handled;
            }
            continue;
        }
        let records: Vec<Value> = got
            .iter()
            .map(|m| {
                json!({
                    "messageId": m.message_id, "receiptHandle": m.receipt, "body": m.body,
                    "attributes": {}, "messageAttributes": {}, "md5OfBody": "",
                    "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:webhooks",
                    "awsRegion": "us-east-1"
                })
            })
            .collect();
        let answer = handler.handle(json!({ "Records": records })).await.unwrap();
        let failed: Vec<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| f["itemIdentifier"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        for m in &got {
            if !failed.contains(&m.message_id.as_str()) {
                queue.delete(&m.receipt).await.unwrap();
                handled += 1;
            }
        }
    }
    panic!("the delivery queue never settled");
}

async fn with_webhooks() -> Deployment {
    let (deployment, _ecs) = deployment().await;
    webhooks_on(deployment).await
}

async fn webhooks_on(mut deployment: Deployment) -> Deployment {
    aws::testing::enable_stream(&deployment.aws.table).await;
    deployment.webhooks.queue_url = Some(aws::testing::fresh_webhook_queue(5).await);
    // The receiver is on 127.0.0.1: the explicit setting for local testing.
    deployment.webhooks.allow_private = true;
    deployment
}

fn quick_retries() -> DeliveryConfig {
    DeliveryConfig {
        backoff: Backoff {
            first: Duration::from_secs(1),
            jitter: 0.0,
            ..Backoff::default()
        },
        timeout: Duration::from_secs(5),
        ..DeliveryConfig::default()
    }
}

/// An endpoint of tenant `acme` at a receiver failing its first `fail_first`
/// requests, and a job of `acme` canceled: returns the endpoint id, the job id, every
/// record of the table's stream as one Lambda event, the sequence number of the
/// cancel's record, and what the receiver saw.
async fn canceled_job(
    deployment: &Deployment,
    fail_first: usize,
) -> (String, String, Value, String, Seen) {
    let key = api_key(deployment, "acme").await;
    let submit = front(functions_common::submit_router(deployment)).await;
    let http = reqwest::Client::new();
    let secret = Arc::new(Mutex::new(String::new()));
    let (url, seen) = receiver(secret.clone(), fail_first).await;

    // Registered on AWS: the route no longer answers 501.
    let answer = http
        .post(format!("{submit}/api/v2/x-serverless-comfyui/webhooks"))
        .bearer_auth(&key)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 201);
    let endpoint: Value = answer.json().await.unwrap();
    *secret.lock().unwrap() = endpoint["secret"].as_str().unwrap().to_string();
    let endpoint_id = endpoint["id"].as_str().unwrap().to_string();

    let job: Value = http
        .post(format!("{submit}/api/v2/jobs"))
        .bearer_auth(&key)
        .json(&invert())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let canceled = http
        .post(format!("{submit}/api/v2/jobs/{id}/cancel"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status().as_u16(), 200);
    let table = aws::testing::clients()
        .await
        .dynamodb
        .describe_table()
        .table_name(&deployment.aws.table)
        .send()
        .await
        .unwrap();
    let arn = table
        .table()
        .unwrap()
        .latest_stream_arn()
        .unwrap()
        .to_string();
    let records = aws::testing::stream_records(&arn, None).await;
    let pk = json!({"S": format!("JOB#{id}")});
    let cancel = records
        .iter()
        .find(|r| {
            r["dynamodb"]["Keys"]["pk"] == pk
                && r["dynamodb"]["NewImage"]["status"]["S"] == "canceled"
        })
        .expect("the cancel's record on the stream");
    let sequence = cancel["dynamodb"]["SequenceNumber"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        records.len() > 2,
        "the stream carries every write, not only the job's moves"
    );
    (
        endpoint_id,
        id,
        json!({ "Records": records }),
        sequence,
        seen,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ends_on_the_table_is_delivered_signed_once_after_delayed_retries() {
    let deployment = with_webhooks().await;
    let (endpoint_id, id, event, sequence, seen) = canceled_job(&deployment, 2).await;
    let handler = WebhooksHandler::with_config(&deployment, quick_retries()).unwrap();
    for _ in 0..2 {
        // The second time is Lambda retrying the batch: no second delivery.
        let answer = handler.handle(event.clone()).await.unwrap();
        assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    }
    let delivery_id = Delivery::id_for(&sequence, &endpoint_id);

    let queue = aws::WebhookQueue::new(
        deployment.clients.sqs.clone(),
        deployment.webhooks.queue_url.clone().unwrap(),
    );
    let store = deployment.webhook_store();
    let settled = || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, _, _, _, status)| *status == 204)
    };
    drain(&handler, &queue, settled).await;
    // Anything still chained would show within a second more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drain(&handler, &queue, || true).await;

    let seen = seen.lock().unwrap().clone();
    let statuses: Vec<u16> = seen.iter().map(|s| s.4).collect();
    assert_eq!(
        statuses,
        vec![500, 500, 204],
        "one accepted delivery after two failures"
    );
    for (_, verified, webhook_id, body, _) in &seen {
        assert!(
            verified,
            "the signature verifies with the receiver's own HMAC"
        );
        assert_eq!(
            webhook_id, &delivery_id,
            "the same webhook-id on every attempt"
        );
        assert_eq!(body["type"], "job.canceled");
        assert_eq!(body["data"]["id"], id.as_str());
        assert_eq!(body["data"]["status"], "canceled");
    }
    // Each retry came from a re-sent, delayed message (backoff 1 s, then 2 s).
    assert!(
        seen[1].0 - seen[0].0 >= Duration::from_millis(900),
        "{:?}",
        seen[1].0 - seen[0].0
    );
    assert!(
        seen[2].0 - seen[1].0 >= Duration::from_millis(1900),
        "{:?}",
        seen[2].0 - seen[1].0
    );

    let delivery = store.get_delivery(&delivery_id).await.unwrap().unwrap();
    assert_eq!(
        (delivery.state, delivery.attempts),
        (DeliveryState::Delivered, 3)
    );
    let attempts = store.list_attempts("acme", &endpoint_id, 10).await.unwrap();
    assert_eq!(attempts.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_a_status_change_make_nothing_and_unknown_events_are_refused() {
    let deployment = with_webhooks().await;
    let handler = WebhooksHandler::with_config(&deployment, quick_retries()).unwrap();
    let queue = aws::WebhookQueue::new(
        deployment.clients.sqs.clone(),
        deployment.webhooks.queue_url.clone().unwrap(),
    );
    // A job's META whose status did not change (a lease renewal, say).
    let item = aws::stream::item_from_image(&json!({
        "pk": {"S": "JOB#01JEXAMPLE0000000000000000"}, "sk": {"S": "META"},
        "status": {"S": "running"}, "tenant": {"S": "acme"}
    }))
    .unwrap();
    let answer = handler
        .handle(stream_event("1", &item, &item))
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]));
    assert!(
        queue
            .receive(Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    // A message naming no delivery is dropped (not retried into the DLQ).
    let sqs = json!({"Records": [{"messageId": "m1", "receiptHandle": "r", "body": "{}",
        "eventSource": "aws:sqs", "attributes": {}, "messageAttributes": {}}]});
    let answer = handler.handle(sqs).await.unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]));
    let error = handler
        .handle(json!({"source": "aws.s3"}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("aws.s3"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tick_re_enqueues_a_delivery_whose_message_was_lost() {
    let clock = Arc::new(jobs::ports::ManualClock::new(chrono::Utc::now()));
    let (deployment, _ecs) = deployment_with(5, clock.clone()).await;
    let deployment = webhooks_on(deployment).await;
    let (endpoint_id, _, event, sequence, seen) = canceled_job(&deployment, 0).await;
    let handler = WebhooksHandler::with_config(&deployment, quick_retries()).unwrap();
    handler.handle(event).await.unwrap();
    let queue = aws::WebhookQueue::new(
        deployment.clients.sqs.clone(),
        deployment.webhooks.queue_url.clone().unwrap(),
    );
    // The message is lost (received and deleted, never handled).
    let lost = queue
        .receive(Duration::from_secs(2), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(lost.len(), 1);
    queue.delete(&lost[0].receipt).await.unwrap();

    // Due, but not long enough to be overdue: its own message might still come.
    assert_eq!(handler.relay().tick().await.unwrap().0, 0);
    clock.advance(chrono::Duration::minutes(3));
    assert_eq!(handler.relay().tick().await.unwrap().0, 1);
    // Claimed by the tick: a second tick does not enqueue it again.
    assert_eq!(handler.relay().tick().await.unwrap().0, 0);

    let seen_now = seen.clone();
    drain(&handler, &queue, move || {
        !seen_now.lock().unwrap().is_empty()
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].1 && seen[0].4 == 204);
    let delivery_id = Delivery::id_for(&sequence, &endpoint_id);
    let delivery = deployment
        .webhook_store()
        .get_delivery(&delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.state, DeliveryState::Delivered);
}

/// The record of DynamoDB deleting `old`: by TTL (`userIdentity` the DynamoDB service)
/// or, without it, by a caller.
fn removal(sequence: &str, old: &aws::stream::Item, by_ttl: bool) -> Value {
    let mut event = stream_event(sequence, old, old);
    let record = &mut event["Records"][0];
    record["eventName"] = json!("REMOVE");
    record["dynamodb"]
        .as_object_mut()
        .unwrap()
        .remove("NewImage");
    if by_ttl {
        record["userIdentity"] =
            json!({"type": "Service", "principalId": "dynamodb.amazonaws.com"});
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_deletion_of_an_output_item_releases_its_asset_and_bytes_and_nothing_else_does() {
    use jobs::model::{Asset, JobId, OutputKind, OutputRecord};
    let deployment = with_webhooks().await;
    let handler = WebhooksHandler::with_config(&deployment, quick_retries()).unwrap();
    let ports = deployment.ports();
    let job = JobId::generate();
    let asset = |id: &str, job: Option<&JobId>| Asset {
        v: 1,
        id: id.into(),
        tenant: "acme".into(),
        hash: format!(
            "blake3:{}",
            id.len().to_string().repeat(64).get(..64).unwrap()
        ),
        size_bytes: 3,
        content_type: "image/png".into(),
        file_path: Some("o.png".into()),
        tags: vec![],
        created_at: chrono::Utc::now(),
        blob_key: format!("outputs/{id}/1/o.png"),
        job_id: job.cloned(),
    };
    // The job's output, and an asset the user uploaded (no job).
    let output = asset("asset_out", Some(&job));
    let upload = asset("asset_upload_1", None);
    for a in [&output, &upload] {
        ports.store.put_asset(a).await.unwrap();
        ports
            .blobs
            .put(&a.blob_key, bytes::Bytes::from_static(b"png"), "image/png")
            .await
            .unwrap();
    }
    let out_item = |asset: &Asset| {
        let record = OutputRecord {
            node_id: "9".into(),
            name: "o.png".into(),
            kind: OutputKind::Image,
            content_type: "image/png".into(),
            size_bytes: 3,
            asset_id: asset.id.clone(),
            hash: Some(asset.hash.clone()),
            blob_key: asset.blob_key.clone(),
        };
        aws::stream::item_from_image(&json!({
            "pk": {"S": format!("JOB#{}", job.as_str())}, "sk": {"S": "OUT#00001#0000"},
            "body": {"S": serde_json::to_string(&record).unwrap()}, "ttl": {"N": "1"}
        }))
        .unwrap()
    };
    let exists = |a: &Asset| {
        let ports = ports.clone();
        let a = a.clone();
        async move {
            (
                ports.store.get_asset(&a.id).await.unwrap().is_some(),
                ports.blobs.get(&a.blob_key).await.unwrap().is_some(),
            )
        }
    };

    // A caller's delete of the item (not TTL) releases nothing.
    let answer = handler
        .handle(removal("10", &out_item(&output), false))
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]));
    assert_eq!(exists(&output).await, (true, true));
    // An output item naming an asset that is not the job's (an upload) releases nothing.
    handler
        .handle(removal("11", &out_item(&upload), true))
        .await
        .unwrap();
    assert_eq!(exists(&upload).await, (true, true));
    // TTL's deletion of the job's output item: the asset and its bytes go.
    for sequence in ["12", "12"] {
        // Twice: a retried batch finds it gone and is fine.
        let answer = handler
            .handle(removal(sequence, &out_item(&output), true))
            .await
            .unwrap();
        assert_eq!(answer["batchItemFailures"], json!([]));
    }
    assert_eq!(exists(&output).await, (false, false));
    assert_eq!(exists(&upload).await, (true, true));
}
