//! Scale from zero in `dev`, through the dispatch decision, with a simulated cloud: a
//! launcher that boots slowly and can run out of capacity, wrapped around real runner
//! subprocesses on an in-process ComfyUI simulator.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use jobs::ports::SystemClock;
use local::launcher::{RunnerCommand, SimulatedLauncher, SubprocessLauncher};
use serde_json::Value;
use serverless_comfyui::dev::{DevApp, DevConfig};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_zero_with_capacity_failures_then_idle_exit() {
    let simulator = comfyui_sim::Simulator::start(comfyui_sim::SimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = DevConfig {
        data_dir: data_dir.clone(),
        ..DevConfig::default()
    };
    let runner = RunnerCommand {
        program: env!("CARGO_BIN_EXE_serverless-comfyui").into(),
        args: [
            "runner",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--idle-timeout",
            "2",
            "--lease-seconds",
            "6",
        ]
        .map(String::from)
        .to_vec(),
    };
    let launcher = Arc::new(SimulatedLauncher::new(
        SubprocessLauncher::new(runner, vec![simulator.base_url()]),
        Duration::from_millis(300),
    ));
    launcher.set_out_of_capacity(true);
    let app =
        DevApp::build_with_launcher(&config, Arc::new(SystemClock), Some((launcher.clone(), 1)))
            .unwrap();
    let t = TestApp::from_app(app, dir);

    let id = t.submit(&invert()).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let report = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(report.desired, 1, "one queued job wants one worker");
    assert_eq!(report.launched, 0);
    assert_eq!(report.capacity_error.as_deref(), Some("VcpuLimitExceeded"));

    let health = t.get("/api/v2/health").await;
    assert_eq!(health.body["capacity"]["state"], "failing");
    assert_eq!(health.body["capacity"]["message"], "VcpuLimitExceeded");
    assert_eq!(health.body["launcher"], "simulated");
    // The job says why it waits (the fleet item is cached for a second on reads).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let waiting = t.get(&format!("/api/v2/jobs/{id}")).await;
    assert_eq!(waiting.body["status"], "queued");
    // (Followed by the note that no node catalogue checked the graph: no runner ran yet.)
    let message = waiting.body["progress"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("waiting for GPU capacity: VcpuLimitExceeded"),
        "{message}"
    );

    // Capacity comes back: the next decision launches, after the boot delay.
    launcher.set_out_of_capacity(false);
    let report = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(report.launched, 1);
    assert_eq!(report.capacity_error, None);
    assert_eq!(launcher.inner().running(), 1);
    let again = t.app.dispatcher.scale().await.unwrap();
    assert_eq!(
        again.launched, 0,
        "a starting worker covers the job: no double launch"
    );

    let done = wait_for(
        &t,
        &id,
        |job| job["status"] == "succeeded",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(done["outputs"].as_array().unwrap().len(), 1);
    let health = t.get("/api/v2/health").await;
    assert_eq!(health.body["capacity"]["state"], "ok");

    // With nothing to do the runner exits and leaves the registry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while launcher.inner().running() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runner did not exit when idle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let workers = t.app.state.jobs.ports().store.list_workers().await.unwrap();
    assert!(
        workers.is_empty(),
        "the idle runner deregistered: {workers:?}"
    );
    simulator.shutdown().await;
}

async fn wait_for(t: &TestApp, id: &str, done: impl Fn(&Value) -> bool, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let reply = t.get(&format!("/api/v2/jobs/{id}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        if done(&reply.body) {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not get there: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
