//! The command line: [`RunnerSettings`] (what every entry shares), `RunnerArgs` (a clap
//! `Args` struct with the local data directory, so the `serverless-comfyui` CLI can
//! flatten it into a hidden `runner` subcommand), `run_cli`, which builds the local
//! ports from the data directory and runs (feature `local`), and
//! [`run_until_stopped`], where every entry ends: the runner until idle or a signal.

use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "local")]
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "local")]
use jobs::ports::SystemClock;
use tokio_util::sync::CancellationToken;

use crate::cleanup::ComfyDirs;
use crate::config::{RunnerConfig, new_worker_id};
use crate::engine::EngineSpec;
use crate::error::RunnerError;
use crate::runner::{ExitReason, Runner};

/// `gpu-runner` flags: the local data directory, and the [`RunnerSettings`] every
/// entry shares.
#[cfg(feature = "local")]
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// The local installation's data directory (jobs, queue, blobs).
    #[arg(long, default_value = ".serverless-comfyui")]
    pub data_dir: PathBuf,
    /// URL prefix of signed blob URLs (the `dev` server's origin).
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    pub public_base: String,
    #[command(flatten)]
    pub settings: RunnerSettings,
    /// Tests only: wrap the work queue in the fault injector (Faults::CHAOTIC) with this seed.
    #[arg(long, hide = true)]
    pub chaos_queue_seed: Option<u64>,
}

/// What a runner needs whatever its adapters: ComfyUI, timings, warm-up, the custom
/// nodes to check. Flags for the local binary; the AWS entry fills it from the
/// environment ([`crate::aws_env`]).
#[derive(Debug, Clone, clap::Args)]
pub struct RunnerSettings {
    /// Attach to this ComfyUI (or, with --comfyui-cmd, where the child listens).
    #[arg(long)]
    pub comfyui_url: Option<String>,
    /// Start ComfyUI as a child with this command line; `{port}` is replaced by a free
    /// port (e.g. "python main.py --listen 127.0.0.1 --port {port}").
    #[arg(long)]
    pub comfyui_cmd: Option<String>,
    /// With --comfyui-cmd: the runner owns ComfyUI's folders under this directory and
    /// deletes each job's files when it ends. The command must pass them on with the
    /// placeholders `{input_dir}`, `{output_dir}` and `{temp_dir}`, e.g. `--input-directory
    /// {input_dir} --output-directory {output_dir} --temp-directory {temp_dir}`.
    #[arg(long)]
    pub comfyui_workdir: Option<PathBuf>,
    /// The id to register and lease under (the launcher passes its own).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Exit after this many seconds without work (0: never).
    #[arg(long, default_value_t = 300.0)]
    pub idle_timeout: f64,
    /// Lease length in seconds; also the messages' visibility timeout. Heartbeat: lease/3.
    #[arg(long, default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// Per-job timeout in seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub job_timeout: f64,
    /// Charged attempts before a job fails with attempts_exhausted.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// An API-format workflow run once after each ComfyUI start.
    #[arg(long)]
    pub warmup_workflow: Option<PathBuf>,
    /// Seconds the running job gets to finish after SIGTERM before it is handed back.
    #[arg(long, default_value_t = 25.0)]
    pub shutdown_grace: f64,
    /// Seconds to wait for ComfyUI's /system_stats after a start.
    #[arg(long, default_value_t = 300.0)]
    pub ready_timeout: f64,
    /// Run one job at a time (no reservation of the next).
    #[arg(long)]
    pub no_pipelining: bool,
    /// A custom nodes manifest (custom-nodes.toml): every node class it promises must be
    /// in ComfyUI's /object_info before the runner takes a job.
    #[arg(long)]
    pub custom_nodes: Option<PathBuf>,
    /// At most one progress write per this many seconds.
    #[arg(long, default_value_t = 0.5)]
    pub progress_interval: f64,
}

impl Default for RunnerSettings {
    /// The flags' defaults (what the AWS entry starts from).
    fn default() -> Self {
        RunnerSettings {
            comfyui_url: None,
            comfyui_cmd: None,
            comfyui_workdir: None,
            worker_id: None,
            idle_timeout: 300.0,
            lease_seconds: 30.0,
            job_timeout: 1800.0,
            max_attempts: 3,
            warmup_workflow: None,
            shutdown_grace: 25.0,
            ready_timeout: 300.0,
            no_pipelining: false,
            custom_nodes: None,
            progress_interval: 0.5,
        }
    }
}

fn secs(name: &str, v: f64) -> Result<Duration, RunnerError> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        RunnerError::Config(format!("--{name} must be a non-negative number of seconds"))
    })
}

impl RunnerSettings {
    /// The runner config and ComfyUI spec these settings describe.
    pub fn to_config(&self) -> Result<(RunnerConfig, EngineSpec), RunnerError> {
        let (command, comfyui_dirs) = match (&self.comfyui_cmd, &self.comfyui_workdir) {
            (Some(cmd), Some(workdir)) => {
                let (cmd, dirs) = owned_folders(cmd, workdir)?;
                (Some(cmd), Some(dirs))
            }
            (None, Some(_)) => {
                return Err(RunnerError::Config(
                    "--comfyui-workdir needs --comfyui-cmd (the runner must start ComfyUI on its folders)".into(),
                ));
            }
            (cmd, None) => (cmd.clone(), None),
        };
        let engine = match (&command, &self.comfyui_url) {
            (Some(cmd), url) => EngineSpec::Spawn {
                command: cmd.clone(),
                url: url.clone(),
            },
            (None, Some(url)) => EngineSpec::Attach { url: url.clone() },
            (None, None) => {
                return Err(RunnerError::Config(
                    "give --comfyui-url (attach) or --comfyui-cmd (start ComfyUI as a child)"
                        .into(),
                ));
            }
        };
        let lease = secs("lease-seconds", self.lease_seconds)?;
        if lease < Duration::from_millis(300) {
            return Err(RunnerError::Config(
                "--lease-seconds must be at least 0.3".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(RunnerError::Config(
                "--max-attempts must be at least 1".into(),
            ));
        }
        let warmup_workflow = match &self.warmup_workflow {
            None => None,
            Some(path) => {
                let raw = std::fs::read(path)
                    .map_err(|e| RunnerError::Config(format!("{}: {e}", path.display())))?;
                let v: serde_json::Value = serde_json::from_slice(&raw)
                    .map_err(|e| RunnerError::Config(format!("{}: {e}", path.display())))?;
                Some(
                    comfyui::api_workflow(v)
                        .map_err(|e| RunnerError::Config(format!("{}: {e}", path.display())))?,
                )
            }
        };
        let required_node_classes = match &self.custom_nodes {
            None => Vec::new(),
            Some(path) => crate::nodes::NodesManifest::read(path)?.classes(),
        };
        let idle = secs("idle-timeout", self.idle_timeout)?;
        let config = RunnerConfig {
            worker_id: self.worker_id.clone().unwrap_or_else(new_worker_id),
            job_timeout: secs("job-timeout", self.job_timeout)?,
            max_attempts: self.max_attempts,
            idle_timeout: (!idle.is_zero()).then_some(idle),
            shutdown_grace: secs("shutdown-grace", self.shutdown_grace)?,
            ready_timeout: secs("ready-timeout", self.ready_timeout)?,
            pipelining: !self.no_pipelining,
            progress_interval: secs("progress-interval", self.progress_interval)?,
            warmup_workflow,
            comfyui_dirs,
            required_node_classes,
            ..RunnerConfig::default()
        }
        .with_lease(lease);
        Ok((config, engine))
    }
}

/// The command with `{input_dir}`, `{output_dir}` and `{temp_dir}` filled in from the
/// work directory, and the folders the runner will clean.
fn owned_folders(cmd: &str, workdir: &std::path::Path) -> Result<(String, ComfyDirs), RunnerError> {
    let workdir = std::path::absolute(workdir)
        .map_err(|e| RunnerError::Config(format!("--comfyui-workdir: {e}")))?;
    let shown = workdir.to_string_lossy().to_string();
    if shown.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        return Err(RunnerError::Config(
            "--comfyui-workdir must not contain spaces or quotes".into(),
        ));
    }
    let missing: Vec<&str> = ["{input_dir}", "{output_dir}", "{temp_dir}"]
        .into_iter()
        .filter(|p| !cmd.contains(p))
        .collect();
    if !missing.is_empty() {
        return Err(RunnerError::Config(format!(
            "with --comfyui-workdir, --comfyui-cmd must use {}",
            missing.join(", ")
        )));
    }
    let dirs = ComfyDirs::under(&workdir);
    let cmd = cmd
        .replace("{input_dir}", &dirs.input.to_string_lossy())
        .replace("{output_dir}", &dirs.output.to_string_lossy())
        // ComfyUI appends `temp` to --temp-directory.
        .replace("{temp_dir}", &shown);
    Ok((cmd, dirs))
}

/// Runs a runner over the local data directory until idle or SIGTERM/SIGINT.
/// Exit codes: 0 after an idle exit or a shutdown, 1 on a runtime failure (ComfyUI
/// would not start), 2 on bad flags.
#[cfg(feature = "local")]
pub async fn run_cli(args: RunnerArgs) -> ExitCode {
    let (config, engine) = match args.settings.to_config() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("gpu-runner: {e}");
            return ExitCode::from(2);
        }
    };
    let ports = match local::DataDir::open(&args.data_dir)
        .and_then(|d| d.ports(Arc::new(SystemClock), &args.public_base))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the data directory");
            return ExitCode::from(1);
        }
    };
    let ports = with_chaos_queue(ports, args.chaos_queue_seed);
    run_until_stopped(config, ports, engine).await
}

/// Tests only: with a seed, the work queue misbehaves on purpose
/// (`jobs::faults::Faults::CHAOTIC`: duplicates, reordering, early redelivery, stale
/// receipts, ignored deletes), as the chaos suites of both entries ask; the local
/// binary's hidden `--chaos-queue-seed` and the AWS entry's
/// `SERVERLESS_COMFYUI_TEST_CHAOS_QUEUE_SEED` end here.
pub fn with_chaos_queue(ports: jobs::service::Ports, seed: Option<u64>) -> jobs::service::Ports {
    let Some(seed) = seed else { return ports };
    tracing::warn!(
        seed,
        "chaos: the work queue misbehaves on purpose (a test setting)"
    );
    jobs::service::Ports {
        queue: std::sync::Arc::new(jobs::faults::FaultyQueue::new(
            ports.queue.clone(),
            jobs::faults::Faults::CHAOTIC,
            seed,
        )),
        ..ports
    }
}

/// Runs a runner over `ports` until idle or SIGTERM/SIGINT; every entry ends here.
/// Exit codes: 0 after an idle exit or a shutdown, 1 when ComfyUI could not start.
pub async fn run_until_stopped(
    config: RunnerConfig,
    ports: jobs::service::Ports,
    engine: EngineSpec,
) -> ExitCode {
    tracing::info!(worker_id = %config.worker_id, engine = ?engine, lease_s = config.lease.as_secs_f64(), "gpu-runner starting");
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    match Runner::new(config, ports, engine).run(shutdown).await {
        Ok(report) => {
            let reason = match report.reason {
                ExitReason::Idle => "idle",
                ExitReason::Shutdown => "shutdown",
            };
            tracing::info!(reason, committed = report.committed, "gpu-runner exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "gpu-runner failed");
            ExitCode::from(1)
        }
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_images_warmup_workflow_and_custom_nodes_manifest_load() {
        let docker = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let settings = RunnerSettings {
            comfyui_url: Some("http://127.0.0.1:8188".into()),
            warmup_workflow: Some(docker.join("docker/warmup.json")),
            custom_nodes: Some(docker.join("custom-nodes.toml")),
            ..RunnerSettings::default()
        };
        let (config, _) = settings.to_config().unwrap();
        let warmup = config.warmup_workflow.expect("the warm-up is read");
        assert_eq!(warmup["3"]["class_type"], "PreviewImage");
        assert!(
            config.required_node_classes.is_empty(),
            "the stock image promises none"
        );
    }

    #[test]
    fn a_workdir_fills_the_command_placeholders() {
        let (cmd, dirs) = owned_folders(
            "python main.py --port {port} --input-directory {input_dir} --output-directory {output_dir} --temp-directory {temp_dir}",
            std::path::Path::new("/srv/comfy"),
        )
        .unwrap();
        assert_eq!(
            cmd,
            "python main.py --port {port} --input-directory /srv/comfy/input --output-directory /srv/comfy/output --temp-directory /srv/comfy"
        );
        assert_eq!(dirs, ComfyDirs::under(std::path::Path::new("/srv/comfy")));
        assert!(owned_folders("python main.py", std::path::Path::new("/srv")).is_err());
        assert!(
            owned_folders(
                "{input_dir}{output_dir}{temp_dir}",
                std::path::Path::new("/a b")
            )
            .is_err()
        );
    }
}
