//! # gpu-runner — runs jobs on ComfyUI
//!
//! The runner is the worker of serverless-comfyui. On AWS it is the ECS task next to
//! ComfyUI; in `serverless-comfyui dev` a subprocess. Either way it works over the same
//! ports (`jobs::ports`): it receives job messages from the work queue, runs each job's
//! workflow on ComfyUI, stores the outputs, and records the outcome, following the lease
//! protocol of ARCHITECTURE.md §4 to the letter.
//!
//! | module | what it holds |
//! |---|---|
//! | [`engine`] | ComfyUI supervision: spawn (process group + parent-death signal) or attach, readiness, health, restart |
//! | [`runner`] | the main loop: receive, claim or reserve, spawn job tasks, registry, idle exit, shutdown |
//! | `job` | one job's task: stage, submit, follow, heartbeat, cancel, timeout, outputs, finish |
//! | [`cleanup`] | a job's files out of ComfyUI's folders when it ends (when the runner owns them) |
//! | `stage` | `core/ASSET` inputs → `/upload/image`; `filename_prefix` rewriting; outputs via `/view` → assets |
//! | [`events`] | one WebSocket per ComfyUI generation, events routed to prompts by id |
//! | `progress` | WebSocket events → v2 `Progress` (value, nodes, step/steps, node class, message) |
//! | [`cli`] | `RunnerArgs` and `run_cli` (the local binary and `serverless-comfyui runner`), [`cli::RunnerSettings`] and [`cli::run_until_stopped`] (every entry) |
//! | [`models`] | `models.yaml` and its sync from object storage into the instance's model cache |
//! | `aws_env` | the runner on AWS (feature `aws`): environment, ECS task id, S3 models, ports |
//! | [`nodes`] | the custom nodes boot check: promised classes in `/object_info`, or refuse jobs |
//! | [`config`] | [`RunnerConfig`], and an observer hook for benchmarks |
//!
//! ## The protocol, as the runner plays it
//!
//! - **Claim** (or take over a lapsed lease) before running; every later write — renewal,
//!   progress, outputs, finish, hand-back — is fenced on `lease_owner = me AND attempt =
//!   mine`. A refused write means someone took over: interrupt the prompt, write nothing.
//! - **Heartbeat** every lease/3: renew the lease and extend the message's visibility
//!   (the lease is never longer than the visibility). The renewal returns the job, so a
//!   `canceling` job is seen by it.
//! - **Cancel within a second.** Between heartbeats, while a leased job runs, the runner
//!   reads the job's status every [`RunnerConfig::status_poll`] (1 s) with
//!   [`jobs::ports::JobStore::job_status`]; anything but `running` under its attempt
//!   makes it beat at once. The beat's answer is the one place a cancel lands: the
//!   prompt is stopped with ComfyUI's state-aware cancel, nothing of it is fetched, and
//!   the job ends `canceled` through `jobs::lifecycle` (which clears its outputs). The
//!   prompt stops at its next node boundary or sampler step. **Expected cancel
//!   latency: up to `status_poll` (0.5 s on average) + the next step + a few writes**;
//!   measured on the simulator (50 ms steps, `cargo bench -p gpu-runner --bench
//!   cancel_bench -- --samples 100`, a busy 2-core machine): p50 0.58 s, p99 0.99 s;
//!   nearly all of it is the wait for the next poll (a first 30-sample run had one
//!   2.4 s outlier, p50 0.54 s).
//!   A cancel that arrives after the prompt ended (outputs being stored) is too late:
//!   the job succeeds, and a cancel of a finished job returns it unchanged.
//! - **What the poll costs on AWS**: one eventually consistent `GetItem` of the job's
//!   `META` item per second per running job. DynamoDB bills it on the item's size, not
//!   the projection: half a read request unit for an item up to 4 KB (a job's `META`
//!   is well under that unless its labels are large). 3,600 × 0.5 = 1,800 read request
//!   units per GPU-hour; at the DynamoDB on-demand list price in us-east-1, $0.125 per
//!   million read request units (the list price since AWS halved on-demand prices on
//!   1 November 2024; taken from that announcement, not re-read from the live price
//!   page), that is **$0.000225 per GPU-hour** (a 1 s poll on
//!   1,000 GPUs running all month: about $160). The cancel itself adds one renewal
//!   write; a stale read right after a claim may add another.
//! - **Messages** are deleted only once their job is terminal; a copy of a job someone
//!   else holds is pushed back, never deleted.
//! - **Pipelining by reservation**: near the end of job N, job N+1 is reserved (it stays
//!   `queued`), staged and submitted, so ComfyUI starts it the moment N ends; it is
//!   claimed at its `execution_start`. A reservation lapses if the runner dies or N runs
//!   long. N's outputs are uploaded while N+1 runs.
//! - **Outputs** go under `outputs/{job}/{attempt}/`, each minted as an asset; only the
//!   finishing attempt's are listed.
//! - **When ComfyUI dies** the running job's lease is released at once (renewed to zero,
//!   so the next claim is a charged takeover, bounded by `max_attempts`) and ComfyUI is
//!   restarted. **On SIGTERM** jobs are handed back uncharged (`preemptions + 1`).
//!
//! ## Use
//!
//! ```text
//! gpu-runner --data-dir .serverless-comfyui --comfyui-url http://127.0.0.1:8188
//! gpu-runner --data-dir .serverless-comfyui \
//!     --comfyui-cmd "python main.py --listen 127.0.0.1 --port {port}"
//! # The GPU container: the runner owns ComfyUI's folders and empties them job by job.
//! gpu-runner --data-dir .serverless-comfyui --comfyui-workdir /var/lib/comfy \
//!     --comfyui-cmd "python main.py --listen 127.0.0.1 --port {port} \
//!       --input-directory {input_dir} --output-directory {output_dir} --temp-directory {temp_dir}"
//! ```
//!
//! **What a job may not do.** A job's workflow reaches ComfyUI only after
//! [`jobs::validate::first_unsafe_input`] found no unsafe node id and no literal file
//! input that is not a bare file name (submit checks the same; this catches a job that
//! came another way): such a job fails with `unsafe_file_input` or `invalid_node_id`,
//! never retried. Job errors reach clients with server paths replaced by `<path>`
//! ([`comfyui::scrub_paths`]). What is left of a job on ComfyUI's disk: see [`cleanup`].
//!
//! **Which adapters.** Cargo features pick them, so a build links only its own: `local`
//! (the default: the SQLite data directory; the `gpu-runner` binary above and
//! `serverless-comfyui runner`) or `aws` (DynamoDB, S3, SQS; the `gpu-runner-aws`
//! binary, configured from the environment, see `aws_env` and docs/runner.md). Both
//! end in [`cli::run_until_stopped`]. Before taking jobs, a runner may sync its models
//! ([`models`], on AWS) and checks the custom nodes' classes ([`nodes`]); when either
//! fails it registers as `refusing`, with the reason, and takes nothing.
//!
//! In-process (tests, benchmarks):
//!
//! ```no_run
//! # async fn demo(ports: jobs::service::Ports) -> Result<(), gpu_runner::RunnerError> {
//! use gpu_runner::{EngineSpec, Runner, RunnerConfig};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let runner = Runner::new(
//!     RunnerConfig::default(),
//!     ports,
//!     EngineSpec::Attach { url: "http://127.0.0.1:8188".into() },
//! );
//! let report = runner.run(shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! Logs are `tracing` events (JSON in the binary). Never logged: `extra_data`, secrets,
//! signed URLs. Each terminal write this runner makes is logged once with
//! `event = "committed"`, `job_id`, `attempt` and `status` (the chaos tests count them),
//! and each delivery absorbed without running the job again (a duplicate, a copy of a job
//! held elsewhere or already ended) with `event = "duplicate"`.

#[cfg(feature = "aws")]
pub mod aws_env;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod events;
mod job;
pub mod models;
pub mod nodes;
mod progress;
pub mod runner;
mod stage;

pub use cleanup::ComfyDirs;
pub use config::{CLIENT_ID_PREFIX, JobTiming, RunnerConfig, RunnerObserver, new_worker_id};
pub use engine::{EngineLauncher, EngineProcess, EngineSpec, EngineState, Launched};
pub use error::RunnerError;
pub use runner::{ExitReason, RunReport, Runner};
