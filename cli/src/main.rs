//! `serverless-comfyui`: run ComfyUI workflows as a job API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serverless_comfyui::dev::{self, DevConfig};

#[derive(Parser)]
#[command(
    name = "serverless-comfyui",
    version,
    about = "Run ComfyUI workflows as a Comfy API v2 job API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole product on this machine: the API, the store and the queue.
    Dev {
        /// Address to serve the API on. Loopback only while no API keys exist.
        #[arg(
            long,
            default_value = "127.0.0.1:8787",
            env = "SERVERLESS_COMFYUI_LISTEN"
        )]
        listen: SocketAddr,
        /// Where jobs, queues and blobs are kept; survives restarts.
        #[arg(
            long,
            default_value = ".serverless-comfyui",
            env = "SERVERLESS_COMFYUI_DATA_DIR"
        )]
        data_dir: PathBuf,
        /// Seconds between ticks (the safety net that expires, repairs and scales).
        #[arg(long, default_value_t = 10)]
        tick_seconds: u64,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Dev {
            listen,
            data_dir,
            tick_seconds,
        } => {
            dev::run(DevConfig {
                listen,
                data_dir,
                tick_every: Duration::from_secs(tick_seconds.max(1)),
                ..DevConfig::default()
            })
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}
