//! Cold init of the four Lambda functions: process start → the first request to
//! the Lambda Runtime API (`GET /2018-06-01/runtime/invocation/next`), which is the
//! moment a function says it is ready for its first event. Target: ≤ 30 ms.
//!
//! Runs the built `bootstrap` binaries (`scripts/lambda-build.sh` first) against a
//! minimal Runtime API emulator, an axum server on 127.0.0.1 that notes when `next`
//! arrives and never answers it. The environment is what Lambda and the template
//! set, with dummy resource names and credentials: nothing is called before the
//! first event, so nothing needs to exist.
//!
//! ```text
//! scripts/lambda-build.sh
//! cargo bench -p functions-common --bench cold_init --profile dev
//! ```
//!
//! (`--profile dev`: what is measured is the release binaries; the harness itself
//! needs no optimised build.)
//!
//! `COLD_INIT_RUNS` (default 21) runs per function; `LAMBDA_TARGET_DIR` (default
//! `$CARGO_TARGET_DIR` or `target`) holds `lambda/<function>/bootstrap.zip` and the
//! x86_64 release binary the zip holds as `bootstrap`. Real
//! Lambda adds its sandbox start, and the first SDK call a TLS handshake.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::sync::mpsc;

const FUNCTIONS: [&str; 4] = ["submit", "status", "dispatch", "webhooks"];

fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::var_os("LAMBDA_TARGET_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The environment Lambda gives a function, plus the template's variables.
fn environment(function: &str, runtime_api: &str) -> Vec<(String, String)> {
    let queue =
        |name: &str| format!("https://sqs.us-east-1.amazonaws.com/123456789012/bench-{name}");
    [
        ("AWS_LAMBDA_RUNTIME_API", runtime_api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("bench-{function}")),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".into()),
        ("AWS_LAMBDA_LOG_LEVEL", "INFO".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCHONLY".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret".into()),
        ("AWS_SESSION_TOKEN", "bench-token".into()),
        ("SERVERLESS_COMFYUI_TABLE", "bench-table".into()),
        ("SERVERLESS_COMFYUI_BUCKET", "bench-bucket".into()),
        ("SERVERLESS_COMFYUI_WORK_QUEUE_URL", queue("work")),
        ("SERVERLESS_COMFYUI_WAKE_QUEUE_URL", queue("wake")),
        ("SERVERLESS_COMFYUI_WORK_DLQ_URL", queue("work-dlq")),
        ("SERVERLESS_COMFYUI_WAKE_DLQ_URL", queue("wake-dlq")),
        ("SERVERLESS_COMFYUI_WEBHOOK_QUEUE_URL", queue("webhooks")),
        ("SERVERLESS_COMFYUI_ECS_CLUSTER", "bench-cluster".into()),
        ("SERVERLESS_COMFYUI_TASK_DEFINITION", "bench-runner".into()),
        ("SERVERLESS_COMFYUI_CAPACITY_PROVIDER", "bench-gpu".into()),
        (
            "SERVERLESS_COMFYUI_ECS_STARTED_BY",
            "serverless-comfyui".into(),
        ),
        ("SERVERLESS_COMFYUI_MAX_WORKERS", "2".into()),
        ("SERVERLESS_COMFYUI_MIN_WARM_WORKERS", "0".into()),
        ("SERVERLESS_COMFYUI_QUEUE_TIMEOUT_SECONDS", "3600".into()),
        ("SERVERLESS_COMFYUI_MAX_ATTEMPTS", "3".into()),
        ("SERVERLESS_COMFYUI_RETENTION_DAYS", "7".into()),
        ("SERVERLESS_COMFYUI_IDEMPOTENCY_TTL_HOURS", "24".into()),
        ("SERVERLESS_COMFYUI_UPLOAD_TTL_MINUTES", "60".into()),
        (
            "SERVERLESS_COMFYUI_ALLOWED_ORIGINS",
            "https://comfy.example.com".into(),
        ),
        ("SERVERLESS_COMFYUI_CURSOR_KEY", "k".repeat(64)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One cold start: spawn → `next`, in milliseconds.
async fn one_start(
    binary: &PathBuf,
    function: &str,
    runtime_api: &str,
    arrivals: &mut mpsc::UnboundedReceiver<Instant>,
) -> Result<f64, String> {
    while arrivals.try_recv().is_ok() {}
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs(environment(function, runtime_api))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let arrived = tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await;
    let _ = child.start_kill();
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    match arrived {
        Ok(Some(at)) => Ok((at - started).as_secs_f64() * 1000.0),
        _ => Err(format!(
            "{function} never asked for an event; its stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("COLD_INIT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let (tx, mut arrivals) = mpsc::unbounded_channel();
    let emulator = Router::new().route(
        "/2018-06-01/runtime/invocation/next",
        get(move || {
            let _ = tx.send(Instant::now());
            // Never answers: the function waits here for its first event.
            std::future::pending::<&'static str>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runtime_api = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, emulator).await.unwrap() });

    let dir = target_dir().join("lambda");
    println!(
        "cold init: process start → first Runtime API `next`, {runs} runs each (target ≤ 30 ms)"
    );
    println!(
        "{:<9} {:>9} {:>9} {:>9} {:>10}",
        "function", "median", "min", "max", "zip"
    );
    let mut failed = false;
    for function in FUNCTIONS {
        // `--output-format zip` keeps only the zip; its `bootstrap` is this binary.
        let binary = [
            dir.join(function).join("bootstrap"),
            target_dir()
                .join("x86_64-unknown-linux-gnu/release")
                .join(function),
        ]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| dir.join(function).join("bootstrap"));
        let zip = std::fs::metadata(dir.join(function).join("bootstrap.zip"))
            .map(|m| format!("{:.2} MB", m.len() as f64 / 1e6))
            .unwrap_or_else(|_| "-".into());
        if !binary.exists() {
            println!(
                "{function:<9} not built: run scripts/lambda-build.sh ({} missing)",
                binary.display()
            );
            failed = true;
            continue;
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            match one_start(&binary, function, &runtime_api, &mut arrivals).await {
                Ok(ms) => times.push(ms),
                Err(e) => {
                    println!("{function:<9} failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        if times.is_empty() {
            continue;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{function:<9} {:>6.1} ms {:>6.1} ms {:>6.1} ms {zip:>10}",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1]
        );
    }
    if failed {
        std::process::exit(1);
    }
}
