//! Graphs checked against the node catalogue at submit (issue 15 §2): a typo'd class,
//! a checkpoint not installed and a number out of range are refused with 422 before
//! anything is stored, with ComfyUI's own `node_errors`; with no catalogue, a job is
//! accepted and says it went unchecked. The catalogue route answers with an ETag.

use axum::http::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

const SIM_CATALOGUE: &[u8] =
    include_bytes!("../../crates/comfyui-graph/tests/fixtures/object_info.sim.json");
const INSTALLED: &str = "v1-5-pruned-emaonly-fp16.safetensors";

async fn publish(t: &TestApp) -> jobs::catalogue::CatalogueRef {
    let ports = t.app.app.jobs().ports();
    jobs::catalogue::publish(
        ports.store.as_ref(),
        ports.blobs.as_ref(),
        ports.clock.as_ref(),
        SIM_CATALOGUE,
        "file:object_info.sim.json",
    )
    .await
    .unwrap()
}

fn txt2img(edit: impl FnOnce(&mut Value)) -> Value {
    let mut wf = workflow("txt2img-sd15.json");
    edit(&mut wf);
    json!({ "workflow": wf })
}

async fn job_count(t: &TestApp) -> usize {
    let list = t.get("/api/v2/jobs").await;
    list.body["jobs"].as_array().unwrap().len()
}

#[tokio::test]
async fn with_no_catalogue_a_job_is_accepted_and_says_it_went_unchecked() {
    let t = TestApp::new();
    let reply = t.submit(&txt2img(|_| {})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let message = reply.body["progress"]["message"].as_str().unwrap();
    assert!(message.contains("no node catalogue"), "{message}");
    let id = reply.body["id"].as_str().unwrap();
    let again = t.get(&format!("/api/v2/jobs/{id}")).await;
    let message = again.body["progress"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("waiting for a worker") && message.contains("no node catalogue"),
        "the wait and the note: {message}"
    );
}

#[tokio::test]
async fn a_checkpoint_not_installed_is_422_with_comfyuis_node_errors_and_nothing_stored() {
    let t = TestApp::new();
    let pointer = publish(&t).await;
    let reply = t.submit(&txt2img(|_| {})).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    let details = &reply.body["error"]["details"];
    assert_eq!(details["catalogue"], json!(pointer.hash));
    assert_eq!(details["error"]["type"], "prompt_outputs_failed_validation");
    let node = &details["node_errors"]["4"];
    assert_eq!(node["class_type"], "CheckpointLoaderSimple");
    assert_eq!(node["dependent_outputs"], json!(["9"]));
    assert_eq!(node["errors"][0]["type"], "value_not_in_list");
    assert_eq!(
        node["errors"][0]["extra_info"]["received_value"],
        "v1-5-pruned-emaonly.safetensors"
    );
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("ckpt_name"), "{message}");
    assert_eq!(job_count(&t).await, 0, "a refused graph leaves no job");
}

#[tokio::test]
async fn a_typo_in_a_class_and_a_number_out_of_range_are_422() {
    let t = TestApp::new();
    publish(&t).await;
    let typo = t
        .submit(&txt2img(|wf| {
            wf["4"]["inputs"]["ckpt_name"] = json!(INSTALLED);
            wf["3"]["class_type"] = json!("KSampler ");
        }))
        .await;
    assert_envelope(&typo, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    let error = &typo.body["error"]["details"]["error"];
    assert_eq!(error["type"], "invalid_prompt");
    assert_eq!(error["details"], "Node ID '#3'");

    let steps = t
        .submit(&txt2img(|wf| {
            wf["4"]["inputs"]["ckpt_name"] = json!(INSTALLED);
            wf["3"]["inputs"]["steps"] = json!(1_000_000);
        }))
        .await;
    assert_envelope(&steps, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    let e = &steps.body["error"]["details"]["node_errors"]["3"]["errors"][0];
    assert_eq!(e["type"], "value_bigger_than_max");
    assert_eq!(e["message"], "Value 1000000 bigger than max of 10000");
    assert_eq!(job_count(&t).await, 0);

    // The same graph with the model installed and the number in range runs, unnoted.
    let ok = t
        .submit(&txt2img(|wf| {
            wf["4"]["inputs"]["ckpt_name"] = json!(INSTALLED)
        }))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let message = ok.body["progress"]["message"].as_str().unwrap_or("");
    assert!(!message.contains("catalogue"), "{message}");
}

#[tokio::test]
async fn a_huge_wrong_value_is_answered_in_bounded_space() {
    let t = TestApp::new();
    publish(&t).await;
    let reply = t
        .submit(&txt2img(|wf| {
            wf["4"]["inputs"]["ckpt_name"] = json!("m".repeat(200_000));
        }))
        .await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");
    assert!(
        reply.body.to_string().len() < 8_000,
        "{} bytes",
        reply.body.to_string().len()
    );
}

#[tokio::test]
async fn the_publish_command_seeds_a_data_dir_that_dev_then_checks_against() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fixture = format!(
        "{}/../crates/comfyui-graph/tests/fixtures/object_info.sim.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_serverless-comfyui"))
        .args(["catalogue", "publish", "--file", &fixture, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("node classes  19"), "{printed}");

    let t = TestApp::in_dir(
        dir,
        std::sync::Arc::new(jobs::ports::SystemClock),
        jobs::api::DEFAULT_MAX_BODY_BYTES,
    );
    let reply = t.submit(&txt2img(|_| {})).await;
    assert_envelope(&reply, StatusCode::UNPROCESSABLE_ENTITY, "invalid_workflow");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_serverless-comfyui"))
        .args([
            "catalogue",
            "publish",
            "--comfyui-url",
            "http://127.0.0.1:9",
            "--data-dir",
        ])
        .arg(t.app.data_dir.root())
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an unreachable ComfyUI is an error");
}

#[tokio::test]
async fn the_catalogue_route_serves_the_latest_with_its_hash_as_etag() {
    let t = TestApp::new();
    let none = t.get("/api/v2/x-serverless-comfyui/catalogue").await;
    assert_envelope(&none, StatusCode::NOT_FOUND, "no_catalogue");

    let pointer = publish(&t).await;
    let got = t.get("/api/v2/x-serverless-comfyui/catalogue").await;
    assert_eq!(got.status, StatusCode::OK);
    let etag = got
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(etag, format!("\"{}\"", pointer.hash));
    let want: Value = serde_json::from_slice(SIM_CATALOGUE).unwrap();
    assert_eq!(got.body, want);
    assert_eq!(
        got.body["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0],
        json!([INSTALLED]),
        "the web app reads the installed models from it"
    );
    let source = got.headers["x-serverless-comfyui-catalogue-source"]
        .to_str()
        .unwrap();
    assert!(
        source.starts_with("file:object_info.sim.json at "),
        "{source}"
    );

    let revalidate = |tag: &str| {
        axum::http::Request::builder()
            .uri("/api/v2/x-serverless-comfyui/catalogue")
            .header("if-none-match", tag)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let same = t.send(revalidate(&etag)).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert_eq!(same.body, Value::Null);
    let stale = t.send(revalidate("\"blake3:00\", W/\"x\"")).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, want);
}

#[tokio::test]
async fn the_catalogue_route_needs_a_key_once_keys_exist() {
    let t = TestApp::new();
    publish(&t).await;
    let (key, _) = t.create_key("acme").await;
    let anonymous = t.get("/api/v2/x-serverless-comfyui/catalogue").await;
    assert_envelope(&anonymous, StatusCode::UNAUTHORIZED, "unauthorized");
    let request = axum::http::Request::builder()
        .uri("/api/v2/x-serverless-comfyui/catalogue")
        .body(axum::body::Body::empty())
        .unwrap();
    let keyed = t.send_as(Some(&key), request).await;
    assert_eq!(keyed.status, StatusCode::OK);
}
