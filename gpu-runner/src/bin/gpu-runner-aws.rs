//! `gpu-runner-aws`: the runner as an ECS task, over DynamoDB, S3 and SQS, configured
//! from the environment. See `gpu_runner::aws_env`.

fn main() -> std::process::ExitCode {
    if std::env::args().len() > 1 {
        eprintln!(
            "gpu-runner-aws takes no arguments: it reads its settings from the environment \
             (docs/runner.md lists them)"
        );
        return std::process::ExitCode::from(2);
    }
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
            eprintln!("gpu-runner-aws: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(gpu_runner::aws_env::run_from_env())
}
