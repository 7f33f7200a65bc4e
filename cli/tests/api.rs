//! The Comfy API v2 job routes, driven through `tower::ServiceExt::oneshot` over the
//! real local adapters (each test with its own data directory), no network.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, Utc};
use http_body_util::BodyExt;
use jobs::model::IdempotencyRecord;
use jobs::ports::{Clock, ManualClock, QueueName, SystemClock};
use serde_json::{Value, json};
use serverless_comfyui::dev::{DevApp, DevConfig};
use testkit::conformance::sample_job;
use tower::ServiceExt;

mod common;
use common::*;

#[tokio::test]
async fn submit_get_list_cancel_and_workflow() {
    let t = TestApp::new();
    let body = json!({
        "workflow": workflow("invert.json"),
        "metadata": {"project": "fox", "run": "1"},
        "extra_data": {"api_key_comfy_org": "secret-value"},
    });
    let created = t.submit(&body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let job = &created.body;
    let id = job["id"].as_str().unwrap();
    assert!(id.starts_with("job_") && id.len() == 30, "{id}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["queue_position"], 0);
    assert_eq!(job["started_at"], Value::Null);
    assert_eq!(job["outputs"], json!([]));
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["metadata"], json!({"project": "fox", "run": "1"}));
    assert_eq!(job["urls"]["self"], format!("/api/v2/jobs/{id}"));
    assert_eq!(job["urls"]["events"], format!("/api/v2/jobs/{id}/events"));
    assert_eq!(job["urls"]["cancel"], format!("/api/v2/jobs/{id}/cancel"));
    assert!(job["metrics"].as_object().unwrap().contains_key("queue_ms"));
    assert!(
        !job.to_string().contains("secret-value"),
        "extra_data never shows"
    );

    let read = t.get(&format!("/api/v2/jobs/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["id"], id);
    // With no node catalogue published, the wait says the graph went unchecked too.
    let message = read.body["progress"]["message"].as_str().unwrap();
    assert!(message.starts_with("waiting for a worker"), "{message}");

    let wf = t.get(&format!("/api/v2/jobs/{id}/workflow")).await;
    assert_eq!(wf.status, StatusCode::OK);
    assert_eq!(wf.body["workflow"], workflow("invert.json"));
    assert_eq!(wf.body["format"], "api");

    // A second job with other labels, then filters.
    let other = t
        .submit(&json!({"workflow": workflow("invert.json"), "metadata": {"project": "owl"}}))
        .await;
    let other_id = other.body["id"].as_str().unwrap();
    let all = t.get("/api/v2/jobs").await;
    let ids: Vec<&str> = all.body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![other_id, id], "newest first");
    assert!(
        all.body.get("next_cursor").is_none(),
        "no cursor on the last page"
    );
    let fox = t.get("/api/v2/jobs?metadata%5Bproject%5D=fox").await;
    assert_eq!(fox.body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(fox.body["jobs"][0]["id"], id);
    let both = t
        .get("/api/v2/jobs?metadata[project]=fox&metadata[run]=2")
        .await;
    assert_eq!(both.body["jobs"], json!([]));

    // Cancel is idempotent.
    let canceled = t
        .post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
        .await;
    assert_eq!(canceled.status, StatusCode::OK);
    assert_eq!(canceled.body["status"], "canceled");
    let again = t
        .post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["status"], "canceled");
    assert_eq!(again.body["completed_at"], canceled.body["completed_at"]);
}

#[tokio::test]
async fn unknown_jobs_are_404_envelopes() {
    let t = TestApp::new();
    for uri in [
        "/api/v2/jobs/job_01JZTGXW9Q2M4R8V0B1N3P5D7F",
        "/api/v2/jobs/not-a-job-id",
        "/api/v2/jobs/job_01JZTGXW9Q2M4R8V0B1N3P5D7F/workflow",
        "/api/v2/jobs/%00",
    ] {
        assert_envelope(&t.get(uri).await, StatusCode::NOT_FOUND, "not_found");
    }
    let cancel = t
        .post_raw(
            "/api/v2/jobs/job_01JZTGXW9Q2M4R8V0B1N3P5D7F/cancel",
            "",
            None,
        )
        .await;
    assert_envelope(&cancel, StatusCode::NOT_FOUND, "not_found");
    assert_envelope(
        &t.get("/api/v2/nothing").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let wrong_method = t
        .send(Request::delete("/api/v2/jobs").body(Body::empty()).unwrap())
        .await;
    assert_envelope(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    let wrong_method = t.post_raw("/api/v2/health", "{}", None).await;
    assert_envelope(
        &wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn every_shared_workflow_gets_its_exact_answer() {
    let t = TestApp::new();
    for name in [
        "invert.json",
        "load-blur.json",
        "batch-two-outputs.json",
        "txt2img-sd15.json",
    ] {
        let reply = t.submit(&json!({ "workflow": workflow(name) })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{name}: {}", reply.body);
    }
    let ui = t
        .submit(&json!({ "workflow": workflow("ui-format.json") }))
        .await;
    assert_envelope(&ui, StatusCode::UNPROCESSABLE_ENTITY, "workflow_format_ui");
    assert!(
        ui.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Export (API)")
    );
}

/// Malformed bodies: each gets its exact status and code, and none a 500.
#[tokio::test]
async fn malformed_bodies_get_exact_errors() {
    let t = TestApp::new();
    let node = |class: Value, inputs: Value| json!({"class_type": class, "inputs": inputs});
    let huge = "x".repeat(2 * 1024 * 1024);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let raw_cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        ("empty body", b"".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("whitespace", b"  \n".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("truncated", br#"{"workflow": {"1":"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("not json", b"workflow=1".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("non-utf8", b"{\"workflow\": \"\xff\xfe\"}".to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("trailing data", br#"{"workflow": {}} {}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "duplicate top-level keys",
            br#"{"workflow": {"1": {"class_type": "A", "inputs": {}}}, "workflow": {}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "duplicate node ids",
            br#"{"workflow": {"1": {"class_type": "A", "inputs": {}}, "1": {"class_type": "B", "inputs": {}}}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("deep nesting", format!("{{\"workflow\": {deep}}}").into_bytes(), StatusCode::BAD_REQUEST, "invalid_request"),
        ("lone surrogate escape", br#"{"workflow": "\ud800"}"#.to_vec(), StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (name, body, status, code) in raw_cases {
        let reply = t.post_raw("/api/v2/jobs", body, None).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert_eq!(reply.body["error"]["code"], code, "{name}: {}", reply.body);
    }

    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        (
            "array body",
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "string body",
            json!("hello"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "empty object body",
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "workflow null",
            json!({"workflow": null}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "workflow array",
            json!({"workflow": [1]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "workflow string",
            json!({"workflow": "{}"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "empty graph",
            json!({"workflow": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "node not object",
            json!({"workflow": {"1": 5}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "class_type number",
            json!({"workflow": {"1": node(json!(7), json!({}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "class_type missing",
            json!({"workflow": {"1": {"inputs": {}}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "class_type empty",
            json!({"workflow": {"1": node(json!(""), json!({}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "inputs array",
            json!({"workflow": {"1": node(json!("A"), json!([]))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "inputs missing",
            json!({"workflow": {"1": {"class_type": "A"}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "numeric link id",
            json!({"workflow": {"1": node(json!("A"), json!({})), "2": node(json!("B"), json!({"x": [1, 0]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "link index string",
            json!({"workflow": {"1": node(json!("A"), json!({})), "2": node(json!("B"), json!({"x": ["1", "0"]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "link index negative",
            json!({"workflow": {"1": node(json!("A"), json!({})), "2": node(json!("B"), json!({"x": ["1", -1]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "link too long",
            json!({"workflow": {"1": node(json!("A"), json!({})), "2": node(json!("B"), json!({"x": ["1", 0, 0]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "link to missing node",
            json!({"workflow": {"2": node(json!("B"), json!({"x": ["9", 0]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "self loop",
            json!({"workflow": {"1": node(json!("A"), json!({"x": ["1", 0]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "two-node cycle",
            json!({"workflow": {"1": node(json!("A"), json!({"x": ["2", 0]})), "2": node(json!("B"), json!({"y": ["1", 0]}))}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
        ),
        (
            "ui format",
            json!({"workflow": {"nodes": [], "links": []}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "workflow_format_ui",
        ),
        (
            "ui format inside prompt",
            json!({"workflow": {"prompt": {"nodes": [], "links": []}}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "workflow_format_ui",
        ),
        (
            "webhook_url reserved",
            json!({"workflow": workflow("invert.json"), "webhook_url": "https://x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_field",
        ),
        (
            "inputs reserved",
            json!({"workflow": workflow("invert.json"), "inputs": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_field",
        ),
        (
            "unknown field",
            json!({"workflow": workflow("invert.json"), "metdata": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
        ),
        (
            "metadata not object",
            json!({"workflow": workflow("invert.json"), "metadata": ["a"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata number value",
            json!({"workflow": workflow("invert.json"), "metadata": {"a": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata null value",
            json!({"workflow": workflow("invert.json"), "metadata": {"a": null}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata 17 pairs",
            json!({"workflow": workflow("invert.json"), "metadata": (0..17).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata long key",
            json!({"workflow": workflow("invert.json"), "metadata": {"k".repeat(65): "v"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata long value",
            json!({"workflow": workflow("invert.json"), "metadata": {"k": "v".repeat(513)}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "metadata empty key",
            json!({"workflow": workflow("invert.json"), "metadata": {"": "v"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "metadata_invalid",
        ),
        (
            "extra_data empty",
            json!({"workflow": workflow("invert.json"), "extra_data": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_extra_data",
        ),
        (
            "extra_data string",
            json!({"workflow": workflow("invert.json"), "extra_data": "k"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_extra_data",
        ),
        (
            "huge string in a valid node",
            json!({"workflow": {"1": node(json!("A"), json!({"text": huge}))}}),
            StatusCode::CREATED,
            "",
        ),
        (
            "numeric-looking node ids",
            json!({"workflow": {"10": node(json!("A"), json!({})), "2": node(json!("B"), json!({"x": ["10", 0]}))}}),
            StatusCode::CREATED,
            "",
        ),
    ];
    for (name, body, status, code) in cases {
        let reply = t.submit(&body).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        if !code.is_empty() {
            assert_eq!(reply.body["error"]["code"], code, "{name}: {}", reply.body);
        }
    }

    // Per-node details name the node and the field.
    let reply = t
        .submit(&json!({"workflow": {"1": node(json!("A"), json!({})), "2": node(json!(3), json!({"x": ["9", 0]}))}}))
        .await;
    let errors = &reply.body["error"]["details"]["node_errors"]["2"];
    let reasons: Vec<&str> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["invalid_class_type", "missing_link_source"]);
    assert_eq!(errors[1]["field"], "x");

    // A saved /prompt body is unwrapped.
    let saved = json!({"workflow": {"prompt": workflow("invert.json"), "client_id": "abc"}});
    let reply = t.submit(&saved).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let wf = t
        .get(&format!(
            "/api/v2/jobs/{}/workflow",
            reply.body["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(wf.body["workflow"], workflow("invert.json"));
}

#[tokio::test]
async fn oversized_body_is_413_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let t = TestApp::in_dir(dir, Arc::new(SystemClock), 1024);
    let big = json!({"workflow": {"1": {"class_type": "A", "inputs": {"t": "x".repeat(4096)}}}});
    let reply = t.submit(&big).await;
    assert_envelope(&reply, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn idempotent_replay_and_key_reuse() {
    let t = TestApp::new();
    let body = invert().to_string();
    let first = t
        .post_raw("/api/v2/jobs", body.clone(), Some("key-1"))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotency-replayed").is_none());
    let replay = t
        .post_raw("/api/v2/jobs", body.clone(), Some("key-1"))
        .await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(
        replay.body["id"], first.body["id"],
        "same job, no second execution"
    );

    let different =
        json!({"workflow": workflow("invert.json"), "metadata": {"x": "y"}}).to_string();
    let reuse = t.post_raw("/api/v2/jobs", different, Some("key-1")).await;
    assert_envelope(
        &reuse,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reuse",
    );

    let bad_key = t
        .post_raw("/api/v2/jobs", body.clone(), Some("has space"))
        .await;
    assert_envelope(&bad_key, StatusCode::BAD_REQUEST, "invalid_request");

    let listed = t.get("/api/v2/jobs").await;
    assert_eq!(
        listed.body["jobs"].as_array().unwrap().len(),
        1,
        "one job for one key"
    );
    let depth = t
        .app
        .state
        .jobs
        .ports()
        .queue
        .depth(QueueName::Work)
        .await
        .unwrap();
    assert_eq!(depth.visible, 1, "one work message for one key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_with_one_key_make_one_job() {
    let t = Arc::new(TestApp::new());
    let body = invert().to_string();
    // Real parallelism: each submit on its own task, racing for the key.
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let (t, body) = (t.clone(), body.clone());
            tokio::spawn(async move { t.post_raw("/api/v2/jobs", body, Some("same-key")).await })
        })
        .collect();
    let mut replies = Vec::new();
    for attempt in attempts {
        replies.push(attempt.await.unwrap());
    }
    let mut ids = std::collections::BTreeSet::new();
    for reply in &replies {
        match reply.status {
            StatusCode::CREATED => {
                ids.insert(reply.body["id"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => {
                assert_eq!(reply.body["error"]["code"], "idempotency_conflict");
                assert_eq!(reply.headers.get("retry-after").unwrap(), "1");
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    assert_eq!(ids.len(), 1, "every success names the same job: {ids:?}");
    let listed = t.get("/api/v2/jobs").await;
    assert_eq!(listed.body["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn in_flight_key_is_409_then_replay_reenqueues() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let body = invert().to_string();
    // Simulate a first request that recorded its job and then died before enqueuing.
    let ports = t.app.state.jobs.ports();
    let job = sample_job(jobs::auth::DEFAULT_TENANT, clock.now(), &[]);
    let input = json!({"v": 1, "workflow": workflow("invert.json")});
    ports
        .blobs
        .put(&job.input_key, input.to_string().into(), "application/json")
        .await
        .unwrap();
    let record = IdempotencyRecord {
        v: 1,
        tenant: job.tenant.clone(),
        key: "dying".into(),
        fingerprint: sha2_fingerprint(body.as_bytes()),
        job_id: job.id.clone(),
        created_at: clock.now(),
        expires_at: clock.now() + Duration::hours(24),
    };
    ports
        .store
        .create_job(&job, Some(&record), clock.now())
        .await
        .unwrap();

    let conflict = t
        .post_raw("/api/v2/jobs", body.clone(), Some("dying"))
        .await;
    assert_envelope(&conflict, StatusCode::CONFLICT, "idempotency_conflict");
    assert_eq!(conflict.headers.get("retry-after").unwrap(), "1");

    clock.advance(Duration::seconds(11));
    let replay = t
        .post_raw("/api/v2/jobs", body.clone(), Some("dying"))
        .await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.body);
    assert_eq!(replay.headers.get("idempotency-replayed").unwrap(), "true");
    assert_eq!(replay.body["id"], job.id.as_str());
    let stored = ports.store.get_job(&job.id).await.unwrap().unwrap();
    assert!(stored.enqueued, "the replay enqueued the job");
    assert_eq!(ports.queue.depth(QueueName::Work).await.unwrap().visible, 1);

    // Keys last 24 hours.
    clock.advance(Duration::hours(25));
    let fresh = t.post_raw("/api/v2/jobs", body, Some("dying")).await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert!(fresh.headers.get("idempotency-replayed").is_none());
    assert_ne!(
        fresh.body["id"],
        job.id.as_str(),
        "an expired key makes a new job"
    );
}

fn sha2_fingerprint(bytes: &[u8]) -> String {
    // The documented fingerprint: SHA-256 of the request body, hex.
    use std::fmt::Write;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    digest.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[tokio::test]
async fn list_pages_with_mac_cursors() {
    let t = TestApp::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        let reply = t
            .submit(&json!({"workflow": workflow("invert.json"), "metadata": {"batch": "p", "i": i.to_string()}}))
            .await;
        ids.push(reply.body["id"].as_str().unwrap().to_string());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut uri = "/api/v2/jobs?metadata[batch]=p&limit=3".to_string();
    loop {
        let page = t.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        for job in page.body["jobs"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_string());
        }
        match page.body.get("next_cursor").and_then(Value::as_str) {
            Some(cursor) => uri = format!("/api/v2/jobs?metadata[batch]=p&limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "all pages, newest first, no repeats");

    let first = t.get("/api/v2/jobs?metadata[batch]=p&limit=3").await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    // A cursor is bound to its filter.
    let moved = t
        .get(&format!("/api/v2/jobs?limit=3&cursor={cursor}"))
        .await;
    assert_envelope(&moved, StatusCode::BAD_REQUEST, "invalid_cursor");
    let (id_part, _) = cursor.split_once('.').unwrap();
    let forged = t
        .get(&format!(
            "/api/v2/jobs?metadata[batch]=p&cursor={id_part}.AAAAAAAAAAAAAAAAAAAAAA"
        ))
        .await;
    assert_envelope(&forged, StatusCode::BAD_REQUEST, "invalid_cursor");
    for bad in ["limit=0", "limit=101", "limit=x", "status=queued"] {
        assert_envelope(
            &t.get(&format!("/api/v2/jobs?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    for bad in ["metadata[]=x", "metadata[a]=1&metadata[a]=2"] {
        assert_envelope(
            &t.get(&format!("/api/v2/jobs?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_metadata_filter",
        );
    }
}

#[tokio::test]
async fn health_reports_store_queue_and_no_workers() {
    let t = TestApp::new();
    t.submit(&invert()).await;
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(health.body["store"], json!({"kind": "sqlite", "ok": true}));
    assert_eq!(health.body["queue"]["depth"], 1);
    assert_eq!(health.body["workers"]["busy"], 0);
    assert_eq!(health.body["workers"]["idle"], 0);
}

/// A runner that refuses jobs (a custom node class its manifest promised is missing)
/// shows in health with its reason; the fields are additive.
#[tokio::test]
async fn health_names_why_a_runner_refuses_jobs() {
    let t = TestApp::new();
    let now = Utc::now();
    let store = &t.app.state.jobs.ports().store;
    for (id, phase, detail) in [
        (
            "runner-a",
            jobs::ports::WorkerPhase::Refusing,
            "custom node classes missing from ComfyUI: ImageResizeKJ",
        ),
        (
            "runner-b",
            jobs::ports::WorkerPhase::Idle,
            "gpu-runner pid 2",
        ),
    ] {
        store
            .put_worker(&jobs::ports::WorkerRecord {
                v: jobs::model::SCHEMA_VERSION,
                id: id.into(),
                phase,
                heartbeat_at: now,
                launched_at: now,
                detail: detail.into(),
            })
            .await
            .unwrap();
    }
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["workers"]["idle"], 1);
    assert_eq!(health.body["workers"]["refusing"], 1);
    assert_eq!(
        health.body["workers"]["refusals"],
        json!(["runner-a: custom node classes missing from ComfyUI: ImageResizeKJ"])
    );
}

#[tokio::test]
async fn jobs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let id = {
        let config = DevConfig {
            data_dir: data.join("data"),
            ..DevConfig::default()
        };
        let app = DevApp::build(&config, Arc::new(SystemClock)).unwrap();
        let reply = app
            .router()
            .oneshot(
                Request::post("/api/v2/jobs")
                    .header("content-type", "application/json")
                    .body(Body::from(invert().to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED);
        let bytes = reply.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let t = TestApp::in_dir(
        dir,
        Arc::new(SystemClock),
        jobs::api::DEFAULT_MAX_BODY_BYTES,
    );
    let read = t.get(&format!("/api/v2/jobs/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["status"], "queued");
    let wf = t.get(&format!("/api/v2/jobs/{id}/workflow")).await;
    assert_eq!(wf.body["workflow"], workflow("invert.json"));
    assert_eq!(
        t.app
            .state
            .jobs
            .ports()
            .queue
            .depth(QueueName::Work)
            .await
            .unwrap()
            .visible,
        1
    );
}

#[tokio::test]
async fn tick_expires_jobs_queued_too_long() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let t = TestApp::with_clock(clock.clone());
    let id = t.submit(&invert()).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let report = t.app.dispatcher.tick().await;
    assert_eq!(report.expired, 0);
    clock.advance(Duration::hours(1) + Duration::seconds(1));
    let report = t.app.dispatcher.tick().await;
    assert_eq!(report.expired, 1);
    let job = t.get(&format!("/api/v2/jobs/{id}")).await;
    assert_eq!(job.body["status"], "expired");
    assert_eq!(job.body["error"]["code"], "queue_timeout");
}

/// Opens a job's event stream, keeping the response (and so the stream) open.
async fn open_events(t: &TestApp, id: &str) -> axum::response::Response {
    t.app
        .router()
        .oneshot(
            Request::get(format!("/api/v2/jobs/{id}/events"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

/// Reads SSE frames from a response body until the stream ends or `limit` passes.
async fn read_sse(body: Body, limit: std::time::Duration) -> Vec<(String, Value)> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut text = String::new();
    let _ = tokio::time::timeout(limit, async {
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    text.split("\n\n")
        .filter_map(|frame| {
            let name = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn events_stream_snapshot_then_terminal_status() {
    let t = TestApp::new();
    let id = t.submit(&invert()).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let response = open_events(&t, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(read_sse(
        response.into_body(),
        std::time::Duration::from_secs(10),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    t.post_raw(&format!("/api/v2/jobs/{id}/cancel"), "", None)
        .await;
    let frames = reader.await.unwrap();
    let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(frames[0].0, "status", "snapshot first: {names:?}");
    assert_eq!(frames[0].1["status"], "queued");
    assert_eq!(frames[0].1["queue_position"], 0);
    assert!(names.contains(&"progress"), "{names:?}");
    assert!(
        names.contains(&"log"),
        "queue news as a log line: {names:?}"
    );
    let last = frames.last().unwrap();
    assert_eq!(last.0, "status", "ends with the terminal status: {names:?}");
    assert_eq!(last.1["status"], "canceled");
}

#[tokio::test]
async fn events_stream_is_capped_per_tenant() {
    let t = TestApp::new();
    let id = t.submit(&invert()).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut open = Vec::new();
    for _ in 0..16 {
        let response = open_events(&t, &id).await;
        assert_eq!(response.status(), StatusCode::OK);
        open.push(response);
    }
    let refused = t.get(&format!("/api/v2/jobs/{id}/events")).await;
    assert_envelope(&refused, StatusCode::TOO_MANY_REQUESTS, "too_many_streams");
    assert!(refused.headers.contains_key("retry-after"));
    drop(open);
    // Closed streams free their slots (the server notices on its next write).
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let response = open_events(&t, &id).await;
    assert_eq!(response.status(), StatusCode::OK);
    let unknown = t
        .get("/api/v2/jobs/job_01JZTGXW9Q2M4R8V0B1N3P5D7F/events")
        .await;
    assert_envelope(&unknown, StatusCode::NOT_FOUND, "not_found");
}
