//! `gpu-runner`: the runner as a process. See the library docs (`gpu_runner`).

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "gpu-runner",
    version,
    about = "Supervises ComfyUI and works through the job queue."
)]
struct Cli {
    #[command(flatten)]
    args: gpu_runner::cli::RunnerArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gpu-runner: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(gpu_runner::cli::run_cli(cli.args))
}
