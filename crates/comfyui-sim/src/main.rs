//! `comfyui-sim`: run the ComfyUI simulator as a process.
//!
//! ```text
//! cargo run -p comfyui-sim -- --port 8188
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use comfyui_sim::{Faults, SimConfig, Simulator};

/// A protocol-faithful ComfyUI 0.3.64 simulator (not ComfyUI: no Python, no models).
#[derive(Debug, Parser)]
#[command(name = "comfyui-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Port (0 picks a free one; the log says which).
    #[arg(long, default_value_t = 8188)]
    port: u16,
    /// Root for input/, output/ and temp/ (default: a temporary directory).
    #[arg(long)]
    base_directory: Option<PathBuf>,
    #[arg(long)]
    input_directory: Option<PathBuf>,
    #[arg(long)]
    output_directory: Option<PathBuf>,
    /// The temp folder itself.
    #[arg(long)]
    temp_directory: Option<PathBuf>,
    /// Time per KSampler step in ms (one progress tick each).
    #[arg(long, default_value_t = 50)]
    step_ms: u64,
    /// Simulated time of the other model nodes in ms.
    #[arg(long, default_value_t = 200)]
    model_node_ms: u64,
    /// A checkpoint name the loader offers (repeatable).
    #[arg(long = "checkpoint")]
    checkpoints: Vec<String>,
    /// Send latent previews at every sampler step.
    #[arg(long)]
    previews: bool,
    /// Serve the newer jobs API (/api/jobs/{id}, /api/jobs/{id}/cancel).
    #[arg(long)]
    jobs_api: bool,
    /// With --jobs-api: answer its cancel route with 405, as ComfyUI 0.8.0 does.
    #[arg(long)]
    jobs_api_without_cancel: bool,
    /// Reject non-canonical prompt_ids like newer servers.
    #[arg(long)]
    strict_prompt_id: bool,
    /// Turn the origin check off and send CORS headers (like --enable-cors-header).
    #[arg(long, num_args = 0..=1, default_missing_value = "*")]
    enable_cors_header: Option<String>,
    /// Request size limit in MB.
    #[arg(long, default_value_t = 100)]
    max_upload_size: u64,
    /// Fault: exit the process at the next node start.
    #[arg(long)]
    fault_crash: bool,
    /// Fault: hang at the next node start.
    #[arg(long)]
    fault_hang: bool,
    /// Fault: drop every WebSocket at the next node start.
    #[arg(long)]
    fault_drop_ws: bool,
    /// Fault: answer 500 on every ComfyUI route.
    #[arg(long)]
    fault_http_500: bool,
    /// Fault: extra time per node, in ms.
    #[arg(long, default_value_t = 0)]
    fault_slow_node_ms: u64,
    /// Fault: extra latency per HTTP request, in ms.
    #[arg(long, default_value_t = 0)]
    fault_slow_http_ms: u64,
    /// Fault: the worker thread dies at the next prompt; the queue stalls.
    #[arg(long)]
    fault_kill_worker: bool,
    /// Restrict crash/hang/drop-ws faults to this node id.
    #[arg(long)]
    fault_at_node: Option<String>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
    let defaults = SimConfig::default();
    let config = SimConfig {
        bind: SocketAddr::new(args.listen, args.port),
        base_dir: args.base_directory,
        input_dir: args.input_directory,
        output_dir: args.output_directory,
        temp_dir: args.temp_directory,
        step_ms: args.step_ms,
        model_node_ms: args.model_node_ms,
        checkpoints: if args.checkpoints.is_empty() {
            defaults.checkpoints
        } else {
            args.checkpoints
        },
        previews: args.previews,
        jobs_api: args.jobs_api,
        jobs_api_cancel: !args.jobs_api_without_cancel,
        strict_prompt_id: args.strict_prompt_id,
        cors_origin: args.enable_cors_header,
        max_upload_size_mb: args.max_upload_size,
        crash_exits_process: true,
        faults: Faults {
            crash: args.fault_crash,
            hang: args.fault_hang,
            drop_ws: args.fault_drop_ws,
            http_500: args.fault_http_500,
            slow_node_ms: args.fault_slow_node_ms,
            slow_http_ms: args.fault_slow_http_ms,
            kill_worker: args.fault_kill_worker,
            at_node: args.fault_at_node,
        },
    };
    let sim = Simulator::start(config)
        .await
        .context("starting comfyui-sim")?;
    // The only line on stdout, for parents that parse it (logs go to stderr).
    println!(
        "comfyui-sim (a ComfyUI SIMULATOR, not ComfyUI) listening on {}",
        sim.base_url()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if sim.is_stopped() { break; }
            }
        }
    }
    sim.shutdown().await;
    Ok(())
}
