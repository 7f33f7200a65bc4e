//! The client's subcommands: `run`, `jobs list|get|cancel|download`, `assets upload`.
//!
//! Each command returns the process's exit code, or a [`ClientError`] (exit code 3).
//! Results go to stdout (with `--json`, one JSON document and nothing else); progress,
//! notes and errors go to stderr.
//!
//! | exit code | meaning |
//! |---|---|
//! | 0 | the job succeeded (or: submitted with `--no-wait`; any other command worked) |
//! | 1 | the job failed: its error code, node and class are printed |
//! | 2 | the job was canceled (or expired in the queue) |
//! | 3 | usage or connection error: one line that says what to do |
//! | 130 | a second Ctrl-C: the client stopped waiting and left the job to the server |

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::api::Api;
use super::display::Display;
use super::download::{Downloaded, download_all};
use super::error::ClientError;
use super::follow::{Ending, Follower, Interrupts, next_interrupt};
use super::types::{Job, JobStatus};
use super::upload::LocalFile;
use super::workflow::{self, Assignment};

/// Where the server is, and the key. The same variables comfy-sdk reads.
#[derive(Clone, Args)]
pub struct Connection {
    /// Base URL of the Comfy API v2 server (`dev`, a deployed stack, any v2 server).
    #[arg(
        long = "url",
        env = "COMFY_BASE_URL",
        default_value = "http://127.0.0.1:8787",
        value_name = "URL"
    )]
    pub url: String,
    /// API key, sent as `Authorization: Bearer` to that server only and never printed.
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(
        long,
        env = "COMFY_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
}

/// Never shows the key.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Connection {
    pub(crate) fn api(&self) -> Result<Api, ClientError> {
        Api::new(&self.url, self.api_key.clone())
    }
}

/// `serverless-comfyui run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// An API-format workflow file (ComfyUI: Workflow → Export (API)).
    pub workflow: PathBuf,
    /// Set a node input: NODE.INPUT=VALUE, e.g. 6.text="a red fox" or 3.seed=42. The value
    /// is JSON where it parses (numbers, true, [..]), text otherwise. Repeatable.
    #[arg(long = "set", value_name = "NODE.INPUT=VALUE")]
    pub set: Vec<String>,
    /// Upload a file as an asset and use it as a node input: NODE.INPUT=FILE, e.g.
    /// 10.image=photo.png. Bytes the server already has are not sent again. Repeatable.
    #[arg(long = "input", value_name = "NODE.INPUT=FILE")]
    pub input: Vec<String>,
    /// Folder for the outputs, saved as <node>-<name>.
    #[arg(long, default_value = "outputs", value_name = "DIR")]
    pub out: PathBuf,
    /// A label (metadata) for the job, KEY=VALUE; `jobs list --label` finds it. Repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Submit, print the job, and exit without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Print one JSON document to stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// The submit's Idempotency-Key (default: a fresh one). Reusing a key returns the
    /// job it made instead of running the workflow again.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

/// `serverless-comfyui jobs ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs with this label, KEY=VALUE. Repeatable (all must match).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// At most this many jobs.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// The next page, from a previous list.
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one job.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a job (a running job stops at its next node boundary).
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Download a job's outputs.
    Download {
        id: String,
        /// Folder for the outputs, saved as <node>-<name>.
        #[arg(long, default_value = "outputs", value_name = "DIR")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `serverless-comfyui assets ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AssetsCommand {
    /// Upload a file as an asset (or mint it from the server's copy when it has the
    /// same bytes), and print its id for a `core/ASSET` input.
    Upload {
        file: PathBuf,
        /// The asset's file name (default: the file's own name).
        #[arg(long, value_name = "NAME")]
        file_path: Option<String>,
        /// Its media type (default: guessed from the extension).
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

fn code(n: u8) -> ExitCode {
    ExitCode::from(n)
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

// ---- run ---------------------------------------------------------------------------

/// `run`: prepare locally, upload inputs, submit, follow, download, report.
pub async fn run(args: RunArgs) -> Result<ExitCode, ClientError> {
    let started = Instant::now();
    // Everything that can be checked locally is checked before the first request.
    let mut graph = workflow::load(&args.workflow)?;
    let mut sets = Vec::new();
    for raw in &args.set {
        sets.push(Assignment::parse("--set", raw, &graph)?);
    }
    for set in &sets {
        set.apply_set(&mut graph)?;
    }
    let mut inputs = Vec::new();
    for raw in &args.input {
        let target = Assignment::parse("--input", raw, &graph)?;
        let file = LocalFile::read(Path::new(&target.value), None, None)?;
        inputs.push((target, file));
    }
    let labels = args
        .label
        .iter()
        .map(|l| workflow::parse_label(l))
        .collect::<Result<Vec<_>, _>>()?;
    let api = args.connection.api()?;

    for (target, file) in &inputs {
        let (asset, via) = file.upload(&api).await?;
        if !args.json {
            eprintln!(
                "input {}.{} = {} → {} ({})",
                target.node,
                target.input,
                file.path.display(),
                asset.id,
                via.describe()
            );
        }
        target.apply(&mut graph, workflow::asset_reference(&asset.id));
    }

    let mut body = json!({ "workflow": Value::Object(graph) });
    if !labels.is_empty() {
        body["metadata"] = labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let job = api.submit(&body, &key).await?;

    if args.no_wait {
        if args.json {
            print_json(&json!({ "job": job.raw }));
        } else {
            println!("{}  {}", job.id, job.status);
            println!("follow it with: serverless-comfyui jobs get {}", job.id);
        }
        return Ok(code(0));
    }

    // Ctrl-C is ours from here on (before anything is printed, so that a script
    // that waits for "submitted" may send SIGINT at once).
    let mut interrupts = Interrupts::install();
    if !args.json {
        eprintln!("submitted {} to {}", job.id, api.base());
    }
    let mut display = Display::new(&job.id, started);
    let ending = Follower::new(&api, job, &mut display, &mut interrupts)
        .run()
        .await;
    display.finish();
    let (job, cancel_requested) = match ending? {
        Ending::Detached {
            job,
            cancel_requested,
        } => {
            if args.json {
                print_json(
                    &json!({ "job": job.raw, "detached": true, "cancel_requested": cancel_requested }),
                );
            }
            return Ok(code(130));
        }
        Ending::Finished {
            job,
            cancel_requested,
        } => (job, cancel_requested),
    };

    let downloaded = if job.outputs.is_empty() {
        Vec::new()
    } else {
        let download = download_all(&api, &job, &args.out);
        tokio::select! {
            saved = download => saved?,
            () = next_interrupt(&mut interrupts) => {
                eprintln!(
                    "Ctrl-C: stopped downloading. {} is {}; fetch its outputs later with \
                     `serverless-comfyui jobs download {}`",
                    job.id, job.status, job.id
                );
                return Ok(code(130));
            }
        }
    };

    if args.json {
        print_json(&json!({ "job": job.raw, "downloads": downloaded }));
    } else {
        if cancel_requested && job.status == JobStatus::Succeeded {
            eprintln!("the cancel came too late: {} had already finished", job.id);
        }
        print_job_summary(&job, &downloaded);
    }
    Ok(code(outcome_code(job.status)))
}

/// The exit code for a finished job.
pub fn outcome_code(status: JobStatus) -> u8 {
    match status {
        JobStatus::Succeeded => 0,
        JobStatus::Failed => 1,
        JobStatus::Canceled | JobStatus::Expired => 2,
        _ => 0,
    }
}

fn print_job_summary(job: &Job, downloaded: &[Downloaded]) {
    println!("job      {}", job.id);
    println!("status   {}", job.status);
    if let Some(timing) = timings(job) {
        println!("timing   {timing}");
    }
    if let Some(cost) = cost(job) {
        println!("cost     {cost}");
    }
    if let Some(error) = &job.error {
        println!("error    {}", error_line(job));
        if error.traceback.is_some() {
            println!(
                "         (traceback: serverless-comfyui jobs get {} --json)",
                job.id
            );
        }
    }
    if job.status == JobStatus::Expired {
        println!("         it waited in the queue past the server's queue timeout");
    }
    for saved in downloaded {
        println!(
            "output   {}  ({}, {})",
            saved.path.display(),
            saved.content_type.as_deref().unwrap_or("?"),
            size(saved.size_bytes)
        );
    }
}

/// `code: message (node N, Class)`.
fn error_line(job: &Job) -> String {
    let Some(error) = &job.error else {
        return String::new();
    };
    let mut line = format!("{}: {}", error.code, error.message);
    match (&error.node_id, &error.class_type) {
        (Some(node), Some(class)) => line.push_str(&format!(" (node {node}, {class})")),
        (Some(node), None) => line.push_str(&format!(" (node {node})")),
        (None, Some(class)) => line.push_str(&format!(" ({class})")),
        (None, None) => {}
    }
    line
}

fn parse_time(raw: Option<&String>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(raw?).ok()
}

/// `queued 0.4 s · ran 1.2 s · total 1.6 s`, from the metrics or the timestamps.
fn timings(job: &Job) -> Option<String> {
    let created = parse_time(job.created_at.as_ref());
    let started = parse_time(job.started_at.as_ref());
    let completed = parse_time(job.completed_at.as_ref());
    let between = |a: Option<chrono::DateTime<_>>, b: Option<chrono::DateTime<_>>| {
        Some((b? - a?).num_milliseconds())
    };
    let metrics = job.metrics.clone().unwrap_or_default();
    let queued = metrics.queue_ms.or_else(|| between(created, started));
    let ran = metrics.execution_ms.or_else(|| between(started, completed));
    let total = between(created, completed);
    let mut parts = Vec::new();
    if let Some(ms) = queued {
        parts.push(format!("queued {}", seconds(ms)));
    }
    if let Some(ms) = ran {
        parts.push(format!("ran {}", seconds(ms)));
    }
    if let Some(ms) = total {
        parts.push(format!("total {}", seconds(ms)));
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// `GPU 12.5 s · est. $0.0042`, from the server's metrics (our extension; a server
/// without it shows nothing).
fn cost(job: &Job) -> Option<String> {
    let metrics = job.metrics.as_ref()?;
    let mut parts = Vec::new();
    if let Some(ms) = metrics.gpu_ms {
        parts.push(format!("GPU {}", seconds(ms)));
    }
    if let Some(usd) = metrics.cost_micro_usd.map(|m| m as f64 / 1e6) {
        // Small jobs cost fractions of a cent: show them to the millionth.
        parts.push(if usd >= 0.01 {
            format!("est. ${usd:.2}")
        } else {
            format!("est. ${usd:.6}")
        });
    }
    (!parts.is_empty()).then(|| parts.join(" · "))
}

fn seconds(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

// ---- jobs --------------------------------------------------------------------------

/// `jobs ...`.
pub async fn jobs(command: JobsCommand) -> Result<ExitCode, ClientError> {
    match command {
        JobsCommand::List {
            label,
            limit,
            cursor,
            json,
            connection,
        } => {
            let labels = label
                .iter()
                .map(|l| workflow::parse_label(l))
                .collect::<Result<Vec<_>, _>>()?;
            let api = connection.api()?;
            let page = api.list_jobs(&labels, limit, cursor.as_deref()).await?;
            if json {
                print_json(&page.raw);
            } else {
                if page.jobs.is_empty() {
                    println!("no jobs");
                }
                for job in &page.jobs {
                    let labels: Vec<String> = job
                        .metadata
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!(
                        "{}  {:<9}  {}  {}",
                        job.id,
                        job.status.as_str(),
                        job.created_at.as_deref().unwrap_or("-"),
                        labels.join(",")
                    );
                }
                if let Some(next) = &page.next_cursor {
                    eprintln!("more: serverless-comfyui jobs list --cursor {next}");
                }
            }
            Ok(code(0))
        }
        JobsCommand::Get {
            id,
            json,
            connection,
        } => {
            let job = connection.api()?.job(&id).await?;
            if json {
                print_json(&job.raw);
            } else {
                print_job_details(&job);
            }
            Ok(code(0))
        }
        JobsCommand::Cancel {
            id,
            json,
            connection,
        } => {
            let job = connection.api()?.cancel(&id).await?;
            if json {
                print_json(&job.raw);
            } else {
                match job.status {
                    JobStatus::Canceled => println!("{}  canceled", job.id),
                    JobStatus::Canceling => println!(
                        "{}  canceling: the worker stops it at the next node boundary",
                        job.id
                    ),
                    other => println!("{}  {other}: already finished, nothing to cancel", job.id),
                }
            }
            Ok(code(0))
        }
        JobsCommand::Download {
            id,
            out,
            json,
            connection,
        } => {
            let api = connection.api()?;
            let job = api.job(&id).await?;
            let saved = download_all(&api, &job, &out).await?;
            if json {
                print_json(&json!({ "job": job.raw, "downloads": saved }));
            } else {
                if saved.is_empty() {
                    println!("{}  {}: no outputs", job.id, job.status);
                }
                for file in &saved {
                    println!(
                        "{}  ({}, {})",
                        file.path.display(),
                        file.content_type.as_deref().unwrap_or("?"),
                        size(file.size_bytes)
                    );
                }
                if !job.status.is_terminal() {
                    eprintln!(
                        "{} is {}: these are the outputs committed so far",
                        job.id, job.status
                    );
                }
            }
            Ok(code(0))
        }
    }
}

fn print_job_details(job: &Job) {
    println!("job      {}", job.id);
    println!("status   {}", job.status);
    if let Some(position) = job.queue_position {
        println!("queue    position {position}");
    }
    if let Some(progress) = &job.progress {
        let mut parts = Vec::new();
        if let Some(value) = progress.value {
            parts.push(format!("{:.0}%", value * 100.0));
        }
        if let Some(class) = &progress.current_node_class {
            parts.push(match &progress.current_node {
                Some(node) => format!("{class} (node {node})"),
                None => class.clone(),
            });
        }
        if let (Some(step), Some(steps)) = (progress.step, progress.steps) {
            parts.push(format!("step {step}/{steps}"));
        }
        if let Some(message) = progress.message.as_deref().filter(|m| !m.is_empty()) {
            parts.push(message.to_string());
        }
        if !parts.is_empty() && !job.status.is_terminal() {
            println!("progress {}", parts.join(" · "));
        }
    }
    for (label, time) in [
        ("created", &job.created_at),
        ("started", &job.started_at),
        ("finished", &job.completed_at),
    ] {
        if let Some(time) = time {
            println!("{label:<8} {time}");
        }
    }
    if let Some(timing) = timings(job).filter(|_| job.status.is_terminal()) {
        println!("timing   {timing}");
    }
    if let Some(cost) = cost(job) {
        println!("cost     {cost}");
    }
    if !job.metadata.is_empty() {
        let labels: Vec<String> = job
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("labels   {}", labels.join(", "));
    }
    if job.error.is_some() {
        println!("error    {}", error_line(job));
    }
    for output in &job.outputs {
        println!(
            "output   node {}  {}  ({}, {})",
            output.node_id,
            output.name,
            output.content_type.as_deref().unwrap_or("?"),
            output.size_bytes.map(size).unwrap_or_else(|| "?".into())
        );
    }
}

// ---- assets ------------------------------------------------------------------------

/// `assets ...`.
pub async fn assets(command: AssetsCommand) -> Result<ExitCode, ClientError> {
    match command {
        AssetsCommand::Upload {
            file,
            file_path,
            content_type,
            json,
            connection,
        } => {
            let local = LocalFile::read(&file, file_path.as_deref(), content_type.as_deref())?;
            let api = connection.api()?;
            let (asset, via) = local.upload(&api).await?;
            if json {
                let mut value = asset.raw.clone();
                value["deduplicated"] = json!(matches!(via, super::upload::Via::Dedup));
                print_json(&value);
            } else {
                println!(
                    "{}  {}",
                    asset.id,
                    asset.hash.as_deref().unwrap_or(&local.hash)
                );
                eprintln!(
                    "{} ({}, {}): {}",
                    local.file_path,
                    local.content_type,
                    size(local.bytes.len() as u64),
                    via.describe()
                );
                eprintln!(
                    "use it as an input: {{\"__type\": \"core/ASSET\", \"info\": {{\"id\": \"{}\"}}}}",
                    asset.id
                );
            }
            Ok(code(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_and_errors_read_well() {
        let job = Job::from_json(json!({
            "id": "job_1", "status": "failed",
            "created_at": "2026-11-30T01:00:00.000Z",
            "started_at": "2026-11-30T01:00:00.400Z",
            "completed_at": "2026-11-30T01:00:01.600Z",
            "metrics": {"queue_ms": null, "execution_ms": null},
            "error": {"code": "node_error", "message": "out of memory", "node_id": "3", "class_type": "KSampler"}
        }))
        .unwrap();
        assert_eq!(
            timings(&job).unwrap(),
            "queued 0.4 s · ran 1.2 s · total 1.6 s"
        );
        assert_eq!(
            error_line(&job),
            "node_error: out of memory (node 3, KSampler)"
        );
        assert_eq!(outcome_code(job.status), 1);
        assert_eq!(seconds(125_000), "2 min 5 s");
        assert_eq!(cost(&job), None, "an older server: no cost line");
        let priced = Job::from_json(json!({
            "id": "job_2", "status": "succeeded",
            "metrics": {"queue_ms": 1, "execution_ms": 90500, "gpu_ms": 90500, "cost_micro_usd": 30468}
        }))
        .unwrap();
        assert_eq!(cost(&priced).unwrap(), "GPU 1 min 30 s · est. $0.03");
        let cheap = Job::from_json(json!({
            "id": "job_3", "status": "succeeded",
            "metrics": {"gpu_ms": 1200, "cost_micro_usd": 404}
        }))
        .unwrap();
        assert_eq!(cost(&cheap).unwrap(), "GPU 1.2 s · est. $0.000404");
        let unpriced = Job::from_json(json!({
            "id": "job_4", "status": "succeeded",
            "metrics": {"gpu_ms": 1200, "cost_micro_usd": null}
        }))
        .unwrap();
        assert_eq!(cost(&unpriced).unwrap(), "GPU 1.2 s");
        assert_eq!(size(2048), "2.0 KiB");
    }
}
