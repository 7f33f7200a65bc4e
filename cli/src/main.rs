//! `serverless-comfyui`: run ComfyUI workflows as a job API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serverless_comfyui::client;
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
        /// A ComfyUI server to run jobs on (repeatable: one runner each). Without it,
        /// jobs run on the built-in ComfyUI simulator, announced loudly.
        #[arg(long = "comfyui", value_name = "URL")]
        comfyui: Vec<String>,
        /// A runner with nothing to do for this long exits; work starts one again.
        #[arg(long, default_value_t = 60)]
        runner_idle_seconds: u64,
        /// Serve the API only: accept jobs but start no runner.
        #[arg(long)]
        no_runner: bool,
        /// Sampler step time of the built-in simulator, in milliseconds.
        #[arg(long, default_value_t = 50)]
        simulator_step_ms: u64,
        /// A web origin (`https://app.example.com`) allowed to call the API from a
        /// browser, with CORS (repeatable). The server's own origin and loopback origins
        /// always are; any other origin is refused with 403.
        #[arg(long = "allow-origin", value_name = "ORIGIN", value_parser = dev::parse_origin)]
        allow_origin: Vec<String>,
        /// Connections served at once; beyond it, new ones wait until one closes.
        #[arg(long, default_value_t = 2048)]
        max_connections: usize,
        /// Seconds a client has to send a request's headers; also the longest an idle
        /// keep-alive connection stays open.
        #[arg(long, default_value_t = 10)]
        header_timeout_seconds: u64,
        /// Where clients reach this server, when not at the listen address: behind a
        /// reverse proxy (`https://gpu.example.com`) or listening on all interfaces.
        /// Signed URLs start with it; browsers calling from it are allowed.
        #[arg(long, value_name = "URL", env = "SERVERLESS_COMFYUI_PUBLIC_URL", value_parser = dev::parse_public_url)]
        public_url: Option<String>,
        /// How long finished jobs, their outputs and workflows are kept (e.g. 7d, 24h).
        #[arg(long, default_value = "7d", value_parser = dev::parse_lifetime)]
        retention: chrono::Duration,
        /// How long an Idempotency-Key is remembered (default 24h, or --retention if
        /// shorter; never longer than --retention).
        #[arg(long, value_parser = dev::parse_lifetime)]
        idempotency_ttl: Option<chrono::Duration>,
        /// How long a large-file upload may take before it is abandoned and removed.
        #[arg(long, default_value = "1h", value_parser = dev::parse_lifetime)]
        upload_ttl: chrono::Duration,
        /// US dollars per GPU-hour, for each job's estimated `metrics.cost_micro_usd`
        /// (recorded on the job when it is accepted). 0: no estimate.
        #[arg(long, default_value_t = 0.0, value_parser = dev::parse_price)]
        gpu_price_per_hour: f64,
        /// Let webhook URLs reach loopback and private addresses (a receiver on this
        /// machine or network). Off: they are refused, at registration and at connect.
        #[arg(long)]
        webhooks_allow_private: bool,
        /// Milliseconds before a failed webhook's first retry (doubling after): tests
        /// shorten it.
        #[arg(long, default_value_t = 5000, hide = true)]
        webhook_retry_first_ms: u64,
        /// Milliseconds a deliverer holds a claimed webhook: tests shorten it.
        #[arg(long, default_value_t = 60_000, hide = true)]
        webhook_lease_ms: u64,
    },
    /// Run one GPU runner over a `dev` data directory (what `dev` starts for you).
    #[command(hide = true)]
    Runner(gpu_runner::cli::RunnerArgs),
    /// Manage API keys of a `dev` data directory.
    Keys {
        #[command(subcommand)]
        command: serverless_comfyui::keys::KeysCommand,
    },
    /// Set and show per-tenant quotas of a `dev` data directory.
    Tenants {
        #[command(subcommand)]
        command: serverless_comfyui::tenants::TenantsCommand,
    },
    /// Publish or show the node catalogue (a ComfyUI's /object_info) that submit checks
    /// graphs against.
    Catalogue {
        #[command(subcommand)]
        command: serverless_comfyui::catalogue::CatalogueCommand,
    },
    /// Run a workflow on a Comfy API v2 server: upload inputs, submit, show progress,
    /// download the outputs. Exit code: 0 succeeded, 1 failed, 2 canceled, 3 usage or
    /// connection error.
    Run(client::RunArgs),
    /// List, show, cancel jobs and download their outputs.
    Jobs {
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// Upload files as assets.
    Assets {
        #[command(subcommand)]
        command: client::AssetsCommand,
    },
    /// Register, list and delete signed webhooks, and see their delivery attempts.
    Webhooks {
        #[command(subcommand)]
        command: client::WebhooksCommand,
    },
}

/// The client subcommands, whose usage errors exit with 3 (2 means "canceled" there).
const CLIENT_COMMANDS: [&str; 4] = ["run", "jobs", "assets", "webhooks"];

/// Parses the command line. Help and version exit 0; a usage error of a client
/// subcommand exits 3, as its other usage errors do; `dev` and `keys` keep clap's 2.
fn parse() -> Cli {
    Cli::try_parse().unwrap_or_else(|e| {
        let client = std::env::args()
            .nth(1)
            .is_some_and(|first| CLIENT_COMMANDS.contains(&first.as_str()));
        if client && e.use_stderr() {
            let _ = e.print();
            std::process::exit(i32::from(client::ClientError::EXIT_CODE));
        }
        e.exit()
    })
}

/// Runs a client subcommand: its exit code, or one line and 3 for an error.
async fn run_client(command: Command) -> ExitCode {
    let json = match &command {
        Command::Run(args) => args.json,
        Command::Jobs { command } => match command {
            client::JobsCommand::List { json, .. }
            | client::JobsCommand::Get { json, .. }
            | client::JobsCommand::Cancel { json, .. }
            | client::JobsCommand::Download { json, .. } => *json,
        },
        Command::Assets { command } => match command {
            client::AssetsCommand::Upload { json, .. } => *json,
        },
        Command::Webhooks { command } => command.json(),
        Command::Dev { .. }
        | Command::Keys { .. }
        | Command::Tenants { .. }
        | Command::Catalogue { .. }
        | Command::Runner(_) => false,
    };
    let result = match command {
        Command::Run(args) => client::commands::run(args).await,
        Command::Jobs { command } => client::commands::jobs(command).await,
        Command::Assets { command } => client::commands::assets(command).await,
        Command::Webhooks { command } => client::webhooks::webhooks(command).await,
        Command::Dev { .. }
        | Command::Keys { .. }
        | Command::Tenants { .. }
        | Command::Catalogue { .. }
        | Command::Runner(_) => {
            unreachable!("not a client command")
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        if json {
            // `--json` callers read stdout: the error comes there too, as JSON.
            println!("{}", e.to_json());
        }
        ExitCode::from(client::ClientError::EXIT_CODE)
    })
}

// The server allocates many small, short-lived buffers per request (JSON, headers,
// SQL parameters) across threads; mimalloc's per-thread free lists serve them in
// less CPU than glibc's malloc (measured with bench/api.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if matches!(cli.command, Command::Dev { .. }) {
        dev::schedule_for_throughput();
        runtime.on_thread_start(dev::schedule_for_throughput);
    }
    match runtime.build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The deliverer's timings from the hidden test flags.
fn webhook_delivery(retry_first_ms: u64, lease_ms: u64) -> jobs::webhooks::deliver::DeliveryConfig {
    let defaults = jobs::webhooks::deliver::DeliveryConfig::default();
    let lease = Duration::from_millis(lease_ms.max(100));
    jobs::webhooks::deliver::DeliveryConfig {
        backoff: jobs::webhooks::backoff::Backoff {
            first: Duration::from_millis(retry_first_ms.max(1)),
            ..defaults.backoff
        },
        // A request never outlives its claim.
        timeout: defaults.timeout.min(lease / 2),
        lease,
        ..defaults
    }
}

async fn run(cli: Cli) -> ExitCode {
    if matches!(
        cli.command,
        Command::Run(_) | Command::Jobs { .. } | Command::Assets { .. } | Command::Webhooks { .. }
    ) {
        // The client prints its own progress and errors; no log lines in between.
        return run_client(cli.command).await;
    }
    init_logging();
    let result = match cli.command {
        Command::Dev {
            listen,
            data_dir,
            tick_seconds,
            comfyui,
            runner_idle_seconds,
            no_runner,
            simulator_step_ms,
            allow_origin,
            max_connections,
            header_timeout_seconds,
            public_url,
            retention,
            idempotency_ttl,
            upload_ttl,
            gpu_price_per_hour,
            webhooks_allow_private,
            webhook_retry_first_ms,
            webhook_lease_ms,
        } => {
            let runner = if no_runner {
                None
            } else {
                match dev::runner_command(&data_dir, listen, runner_idle_seconds) {
                    Ok(command) => Some(command),
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(3);
                    }
                }
            };
            dev::run(DevConfig {
                listen,
                data_dir,
                tick_every: Duration::from_secs(tick_seconds.max(1)),
                comfyui_urls: comfyui,
                runner,
                simulator_step_ms,
                allowed_origins: allow_origin,
                limits: serverless_comfyui::serve::ServeLimits {
                    header_read_timeout: Duration::from_secs(header_timeout_seconds.max(1)),
                    max_connections: max_connections.max(1),
                },
                public_url,
                retention,
                idempotency_ttl: idempotency_ttl
                    .unwrap_or_else(|| DevConfig::default().idempotency_ttl.min(retention)),
                upload_ttl,
                gpu_price_per_hour,
                webhooks_allow_private,
                webhook_delivery: webhook_delivery(webhook_retry_first_ms, webhook_lease_ms),
                ..DevConfig::default()
            })
            .await
        }
        Command::Runner(args) => return gpu_runner::cli::run_cli(args).await,
        Command::Keys { command } => serverless_comfyui::keys::run(command).await,
        Command::Tenants { command } => serverless_comfyui::tenants::run(command).await,
        Command::Catalogue { command } => serverless_comfyui::catalogue::run(command).await,
        Command::Run(_)
        | Command::Jobs { .. }
        | Command::Assets { .. }
        | Command::Webhooks { .. } => {
            unreachable!("handled by run_client")
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
